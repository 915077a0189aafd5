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
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
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

/// The fixture's public client for the credential plugin (tests/oidc/plugin_client.mjs).
pub const PLUGIN_CLIENT_ID: &str = "kubegate-cli";

/// The scripted browser that signs in at the fixture (`--browser-command`).
pub fn browser_script() -> PathBuf {
    fixture().join("browser.mjs")
}

/// GET from the provider: (status, JSON body or null).
pub async fn get(url: &str) -> (StatusCode, serde_json::Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
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
