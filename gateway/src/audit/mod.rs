//! The audit trail: one record per request, in the shape of the Kubernetes API server's
//! `audit.k8s.io/v1` `Event` at level `Metadata`, written as JSON lines off the request path.
//!
//! [`AuditLog::record`] serializes an [`Event`] on the caller and hands the line to a
//! bounded queue; one writer task drains the queue in batches and writes them to stdout,
//! a size-rotated file, or both. The writer lets records gather for [`LINGER`] after the
//! first one, so a busy gateway writes (and hops to the blocking pool) a few hundred times
//! a second rather than once per request. Records are never dropped to keep up: a full queue makes
//! `record` wait (backpressure), and every record that does not make it to its sinks is
//! logged with tracing and counted in [`RECORDS_LOST`] — never silently. Log messages name
//! the audit ID at most, never a record's contents.
//!
//! Refusals the gateway answers itself before any policy decision (a bad path, a 401) or
//! by admission (a 429) go through [`AuditLog::record_refusal`] instead, which writes
//! the first per client and second in full and folds the rest into one summary record
//! ([`summary`]), so a flood of them cannot rotate other records out of the file.
//!
//! Lifecycle: [`AuditLog::start`] inside a tokio runtime, clone the handle freely, call
//! [`AuditLog::close`] once at shutdown. `close` writes the summaries of open windows,
//! stops every clone from accepting records, writes everything already queued, flushes
//! and fsyncs. Dropping every clone without `close` also drains the queue (but not the
//! open summary windows), and nobody learns whether the final fsync worked; a runtime that
//! shuts down first cancels the writer.

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kubegate_config::Audit;
use metrics::{Gauge, counter, describe_counter, describe_gauge, gauge};
use tokio::sync::{Semaphore, mpsc, watch};

mod event;
mod file;
pub mod record;
pub mod summary;
pub mod webhook;

use event::Timestamp;
pub use event::{Annotations, AuditId, Event, ObjectRef, Stage};
use file::{FileSink, lock};

pub use summary::{RECORDS_SUMMARISED, SummaryKey};

/// Gauge: records handed to [`AuditLog::record`] and not yet written or given up on
/// (queued, in the writer's hands, or waiting for queue space).
pub const QUEUE_DEPTH: &str = "kubegate_audit_queue_depth";
/// Counter: records written to every configured sink.
pub const RECORDS: &str = "kubegate_audit_records_total";
/// Counter: failed writes, flushes, fsyncs and rotations (each attempt counts once).
pub const WRITE_ERRORS: &str = "kubegate_audit_write_errors_total";
/// Counter: records that will never be written (retries exhausted, recorded after close,
/// or the recording task was cancelled before the record was queued).
pub const RECORDS_LOST: &str = "kubegate_audit_records_lost_total";

/// Registers descriptions for the audit metrics with the installed recorder.
pub fn describe_metrics() {
    describe_gauge!(QUEUE_DEPTH, "Audit records accepted and not yet written.");
    describe_counter!(RECORDS, "Audit records written.");
    describe_counter!(
        WRITE_ERRORS,
        "Failed audit log writes, flushes and rotations."
    );
    describe_counter!(RECORDS_LOST, "Audit records that could not be written.");
    summary::describe_metrics();
    webhook::describe_metrics();
}

/// Records per write: the writer drains at most this many queued records into one buffer.
const BATCH: usize = 256;
/// How long the writer lets records gather after the first one before writing them.
const LINGER: Duration = Duration::from_millis(2);
/// Retries after a failed write before the records in hand are counted as lost.
const RETRIES: u32 = 5;

/// Delay before retry `attempt` (0-based): 100 ms, 200 ms, 400 ms, 800 ms, then 1 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(4)).min(Duration::from_secs(1))
}

// ---------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------

/// Handle to the audit writer. Cheap to clone; all clones feed the same writer.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    /// The runtime the writer runs on, for records queued from code that has none of its
    /// own (or whose runtime is stopping).
    runtime: tokio::runtime::Handle,
    /// Set by the first `close`: later `record`s fail (loudly) instead of queueing.
    closing: AtomicBool,
    counts: Arc<Counts>,
    /// The writer's final outcome, published once when it finishes.
    done: watch::Receiver<Option<Outcome>>,
    /// Open windows of refusals being counted (summary.rs).
    summaries: summary::Summaries,
    /// The `[audit.webhook]` sink, fed alongside the writer.
    webhook: Option<webhook::Sink>,
    /// Serialize records without `user` and `impersonatedUser`.
    omit_user_info: bool,
}

struct Counts {
    written: AtomicU64,
    lost: AtomicU64,
    /// This log's share of [`QUEUE_DEPTH`].
    pending: AtomicU64,
    /// The [`QUEUE_DEPTH`] gauge, looked up once: every record moves it, and finding it in
    /// the registry by name cost 600 instructions a request.
    depth: Gauge,
}

impl Counts {
    /// Counts of a new log, reporting to the recorder installed now.
    fn new() -> Self {
        Counts {
            written: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            depth: gauge!(QUEUE_DEPTH),
        }
    }
}

enum Msg {
    Record(Bytes),
    Close,
}

/// `io::Error` is not `Clone`; every `close` caller gets a copy of this.
type Outcome = Result<(), (io::ErrorKind, String)>;

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = &self.inner.counts;
        f.debug_struct("AuditLog")
            .field("written", &counts.written.load(Ordering::Relaxed))
            .field("lost", &counts.lost.load(Ordering::Relaxed))
            .field("pending", &counts.pending.load(Ordering::Relaxed))
            .field("closing", &self.inner.closing.load(Ordering::Relaxed))
            .finish()
    }
}

impl AuditLog {
    /// Opens (creates with mode 0600, appends to) the file if one is configured and spawns
    /// the writer task on the current tokio runtime.
    ///
    /// Fails when called outside a runtime, when no sink is configured, when
    /// `queue_size` is 0, when the file cannot be opened, or when the configuration has a
    /// webhook (see [`start_with_webhook`](Self::start_with_webhook)).
    pub fn start(config: Audit) -> io::Result<AuditLog> {
        Self::start_gated(config, None, None)
    }

    /// `start`, with the client of the configuration's `[audit.webhook]`
    /// ([`webhook::load`], which reads its kubeconfig file asynchronously).
    pub fn start_with_webhook(
        config: Audit,
        webhook: Option<webhook::Client>,
    ) -> io::Result<AuditLog> {
        Self::start_gated(config, webhook, None)
    }

    /// `start` with an optional gate the writer takes one permit from before each batch
    /// (tests stall the writer with it).
    fn start_gated(
        config: Audit,
        webhook: Option<webhook::Client>,
        gate: Option<Arc<Semaphore>>,
    ) -> io::Result<AuditLog> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            io::Error::other(format!(
                "the audit log must be started inside a tokio runtime: {e}"
            ))
        })?;
        if config.queue_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "audit queue size must be at least 1",
            ));
        }
        if !config.stdout && config.file.is_none() && config.webhook.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the audit log needs a sink: stdout, a file or a webhook",
            ));
        }
        let webhook = match (&config.webhook, webhook) {
            (Some(settings), Some(client)) => {
                Some(webhook::Sink::start(client, settings, &runtime))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the audit webhook is configured but its client was not loaded",
                ));
            }
            (None, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an audit webhook client was given without [audit.webhook]",
                ));
            }
        };
        let file = match config.file {
            Some(path) => {
                let sink = FileSink::open(path.clone(), config.max_file_size, config.max_backups)
                    .map_err(|e| {
                    io::Error::new(e.kind(), format!("audit log {}: {e}", path.display()))
                })?;
                Some(FileHandle {
                    sink: Arc::new(Mutex::new(sink)),
                    path,
                })
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(config.queue_size);
        let (done_tx, done_rx) = watch::channel(None);
        let counts = Arc::new(Counts::new());
        let writer = Writer {
            rx,
            file,
            stdout: config.stdout,
            stdout_torn: false,
            counts: counts.clone(),
            done: done_tx,
            gate,
        };
        runtime.spawn(writer.run());
        let inner = Arc::new(Inner {
            tx,
            runtime,
            closing: AtomicBool::new(false),
            counts,
            done: done_rx,
            summaries: summary::Summaries::new(summary::WINDOW, summary::MAX_KEYS),
            webhook,
            omit_user_info: config.omit_user_info,
        });
        inner.runtime.spawn(summary::sweep_periodically(
            Arc::downgrade(&inner),
            summary::WINDOW,
        ));
        Ok(AuditLog { inner })
    }

    /// Serializes `event` here and queues it for the writer, then for the webhook. When
    /// the writer's queue is full this waits for space: records are never dropped to keep
    /// up. A full webhook buffer drops the record (batch mode, counted) or waits too
    /// (blocking mode).
    ///
    /// After [`close`](Self::close) (on any clone) the record is refused: an error is
    /// logged and it is counted as lost. If this future is dropped before the record was
    /// queued (a cancelled request task), that too is logged and counted as lost, so call
    /// it from a task that runs to completion.
    pub async fn record(&self, event: &Event<'_>) {
        let inner = &*self.inner;
        let line = Bytes::from(event.line(inner.omit_user_info));
        let mut pending = PendingRecord::new(&inner.counts, &event.audit_id);
        if inner.closing.load(Ordering::Acquire) {
            pending.reason = CLOSED;
            return;
        }
        let for_webhook = inner.webhook.as_ref().map(|w| (w, line.clone()));
        match inner.tx.send(Msg::Record(line)).await {
            Ok(()) => pending.queued = true,
            Err(_) => pending.reason = CLOSED,
        }
        drop(pending);
        if let Some((webhook, line)) = for_webhook {
            webhook.offer(line, &event.audit_id).await;
        }
    }

    /// Records `event` from a task on the runtime the log was started on, then calls
    /// `then`. For code that cannot wait (a `Drop`), possibly on a connection thread whose
    /// runtime stops at shutdown: the record does not depend on that runtime living on.
    pub fn record_detached(&self, event: Event<'static>, then: impl FnOnce() + Send + 'static) {
        let log = self.clone();
        self.inner.runtime.spawn(async move {
            log.record(&event).await;
            then();
        });
    }

    /// Writes the summaries of every open window of refusals, stops every clone from
    /// accepting records, writes everything already queued, flushes stdout, fsyncs the file
    /// and waits for the writer to finish.
    ///
    /// Returns the writer's outcome: an error if the final flush or fsync failed or if any
    /// record was lost before the writer finished. Safe to call on several clones: each
    /// call waits for the same writer and returns the same outcome. `record` calls that
    /// start after `close` are refused and counted as lost.
    pub async fn close(self) -> io::Result<()> {
        // From here on refusals are written in full, so none is counted and then lost.
        self.drain_summaries().await;
        self.inner.closing.store(true, Ordering::Release);
        // Queued behind the records already sent; Err means the writer already closed.
        let _ = self.inner.tx.send(Msg::Close).await;
        let mut done = self.inner.done.clone();
        let outcome = match done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        };
        let webhook = match &self.inner.webhook {
            Some(webhook) => webhook.close().await,
            None => Ok(()),
        };
        match (outcome, webhook) {
            (Some(Ok(())), Ok(())) => Ok(()),
            (Some(Ok(())), Err(lost)) => Err(io::Error::other(lost)),
            (Some(Err((kind, message))), Ok(())) => Err(io::Error::new(kind, message)),
            (Some(Err((kind, message))), Err(lost)) => {
                Err(io::Error::new(kind, format!("{message}; {lost}")))
            }
            (None, _) => Err(io::Error::other(
                "the audit writer stopped before finishing",
            )),
        }
    }

    /// What the webhook sink has done so far, when one is configured.
    pub fn webhook_stats(&self) -> Option<webhook::WebhookStats> {
        self.inner.webhook.as_ref().map(webhook::Sink::stats)
    }

    /// Whether `close` has begun on some clone.
    fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Records written to every configured sink so far.
    pub fn written(&self) -> u64 {
        self.inner.counts.written.load(Ordering::Acquire)
    }

    /// Records lost so far (see [`RECORDS_LOST`]).
    pub fn lost(&self) -> u64 {
        self.inner.counts.lost.load(Ordering::Acquire)
    }
}

const CLOSED: &str = "the audit log is closed";

/// Counts a record in [`QUEUE_DEPTH`] from the moment `record` takes it; unless it was
/// queued (the writer then owns it), dropping this counts it as lost, loudly.
struct PendingRecord<'a> {
    counts: &'a Counts,
    audit_id: &'a AuditId,
    queued: bool,
    reason: &'static str,
}

impl<'a> PendingRecord<'a> {
    fn new(counts: &'a Counts, audit_id: &'a AuditId) -> Self {
        counts.pending.fetch_add(1, Ordering::AcqRel);
        counts.depth.increment(1.0);
        PendingRecord {
            counts,
            audit_id,
            queued: false,
            reason: "the recording task was cancelled before it was queued",
        }
    }
}

impl Drop for PendingRecord<'_> {
    fn drop(&mut self) {
        if self.queued {
            return;
        }
        self.counts.pending.fetch_sub(1, Ordering::AcqRel);
        self.counts.depth.decrement(1.0);
        self.counts.lost.fetch_add(1, Ordering::AcqRel);
        counter!(RECORDS_LOST).increment(1);
        tracing::error!(audit_id = %self.audit_id, "audit record lost: {}", self.reason);
    }
}

/// Records drained from the queue, concatenated; `ends[i]` is where line `i` ends.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    fn push(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.ends.push(self.buf.len());
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn start(&self, line: usize) -> usize {
        if line == 0 { 0 } else { self.ends[line - 1] }
    }
}

struct FileHandle {
    /// Only the writer task (and the blocking calls it awaits) touches it.
    sink: Arc<Mutex<FileSink>>,
    path: PathBuf,
}

struct Writer {
    rx: mpsc::Receiver<Msg>,
    file: Option<FileHandle>,
    stdout: bool,
    /// A failed stdout write may have left half a line; the next write starts a new one.
    stdout_torn: bool,
    counts: Arc<Counts>,
    done: watch::Sender<Option<Outcome>>,
    gate: Option<Arc<Semaphore>>,
}

impl Writer {
    async fn run(mut self) {
        let mut msgs = Vec::with_capacity(BATCH);
        loop {
            if let Some(gate) = &self.gate
                && let Ok(permit) = gate.acquire().await
            {
                permit.forget();
            }
            // 0 only when the channel is closed (by `close` or by every handle dropping)
            // and drained.
            if self.rx.recv_many(&mut msgs, BATCH).await == 0 {
                break;
            }
            if msgs.len() < BATCH && !msgs.iter().any(|m| matches!(m, Msg::Close)) {
                // Let a busy gateway's records gather: one write (and one hop to the
                // blocking pool) per few milliseconds instead of per request. Senders do
                // not wake a writer that is not waiting on the queue.
                tokio::time::sleep(LINGER).await;
                while msgs.len() < BATCH {
                    match self.rx.try_recv() {
                        Ok(m) => msgs.push(m),
                        Err(_) => break,
                    }
                }
            }
            let mut batch = Batch::default();
            for msg in msgs.drain(..) {
                match msg {
                    Msg::Record(line) => batch.push(&line),
                    // Refuse new sends; what is already queued is still drained.
                    Msg::Close => self.rx.close(),
                }
            }
            if batch.len() > 0 {
                self.write(batch).await;
            }
        }
        let outcome = self.finish().await;
        self.done.send_replace(Some(outcome));
    }

    /// Writes one batch to every sink, retrying failures, and settles its accounting.
    async fn write(&mut self, batch: Batch) {
        let n = batch.len();
        let batch = Arc::new(batch);
        let Writer {
            file,
            stdout,
            stdout_torn,
            ..
        } = self;
        let to_file = async {
            match file {
                Some(file) => write_file(file, &batch).await,
                None => n,
            }
        };
        let to_stdout = async {
            if *stdout {
                write_stdout(stdout_torn, &batch).await
            } else {
                true
            }
        };
        let (in_file, stdout_ok) = tokio::join!(to_file, to_stdout);
        let written = if stdout_ok { in_file } else { 0 };
        let lost = n - written;
        let counts = &self.counts;
        counts.written.fetch_add(written as u64, Ordering::AcqRel);
        counter!(RECORDS).increment(written as u64);
        if lost > 0 {
            counts.lost.fetch_add(lost as u64, Ordering::AcqRel);
            counter!(RECORDS_LOST).increment(lost as u64);
        }
        counts.pending.fetch_sub(n as u64, Ordering::AcqRel);
        counts.depth.decrement(n as f64);
    }

    /// Flushes stdout and fsyncs the file; the outcome `close` reports.
    async fn finish(&mut self) -> Outcome {
        let mut result: io::Result<()> = Ok(());
        if self.stdout
            && let Err(e) = tokio::task::spawn_blocking(|| io::stdout().lock().flush())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
        {
            counter!(WRITE_ERRORS).increment(1);
            tracing::error!(error = %e, "cannot flush the audit log to stdout");
            result = Err(e);
        }
        if let Some(file) = &self.file {
            let sink = file.sink.clone();
            let synced = tokio::task::spawn_blocking(move || lock(&sink).sync())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            if let Err(e) = synced {
                counter!(WRITE_ERRORS).increment(1);
                tracing::error!(path = %file.path.display(), error = %e, "cannot fsync the audit log");
                result = result.and(Err(e));
            }
        }
        let lost = self.counts.lost.load(Ordering::Acquire);
        match result {
            Ok(()) if lost == 0 => Ok(()),
            Ok(()) => Err((
                io::ErrorKind::Other,
                format!("{lost} audit records were lost"),
            )),
            Err(e) if lost == 0 => Err((e.kind(), e.to_string())),
            Err(e) => Err((e.kind(), format!("{lost} audit records were lost; {e}"))),
        }
    }
}

/// Writes `batch` to the file, retrying from the first line that did not make it; returns
/// how many lines (a prefix of the batch) are in the file.
async fn write_file(file: &FileHandle, batch: &Arc<Batch>) -> usize {
    let mut next = 0;
    let mut attempt = 0;
    loop {
        let (sink, lines) = (file.sink.clone(), batch.clone());
        let (reached, error) =
            match tokio::task::spawn_blocking(move || lock(&sink).write_from(&lines, next)).await {
                Ok(result) => result,
                Err(e) => (next, Some(io::Error::other(e.to_string()))),
            };
        next = reached;
        let Some(error) = error else { return next };
        counter!(WRITE_ERRORS).increment(1);
        let remaining = batch.len() - next;
        if attempt == RETRIES {
            tracing::error!(
                path = %file.path.display(), %error, records = remaining,
                "cannot write to the audit log; giving up, records lost"
            );
            return next;
        }
        let delay = backoff(attempt);
        tracing::warn!(
            path = %file.path.display(), %error, records = remaining,
            retry_in = %humantime::format_duration(delay), "cannot write to the audit log"
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// Writes `batch` to stdout, retrying the whole batch on failure (a retry may repeat lines
/// that did get out; the audit ID tells them apart). Returns whether it got out.
///
/// Blocking writes under the process's stdout lock (what `tokio::io::stdout` does on the
/// blocking pool too), so no other stdout writer can interleave with a batch.
async fn write_stdout(torn: &mut bool, batch: &Arc<Batch>) -> bool {
    let mut attempt = 0;
    loop {
        let (lines, starts_torn) = (batch.clone(), *torn);
        let result = tokio::task::spawn_blocking(move || {
            let mut out = io::stdout().lock();
            if starts_torn {
                out.write_all(b"\n")?;
            }
            out.write_all(&lines.buf)?;
            out.flush()
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        let Err(error) = result else {
            *torn = false;
            return true;
        };
        *torn = true;
        counter!(WRITE_ERRORS).increment(1);
        if attempt == RETRIES {
            tracing::error!(%error, records = batch.len(), "cannot write the audit log to stdout; giving up, records lost");
            return false;
        }
        let delay = backoff(attempt);
        tracing::warn!(%error, records = batch.len(), retry_in = %humantime::format_duration(delay), "cannot write the audit log to stdout");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::path::Path;
    use std::time::{SystemTime, UNIX_EPOCH};

    use kubegate_policy::ForwardIdentity;

    use std::fs::OpenOptions;

    use super::event::{UserInfo, civil_from_days};
    use super::file::backup_path;
    use crate::authn::Identity;
    use std::future::Future;
    use std::task::Poll;

    use serde_json::{Value, json};

    use super::*;

    fn at(secs: u64, micros: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
    }

    fn ts(t: SystemTime) -> String {
        Timestamp(t).to_string()
    }

    fn full_event() -> Event<'static> {
        Event {
            audit_id: AuditId(*b"0f8c1a2b-3c4d-4e5f-8a6b-7c8d9e0f1a2b"),
            stage: Stage::ResponseComplete,
            request_uri: "/api/v1/namespaces/dev/pods?limit=500".into(),
            verb: "list".into(),
            user: Some(Arc::new(Identity {
                uid: Some("u-1".into()),
                extra: BTreeMap::from([("scopes".into(), vec!["a".into(), "b".into()])]),
                ..Identity::new("alice", ["devs", "ops"])
            })),
            impersonated_user: Some(Arc::new(ForwardIdentity {
                user: "alice".into(),
                groups: vec!["devs".into()],
                ..ForwardIdentity::default()
            })),
            source_ip: Some("192.0.2.10".parse().unwrap()),
            user_agent: Some("kubectl/v1.34.0".into()),
            object_ref: Some(ObjectRef {
                resource: "pods".into(),
                namespace: "dev".into(),
                api_version: "v1".into(),
                ..ObjectRef::default()
            }),
            response_code: 200,
            request_received: at(1_795_867_200, 123_456),
            stage_time: at(1_795_867_200, 130_001),
            annotations: Annotations::from([
                ("kubegate.io/decision".into(), "allow".into()),
                ("kubegate.io/rule".into(), "devs-read".into()),
            ]),
        }
    }

    fn minimal_event() -> Event<'static> {
        Event {
            audit_id: AuditId::new(),
            stage: Stage::ResponseStarted,
            request_uri: "/api".into(),
            verb: "get".into(),
            user: None,
            impersonated_user: None,
            source_ip: None,
            user_agent: Some("".into()),
            object_ref: None,
            response_code: 401,
            request_received: at(0, 0),
            stage_time: at(0, 1),
            annotations: Annotations::new(),
        }
    }

    /// A distinct event of some bulk, for the writer tests.
    fn numbered_uri(i: usize) -> String {
        format!("/api/v1/namespaces/dev/pods/p-{i}")
    }

    pub(super) fn numbered(i: usize) -> Event<'static> {
        let mut event = full_event();
        event.audit_id = AuditId::new();
        event.request_uri = numbered_uri(i).into();
        event
    }

    pub(super) fn config(file: &Path, queue_size: usize) -> Audit {
        Audit {
            stdout: false,
            file: Some(file.to_path_buf()),
            max_file_size: 0,
            max_backups: 0,
            queue_size,
            ..Audit::default()
        }
    }

    /// Every line of `path`, each checked to be one JSON object.
    pub(super) fn lines(path: &Path) -> Vec<Value> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends mid-line",
            path.display()
        );
        text.lines()
            .map(|line| serde_json::from_str::<Value>(line).expect("each line is one JSON object"))
            .inspect(|value| assert!(value.is_object()))
            .collect()
    }

    fn uri(value: &Value) -> &str {
        value["requestURI"].as_str().unwrap()
    }

    /// Polls `fut` exactly once.
    async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx))).await
    }

    #[test]
    fn a_full_event_has_the_api_servers_shape() {
        let line = full_event().to_line();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        assert!(text.starts_with(
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"0f8c1a2b-"#
        ));
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            value,
            json!({
                "kind": "Event",
                "apiVersion": "audit.k8s.io/v1",
                "level": "Metadata",
                "auditID": "0f8c1a2b-3c4d-4e5f-8a6b-7c8d9e0f1a2b",
                "stage": "ResponseComplete",
                "requestURI": "/api/v1/namespaces/dev/pods?limit=500",
                "verb": "list",
                "user": {
                    "username": "alice",
                    "uid": "u-1",
                    "groups": ["devs", "ops"],
                    "extra": {"scopes": ["a", "b"]}
                },
                "impersonatedUser": {"username": "alice", "groups": ["devs"]},
                "sourceIPs": ["192.0.2.10"],
                "userAgent": "kubectl/v1.34.0",
                "objectRef": {"resource": "pods", "namespace": "dev", "apiVersion": "v1"},
                "responseStatus": {"metadata": {}, "code": 200},
                "requestReceivedTimestamp": "2026-11-28T12:00:00.123456Z",
                "stageTimestamp": "2026-11-28T12:00:00.130001Z",
                "annotations": {"kubegate.io/decision": "allow", "kubegate.io/rule": "devs-read"}
            })
        );
    }

    #[test]
    fn empty_fields_are_omitted() {
        let event = minimal_event();
        let value: Value = serde_json::from_slice(&event.to_line()).unwrap();
        assert_eq!(
            value,
            json!({
                "kind": "Event",
                "apiVersion": "audit.k8s.io/v1",
                "level": "Metadata",
                "auditID": event.audit_id.as_str(),
                "stage": "ResponseStarted",
                "requestURI": "/api",
                "verb": "get",
                "responseStatus": {"metadata": {}, "code": 401},
                "requestReceivedTimestamp": "1970-01-01T00:00:00.000000Z",
                "stageTimestamp": "1970-01-01T00:00:00.000001Z"
            })
        );
        let user = Identity {
            uid: Some(String::new()),
            ..Identity::new("bob", Vec::<String>::new())
        };
        assert_eq!(
            serde_json::to_value(UserInfo::from(&user)).unwrap(),
            json!({"username": "bob"})
        );
        let object = ObjectRef {
            resource: "namespaces".into(),
            ..ObjectRef::default()
        };
        assert_eq!(
            serde_json::to_value(&object).unwrap(),
            json!({"resource": "namespaces"})
        );
        let object = ObjectRef {
            api_group: "apps".into(),
            subresource: "scale".into(),
            name: "web".into(),
            ..ObjectRef::default()
        };
        assert_eq!(
            serde_json::to_value(&object).unwrap(),
            json!({"name": "web", "apiGroup": "apps", "subresource": "scale"})
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(ts(at(0, 0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            ts(at(1_795_867_200, 123_456)),
            "2026-11-28T12:00:00.123456Z"
        );
        // Leap days: a year divisible by 400, an ordinary leap year; 2100 has no Feb 29.
        assert_eq!(ts(at(951_782_400, 0)), "2000-02-29T00:00:00.000000Z");
        assert_eq!(
            ts(at(1_709_251_199, 999_999)),
            "2024-02-29T23:59:59.999999Z"
        );
        assert_eq!(ts(at(68_256_000, 0)), "1972-03-01T00:00:00.000000Z");
        assert_eq!(ts(at(4_107_456_000, 0)), "2100-02-28T00:00:00.000000Z");
        assert_eq!(ts(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000000Z");
        assert_eq!(ts(at(253_402_300_799, 0)), "9999-12-31T23:59:59.000000Z");
        // Nanoseconds are truncated, not rounded.
        assert_eq!(
            ts(UNIX_EPOCH + Duration::from_nanos(1_999)),
            "1970-01-01T00:00:00.000001Z"
        );
        // Before the epoch.
        assert_eq!(
            ts(UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31T23:59:59.000000Z"
        );
        assert_eq!(
            ts(UNIX_EPOCH - Duration::from_nanos(1_500)),
            "1969-12-31T23:59:59.999998Z"
        );
    }

    #[test]
    fn civil_from_days_agrees_with_counting_days() {
        fn days_in(year: i64, month: u32) -> u32 {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            }
        }
        // Forward from 1970 to 2400, backward to 1600.
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..157_000 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            d += 1;
            if d > days_in(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        let (mut y, mut m, mut d) = (1969, 12, 31);
        for days in 1..135_000 {
            assert_eq!(civil_from_days(-days), (y, m, d), "day -{days}");
            d -= 1;
            if d == 0 {
                m -= 1;
                if m == 0 {
                    m = 12;
                    y -= 1;
                }
                d = days_in(y, m);
            }
        }
    }

    #[test]
    fn audit_ids_from_many_threads_never_repeat() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..20_000).map(|_| AuditId::new()).collect::<Vec<_>>()))
            .collect();
        let mut seen = HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(
                    seen.insert(id.as_str().to_string()),
                    "{} repeated",
                    id.as_str()
                );
            }
        }
        assert_eq!(seen.len(), 80_000);
    }

    #[test]
    fn audit_ids_are_v4_uuids_and_unique() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = AuditId::new();
            let s = id.as_str();
            assert_eq!(s.len(), 36);
            assert_eq!(id.to_string(), s);
            for (i, c) in s.chars().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    assert_eq!(c, '-', "{s}");
                } else {
                    assert!(matches!(c, '0'..='9' | 'a'..='f'), "{s}");
                }
            }
            assert_eq!(&s[14..15], "4", "version nibble: {s}");
            assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "variant: {s}");
            assert!(seen.insert(id));
        }
        assert_eq!(
            AuditId::from_random([0xff; 16]).as_str(),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        assert_eq!(
            AuditId::from_random([0; 16]).as_str(),
            "00000000-0000-4000-8000-000000000000"
        );
        assert_eq!(
            serde_json::to_value(AuditId::from_random([0; 16])).unwrap(),
            json!("00000000-0000-4000-8000-000000000000")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn ten_thousand_concurrent_records_are_all_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(config(&path, 16)).unwrap();
        let tasks: Vec<_> = (0..100)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        log.record(&numbered(t * 100 + i)).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let handle = log.clone();
        log.close().await.unwrap();
        assert_eq!(handle.written(), 10_000);
        assert_eq!(handle.lost(), 0);
        assert_eq!(handle.inner.counts.pending.load(Ordering::Acquire), 0);
        let lines = lines(&path);
        assert_eq!(lines.len(), 10_000);
        let ids: HashSet<_> = lines
            .iter()
            .map(|l| l["auditID"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 10_000);
        let uris: HashSet<_> = lines.iter().map(uri).collect();
        assert_eq!(uris.len(), 10_000);
    }

    #[tokio::test]
    async fn rotation_never_splits_a_line_and_keeps_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let line_len = numbered(0).to_line().len() as u64;
        let max = line_len * 3 + line_len / 2;
        let log = AuditLog::start(Audit {
            max_file_size: max,
            max_backups: 100,
            ..config(&path, 4)
        })
        .unwrap();
        for i in 0..20 {
            log.record(&numbered(i)).await;
        }
        let handle = log.clone();
        log.close().await.unwrap();
        assert_eq!(handle.written(), 20);

        // Oldest backup first: the files read in order give the records in order.
        let mut files: Vec<PathBuf> = (1..=100)
            .rev()
            .map(|i| backup_path(&path, i))
            .filter(|p| p.exists())
            .collect();
        files.push(path.clone());
        // 20 records, 3 a file: six full files, the newest holds the last 2.
        assert_eq!(files.len(), 7);
        let mut all = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let size = std::fs::metadata(file).unwrap().len();
            assert!(size <= max, "{} is {size} bytes", file.display());
            let lines = lines(file);
            assert_eq!(
                lines.len(),
                if i == 6 { 2 } else { 3 },
                "{}",
                file.display()
            );
            all.extend(lines);
        }
        let uris: Vec<_> = all.iter().map(uri).collect();
        let expected: Vec<_> = (0..20).map(numbered_uri).collect();
        assert_eq!(uris, expected);
    }

    #[tokio::test]
    async fn rotation_deletes_the_oldest_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let line_len = numbered(0).to_line().len() as u64;
        let log = AuditLog::start(Audit {
            max_file_size: line_len * 2,
            max_backups: 2,
            ..config(&path, 1)
        })
        .unwrap();
        for i in 0..10 {
            log.record(&numbered(i)).await;
        }
        log.close().await.unwrap();
        assert!(!backup_path(&path, 3).exists());
        let mut uris = Vec::new();
        for file in [backup_path(&path, 2), backup_path(&path, 1), path.clone()] {
            uris.extend(lines(&file).iter().map(|l| uri(l).to_owned()));
        }
        let expected: Vec<_> = (4..10).map(numbered_uri).collect();
        assert_eq!(uris, expected);
    }

    #[tokio::test]
    async fn a_record_larger_than_the_limit_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(Audit {
            max_file_size: 100,
            max_backups: 5,
            ..config(&path, 8)
        })
        .unwrap();
        let mut big = numbered(0);
        big.annotations
            .insert("kubegate.io/note".into(), "x".repeat(5_000).into());
        log.record(&numbered(1)).await;
        log.record(&big).await;
        log.record(&numbered(2)).await;
        log.close().await.unwrap();
        // Each record is larger than the limit: one a file, none split.
        let files = [backup_path(&path, 2), backup_path(&path, 1), path.clone()];
        let per_file: Vec<_> = files.iter().map(|f| lines(f)).collect();
        assert!(per_file.iter().all(|l| l.len() == 1));
        assert_eq!(
            per_file[1][0]["annotations"]["kubegate.io/note"]
                .as_str()
                .unwrap()
                .len(),
            5_000
        );
        assert!(!backup_path(&path, 3).exists());
    }

    #[tokio::test]
    async fn close_flushes_everything_recorded_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(config(&path, 1024)).unwrap();
        for i in 0..500 {
            log.record(&numbered(i)).await;
        }
        let handle = log.clone();
        log.close().await.unwrap();
        assert_eq!(lines(&path).len(), 500);
        assert_eq!(handle.written(), 500);
    }

    #[tokio::test]
    async fn records_after_close_are_refused_loudly_and_close_is_repeatable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(config(&path, 4)).unwrap();
        let other = log.clone();
        log.record(&numbered(0)).await;
        log.close().await.unwrap();
        other.record(&numbered(1)).await;
        assert_eq!(other.lost(), 1);
        assert_eq!(other.written(), 1);
        assert_eq!(other.inner.counts.pending.load(Ordering::Acquire), 0);
        // A second close waits for the same (finished) writer and reports its outcome.
        let third = other.clone();
        other.close().await.unwrap();
        third.record(&numbered(2)).await;
        assert_eq!(third.lost(), 2);
        assert_eq!(lines(&path).len(), 1);
    }

    #[tokio::test]
    async fn a_full_queue_makes_record_wait_instead_of_dropping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let gate = Arc::new(Semaphore::new(0));
        let log = AuditLog::start_gated(config(&path, 1), None, Some(gate.clone())).unwrap();
        let pending = |log: &AuditLog| log.inner.counts.pending.load(Ordering::Acquire);

        // The writer is stalled: the first record takes the only queue slot...
        log.record(&numbered(0)).await;
        assert_eq!(pending(&log), 1);
        // ...and the second waits for space, counted as pending, not dropped.
        let second = numbered(1);
        let mut waiting = Box::pin(log.record(&second));
        assert!(poll_once(&mut waiting).await.is_pending());
        tokio::task::yield_now().await;
        assert!(poll_once(&mut waiting).await.is_pending());
        assert_eq!(pending(&log), 2);
        assert_eq!(log.written(), 0);
        assert_eq!(log.lost(), 0);

        // Let the writer go: the waiting record is accepted and written.
        gate.add_permits(1_000);
        waiting.await;
        let handle = log.clone();
        log.close().await.unwrap();
        assert_eq!(handle.written(), 2);
        assert_eq!(pending(&handle), 0);
        let uris: Vec<_> = lines(&path).iter().map(|l| uri(l).to_owned()).collect();
        assert_eq!(
            uris,
            [
                "/api/v1/namespaces/dev/pods/p-0",
                "/api/v1/namespaces/dev/pods/p-1"
            ]
        );
    }

    #[tokio::test]
    async fn a_cancelled_record_is_counted_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let gate = Arc::new(Semaphore::new(0));
        let log = AuditLog::start_gated(config(&path, 1), None, Some(gate.clone())).unwrap();
        log.record(&numbered(0)).await;
        let second = numbered(1);
        let mut waiting = Box::pin(log.record(&second));
        assert!(poll_once(&mut waiting).await.is_pending());
        drop(waiting);
        assert_eq!(log.lost(), 1);
        assert_eq!(log.inner.counts.pending.load(Ordering::Acquire), 1);
        gate.add_permits(1_000);
        let handle = log.clone();
        let error = log.close().await.unwrap_err();
        assert!(
            error.to_string().contains("1 audit records were lost"),
            "{error}"
        );
        assert_eq!(handle.written(), 1);
        assert_eq!(lines(&path).len(), 1);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn appends_to_an_existing_file_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(config(&path, 4)).unwrap();
        log.record(&numbered(0)).await;
        log.close().await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A previous run that died mid-line: the next record starts on a line of its own.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"kind":"Ev"#).unwrap();
        drop(file);
        let log = AuditLog::start(config(&path, 4)).unwrap();
        log.record(&numbered(1)).await;
        log.close().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1], r#"{"kind":"Ev"#);
        let last: Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(uri(&last), "/api/v1/namespaces/dev/pods/p-1");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(start_paused = true)]
    async fn write_errors_are_retried_then_counted_as_lost() {
        // Every write to /dev/full fails with ENOSPC. No rotation: never rename it.
        let log = AuditLog::start(config(Path::new("/dev/full"), 4)).unwrap();
        for i in 0..3 {
            log.record(&numbered(i)).await;
        }
        let handle = log.clone();
        let error = log.close().await.unwrap_err();
        assert!(
            error.to_string().contains("audit records were lost"),
            "{error}"
        );
        assert_eq!(handle.written(), 0);
        assert_eq!(handle.lost(), 3);
        assert_eq!(handle.inner.counts.pending.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn start_refuses_a_useless_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let no_sink = Audit {
            file: None,
            ..config(&path, 4)
        };
        assert_eq!(
            AuditLog::start(no_sink).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            AuditLog::start(config(&path, 0)).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let missing_dir = dir.path().join("nope").join("audit.log");
        let error = AuditLog::start(config(&missing_dir, 4)).unwrap_err();
        assert!(error.to_string().contains("nope"), "{error}");
    }

    #[test]
    fn start_needs_a_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let error = AuditLog::start(config(&dir.path().join("audit.log"), 4)).unwrap_err();
        assert!(error.to_string().contains("tokio runtime"), "{error}");
    }

    #[test]
    fn handles_and_record_futures_are_send() {
        fn send_sync<T: Send + Sync + Clone>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<AuditLog>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::start(config(&dir.path().join("audit.log"), 4)).unwrap();
        let event = minimal_event();
        send(&log.record(&event));
        send(&log.record_refusal(SummaryKey::Address("192.0.2.1".into()), &event));
        send(&log.clone().close());
    }

    #[tokio::test]
    async fn omit_user_info_leaves_every_identity_out_of_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(Audit {
            omit_user_info: true,
            ..config(&path, 8)
        })
        .unwrap();
        log.record(&full_event()).await;
        // A refusal of a verified user opens a window keyed by the username; the second
        // is counted into its summary.
        let mut refusal = minimal_event();
        refusal.user = full_event().user;
        let mut second = refusal.clone();
        second.audit_id = AuditId::new();
        for event in [&refusal, &second] {
            log.record_refusal(SummaryKey::User("alice".into()), event)
                .await;
        }
        log.close().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let records = lines(&path);
        assert_eq!(records.len(), 3, "{text}");
        for record in &records {
            assert!(record.get("user").is_none(), "{record}");
            assert!(record.get("impersonatedUser").is_none(), "{record}");
        }
        assert_eq!(records[2]["annotations"][summary::SUMMARY_KEY], "user");
        for name in ["alice", "\"ops\"", "u-1", "scopes"] {
            assert!(!text.contains(name), "{name} in {text}");
        }
        // Everything else is kept.
        assert_eq!(records[0]["auditID"], full_event().audit_id.as_str());
        assert_eq!(records[0]["annotations"]["kubegate.io/rule"], "devs-read");
        // Without the option the same event names them.
        let plain = String::from_utf8(full_event().to_line()).unwrap();
        assert!(plain.contains("\"username\":\"alice\""), "{plain}");
        assert!(plain.contains("impersonatedUser"), "{plain}");
    }

    #[test]
    fn backoff_is_bounded() {
        let delays: Vec<_> = (0..RETRIES).map(backoff).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1_000].map(Duration::from_millis)
        );
    }
}
