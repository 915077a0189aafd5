//! The real OpenID provider fixture (panva's oidc-provider, tests/oidc), started as a
//! child process on a free loopback port, and client-credentials tokens from it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The fixture's one client secret (every client has it).
pub const CLIENT_SECRET: &str = "kubegate-test-secret";

/// A running provider; killed when dropped.
pub struct Provider {
    child: Child,
    /// Its issuer URL, `http://127.0.0.1:<port>`.
    pub issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// Installs the fixture's locked dependencies (once) and starts the provider.
pub fn start_provider() -> Provider {
    start_provider_with(&[])
}

/// [`start_provider`] with further arguments for server.mjs (e.g. `--web-redirect=URL`).
pub fn start_provider_with(args: &[&str]) -> Provider {
    let dir = fixture();
    // Tests of one binary run in parallel: only one of them may run `npm ci` at a time.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.join("node_modules/oidc-provider").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm must be installed to run the OpenID provider test (Node 20 + npm)");
        assert!(status.success(), "npm ci failed in {}", dir.display());
    }
    let mut child = Command::new("node")
        .args(["server.mjs", "0"])
        .args(args)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node must be installed to run the OpenID provider test");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("provider output");
    let issuer = line
        .trim()
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("provider did not start: {line:?}"))
        .to_string();
    Provider { child, issuer }
}

/// POSTs a form to the provider: (status, JSON body or null).
pub async fn post(url: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let request = http::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    send(request).await
}

/// Sends `request` to the provider over plain HTTP: (status, JSON body or null).
async fn send(request: http::Request<Full<Bytes>>) -> (StatusCode, serde_json::Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.expect("provider answers");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

impl Provider {
    /// A client-credentials access token (a JWT) for `client_id`.
    pub async fn access_token(&self, client_id: &str) -> String {
        let (status, body) = post(
            &format!("{}/token", self.issuer),
            &format!(
                "grant_type=client_credentials&client_id={client_id}&client_secret={CLIENT_SECRET}"
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"]
            .as_str()
            .expect("access token")
            .to_string()
    }
}

// ---- web page (kubegate's /kubegate/ sign-in page) -------------------------------------

/// The fixture's confidential client for the gateway's sign-in page.
pub const WEB_CLIENT: &str = "kubegate-web";
/// A second confidential client, whose ID tokens are for another audience.
pub const WEB_CLIENT_OTHER: &str = "kubegate-web-other";

/// Signs `user` in on the provider's test login page without a browser: follows the
/// authorization URL's redirects with the provider's cookies, posts the login form, and
/// returns where the provider finally sends the browser (the gateway's callback URL with
/// `code` and `state`, or with `error`). Panics with what the provider answered otherwise.
pub async fn sign_in_at_provider(authorize_url: &str, user: &str, password: &str) -> String {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut cookies: std::collections::BTreeMap<String, String> = Default::default();
    let mut url = authorize_url.to_string();
    let mut form = None;
    for _ in 0..10 {
        let origin = url.split('/').take(3).collect::<Vec<_>>().join("/");
        if !url.starts_with("http://127.0.0.1") {
            return url;
        }
        let cookie = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let builder = http::Request::builder().uri(&url).header("cookie", cookie);
        let request = match form.take() {
            Some(body) => builder
                .method("POST")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body))),
            None => builder.method("GET").body(Full::new(Bytes::new())),
        }
        .expect("request");
        let response = client.request(request).await.expect("provider answers");
        for value in response.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap_or("").split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                cookies.insert(k.trim().to_string(), v.to_string());
            }
        }
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        match location {
            Some(l) if status.is_redirection() => {
                url = if l.starts_with('/') {
                    format!("{origin}{l}")
                } else {
                    l
                };
            }
            _ if status == StatusCode::OK && url.contains("/interaction/") => {
                let text = String::from_utf8_lossy(&body);
                assert!(
                    !text.contains("id=\"error\""),
                    "the provider refused the login of {user}"
                );
                form = Some(format!("login={user}&password={password}"));
            }
            _ => panic!(
                "the provider answered {status} at {url}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    panic!("the provider's sign-in did not end in 10 steps (last {url})");
}

/// The fixture's public client for the credential plugin (tests/oidc/plugin_client.mjs).
pub const PLUGIN_CLIENT_ID: &str = "kubegate-cli";

/// The scripted browser that signs in at the fixture (`--browser-command`).
pub fn browser_script() -> PathBuf {
    fixture().join("browser.mjs")
}

/// GET from the provider: (status, JSON body or null).
pub async fn get(url: &str) -> (StatusCode, serde_json::Value) {
    let request = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(request).await
}

impl Provider {
    /// How many tokens the token endpoint has served for `grant_type` since start.
    pub async fn grants(&self, grant_type: &str) -> u64 {
        let (status, body) = get(&format!("{}/test/stats", self.issuer)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["grants"][grant_type].as_u64().unwrap_or(0)
    }

    /// ID tokens issued from now on live `seconds`.
    pub async fn set_id_token_ttl(&self, seconds: u32) {
        let (status, body) = post(
            &format!("{}/test/id-token-ttl?seconds={seconds}", self.issuer),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// A field of the discovery document.
    pub async fn discovery(&self, field: &str) -> String {
        let (status, body) =
            get(&format!("{}/.well-known/openid-configuration", self.issuer)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body[field].as_str().unwrap_or_default().to_string()
    }
}
