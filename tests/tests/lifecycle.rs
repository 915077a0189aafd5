//! Lifecycle: TLS certificate reload without restart, and graceful shutdown.

use std::time::Duration;

use http::StatusCode;
use kubegate_tests::{TestGateway, TestPki, collect, https_client};

const PODS: &str = "/api/v1/namespaces/dev/pods";

async fn get_with(ca_pem: &str, gw: &TestGateway, token: &str) -> Result<StatusCode, String> {
    let client = https_client(ca_pem, true);
    let request = http::Request::get(format!("{}{PODS}", gw.url()))
        .header("authorization", format!("Bearer {token}"))
        .body(Default::default())
        .unwrap();
    client
        .request(request)
        .await
        .map(|r| r.status())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn a_new_certificate_is_served_to_new_handshakes_and_a_bad_one_is_refused() {
    let gw = TestGateway::start().await;
    let token = gw.issuer.token("alice", &["devs"]);
    // A connection opened before the rotation, kept alive in this client's pool.
    let old_client = https_client(&gw.pki.ca_pem, true);
    let request = || {
        http::Request::get(format!("{}{PODS}", gw.url()))
            .header("authorization", format!("Bearer {token}"))
            .body(Default::default())
            .unwrap()
    };
    assert_eq!(collect(&old_client, request()).await.status, StatusCode::OK);

    let next = TestPki::generate();
    std::fs::write(gw.dir.path().join("tls.key"), &next.key_pem).unwrap();
    std::fs::write(gw.dir.path().join("tls.crt"), &next.cert_pem).unwrap();
    let mut served = false;
    for _ in 0..200 {
        if get_with(&next.ca_pem, &gw, &token).await == Ok(StatusCode::OK) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "new handshakes get the new certificate");
    let err = get_with(&gw.pki.ca_pem, &gw, &token).await.unwrap_err();
    assert!(
        err.contains("InvalidCertificate"),
        "old CA no longer verifies: {err}"
    );
    // The connection opened before the rotation carries on.
    assert_eq!(collect(&old_client, request()).await.status, StatusCode::OK);

    // A broken pair is refused; the gateway keeps serving the last good one.
    std::fs::write(gw.dir.path().join("tls.crt"), "not a certificate").unwrap();
    let mut refused = false;
    for _ in 0..200 {
        let (_, metrics) = gw.admin_get("/metrics").await;
        if metrics.contains(r#"kubegate_certificate_reloads_total{result="error"}"#) {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the bad pair was seen and refused");
    assert_eq!(
        get_with(&next.ca_pem, &gw, &token).await,
        Ok(StatusCode::OK)
    );
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let gw = TestGateway::start().await;
    let token = gw.issuer.token("alice", &["devs"]);
    gw.sandbox.set_response_delay(Duration::from_millis(800));
    let url = gw.url();
    let ca = gw.pki.ca_pem.clone();
    let in_flight = tokio::spawn(async move {
        let client = https_client(&ca, true);
        let request = http::Request::get(format!("{url}{PODS}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Default::default())
            .unwrap();
        collect(&client, request).await.status
    });
    // Wait until the request is at the upstream, then shut down.
    for _ in 0..100 {
        if gw.sandbox.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.sandbox.request_count(), 1);
    let TestGateway { running, dir, .. } = gw;
    let addr = running.addr();
    running.shutdown().await.unwrap();
    assert_eq!(
        in_flight.await.unwrap(),
        StatusCode::OK,
        "the request completed"
    );
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert_eq!(
        audit.lines().count(),
        1,
        "and its audit record was written: {audit}"
    );
    assert!(audit.contains(r#""code":200"#));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let gw = TestGateway::start_with(kubegate_tests::GatewayOptions {
        limits_toml: Some("max_connections = 1".into()),
        ..Default::default()
    })
    .await;
    let connector = kubegate_tests::tls_connector(&gw.pki.ca_pem, &[b"h2", b"http/1.1"]);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let addr = gw.running.addr();
    let first = connector
        .connect(
            name.clone(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        )
        .await
        .expect("the first connection is served");
    let second = tokio::spawn({
        let connector = connector.clone();
        let name = name.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            connector.connect(name, tcp).await.map(|_| ())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second handshake waits while the cap is reached"
    );
    drop(first);
    // An upper bound, not a wait: generous because the machine may be busy building.
    let done = tokio::time::timeout(Duration::from_secs(20), second).await;
    assert!(
        matches!(done, Ok(Ok(Ok(())))),
        "served once a slot is free: {done:?}"
    );
}

#[tokio::test]
async fn shutdown_ends_open_watches_cleanly_and_audits_them() {
    use http_body_util::BodyExt;
    let gw = TestGateway::start().await;
    let token = gw.issuer.token("alice", &["devs"]);
    let client = https_client(&gw.pki.ca_pem, true);
    let request = http::Request::get(format!("{}{PODS}?watch=true", gw.url()))
        .header("authorization", format!("Bearer {token}"))
        .body(Default::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers()["audit-id"].to_str().unwrap().to_string();
    let mut body = response.into_body();

    let TestGateway { running, dir, .. } = gw;
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(running.shutdown());
    // The stream ends (no error: a watch client re-watches elsewhere) long before the
    // 30 s grace period.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                None => return Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
            }
        }
    })
    .await
    .expect("the watch ended at shutdown");
    assert!(ended.is_ok(), "ended cleanly: {ended:?}");
    shutdown.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        kubegate_tests::audit_stages_in(dir.path(), &id),
        ["ResponseStarted", "ResponseComplete"]
    );
}
