//! The audit trail under floods of refusals: records are bounded in size, and refusals the
//! gateway answers itself (401 without an identity, 429 from admission) are summarised per
//! address or user, so neither an anonymous flood with huge headers nor a throttled user
//! can rotate earlier records out of a small trail. Forwarded requests and policy
//! decisions keep a record each.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use kubegate::audit::record::{MAX_RECORD_WITHOUT_IDENTITY, MAX_USER_AGENT, TRUNCATED_SUFFIX};
use kubegate_tests::{
    Collected, GatewayOptions, TestGateway, audit_trail_lines_in, collect, eventually, https_client,
};
use serde_json::Value;

const PODS: &str = "/api/v1/namespaces/dev/pods";
/// Requests in each flood, and the connections they are sent on.
const FLOOD: usize = 2_000;
const CONNECTIONS: usize = 16;
/// Neither flood may take longer than this (a few seconds here): the trail is sized for it.
const FLOOD_LIMIT: Duration = Duration::from_secs(30);

/// Sends `FLOOD` requests built by `request` (given the request number) over `CONNECTIONS`
/// HTTP/1.1 connections; returns each answer's status and audit ID.
async fn flood(
    gw: &TestGateway,
    request: impl Fn(usize) -> http::Request<http_body_util::Full<bytes::Bytes>> + Send + Sync + 'static,
) -> Vec<(StatusCode, String)> {
    let next = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(request);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let client = https_client(&gw.pki.ca_pem, true);
            let (next, request) = (next.clone(), request.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= FLOOD || started.elapsed() > FLOOD_LIMIT {
                        return answers;
                    }
                    let r: Collected = collect(&client, request(i)).await;
                    answers.push((r.status, audit_id(&r)));
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.expect("flood task"));
    }
    assert_eq!(
        answers.len(),
        FLOOD,
        "the flood finished within {FLOOD_LIMIT:?}"
    );
    answers
}

fn audit_id(r: &Collected) -> String {
    r.headers["audit-id"]
        .to_str()
        .expect("audit id")
        .to_string()
}

/// The trail's records, parsed, with the length of their longest line.
fn trail(gw: &TestGateway) -> (Vec<Value>, usize) {
    let lines = audit_trail_lines_in(gw.dir.path());
    let longest = lines.iter().map(|l| l.len() + 1).max().unwrap_or(0);
    let records = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect();
    (records, longest)
}

fn is_summary(record: &Value) -> bool {
    record["annotations"]["kubegate.io/summary"] == "true"
}

/// Refused requests `refused` are all accounted for under summary key `key`: each either
/// has its own (full) record or is counted in a summary of that key.
fn accounted(records: &[Value], key: &str, refused: &HashSet<&str>) -> bool {
    let full = records
        .iter()
        .filter(|r| refused.contains(r["auditID"].as_str().unwrap_or_default()))
        .count();
    let counted: usize = records
        .iter()
        .filter(|r| is_summary(r) && r["annotations"]["kubegate.io/summary-key"] == key)
        .map(|r| {
            r["annotations"]["kubegate.io/summary-count"]
                .as_str()
                .and_then(|c| c.parse::<usize>().ok())
                .expect("summary count")
        })
        .sum();
    full + counted == refused.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_refusals_do_not_rotate_an_earlier_record_out_of_a_small_trail() {
    let gw = TestGateway::start_with(GatewayOptions {
        // The trail keeps at least 512 KiB. Summarised, the floods below write about 15 KB
        // a second (two records a second for each key, ~6 KB for an anonymous one), so
        // 30 s of each fit; unsummarised they write over 11 MB even with every field cut
        // to its bound, and 200 MB without.
        audit_toml: Some("max_file_size = 524288\nmax_backups = 1".into()),
        limits_toml: Some("requests_per_second = 2\nburst = 4".into()),
        ..GatewayOptions::default()
    })
    .await;
    let carol = gw.issuer.token("carol", &["devs"]);
    let mallory = gw.issuer.token("mallory", &["devs"]);

    // The record that must survive: an authenticated, forwarded DELETE.
    let deleted = gw
        .request(
            Method::DELETE,
            &format!("{PODS}/evidence"),
            Some(&carol),
            &[],
        )
        .await;
    let delete_id = audit_id(&deleted);
    // Mallory's token is verified now, before the anonymous flood spends the address's
    // budget for signature checks.
    assert_eq!(gw.get(PODS, &mallory).await.status, StatusCode::OK);

    // 1. No token, a 100 KB User-Agent and a long query, object name or path.
    let url = gw.url();
    let user_agent = "x".repeat(100_000);
    let anonymous = flood(&gw, move |i| {
        let target = match i % 3 {
            // A long query, a long (but valid) object name, a path segment too long (400).
            0 => format!("{PODS}?labelSelector={}", "a".repeat(8_000)),
            1 => format!("{PODS}/{}", "n".repeat(1_000)),
            _ => format!("{PODS}/{}", "n".repeat(8_000)),
        };
        http::Request::get(format!("{url}{target}"))
            .header("user-agent", user_agent.as_str())
            .body(Default::default())
            .expect("request")
    })
    .await;
    assert!(
        anonymous
            .iter()
            .all(|(s, _)| matches!(s.as_u16(), 400 | 401 | 429)),
        "anonymous requests are refused: {:?}",
        anonymous
            .iter()
            .map(|(s, _)| s.as_u16())
            .collect::<HashSet<_>>()
    );

    // 2. Mallory far over her quota.
    let url = gw.url();
    let throttled = flood(&gw, move |_| {
        http::Request::get(format!("{url}{PODS}"))
            .header("authorization", format!("Bearer {mallory}"))
            .body(Default::default())
            .expect("request")
    })
    .await;
    let refused_mallory: HashSet<&str> = throttled
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .map(|(_, id)| id.as_str())
        .collect();
    let allowed_mallory: Vec<&str> = throttled
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, id)| id.as_str())
        .collect();
    assert!(
        refused_mallory.len() > FLOOD / 2,
        "most of the flood was throttled"
    );
    assert_eq!(refused_mallory.len() + allowed_mallory.len(), FLOOD);

    // 3. After the floods: requests carol may make, and one the policy denies.
    let mut own_record = vec![delete_id.clone()];
    own_record.extend(allowed_mallory.iter().map(|s| s.to_string()));
    for _ in 0..2 {
        let r = gw.get(PODS, &carol).await;
        assert_eq!(r.status, StatusCode::OK);
        own_record.push(audit_id(&r));
        let r = gw.get("/api/v1/namespaces/dev/secrets", &carol).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        own_record.push(audit_id(&r));
    }

    // The last windows' summaries are written when those windows end.
    let refused_anonymous: HashSet<&str> = anonymous.iter().map(|(_, id)| id.as_str()).collect();
    eventually("the summaries of both floods", async || {
        let (records, _) = trail(&gw);
        accounted(&records, "address:127.0.0.1", &refused_anonymous)
            && accounted(&records, "user:mallory", &refused_mallory)
    })
    .await;

    let (records, longest) = trail(&gw);
    let by_id: HashMap<&str, &Value> = records
        .iter()
        .map(|r| (r["auditID"].as_str().expect("audit id"), r))
        .collect();
    let delete = by_id
        .get(delete_id.as_str())
        .expect("the DELETE before the floods is still in the trail");
    assert_eq!(delete["verb"], "delete");
    assert_eq!(delete["user"]["username"], "carol");
    for id in &own_record {
        let record = by_id.get(id.as_str()).expect("a record of its own");
        assert!(!is_summary(record));
    }
    assert!(
        longest <= MAX_RECORD_WITHOUT_IDENTITY,
        "every record is bounded: the longest line is {longest} bytes"
    );

    // The anonymous records that were written are cut, and say so.
    let anonymous_full: Vec<&&Value> = refused_anonymous
        .iter()
        .filter_map(|id| by_id.get(id))
        .collect();
    assert!(!anonymous_full.is_empty());
    for record in &anonymous_full {
        let ua = record["userAgent"].as_str().expect("user agent");
        assert_eq!(ua.len(), MAX_USER_AGENT + TRUNCATED_SUFFIX.len());
        assert!(ua.ends_with(TRUNCATED_SUFFIX));
        let cut = record["annotations"]["kubegate.io/truncated"]
            .as_str()
            .expect("truncated annotation");
        assert!(
            cut == "requestURI,userAgent" || cut == "objectRef.name,userAgent",
            "{cut}"
        );
    }
    // Each summary names a first request that has a record of its own.
    let summaries: Vec<&Value> = records.iter().filter(|r| is_summary(r)).collect();
    assert!(summaries.len() >= 2);
    for summary in &summaries {
        let first = summary["annotations"]["kubegate.io/summary-of"]
            .as_str()
            .expect("summary-of");
        assert!(
            by_id.contains_key(first),
            "the summarised window's first record"
        );
    }
    // A few records a second per key, not one per request.
    let written = records.len();
    assert!(
        written < FLOOD / 4,
        "{written} records for {} requests",
        2 * FLOOD
    );

    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("kubegate_audit_records_summarised_total"),
        "{metrics}"
    );

    // Shutting down loses nothing and adds no record.
    let TestGateway { running, dir, .. } = gw;
    running.shutdown().await.expect("shutdown");
    assert_eq!(audit_trail_lines_in(dir.path()).len(), written);
}
