//! The admin listener: liveness, readiness that follows the upstream and the issuers, and
//! Prometheus metrics with bounded labels.

use std::time::Duration;

use http::StatusCode;
use kubegate_tests::{GatewayOptions, TestGateway};

#[tokio::test]
async fn liveness_and_readiness() {
    let gw = TestGateway::start().await;
    assert_eq!(gw.admin_get("/livez").await, (StatusCode::OK, "ok".into()));
    assert_eq!(gw.admin_get("/healthz").await.0, StatusCode::OK);
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("[+]upstream ok"), "{body}");
    // The sandbox authorizes everything, and its reviews say so: the self-check passes
    // and warns of the rights no rule needs.
    assert!(
        body.contains("[+]impersonation-rights ok (warning: holds rights no rule needs: "),
        "{body}"
    );
    assert!(
        body.contains("[+]issuer keys https://issuer.kubegate.test ok"),
        "{body}"
    );
    // The readiness probe went upstream with the gateway's own credential.
    let probe = gw
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == "/readyz")
        .expect("upstream probed");
    assert!(probe.authorized);
}

#[tokio::test]
async fn readiness_fails_while_the_upstream_is_down_but_liveness_does_not() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = TestGateway::start_with(GatewayOptions {
        upstream_override: Some(format!("https://127.0.0.1:{port}")),
        upstream_timeout: Duration::from_secs(1),
        ..GatewayOptions::default()
    })
    .await;
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("[-]upstream failed"), "{body}");
    assert_eq!(gw.admin_get("/livez").await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_requests_without_unbounded_labels() {
    let gw = TestGateway::start().await;
    let alice = gw.issuer.token("alice", &["devs"]);
    let bob = gw.issuer.token("bob", &["guests"]);
    assert_eq!(
        gw.get("/api/v1/namespaces/dev/pods", &alice).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.get("/api/v1/namespaces/dev/pods", &bob).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        gw.get("/api/v1/namespaces/dev/pods", "garbage")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    let (status, text) = gw.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        r#"kubegate_requests_total{code="200",verb="list",decision="allow"}"#,
        r#"kubegate_requests_total{code="403",verb="list",decision="deny"}"#,
        r#"kubegate_requests_total{code="401",verb="list",decision="none"}"#,
        r#"kubegate_authentication_failures_total{reason="malformed"}"#,
        "kubegate_request_duration_seconds_bucket",
        "kubegate_gateway_duration_seconds_bucket",
        "kubegate_requests_in_flight",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    for secret in [
        alice.as_str(),
        bob.as_str(),
        "/api/v1/namespaces",
        "alice",
        "bob",
    ] {
        assert!(!text.contains(secret), "metrics leak {secret:?}");
    }
}
