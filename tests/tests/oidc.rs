//! End to end against a real OpenID provider (panva's oidc-provider, from tests/oidc):
//! discovery, a client-credentials RS256 access token with a groups claim, forwarding with
//! impersonation, then a key rotation picked up without restarting the gateway.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kubegate_tests::{GatewayOptions, TestGateway};

struct Provider {
    child: Child,
    issuer: String,
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
fn start_provider() -> Provider {
    let dir = fixture();
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

async fn post(url: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.expect("provider answers");
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

async fn access_token(provider: &Provider) -> String {
    let (status, body) = post(
        &format!("{}/token", provider.issuer),
        "grant_type=client_credentials&client_id=kubegate-test&client_secret=kubegate-test-secret",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"]
        .as_str()
        .expect("access token")
        .to_string()
}

#[tokio::test]
async fn discovery_token_forwarding_and_key_rotation() {
    let provider = start_provider();
    let gw = TestGateway::start_with(GatewayOptions {
        oidc_toml: Some(format!(
            "[[auth.oidc]]\nissuer = \"{}\"\ninsecure_http = true\naudiences = [\"kubegate\"]\ngroups_claim = \"groups\"\nalgorithms = [\"RS256\"]\nkey_refresh_cooldown = \"1s\"\n",
            provider.issuer
        )),
        ..GatewayOptions::default()
    })
    .await;
    let (ready, body) = gw.admin_get("/readyz").await;
    assert_eq!(
        ready,
        StatusCode::OK,
        "keys were found by discovery: {body}"
    );

    let first = access_token(&provider).await;
    let r = gw.get("/api/v1/namespaces/dev/pods", &first).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let seen = gw.sandbox.requests();
    let forwarded = seen.last().unwrap();
    assert_eq!(forwarded.impersonate_user(), Some("kubegate-test"));
    assert_eq!(forwarded.impersonate_groups(), vec!["devs"]);

    // Rotate: the provider now signs with a new key and publishes only that one.
    let (status, rotated) = post(&format!("{}/test/rotate", provider.issuer), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rotated["kid"], "k2");
    let second = access_token(&provider).await;
    // Past the cooldown of the start-up fetch, the unknown kid triggers one refresh.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = gw.get("/api/v1/namespaces/dev/pods", &second).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "new key accepted without restart: {:?}",
        r.body
    );
    // The old key is gone from the issuer's JWKS: its token (cached before) is void now.
    let r = gw.get("/api/v1/namespaces/dev/pods", &first).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
