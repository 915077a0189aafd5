//! Policy reload while running: a changed file takes effect, a bad file is refused and the
//! running policy stays.

use std::time::Duration;

use http::StatusCode;
use kubegate_tests::{TEST_POLICY, TestGateway};

const PODS: &str = "/api/v1/namespaces/dev/pods";

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..200 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_changed_policy_file_is_reloaded_and_a_bad_one_is_refused() {
    let gw = TestGateway::start().await;
    let bob = gw.issuer.token("bob", &["guests"]);
    assert_eq!(gw.get(PODS, &bob).await.status, StatusCode::FORBIDDEN);

    let policy_file = gw.dir.path().join("policy.toml");
    let widened = TEST_POLICY.replace(r#"groups = ["devs"]"#, r#"groups = ["devs", "guests"]"#);
    std::fs::write(&policy_file, &widened).unwrap();
    assert!(
        eventually(async || gw.get(PODS, &bob).await.status == StatusCode::OK).await,
        "the new policy takes effect without a restart"
    );
    let store = gw.running.gateway().policy.clone();
    assert!(store.reloads() >= 1);

    std::fs::write(&policy_file, "this is [not a policy").unwrap();
    assert!(
        eventually(async || store.reload_failures() >= 1).await,
        "the bad file was seen and refused"
    );
    assert_eq!(
        gw.get(PODS, &bob).await.status,
        StatusCode::OK,
        "the running policy stays in force"
    );
}
