//! `kubectl auth can-i`, `can-i --list` and `auth whoami` through the gateway in dev mode
//! (the sandbox, which authorizes everything): every answer is the gateway's policy's, and
//! equals what doing the request through the gateway does.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use kubegate_tests::{
    GatewayOptions, TestGateway, can_i_list_rows, cell_request, collect, eventually, https_client,
    kubectl_can_i, run_kubectl,
};
use serde_json::Value;

/// alice (devs) works with pods and configmaps in `dev`, and may read configmaps in `qa`
/// except `deletecollection`; nobody touches secrets; bob (guests) lists configmaps in `qa`.
const POLICY: &str = concat!(
    kubegate_tests::policy_preamble!(),
    r#"
[[rule]]
name = "no-secrets"
effect = "deny"
subjects = { authenticated = true }
resources = [{ api_groups = [""], resources = ["secrets"], verbs = ["*"] }]

[[rule]]
name = "devs-dev"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [
  { api_groups = [""], resources = ["pods", "configmaps", "secrets"], namespaces = ["dev"], verbs = ["get", "list", "watch", "create", "delete"] },
  { api_groups = [""], resources = ["configmaps"], namespaces = ["qa"], verbs = ["get", "list"] },
]

[[rule]]
name = "guests-qa"
effect = "allow"
subjects = { groups = ["guests"] }
resources = [{ api_groups = [""], resources = ["configmaps"], namespaces = ["qa"], verbs = ["list"] }]
"#
);

const VERBS: [&str; 4] = ["get", "list", "create", "delete"];
const RESOURCES: [&str; 3] = ["pods", "configmaps", "secrets"];
const NAMESPACES: [&str; 2] = ["dev", "qa"];

async fn gateway() -> TestGateway {
    TestGateway::start_with(GatewayOptions {
        policy: POLICY.into(),
        ..GatewayOptions::default()
    })
    .await
}

/// Whether doing the cell's request through the gateway is allowed (anything but 403).
async fn actually_allowed(
    gw: &TestGateway,
    token: &str,
    verb: &str,
    resource: &str,
    ns: &str,
) -> bool {
    let (method, path, body) = cell_request(verb, resource, ns, "cani-probe");
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", gw.url()))
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let response = collect(&https_client(&gw.pki.ca_pem, false), request).await;
    response.status != StatusCode::FORBIDDEN
}

#[tokio::test]
async fn can_i_agrees_with_doing_it_for_alice_and_bob() {
    let gw = gateway().await;
    let mut cells = 0;
    let mut yes = 0;
    for (user, group) in [("alice", "devs"), ("bob", "guests")] {
        let token = gw.issuer.token(user, &[group]);
        let kubeconfig = gw.client_kubeconfig(user, &token);
        for ns in NAMESPACES {
            for resource in RESOURCES {
                for verb in VERBS {
                    let said = kubectl_can_i(&kubeconfig, verb, resource, ns).await;
                    let did = actually_allowed(&gw, &token, verb, resource, ns).await;
                    assert_eq!(said, did, "{user}: can-i {verb} {resource} -n {ns}");
                    cells += 1;
                    yes += usize::from(said);
                }
            }
        }
    }
    assert_eq!(cells, 48);
    // Both answers occur: alice's 2 resources x 4 verbs in dev, 2 in qa; bob's 1.
    assert_eq!(yes, 8 + 2 + 1);
}

#[tokio::test]
async fn can_i_names_the_rule_that_refused() {
    let gw = gateway().await;
    let alice = gw.client_kubeconfig("alice", &gw.issuer.token("alice", &["devs"]));
    let (ok, stdout, _) =
        run_kubectl(&alice, &["auth", "can-i", "get", "secrets", "-n", "dev"]).await;
    assert!(!ok);
    assert!(
        stdout.contains(r#"denied by rule "no-secrets""#),
        "{stdout}"
    );
    let (ok, stdout, _) = run_kubectl(&alice, &["auth", "can-i", "get", "pods", "-n", "dev"]).await;
    assert!(ok, "{stdout}");
    // A wildcard question is not answered yes while a deny rule covers part of it.
    let (ok, stdout, _) = run_kubectl(&alice, &["auth", "can-i", "*", "*", "-n", "dev"]).await;
    assert!(!ok, "{stdout}");
}

#[tokio::test]
async fn can_i_list_never_lists_a_denied_cell() {
    let gw = gateway().await;
    for (user, group, ns) in [
        ("alice", "devs", "dev"),
        ("alice", "devs", "qa"),
        ("bob", "guests", "qa"),
        ("bob", "guests", "dev"),
    ] {
        let token = gw.issuer.token(user, &[group]);
        let kubeconfig = gw.client_kubeconfig(user, &token);
        let (ok, stdout, stderr) =
            run_kubectl(&kubeconfig, &["auth", "can-i", "--list", "-n", ns]).await;
        assert!(ok, "{user} --list -n {ns}: {stderr}");
        let rows = can_i_list_rows(&stdout);
        for (resource, _, verbs) in &rows {
            for verb in verbs {
                assert!(
                    actually_allowed(&gw, &token, verb, resource, ns).await,
                    "{user} -n {ns} lists {verb} {resource}, which the gateway refuses:\n{stdout}"
                );
            }
        }
        let listed = |resource: &str, verb: &str| {
            rows.iter()
                .any(|(r, _, v)| r == resource && v.iter().any(|x| x == verb))
        };
        match (user, ns) {
            ("alice", "dev") => {
                for verb in ["get", "list", "watch", "create", "delete"] {
                    assert!(
                        listed("pods", verb) && listed("configmaps", verb),
                        "{stdout}"
                    );
                }
                assert!(!listed("secrets", "get"), "{stdout}");
            }
            ("alice", "qa") => assert!(listed("configmaps", "list") && !listed("pods", "list")),
            ("bob", "qa") => assert!(listed("configmaps", "list") && !listed("configmaps", "get")),
            _ => assert!(rows.is_empty(), "{stdout}"),
        }
    }
}

#[tokio::test]
async fn whoami_shows_the_forwarded_identity() {
    let gw = gateway().await;
    let alice = gw.client_kubeconfig("alice", &gw.issuer.token("alice", &["devs"]));
    let (ok, stdout, stderr) = run_kubectl(&alice, &["auth", "whoami", "-o", "json"]).await;
    assert!(ok, "{stderr}");
    let review: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        review["status"]["userInfo"]["username"], "alice",
        "{review}"
    );
    let groups = review["status"]["userInfo"]["groups"].to_string();
    assert!(
        groups.contains("devs") && groups.contains("system:authenticated"),
        "{groups}"
    );
    // Answered by the gateway, audited like any request.
    let whoami =
        |r: &&Value| r["requestURI"] == "/apis/authentication.k8s.io/v1/selfsubjectreviews";
    eventually("the audit record of whoami", async || {
        gw.audit_records().iter().any(|r| whoami(&r))
    })
    .await;
    let records = gw.audit_records();
    let record = records
        .iter()
        .find(whoami)
        .expect("an audit record for whoami");
    assert_eq!(
        record["annotations"]["kubegate.io/rule"],
        "(built-in) self-review"
    );
    assert_eq!(record["responseStatus"]["code"], 201);
}

#[tokio::test]
async fn reviews_of_others_and_impersonation_are_no_way_around() {
    let gw = gateway().await;
    let bob = gw.client_kubeconfig("bob", &gw.issuer.token("bob", &["guests"]));
    // `--as` headers are stripped: bob is asked about, and bob may not.
    let (ok, stdout, _) = run_kubectl(
        &bob,
        &[
            "auth",
            "can-i",
            "get",
            "pods",
            "-n",
            "dev",
            "--as",
            "alice",
            "--as-group",
            "devs",
        ],
    )
    .await;
    assert!(!ok && stdout.starts_with("no"), "{stdout}");
    // A SubjectAccessReview is an ordinary create, which no rule allows.
    let token = gw.issuer.token("bob", &["guests"]);
    let review = r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{"user":"alice","groups":["devs"],"resourceAttributes":{"verb":"get","resource":"pods","namespace":"dev"}}}"#;
    for path in [
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        "/apis/authorization.k8s.io/v1/namespaces/dev/localsubjectaccessreviews",
    ] {
        let status = post(&gw, &token, path, review).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    // Another version of the review is refused, not forwarded for RBAC to answer alone.
    let status = post(
        &gw,
        &token,
        "/apis/authorization.k8s.io/v1beta1/selfsubjectaccessreviews",
        review,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let reached = gw
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.contains("subjectaccessreviews"))
        .count();
    assert_eq!(reached, 0, "nothing reached the API server");
}

#[tokio::test]
async fn malformed_reviews_are_refused_with_400() {
    let gw = gateway().await;
    let token = gw.issuer.token("alice", &["devs"]);
    let ssar = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    assert_eq!(
        post(&gw, &token, ssar, "{not json").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&gw, &token, ssar, r#"{"spec":{}}"#).await,
        StatusCode::BAD_REQUEST
    );
    let rules = "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews";
    assert_eq!(
        post(&gw, &token, rules, r#"{"spec":{}}"#).await,
        StatusCode::BAD_REQUEST
    );
    let big = format!(r#"{{"spec":{{"x":"{}"}}}}"#, "a".repeat(4 * 1024 * 1024));
    assert_eq!(
        post(&gw, &token, ssar, &big).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

async fn post(gw: &TestGateway, token: &str, path: &str, body: &str) -> StatusCode {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{}{path}", gw.url()))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    collect(&https_client(&gw.pki.ca_pem, false), request)
        .await
        .status
}
