//! Issuer key management: rotation picked up on an unknown kid, a flood of random kids
//! costing at most one fetch per cooldown, and cached verdicts voided by a key change.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use kubegate::authn::{AuthError, Authenticator, IssuerVerifier};
use kubegate_tests::{TestConfig, TestIssuer};

struct Keys {
    dir: tempfile::TempDir,
    authn: Authenticator,
    verifier: Arc<IssuerVerifier>,
}

/// An authenticator over one issuer whose keys come from `jwks.json` in a temp dir.
async fn authenticator(first: &TestIssuer, cache_ttl: &str) -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for f in ["tls.crt", "tls.key", "policy.toml", "kubeconfig"] {
        std::fs::write(d.join(f), "x").unwrap();
    }
    std::fs::write(d.join("jwks.json"), first.jwks()).unwrap();
    let text = TestConfig {
        auth: Some(format!("token_cache_ttl = {cache_ttl:?}")),
        ..TestConfig::new("kubeconfig = \"kubeconfig\"")
    }
    .render();
    let config = kubegate_config::parse(&d.join("kubegate.toml"), &text).unwrap();
    let verifier = Arc::new(IssuerVerifier::new(config.auth.oidc[0].clone()).unwrap());
    verifier.refresh_keys().await.unwrap();
    let authn = Authenticator::new(vec![verifier.clone()], &config.auth, vec![]);
    Keys {
        dir,
        authn,
        verifier,
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

#[tokio::test(start_paused = true)]
async fn a_rotated_key_is_picked_up_on_its_first_token() {
    let old = TestIssuer::rs256();
    let keys = authenticator(&old, "60s").await;
    assert!(
        keys.authn
            .authenticate(&bearer(&old.token("alice", &[])), None)
            .await
            .is_ok()
    );

    // The issuer rotates: the file now holds only the new key.
    let new = TestIssuer::es256();
    std::fs::write(keys.dir.path().join("jwks.json"), new.jwks()).unwrap();
    let token = new.token("alice", &["devs"]);
    // Within the cooldown of the start-up fetch, the unknown kid does not refetch.
    assert_eq!(
        keys.authn
            .authenticate(&bearer(&token), None)
            .await
            .unwrap_err(),
        AuthError::Signature
    );
    tokio::time::advance(Duration::from_secs(31)).await;
    let identity = keys
        .authn
        .authenticate(&bearer(&token), None)
        .await
        .unwrap();
    assert_eq!(identity.groups, vec!["devs"]);
    assert_eq!(keys.verifier.fetch_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_revoked_key_stops_working_at_the_next_refresh_even_when_cached() {
    let old = TestIssuer::rs256();
    let keys = authenticator(&old, "60s").await;
    let token = old.token("alice", &[]);
    assert!(keys.authn.authenticate(&bearer(&token), None).await.is_ok());
    // Cached now; the key is revoked and the keys refreshed.
    std::fs::write(
        keys.dir.path().join("jwks.json"),
        TestIssuer::rs256().jwks(),
    )
    .unwrap();
    keys.verifier.refresh_keys().await.unwrap();
    assert!(
        keys.authn
            .authenticate(&bearer(&token), None)
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_random_kids_cost_a_handful_of_fetches() {
    // ES256 signs fast; the point is the kids, not the algorithm.
    let issuer = TestIssuer::es256();
    let keys = authenticator(&issuer, "0s").await;
    let claims = issuer.claims("mallory", &[]);
    let tokens: Vec<String> = (0..10_000)
        .map(|i| {
            let mut header = jsonwebtoken::Header::new(issuer.alg);
            header.kid = Some(format!("random-{i}"));
            // The issuer's own key: only the kid is unknown.
            jsonwebtoken::encode(&header, &claims, issuer.encoding_key()).unwrap()
        })
        .collect();
    let authn = &keys.authn;
    let mut refused = 0;
    for chunk in tokens.chunks(500) {
        let results = futures_util::future::join_all(
            chunk
                .iter()
                .map(|t| async move { authn.authenticate(&bearer(t), None).await }),
        )
        .await;
        refused += results.iter().filter(|r| r.is_err()).count();
    }
    assert_eq!(
        refused, 10_000,
        "a kid that is not in the JWKS never verifies"
    );
    // One fetch at start, at most one for the whole flood (no cooldown passes here).
    assert!(
        keys.verifier.fetch_count() <= 2,
        "{} fetches",
        keys.verifier.fetch_count()
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_key_source_keeps_the_last_good_set() {
    let issuer = TestIssuer::rs256();
    let keys = authenticator(&issuer, "0s").await;
    std::fs::remove_file(keys.dir.path().join("jwks.json")).unwrap();
    assert!(
        keys.verifier.refresh_keys().await.is_err(),
        "the failure is reported"
    );
    let token = issuer.token("alice", &[]);
    assert!(keys.authn.authenticate(&bearer(&token), None).await.is_ok());
}
