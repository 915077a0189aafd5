//! `kubectl auth can-i`, `can-i --list` and `auth whoami` through the gateway in front of a
//! real kube-apiserver (v1.20, RBAC; see tests/tests/realkube.rs for how it is run): an
//! answer is yes only when both the gateway's policy and the cluster's RBAC say yes, and
//! equals what doing the request through the gateway does, whichever of them refuses.

#[path = "../realkube/harness.rs"]
mod harness;

use bytes::Bytes;
use harness::RealKube;
use http::{Request, StatusCode};
use http_body_util::Full;
use kubegate_tests::{
    TestConfig, TestIssuer, TestPki, can_i_list_rows, cell_request, collect, https_client,
    kubectl_can_i, run_kubectl, test_issuer_toml, write,
};
use serde_json::Value;

/// The gateway: devs may work with pods, configmaps and secrets in `dev` and `prod`, but no
/// one touches secrets in `prod`; guests may read configmaps in `dev`.
const POLICY: &str = concat!(
    kubegate_tests::policy_preamble!(),
    r#"
[[rule]]
name = "no-secrets-prod"
effect = "deny"
subjects = { authenticated = true }
resources = [{ api_groups = [""], resources = ["secrets"], namespaces = ["prod"], verbs = ["*"] }]

[[rule]]
name = "devs"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [{ api_groups = [""], resources = ["pods", "configmaps", "secrets"], namespaces = ["dev", "prod"], verbs = ["get", "list", "create", "delete"] }]

[[rule]]
name = "guests"
effect = "allow"
subjects = { groups = ["guests"] }
resources = [{ api_groups = [""], resources = ["configmaps"], namespaces = ["dev"], verbs = ["get", "list"] }]
"#
);

/// RBAC that disagrees with the policy both ways: devs may not delete pods or write
/// configmaps and secrets in `dev` (the gateway would allow it), but may write secrets in
/// `prod` (the gateway refuses); guests may read pods in `dev` (the gateway refuses) but
/// only get configmaps there (the gateway would let them list).
const RBAC: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: dev}
---
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cani-devs, namespace: dev}
rules:
- {apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "create"]}
- {apiGroups: [""], resources: ["configmaps", "secrets"], verbs: ["get", "list"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: cani-devs, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cani-devs}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: devs}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cani-devs, namespace: prod}
rules:
- {apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "delete"]}
- {apiGroups: [""], resources: ["secrets"], verbs: ["get", "list", "create", "delete"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: cani-devs, namespace: prod}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cani-devs}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: devs}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cani-guests, namespace: dev}
rules:
- {apiGroups: [""], resources: ["pods"], verbs: ["get", "list"]}
- {apiGroups: [""], resources: ["configmaps"], verbs: ["get"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: cani-guests, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cani-guests}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: guests}]
"#;

const USERS: [(&str, &str); 2] = [("cani-alice", "devs"), ("cani-bob", "guests")];

struct Setup {
    _kube: RealKube,
    running: kubegate::Running,
    issuer: TestIssuer,
    pki: TestPki,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let kube = tokio::task::block_in_place(harness::start_or_panic);
        kube.admin_apply(RBAC).await;
        kubegate::app::install_crypto_provider();
        let (issuer, pki) = (TestIssuer::rs256(), TestPki::generate());
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write(d, "tls.crt", &pki.cert_pem);
        write(d, "tls.key", &pki.key_pem);
        write(d, "jwks.json", &issuer.jwks());
        write(d, "policy.toml", POLICY);
        let upstream = format!(
            "kubeconfig = {:?}",
            kube.gateway_kubeconfig().display().to_string()
        );
        let mut config = TestConfig::new(upstream);
        config.oidc = test_issuer_toml(&["RS256"]);
        let path = write(d, "kubegate.toml", &config.render());
        let config = kubegate_config::load(&path).expect("gateway config");
        let running = kubegate::start(&config).await.expect("gateway starts");
        Setup {
            _kube: kube,
            running,
            issuer,
            pki,
            dir,
        }
    }

    fn kubeconfig(&self, user: &str, token: &str) -> std::path::PathBuf {
        let ca =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &self.pki.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gw\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\ncontexts:\n- name: gw\n  context:\n    cluster: gw\n    user: u\ncurrent-context: gw\nusers:\n- name: u\n  user:\n    token: {token}\n",
            port = self.running.addr().port()
        );
        write(self.dir.path(), &format!("{user}.kubeconfig"), &text)
    }

    /// Whether doing the cell's request through the gateway is allowed (anything but 403).
    async fn actually_allowed(&self, token: &str, verb: &str, resource: &str, ns: &str) -> bool {
        let (method, path, body) = cell_request(verb, resource, ns, "cani-probe");
        let request = Request::builder()
            .method(method)
            .uri(format!(
                "https://127.0.0.1:{}{path}",
                self.running.addr().port()
            ))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let response = collect(&https_client(&self.pki.ca_pem, false), request).await;
        assert!(
            response.status.as_u16() < 500,
            "{verb} {resource} -n {ns}: {}",
            response.status
        );
        response.status != StatusCode::FORBIDDEN
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_list_and_whoami_tell_the_truth_on_a_real_api_server() {
    let setup = Setup::start().await;
    let mut yes = Vec::new();
    let mut cells = 0;
    for (user, group) in USERS {
        let token = setup.issuer.token(user, &[group]);
        let kubeconfig = setup.kubeconfig(user, &token);
        for ns in ["dev", "prod"] {
            for resource in ["pods", "configmaps", "secrets"] {
                for verb in ["get", "list", "create", "delete"] {
                    let said = kubectl_can_i(&kubeconfig, verb, resource, ns).await;
                    let did = setup.actually_allowed(&token, verb, resource, ns).await;
                    assert_eq!(said, did, "{user}: can-i {verb} {resource} -n {ns}");
                    cells += 1;
                    if said {
                        yes.push(format!("{user} {verb} {resource} {ns}"));
                    }
                }
            }
        }
        // Who refused, by name.
        let (_, stdout, _) = run_kubectl(
            &kubeconfig,
            &["auth", "can-i", "delete", "secrets", "-n", "prod"],
        )
        .await;
        if group == "devs" {
            assert!(
                stdout.contains(r#"denied by rule "no-secrets-prod""#),
                "{stdout}"
            );
            let (_, stdout, _) = run_kubectl(
                &kubeconfig,
                &["auth", "can-i", "delete", "pods", "-n", "dev"],
            )
            .await;
            assert!(
                stdout.contains(r#"allowed by rule "devs"; the API server"#),
                "{stdout}"
            );
        }
    }
    assert_eq!(cells, 48);
    // RBAC alone would also say yes to alice's secrets in prod and bob's pods in dev; the
    // policy alone to alice's writes in dev and bob's configmap list.
    assert_eq!(yes.len(), 7 + 3 + 1, "{yes:#?}");
    assert!(
        yes.contains(&"cani-bob get configmaps dev".to_string()),
        "{yes:#?}"
    );

    for (user, group) in USERS {
        let token = setup.issuer.token(user, &[group]);
        let kubeconfig = setup.kubeconfig(user, &token);
        for ns in ["dev", "prod"] {
            let (ok, stdout, stderr) =
                run_kubectl(&kubeconfig, &["auth", "can-i", "--list", "-n", ns]).await;
            assert!(ok, "{user} --list -n {ns}: {stderr}");
            let rows = can_i_list_rows(&stdout);
            for (resource, _, verbs) in &rows {
                for verb in verbs {
                    assert!(
                        setup.actually_allowed(&token, verb, resource, ns).await,
                        "{user} -n {ns} lists {verb} {resource}, which is refused:\n{stdout}"
                    );
                }
            }
            let listed = |r: &str, v: &str| {
                rows.iter()
                    .any(|(x, _, vs)| x == r && vs.iter().any(|y| y == v))
            };
            match (group, ns) {
                ("devs", "dev") => {
                    assert!(
                        listed("pods", "create") && listed("secrets", "get"),
                        "{stdout}"
                    );
                    assert!(!listed("pods", "delete"), "{stdout}");
                }
                ("devs", "prod") => {
                    assert!(
                        listed("pods", "delete") && !listed("secrets", "get"),
                        "{stdout}"
                    )
                }
                ("guests", "dev") => {
                    assert!(
                        listed("configmaps", "get") && !listed("configmaps", "list"),
                        "{stdout}"
                    );
                    assert!(!listed("pods", "get"), "{stdout}");
                }
                _ => assert!(rows.is_empty(), "{stdout}"),
            }
        }

        // v1.20 has no SelfSubjectReview: the gateway answers it.
        let (ok, stdout, stderr) =
            run_kubectl(&kubeconfig, &["auth", "whoami", "-o", "json"]).await;
        assert!(ok, "{stderr}");
        let review: Value = serde_json::from_str(&stdout).expect("whoami JSON");
        assert_eq!(review["status"]["userInfo"]["username"], user, "{review}");
        let groups = review["status"]["userInfo"]["groups"].to_string();
        assert!(
            groups.contains(group) && groups.contains("system:authenticated"),
            "{groups}"
        );
    }
}
