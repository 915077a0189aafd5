//! The audit webhook sink end to end: a TLS receiver in the test, named by a kubeconfig
//! file with its CA and a bearer token, gets the file's records as `EventList` batches,
//! through failures, at shutdown, and when it never answers (batch mode drops and counts,
//! blocking mode makes requests wait).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kubegate::audit::webhook::WebhookStats;
use kubegate_tests::{GatewayOptions, TestGateway, TestPki, eventually};
use serde_json::Value;
use tokio::sync::watch;

const PODS: &str = "/api/v1/namespaces/dev/pods";
const TOKEN: &str = "webhook-receiver-token-3f1c";

/// What the receiver has seen, shared with the test.
#[derive(Default)]
struct Seen {
    /// POSTs that arrived (answered or not).
    posts: usize,
    /// The items of every batch answered 200, in arrival order.
    accepted: Vec<Value>,
    /// Bodies answered 200, as text (for "nothing of the user in it").
    bodies: Vec<String>,
}

/// A TLS receiver on 127.0.0.1: answers 500 to the first `fail_first` POSTs, waits while
/// `hold` is true, then answers 200 and keeps the items.
struct Receiver {
    port: u16,
    pki: TestPki,
    seen: Arc<Mutex<Seen>>,
    hold: watch::Sender<bool>,
}

impl Receiver {
    async fn start(fail_first: usize, hold: bool) -> Receiver {
        kubegate::app::install_crypto_provider();
        let pki = TestPki::generate();
        let tls = tls_config(&pki);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (hold_tx, hold_rx) = watch::channel(hold);
        let state = (seen.clone(), hold_rx);
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let (seen, hold) = state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |r| {
                        answer(r, seen.clone(), hold.clone(), fail_first)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Receiver {
            port,
            pki,
            seen,
            hold: hold_tx,
        }
    }

    /// A kubeconfig naming this receiver as `--audit-webhook-config-file` takes it.
    fn kubeconfig(&self) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.pki.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: siem\n  cluster:\n    server: https://127.0.0.1:{port}/k8s-audit\n    certificate-authority-data: {ca}\nusers:\n- name: kubegate\n  user:\n    token: {TOKEN}\ncontexts:\n- name: default\n  context:\n    cluster: siem\n    user: kubegate\ncurrent-context: default\n",
            port = self.port
        )
    }

    fn posts(&self) -> usize {
        self.seen.lock().unwrap().posts
    }

    fn accepted(&self) -> Vec<Value> {
        self.seen.lock().unwrap().accepted.clone()
    }
}

fn tls_config(pki: &TestPki) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn answer(
    request: Request<Incoming>,
    seen: Arc<Mutex<Seen>>,
    mut hold: watch::Receiver<bool>,
    fail_first: usize,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        Ok(r)
    };
    let authorized = request.headers().get("authorization").map(|v| v.as_bytes())
        == Some(format!("Bearer {TOKEN}").as_bytes());
    let right_place = request.method() == http::Method::POST
        && request.uri().path() == "/k8s-audit"
        && request.headers()["content-type"] == "application/json";
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let n = {
        let mut seen = seen.lock().unwrap();
        seen.posts += 1;
        seen.posts
    };
    if !authorized || !right_place {
        return reply(StatusCode::UNAUTHORIZED);
    }
    if n <= fail_first {
        return reply(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let _ = hold.wait_for(|held| !*held).await;
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["kind"], "EventList");
    assert_eq!(list["apiVersion"], "audit.k8s.io/v1");
    let mut seen = seen.lock().unwrap();
    seen.accepted
        .extend(list["items"].as_array().unwrap().iter().cloned());
    seen.bodies.push(String::from_utf8(body.to_vec()).unwrap());
    reply(StatusCode::OK)
}

async fn gateway(receiver: &Receiver, webhook: &str, audit: &str) -> TestGateway {
    TestGateway::start_with(GatewayOptions {
        files: vec![("webhook.kubeconfig".into(), receiver.kubeconfig())],
        audit_toml: Some(format!(
            "{audit}\n[audit.webhook]\nconfig_file = \"webhook.kubeconfig\"\n{webhook}\n"
        )),
        limits_toml: Some("requests_per_second = 10000\nburst = 10000".into()),
        ..GatewayOptions::default()
    })
    .await
}

fn stats(gw: &TestGateway) -> WebhookStats {
    gw.running
        .gateway()
        .audit
        .webhook_stats()
        .expect("a webhook is configured")
}

/// (auditID, stage) of each record, in order.
fn keys(records: &[Value]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            (
                r["auditID"].as_str().unwrap().to_string(),
                r["stage"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The stages of each audit ID, in the order they arrived.
fn stages_by_id(records: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, stage) in keys(records) {
        by_id.entry(id).or_default().push(stage);
    }
    by_id
}

#[tokio::test]
async fn a_receiver_that_fails_for_a_while_gets_every_record_once_with_the_files_ids() {
    let receiver = Receiver::start(3, false).await;
    let gw = gateway(
        &receiver,
        "batch_max_size = 5\nbatch_max_wait = \"20ms\"\ninitial_backoff = \"10ms\"\nmax_retries = 10",
        "",
    )
    .await;
    let alice = gw.issuer.token("alice", &["devs"]);
    let mut ids = Vec::new();
    for i in 0..20 {
        let path = if i % 4 == 3 {
            "/api/v1/namespaces/dev/secrets".to_string()
        } else {
            format!("{PODS}?limit={i}")
        };
        let r = gw.get(&path, &alice).await;
        ids.push(r.headers["audit-id"].to_str().unwrap().to_string());
    }
    // A watch: ResponseStarted, then ResponseComplete when the sandbox ends it.
    let watch = gw
        .get(&format!("{PODS}?watch=true&timeoutSeconds=1"), &alice)
        .await;
    assert_eq!(watch.status, StatusCode::OK);
    let watch_id = watch.headers["audit-id"].to_str().unwrap().to_string();
    // The receiver has a record before the gateway has its answer: wait for both.
    eventually("every record delivered", async || {
        receiver.accepted().len() >= 22 && stats(&gw).delivered >= 22
    })
    .await;
    let stats = stats(&gw);
    let TestGateway { running, dir, .. } = gw;
    running.shutdown().await.unwrap();

    let file = kubegate_tests::audit_records_in(dir.path());
    let delivered = receiver.accepted();
    assert_eq!(file.len(), 22, "{file:#?}");
    // Exactly once each, byte-identical to the file's records.
    let mut from_file = file.clone();
    let mut from_webhook = delivered.clone();
    let key = |r: &Value| format!("{}{}", r["auditID"], r["stage"]);
    from_file.sort_by_key(key);
    from_webhook.sort_by_key(key);
    assert_eq!(from_webhook, from_file);
    for id in &ids {
        assert_eq!(stages_by_id(&delivered)[id], ["ResponseComplete"]);
    }
    assert_eq!(
        stages_by_id(&delivered)[&watch_id],
        ["ResponseStarted", "ResponseComplete"]
    );
    // The requests one after another: the webhook got them in that order.
    let order: Vec<_> = keys(&delivered)
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| ids.contains(id))
        .collect();
    assert_eq!(order, ids);
    assert_eq!(stats.failures, 3);
    assert_eq!(stats.lost, 0);
    assert_eq!(stats.delivered, 22);
    assert_eq!(receiver.posts(), 3 + stats.batches as usize);
}

#[tokio::test]
async fn shutdown_delivers_the_buffered_records_and_omit_user_info_leaves_users_out() {
    let receiver = Receiver::start(0, false).await;
    // Nothing would be sent for ten minutes but for the flush at shutdown.
    let gw = gateway(
        &receiver,
        "batch_max_wait = \"10m\"",
        "omit_user_info = true",
    )
    .await;
    let alice = gw.issuer.token("alice", &["devs", "alice-team"]);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = gw.get(PODS, &alice).await;
        assert_eq!(r.status, StatusCode::OK);
        ids.push(r.headers["audit-id"].to_str().unwrap().to_string());
    }
    eventually("five records buffered", async || stats(&gw).buffered == 5).await;
    assert_eq!(receiver.posts(), 0);
    let audit = gw.running.gateway().audit.clone();
    let TestGateway { running, dir, .. } = gw;
    running.shutdown().await.unwrap();

    let delivered = receiver.accepted();
    let got: Vec<_> = keys(&delivered).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids);
    assert_eq!(audit.webhook_stats().unwrap().buffered, 0);
    // Neither sink names the user, their groups or the identity forwarded.
    let file = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let bodies = receiver.seen.lock().unwrap().bodies.join("\n");
    for text in [&file, &bodies] {
        assert!(!text.contains("alice"), "{text}");
        assert!(!text.contains("\"user\""), "{text}");
        assert!(!text.contains("impersonatedUser"), "{text}");
        assert!(text.contains(&ids[0]));
    }
}

#[tokio::test]
async fn batch_mode_drops_and_counts_when_the_receiver_never_answers_without_slowing_requests() {
    let receiver = Receiver::start(0, true).await;
    let gw = gateway(
        &receiver,
        "buffer_size = 2\nbatch_max_size = 1\nbatch_max_wait = \"1ms\"\nrequest_timeout = \"1m\"\nflush_timeout = \"100ms\"",
        "",
    )
    .await;
    let alice = gw.issuer.token("alice", &["devs"]);
    // Twenty requests behind a receiver that holds every POST for a minute: not slowed.
    tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..20 {
            assert_eq!(gw.get(PODS, &alice).await.status, StatusCode::OK);
        }
    })
    .await
    .expect("requests are not held up by the receiver");
    let s = stats(&gw);
    // At most one batch in flight and two buffered; the rest were dropped and counted.
    assert_eq!(s.delivered, 0);
    assert!(s.buffered <= 3, "{s:?}");
    assert_eq!(s.lost + s.buffered, 20, "{s:?}");
    assert!(s.lost >= 17, "{s:?}");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("kubegate_audit_webhook_records_lost_total"),
        "{metrics}"
    );
    assert!(metrics.contains("kubegate_audit_webhook_buffer_depth"));
    let audit = gw.running.gateway().audit.clone();
    let TestGateway { running, dir, .. } = gw;
    // The flush gives up after flush_timeout: the held records are lost, counted, and the
    // file still has every record.
    tokio::time::timeout(Duration::from_secs(10), running.shutdown())
        .await
        .expect("shutdown is bounded by flush_timeout")
        .unwrap();
    let s = audit.webhook_stats().unwrap();
    assert_eq!((s.lost, s.buffered, s.delivered), (20, 0, 0));
    assert_eq!(kubegate_tests::audit_records_in(dir.path()).len(), 20);
}

#[tokio::test]
async fn blocking_mode_makes_requests_wait_for_room_and_drops_nothing() {
    let receiver = Receiver::start(0, true).await;
    let gw = Arc::new(
        gateway(
            &receiver,
            "mode = \"blocking\"\nbuffer_size = 1\nbatch_max_size = 1\nbatch_max_wait = \"1ms\"\nrequest_timeout = \"1m\"",
            "",
        )
        .await,
    );
    let alice = gw.issuer.token("alice", &["devs"]);
    // The first record is in flight (held by the receiver), the second fills the buffer.
    assert_eq!(gw.get(PODS, &alice).await.status, StatusCode::OK);
    eventually("the first batch is in flight", async || {
        receiver.posts() == 1
    })
    .await;
    assert_eq!(gw.get(PODS, &alice).await.status, StatusCode::OK);
    // The third waits for room.
    let third = {
        let (gw, alice) = (gw.clone(), alice.clone());
        tokio::spawn(async move { gw.get(PODS, &alice).await })
    };
    let mut third = std::pin::pin!(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a request completed while the webhook buffer was full"
    );
    assert_eq!(stats(&gw).lost, 0);
    // The receiver comes back: the third completes and nothing was lost.
    receiver.hold.send_replace(false);
    let r = tokio::time::timeout(Duration::from_secs(10), &mut third)
        .await
        .expect("the waiting request completes once the receiver answers")
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // The receiver has a record before the gateway has its answer: wait for both.
    eventually("three records delivered", async || {
        receiver.accepted().len() == 3 && stats(&gw).delivered == 3
    })
    .await;
    let s = stats(&gw);
    assert_eq!((s.delivered, s.lost, s.buffered), (3, 0, 0));
}
