//! Streams and upgrades through the gateway: watches and followed logs arrive as they
//! happen, exec/attach/port-forward are spliced only after the upstream switched protocols,
//! denied or refused upgrades never are, request bodies are capped, idle streams end.
//!
//! The real kubectl drives watch, logs and exec; a hand-written HTTP/1.1 client drives the
//! SPDY handshake and the refusals at the protocol level.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use kubegate_tests::{
    GatewayOptions, RawResponse, TestGateway, UPSTREAM_TOKEN, collect, connect_http1, eventually,
    https_client, kubectl, read_response,
};
use serde_json::{Value, json};
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _,
};

/// Alice (`devs`) may run things in `dev`; Bob (`guests`) may only look.
const POLICY: &str = concat!(
    kubegate_tests::policy_preamble!(),
    r#"


[[rule]]
name = "devs-run-pods"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [{ api_groups = [""], resources = ["pods", "pods/log", "pods/exec", "pods/attach", "pods/portforward", "configmaps"], namespaces = ["dev"], verbs = ["get", "list", "watch", "create", "delete"] }]

[[rule]]
name = "guests-look"
effect = "allow"
subjects = { groups = ["guests"] }
resources = [{ api_groups = [""], resources = ["pods", "pods/log"], namespaces = ["dev"], verbs = ["get", "list", "watch"] }]
"#
);

/// Every test here opens streams; the metrics test needs to be alone to count them.
static STREAMS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn gateway() -> TestGateway {
    gateway_with(None).await
}

async fn gateway_with(limits: Option<&str>) -> TestGateway {
    TestGateway::start_with(GatewayOptions {
        policy: POLICY.to_string(),
        limits_toml: limits.map(str::to_string),
        ..GatewayOptions::default()
    })
    .await
}

fn alice(gw: &TestGateway) -> String {
    gw.issuer.token("alice", &["devs"])
}

fn bob(gw: &TestGateway) -> String {
    gw.issuer.token("bob", &["guests"])
}

async fn create_pod(gw: &TestGateway, token: &str, name: &str) {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "dev"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    });
    let request = Request::post(format!("{}/api/v1/namespaces/dev/pods", gw.url()))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(pod.to_string())))
        .unwrap();
    let r = collect(&https_client(&gw.pki.ca_pem, false), request).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// kubectl with piped stdio, killed when dropped.
fn spawn_kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(kubectl())
        .args(args)
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl runs")
}

async fn next_line<R: AsyncRead + Unpin>(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<R>>,
) -> String {
    tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a line within 20 s")
        .expect("readable")
        .expect("not at the end")
}

// ---------------------------------------------------------------------------------------
// Watches and logs

#[tokio::test]
async fn kubectl_get_watch_sees_a_pod_created_after_it_started() {
    let _shared = STREAMS.read().await;
    let gw = gateway().await;
    let token = alice(&gw);
    let kubeconfig = gw.client_kubeconfig("alice", &token);
    let mut watch = spawn_kubectl(
        &kubeconfig,
        &["get", "pods", "-n", "dev", "-w", "-o", "name"],
    );
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    eventually("kubectl's watch reached the upstream", async || {
        gw.sandbox
            .requests()
            .iter()
            .any(|r| r.path_and_query.contains("watch=true"))
    })
    .await;

    create_pod(&gw, &token, "late").await;
    assert_eq!(next_line(&mut lines).await, "pod/late");
    let watched = gw
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.contains("watch=true"))
        .unwrap();
    assert_eq!(watched.impersonate_user(), Some("alice"));
    // kubectl speaks HTTP/2 to the gateway; the gateway multiplexes watches over HTTP/2
    // upstream and sends ordinary requests (kubectl's initial list) over its HTTP/1.1 pool.
    assert_eq!(watched.http_version, "HTTP/2.0");
    let listed = gw
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.contains("/pods") && !r.path_and_query.contains("watch"))
        .unwrap();
    assert_eq!(listed.http_version, "HTTP/1.1");
}

#[tokio::test]
async fn watch_events_reach_the_client_as_they_happen() {
    let _shared = STREAMS.read().await;
    let gw = gateway().await;
    let token = alice(&gw);
    for http1_only in [false, true] {
        let client = https_client(&gw.pki.ca_pem, http1_only);
        let request = Request::get(format!(
            "{}/api/v1/namespaces/dev/pods?watch=true&resourceVersion=0",
            gw.url()
        ))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let name = if http1_only { "event-h1" } else { "event-h2" };
        // Pods created before this watch started come first as ADDED: skip them.
        let created = Instant::now();
        create_pod(&gw, &token, name).await;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("an event within 5 s")
                .expect("the watch is open")
                .unwrap();
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let event: Value = serde_json::from_slice(&data).unwrap();
            if event["object"]["metadata"]["name"] == name {
                assert_eq!(event["type"], "ADDED");
                let latency = created.elapsed();
                // The create itself is a round trip through the gateway; the event follows
                // within milliseconds on loopback. A buffering gateway would hold it.
                assert!(latency < Duration::from_secs(1), "{latency:?}");
                eprintln!("{name}: create + event in {latency:?}");
                break;
            }
        }
    }
}

#[tokio::test]
async fn kubectl_logs_follow_streams_until_the_pod_is_deleted() {
    let _shared = STREAMS.read().await;
    let gw = gateway().await;
    let token = alice(&gw);
    create_pod(&gw, &token, "chatty").await;
    gw.sandbox
        .append_log("dev", "chatty", "before the follow\n");
    let kubeconfig = gw.client_kubeconfig("alice", &token);
    let mut logs = spawn_kubectl(&kubeconfig, &["logs", "-f", "chatty", "-n", "dev"]);
    let mut lines = tokio::io::BufReader::new(logs.stdout.take().unwrap()).lines();
    assert!(next_line(&mut lines).await.contains("runs nothing"));
    assert_eq!(next_line(&mut lines).await, "before the follow");
    for i in 0..3 {
        let line = format!("line {i} written while following");
        gw.sandbox.append_log("dev", "chatty", &format!("{line}\n"));
        assert_eq!(next_line(&mut lines).await, line);
    }
    let request = gw
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.contains("/log"))
        .unwrap();
    assert!(
        request.path_and_query.contains("follow=true"),
        "{request:?}"
    );

    // The container "ends" with its pod: the stream ends and kubectl exits cleanly.
    let r = gw
        .request(
            Method::DELETE,
            "/api/v1/namespaces/dev/pods/chatty",
            Some(&token),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let status = tokio::time::timeout(Duration::from_secs(20), logs.wait())
        .await
        .expect("kubectl logs -f ends with the pod")
        .unwrap();
    assert!(status.success());
}

// ---------------------------------------------------------------------------------------
// exec over WebSocket (kubectl's v5.channel.k8s.io)

async fn kubectl_exec(
    kubeconfig: &std::path::Path,
    command: &[&str],
    stdin: &[u8],
) -> (Option<i32>, String, String) {
    let mut args = vec!["exec", "-i", "runner", "-n", "dev", "--"];
    args.extend_from_slice(command);
    let mut child = spawn_kubectl(kubeconfig, &args);
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    // EOF on stdin: kubectl sends the v5 close signal for the stdin channel.
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl exec finished within 60 s")
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_exec_gets_its_stdin_back_and_the_exit_code() {
    let _shared = STREAMS.read().await;
    let gw = gateway().await;
    let token = alice(&gw);
    create_pod(&gw, &token, "runner").await;
    let kubeconfig = gw.client_kubeconfig("alice", &token);

    let (code, stdout, stderr) = kubectl_exec(&kubeconfig, &["cat"], b"hello\nworld\n").await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "hello\nworld\n");

    let (code, stdout, stderr) =
        kubectl_exec(&kubeconfig, &["sh", "-c", "cat; exit 3"], b"bye\n").await;
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(stdout, "bye\n");

    let execs: Vec<_> = gw
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.contains("/exec?"))
        .collect();
    assert_eq!(execs.len(), 2, "{execs:?}");
    for exec in execs {
        assert_eq!(exec.impersonate_user(), Some("alice"));
        assert_eq!(
            exec.header_values("authorization"),
            vec![format!("Bearer {UPSTREAM_TOKEN}")]
        );
        assert!(exec.headers.iter().all(|(_, v)| !v.contains(&token)));
        assert_eq!(exec.header_values("upgrade"), vec!["websocket"]);
        assert_eq!(
            exec.header_values("sec-websocket-protocol"),
            vec!["v5.channel.k8s.io"]
        );
        assert_eq!(exec.http_version, "HTTP/1.1");
    }
    eventually("the sessions are closed", async || {
        gw.sandbox.open_tunnels() == 0
    })
    .await;
}

#[tokio::test]
async fn a_denied_exec_is_refused_by_the_gateway_and_never_reaches_the_upstream() {
    let _shared = STREAMS.read().await;
    let gw = gateway().await;
    create_pod(&gw, &alice(&gw), "runner").await;
    let token = bob(&gw);
    let kubeconfig = gw.client_kubeconfig("bob", &token);

    let (code, stdout, stderr) = kubectl_exec(&kubeconfig, &["cat"], b"secret\n").await;
    assert_ne!(code, Some(0));
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(r#"(Forbidden): kubegate: User "bob" cannot create resource "pods/exec""#),
        "{stderr}"
    );
    // kubectl tried WebSocket then fell back to SPDY: both were refused by the gateway.
    assert!(
        gw.sandbox
            .requests()
            .iter()
            .all(|r| !r.path_and_query.contains("/exec")),
        "{:?}",
        gw.sandbox.requests()
    );

    // The same at the protocol level: a 403 Status from the gateway, naming the rule.
    let mut conn = connect_http1(&gw).await;
    let response = upgrade_request(
        &mut conn,
        &token,
        "/api/v1/namespaces/dev/pods/runner/exec?command=sh&stdin=true",
        "SPDY/3.1",
    )
    .await;
    assert_eq!(response.status, 403);
    let status: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(status["reason"], "Forbidden");
    let message = status["message"].as_str().unwrap();
    assert!(message.starts_with("kubegate:"), "{message}");
    assert!(
        message.contains(r#"cannot create resource "pods/exec""#),
        "{message}"
    );
    assert!(
        gw.sandbox
            .requests()
            .iter()
            .all(|r| !r.path_and_query.contains("/exec"))
    );
}

// ---------------------------------------------------------------------------------------
// SPDY at the protocol level

/// Sends an upgrade request as kubectl's SPDY client does and reads the answer's head.
async fn upgrade_request<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
    token: &str,
    path: &str,
    protocol: &str,
) -> RawResponse {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: kubegate\r\nAuthorization: Bearer {token}\r\n\
         Connection: Upgrade\r\nUpgrade: {protocol}\r\n\
         X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    read_response(conn).await
}

const PORTFORWARD: &str = "/api/v1/namespaces/dev/pods/tunnel/portforward";

#[tokio::test]
async fn spdy_port_forward_is_spliced_after_the_upstream_switches() {
    let _shared = STREAMS.read().await;
    let gw = gateway().await;
    let token = alice(&gw);
    create_pod(&gw, &token, "tunnel").await;

    let mut conn = connect_http1(&gw).await;
    let response = upgrade_request(&mut conn, &token, PORTFORWARD, "SPDY/3.1").await;
    assert_eq!(
        response.status,
        101,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.header("upgrade"), ["SPDY/3.1"]);
    assert_eq!(response.header("connection"), ["Upgrade"]);
    // The sub-protocol negotiation passes through untouched.
    assert_eq!(
        response.header("x-stream-protocol-version"),
        ["portforward.k8s.io"]
    );

    // Raw bytes both ways, including ones that look like HTTP.
    for payload in [
        &b"\x80\x03\x00\x01binary"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0u8; 20_000],
    ] {
        conn.write_all(payload).await.unwrap();
        let mut echoed = vec![0; payload.len()];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut echoed))
            .await
            .expect("the echo within 10 s")
            .unwrap();
        assert_eq!(echoed, payload);
    }
    assert_eq!(gw.sandbox.open_tunnels(), 1);

    // Half-close: the client is done sending, but still reads what the upstream has left.
    conn.write_all(b"last words").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
        .await
        .expect("the upstream's close reaches the client")
        .unwrap();
    assert_eq!(rest, b"last words");
    eventually("the sandbox side is closed", async || {
        gw.sandbox.open_tunnels() == 0
    })
    .await;

    let forwarded = gw
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == PORTFORWARD)
        .unwrap();
    assert_eq!(forwarded.method, "POST");
    assert_eq!(forwarded.http_version, "HTTP/1.1");
    assert_eq!(forwarded.header_values("upgrade"), vec!["SPDY/3.1"]);
    assert_eq!(forwarded.header_values("connection"), vec!["Upgrade"]);
    assert_eq!(
        forwarded.header_values("x-stream-protocol-version"),
        vec!["portforward.k8s.io"]
    );
    assert_eq!(forwarded.impersonate_user(), Some("alice"));
    assert_eq!(forwarded.impersonate_groups(), vec!["devs"]);
    assert_eq!(
        forwarded.header_values("authorization"),
        vec![format!("Bearer {UPSTREAM_TOKEN}")]
    );
    assert!(forwarded.headers.iter().all(|(_, v)| !v.contains(&token)));
}

#[tokio::test]
async fn a_refused_upgrade_is_relayed_and_never_spliced() {
    let _shared = STREAMS.read().await;
    let gw = gateway().await;
    let token = alice(&gw);
    create_pod(&gw, &token, "tunnel").await;
    // The gateway's policy allows it, the cluster's RBAC does not.
    gw.sandbox.deny_connect("alice");

    let mut conn = connect_http1(&gw).await;
    let response = upgrade_request(&mut conn, &token, PORTFORWARD, "SPDY/3.1").await;
    assert_eq!(response.status, 403);
    assert!(response.header("upgrade").is_empty());
    let status: Value = serde_json::from_slice(&response.body).unwrap();
    // The API server's own Status, relayed.
    assert_eq!(status["reason"], "Forbidden");
    let message = status["message"].as_str().unwrap();
    assert!(!message.contains("kubegate"), "{message}");
    assert!(
        message.contains(r#"cannot create resource "pods/portforward""#),
        "{message}"
    );

    // Not spliced: the same connection still speaks HTTP, through the whole pipeline.
    let get = format!(
        "GET /api/v1/namespaces/dev/pods/tunnel HTTP/1.1\r\nHost: kubegate\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    conn.write_all(get.as_bytes()).await.unwrap();
    let response = read_response(&mut conn).await;
    assert_eq!(response.status, 200);
    let pod: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(pod["metadata"]["name"], "tunnel");
    assert_eq!(gw.sandbox.open_tunnels(), 0);

    // A missing pod: the upstream's 404, relayed the same way.
    let response = upgrade_request(
        &mut conn,
        &token,
        "/api/v1/namespaces/dev/pods/nowhere/portforward",
        "SPDY/3.1",
    )
    .await;
    assert_eq!(response.status, 404);
    assert_eq!(gw.sandbox.open_tunnels(), 0);
}

#[tokio::test]
async fn only_spdy_and_websocket_upgrades_are_accepted() {
    let _shared = STREAMS.read().await;
    let gw = gateway().await;
    let token = alice(&gw);
    create_pod(&gw, &token, "tunnel").await;
    for protocol in ["h2c", "TLS/1.2", "websocket, SPDY/3.1", "SPDY/3"] {
        let mut conn = connect_http1(&gw).await;
        let response = upgrade_request(&mut conn, &token, PORTFORWARD, protocol).await;
        assert_eq!(response.status, 400, "{protocol}");
        let status: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(status["kind"], "Status");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("SPDY/3.1 and websocket")
        );
    }
    assert!(
        gw.sandbox
            .requests()
            .iter()
            .all(|r| !r.path_and_query.contains("portforward")),
        "refused upgrades are not forwarded"
    );
}

#[tokio::test]
async fn either_side_going_away_releases_both() {
    let _shared = STREAMS.read().await;
    let gw = gateway().await;
    let token = alice(&gw);
    create_pod(&gw, &token, "tunnel").await;

    // The client vanishes without closing anything: the upstream side is closed.
    let mut conn = connect_http1(&gw).await;
    assert_eq!(
        upgrade_request(&mut conn, &token, PORTFORWARD, "SPDY/3.1")
            .await
            .status,
        101
    );
    conn.write_all(b"ping").await.unwrap();
    let mut pong = [0; 4];
    conn.read_exact(&mut pong).await.unwrap();
    assert_eq!(gw.sandbox.open_tunnels(), 1);
    drop(conn);
    eventually("the upstream connection is released", async || {
        gw.sandbox.open_tunnels() == 0
    })
    .await;

    // The upstream vanishes: the client's connection is closed.
    let mut conn = connect_http1(&gw).await;
    assert_eq!(
        upgrade_request(&mut conn, &token, PORTFORWARD, "SPDY/3.1")
            .await
            .status,
        101
    );
    let TestGateway {
        sandbox, running, ..
    } = gw;
    sandbox.shutdown().await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
        .await
        .expect("the client's connection is closed");
    // A clean end or a reset: either way, gone.
    assert!(read.is_err() || rest.is_empty(), "{read:?} {rest:?}");
    drop(running);
}

// ---------------------------------------------------------------------------------------
// Limits

/// POSTs `body` with `Transfer-Encoding: chunked` (no declared length), 8 KiB a chunk.
async fn post_chunked(gw: &TestGateway, token: &str, path: &str, body: String) -> RawResponse {
    let mut conn = connect_http1(gw).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: kubegate\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = tokio::io::split(conn);
    let writer = tokio::spawn(async move {
        for piece in body.as_bytes().chunks(8192) {
            let chunk = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
            // The gateway may answer and close before the last chunk: that is the point.
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = write.write_all(b"0\r\n\r\n").await;
    });
    let response = read_response(&mut read).await;
    writer.abort();
    response
}

#[tokio::test]
async fn request_bodies_over_the_cap_get_413_and_streamed_ones_under_it_pass() {
    let _shared = STREAMS.read().await;
    let gw = gateway_with(Some("max_request_body = 65536")).await;
    let token = alice(&gw);
    let big = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "dev"},
        "data": {"blob": "x".repeat(100_000)},
    })
    .to_string();
    let small = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "small", "namespace": "dev"},
        "data": {"blob": "x".repeat(50_000)},
    })
    .to_string();
    const CONFIGMAPS: &str = "/api/v1/namespaces/dev/configmaps";

    // A declared length over the cap: refused before anything is forwarded.
    let request = Request::post(format!("{}{CONFIGMAPS}", gw.url()))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let r = collect(&https_client(&gw.pki.ca_pem, false), request).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["reason"], "RequestEntityTooLarge");
    assert!(r.json()["message"].as_str().unwrap().contains("65536"));
    assert!(gw.sandbox.requests().iter().all(|r| r.method != "POST"));

    // Chunked, no length: streamed upstream and cut off at the cap, then 413.
    let response = post_chunked(&gw, &token, CONFIGMAPS, big).await;
    assert_eq!(
        response.status,
        413,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let status: Value = serde_json::from_slice(&response.body).unwrap();
    assert!(status["message"].as_str().unwrap().starts_with("kubegate:"));
    let r = gw.get(&format!("{CONFIGMAPS}/big"), &token).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "nothing was created");

    let response = post_chunked(&gw, &token, CONFIGMAPS, small).await;
    assert_eq!(
        response.status,
        201,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let r = gw.get(&format!("{CONFIGMAPS}/small"), &token).await;
    assert_eq!(r.json()["data"]["blob"].as_str().unwrap().len(), 50_000);
}

#[tokio::test]
async fn idle_streams_end_after_the_idle_timeout() {
    let _shared = STREAMS.read().await;
    let gw = gateway_with(Some(r#"stream_idle_timeout = "1s""#)).await;
    let token = alice(&gw);
    create_pod(&gw, &token, "tunnel").await;

    // A watch on which nothing happens ends cleanly, as at the API server's own timeout.
    let client = https_client(&gw.pki.ca_pem, false);
    let request = Request::get(format!(
        "{}/api/v1/namespaces/dev/configmaps?watch=true",
        gw.url()
    ))
    .header("authorization", format!("Bearer {token}"))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let started = Instant::now();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the idle watch ends")
        .expect("and ends cleanly");
    assert!(body.to_bytes().is_empty());
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(5),
        "{lasted:?}"
    );

    // A spliced connection on which nothing moves is closed, both sides.
    let mut conn = connect_http1(&gw).await;
    assert_eq!(
        upgrade_request(&mut conn, &token, PORTFORWARD, "SPDY/3.1")
            .await
            .status,
        101
    );
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
        .await
        .expect("the idle tunnel is closed");
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually("the upstream side is closed", async || {
        gw.sandbox.open_tunnels() == 0
    })
    .await;
}

#[tokio::test]
async fn more_watches_than_one_upstream_connection_carries_all_open() {
    let _shared = STREAMS.read().await;
    // One user's 240 open watches are past the default per-user stream cap (128), and
    // opening them at once past the default burst of the rate quota (100).
    let gw = gateway_with(Some("max_streams_per_user = 1000\nburst = 500")).await;
    let token = alice(&gw);
    // The sandbox allows 200 streams per HTTP/2 connection (hyper's default), the gateway
    // 250 per client connection: 240 watches on one client connection need the gateway
    // to spread them over several upstream connections.
    let client = https_client(&gw.pki.ca_pem, false);
    let mut watches = Vec::new();
    for _ in 0..240 {
        let request = Request::get(format!(
            "{}/api/v1/namespaces/dev/pods?watch=true",
            gw.url()
        ))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
        watches.push(client.request(request));
    }
    let responses = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(watches),
    )
    .await
    .expect("every watch is answered");
    let mut bodies = Vec::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        bodies.push(response.into_body());
    }
    // And they all still deliver.
    create_pod(&gw, &token, "seen-by-all").await;
    for body in &mut bodies {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        assert!(frame.into_data().is_ok());
    }
}

// ---------------------------------------------------------------------------------------
// Metrics

/// The value of `kubegate_open_streams{kind="<kind>"}`, 0 when absent.
async fn open_streams(gw: &TestGateway, kind: &str) -> f64 {
    let (_, text) = gw.admin_get("/metrics").await;
    let series = format!("kubegate_open_streams{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn eventually_open(gw: &TestGateway, kind: &str, want: f64) {
    eventually(&format!("{want} open {kind} streams"), async || {
        open_streams(gw, kind).await == want
    })
    .await;
}

#[tokio::test]
async fn open_watches_and_upgrades_are_a_gauge() {
    // Alone: the recorder is shared by every gateway in this process.
    let _alone = STREAMS.write().await;
    let gw = gateway().await;
    let token = alice(&gw);
    create_pod(&gw, &token, "tunnel").await;
    eventually_open(&gw, "watch", 0.0).await;
    eventually_open(&gw, "upgrade", 0.0).await;

    let client = https_client(&gw.pki.ca_pem, false);
    let request = Request::get(format!(
        "{}/api/v1/namespaces/dev/pods?watch=true",
        gw.url()
    ))
    .header("authorization", format!("Bearer {token}"))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let watch = client.request(request).await.unwrap();
    eventually_open(&gw, "watch", 1.0).await;

    let mut conn = connect_http1(&gw).await;
    assert_eq!(
        upgrade_request(&mut conn, &token, PORTFORWARD, "SPDY/3.1")
            .await
            .status,
        101
    );
    eventually_open(&gw, "upgrade", 1.0).await;

    drop(watch);
    eventually_open(&gw, "watch", 0.0).await;
    drop(conn);
    eventually_open(&gw, "upgrade", 0.0).await;
}
