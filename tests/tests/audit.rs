//! The audit trail end to end: one record per request whatever its fate, the same ID for
//! the client, the record and the upstream, start and end records for streams, and
//! rate limits answered with 429.

use std::collections::HashSet;

use http::{Method, StatusCode};
use kubegate_tests::{GatewayOptions, TestGateway, collect, https_client};

const PODS: &str = "/api/v1/namespaces/dev/pods";

#[tokio::test]
async fn every_request_gets_exactly_one_record_and_ids_join_up() {
    let gw = TestGateway::start_with(GatewayOptions {
        limits_toml: Some("requests_per_second = 10000\nburst = 10000".into()),
        ..GatewayOptions::default()
    })
    .await;
    let alice = gw.issuer.token("alice", &["devs"]);
    let bob = gw.issuer.token("bob", &["guests"]);
    let mut expected = Vec::new();
    let mut tasks = Vec::new();
    let client = https_client(&gw.pki.ca_pem, false);
    for i in 0..400 {
        let (path, token) = match i % 4 {
            0 => (PODS, Some(alice.clone())),
            1 => (PODS, Some(bob.clone())),
            2 => (PODS, None),
            _ => (
                "/api/v1/namespaces/dev/pods/../secrets",
                Some(alice.clone()),
            ),
        };
        let mut request = http::Request::get(format!("{}{path}", gw.url()));
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let request = request.body(Default::default()).unwrap();
        let client = client.clone();
        tasks.push(tokio::spawn(async move { collect(&client, request).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        let id = r.headers["audit-id"].to_str().unwrap().to_string();
        expected.push((id, r.status.as_u16()));
    }
    let gw_dir = gw.dir.path().to_path_buf();
    let upstream_ids: HashSet<String> = gw
        .sandbox
        .requests()
        .iter()
        .filter_map(|r| r.header_values("audit-id").first().map(|s| s.to_string()))
        .collect();
    // Shutting down flushes and closes the trail.
    let TestGateway { running, dir, .. } = gw;
    running.shutdown().await.unwrap();
    let _keep = dir;
    let records = kubegate_tests::audit_records_in(&gw_dir);
    // Refusals answered before any policy decision (the 400s, and the 401s or 429s of the
    // requests without a token, all from one address) are written in full once a window and otherwise counted in a summary.
    let (summaries, own): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|r| r["annotations"]["kubegate.io/summary"] == "true");
    let summarised: usize = summaries
        .iter()
        .map(|s| {
            let count = s["annotations"]["kubegate.io/summary-count"].as_str();
            count.unwrap().parse::<usize>().unwrap()
        })
        .sum();
    assert_eq!(
        own.len() + summarised,
        400,
        "requests made == records written + requests summarised"
    );
    let by_id: std::collections::HashMap<String, &serde_json::Value> = own
        .iter()
        .map(|r| (r["auditID"].as_str().unwrap().to_string(), *r))
        .collect();
    assert_eq!(by_id.len(), own.len(), "audit IDs are unique");
    for (id, code) in &expected {
        let Some(record) = by_id.get(id) else {
            assert!(
                matches!(code, 400 | 401 | 429),
                "only refusals before a decision lack a record of their own: {code}"
            );
            continue;
        };
        assert_eq!(record["responseStatus"]["code"], *code);
        assert_eq!(record["stage"], "ResponseComplete");
        if *code == 200 {
            assert!(
                upstream_ids.contains(id),
                "the upstream saw the same Audit-ID"
            );
        }
    }
    for s in &summaries {
        let first = s["annotations"]["kubegate.io/summary-of"].as_str().unwrap();
        assert!(by_id.contains_key(first), "a summary names a full record");
    }
    assert_eq!(
        upstream_ids.len(),
        100,
        "only allowed requests reached the upstream"
    );
}

#[tokio::test]
async fn a_record_has_the_api_servers_fields() {
    let gw = TestGateway::start().await;
    let alice = gw.issuer.token("alice", &["devs"]);
    let r = gw
        .request(
            Method::GET,
            &format!("{PODS}?limit=5"),
            Some(&alice),
            &[
                ("user-agent", "kubectl/v1.32.0"),
                ("audit-id", "forged-by-client"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r.headers["audit-id"].to_str().unwrap().to_string();
    assert_ne!(id, "forged-by-client");
    assert_eq!(
        gw.sandbox.requests()[0].header_values("audit-id"),
        vec![id.as_str()]
    );
    let TestGateway { running, dir, .. } = gw;
    running.shutdown().await.unwrap();
    let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let record: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(record["kind"], "Event");
    assert_eq!(record["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(record["auditID"], id.as_str());
    assert_eq!(record["requestURI"], format!("{PODS}?limit=5"));
    assert_eq!(record["verb"], "list");
    assert_eq!(record["user"]["username"], "alice");
    assert_eq!(record["user"]["groups"], serde_json::json!(["devs"]));
    assert_eq!(record["impersonatedUser"]["username"], "alice");
    assert_eq!(record["sourceIPs"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(record["userAgent"], "kubectl/v1.32.0");
    assert_eq!(record["objectRef"]["resource"], "pods");
    assert_eq!(record["objectRef"]["namespace"], "dev");
    assert_eq!(record["objectRef"]["apiVersion"], "v1");
    assert_eq!(record["responseStatus"]["code"], 200);
    assert_eq!(record["annotations"]["kubegate.io/decision"], "allow");
    assert_eq!(record["annotations"]["kubegate.io/rule"], "devs-pods");
    assert!(
        record["annotations"]["kubegate.io/latency"]
            .as_str()
            .unwrap()
            .ends_with("ms")
    );
    assert!(
        record["requestReceivedTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(record["stageTimestamp"].is_string());
    // Nothing secret in the trail.
    assert!(!text.contains(&alice));
}

#[tokio::test]
async fn a_watch_gets_a_started_and_a_complete_record() {
    let gw = TestGateway::start().await;
    let alice = gw.issuer.token("alice", &["devs"]);
    // The sandbox ends the watch after timeoutSeconds.
    let r = gw
        .get(&format!("{PODS}?watch=true&timeoutSeconds=1"), &alice)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r.headers["audit-id"].to_str().unwrap().to_string();
    let TestGateway { running, dir, .. } = gw;
    running.shutdown().await.unwrap();
    assert_eq!(
        kubegate_tests::audit_stages_in(dir.path(), &id),
        ["ResponseStarted", "ResponseComplete"]
    );
}

#[tokio::test]
async fn over_quota_is_429_with_retry_after_and_audited() {
    let gw = TestGateway::start_with(GatewayOptions {
        limits_toml: Some("requests_per_second = 1\nburst = 2".into()),
        ..GatewayOptions::default()
    })
    .await;
    let alice = gw.issuer.token("alice", &["devs"]);
    let bob = gw.issuer.token("bob", &["devs"]);
    assert_eq!(gw.get(PODS, &alice).await.status, StatusCode::OK);
    assert_eq!(gw.get(PODS, &alice).await.status, StatusCode::OK);
    let r = gw.get(PODS, &alice).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["reason"], "TooManyRequests");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Alice's flood does not touch Bob.
    assert_eq!(gw.get(PODS, &bob).await.status, StatusCode::OK);
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"kubegate_rate_limited_total{limit="user"}"#),
        "{metrics}"
    );
    let TestGateway { running, dir, .. } = gw;
    running.shutdown().await.unwrap();
    let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(text.contains(r#""code":429"#));
}

#[tokio::test]
async fn token_guessing_is_bounded_per_address_before_any_crypto() {
    let gw = TestGateway::start_with(GatewayOptions {
        limits_toml: Some("unauthenticated_per_second = 1\nunauthenticated_burst = 3".into()),
        ..GatewayOptions::default()
    })
    .await;
    let alice = gw.issuer.token("alice", &["devs"]);
    // Verified once (one unit of the address's budget), then served from the cache.
    assert_eq!(gw.get(PODS, &alice).await.status, StatusCode::OK);
    let mut codes = Vec::new();
    for i in 0..4 {
        codes.push(gw.get(PODS, &format!("guess.{i}.x")).await.status.as_u16());
    }
    assert_eq!(codes, vec![401, 401, 429, 429]);
    // A token the gateway already verified costs nothing and still works.
    assert_eq!(gw.get(PODS, &alice).await.status, StatusCode::OK);
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(metrics.contains(r#"kubegate_rate_limited_total{limit="address"}"#));
}
