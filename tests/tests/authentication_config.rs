//! A Kubernetes `AuthenticationConfiguration` file (`[auth] authentication_config`) with
//! CEL claim rules, end to end against the real OpenID provider (tests/oidc): the mapped
//! identity reaches the API server as exactly these `Impersonate-*` headers, a token its
//! validation rule refuses gets a 401 with nothing forwarded, and the file is reloaded
//! while the gateway runs (a bad file keeps the running rules).

use http::StatusCode;
use kubegate_tests::oidc_provider::{Provider, start_provider};
use kubegate_tests::{GatewayOptions, TestGateway, eventually};

const PODS: &str = "/api/v1/namespaces/dev/pods";

/// Username from two claims, groups filtered by prefix (which also drops the token's
/// `system:masters`), an extra key from a nested claim, a rule refusing one tier.
fn authentication_config(issuer: &str) -> String {
    format!(
        r#"apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: {issuer}
    audiences: [kubegate]
  claimValidationRules:
  - expression: 'claims.tier != "blocked"'
    message: the blocked tier may not use the cluster
  claimMappings:
    username:
      expression: 'claims.sub + "@" + claims.tenant'
    groups:
      expression: 'claims.groups.filter(g, g.startsWith("devs"))'
    extra:
    - key: example.com/unit
      valueExpression: 'claims.org.unit'
  userValidationRules:
  - expression: '!user.username.startsWith("system:")'
    message: system users are the cluster's
"#
    )
}

async fn gateway(provider: &Provider) -> TestGateway {
    TestGateway::start_with(GatewayOptions {
        oidc_toml: Some(
            "[auth]\nauthentication_config = \"auth.yaml\"\nauthentication_config_insecure_http = true\n"
                .into(),
        ),
        files: vec![("auth.yaml".into(), authentication_config(&provider.issuer))],
        ..GatewayOptions::default()
    })
    .await
}

/// The `Impersonate-*` headers of the last request the sandbox saw, sorted.
fn impersonation(gw: &TestGateway) -> Vec<(String, String)> {
    let seen = gw.sandbox.requests();
    let last = seen.last().expect("a forwarded request");
    let mut headers: Vec<(String, String)> = last
        .headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("impersonate-"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    headers.sort();
    headers
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn cel_mappings_become_exactly_these_impersonation_headers() {
    let provider = start_provider();
    let gw = gateway(&provider).await;
    let (ready, body) = gw.admin_get("/readyz").await;
    assert_eq!(ready, StatusCode::OK, "keys found by discovery: {body}");

    let token = provider.access_token("kubegate-cel").await;
    let r = gw.get(PODS, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        impersonation(&gw),
        pairs(&[
            ("impersonate-extra-example.com%2funit", "payments"),
            ("impersonate-group", "devs"),
            ("impersonate-group", "devs-oncall"),
            ("impersonate-user", "kubegate-cel@acme"),
        ])
    );

    let forwarded = gw.sandbox.requests().len();
    let blocked = provider.access_token("kubegate-cel-blocked").await;
    let r = gw.get(PODS, &blocked).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    assert!(
        String::from_utf8_lossy(&r.body).contains("Unauthorized"),
        "a Kubernetes Status: {:?}",
        r.body
    );
    assert_eq!(gw.sandbox.requests().len(), forwarded, "nothing upstream");
}

#[tokio::test]
async fn the_authentication_config_is_reloaded_and_a_bad_file_keeps_the_running_rules() {
    let provider = start_provider();
    let gw = gateway(&provider).await;
    let authn = &gw.running.gateway().authn;
    let token = provider.access_token("kubegate-cel").await;
    assert_eq!(gw.get(PODS, &token).await.status, StatusCode::OK);
    assert_eq!(
        gw.sandbox.requests().last().unwrap().impersonate_user(),
        Some("kubegate-cel@acme")
    );

    // A new username mapping applies to the same (cached) token without a restart.
    let file = gw.dir.path().join("auth.yaml");
    let changed = authentication_config(&provider.issuer).replace(
        r#"claims.sub + "@" + claims.tenant"#,
        r#"claims.tenant + ":" + claims.sub"#,
    );
    std::fs::write(&file, &changed).unwrap();
    eventually("the new rules take effect", async || {
        gw.get(PODS, &token).await.status == StatusCode::OK
            && gw.sandbox.requests().last().unwrap().impersonate_user() == Some("acme:kubegate-cel")
    })
    .await;
    assert_eq!(authn.rules_reloads(), 1);

    // An expression that does not compile: refused, counted, the running rules stay.
    std::fs::write(
        &file,
        changed.replace("'claims.org.unit'", "'claims.org.unit +'"),
    )
    .unwrap();
    eventually("the bad file was seen and refused", async || {
        authn.rules_reload_failures() >= 1
    })
    .await;
    assert_eq!(gw.get(PODS, &token).await.status, StatusCode::OK);
    assert_eq!(
        gw.sandbox.requests().last().unwrap().impersonate_user(),
        Some("acme:kubegate-cel")
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("kubegate_authentication_config_reloads_total{result=\"error\"}"),
        "{metrics}"
    );

    // A file naming another issuer instead, whose keys cannot be loaded: the whole file
    // is refused and this issuer keeps its rules.
    std::fs::write(
        &file,
        changed.replace(&provider.issuer, "http://127.0.0.1:9"),
    )
    .unwrap();
    eventually("the file with a new issuer was refused", async || {
        authn.rules_reload_failures() >= 2
    })
    .await;
    assert_eq!(gw.get(PODS, &token).await.status, StatusCode::OK);
    assert_eq!(authn.rules_reloads(), 1);
}
