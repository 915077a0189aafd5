//! Policy reload while running: a changed file takes effect, a bad file is refused and the
//! running policy stays.

use http::StatusCode;
use kubegate_tests::{TEST_POLICY, TestGateway, eventually};

const PODS: &str = "/api/v1/namespaces/dev/pods";

#[tokio::test]
async fn a_changed_policy_file_is_reloaded_and_a_bad_one_is_refused() {
    let gw = TestGateway::start().await;
    let bob = gw.issuer.token("bob", &["guests"]);
    assert_eq!(gw.get(PODS, &bob).await.status, StatusCode::FORBIDDEN);

    let policy_file = gw.dir.path().join("policy.toml");
    let widened = TEST_POLICY.replace(r#"groups = ["devs"]"#, r#"groups = ["devs", "guests"]"#);
    std::fs::write(&policy_file, &widened).unwrap();
    eventually(
        "the new policy takes effect without a restart",
        async || gw.get(PODS, &bob).await.status == StatusCode::OK,
    )
    .await;
    let store = gw.running.gateway().policy.clone();
    assert!(store.reloads() >= 1);

    std::fs::write(&policy_file, "this is [not a policy").unwrap();
    eventually("the bad file was seen and refused", async || {
        store.reload_failures() >= 1
    })
    .await;
    assert_eq!(
        gw.get(PODS, &bob).await.status,
        StatusCode::OK,
        "the running policy stays in force"
    );
}
