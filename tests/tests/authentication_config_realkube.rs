//! A Kubernetes `AuthenticationConfiguration` with CEL claim mappings, end to end: tokens
//! from the real OpenID provider (tests/oidc), the real gateway in-process, and the real
//! kube-apiserver (tests/realkube) as its upstream. The API server's audit log must show
//! the gateway impersonating exactly the identity the expressions mapped: the username
//! joined from two claims, the groups filtered and prefixed, and extra values from a
//! nested and a plain claim; a token the validation rule refuses never reaches it.

#[path = "../realkube/harness.rs"]
mod harness;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use kubegate_tests::oidc_provider::start_provider;
use kubegate_tests::{TestPki, collect, https_client, write, write_listener_files};
use serde_json::{Value, json};

const PODS: &str = "/api/v1/namespaces/rk-cel/pods";

/// Username `tenant/sub`; of the token's groups (`devs`, `devs-oncall`, `marketing`,
/// `system:masters`) those starting with `devs`, prefixed `oidc:`; the nested
/// `org.unit` and the `tier` as extra; tiers other than gold and silver refused.
fn authentication_config(issuer: &str) -> String {
    format!(
        r#"apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: {issuer}
    audiences: [kubegate]
  claimValidationRules:
  - expression: 'claims.tier in ["gold", "silver"]'
    message: only the gold and silver tiers may use the cluster
  claimMappings:
    username:
      expression: 'claims.tenant + "/" + claims.sub'
    groups:
      expression: 'claims.groups.filter(g, g.startsWith("devs")).map(g, "oidc:" + g)'
    extra:
    - key: example.com/unit
      valueExpression: 'claims.org.unit'
    - key: example.com/tier
      valueExpression: 'claims.tier'
  userValidationRules:
  - expression: 'user.groups.all(g, !g.startsWith("system:"))'
    message: system groups are the cluster's
"#
    )
}

const POLICY: &str = r#"
default = "deny"

[[rule]]
name = "cel-devs-read-pods"
effect = "allow"
subjects = { groups = ["oidc:devs"] }
resources = [{ api_groups = [""], resources = ["pods"], namespaces = ["rk-cel"], verbs = ["get", "list"] }]
"#;

/// What the cluster needs besides its fixture: the namespace, the mapped group's right to
/// read pods there, and the gateway's right to impersonate the two extra keys (the
/// harness's `gateway` has only users and groups).
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: rk-cel}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: rk-cel}
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: oidc-devs-pod-reader, namespace: rk-cel}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "oidc:devs"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: rk-cel-extras}
rules:
- apiGroups: ["authentication.k8s.io"]
  resources: ["userextras/example.com/unit", "userextras/example.com/tier"]
  verbs: ["impersonate"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: rk-cel-extras}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: rk-cel-extras}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: gateway}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_servers_audit_log_shows_exactly_the_cel_mapped_identity() {
    let kube = harness::start_or_panic();
    kube.admin_apply(CLUSTER).await;
    let provider = start_provider();

    kubegate::app::install_crypto_provider();
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let listener = write_listener_files(d, &pki, POLICY);
    write(d, "auth.yaml", &authentication_config(&provider.issuer));
    let config_text = format!(
        r#"{listener}
[upstream]
kubeconfig = "{kubeconfig}"
timeout = "10s"
[auth]
authentication_config = "auth.yaml"
authentication_config_insecure_http = true
"#,
        kubeconfig = kube.gateway_kubeconfig().display(),
    );
    let config_path = write(d, "kubegate.toml", &config_text);
    let config = kubegate_config::load(&config_path).expect("gateway config");
    let running = kubegate::start(&config).await.expect("gateway starts");
    let client = https_client(&pki.ca_pem, false);
    let get = async |path: &str, token: &str| {
        let request = Request::get(format!("https://127.0.0.1:{}{path}", running.addr().port()))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        collect(&client, request).await
    };

    // The mapped group may list pods in rk-cel: the API server's RBAC agrees with the
    // gateway's policy, so the request is answered by the cluster.
    let token = provider.access_token("kubegate-cel").await;
    let r = get(PODS, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["kind"], "PodList");

    let user = "acme/kubegate-cel";
    let events = kube
        .wait_for_audit("the CEL-mapped user's pod list", |e| {
            e["requestURI"] == PODS && e["impersonatedUser"]["username"] == user
        })
        .await;
    for event in &events {
        assert_eq!(event["user"]["username"], "gateway", "{event}");
        assert_eq!(event["responseStatus"]["code"], 200, "{event}");
        let mut imp = event["impersonatedUser"].clone();
        // The API server adds `system:authenticated`; the order is the mapping's.
        let groups = imp["groups"].as_array_mut().expect("impersonated groups");
        groups.sort_by_key(|g| g.as_str().unwrap_or_default().to_string());
        assert_eq!(
            imp,
            json!({
                "username": user,
                "groups": ["oidc:devs", "oidc:devs-oncall", "system:authenticated"],
                "extra": {
                    "example.com/tier": ["gold"],
                    "example.com/unit": ["payments"],
                },
            }),
            "exactly the mapped identity, no uid: {event}"
        );
    }

    // The validation rule refuses the blocked tier: a 401 Status, and nothing upstream.
    let blocked = provider.access_token("kubegate-cel-blocked").await;
    let r = get(PODS, &blocked).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    let status: Value = r.json();
    assert_eq!(status["kind"], "Status", "{status}");
    // A later request that goes upstream is the barrier: once its event is in the log,
    // anything sent before it would be too.
    let barrier = format!("{PODS}?limit=1");
    assert_eq!(get(&barrier, &token).await.status, StatusCode::OK);
    kube.wait_for_audit("the barrier request", |e| {
        e["requestURI"] == barrier.as_str() && e["impersonatedUser"]["username"] == user
    })
    .await;
    let leaked: Vec<Value> = kube
        .audit_events()
        .into_iter()
        .filter(|e| {
            e["impersonatedUser"]["username"]
                .as_str()
                .is_some_and(|u| u.contains("blocked"))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "a refused token reached the API server: {leaked:?}"
    );
}
