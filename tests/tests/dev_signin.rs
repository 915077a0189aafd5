//! Sign-in in `kubegate dev` with no provider installed: the dev issuer served by the dev
//! gateway, driven as a person would drive it. The credential plugin is the built
//! `kubegate` binary (the `kubegate login` command dev mode prints), its "browser" a curl
//! script that opens the dev issuer's page, picks a user by submitting its form and
//! follows the redirect to the plugin's loopback callback; kubectl is the real one. The
//! web page is walked request by request with its cookie. The issuer counts the codes and
//! refresh tokens it redeemed, so "refreshed without a new sign-in" is counted where it
//! happens.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use kubegate::dev::issuer::{AUTHORIZE_PATH, PLUGIN_CLIENT_ID, TOKEN_PATH, WEB_CLIENT_ID};
use kubegate::dev::{DevEnvironment, DevOptions, SIGNIN_CONTEXT};
use kubegate_tests::{
    Collected, collect, https_client, kubectl, output_within_a_minute, plugin_env, plugin_home,
};
use serde_json::Value;

type Https = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A dev gateway and a private HOME with `kubegate` on PATH and the curl "browser".
struct Dev {
    env: DevEnvironment,
    home: tempfile::TempDir,
    bin: PathBuf,
    kubeconfig: PathBuf,
    client: Https,
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Dev {
    async fn start(id_token_lifetime: Duration) -> Self {
        let env = kubegate::dev::start(DevOptions {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            force_sandbox: true,
            dir: None,
            id_token_lifetime,
        })
        .await
        .expect("dev mode starts");
        let (home, bin) = plugin_home();
        // The dev kubeconfig (static-token users) is where `kubegate login` merges its
        // context, as the printed instructions say.
        let kubeconfig = home.path().join("kubeconfig");
        std::fs::copy(&env.kubeconfig, &kubeconfig).unwrap();
        let browser = home.path().join("browser.sh");
        std::fs::write(
            &browser,
            format!(
                r#"#!/bin/sh
# A person at the dev issuer's page: open it, choose $DEV_USER (alice), follow the redirect.
set -eu
echo "$1" >> '{log}'
page=$(curl -sS --fail --cacert '{ca}' "$1")
id=$(printf '%s' "$page" | sed -n 's/.*name="request" value="\([^"]*\)".*/\1/p')
callback=$(curl -sS --fail --cacert '{ca}' -o /dev/null -w '%{{redirect_url}}' \
  -H 'Origin: {url}' --data-urlencode "request=$id" --data-urlencode "user=${{DEV_USER:-alice}}" \
  '{url}{AUTHORIZE_PATH}')
case "$callback" in http://127.0.0.1:*) ;; *) echo "not a loopback callback: $callback" >&2; exit 1;; esac
curl -sS --fail -o /dev/null "$callback"
"#,
                log = home.path().join("browser.log").display(),
                ca = env.ca_file.display(),
                url = env.url,
            ),
        )
        .unwrap();
        std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o700)).unwrap();
        let ca = std::fs::read_to_string(&env.ca_file).unwrap();
        Dev {
            client: https_client(&ca, false),
            env,
            home,
            bin,
            kubeconfig,
        }
    }

    fn browser_runs(&self) -> usize {
        std::fs::read_to_string(self.home.path().join("browser.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn codes_redeemed(&self) -> u64 {
        self.env
            .issuer
            .counts
            .codes_redeemed
            .load(Ordering::Relaxed)
    }

    fn refreshes(&self) -> u64 {
        self.env.issuer.counts.refreshes.load(Ordering::Relaxed)
    }

    async fn run(&self, mut command: tokio::process::Command) -> Run {
        plugin_env(&mut command, self.home.path(), &self.bin, &self.kubeconfig);
        command.env("BROWSER", self.home.path().join("browser.sh"));
        let (ok, stdout, stderr) = output_within_a_minute(command).await;
        Run { ok, stdout, stderr }
    }

    async fn kubegate(&self, args: &[String]) -> Run {
        let mut command = tokio::process::Command::new(self.bin.join("kubegate"));
        command.args(args);
        if args.first().is_some_and(|a| a != "logout") {
            command.arg("--authentication-timeout=30s");
        }
        self.run(command).await
    }

    async fn kubectl(&self, args: &[&str]) -> Run {
        let mut command = tokio::process::Command::new(kubectl());
        command.args(args);
        self.run(command).await
    }

    async fn get_token(&self) -> String {
        let ca = self.env.ca_file.display().to_string();
        let run = self
            .kubegate(&[
                "get-token".into(),
                format!("--oidc-issuer-url={}", self.env.url),
                format!("--oidc-client-id={PLUGIN_CLIENT_ID}"),
                format!("--certificate-authority={ca}"),
            ])
            .await;
        assert!(run.ok, "get-token: {}", run.stderr);
        let credential: Value = serde_json::from_str(&run.stdout).expect("ExecCredential");
        credential["status"]["token"]
            .as_str()
            .expect("a token")
            .to_string()
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Collected {
        collect(&self.client, request).await
    }

    async fn get(&self, path_or_url: &str, cookie: Option<&str>) -> Collected {
        let url = absolute(&self.env.url, path_or_url);
        let mut r = Request::get(url);
        if let Some(c) = cookie {
            r = r.header(header::COOKIE, c);
        }
        self.send(r.body(Full::default()).unwrap()).await
    }

    async fn post_form(&self, path: &str, pairs: &[(&str, &str)]) -> Collected {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let r = Request::builder()
            .method(Method::POST)
            .uri(absolute(&self.env.url, path))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ORIGIN, &self.env.url)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.send(r).await
    }

    /// Opens the dev issuer's page at `authorize_url` and chooses `user`: the redirect.
    async fn choose(&self, authorize_url: &str, user: &str) -> url::Url {
        let page = self.get(authorize_url, None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", text(&page));
        let html = text(&page);
        assert!(html.contains("dev only — no password"), "{html}");
        let id = html
            .split("name=\"request\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("the form's request id");
        let answer = self
            .post_form(AUTHORIZE_PATH, &[("request", id), ("user", user)])
            .await;
        location(&answer)
    }
}

fn absolute(base: &str, path_or_url: &str) -> String {
    if path_or_url.starts_with("https://") {
        path_or_url.to_string()
    } else {
        format!("{base}{path_or_url}")
    }
}

fn text(c: &Collected) -> String {
    String::from_utf8_lossy(&c.body).into_owned()
}

fn location(c: &Collected) -> url::Url {
    assert_eq!(c.status, StatusCode::SEE_OTHER, "{}", text(c));
    url::Url::parse(c.headers[header::LOCATION].to_str().unwrap()).expect("a URL")
}

fn param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn json(c: &Collected) -> Value {
    serde_json::from_slice(&c.body).expect("JSON")
}

#[tokio::test]
async fn the_printed_kubegate_login_signs_in_and_kubectl_works_through_the_gateway() {
    let dev = Dev::start(kubegate::dev::issuer::DEFAULT_ID_TOKEN_LIFETIME).await;
    let printed = dev.env.instructions();
    let login = dev.env.login_command(SIGNIN_CONTEXT);
    assert!(
        printed.contains(&format!("kubegate {}", login.join(" "))),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("sign in in a browser: {}/kubegate/", dev.env.url)),
        "{printed}"
    );
    // The static-token users are still there.
    assert!(
        printed.contains("kubectl --context alice get pods -n dev"),
        "{printed}"
    );

    let run = dev.kubegate(&login).await;
    assert!(run.ok, "kubegate login: {}", run.stderr);
    assert_eq!((dev.browser_runs(), dev.codes_redeemed()), (1, 1));
    let kubeconfig = std::fs::read_to_string(&dev.kubeconfig).unwrap();
    assert!(
        kubeconfig.contains("get-token") && kubeconfig.contains("token: "),
        "the plugin context joins the static-token ones: {kubeconfig}"
    );

    let run = dev
        .kubectl(&["--context", SIGNIN_CONTEXT, "get", "pods", "-n", "dev"])
        .await;
    assert!(run.ok, "kubectl get pods: {}", run.stderr);
    let run = dev
        .kubectl(&["--context", SIGNIN_CONTEXT, "auth", "whoami", "-o", "json"])
        .await;
    assert!(run.ok, "kubectl auth whoami: {}", run.stderr);
    let who: Value = serde_json::from_str(&run.stdout).expect("whoami JSON");
    assert_eq!(who["status"]["userInfo"]["username"], "alice", "{who}");
    assert_eq!(who["status"]["userInfo"]["groups"][0], "devs", "{who}");
    // The cached token did: no second sign-in, no refresh.
    assert_eq!(
        (dev.browser_runs(), dev.codes_redeemed(), dev.refreshes()),
        (1, 1, 0)
    );
    // logout revokes the refresh token at the dev issuer (RFC 7009).
    let run = dev
        .kubegate(&["logout".into(), format!("--context={SIGNIN_CONTEXT}")])
        .await;
    assert!(run.ok, "kubegate logout: {}", run.stderr);
    assert!(
        run.stderr.contains("revoked the refresh token"),
        "{}",
        run.stderr
    );
    dev.env.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_short_id_token_lifetime_makes_the_plugin_refresh_without_a_new_sign_in() {
    // Shorter than the plugin's 30 s margin: every run after the first refreshes.
    let dev = Dev::start(Duration::from_secs(25)).await;
    let first = dev.get_token().await;
    assert_eq!((dev.browser_runs(), dev.codes_redeemed()), (1, 1));
    let second = dev.get_token().await;
    assert_ne!(first, second);
    assert_eq!(
        (dev.browser_runs(), dev.codes_redeemed(), dev.refreshes()),
        (1, 1, 1)
    );
    // The refreshed token is alice's, and the gateway takes it.
    let r = Request::get(format!("{}/api/v1/namespaces/dev/pods", dev.env.url))
        .header(header::AUTHORIZATION, format!("Bearer {second}"))
        .body(Full::default())
        .unwrap();
    let answer = dev.send(r).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", text(&answer));
    dev.env.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_web_page_signs_bob_in_at_the_dev_issuer() {
    let dev = Dev::start(kubegate::dev::issuer::DEFAULT_ID_TOKEN_LIFETIME).await;
    let start = dev.get("/kubegate/", None).await;
    assert_eq!(start.status, StatusCode::OK);
    assert!(text(&start).contains("/kubegate/login"), "{}", text(&start));

    let login = dev.get("/kubegate/login", None).await;
    let authorize = location(&login);
    assert!(
        authorize
            .as_str()
            .starts_with(&format!("{}{AUTHORIZE_PATH}?", dev.env.url)),
        "{authorize}"
    );
    assert_eq!(
        param(&authorize, "client_id").as_deref(),
        Some(WEB_CLIENT_ID)
    );
    assert_eq!(
        param(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let cookie = login.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let callback = dev.choose(authorize.as_str(), "bob").await;
    assert!(
        callback
            .as_str()
            .starts_with(&format!("{}/kubegate/callback?", dev.env.url)),
        "{callback}"
    );
    assert_eq!(param(&callback, "state"), param(&authorize, "state"));
    let page = dev.get(callback.as_str(), Some(&cookie)).await;
    let html = text(&page);
    assert_eq!(page.status, StatusCode::OK, "{html}");
    assert!(html.contains("Signed in as bob"), "{html}");
    assert!(html.contains("guests"), "{html}");
    assert!(
        html.contains("apiVersion: v1") && html.contains("get-token"),
        "{html}"
    );
    assert!(
        html.contains(&format!("--oidc-client-id={PLUGIN_CLIENT_ID}")),
        "{html}"
    );
    assert!(
        html.contains(&format!(
            "--certificate-authority={}",
            dev.env.ca_file.display()
        )),
        "{html}"
    );
    assert_eq!((dev.codes_redeemed(), dev.refreshes()), (1, 0));
    dev.env.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_token_and_authorize_requests_are_refused_with_their_oauth_errors() {
    let dev = Dev::start(kubegate::dev::issuer::DEFAULT_ID_TOKEN_LIFETIME).await;
    // The plugin's side by hand: a verifier, its challenge, a loopback redirect.
    // (The challenge is the verifier's SHA-256, base64url, computed apart with Python.)
    let verifier = "dBjftJeZ4CVP-mJ92IZwZQnd9ALdjrLMwNi2gMJFL8E".to_string();
    let challenge = "A-AGfKhG2FONg3sp2rBmXaWO-r3-4U8QSuWGbLSnNqk".to_string();
    let redirect = "http://127.0.0.1:9/callback";
    let authorize = |redirect: &str, client: &str| {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("response_type", "code"),
                ("client_id", client),
                ("redirect_uri", redirect),
                ("scope", "openid"),
                ("state", "s"),
                ("nonce", "n"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ])
            .finish();
        format!("{}{AUTHORIZE_PATH}?{q}", dev.env.url)
    };
    let new_code = async || {
        let back = dev
            .choose(&authorize(redirect, PLUGIN_CLIENT_ID), "alice")
            .await;
        assert!(back.as_str().starts_with(redirect), "{back}");
        param(&back, "code").expect("a code")
    };
    let redeem = async |code: &str, client: &str, verifier: Option<&str>| {
        let mut pairs = vec![
            ("grant_type", "authorization_code"),
            ("client_id", client),
            ("code", code),
            ("redirect_uri", redirect),
        ];
        pairs.extend(verifier.map(|v| ("code_verifier", v)));
        dev.post_form(TOKEN_PATH, &pairs).await
    };
    let refused = |c: &Collected, status: StatusCode, error: &str| {
        assert_eq!(c.status, status, "{}", text(c));
        let body = json(c);
        assert_eq!(body["error"], error, "{body}");
        assert!(body.get("id_token").is_none() && body.get("access_token").is_none());
    };

    // No verifier, then a wrong one: refused, and the wrong one spends the code.
    let code = new_code().await;
    refused(
        &redeem(&code, PLUGIN_CLIENT_ID, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let wrong = "b".repeat(43);
    refused(
        &redeem(&code, PLUGIN_CLIENT_ID, Some(&wrong)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    refused(
        &redeem(&code, PLUGIN_CLIENT_ID, Some(&verifier)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    // An unknown client: 401 invalid_client.
    let code = new_code().await;
    refused(
        &redeem(&code, "someone", Some(&verifier)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    // The right verifier once; the code replayed is refused.
    let ok = redeem(&code, PLUGIN_CLIENT_ID, Some(&verifier)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", text(&ok));
    assert!(json(&ok)["id_token"].is_string());
    refused(
        &redeem(&code, PLUGIN_CLIENT_ID, Some(&verifier)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    assert_eq!(dev.codes_redeemed(), 1);

    // A redirect that is not loopback, and an unknown client: a page, never a redirect.
    for url in [
        authorize("https://evil.example/callback", PLUGIN_CLIENT_ID),
        authorize(redirect, "someone"),
    ] {
        let page = dev.get(&url, None).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{url}");
        assert!(page.headers.get(header::LOCATION).is_none());
        assert!(text(&page).contains("No code or token was issued"));
    }
    // The issuer's paths sit under the reserved prefix: other methods are not forwarded.
    let r = Request::delete(format!("{}{TOKEN_PATH}", dev.env.url))
        .body(Full::default())
        .unwrap();
    assert_eq!(dev.send(r).await.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(dev.codes_redeemed(), 1);
    dev.env.running.shutdown().await.unwrap();
}
