//! The sign-in web page under `/kubegate/` against the real OpenID provider fixture
//! (tests/oidc, panva's oidc-provider) and, for the whole flow, a real headless Chromium
//! (Debian's `chromium`, driven by puppeteer-core from tests/browser): the sign-in, the
//! identity and rules shown, the kubeconfig handed out, and every refusal (no or wrong
//! state, replayed callbacks and codes, `access_denied`, another audience, an expired
//! sign-in), their audit records and headers, and the prefix refused when `[login]` is off.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use kubegate_tests::browser::{browser_driver, chromium};
use kubegate_tests::oidc_provider::{
    CLIENT_SECRET, Provider, WEB_CLIENT, WEB_CLIENT_OTHER, sign_in_at_provider, start_provider_with,
};
use kubegate_tests::{
    Collected, TestConfig, TestGateway, TestPki, collect, eventually, https_client, kubectl, write,
};

const POLICY: &str = r#"
default = "deny"
[[rule]]
name = "discovery"
effect = "allow"
subjects = { authenticated = true }
paths = [{ path = "/api", prefix = true, methods = ["get"] }]
[[rule]]
name = "devs-read-dev"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [{ api_groups = [""], resources = ["pods"], verbs = ["get", "list"], namespaces = ["dev"] }]
[[rule]]
name = "guests-nothing"
effect = "deny"
subjects = { groups = ["guests"] }
resources = [{ api_groups = ["*"], resources = ["*"], verbs = ["*"] }]
"#;

/// A gateway with `[login]` on, in front of the sandbox, and the provider it signs in at.
struct SignInGateway {
    gateway: kubegate::Running,
    provider: Provider,
    pki: TestPki,
    dir: tempfile::TempDir,
    _sandbox: kubegate_sandbox::Sandbox,
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
}

#[derive(Default)]
struct Options {
    /// `[login] client_id` (default the web client).
    client_id: Option<&'static str>,
    /// Extra `[login]` lines.
    login: &'static str,
    /// A `[limits]` body.
    limits: Option<&'static str>,
}

impl SignInGateway {
    async fn start(options: Options) -> Self {
        kubegate::app::install_crypto_provider();
        // The callback URL must be known before the provider and the configuration: bind
        // the gateway's port first.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let redirect = format!("https://127.0.0.1:{port}/kubegate/callback");
        let provider = start_provider_with(&[&format!("--web-redirect={redirect}")]);
        let sandbox = kubegate_sandbox::Sandbox::start(kubegate_sandbox::SandboxOptions::new(
            "upstream-token",
        ))
        .await
        .unwrap();
        let pki = TestPki::generate();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "tls.crt", &pki.cert_pem);
        write(d, "tls.key", &pki.key_pem);
        write(d, "policy.toml", POLICY);
        write(d, "web-secret", &format!("{CLIENT_SECRET}\n"));
        write(d, "cookie-key", "0123456789abcdef0123456789abcdef");
        sandbox
            .write_kubeconfig(&d.join("upstream.kubeconfig"))
            .unwrap();
        let mut config = TestConfig::new("kubeconfig = \"upstream.kubeconfig\"");
        config.oidc = format!(
            "[[auth.oidc]]\nissuer = \"{}\"\naudiences = [\"{WEB_CLIENT}\"]\ninsecure_http = true\ngroups_claim = \"groups\"\n",
            provider.issuer
        );
        config.audit_file = Some("audit.log".into());
        config.limits = options.limits.map(str::to_string);
        config.tables = format!(
            "[login]\nissuer = \"{issuer}\"\nclient_id = \"{client}\"\nclient_secret_file = \"web-secret\"\nplugin_client_id = \"kubectl\"\nredirect_url = \"{redirect}\"\nscopes = [\"openid\", \"groups\"]\ncookie_key_file = \"cookie-key\"\n{extra}\n",
            issuer = provider.issuer,
            client = options.client_id.unwrap_or(WEB_CLIENT),
            extra = options.login,
        );
        let path = write(d, "kubegate.toml", &config.render());
        let config = kubegate_config::load(&path).expect("config");
        let prepared = kubegate::app::prepare(&config).await.expect("prepares");
        let app = prepared.router();
        let gateway = prepared.start_on(listener, app).await.expect("starts");
        let issuers = gateway.gateway().authn.issuers();
        eventually("the provider's keys are loaded", async || {
            issuers.iter().all(|i| i.has_keys())
        })
        .await;
        let client = https_client(&pki.ca_pem, false);
        SignInGateway {
            gateway,
            provider,
            pki,
            dir,
            _sandbox: sandbox,
            client,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.gateway.addr().port())
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Collected {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(format!("{}{path}", self.url()));
        if let Some(c) = cookie {
            request = request.header("cookie", c);
        }
        collect(&self.client, request.body(Full::new(Bytes::new())).unwrap()).await
    }

    /// `/kubegate/login`: (the provider URL it redirects to, the cookie pair, the state).
    async fn begin(&self) -> (String, String, String) {
        let r = self.get("/kubegate/login", None).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
        let location = r.headers["location"].to_str().unwrap().to_string();
        assert!(
            location.starts_with(&format!("{}/auth?", self.provider.issuer)),
            "{location}"
        );
        let set_cookie = r.headers["set-cookie"].to_str().unwrap();
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        (location.clone(), cookie, param(&location, "state"))
    }

    /// The gateway-relative path and query of a callback URL the provider sent.
    fn callback_path(&self, callback: &str) -> String {
        callback
            .strip_prefix(&self.url())
            .unwrap_or_else(|| panic!("{callback}"))
            .to_string()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        kubegate_tests::audit_records_in(self.dir.path())
    }

    /// The sign-in audit records so far: (signin, reason, user, code, requestURI).
    async fn signin_records(&self, at_least: usize) -> Vec<(String, String, String, u64, String)> {
        eventually("the sign-in records are written", async || {
            self.records().len() >= at_least
        })
        .await;
        self.records()
    }

    fn records(&self) -> Vec<(String, String, String, u64, String)> {
        self.audit()
            .iter()
            .filter(|r| r["annotations"]["kubegate.io/signin"].is_string())
            .filter(|r| r["annotations"]["kubegate.io/summary"].is_null())
            .map(|r| {
                let a = &r["annotations"];
                (
                    a["kubegate.io/signin"].as_str().unwrap_or("").to_string(),
                    a["kubegate.io/signin-reason"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    r["user"]["username"].as_str().unwrap_or("").to_string(),
                    r["responseStatus"]["code"].as_u64().unwrap_or(0),
                    r["requestURI"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

fn text(r: &Collected) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// A query parameter of `url`, decoded.
fn param(url: &str, name: &str) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

/// Asserts the headers every sign-in page carries.
fn assert_page_headers(r: &Collected) {
    let h = |n: &str| r.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(
        h("content-security-policy"),
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    assert_eq!(h("x-frame-options"), "DENY");
    assert_eq!(h("cache-control"), "no-store");
    assert_eq!(h("referrer-policy"), "no-referrer");
    assert!(!h("audit-id").is_empty());
}

#[tokio::test]
async fn a_sign_in_shows_the_identity_rules_and_kubeconfig_and_cannot_be_replayed() {
    let gw = SignInGateway::start(Options::default()).await;
    let (authorize, cookie, state) = gw.begin().await;
    // PKCE S256, a nonce, our client, the registered callback, the configured scopes.
    assert_eq!(param(&authorize, "code_challenge_method"), "S256");
    assert_eq!(param(&authorize, "client_id"), WEB_CLIENT);
    assert_eq!(
        param(&authorize, "redirect_uri"),
        format!("{}/kubegate/callback", gw.url())
    );
    assert_eq!(param(&authorize, "scope"), "openid groups");
    assert!(param(&authorize, "nonce").len() >= 16 && state.len() >= 16);
    let login = gw.get("/kubegate/login", None).await;
    let set_cookie = login.headers["set-cookie"].to_str().unwrap();
    for flag in [
        "__Secure-kubegate-signin=",
        "Max-Age=600",
        "Path=/kubegate/",
        "; Secure",
        "HttpOnly",
        "SameSite=Lax",
    ] {
        assert!(set_cookie.contains(flag), "{set_cookie}");
    }
    assert_page_headers(&login);

    let callback = sign_in_at_provider(&authorize, "alice", "alice-password").await;
    let path = gw.callback_path(&callback);
    let page = gw.get(&path, Some(&cookie)).await;
    let body = text(&page);
    assert_eq!(page.status, StatusCode::OK, "{body}");
    assert_page_headers(&page);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // Who, after the issuer's mappings; the rules that apply; the kubeconfig.
    assert!(
        body.contains("<code id=\"username\">alice</code>"),
        "{body}"
    );
    assert!(
        body.contains("<code class=\"group\">devs</code>, <code class=\"group\">web-users</code>"),
        "{body}"
    );
    assert!(
        body.contains("devs-read-dev")
            && body.contains("get, list on pods (the core group), in namespace dev"),
        "{body}"
    );
    assert!(
        !body.contains("guests-nothing"),
        "a rule that does not apply to alice is not shown"
    );
    assert!(
        body.contains("command: kubegate") && body.contains("&quot;--oidc-client-id=kubectl&quot;"),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "&quot;--oidc-issuer-url={}&quot;",
            gw.provider.issuer
        )),
        "{body}"
    );
    assert!(
        body.contains("--oidc-extra-scope=groups") && body.contains("interactiveMode: IfAvailable")
    );
    // Nothing the provider returned is on the page: no token, no secret, no code.
    assert!(
        !body.contains("eyJ")
            && !body.contains(CLIENT_SECRET)
            && !body.contains(&param(&callback, "code"))
    );
    let clear = page.headers["set-cookie"].to_str().unwrap();
    assert!(
        clear.starts_with("__Secure-kubegate-signin=;") && clear.contains("Max-Age=0"),
        "{clear}"
    );

    // The same callback again (the cookie replayed too): refused by the used state.
    let replay = gw.get(&path, Some(&cookie)).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert!(
        text(&replay).contains("already completed or refused once"),
        "{}",
        text(&replay)
    );
    assert_page_headers(&replay);

    // The used code with a fresh sign-in's state and cookie: the provider refuses it.
    let (_, cookie2, state2) = gw.begin().await;
    let code = param(&callback, "code");
    let reused = gw
        .get(
            &format!("/kubegate/callback?code={code}&state={state2}"),
            Some(&cookie2),
        )
        .await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    assert!(
        text(&reused).contains("refused the sign-in code (invalid_grant"),
        "{}",
        text(&reused)
    );

    let records = gw.signin_records(6).await;
    let summary: Vec<_> = records
        .iter()
        .map(|(s, reason, user, code, uri)| {
            (
                s.as_str(),
                reason.as_str(),
                user.as_str(),
                *code,
                uri.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("started", "", "", 303, "/kubegate/login"),
            ("started", "", "", 303, "/kubegate/login"),
            ("signed-in", "", "alice", 200, "/kubegate/callback"),
            ("refused", "replayed", "", 400, "/kubegate/callback"),
            ("started", "", "", 303, "/kubegate/login"),
            ("refused", "code-refused", "", 400, "/kubegate/callback"),
        ]
    );
    // The trail never holds the code or the state.
    let trail = std::fs::read_to_string(gw.dir.path().join("audit.log")).unwrap();
    assert!(!trail.contains(&code) && !trail.contains(&state));
}

#[tokio::test]
async fn callbacks_without_the_right_state_or_cookie_change_nothing() {
    let gw = SignInGateway::start(Options::default()).await;
    let (_, cookie, state) = gw.begin().await;
    let cases = [
        (
            "/kubegate/callback?code=x",
            None,
            "no sign-in is in progress",
        ),
        (
            "/kubegate/callback?code=x",
            Some(cookie.as_str()),
            "carries no state",
        ),
        (
            "/kubegate/callback?code=x&state=forged",
            Some(cookie.as_str()),
            "does not match",
        ),
        (
            "/kubegate/callback?code=x&state=s",
            Some("__Secure-kubegate-signin=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            "cookie is not valid",
        ),
        (
            "/kubegate/callback?state=a&state=b",
            Some(cookie.as_str()),
            "malformed or repeated",
        ),
    ];
    for (path, cookie, message) in &cases {
        let r = gw.get(path, *cookie).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(text(&r).contains(message), "{path}: {}", text(&r));
        assert_page_headers(&r);
    }
    // None of those used up the sign-in: its own callback still completes it.
    let r = gw.get(&format!("/kubegate/callback?error=access_denied&state={state}&error_description=The+user+said+no"), Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let body = text(&r);
    assert!(
        body.contains("did not sign you in: access_denied. It said: The user said no"),
        "{body}"
    );
    // Each refusal has an audit record of its own, with its reason.
    let records = gw.signin_records(7).await;
    let reasons: Vec<_> = records
        .iter()
        .skip(1)
        .map(|r| (r.0.as_str(), r.1.as_str(), r.3))
        .collect();
    assert_eq!(
        reasons,
        [
            ("refused", "no-cookie", 400),
            ("refused", "no-state", 400),
            ("refused", "state-mismatch", 400),
            ("refused", "bad-cookie", 400),
            ("refused", "malformed", 400),
            ("refused", "access-denied", 403),
        ]
    );
}

#[tokio::test]
async fn an_access_denied_and_an_expired_sign_in_get_a_clear_page() {
    let gw = SignInGateway::start(Options {
        login: "sign_in_timeout = \"1s\"",
        ..Options::default()
    })
    .await;
    let (_, cookie, state) = gw.begin().await;
    assert!(
        gw.get("/kubegate/login", None).await.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=1;")
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = gw
        .get(
            &format!("/kubegate/callback?code=x&state={state}"),
            Some(&cookie),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        text(&r).contains("took too long and has expired"),
        "{}",
        text(&r)
    );

    let (_, cookie, state) = gw.begin().await;
    let r = gw
        .get(
            &format!("/kubegate/callback?error=access_denied&state={state}"),
            Some(&cookie),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        text(&r).contains("did not sign you in: access_denied."),
        "{}",
        text(&r)
    );
    let records = gw.signin_records(5).await;
    assert!(
        records
            .iter()
            .any(|r| r.0 == "refused" && r.1 == "access-denied" && r.3 == 403),
        "{records:?}"
    );
}

#[tokio::test]
async fn an_id_token_for_another_audience_is_refused() {
    // The page signs in with a client the issuer's audiences do not name.
    let gw = SignInGateway::start(Options {
        client_id: Some(WEB_CLIENT_OTHER),
        ..Options::default()
    })
    .await;
    let (authorize, cookie, _) = gw.begin().await;
    assert_eq!(param(&authorize, "client_id"), WEB_CLIENT_OTHER);
    let callback = sign_in_at_provider(&authorize, "alice", "alice-password").await;
    let r = gw.get(&gw.callback_path(&callback), Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let body = text(&r);
    assert!(
        body.contains("for another audience") && !body.contains("alice</code>"),
        "{body}"
    );
    let records = gw.signin_records(2).await;
    assert_eq!(records[1].0, "refused");
    assert_eq!(records[1].1, "audience");
    assert_eq!(
        records[1].2, "",
        "no identity is recorded for a refused token"
    );
}

#[tokio::test]
async fn the_pages_are_behind_the_per_address_budget_and_answer_get_only() {
    let gw = SignInGateway::start(Options {
        limits: Some("unauthenticated_per_second = 1\nunauthenticated_burst = 2"),
        ..Options::default()
    })
    .await;
    assert_eq!(gw.get("/kubegate/", None).await.status, StatusCode::OK);
    let css = gw.get("/kubegate/style.css", None).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let r = gw.get("/kubegate/login", None).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key("retry-after"));
    let records = gw.signin_records(1).await;
    assert_eq!(records[0].1, "rate-limited");
}

#[tokio::test]
async fn the_prefix_is_refused_as_an_api_path_when_login_is_off() {
    let gw = TestGateway::start().await;
    let token = gw.issuer.token("alice", &["devs"]);
    gw.sandbox.clear_requests();
    for path in [
        "/kubegate/login",
        "/kubegate",
        "/kubegate/callback?code=x",
        "/kubegate/api/v1/pods",
    ] {
        let r = gw.get(path, &token).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        let status = r.json();
        assert_eq!(status["kind"], "Status");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("reserved for the gateway's sign-in pages"),
            "{status}"
        );
    }
    let r = gw
        .request(Method::POST, "/kubegate/x", Some(&token), &[])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        gw.sandbox.request_count(),
        0,
        "nothing under the prefix is forwarded"
    );
    eventually("the refusal is audited", async || {
        gw.audit_records().iter().any(|r| {
            r["annotations"]["kubegate.io/signin-reason"] == "disabled"
                && r["requestURI"] == "/kubegate/login"
        })
    })
    .await;
}

#[tokio::test]
async fn a_person_signs_in_with_a_real_browser_and_downloads_the_kubeconfig() {
    let chromium = chromium();
    let driver = browser_driver();
    let gw = SignInGateway::start(Options::default()).await;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("signin-page");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let start = format!("{}/kubegate/login", gw.url());
    let run = tokio::process::Command::new("node")
        .arg(driver.join("signin.mjs"))
        .args([
            start.as_str(),
            out.to_str().unwrap(),
            "alice",
            "alice-password",
        ])
        .env("CHROMIUM", &chromium)
        .output()
        .await
        .expect("node runs");
    assert!(
        run.status.success(),
        "the browser run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let shown: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("the driver's JSON line");
    eprintln!("screenshots: {}", shown["screenshots"]);
    for shot in shown["screenshots"].as_array().unwrap() {
        let len = std::fs::metadata(shot.as_str().unwrap()).unwrap().len();
        assert!(len > 5_000, "{shot} is {len} bytes");
    }
    assert_eq!(
        shown["url"].as_str().unwrap().split('?').next(),
        Some(format!("{}/kubegate/callback", gw.url()).as_str())
    );
    assert_eq!(shown["username"], "alice");
    assert_eq!(shown["groups"], serde_json::json!(["devs", "web-users"]));
    assert_eq!(shown["scripts"], 0);
    assert_eq!(
        shown["violations"],
        serde_json::json!([]),
        "the page keeps to its CSP"
    );
    // The stylesheet was loaded under style-src 'self'.
    assert_eq!(shown["background"], "rgb(245, 246, 248)");
    let rules = shown["rules"].to_string();
    assert!(
        rules.contains("devs-read-dev") && rules.contains("discovery"),
        "{rules}"
    );
    let kubeconfig = shown["kubeconfig"].as_str().unwrap();
    assert_eq!(
        shown["download"].as_str().unwrap(),
        kubeconfig,
        "the download is the file shown"
    );
    assert!(
        kubeconfig.contains("command: kubegate")
            && kubeconfig.contains("interactiveMode: IfAvailable")
    );
    assert!(!kubeconfig.contains("token:") && !kubeconfig.contains(CLIENT_SECRET));

    // kubectl reads the downloaded file as a kubeconfig: server, CA and the exec plugin.
    let file = shown["downloaded"].as_str().unwrap();
    let view = Command::new(kubectl())
        .args([
            "--kubeconfig",
            file,
            "config",
            "view",
            "--raw",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        view.status.success(),
        "{}",
        String::from_utf8_lossy(&view.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&view.stdout).unwrap();
    assert_eq!(view["clusters"][0]["cluster"]["server"], gw.url());
    let ca = view["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap();
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca)
        .unwrap();
    assert_eq!(
        String::from_utf8(ca).unwrap(),
        gw.pki.cert_pem,
        "the listener's chain"
    );
    let exec = &view["users"][0]["user"]["exec"];
    assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(exec["command"], "kubegate");
    assert_eq!(
        exec["args"],
        serde_json::json!([
            "get-token",
            format!("--oidc-issuer-url={}", gw.provider.issuer),
            "--oidc-client-id=kubectl",
            "--oidc-extra-scope=groups"
        ])
    );
    assert!(exec["installHint"].as_str().unwrap().contains("/kubegate/"));
    let records = gw.signin_records(2).await;
    assert!(
        records.iter().any(|r| r.0 == "signed-in" && r.2 == "alice"),
        "{records:?}"
    );
}
