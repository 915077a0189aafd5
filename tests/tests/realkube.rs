//! kubegate in front of a real kube-apiserver and etcd.
//!
//! The API server is built once per machine from Debian's own `kubernetes` source package
//! by `tests/realkube/build-apiserver.sh` (cached under `~/.cache/kubegate/`), and run with
//! a fresh etcd by `tests/realkube/cluster.py` on loopback ports: RBAC only, a static token
//! file with `admin` and `gateway`, a Metadata-level audit log, and `gateway` holding
//! exactly `impersonate` on users and groups. The tests run the real gateway in-process
//! (`kubegate::start`, the same code path as `kubegate serve`) with the cluster as its
//! upstream, and check what the API server understood: its RBAC answers for the
//! impersonated person, its audit log names `gateway` impersonating that person, and the
//! real kubectl works end to end.
//!
//! One cluster is shared by the tests of this binary (each uses its own user names and
//! object names); the readiness test, which stops and starts the API server, has its own.
//! A test that cannot get its API server fails with the reason; it never skips.

#[path = "../realkube/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::RealKube;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use kubegate_tests::{
    Collected, TestConfig, TestIssuer, TestPki, collect, https_client, run_kubectl,
    test_issuer_toml, write,
};
use serde_json::Value;

/// The gateway's policy in front of the real cluster: discovery for everyone; `devs` may
/// work with pods and configmaps in `dev` and `rk-*`, and may ask for secrets in `dev`
/// (so that the API server's RBAC is the one to refuse); nobody gets secrets in `prod`
/// (so that the gateway refuses, and nothing goes upstream).
const POLICY: &str = concat!(
    kubegate_tests::policy_preamble!(),
    r#"


[[rule]]
name = "no-secrets-prod"
effect = "deny"
subjects = { authenticated = true }
resources = [{ api_groups = [""], resources = ["secrets"], namespaces = ["prod"], verbs = ["*"] }]

[[rule]]
name = "devs-may-ask-for-secrets-in-dev"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [{ api_groups = [""], resources = ["secrets"], namespaces = ["dev"], verbs = ["get", "list"] }]

[[rule]]
name = "devs-workloads"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [{ api_groups = [""], resources = ["pods", "configmaps"], namespaces = ["dev", "rk-*"], verbs = ["get", "list", "watch", "create", "update", "patch", "delete"] }]
"#
);

/// What the cluster holds before any test: namespaces `dev` and `prod`, a Role that lets
/// group `devs` get/list/watch pods in `dev` (nothing else), a pod and a secret in `dev`,
/// a secret in `prod`.
const FIXTURE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: dev}
---
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: dev}
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: devs-pod-reader, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: devs}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: dev}
spec:
  containers:
  - {name: web, image: nginx}
---
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: dev}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: prod}
stringData: {password: hunter3}
"#;

/// The cluster shared by this binary's tests: started (and built) once, seeded with
/// [`FIXTURE`]. Its processes end when this test process ends.
async fn shared() -> &'static RealKube {
    static SHARED: OnceLock<Result<RealKube, String>> = OnceLock::new();
    static SEEDED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let kube = match SHARED.get_or_init(|| tokio::task::block_in_place(RealKube::start)) {
        Ok(kube) => kube,
        Err(e) => panic!("kubegate's real-cluster tests need a kube-apiserver: {e}"),
    };
    SEEDED.get_or_init(|| kube.admin_apply(FIXTURE)).await;
    kube
}

// ---------------------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------------------

/// The real gateway, in-process, in front of a real cluster.
struct Gateway {
    running: kubegate::Running,
    issuer: TestIssuer,
    pki: TestPki,
    dir: tempfile::TempDir,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Gateway {
    async fn start(kube: &RealKube, admin: bool) -> Gateway {
        kubegate::app::install_crypto_provider();
        let issuer = TestIssuer::rs256();
        let pki = TestPki::generate();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write(d, "tls.crt", &pki.cert_pem);
        write(d, "tls.key", &pki.key_pem);
        write(d, "jwks.json", &issuer.jwks());
        write(d, "policy.toml", POLICY);
        let mut config = TestConfig::new(format!(
            "kubeconfig = {:?}",
            kube.gateway_kubeconfig().display().to_string()
        ));
        config.oidc = test_issuer_toml(&["RS256"]);
        config.admin = admin;
        config.audit_file = Some("gateway-audit.log".into());
        let config_text = config.render();
        let config_path = write(d, "kubegate.toml", &config_text);
        let config = kubegate_config::load(&config_path).expect("gateway config");
        let running = kubegate::start(&config).await.expect("gateway starts");
        let client = https_client(&pki.ca_pem, false);
        Gateway {
            running,
            issuer,
            pki,
            dir,
            client,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.running.addr().port())
    }

    fn request(&self, method: Method, path: &str, token: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url()))
            .header("authorization", format!("Bearer {token}"))
    }

    async fn get(&self, path: &str, token: &str) -> Collected {
        let request = self
            .request(Method::GET, path, token)
            .body(Full::new(Bytes::new()))
            .expect("request");
        collect(&self.client, request).await
    }

    /// A kubeconfig for kubectl through the gateway with `token`.
    fn kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let ca =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &self.pki.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gw\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\ncontexts:\n- name: gw\n  context:\n    cluster: gw\n    user: u\ncurrent-context: gw\nusers:\n- name: u\n  user:\n    token: {token}\n",
            url = self.url()
        );
        write(self.dir.path(), &format!("{name}.kubeconfig"), &text)
    }
}

/// kubectl's stderr without the version-skew warning a 1.32 client prints for a 1.20
/// server.
fn without_skew_warning(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.contains("version difference between client"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Audit events the gateway's credential caused on `uri_prefix`.
fn forwarded_on<'a>(events: &'a [Value], uri_prefix: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["user"]["username"] == "gateway"
                && e["requestURI"]
                    .as_str()
                    .is_some_and(|u| u.starts_with(uri_prefix))
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that `event` is the gateway impersonating exactly `user` in `groups` (plus the
/// `system:authenticated` the API server adds), with no uid or extra.
fn assert_impersonated(event: &Value, user: &str, groups: &[&str]) {
    assert_eq!(event["user"]["username"], "gateway", "{event}");
    let imp = &event["impersonatedUser"];
    assert_eq!(imp["username"], user, "{event}");
    let mut got = strings(&imp["groups"]);
    got.sort();
    let mut want: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    want.push("system:authenticated".into());
    want.sort();
    assert_eq!(got, want, "impersonated groups: {event}");
    assert!(imp.get("uid").is_none(), "no impersonated uid: {event}");
    assert!(imp.get("extra").is_none(), "no impersonated extra: {event}");
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devs_list_and_watch_pods_and_rbac_or_the_gateway_refuses_secrets() {
    let kube = shared().await;
    let gw = Gateway::start(kube, false).await;
    let user = "rk-alice";
    let token = gw.issuer.token(user, &["devs"]);
    let kubeconfig = gw.kubeconfig(user, &token);

    // kubectl lists the pods in dev through the gateway, as the API server's RBAC allows.
    let (ok, stdout, stderr) =
        run_kubectl(&kubeconfig, &["get", "pods", "-n", "dev", "-o", "name"]).await;
    assert!(ok, "kubectl get pods -n dev: {stderr}");
    assert!(stdout.lines().any(|l| l == "pod/web"), "{stdout}");

    // Raw HTTPS: the list, then a watch from its resourceVersion that sees a new pod.
    let r = gw.get("/api/v1/namespaces/dev/pods", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let list = r.json();
    assert_eq!(list["kind"], "PodList");
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string();
    let request = gw
        .request(
            Method::GET,
            &format!(
                "/api/v1/namespaces/dev/pods?watch=true&resourceVersion={rv}&timeoutSeconds=30"
            ),
            &token,
        )
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = gw.client.request(request).await.expect("watch request");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    kube.admin_apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: watched-by-alice, namespace: dev}\nspec:\n  containers:\n  - {name: c, image: nginx}\n",
    )
    .await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(r#""name":"watched-by-alice""#) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no watch event for the new pod within 20 s: {seen}"))
            .expect("watch stream ended")
            .expect("watch frame");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    let event: Value = seen
        .lines()
        .find(|l| l.contains("watched-by-alice"))
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("a JSON watch event");
    assert_eq!(event["type"], "ADDED", "{event}");
    drop(body);

    // Secrets in dev: the gateway's policy lets the request through, and the API server's
    // RBAC refuses it in its own words.
    let (ok, _, stderr) = run_kubectl(&kubeconfig, &["get", "secrets", "-n", "dev"]).await;
    let stderr = without_skew_warning(&stderr);
    assert!(!ok, "secrets in dev must be refused");
    assert!(
        stderr.contains(
            r#"secrets is forbidden: User "rk-alice" cannot list resource "secrets" in API group "" in the namespace "dev""#
        ),
        "Kubernetes' RBAC message: {stderr}"
    );
    assert!(!stderr.contains("kubegate"), "not the gateway's: {stderr}");
    let r = gw.get("/api/v1/namespaces/dev/secrets/db", &token).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let status = r.json();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(status["details"]["kind"], "secrets", "{status}");
    let message = status["message"].as_str().expect("message");
    assert_eq!(
        message,
        r#"secrets "db" is forbidden: User "rk-alice" cannot get resource "secrets" in API group "" in the namespace "dev""#
    );
    let denied = kube
        .wait_for_audit("rk-alice's secret get", |e| {
            e["requestURI"] == "/api/v1/namespaces/dev/secrets/db"
                && e["impersonatedUser"]["username"] == user
        })
        .await;
    assert!(denied.iter().all(|e| e["responseStatus"]["code"] == 403));
    assert!(
        denied
            .iter()
            .all(|e| e["annotations"]["authorization.k8s.io/decision"] == "forbid"),
        "RBAC decided: {denied:?}"
    );

    // Secrets in prod: the gateway's policy refuses with its own message, and nothing is
    // sent upstream.
    let (ok, _, stderr) = run_kubectl(&kubeconfig, &["get", "secrets", "-n", "prod"]).await;
    assert!(!ok, "secrets in prod must be refused");
    assert!(stderr.contains("Forbidden"), "{stderr}");
    assert!(
        stderr.contains("kubegate"),
        "the gateway's message: {stderr}"
    );
    assert!(
        stderr.contains("no-secrets-prod"),
        "names the rule: {stderr}"
    );
    let r = gw.get("/api/v1/namespaces/prod/secrets/db", &token).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let message = r.json()["message"].as_str().expect("message").to_string();
    assert!(
        message.starts_with("kubegate") && message.contains("no-secrets-prod"),
        "{message}"
    );
    // A later request that does go upstream is the barrier: once its event is in the log,
    // anything sent before it would be too.
    let barrier = "/api/v1/namespaces/dev/pods/web";
    assert_eq!(gw.get(barrier, &token).await.status, StatusCode::OK);
    kube.wait_for_audit("the barrier request", |e| {
        e["requestURI"] == barrier && e["impersonatedUser"]["username"] == user
    })
    .await;
    let events = kube.audit_events();
    assert!(
        forwarded_on(&events, "/api/v1/namespaces/prod/secrets").is_empty(),
        "a request the gateway refused reached the API server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_shows_the_gateway_impersonating_the_person_with_the_token_groups() {
    let kube = shared().await;
    let gw = Gateway::start(kube, false).await;
    let user = "rk-carol";
    let groups = ["devs", "rk-auditors"];
    let token = gw.issuer.token(user, &groups);

    let paths = [
        "/api",
        "/version",
        "/api/v1/namespaces/dev/pods",
        "/api/v1/namespaces/dev/pods/web",
        "/api/v1/namespaces/dev/pods?labelSelector=app%3Drk-carol",
        "/api/v1/namespaces/dev/pods/nothing-here-rk-carol",
    ];
    for path in paths {
        let r = gw.get(path, &token).await;
        let expected = if path.ends_with("nothing-here-rk-carol") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(r.status, expected, "{path}: {:?}", r.body);
    }
    let kubeconfig = gw.kubeconfig(user, &token);
    let (ok, _, stderr) = run_kubectl(&kubeconfig, &["get", "pod", "web", "-n", "dev"]).await;
    assert!(ok, "kubectl get pod web: {stderr}");

    let mine = kube
        .wait_for_audit("the last of rk-carol's requests", |e| {
            e["requestURI"] == "/api/v1/namespaces/dev/pods/nothing-here-rk-carol"
        })
        .await;
    assert_eq!(mine.len(), 1, "{mine:?}");
    let events = kube.audit_events();
    for path in paths {
        let found: Vec<&Value> = events.iter().filter(|e| e["requestURI"] == path).collect();
        let for_carol: Vec<&&Value> = found
            .iter()
            .filter(|e| e["impersonatedUser"]["username"] == user)
            .collect();
        assert!(!for_carol.is_empty(), "no audit event for {path}");
        for e in for_carol {
            assert_impersonated(e, user, &groups);
        }
    }
    // kubectl's requests (discovery included) are rk-carol's too.
    let by_kubectl: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["impersonatedUser"]["username"] == user
                && e["userAgent"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("kubectl"))
        })
        .collect();
    assert!(
        by_kubectl
            .iter()
            .any(|e| e["requestURI"] == "/api/v1/namespaces/dev/pods/web"),
        "kubectl's get is in the audit log as rk-carol: {by_kubectl:?}"
    );
    for e in by_kubectl {
        assert_impersonated(e, user, &groups);
    }
    // The verbs and resources the API server understood are the ones sent.
    let list = events
        .iter()
        .find(|e| {
            e["requestURI"] == "/api/v1/namespaces/dev/pods"
                && e["impersonatedUser"]["username"] == user
        })
        .expect("the list event");
    assert_eq!(list["verb"], "list");
    assert_eq!(list["objectRef"]["resource"], "pods");
    assert_eq!(list["objectRef"]["namespace"], "dev");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_identity_headers_never_change_the_impersonated_identity() {
    let kube = shared().await;
    let gw = Gateway::start(kube, false).await;
    let user = "rk-mallory";
    let token = gw.issuer.token(user, &["devs"]);
    let admin_token = kube.field("admin_token").to_string();
    // HTTP/1.1, so that a `Connection` header may be sent at all.
    let client = https_client(&gw.pki.ca_pem, true);

    // Each attempt from the Foundation tests alone, then all of them together.
    let admin_bearer = format!("Bearer {admin_token}");
    let attempts: Vec<Vec<(&str, &str)>> = vec![
        vec![("Impersonate-User", "admin")],
        vec![("impersonate-user", "admin")],
        vec![("impersonate-group", "system:masters")],
        vec![
            ("Impersonate-Group", "system:masters"),
            ("Impersonate-Group", "admins"),
        ],
        vec![("Impersonate-Uid", "0")],
        vec![("Impersonate-Extra-Scopes", "everything")],
        vec![
            ("X-Remote-User", "admin"),
            ("X-Remote-Group", "system:masters"),
        ],
        vec![("X-Forwarded-For", "10.9.9.9")],
        vec![("Proxy-Authorization", admin_bearer.as_str())],
        vec![("Connection", "Impersonate-User, Authorization")],
        vec![
            ("Impersonate-User", "admin"),
            ("impersonate-group", "system:masters"),
            ("Impersonate-Uid", "0"),
            ("Impersonate-Extra-Scopes", "everything"),
            ("X-Remote-User", "admin"),
            ("X-Forwarded-For", "10.9.9.9"),
            ("Connection", "Impersonate-User, Authorization"),
        ],
    ];
    for (i, headers) in attempts.iter().enumerate() {
        // A pod name of its own for each attempt, to find its audit event. The person may
        // get pods in dev, so the API server answers 404 for the one that is not there.
        let path = format!("/api/v1/namespaces/dev/pods/smuggle-{i}");
        let mut builder = gw.request(Method::GET, &path, &token);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let r = collect(&client, builder.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{headers:?}: {:?}", r.body);
        let events = kube
            .wait_for_audit(&format!("attempt {headers:?}"), |e| e["requestURI"] == path)
            .await;
        for e in &events {
            assert_impersonated(e, user, &["devs"]);
            assert!(
                !e["sourceIPs"].to_string().contains("10.9.9.9"),
                "a client's X-Forwarded-For reached the API server: {e}"
            );
        }

        // The same headers on a request for a secret: had any of them worked, the
        // identity would be admin or system:masters and the API server would answer 200.
        let path = format!("/api/v1/namespaces/dev/secrets/db?smuggle={i}");
        let mut builder = gw.request(Method::GET, &path, &token);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let r = collect(&client, builder.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {:?}", r.body);
        let message = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(
            message.contains(r#"User "rk-mallory" cannot get resource "secrets""#),
            "{headers:?}: {message}"
        );
        let events = kube
            .wait_for_audit(&format!("secret attempt {headers:?}"), |e| {
                e["requestURI"] == path
            })
            .await;
        for e in &events {
            assert_impersonated(e, user, &["devs"]);
            assert_eq!(e["responseStatus"]["code"], 403, "{e}");
        }
    }

    // Two Authorization headers (the person's and the cluster admin's) are refused as
    // ambiguous, and nothing reaches the API server.
    let path = "/api/v1/namespaces/dev/pods/smuggle-two-authorizations";
    for order in [[&token, &admin_token], [&admin_token, &token]] {
        let request = Request::get(format!("{}{path}", gw.url()))
            .header("authorization", format!("Bearer {}", order[0]))
            .header("authorization", format!("Bearer {}", order[1]))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = collect(&client, request).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // The admin's own token is no JWT from the issuer: refused, never forwarded.
    let r = gw
        .get(
            "/api/v1/namespaces/dev/secrets/db?smuggle=admin-token",
            &admin_token,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let barrier = "/api/v1/namespaces/dev/pods/smuggle-barrier";
    assert_eq!(gw.get(barrier, &token).await.status, StatusCode::NOT_FOUND);
    kube.wait_for_audit("the barrier request", |e| e["requestURI"] == barrier)
        .await;
    let events = kube.audit_events();
    assert!(
        forwarded_on(&events, path).is_empty(),
        "ambiguous request forwarded"
    );
    assert!(
        forwarded_on(
            &events,
            "/api/v1/namespaces/dev/secrets/db?smuggle=admin-token"
        )
        .is_empty(),
        "a request with the admin token was forwarded"
    );
    // Whatever rk-mallory sent, the API server never saw anyone but the gateway acting
    // as rk-mallory.
    for e in events.iter().filter(|e| {
        e["requestURI"]
            .as_str()
            .is_some_and(|u| u.contains("smuggle"))
    }) {
        assert_impersonated(e, user, &["devs"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_watch_and_delete_through_the_gateway() {
    let kube = shared().await;
    let ns = "rk-apply";
    kube.admin_apply(&format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: editor, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: ["configmaps", "pods"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: devs-editor, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: editor}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: Group, name: devs}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: marker, namespace: {ns}}}
data: {{colour: none}}
"#
    ))
    .await;
    let gw = Gateway::start(kube, false).await;
    let user = "rk-dora";
    let token = gw.issuer.token(user, &["devs"]);
    let kubeconfig = gw.kubeconfig(user, &token);

    // `kubectl get -w` through the gateway, in the background.
    let watch_err = gw.dir.path().join("watch.stderr");
    let mut watch = tokio::process::Command::new(kubegate_tests::kubectl())
        .args([
            "get",
            "configmaps",
            "-n",
            ns,
            "-w",
            "--output-watch-events",
            "-o",
            "custom-columns=EVENT:.type,NAME:.object.metadata.name,COLOUR:.object.data.colour",
        ])
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", gw.dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&watch_err).expect("watch stderr file"))
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl get -w runs");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        watch.stdout.take().expect("watch stdout"),
    ));

    let manifest = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: {ns}\ndata:\n  colour: {value}\n"
        )
    };
    let file = gw.dir.path().join("settings.yaml");
    let file_arg = file.to_str().unwrap().to_string();
    let mut expect_event = async |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        let stderr = || std::fs::read_to_string(&watch_err).unwrap_or_default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(left, lines.next_line())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "kubectl get -w printed no {want:?} in 20 s: {got:?} {}",
                        stderr()
                    )
                })
                .expect("read kubectl output")
                .unwrap_or_else(|| {
                    panic!("kubectl get -w ended before {want:?}: {got:?} {}", stderr())
                });
            if line.split_whitespace().collect::<Vec<_>>().join(" ") == want {
                return;
            }
            got.push(line);
        }
    };

    // kubectl lists first (its items arrive as ADDED), then watches from the list's
    // resourceVersion: once the marker is printed, no later change can be missed.
    expect_event("ADDED marker none").await;

    std::fs::write(&file, manifest("blue")).unwrap();
    let (ok, stdout, stderr) = run_kubectl(&kubeconfig, &["apply", "-f", &file_arg]).await;
    assert!(ok, "kubectl apply (create): {stderr}");
    assert!(stdout.contains("configmap/settings created"), "{stdout}");
    expect_event("ADDED settings blue").await;

    std::fs::write(&file, manifest("green")).unwrap();
    let (ok, stdout, stderr) = run_kubectl(&kubeconfig, &["apply", "-f", &file_arg]).await;
    assert!(ok, "kubectl apply (update): {stderr}");
    assert!(stdout.contains("configmap/settings configured"), "{stdout}");
    expect_event("MODIFIED settings green").await;

    let (ok, stdout, stderr) = run_kubectl(
        &kubeconfig,
        &[
            "get",
            "configmap",
            "settings",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.colour}",
        ],
    )
    .await;
    assert!(ok, "kubectl get: {stderr}");
    assert_eq!(stdout, "green");

    let (ok, stdout, stderr) = run_kubectl(&kubeconfig, &["delete", "-f", &file_arg]).await;
    assert!(ok, "kubectl delete: {stderr}");
    assert!(
        stdout.contains("configmap \"settings\" deleted"),
        "{stdout}"
    );
    expect_event("DELETED settings green").await;
    drop(lines);
    let _ = watch.kill().await;
    // The API server logs a watch when it ends: when kubectl went away, the gateway
    // closed the upstream watch too.
    kube.wait_for_audit("rk-dora's watch, closed", |e| {
        e["verb"] == "watch"
            && e["stage"] == "ResponseComplete"
            && e["objectRef"]["namespace"] == ns
            && e["impersonatedUser"]["username"] == user
    })
    .await;

    // The API server saw rk-dora list, watch, create, patch, get and delete, through the
    // gateway.
    let events = kube.audit_events();
    let mine: Vec<&Value> = forwarded_on(&events, &format!("/api/v1/namespaces/{ns}/configmaps"))
        .into_iter()
        .filter(|e| e["impersonatedUser"]["username"] == user)
        .collect();
    let summary: Vec<String> = mine
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["verb"], e["requestURI"], e["responseStatus"]["code"]
            )
        })
        .collect();
    for verb in ["list", "watch", "create", "patch", "get", "delete"] {
        assert!(
            mine.iter().any(|e| e["verb"] == verb
                && e["responseStatus"]["code"]
                    .as_u64()
                    .is_some_and(|c| c < 300)),
            "no successful {verb} by {user} in the audit log: {summary:#?}"
        );
    }
    for e in mine {
        assert_impersonated(e, user, &["devs"]);
    }
    let (ok, _, stderr) =
        run_kubectl(&kubeconfig, &["get", "configmap", "settings", "-n", ns]).await;
    assert!(!ok && stderr.contains("NotFound"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_502_follow_the_api_server_without_a_gateway_restart() {
    // This test stops and starts its API server: it gets a cluster of its own.
    let kube = tokio::task::block_in_place(RealKube::start)
        .unwrap_or_else(|e| panic!("kubegate's real-cluster tests need a kube-apiserver: {e}"));
    kube.admin_apply(FIXTURE).await;
    let gw = Gateway::start(&kube, true).await;
    let admin = gw
        .running
        .admin_addr()
        .expect("the gateway has an admin listener");
    let token = gw.issuer.token("rk-erin", &["devs"]);
    let pods = "/api/v1/namespaces/dev/pods";
    let plain = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let readyz = async || {
        let request = Request::get(format!("http://{admin}/readyz"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        match plain.request(request).await {
            Ok(r) => {
                let status = r.status();
                let body = r.into_body().collect().await.map(|b| b.to_bytes());
                (
                    status,
                    String::from_utf8_lossy(&body.unwrap_or_default()).into_owned(),
                )
            }
            Err(e) => panic!("admin listener at {admin} does not answer: {e}"),
        }
    };
    let wait_for = async |ready: bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = readyz().await;
            if (status == StatusCode::OK) == ready {
                return (status, body);
            }
            assert!(
                Instant::now() < deadline,
                "/readyz still {status} 30 s after {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    let (_, body) = wait_for(true, "start").await;
    assert!(body.contains("[+]upstream ok"), "{body}");
    assert_eq!(gw.get(pods, &token).await.status, StatusCode::OK);

    tokio::task::block_in_place(|| kube.stop_apiserver());
    let (status, body) = wait_for(false, "stopping the API server").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("[-]upstream"), "{body}");
    let r = gw.get(pods, &token).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{:?}", r.body);
    let status = r.json();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 502);
    assert!(
        !status["message"]
            .as_str()
            .unwrap_or_default()
            .contains(kube.server().trim_start_matches("https://")),
        "the upstream's address is not told: {status}"
    );

    tokio::task::block_in_place(|| kube.start_apiserver());
    let (_, body) = wait_for(true, "starting the API server again").await;
    assert!(body.contains("[+]upstream ok"), "{body}");
    let r = gw.get(pods, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["kind"], "PodList");
    let (ok, _, stderr) = run_kubectl(
        &gw.kubeconfig("rk-erin", &token),
        &["get", "pods", "-n", "dev"],
    )
    .await;
    assert!(ok, "kubectl after the API server came back: {stderr}");
}
