//! End to end against a real OpenID provider (panva's oidc-provider, from tests/oidc):
//! discovery, a client-credentials RS256 access token with a groups claim, forwarding with
//! impersonation, then a key rotation picked up without restarting the gateway.

use std::time::Duration;

use http::StatusCode;
use kubegate_tests::oidc_provider::{post, start_provider};
use kubegate_tests::{GatewayOptions, TestGateway};

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

    let first = provider.access_token("kubegate-test").await;
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
    let second = provider.access_token("kubegate-test").await;
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
