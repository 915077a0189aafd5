//! Reloading an `AuthenticationConfiguration` file changes the gateway's issuers, against
//! two real OpenID providers (tests/oidc): an issuer added to the file is trusted within a
//! reload, with its own claim mappings; a removed one is refused at once, its cached
//! verdicts included; a changed `discoveryURL` gets its keys from the new place; and a
//! file whose new issuer's keys cannot be loaded is refused whole, the running issuers
//! staying as they were and the failure counted.

use http::StatusCode;
use kubegate_tests::oidc_provider::{Provider, start_provider};
use kubegate_tests::{GatewayOptions, TestGateway, eventually};

const PODS: &str = "/api/v1/namespaces/dev/pods";
/// The provider's client whose tokens carry `groups` with `devs` (the test policy's).
const CLIENT: &str = "kubegate-cel";

/// One `jwt` entry: the issuer `url`, usernames `<tag>:<sub>`, the `devs*` groups, keys by
/// `discovery` if given (else the issuer's own discovery document).
fn issuer_entry(url: &str, tag: &str, discovery: Option<&str>) -> String {
    let discovery = discovery.map_or(String::new(), |d| format!("    discoveryURL: {d}\n"));
    format!(
        r#"- issuer:
    url: {url}
{discovery}    audiences: [kubegate]
  claimMappings:
    username:
      expression: '"{tag}:" + claims.sub'
    groups:
      expression: 'claims.groups.filter(g, g.startsWith("devs"))'
"#
    )
}

fn file(entries: &[String]) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n{}",
        entries.concat()
    )
}

/// The user the sandbox saw for `token`'s request, or the refusal's status.
async fn forwarded_user(gw: &TestGateway, token: &str) -> Result<String, StatusCode> {
    let r = gw.get(PODS, token).await;
    if r.status != StatusCode::OK {
        return Err(r.status);
    }
    let seen = gw.sandbox.requests();
    let user = seen.last().and_then(|r| r.impersonate_user());
    Ok(user.unwrap_or_default().to_string())
}

/// `kubegate_authentication_config_reloads_total{result="error"}` as `/metrics` shows it.
async fn reload_errors(gw: &TestGateway) -> f64 {
    let (_, metrics) = gw.admin_get("/metrics").await;
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("kubegate_authentication_config_reloads_total{result=\"error\"} ")
        })
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// A loopback port nothing listens on: bound, then closed.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn port_of(provider: &Provider) -> &str {
    provider.issuer.rsplit(':').next().unwrap()
}

#[tokio::test]
async fn issuers_are_added_removed_and_re_sourced_and_a_file_whose_keys_fail_changes_nothing() {
    let (a, b) = (start_provider(), start_provider());
    let gw = TestGateway::start_with(GatewayOptions {
        oidc_toml: Some(
            "[auth]\nauthentication_config = \"auth.yaml\"\nauthentication_config_insecure_http = true\n"
                .into(),
        ),
        files: vec![(
            "auth.yaml".into(),
            file(&[issuer_entry(&a.issuer, "a", None)]),
        )],
        ..GatewayOptions::default()
    })
    .await;
    let authn = &gw.running.gateway().authn;
    let path = gw.dir.path().join("auth.yaml");
    let (token_a, token_b) = (a.access_token(CLIENT).await, b.access_token(CLIENT).await);

    // Issuer A only: B's token is from an untrusted issuer, and nothing goes upstream.
    assert_eq!(
        forwarded_user(&gw, &token_a).await,
        Ok(format!("a:{CLIENT}"))
    );
    let forwarded = gw.sandbox.requests().len();
    assert_eq!(
        forwarded_user(&gw, &token_b).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(gw.sandbox.requests().len(), forwarded);

    // B added: its keys are loaded by discovery, and its own mapping applies.
    let a_and_b = [
        issuer_entry(&a.issuer, "a", None),
        issuer_entry(&b.issuer, "b", None),
    ];
    std::fs::write(&path, file(&a_and_b)).unwrap();
    eventually("issuer B is trusted", async || {
        forwarded_user(&gw, &token_b).await == Ok(format!("b:{CLIENT}"))
    })
    .await;
    assert_eq!(authn.rules_reloads(), 1);
    // A's token again: verified under A's reloaded rules, and cached.
    assert_eq!(
        forwarded_user(&gw, &token_a).await,
        Ok(format!("a:{CLIENT}"))
    );

    // A removed: its cached token is refused as soon as the reload lands.
    std::fs::write(&path, file(&[issuer_entry(&b.issuer, "b", None)])).unwrap();
    eventually("issuer A is refused", async || {
        forwarded_user(&gw, &token_a).await == Err(StatusCode::UNAUTHORIZED)
    })
    .await;
    assert_eq!(authn.rules_reloads(), 2);
    assert_eq!(
        forwarded_user(&gw, &token_b).await,
        Ok(format!("b:{CLIENT}"))
    );
    let (ready, body) = gw.admin_get("/readyz").await;
    assert!(
        !body.contains(&a.issuer),
        "A is gone from readiness: {body}"
    );
    assert_eq!(ready, StatusCode::OK, "{body}");

    // B's discoveryURL changed (the same provider under another name): a new verifier,
    // whose keys come from there.
    let moved = format!(
        "http://localhost:{}/.well-known/openid-configuration",
        port_of(&b)
    );
    std::fs::write(&path, file(&[issuer_entry(&b.issuer, "b", Some(&moved))])).unwrap();
    eventually("the new discoveryURL is applied", async || {
        authn.rules_reloads() == 3
    })
    .await;
    assert_eq!(
        forwarded_user(&gw, &token_b).await,
        Ok(format!("b:{CLIENT}"))
    );

    // A new issuer C whose discoveryURL points nowhere, beside a new mapping for B: the
    // whole file is refused, B keeps its mapping, A stays removed.
    let errors = reload_errors(&gw).await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let with_c = [
        issuer_entry(&b.issuer, "changed", Some(&moved)),
        issuer_entry(
            &format!("{dead}/c"),
            "c",
            Some(&format!("{dead}/.well-known/openid-configuration")),
        ),
    ];
    std::fs::write(&path, file(&with_c)).unwrap();
    eventually(
        "the file with an unreachable issuer is refused",
        async || authn.rules_reload_failures() >= 1,
    )
    .await;
    assert_eq!(authn.rules_reloads(), 3);
    assert!(reload_errors(&gw).await > errors, "the failure is counted");
    assert_eq!(
        forwarded_user(&gw, &token_b).await,
        Ok(format!("b:{CLIENT}"))
    );
    assert_eq!(
        forwarded_user(&gw, &token_a).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    let (ready, body) = gw.admin_get("/readyz").await;
    assert_eq!(ready, StatusCode::OK, "C was never added: {body}");
}
