//! Connection deadlines and bounds: a connection that sends nothing, a partial HTTP/2
//! preface, an HTTP/2 connection that only answers pings and an idle HTTP/1.1 keep-alive
//! connection are closed within their configured deadlines, while a connection holding an
//! open watch stays; and one address cannot hold more than its connection cap while
//! another address is still served.
//!
//! Deadlines are configured at a second or a few, and closures are asserted loosely
//! (within the deadline plus 2 s), so the tests take seconds and tolerate a busy machine.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kubegate_tests::{
    GatewayOptions, TestGateway, collect, eventually, https_client, tls_connector,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

/// Slack on every asserted closure: the deadline passed, then the gateway noticed.
const SLACK: Duration = Duration::from_secs(2);

async fn gateway(listen: &str, limits: Option<&str>) -> TestGateway {
    TestGateway::start_with(GatewayOptions {
        listen_toml: Some(listen.to_string()),
        limits_toml: limits.map(str::to_string),
        ..GatewayOptions::default()
    })
    .await
}

/// A TCP connection to the gateway from `source` (any address on 127.0.0.0/8).
async fn tcp_from(gw: &TestGateway, source: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(gw.running.addr()).await.unwrap()
}

async fn tls(gw: &TestGateway, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
    tls_offering(gw, tcp, &[b"h2", b"http/1.1"]).await
}

/// A TLS connection whose ALPN offers `protocols`: the gateway serves the one agreed on.
async fn tls_offering(
    gw: &TestGateway,
    tcp: TcpStream,
    protocols: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tls_connector(&gw.pki.ca_pem, protocols)
        .connect(name, tcp)
        .await
}

/// Reads until the gateway closes the connection; how long that took, or a panic naming
/// `what` when it stays open past `deadline` plus the slack.
async fn closed_within<S: AsyncReadExt + Unpin>(
    mut stream: S,
    deadline: Duration,
    what: &str,
) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(deadline + SLACK, async {
        // Err (a reset, or TLS without close_notify) counts as closed as well as EOF.
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: still open {:?} after the deadline of {deadline:?}",
        started.elapsed()
    );
    started.elapsed()
}

/// A GET for `path` as alice, in the URI form its client connection wants: HTTP/2 sends
/// the scheme and authority, HTTP/1.1 the path and a `Host` header.
fn get(gw: &TestGateway, path: &str, http2: bool) -> Request<Full<Bytes>> {
    let request = if http2 {
        Request::get(format!("{}{path}", gw.url()))
    } else {
        Request::get(path).header("host", "localhost")
    };
    request
        .header(
            "authorization",
            format!("Bearer {}", gw.issuer.token("alice", &["devs"])),
        )
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// `GET /version` on an HTTP/2 client connection: 200, body read to its end.
async fn version_over_h2(
    gw: &TestGateway,
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
) {
    let response = sender
        .send_request(get(gw, "/version", true))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
}

const WATCH: &str = "/api/v1/namespaces/dev/pods?watch=true";

/// Creates pod `name` in `dev` through the gateway (on a connection of its own).
async fn create_pod(gw: &TestGateway, name: &str) {
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "dev"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    });
    let request = Request::post(format!("{}/api/v1/namespaces/dev/pods", gw.url()))
        .header(
            "authorization",
            format!("Bearer {}", gw.issuer.token("alice", &["devs"])),
        )
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(pod.to_string())))
        .unwrap();
    let created = collect(&https_client(&gw.pki.ca_pem, false), request).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
}

/// An HTTP/2 client connection that pings the gateway every 100 ms, even with no stream
/// open, and answers the gateway's pings; the task ends when the gateway closes it.
async fn h2_pinging(
    tls: TlsStream<TcpStream>,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/2 handshake");
    (sender, tokio::spawn(conn))
}

async fn h1(
    tls: TlsStream<TcpStream>,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    (sender, tokio::spawn(conn))
}

/// Waits for a client connection task to end; how long that took, and whether the
/// gateway closed it cleanly (HTTP/2 GOAWAY, TLS close_notify) rather than dropping it.
async fn ended_within(
    conn: tokio::task::JoinHandle<hyper::Result<()>>,
    deadline: Duration,
    what: &str,
) -> (Duration, hyper::Result<()>) {
    let started = Instant::now();
    match tokio::time::timeout(deadline + SLACK, conn).await {
        Ok(ended) => (started.elapsed(), ended.unwrap()),
        Err(_) => panic!("{what}: still open past the deadline of {deadline:?}"),
    }
}

#[tokio::test]
async fn a_silent_tcp_connection_is_closed_at_the_header_deadline() {
    // The handshake keeps its own 10 s, but the header deadline counts from the accept.
    let gw = gateway("header_read_timeout = \"1s\"", None).await;
    let tcp = tcp_from(&gw, [127, 0, 0, 1]).await;
    let took = closed_within(tcp, Duration::from_secs(1), "silent TCP").await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

#[tokio::test]
async fn an_idle_tls_connection_is_closed_at_the_header_deadline() {
    let gw = gateway("header_read_timeout = \"1s\"", None).await;
    let started = Instant::now();
    let tls = tls(&gw, tcp_from(&gw, [127, 0, 0, 1]).await).await.unwrap();
    closed_within(tls, Duration::from_secs(1), "TLS, then silence").await;
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_partial_http2_preface_is_closed_at_the_header_deadline() {
    let gw = gateway("header_read_timeout = \"1s\"", None).await;
    let mut tls = tls(&gw, tcp_from(&gw, [127, 0, 0, 1]).await).await.unwrap();
    // ALPN agreed on HTTP/2; the first 16 of the preface's 24 bytes, and the rest never.
    tls.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tls.flush().await.unwrap();
    closed_within(tls, Duration::from_secs(1), "partial preface").await;
}

#[tokio::test]
async fn an_http2_connection_without_a_request_is_closed_though_it_answers_pings() {
    let gw = gateway("header_read_timeout = \"1s\"", None).await;
    let tls = tls(&gw, tcp_from(&gw, [127, 0, 0, 1]).await).await.unwrap();
    let (_sender, conn) = h2_pinging(tls).await;
    // Nothing was served, so nothing is owed: the connection is dropped, not drained.
    let _ = ended_within(conn, Duration::from_secs(1), "h2 without a request").await;
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_after_the_idle_timeout() {
    let gw = gateway("header_read_timeout = \"1s\"\nidle_timeout = \"2s\"", None).await;
    let tls = tls(&gw, tcp_from(&gw, [127, 0, 0, 1]).await).await.unwrap();
    let (mut sender, conn) = h2_pinging(tls).await;
    version_over_h2(&gw, &mut sender).await;
    // Pings every 100 ms both ways are no activity: GOAWAY after the idle timeout.
    let (took, ended) = ended_within(conn, Duration::from_secs(2), "idle h2").await;
    assert!(
        took >= Duration::from_millis(1900),
        "closed early: {took:?}"
    );
    ended.expect("closed with GOAWAY, not dropped");
    assert!(sender.is_closed(), "the connection takes no new request");
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The header deadline (which hyper also applies while a keep-alive connection waits
    // for its next request) is longer: the idle timeout is what closes it.
    let gw = gateway("header_read_timeout = \"6s\"\nidle_timeout = \"1s\"", None).await;
    let tcp = tcp_from(&gw, [127, 0, 0, 1]).await;
    let tls = tls_offering(&gw, tcp, &[b"http/1.1"]).await.unwrap();
    let (mut sender, conn) = h1(tls).await;
    let request = get(&gw, "/version", false);
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    let (_, ended) = ended_within(conn, Duration::from_secs(1), "idle h1 keep-alive").await;
    ended.expect("closed cleanly");
}

#[tokio::test]
async fn an_open_watch_keeps_its_connection_past_the_idle_timeout() {
    let gw = gateway("header_read_timeout = \"1s\"\nidle_timeout = \"1s\"", None).await;
    for http2 in [true, false] {
        let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tcp = tcp_from(&gw, [127, 0, 0, 1]).await;
        let tls = tls_offering(&gw, tcp, alpn).await.unwrap();
        // The senders are kept: a client connection whose last sender is gone closes.
        let (mut h2_sender, mut h1_sender) = (None, None);
        let (response, conn) = if http2 {
            let (mut sender, conn) = h2_pinging(tls).await;
            let response = sender.send_request(get(&gw, WATCH, true)).await.unwrap();
            h2_sender = Some(sender);
            (response, conn)
        } else {
            let (mut sender, conn) = h1(tls).await;
            let response = sender.send_request(get(&gw, WATCH, false)).await.unwrap();
            h1_sender = Some(sender);
            (response, conn)
        };
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        // Three idle timeouts with nothing but the open watch (and, on h2, pings).
        tokio::time::sleep(Duration::from_secs(3)).await;
        if conn.is_finished() {
            panic!(
                "http2 {http2}: the watch's connection closed: {:?}",
                conn.await
            );
        }
        if let Some(sender) = &mut h2_sender {
            // No GOAWAY came either: the connection still takes a new stream.
            version_over_h2(&gw, sender).await;
        }
        let name = if http2 { "watched-h2" } else { "watched-h1" };
        create_pod(&gw, name).await;
        let event = loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("an event within 5 s")
                .expect("the watch is still open")
                .unwrap();
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let event: serde_json::Value = serde_json::from_slice(&data).unwrap();
            if event["object"]["metadata"]["name"] == name {
                break event;
            }
        };
        assert_eq!(event["type"], "ADDED");
        // Once the watch is dropped, the connection is idle and closed in its turn.
        drop(body);
        let (_, ended) = ended_within(conn, Duration::from_secs(1), "after the watch").await;
        ended.expect("closed cleanly");
        drop((h2_sender, h1_sender));
    }
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_connection_cap() {
    let gw = gateway("", Some("max_connections_per_address = 3")).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let tcp = tcp_from(&gw, [127, 0, 0, 1]).await;
        held.push(tls(&gw, tcp).await.expect("under the cap: served"));
    }
    let started = Instant::now();
    let fourth = tls(&gw, tcp_from(&gw, [127, 0, 0, 1]).await).await;
    assert!(
        fourth.is_err(),
        "the fourth connection from one address is closed"
    );
    assert!(
        started.elapsed() < SLACK,
        "at once: {:?}",
        started.elapsed()
    );

    // Another address is served meanwhile, request and all.
    let other = tls(&gw, tcp_from(&gw, [127, 0, 0, 2]).await)
        .await
        .expect("another address is served");
    let (mut sender, _conn) = h2_pinging(other).await;
    version_over_h2(&gw, &mut sender).await;

    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("kubegate_connections_refused_total{reason=\"address\"}"),
        "{metrics}"
    );

    // A closed connection gives its address the slot back.
    drop(held.pop());
    eventually("a freed slot is usable again", async || {
        tls(&gw, tcp_from(&gw, [127, 0, 0, 1]).await).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn http2_is_served_only_when_alpn_agreed_on_it() {
    // As the API server: over TLS, HTTP/2 is chosen in the handshake, never sniffed.
    let gw = gateway("", None).await;
    let tcp = tcp_from(&gw, [127, 0, 0, 1]).await;
    let (mut sender, conn) = h2_pinging(tls_offering(&gw, tcp, &[]).await.unwrap()).await;
    let refused = sender.send_request(get(&gw, "/version", true)).await;
    assert!(refused.is_err(), "HTTP/2 without ALPN was served");
    assert!(conn.await.unwrap().is_err());

    let tcp = tcp_from(&gw, [127, 0, 0, 1]).await;
    let (mut sender, _conn) = h2_pinging(tls_offering(&gw, tcp, &[b"h2"]).await.unwrap()).await;
    version_over_h2(&gw, &mut sender).await;
}
