//! The audit webhook sink: records POSTed in batches, as the API server's webhook backend
//! sends them, to the receiver a kubeconfig-format file names (a SIEM, Falco).
//!
//! [`AuditLog::record`](super::AuditLog::record) hands each record's JSON (the same bytes
//! the file gets, so audit IDs match) to a bounded buffer; one task takes up to
//! `batch_max_size` of them, or what arrived within `batch_max_wait` of the first, and
//! POSTs them as an `audit.k8s.io/v1` `EventList`. One batch is in flight at a time, so
//! records arrive in the order they were recorded (a request's `ResponseStarted` before
//! its `ResponseComplete`). A POST that fails with a connection error, a timeout, a 5xx or
//! a 429 is retried after `initial_backoff`, doubling up to [`MAX_BACKOFF`], at most
//! `max_retries` times; any other answer but 2xx is not retried. Either way the records of
//! a batch that did not get through are counted in [`RECORDS_LOST`] and logged.
//!
//! When the buffer is full, batch mode drops the record (counted, and logged at most once
//! per [`DROP_LOG_INTERVAL`]) and blocking mode makes `record` wait for room. At shutdown
//! [`Sink::close`] sends what is buffered and waits at most `flush_timeout` for it.
//!
//! Logs name counts, statuses and audit IDs, never a record's contents or the receiver's
//! credential (the bearer token lives in the kube crate's auth layer, the key in rustls).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Request, StatusCode, Uri};
use http_body_util::BodyExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubegate_config::{Audit, AuditWebhook, ConfigError, WebhookMode};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::AuditId;
use crate::error::GatewayError;
use crate::upstream::Upstream;

/// Counter: batches the receiver accepted.
pub const BATCHES: &str = "kubegate_audit_webhook_batches_total";
/// Counter: records the receiver accepted.
pub const RECORDS: &str = "kubegate_audit_webhook_records_total";
/// Counter: POSTs that failed (each attempt counts once).
pub const SEND_FAILURES: &str = "kubegate_audit_webhook_send_failures_total";
/// Counter: records that will never reach the receiver (buffer full in batch mode,
/// refused, retries exhausted, shutdown deadline, recorded after close).
pub const RECORDS_LOST: &str = "kubegate_audit_webhook_records_lost_total";
/// Gauge: records accepted and neither delivered nor given up on yet.
pub const BUFFER_DEPTH: &str = "kubegate_audit_webhook_buffer_depth";

/// Registers descriptions for the webhook metrics with the installed recorder.
pub(super) fn describe_metrics() {
    describe_counter!(BATCHES, "Audit batches the webhook receiver accepted.");
    describe_counter!(RECORDS, "Audit records the webhook receiver accepted.");
    describe_counter!(SEND_FAILURES, "Failed POSTs to the audit webhook.");
    describe_counter!(
        RECORDS_LOST,
        "Audit records that will never reach the webhook receiver."
    );
    describe_gauge!(
        BUFFER_DEPTH,
        "Audit records waiting for the webhook receiver."
    );
}

/// The longest wait between two attempts at one batch.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// Batch mode logs records dropped for a full buffer at most this often.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Bytes of a receiver's answer read (and thrown away) so its connection can be reused.
const MAX_ANSWER: usize = 64 * 1024;

/// Why the receiver named in `config_file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The file is not a kubeconfig, or names no usable context.
    #[error("cannot use the audit webhook's kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// The receiver's address is not an https URL with a host.
    #[error(
        "the audit webhook's server must be an https URL with a host (records carry identities): {0}"
    )]
    Url(String),
    /// `insecure-skip-tls-verify` is set.
    #[error(
        "the audit webhook's cluster sets insecure-skip-tls-verify: give its CA instead (certificate-authority or certificate-authority-data)"
    )]
    InsecureSkipVerify,
    /// The CA, client certificate or token cannot be used.
    #[error("cannot use the audit webhook's TLS settings or credential: {0}")]
    Client(#[from] crate::upstream::UpstreamError),
}

/// The receiver: its URL and a client with its CA and credential, built by the same
/// stack as the upstream's (hyper-util over rustls, credentials by the kube crate).
pub struct Client {
    upstream: Upstream,
    uri: Uri,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("uri", &self.uri).finish()
    }
}

/// Loads the receiver of `audit`'s webhook, if it has one; an error names the
/// `config_file` setting.
pub async fn load(audit: &Audit) -> Result<Option<Client>, ConfigError> {
    let Some(webhook) = &audit.webhook else {
        return Ok(None);
    };
    Client::load(webhook)
        .await
        .map(Some)
        .map_err(|e| webhook.config_file.location.error(e.to_string()))
}

impl Client {
    /// Reads the kubeconfig file (its current context) and builds the client.
    pub async fn load(config: &AuditWebhook) -> Result<Client, WebhookError> {
        let kubeconfig = Kubeconfig::read_from(&config.config_file.value)?;
        let kube_config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        if kube_config.accept_invalid_certs {
            return Err(WebhookError::InsecureSkipVerify);
        }
        let uri = kube_config.cluster_url.clone();
        // Only the scheme is shown: the authority may carry a password.
        match (uri.scheme_str(), uri.host()) {
            (Some("https"), Some(host)) if !host.is_empty() => {}
            (Some("https"), _) => return Err(WebhookError::Url("it has no host".into())),
            (scheme, _) => {
                return Err(WebhookError::Url(format!(
                    "its scheme is {:?}",
                    scheme.unwrap_or("")
                )));
            }
        }
        let upstream = Upstream::from_kube_config(&kube_config, config.request_timeout)?;
        Ok(Client { upstream, uri })
    }

    /// POSTs one `EventList`, within `timeout` from connecting to the end of the answer.
    async fn post(&self, body: Bytes, timeout: Duration) -> Result<(), Failure> {
        let attempt = async {
            let mut request = Request::post(self.uri.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .map_err(|e| Failure::Refused(format!("cannot build the request: {e}")))?;
            let authorization = self
                .upstream
                .authorization()
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?;
            if let Some(value) = authorization {
                request.headers_mut().insert(AUTHORIZATION, value);
            }
            let response = self.upstream.send(request).await.map_err(|e| match e {
                GatewayError::UpstreamTimeout(_) => Failure::Retry("no answer in time".into()),
                other => Failure::Retry(error_chain(&other)),
            })?;
            let status = response.status();
            // The answer is not needed; reading it lets the connection be reused.
            let _ = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await;
            Ok(status)
        };
        let status = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result?,
            Err(_) => return Err(Failure::Retry("no answer in time".into())),
        };
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Err(Failure::Retry(format!("answered {status}")))
        } else {
            Err(Failure::Refused(format!("answered {status}")))
        }
    }
}

/// `error` and its sources, for a log line (hyper's own message is a bare "client error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Why a POST did not deliver its batch.
#[derive(Debug)]
enum Failure {
    /// Worth another try: unreachable, too slow, 5xx or 429.
    Retry(String),
    /// The receiver refused the batch itself: trying again would get the same answer.
    Refused(String),
}

/// Delay before retry `attempt` (0-based): `initial` doubled per attempt, at most
/// [`MAX_BACKOFF`].
fn backoff(initial: Duration, attempt: u32) -> Duration {
    initial
        .saturating_mul(1u32 << attempt.min(20))
        .min(MAX_BACKOFF)
}

/// The body of a POST: the records (JSON lines) as the items of an `EventList`.
fn event_list(lines: &[Bytes]) -> Bytes {
    const HEAD: &[u8] =
        br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#;
    let len = lines.iter().map(Bytes::len).sum::<usize>() + HEAD.len() + 2;
    let mut body = BytesMut::with_capacity(len);
    body.put_slice(HEAD);
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(line.strip_suffix(b"\n").unwrap_or(line));
    }
    body.put_slice(b"]}");
    body.freeze()
}

/// What the webhook sink has done so far, for tests and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Batches the receiver accepted.
    pub batches: u64,
    /// Records the receiver accepted.
    pub delivered: u64,
    /// Failed POSTs.
    pub failures: u64,
    /// Records that will never reach the receiver.
    pub lost: u64,
    /// Records accepted and neither delivered nor given up on yet.
    pub buffered: u64,
}

#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    delivered: AtomicU64,
    failures: AtomicU64,
    lost: AtomicU64,
    buffered: AtomicU64,
}

impl Counts {
    fn accept(&self) {
        self.buffered.fetch_add(1, Ordering::AcqRel);
        gauge!(BUFFER_DEPTH).increment(1.0);
    }

    fn settle(&self, n: u64, delivered: bool) {
        self.buffered.fetch_sub(n, Ordering::AcqRel);
        gauge!(BUFFER_DEPTH).decrement(n as f64);
        if delivered {
            self.batches.fetch_add(1, Ordering::AcqRel);
            self.delivered.fetch_add(n, Ordering::AcqRel);
            counter!(BATCHES).increment(1);
            counter!(RECORDS).increment(n);
        } else {
            self.lost.fetch_add(n, Ordering::AcqRel);
            counter!(RECORDS_LOST).increment(n);
        }
    }

    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::AcqRel);
        counter!(SEND_FAILURES).increment(1);
    }
}

enum Msg {
    Record(Bytes),
    Close,
}

/// The handle the audit log holds: the buffer's sending side.
pub(super) struct Sink {
    tx: mpsc::Sender<Msg>,
    mode: WebhookMode,
    counts: Arc<Counts>,
    /// Set by the task when it has finished.
    done: watch::Receiver<bool>,
    /// Set by `close` when `flush_timeout` has passed: the task gives up what it holds.
    abort: watch::Sender<bool>,
    flush_timeout: Duration,
    /// When batch mode last logged dropped records, and how many were dropped since.
    drops: Mutex<(Option<Instant>, u64)>,
}

impl Sink {
    /// Spawns the sending task on `runtime`.
    pub(super) fn start(
        client: Client,
        config: &AuditWebhook,
        runtime: &tokio::runtime::Handle,
    ) -> Sink {
        let (tx, rx) = mpsc::channel(config.buffer_size);
        let (done_tx, done) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let counts = Arc::new(Counts::default());
        let task = Task {
            rx,
            client,
            config: config.clone(),
            counts: counts.clone(),
            abort: abort_rx,
        };
        runtime.spawn(async move {
            task.run().await;
            done_tx.send_replace(true);
        });
        Sink {
            tx,
            mode: config.mode,
            counts,
            done,
            abort,
            flush_timeout: config.flush_timeout,
            drops: Mutex::new((None, 0)),
        }
    }

    /// Buffers one record (a JSON line). Batch mode never waits; blocking mode waits for
    /// room, and a record whose wait is cancelled is counted as lost.
    pub(super) async fn offer(&self, line: Bytes, audit_id: &AuditId) {
        self.counts.accept();
        let mut pending = Pending {
            counts: &self.counts,
            audit_id,
            reason: Some("the recording task was cancelled before it was buffered"),
        };
        match self.mode {
            WebhookMode::Batch => match self.tx.try_send(Msg::Record(line)) {
                Ok(()) => pending.reason = None,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    pending.reason = None;
                    self.counts.settle(1, false);
                    self.note_drop();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => pending.reason = Some(CLOSED),
            },
            WebhookMode::Blocking => match self.tx.send(Msg::Record(line)).await {
                Ok(()) => pending.reason = None,
                Err(_) => pending.reason = Some(CLOSED),
            },
        }
    }

    /// Counts a record dropped for a full buffer in the next log line, written now if
    /// none was for [`DROP_LOG_INTERVAL`].
    fn note_drop(&self) {
        let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        drops.1 += 1;
        let now = Instant::now();
        if drops.0.is_none_or(|last| now - last >= DROP_LOG_INTERVAL) {
            tracing::warn!(
                dropped = drops.1,
                buffered = self.counts.buffered.load(Ordering::Acquire),
                "audit webhook buffer full: records dropped (batch mode); the receiver is slow or down"
            );
            *drops = (Some(now), 0);
        }
    }

    /// Sends everything buffered and waits for the task, at most `flush_timeout`; what is
    /// still undelivered then is counted as lost. Err names how many records were lost
    /// over the sink's life.
    pub(super) async fn close(&self) -> Result<(), String> {
        let mut done = self.done.clone();
        let flush = async {
            // Behind every record already buffered; Err means the task has stopped.
            let _ = self.tx.send(Msg::Close).await;
            let _ = done.wait_for(|d| *d).await;
        };
        if tokio::time::timeout(self.flush_timeout, flush)
            .await
            .is_err()
        {
            tracing::error!(
                buffered = self.counts.buffered.load(Ordering::Acquire),
                flush_timeout = %humantime::format_duration(self.flush_timeout),
                "audit webhook not flushed in time at shutdown; the records left are lost"
            );
            self.abort.send_replace(true);
            let mut done = self.done.clone();
            let _ = done.wait_for(|d| *d).await;
        }
        match self.counts.lost.load(Ordering::Acquire) {
            0 => Ok(()),
            lost => Err(format!(
                "{lost} audit records were not delivered to the webhook"
            )),
        }
    }

    /// What the sink has done so far.
    pub(super) fn stats(&self) -> WebhookStats {
        let c = &self.counts;
        WebhookStats {
            batches: c.batches.load(Ordering::Acquire),
            delivered: c.delivered.load(Ordering::Acquire),
            failures: c.failures.load(Ordering::Acquire),
            lost: c.lost.load(Ordering::Acquire),
            buffered: c.buffered.load(Ordering::Acquire),
        }
    }
}

const CLOSED: &str = "the audit webhook is closed";

/// Counts a record in the buffer from the moment `offer` takes it; dropped with a reason
/// (not buffered), it counts the record as lost, loudly.
struct Pending<'a> {
    counts: &'a Counts,
    audit_id: &'a AuditId,
    reason: Option<&'static str>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(reason) = self.reason {
            self.counts.settle(1, false);
            tracing::error!(audit_id = %self.audit_id, "audit record not sent to the webhook: {reason}");
        }
    }
}

/// The sending task.
struct Task {
    rx: mpsc::Receiver<Msg>,
    client: Client,
    config: AuditWebhook,
    counts: Arc<Counts>,
    abort: watch::Receiver<bool>,
}

impl Task {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.config.batch_max_size);
        let mut closing = false;
        while !*self.abort.borrow() && self.fill(&mut batch, &mut closing).await {
            self.deliver(&batch).await;
            batch.clear();
        }
        // Aborted (or every handle is gone): what is left will not be sent.
        self.rx.close();
        let mut left = batch.len() as u64;
        while let Ok(msg) = self.rx.try_recv() {
            left += u64::from(matches!(msg, Msg::Record(_)));
        }
        if left > 0 {
            self.counts.settle(left, false);
        }
    }

    /// Gathers the next batch: up to `batch_max_size` records, or what arrived within
    /// `batch_max_wait` of the first (at close, what is buffered, without waiting).
    /// Returns false when there is nothing left to send.
    async fn fill(&mut self, batch: &mut Vec<Bytes>, closing: &mut bool) -> bool {
        let max = self.config.batch_max_size;
        let mut deadline = None;
        let mut msgs = Vec::new();
        while batch.len() < max {
            let room = max - batch.len();
            // Closing, the channel is closed: `recv_many` returns at once.
            let received = match deadline {
                Some(at) if !*closing => tokio::select! {
                    biased;
                    _ = self.abort.wait_for(|a| *a) => return false,
                    n = tokio::time::timeout_at(at, self.rx.recv_many(&mut msgs, room)) => n.ok(),
                },
                _ => tokio::select! {
                    biased;
                    _ = self.abort.wait_for(|a| *a) => return false,
                    n = self.rx.recv_many(&mut msgs, room) => Some(n),
                },
            };
            let Some(n) = received else { return true };
            if n == 0 {
                return !batch.is_empty();
            }
            for msg in msgs.drain(..) {
                match msg {
                    Msg::Record(line) => batch.push(line),
                    Msg::Close => {
                        *closing = true;
                        self.rx.close();
                    }
                }
            }
            if deadline.is_none() && !batch.is_empty() {
                deadline = Some(Instant::now() + self.config.batch_max_wait);
            }
        }
        true
    }

    /// POSTs one batch, retrying as the module doc says, and settles its accounting.
    async fn deliver(&mut self, batch: &[Bytes]) {
        let n = batch.len() as u64;
        let body = event_list(batch);
        let Task {
            client,
            config,
            counts,
            abort,
            ..
        } = self;
        let mut attempt = 0;
        let delivered = loop {
            let result = tokio::select! {
                biased;
                _ = abort.wait_for(|a| *a) => break false,
                r = client.post(body.clone(), config.request_timeout) => r,
            };
            let why = match result {
                Ok(()) => break true,
                Err(Failure::Refused(why)) => {
                    counts.failed();
                    tracing::error!(records = n, uri = %client.uri, %why, "the audit webhook refused a batch; not retried, records lost");
                    break false;
                }
                Err(Failure::Retry(why)) => why,
            };
            counts.failed();
            if attempt == config.max_retries {
                tracing::error!(records = n, uri = %client.uri, %why, attempts = attempt + 1, "cannot send to the audit webhook; giving up, records lost");
                break false;
            }
            let delay = backoff(config.initial_backoff, attempt);
            tracing::warn!(records = n, uri = %client.uri, %why, retry_in = %humantime::format_duration(delay), "cannot send to the audit webhook");
            tokio::select! {
                biased;
                _ = abort.wait_for(|a| *a) => break false,
                () = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
        };
        counts.settle(n, delivered);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use kubegate_config::{Location, Setting};

    use super::*;

    fn settings(file: &Path) -> AuditWebhook {
        AuditWebhook {
            config_file: Setting {
                value: file.to_path_buf(),
                location: Location {
                    file: "kubegate.toml".into(),
                    line: 9,
                    column: 15,
                    field: "audit.webhook.config_file".into(),
                },
            },
            mode: WebhookMode::Batch,
            batch_max_size: 400,
            batch_max_wait: Duration::from_secs(30),
            buffer_size: 10_000,
            initial_backoff: Duration::from_secs(10),
            max_retries: 4,
            request_timeout: Duration::from_secs(30),
            flush_timeout: Duration::from_secs(30),
        }
    }

    /// A receiver's kubeconfig: `server`, and `cluster_extra` / `user` lines.
    fn kubeconfig(server: &str, cluster_extra: &str, current: bool) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: siem\n  cluster:\n    server: {server}\n{cluster_extra}users:\n- name: gw\n  user:\n    token: receiver-secret-token\ncontexts:\n- name: c\n  context:\n    cluster: siem\n    user: gw\n{}",
            if current { "current-context: c\n" } else { "" }
        )
    }

    async fn load_text(text: &str) -> Result<Client, ConfigError> {
        crate::app::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhook.kubeconfig");
        std::fs::write(&path, text).unwrap();
        let audit = Audit {
            webhook: Some(settings(&path)),
            ..Audit::default()
        };
        load(&audit).await.map(Option::unwrap)
    }

    #[tokio::test]
    async fn the_receiver_must_be_https_verified_and_named_by_a_current_context() {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .unwrap()
            .cert
            .pem();
        use base64::Engine;
        let ca = format!(
            "    certificate-authority-data: {}\n",
            base64::engine::general_purpose::STANDARD.encode(ca)
        );
        let good = load_text(&kubeconfig("https://siem.example:8443/audit", &ca, true))
            .await
            .unwrap();
        assert_eq!(good.uri, "https://siem.example:8443/audit");
        // The token stays out of Debug.
        assert!(!format!("{good:?}").contains("receiver-secret-token"));

        let refused = [
            (
                kubeconfig("http://siem.example:8080/audit", &ca, true),
                "its scheme is \"http\"",
            ),
            (
                kubeconfig(
                    "https://siem.example",
                    "    insecure-skip-tls-verify: true\n",
                    true,
                ),
                "insecure-skip-tls-verify",
            ),
            (
                kubeconfig("https://siem.example", &ca, false),
                "audit webhook's kubeconfig",
            ),
            ("not: [a kubeconfig".into(), "audit webhook's kubeconfig"),
        ];
        for (text, message) in refused {
            let e = load_text(&text).await.unwrap_err();
            assert_eq!(e.field.as_deref(), Some("audit.webhook.config_file"));
            assert_eq!(e.line, Some(9), "{e}");
            let e = e.to_string();
            assert!(e.contains(message), "{e}");
            assert!(!e.contains("receiver-secret-token"), "{e}");
        }
        let none = load(&Audit::default()).await.unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn a_batch_is_an_event_list_of_the_lines() {
        let lines = [
            Bytes::from_static(b"{\"auditID\":\"a\"}\n"),
            Bytes::from_static(b"{\"auditID\":\"b\"}\n"),
        ];
        let body: serde_json::Value = serde_json::from_slice(&event_list(&lines)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "kind": "EventList",
                "apiVersion": "audit.k8s.io/v1",
                "metadata": {},
                "items": [{"auditID": "a"}, {"auditID": "b"}],
            })
        );
        let empty: serde_json::Value = serde_json::from_slice(&event_list(&[])).unwrap();
        assert_eq!(empty["items"], serde_json::json!([]));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let ten = Duration::from_secs(10);
        let delays: Vec<_> = (0..7).map(|a| backoff(ten, a).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(Duration::from_secs(300), u32::MAX), MAX_BACKOFF);
        assert_eq!(
            backoff(Duration::from_millis(5), 2),
            Duration::from_millis(20)
        );
    }
}
