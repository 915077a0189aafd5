//! End to end through a real TLS client: authentication, header hygiene, policy, errors.

use std::time::Duration;

use http::{Method, StatusCode};
use kubegate_tests::{
    GatewayOptions, TestGateway, UPSTREAM_TOKEN, collect, https_client, now, raw_token,
};
use serde_json::json;

const PODS: &str = "/api/v1/namespaces/dev/pods";

#[tokio::test]
async fn a_valid_token_is_forwarded_with_exactly_the_right_identity() {
    let gw = TestGateway::start().await;
    let token = gw.issuer.token("alice", &["devs", "ops"]);
    let r = gw.get(PODS, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["kind"], "PodList");

    let seen = gw.sandbox.requests();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.path_and_query, PODS);
    assert_eq!(
        req.header_values("authorization"),
        vec![format!("Bearer {UPSTREAM_TOKEN}")]
    );
    assert_eq!(req.header_values("impersonate-user"), vec!["alice"]);
    assert_eq!(req.impersonate_groups(), vec!["devs", "ops"]);
    assert_eq!(req.header_values("x-forwarded-for"), vec!["127.0.0.1"]);
    // The client's token never travels upstream, in any header.
    assert!(req.headers.iter().all(|(_, v)| !v.contains(&token)));
}

#[tokio::test]
async fn smuggled_identity_headers_are_dropped() {
    let gw = TestGateway::start().await;
    let token = gw.issuer.token("alice", &["devs"]);
    let client = https_client(&gw.pki.ca_pem, true);
    let request = http::Request::get(format!("{}{PODS}", gw.url()))
        .header("authorization", format!("Bearer {token}"))
        .header("Impersonate-User", "admin")
        .header("impersonate-group", "system:masters")
        .header("Impersonate-Uid", "0")
        .header("Impersonate-Extra-Scopes", "everything")
        .header("X-Remote-User", "admin")
        .header("X-Forwarded-For", "10.9.9.9")
        .header("Connection", "Impersonate-User, Authorization")
        .header("Host", "evil.example")
        .body(Default::default())
        .unwrap();
    let r = collect(&client, request).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let req = &gw.sandbox.requests()[0];
    // The upstream is asked for by its own name, whatever the client said.
    assert_eq!(
        req.header_values("host"),
        vec![gw.sandbox.addr().to_string()]
    );
    assert_eq!(req.header_values("impersonate-user"), vec!["alice"]);
    assert_eq!(req.impersonate_groups(), vec!["devs"]);
    assert!(req.header_values("impersonate-uid").is_empty());
    assert!(
        req.headers
            .iter()
            .all(|(k, _)| !k.starts_with("impersonate-extra-") && !k.starts_with("x-remote-")),
        "{:?}",
        req.headers
    );
    assert_eq!(
        req.header_values("authorization"),
        vec![format!("Bearer {UPSTREAM_TOKEN}")]
    );
    assert_eq!(req.header_values("x-forwarded-for"), vec!["127.0.0.1"]);
    assert!(
        req.header_values("connection")
            .iter()
            .all(|v| !v.contains("mpersonate"))
    );
}

#[tokio::test]
async fn two_authorization_headers_are_refused_as_ambiguous() {
    let gw = TestGateway::start().await;
    let alice = gw.issuer.token("alice", &["devs"]);
    let bob = gw.issuer.token("bob", &[]);
    let client = https_client(&gw.pki.ca_pem, true);
    let request = http::Request::get(format!("{}{PODS}", gw.url()))
        .header("authorization", format!("Bearer {bob}"))
        .header("authorization", format!("Bearer {alice}"))
        .body(Default::default())
        .unwrap();
    let r = collect(&client, request).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.sandbox.request_count(), 0);
}

#[tokio::test]
async fn bad_tokens_are_401_and_never_reach_the_upstream() {
    let gw = TestGateway::start().await;
    let i = &gw.issuer;
    let mut expired = i.claims("alice", &["devs"]);
    expired["exp"] = json!(now() - 3600);
    expired["iat"] = json!(now() - 7200);
    expired["nbf"] = json!(now() - 7200);
    let mut wrong_aud = i.claims("alice", &["devs"]);
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = i.claims("alice", &["devs"]);
    wrong_iss["iss"] = json!("https://evil.example");
    let mut future = i.claims("alice", &["devs"]);
    future["nbf"] = json!(now() + 3600);
    let good = i.token("alice", &["devs"]);
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, _) = rest.split_once('.').unwrap();
    let bad_signature = format!("{head}.{payload}.{}", "A".repeat(342));

    let claims = i.claims("alice", &["devs"]);
    let alg_none = raw_token(&json!({"alg": "none", "typ": "JWT"}), &claims, b"");
    // The classic key-confusion attack: HMAC keyed with the issuer's public key.
    let hs256_key = jsonwebtoken::EncodingKey::from_secret(i.public_pem.as_bytes()).unwrap();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(i.kid.clone());
    let hs256 = jsonwebtoken::encode(&hs_header, &claims, &hs256_key).unwrap();
    // A token that brings its own key in the header must not be trusted for it.
    let other = kubegate_tests::TestIssuer::rs256();
    let mut with_jwk = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    with_jwk.kid = Some(i.kid.clone());
    with_jwk.jwk = Some(
        serde_json::from_str(&other.jwks())
            .map(|s: jsonwebtoken::jwk::JwkSet| s.keys[0].clone())
            .unwrap(),
    );
    let own_key = other.sign(&claims);
    let own_key = {
        let (_, rest) = own_key.split_once('.').unwrap();
        let header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&with_jwk).unwrap(),
        );
        format!("{header}.{rest}")
    };

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "no bearer token"),
        ("expired", Some(i.sign(&expired)), "expired"),
        ("wrong audience", Some(i.sign(&wrong_aud)), "audience"),
        ("wrong issuer", Some(i.sign(&wrong_iss)), "issuer"),
        ("not yet valid", Some(i.sign(&future)), "not valid yet"),
        ("bad signature", Some(bad_signature), "signature"),
        ("alg none", Some(alg_none), "algorithm"),
        ("hs256 with public key", Some(hs256), "algorithm"),
        ("own jwk in header", Some(own_key), "signature"),
        ("garbage", Some("not.a.jwt".into()), "well-formed"),
    ];
    for (name, token, expect) in cases {
        let r = gw.request(Method::GET, PODS, token.as_deref(), &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            r.headers["www-authenticate"], r#"Bearer realm="kubegate", error="invalid_token""#,
            "{name}"
        );
        let status = r.json();
        assert_eq!(status["kind"], "Status", "{name}");
        assert_eq!(status["reason"], "Unauthorized", "{name}");
        let message = status["message"].as_str().unwrap();
        assert!(message.contains(expect), "{name}: {message}");
        if let Some(t) = &token {
            assert!(!message.contains(t.as_str()), "{name}: token echoed");
        }
    }
    assert_eq!(
        gw.sandbox.request_count(),
        0,
        "nothing may reach the upstream"
    );
}

#[tokio::test]
async fn es256_tokens_verify_too() {
    let gw = TestGateway::start_with(GatewayOptions {
        es256: true,
        ..GatewayOptions::default()
    })
    .await;
    let alice = gw.issuer.token("alice", &["devs"]);
    assert!(alice.starts_with("eyJ"));
    let r = gw.get(PODS, &alice).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // An RS256 token from another key is refused by the same gateway.
    let rs = kubegate_tests::TestIssuer::rs256().token("alice", &["devs"]);
    assert_eq!(gw.get(PODS, &rs).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn policy_allows_and_denies_end_to_end() {
    let gw = TestGateway::start().await;
    let alice = gw.issuer.token("alice", &["devs"]);
    let bob = gw.issuer.token("bob", &["guests"]);

    assert_eq!(gw.get(PODS, &alice).await.status, StatusCode::OK);
    assert_eq!(gw.get("/version", &bob).await.status, StatusCode::OK);
    gw.sandbox.clear_requests();

    let r = gw.get(PODS, &bob).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let status = r.json();
    assert_eq!(status["reason"], "Forbidden");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(r#"User "bob" cannot list resource "pods""#),
        "{message}"
    );
    assert!(message.contains("no rule allowed"), "{message}");

    let r = gw.get("/api/v1/namespaces/dev/secrets/db", &alice).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("no-secrets"),
        "names the deny rule: {message}"
    );
    assert_eq!(
        gw.sandbox.request_count(),
        0,
        "denied requests never reach the upstream"
    );
}

#[tokio::test]
async fn non_canonical_paths_are_400_before_policy_or_upstream() {
    let gw = TestGateway::start().await;
    let alice = gw.issuer.token("alice", &["devs"]);
    for path in [
        "/api/v1/namespaces/dev/pods/../secrets",
        "/api/v1/namespaces/dev/pods/./x",
        "/api/v1/namespaces/dev%2Fsecrets",
        "/api/v1//namespaces/dev/pods",
        "/api/v1/namespaces/dev/pods/%2e%2e",
        "/api/v1/namespaces/dev/pods/",
    ] {
        let r = gw.get(path, &alice).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.json()["reason"], "BadRequest", "{path}");
    }
    // Even without a token: the path is judged first, so no 401 oracle on odd paths.
    let r = gw.request(Method::GET, "/api/../secrets", None, &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(gw.sandbox.request_count(), 0);
}

#[tokio::test]
async fn upstream_down_is_502_status() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = TestGateway::start_with(GatewayOptions {
        upstream_override: Some(format!("https://127.0.0.1:{port}")),
        ..GatewayOptions::default()
    })
    .await;
    let alice = gw.issuer.token("alice", &["devs"]);
    let r = gw.get(PODS, &alice).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let status = r.json();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 502);
    assert!(
        !status["message"]
            .as_str()
            .unwrap()
            .contains(&port.to_string())
    );
}

#[tokio::test]
async fn upstream_slow_is_504_status() {
    let gw = TestGateway::start_with(GatewayOptions {
        upstream_timeout: Duration::from_millis(300),
        ..GatewayOptions::default()
    })
    .await;
    gw.sandbox.set_response_delay(Duration::from_secs(3));
    let alice = gw.issuer.token("alice", &["devs"]);
    let r = gw.get(PODS, &alice).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["reason"], "Timeout");
}

#[tokio::test]
async fn http2_clients_are_served() {
    let gw = TestGateway::start().await;
    let alice = gw.issuer.token("alice", &["devs"]);
    let client = https_client(&gw.pki.ca_pem, false);
    let request = http::Request::get(format!("{}{PODS}", gw.url()))
        .version(http::Version::HTTP_2)
        .header("authorization", format!("Bearer {alice}"))
        .body(Default::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn mapped_uid_and_extra_are_forwarded_percent_encoded() {
    let oidc = format!(
        "[[auth.oidc]]\nissuer = \"{}\"\naudiences = [\"{}\"]\njwks_file = \"jwks.json\"\ngroups_claim = \"groups\"\nuid_claim = \"sid\"\nextra = {{ \"example.com/team\" = \"team\" }}\nusername_prefix = \"oidc:\"\n",
        kubegate_tests::ISSUER,
        kubegate_tests::AUDIENCE
    );
    let gw = TestGateway::start_with(GatewayOptions {
        oidc_toml: Some(oidc),
        policy: kubegate_tests::TEST_POLICY.replace(
            "subjects = { groups = [\"devs\"] }",
            "subjects = { users = [\"oidc:alice\"] }",
        ),
        ..GatewayOptions::default()
    })
    .await;
    let mut claims = gw.issuer.claims("alice", &["devs"]);
    claims["sid"] = json!("session-1");
    claims["team"] = json!(["blue", "green"]);
    let r = gw.get(PODS, &gw.issuer.sign(&claims)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let req = &gw.sandbox.requests()[0];
    assert_eq!(req.impersonate_user(), Some("oidc:alice"));
    assert_eq!(req.header_values("impersonate-uid"), vec!["session-1"]);
    assert_eq!(
        req.header_values("impersonate-extra-example.com%2fteam"),
        vec!["blue", "green"]
    );
}

#[tokio::test]
async fn connections_can_be_served_on_the_callers_runtime() {
    // Connection threads are the default; an embedding test that pauses its clock serves
    // connections on its own runtime instead, through the same pipeline.
    let gw = TestGateway::start_with(GatewayOptions {
        on_test_runtime: true,
        ..GatewayOptions::default()
    })
    .await;
    let alice = gw.issuer.token("alice", &["devs"]);
    assert_eq!(gw.get(PODS, &alice).await.status, StatusCode::OK);
    let bob = gw.issuer.token("bob", &["guests"]);
    assert_eq!(gw.get(PODS, &bob).await.status, StatusCode::FORBIDDEN);
    gw.running.shutdown().await.unwrap();
}
