//! The API server's WebSocket credential (`Sec-WebSocket-Protocol:
//! base64url.bearer.authorization.k8s.io.<token>`): the gateway accepts it as the
//! client's token when no `Authorization` header is sent, refuses a bad or an ambiguous
//! one before forwarding anything, and never lets it reach the upstream.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use kubegate_tests::{
    GatewayOptions, RawResponse, TestGateway, UPSTREAM_TOKEN, collect, connect_http1, https_client,
    read_response,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Alice (`devs`) may create pods and exec in `dev`.
const POLICY: &str = r#"
default = "deny"

[[rule]]
name = "devs-exec"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [{ api_groups = [""], resources = ["pods", "pods/exec"], namespaces = ["dev"], verbs = ["get", "list", "create"] }]
"#;

const EXEC: &str = "/api/v1/namespaces/dev/pods/runner/exec?command=cat&stdin=true&stdout=true";

async fn gateway_with_pod() -> (TestGateway, String) {
    let gw = TestGateway::start_with(GatewayOptions {
        policy: POLICY.to_string(),
        ..GatewayOptions::default()
    })
    .await;
    let alice = gw.issuer.token("alice", &["devs"]);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "runner", "namespace": "dev"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    });
    let request = Request::post(format!("{}/api/v1/namespaces/dev/pods", gw.url()))
        .header("authorization", format!("Bearer {alice}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(pod.to_string())))
        .unwrap();
    let r = collect(&https_client(&gw.pki.ca_pem, false), request).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    (gw, alice)
}

fn bearer_protocol(token: &str) -> String {
    format!(
        "base64url.bearer.authorization.k8s.io.{}",
        URL_SAFE_NO_PAD.encode(token)
    )
}

/// The message of a `Status` body.
fn message(response: &RawResponse) -> String {
    let status: Value = serde_json::from_slice(&response.body).unwrap();
    status["message"].as_str().unwrap().to_string()
}

/// Opens a WebSocket exec as a browser would: the credential only where `extra` puts it.
async fn websocket_exec(
    gw: &TestGateway,
    protocols: &str,
    extra: &str,
) -> (
    RawResponse,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let mut conn = connect_http1(gw).await;
    let request = format!(
        "GET {EXEC} HTTP/1.1\r\nHost: kubegate\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {protocols}\r\n{extra}\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    (read_response(&mut conn).await, conn)
}

fn execs(gw: &TestGateway) -> Vec<kubegate_sandbox::RecordedRequest> {
    gw.sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.contains("/exec?"))
        .collect()
}

#[tokio::test]
async fn a_protocol_token_authenticates_the_exec_and_never_reaches_the_upstream() {
    let (gw, alice) = gateway_with_pod().await;
    let protocol = bearer_protocol(&alice);
    let (head, mut conn) = websocket_exec(&gw, &format!("v5.channel.k8s.io, {protocol}"), "").await;
    assert_eq!(
        head.status,
        101,
        "{:?}",
        String::from_utf8_lossy(&head.body)
    );
    assert_eq!(head.header("sec-websocket-protocol"), ["v5.channel.k8s.io"]);

    // stdin "hi" (channel 0) in one masked binary frame comes back on stdout (channel 1).
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x82, 0x80 | 3];
    frame.extend_from_slice(&mask);
    frame.extend(b"\0hi".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    conn.write_all(&frame).await.unwrap();
    let mut echoed = [0u8; 5];
    conn.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, [0x82, 3, 1, b'h', b'i']);

    let execs = execs(&gw);
    assert_eq!(execs.len(), 1, "{execs:?}");
    let exec = &execs[0];
    assert_eq!(exec.impersonate_user(), Some("alice"));
    assert_eq!(
        exec.header_values("authorization"),
        [format!("Bearer {UPSTREAM_TOKEN}")]
    );
    assert_eq!(
        exec.header_values("sec-websocket-protocol"),
        ["v5.channel.k8s.io"]
    );
    let encoded = URL_SAFE_NO_PAD.encode(&alice);
    assert!(exec.headers.iter().all(|(_, v)| !v.contains(&alice)
        && !v.contains(&encoded)
        && !v.contains("bearer.authorization")));
}

#[tokio::test]
async fn a_bad_protocol_token_is_refused_and_nothing_is_forwarded() {
    let (gw, alice) = gateway_with_pod().await;
    let before = gw.sandbox.request_count();
    let padded = format!("{}=", bearer_protocol(&alice));
    let forged = bearer_protocol(&gw.issuer.token("alice", &["devs"]).replace('.', "x"));
    for (protocol, wanted) in [
        (
            padded.as_str(),
            "Sec-WebSocket-Protocol must be unpadded base64url",
        ),
        (
            "base64url.bearer.authorization.k8s.io.!!",
            "Sec-WebSocket-Protocol must be unpadded base64url",
        ),
        (forged.as_str(), "not a well-formed JWT"),
    ] {
        let (head, _) = websocket_exec(&gw, &format!("v5.channel.k8s.io,{protocol}"), "").await;
        assert_eq!(head.status, 401);
        let text = message(&head);
        assert!(text.contains(wanted), "{text}");
        assert!(!text.contains(&alice) && !text.contains(protocol));
    }
    // Alone, the token leaves the server nothing to choose: refused as the API server does.
    let (head, _) = websocket_exec(&gw, &bearer_protocol(&alice), "").await;
    assert_eq!(head.status, 401);
    assert!(message(&head).contains("needs another sub-protocol"));
    assert_eq!(
        gw.sandbox.request_count(),
        before,
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn authorization_and_a_protocol_token_together_are_refused() {
    let (gw, alice) = gateway_with_pod().await;
    let before = gw.sandbox.request_count();
    let bob = gw.issuer.token("bob", &["devs"]);
    let one = format!("v5.channel.k8s.io, {}", bearer_protocol(&bob));
    let two = format!("{one}, {}", bearer_protocol(&alice));
    let with_authorization = format!("Authorization: Bearer {alice}\r\n");
    // Authorization beside a protocol token, and two protocol tokens.
    for (protocols, extra) in [(&one, with_authorization.as_str()), (&two, "")] {
        let (head, _) = websocket_exec(&gw, protocols, extra).await;
        assert_eq!(head.status, 401);
        assert!(message(&head).contains("more than one bearer token"));
    }
    assert_eq!(
        gw.sandbox.request_count(),
        before,
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn a_plain_request_never_forwards_the_protocol_credential() {
    let (gw, alice) = gateway_with_pod().await;
    let bob = gw.issuer.token("bob", &["guests"]);
    // Two header lines, odd spacing, and the prefix in another case on the second.
    let request = Request::get(format!("{}/api/v1/namespaces/dev/pods", gw.url()))
        .header("authorization", format!("Bearer {alice}"))
        .header(
            "sec-websocket-protocol",
            format!("first ,{} ,  second", bearer_protocol(&bob)),
        )
        .header(
            "sec-websocket-protocol",
            format!("\t{}, third", bearer_protocol(&bob).to_uppercase()),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = collect(&https_client(&gw.pki.ca_pem, true), request).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "judged by Authorization: {:?}",
        r.body
    );
    let seen = gw.sandbox.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.impersonate_user(), Some("alice"));
    assert_eq!(
        last.header_values("sec-websocket-protocol"),
        ["first, second, third"]
    );
    assert!(
        last.headers
            .iter()
            .all(|(_, v)| !v.contains(&bob) && !v.to_lowercase().contains("bearer.authorization"))
    );
}
