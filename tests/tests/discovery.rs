//! OpenID discovery end to end: a second gateway trusts the dev gateway's issuer, finds
//! its keys by discovery over TLS with a configured CA, and verifies its tokens.

use std::net::SocketAddr;

use http::StatusCode;
use kubegate::dev::{DevEnvironment, DevOptions};
use kubegate_tests::{TestConfig, collect, https_client};

async fn dev() -> DevEnvironment {
    kubegate::dev::start(DevOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        force_sandbox: true,
        dir: None,
        id_token_lifetime: kubegate::dev::issuer::DEFAULT_ID_TOKEN_LIFETIME,
    })
    .await
    .expect("dev gateway")
}

/// A gateway configuration in `env`'s directory whose issuer section is `issuer_toml`.
async fn gateway_trusting(env: &DevEnvironment, issuer_toml: &str) -> kubegate::Running {
    // The dev environment's files: its policy, TLS pair and sandbox; an issuer of its own.
    let mut config = TestConfig::new("kubeconfig = \"sandbox.kubeconfig\"");
    config.oidc = format!(
        "[[auth.oidc]]\n{issuer_toml}\naudiences = [\"kubegate\"]\ncertificate_authority = \"ca.crt\"\ngroups_claim = \"groups\"\nalgorithms = [\"ES256\"]\n"
    );
    let text = config.render();
    let path = env.dir.join("second.toml");
    std::fs::write(&path, text).unwrap();
    let config = kubegate_config::load(&path).expect("config");
    kubegate::start(&config).await.expect("second gateway")
}

async fn list_pods(
    env: &DevEnvironment,
    gateway: &kubegate::Running,
    token: &str,
) -> (StatusCode, String) {
    let ca = std::fs::read_to_string(&env.ca_file).unwrap();
    let client = https_client(&ca, false);
    let request = http::Request::get(format!(
        "https://127.0.0.1:{}/api/v1/namespaces/dev/pods",
        gateway.addr().port()
    ))
    .header("authorization", format!("Bearer {token}"))
    .body(Default::default())
    .unwrap();
    let r = collect(&client, request).await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[tokio::test]
async fn keys_are_found_by_discovery() {
    let env = dev().await;
    let second = gateway_trusting(&env, &format!("issuer = \"{}\"", env.url)).await;
    let (status, body) = list_pods(&env, &second, &env.users[0].token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let env = dev().await;
    // The document at this URL names the dev issuer, not the configured one.
    let issuer = format!(
        "issuer = \"{url}/impostor\"\ndiscovery_url = \"{url}/.well-known/openid-configuration\"",
        url = env.url
    );
    let second = gateway_trusting(&env, &issuer).await;
    // A token that names the configured issuer and is signed with the key the foreign
    // document points to: accepted only if the mismatch went unnoticed.
    let now = kubegate_tests::now();
    let token = env
        .signer
        .sign(&serde_json::json!({
            "iss": format!("{}/impostor", env.url), "aud": "kubegate", "sub": "mallory",
            "groups": ["devs"], "iat": now, "exp": now + 600,
        }))
        .unwrap();
    let (status, body) = list_pods(&env, &second, &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("signing keys are not available"), "{body}");
}
