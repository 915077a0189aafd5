//! The kubectl proxy lab, made safe: each person runs the real `kubectl proxy` on their own
//! machine against the gateway, signed in as themselves, with the policy as the limited
//! account; a service's web page (and the stylesheet and script it links relatively) comes
//! through it; proxy paths are decided on as the API server reads them and reach the
//! backend byte for byte; `kubectl port-forward` reaches a TCP service over both of the
//! transports kubectl 1.32 speaks, and only for those granted `create` on `pods/portforward`.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kubegate_sandbox::webapp::{PAGE, SCRIPT, STYLESHEET};
use kubegate_sandbox::{ProxyKind, WebApp};
use kubegate_tests::{GatewayOptions, TEST_POLICY, TestGateway, kubectl};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// The harness policy plus the lab: devs browse dev's services and pods (`get`, what GET and
/// HEAD resolve to); editors may also POST to them (`create`); tunnelers port-forward.
fn lab_policy() -> String {
    format!(
        r#"{TEST_POLICY}
[[rule]]
name = "devs-browse-dev"
effect = "allow"
subjects = {{ groups = ["devs"] }}
resources = [{{ api_groups = [""], resources = ["services/proxy", "pods/proxy"], namespaces = ["dev"], verbs = ["get"] }}]

[[rule]]
name = "tunnelers-port-forward-dev"
effect = "allow"
subjects = {{ groups = ["tunnelers"] }}
resources = [{{ api_groups = [""], resources = ["pods/portforward"], namespaces = ["dev"], verbs = ["create"] }}]

[[rule]]
name = "editors-post-dev"
effect = "allow"
subjects = {{ groups = ["editors"] }}
resources = [{{ api_groups = [""], resources = ["services/proxy"], namespaces = ["dev"], verbs = ["get", "create"] }}]
"#
    )
}

const WEB: &str = "/api/v1/namespaces/dev/services/web:80/proxy";

/// A gateway with the lab policy and the lab web app behind service `dev/web`.
async fn lab() -> (TestGateway, WebApp) {
    let gw = TestGateway::start_with(GatewayOptions {
        policy: lab_policy(),
        ..GatewayOptions::default()
    })
    .await;
    let app = WebApp::start().await.expect("web app starts");
    gw.sandbox
        .proxy_to(ProxyKind::Service, "dev", "web", app.addr());
    (gw, app)
}

/// The real `kubectl proxy`, on a free loopback port it picks and prints.
struct KubectlProxy {
    child: tokio::process::Child,
    port: u16,
}

/// Starts a long-running kubectl (killed when dropped) and returns it with the port in the
/// first line it prints: `Starting to serve on 127.0.0.1:41234`, `Forwarding from
/// 127.0.0.1:41234 -> 5432`.
async fn kubectl_listening(
    kubeconfig: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, u16) {
    let mut child = tokio::process::Command::new(kubectl())
        .args(args)
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().expect("kubeconfig dir"))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
        .await
        .expect("kubectl says where it listens")
        .expect("read kubectl's stdout");
    // Keep reading: kubectl, like any Go program, dies of SIGPIPE when it writes
    // ("Handling connection for 5432") to a closed stdout.
    tokio::spawn(async move {
        let mut sink = String::new();
        while stdout.read_line(&mut sink).await.is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    let port = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("127.0.0.1:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (child, port)
}

impl KubectlProxy {
    async fn start(kubeconfig: &std::path::Path) -> Self {
        let args = ["proxy", "--port=0", "--address=127.0.0.1"];
        let (child, port) = kubectl_listening(kubeconfig, &args, &[]).await;
        KubectlProxy { child, port }
    }

    /// A plain-HTTP request through the proxy: (status, headers, body).
    async fn send(&self, method: Method, path: &str) -> (StatusCode, http::HeaderMap, String) {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let request = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", self.port))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
            .await
            .expect("kubectl proxy answers in time")
            .expect("kubectl proxy answers");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let (status, _, body) = self.send(Method::GET, path).await;
        (status, body)
    }
}

impl Drop for KubectlProxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Resolves a relative link against a page URL, as a browser does (RFC 3986, no dot
/// segments involved): drop everything after the last `/` and append.
fn resolve_link(page: &str, link: &str) -> String {
    let base = &page[..page.rfind('/').map_or(0, |i| i + 1)];
    format!("{base}{link}")
}

fn link_in(page: &str, attribute: &str) -> String {
    let start = page
        .find(&format!("{attribute}=\""))
        .unwrap_or_else(|| panic!("no {attribute} in the page"))
        + attribute.len()
        + 2;
    let end = start + page[start..].find('"').expect("closing quote");
    page[start..end].to_owned()
}

#[tokio::test]
async fn kubectl_proxy_on_the_users_side_explores_the_api_and_opens_a_services_page() {
    let (gw, app) = lab().await;
    let alice = gw.client_kubeconfig("alice", &gw.issuer.token("alice", &["devs"]));
    let proxy = KubectlProxy::start(&alice).await;

    // Exploring the API with curl, as the lab does.
    let (status, body) = proxy.get("/api/v1/namespaces/dev/pods").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""kind":"PodList""#), "{body}");
    let (status, body) = proxy.get("/api/v1/namespaces/dev/secrets").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let refusal: serde_json::Value = serde_json::from_str(&body).expect("a Status");
    let message = refusal["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("kubegate: "),
        "the gateway's refusal: {body}"
    );
    assert!(
        message.ends_with(r#"denied by rule "no-secrets""#),
        "{body}"
    );

    // The service's page at its canonical URL, and what it links relatively.
    let page_url = format!("{WEB}/");
    let (status, page) = proxy.get(&page_url).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page, PAGE);
    let css = resolve_link(&page_url, &link_in(&page, "href"));
    let js = resolve_link(&page_url, &link_in(&page, "src"));
    assert_eq!(css, format!("{WEB}/static/style.css"));
    assert_eq!(
        proxy.get(&css).await,
        (StatusCode::OK, STYLESHEET.to_owned())
    );
    assert_eq!(proxy.get(&js).await, (StatusCode::OK, SCRIPT.to_owned()));
    assert_eq!(
        app.targets(),
        ["/", "/static/style.css", "/static/app.js"],
        "the backend saw each path once, as the page asked for it"
    );
    // Upstream, every one of them was alice's own request.
    let proxied: Vec<_> = gw
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.starts_with(WEB))
        .collect();
    assert_eq!(proxied.len(), 3);
    assert!(
        proxied
            .iter()
            .all(|r| r.impersonate_user() == Some("alice"))
    );
}

#[tokio::test]
async fn bob_gets_the_gateways_403_for_the_same_service() {
    let (gw, app) = lab().await;
    let bob = gw.client_kubeconfig("bob", &gw.issuer.token("bob", &["guests"]));
    let proxy = KubectlProxy::start(&bob).await;
    let (status, body) = proxy.get(&format!("{WEB}/")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let refusal: serde_json::Value = serde_json::from_str(&body).expect("a Status");
    assert_eq!(
        refusal["message"],
        r#"kubegate: User "bob" cannot get resource "services/proxy" in API group "" in the namespace "dev" (name "web:80"): no rule allowed"#,
    );
    assert!(app.targets().is_empty(), "nothing reached the backend");
    assert!(
        !gw.sandbox
            .requests()
            .iter()
            .any(|r| r.path_and_query.starts_with(WEB)),
        "nothing reached the API server"
    );
}

#[tokio::test]
async fn proxy_paths_reach_the_backend_exactly_as_sent() {
    let (gw, app) = lab().await;
    let alice = gw.issuer.token("alice", &["devs"]);
    // The query belongs to the backend: even a `timeoutSeconds` the API server would refuse
    // passes untouched, and sets no deadline of the gateway's.
    for rest in [
        "/",
        "//a",
        "/a/",
        "/a?x=1",
        "/a//b/?q=%2F&r=1",
        "/a?timeoutSeconds=soon",
        "/a?timeoutSeconds=18446744073709551615",
    ] {
        let path = format!("{WEB}{rest}");
        let got = gw.get(&path, &alice).await;
        assert_eq!(got.status, StatusCode::OK, "{path}: {:?}", got.body);
        let upstream = gw.sandbox.requests().pop().expect("forwarded");
        assert_eq!(
            upstream.path_and_query, path,
            "the API server got the bytes sent"
        );
        assert_eq!(
            app.targets().pop().as_deref(),
            Some(rest),
            "the backend too"
        );
    }
    // Nothing after `proxy`: allowed, and answered (as the API server does) with a
    // redirect to the slash form, which relative links need.
    let got = gw.get(WEB, &alice).await;
    assert_eq!(got.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        got.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("{WEB}/").as_str())
    );
    assert_eq!(gw.sandbox.requests().pop().unwrap().path_and_query, WEB);
}

#[tokio::test]
async fn proxy_paths_with_dot_segments_or_encoded_separators_are_refused() {
    let (gw, app) = lab().await;
    let alice = gw.issuer.token("alice", &["devs"]);
    for (rest, why) in [
        ("/../secrets", "path contains a dot segment"),
        ("/%2e%2e/", "path contains a dot segment"),
        ("/a/./b", "path contains a dot segment"),
        ("/a%2Fb", "path contains an encoded slash"),
        ("/a%5Cb", "path contains a backslash"),
    ] {
        let got = gw.get(&format!("{WEB}{rest}"), &alice).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{rest}");
        let message = got.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(why), "{rest}: {message}");
    }
    // Empty segments before the backend's path are still refused.
    let got = gw
        .get("/api/v1/namespaces/dev/services//proxy/", &alice)
        .await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert!(app.targets().is_empty());
    assert!(gw.sandbox.requests().is_empty(), "nothing was forwarded");
}

#[tokio::test]
async fn a_post_through_the_proxy_needs_create() {
    let (gw, app) = lab().await;
    let path = format!("{WEB}/form");
    let reader = gw.issuer.token("alice", &["devs"]);
    let got = gw.request(Method::POST, &path, Some(&reader), &[]).await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    let message = got.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(r#"cannot create resource "services/proxy""#),
        "{message}"
    );
    assert!(app.targets().is_empty());

    let editor = gw.issuer.token("alice", &["devs", "editors"]);
    let got = gw.request(Method::POST, &path, Some(&editor), &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(app.targets(), ["/form"]);
    // HEAD is a get, as in RequestInfo.
    let got = gw.request(Method::HEAD, &path, Some(&reader), &[]).await;
    assert_eq!(got.status, StatusCode::OK);
}

#[test]
fn a_nodes_proxy_grant_warns_even_for_get() {
    let policy = format!(
        r#"{}
[[rule]]
name = "kubelet-readers"
effect = "allow"
subjects = {{ groups = ["ops"] }}
resources = [{{ api_groups = [""], resources = ["nodes/proxy"], verbs = ["get"] }}]
"#,
        lab_policy()
    );
    let loaded = kubegate_policy::Policy::from_toml("lab.toml", &policy).expect("loads");
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(r#"rule "kubelet-readers""#)
                && w.contains("escalation path: get on nodes/proxy")),
        "{warnings:?}"
    );
    let path = kubegate_policy::normalize_path("/api/v1/nodes/x/proxy/").expect("canonical");
    let attrs = kubegate_policy::resolve("GET", &path, None);
    let ops = kubegate_policy::Subject::new("o", ["ops"]);
    assert!(loaded.policy.decide(&ops, &attrs).allowed);
}

/// A TCP service standing in for a pod's port: echoes until the client is done sending,
/// then closes; or, once `quit` is set, says `bye` and closes at once.
async fn tcp_service(quit: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::net::SocketAddr {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let quit = quit.load(Ordering::SeqCst);
            tokio::spawn(async move {
                if quit {
                    let _ = conn.write_all(b"bye\n").await;
                } else {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

/// `kubectl port-forward` to `dev/db`'s port 5432 from a free loopback port.
const FORWARD_DB: [&str; 6] = [
    "port-forward",
    "-n",
    "dev",
    "pod/db",
    ":5432",
    "--address=127.0.0.1",
];

/// Pod `dev/db` (created by kubectl as alice in `groups`) whose port-forwards reach a
/// [`tcp_service`]; returns alice's kubeconfig and the service's quit switch.
async fn db_pod(
    gw: &TestGateway,
    groups: &[&str],
) -> (
    std::path::PathBuf,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let quit = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    gw.sandbox
        .port_forward_to("dev", "db", tcp_service(quit.clone()).await);
    let alice = gw.client_kubeconfig("alice", &gw.issuer.token("alice", groups));
    let run = [
        "run",
        "db",
        "-n",
        "dev",
        "--image=postgres",
        "--restart=Never",
    ];
    let (ok, _, stderr) = kubegate_tests::run_kubectl(&alice, &run).await;
    assert!(ok, "{stderr}");
    (alice, quit)
}

async fn forwarded_exchange(port: u16, quit: &std::sync::atomic::AtomicBool) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let within = |what: &'static str| {
        move |r: Result<std::io::Result<usize>, tokio::time::error::Elapsed>| {
            r.unwrap_or_else(|_| panic!("{what} within 10 s"))
                .unwrap_or_else(|e| panic!("{what}: {e}"))
        }
    };
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // Both ways, a few times, with bytes that are no protocol at all.
    for payload in [&b"hello\n"[..], &[0u8, 0x80, 0xff, 3], &[7u8; 40_000]] {
        conn.write_all(payload).await.unwrap();
        let mut echoed = vec![0; payload.len()];
        within("the echo")(
            tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut echoed)).await,
        );
        assert_eq!(echoed, payload);
    }
    // We close our side: the rest of the echo and then the end come back.
    conn.write_all(b"last").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("the end of the echo")(
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await,
    );
    assert_eq!(rest, b"last");

    // The service closes first: its last words, then the end, reach us.
    quit.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut rest = Vec::new();
    within("the service's close")(
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await,
    );
    assert_eq!(rest, b"bye\n");
    quit.store(false, std::sync::atomic::Ordering::SeqCst);
}

#[tokio::test]
async fn kubectl_port_forward_reaches_a_tcp_service_over_websocket_and_spdy() {
    let (gw, _app) = lab().await;
    let (alice, quit) = db_pod(&gw, &["devs", "tunnelers"]).await;
    let args = FORWARD_DB;

    // kubectl 1.32's default: SPDY tunnelled in a WebSocket.
    let (mut websocket, port) = kubectl_listening(&alice, &args, &[]).await;
    forwarded_exchange(port, &quit).await;
    let _ = websocket.kill().await;
    // Its fallback, and what older clients speak: a SPDY upgrade.
    let spdy_only = [("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")];
    let (mut spdy, port) = kubectl_listening(&alice, &args, &spdy_only).await;
    forwarded_exchange(port, &quit).await;
    let _ = spdy.kill().await;

    let path = "/api/v1/namespaces/dev/pods/db/portforward";
    let upgrades: Vec<(String, Vec<String>)> = gw
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query == path)
        .map(|r| {
            let upgrade = r
                .header_values("upgrade")
                .iter()
                .map(|v| v.to_ascii_lowercase())
                .collect();
            (r.method, upgrade)
        })
        .collect();
    assert_eq!(
        upgrades,
        [
            ("GET".to_owned(), vec!["websocket".to_owned()]),
            ("POST".to_owned(), vec!["spdy/3.1".to_owned()]),
        ]
    );
    kubegate_tests::eventually("the tunnels are closed", async || {
        gw.sandbox.open_tunnels() == 0
    })
    .await;
}

#[tokio::test]
async fn port_forward_without_create_on_pods_portforward_gets_the_gateways_403() {
    let (gw, _app) = lab().await;
    let (alice, _quit) = db_pod(&gw, &["devs"]).await;
    let (ok, _, stderr) = kubegate_tests::run_kubectl(&alice, &FORWARD_DB).await;
    assert!(!ok, "refused: {stderr}");
    assert!(
        stderr.contains(r#"cannot create resource "pods/portforward""#),
        "the gateway's refusal: {stderr}"
    );
    assert!(
        !gw.sandbox
            .requests()
            .iter()
            .any(|r| r.path_and_query.contains("portforward")),
        "nothing reached the API server"
    );
}
