//! What a hostile or careless client can send at the edges of a request: numbers that
//! overflow, upgrade headers on ordinary requests, watch churn, broken bodies. Each is
//! refused with a specific `Status`, audited, and (where it must not) never forwarded.

use std::time::Duration;

use http::{Method, StatusCode};
use kubegate_tests::{
    GatewayOptions, TestGateway, collect, connect_http1, eventually, https_client, read_response,
};
use tokio::io::AsyncWriteExt as _;

const PODS: &str = "/api/v1/namespaces/dev/pods";

fn alice(gw: &TestGateway) -> String {
    gw.issuer.token("alice", &["devs"])
}

async fn gateway(limits: Option<&str>) -> TestGateway {
    TestGateway::start_with(GatewayOptions {
        limits_toml: limits.map(str::to_string),
        ..GatewayOptions::default()
    })
    .await
}

/// The audit record with this audit ID, once it has been written.
async fn record_of(gw: &TestGateway, audit_id: &str) -> serde_json::Value {
    let mut found = None;
    eventually("the audit record", async || {
        found = gw
            .audit_records()
            .into_iter()
            .find(|r| r["auditID"] == audit_id);
        found.is_some()
    })
    .await;
    found.expect("record")
}

#[tokio::test]
async fn overflowing_timeouts_are_refused_before_forwarding_and_audited() {
    let gw = gateway(None).await;
    let token = alice(&gw);
    let paths = [
        format!("{PODS}?watch=1&timeoutSeconds=18446744073709551615"),
        format!("{PODS}?watch=1&timeoutSeconds=9223372036854775807"),
        format!("{PODS}?watch=true&timeoutSeconds=-5"),
        format!("{PODS}/chatty/log?follow=true&timeoutSeconds=18446744073709551615"),
        format!("{PODS}?timeoutSeconds=1e9"),
    ];
    let mut ids: Vec<String> = Vec::new();
    for path in &paths {
        let r = gw.get(path, &token).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {:?}", r.body);
        let status = r.json();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "BadRequest");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("timeoutSeconds must be a whole number"),
            "{status}"
        );
        ids.push(r.headers["audit-id"].to_str().unwrap().to_string());
    }
    assert_eq!(
        gw.sandbox.request_count(),
        0,
        "nothing reached the upstream"
    );
    // Refusals that reached no one are audited, and summarised per client and second:
    // the first in full, the rest counted in a summary that names it.
    assert_eq!(record_of(&gw, &ids[0]).await["responseStatus"]["code"], 400);
    eventually("every refusal audited", async || {
        let records = gw.audit_records();
        let own = ids
            .iter()
            .filter(|id| records.iter().any(|r| r["auditID"] == **id))
            .count();
        let counted = records
            .iter()
            .filter(|r| r["annotations"]["kubegate.io/summary-of"] == ids[0])
            .filter_map(|r| r["annotations"]["kubegate.io/summary-count"].as_str())
            .map(|n| n.parse::<usize>().unwrap())
            .sum::<usize>();
        own + counted == ids.len()
    })
    .await;

    // The largest value the API server can represent still opens a watch, which the
    // gateway bounds by its idle timeout instead of an unrepresentable deadline.
    let max = kubegate_policy::MAX_TIMEOUT_SECONDS;
    let client = https_client(&gw.pki.ca_pem, false);
    let request = http::Request::get(format!("{}{PODS}?watch=1&timeoutSeconds={max}", gw.url()))
        .header("authorization", format!("Bearer {token}"))
        .body(Default::default())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("the watch starts")
        .expect("the gateway answers");
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
}

#[tokio::test]
async fn upgrade_headers_do_not_turn_ordinary_requests_into_streams() {
    // A quota of 5 at once: plain requests meet 429 after it. Requests that claim to
    // upgrade must not get around it, whatever their method.
    let gw = gateway(Some("requests_per_second = 1\nburst = 5")).await;
    let token = alice(&gw);
    for (method, path) in [
        ("GET", PODS.to_string()),
        ("GET", format!("{PODS}/web")),
        ("DELETE", format!("{PODS}/web")),
    ] {
        let mut conn = connect_http1(&gw).await;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: kubegate\r\nAuthorization: Bearer {token}\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let response = read_response(&mut conn).await;
        assert_eq!(response.status, 400, "{method} {path}");
        let status: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("accepted only for exec"),
            "{status}"
        );
    }
    assert_eq!(
        gw.sandbox.request_count(),
        0,
        "nothing reached the upstream"
    );

    // 300 such requests as one user: none is forwarded, and once the quota is spent the
    // plain ones are refused with 429 exactly as before.
    let mut refused = 0;
    // HTTP/1.1: an HTTP/2 client drops connection-specific headers itself.
    let client = https_client(&gw.pki.ca_pem, true);
    for i in 0..300 {
        let method = if i % 2 == 0 {
            Method::GET
        } else {
            Method::DELETE
        };
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{PODS}/web", gw.url()))
            .header("authorization", format!("Bearer {token}"))
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .body(Default::default())
            .unwrap();
        let r = collect(&client, request).await;
        assert!(
            matches!(
                r.status,
                StatusCode::BAD_REQUEST | StatusCode::TOO_MANY_REQUESTS
            ),
            "{:?}",
            r.status
        );
        refused += usize::from(r.status == StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(refused >= 290, "only {refused} of 300 met the quota");
    assert_eq!(gw.sandbox.request_count(), 0);
    assert_eq!(
        gw.get(PODS, &token).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn watch_churn_meets_the_rate_quota() {
    let gw = gateway(Some("requests_per_second = 1\nburst = 5")).await;
    let token = alice(&gw);
    let client = https_client(&gw.pki.ca_pem, false);
    let mut statuses = Vec::new();
    // Open a watch and drop it at once, as a churning client does: each one would cost a
    // real API server a full list.
    for _ in 0..20 {
        let request = http::Request::get(format!("{}{PODS}?watch=1", gw.url()))
            .header("authorization", format!("Bearer {token}"))
            .body(Default::default())
            .unwrap();
        let response = client.request(request).await.expect("the gateway answers");
        statuses.push(response.status());
        drop(response);
    }
    let opened = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let throttled = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(opened <= 6, "{statuses:?}");
    assert!(throttled >= 14, "{statuses:?}");
}

#[tokio::test]
async fn a_malformed_request_body_is_the_clients_fault() {
    let gw = gateway(None).await;
    let token = alice(&gw);
    let mut conn = connect_http1(&gw).await;
    // A chunk-size line ended by a bare LF: hyper refuses the body once it is forwarded.
    let request = format!(
        "POST /api/v1/namespaces/dev/configmaps HTTP/1.1\r\nHost: kubegate\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut conn).await;
    assert_eq!(
        response.status,
        400,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    let status: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(status["reason"], "BadRequest");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("request body could not be read"),
        "{status}"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        !metrics.contains("code=\"502\""),
        "counted as an upstream failure:\n{metrics}"
    );
}

#[tokio::test]
async fn a_slow_reader_holds_its_in_flight_slot_until_the_body_ends() {
    // One request at a time for alice: the slot must cover the whole response body, not
    // only its headers.
    let gw = TestGateway::start_with(GatewayOptions {
        limits_toml: Some("max_in_flight_per_user = 1".into()),
        policy: format!(
            "{}\n[[rule]]\nname = \"devs-logs\"\neffect = \"allow\"\nsubjects = {{ groups = [\"devs\"] }}\n\
             resources = [{{ api_groups = [\"\"], resources = [\"pods/log\"], namespaces = [\"dev\"], verbs = [\"get\"] }}]\n",
            kubegate_tests::TEST_POLICY
        ),
        ..GatewayOptions::default()
    })
    .await;
    let token = alice(&gw);
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "chatty", "namespace": "dev",
            // 64 MiB of log: far more than the socket buffers hold.
            "annotations": {"kubegate.dev/sandbox-log-bytes": "67108864"},
        },
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    });
    let create = http::Request::post(format!("{}{PODS}", gw.url()))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            pod.to_string(),
        )))
        .unwrap();
    let client = https_client(&gw.pki.ca_pem, false);
    assert_eq!(collect(&client, create).await.status, StatusCode::CREATED);

    // A reader that takes the headers and then stops reading.
    let slow = https_client(&gw.pki.ca_pem, false);
    let request = http::Request::get(format!("{}{PODS}/chatty/log", gw.url()))
        .header("authorization", format!("Bearer {token}"))
        .body(Default::default())
        .unwrap();
    let response = slow.request(request).await.expect("the log starts");
    assert_eq!(response.status(), StatusCode::OK);

    // Its body is still in flight: alice's next request meets the cap.
    let refused = gw.get(PODS, &token).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        refused.body
    );
    assert!(
        String::from_utf8_lossy(&refused.body).contains("concurrent requests"),
        "{:?}",
        refused.body
    );

    // The reader goes away mid-body: the slot comes back.
    drop(response);
    drop(slow);
    let mut status = StatusCode::TOO_MANY_REQUESTS;
    eventually("the slot is released", async || {
        status = gw.get(PODS, &token).await.status;
        status == StatusCode::OK
    })
    .await;
}
