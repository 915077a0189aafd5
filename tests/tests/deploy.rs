//! deploy/ on the real kube-apiserver: the kustomize base and the example overlay render
//! with the machine's kubectl and apply to the API server, the ClusterRole they carry is
//! the one `kubegate rbac` prints for the shipped configuration, and kubegate in
//! in-cluster mode, with a real service-account token for the rendered ServiceAccount,
//! impersonates the signed-in person (who gets exactly their RBAC) and keeps working when
//! the token file is rotated. Its impersonation self-check fails `/readyz` for a role
//! missing a needed rule and warns of a role holding more.
//!
//! No kubelet or controller manager runs (tests/realkube/README.md): the Deployment is
//! stored but never scheduled, so the test plays the kubelet's part, laying out the
//! mounted service-account files and the API server's address for the gateway.

#[path = "../realkube/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use harness::RealKube;
use http::{Request, StatusCode};
use http_body_util::Full;
use kubegate::upstream::incluster::ServiceAccountEnv;
use kubegate_tests::{
    TestConfig, TestIssuer, TestPki, audit_records_in, collect, https_client, test_issuer_toml,
    write,
};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The cluster of this binary, with deploy/base applied once.
async fn deployed() -> &'static RealKube {
    static KUBE: std::sync::OnceLock<RealKube> = std::sync::OnceLock::new();
    static APPLIED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let kube = KUBE.get_or_init(harness::start_or_panic);
    APPLIED
        .get_or_init(|| async {
            let (documents, pdb) = rendered_without_pdb(kube, "base").await;
            apply(kube, &documents, &["--server-side"]).await;
            pdb_dry_run(kube, &pdb).await;
        })
        .await;
    kube
}

/// `kubectl kustomize deploy/<dir>`.
async fn render(kube: &RealKube, dir: &str) -> String {
    let path = deploy_dir().join(dir);
    kube.admin_kubectl(&["kustomize", path.to_str().expect("utf-8 path")])
        .await
}

/// The rendered documents, and the PodDisruptionBudget apart: it is `policy/v1`, which
/// the v1.20 API server predates (it has the same object as `policy/v1beta1`).
async fn rendered_without_pdb(kube: &RealKube, dir: &str) -> (String, String) {
    let text = render(kube, dir).await;
    let (pdb, rest): (Vec<&str>, Vec<&str>) = text
        .split("\n---\n")
        .partition(|d| d.contains("kind: PodDisruptionBudget"));
    assert_eq!(pdb.len(), 1, "{dir} renders one PodDisruptionBudget");
    assert!(pdb[0].starts_with("apiVersion: policy/v1\n"), "{}", pdb[0]);
    (rest.join("\n---\n"), pdb[0].to_string())
}

async fn apply(kube: &RealKube, yaml: &str, flags: &[&str]) -> String {
    let file = tempfile::NamedTempFile::with_suffix(".yaml").expect("temp manifest");
    std::fs::write(file.path(), yaml).expect("write manifest");
    let path = file.path().to_str().expect("utf-8 path").to_string();
    let mut args = vec!["apply", "-f", &path];
    args.extend_from_slice(flags);
    let (ok, stdout, stderr) = kube.admin_kubectl_result(&args).await;
    assert!(ok, "kubectl apply {flags:?}: {stderr}\n{yaml}");
    stdout
}

async fn pdb_dry_run(kube: &RealKube, pdb: &str) {
    let v1beta1 = pdb.replacen("apiVersion: policy/v1\n", "apiVersion: policy/v1beta1\n", 1);
    let out = apply(kube, &v1beta1, &["--dry-run=server"]).await;
    assert!(out.contains("poddisruptionbudget.policy/kubegate"), "{out}");
}

/// The configuration of `deploy/<dir>` laid out as the pod sees it (the ConfigMap's files
/// in `config/`, the TLS Secret's in `tls/`), loaded.
fn shipped_config(dir: &str) -> (tempfile::TempDir, kubegate_config::Config) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config");
    let tls = tmp.path().join("tls");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(tls.join("tls.crt"), "").unwrap();
    std::fs::write(tls.join("tls.key"), "").unwrap();
    std::fs::copy(
        deploy_dir().join(dir).join("kubegate.toml"),
        config.join("kubegate.toml"),
    )
    .unwrap();
    std::fs::copy(
        deploy_dir().join("base/policy.toml"),
        config.join("policy.toml"),
    )
    .unwrap();
    let loaded = kubegate_config::load(&config.join("kubegate.toml")).expect("shipped config");
    (tmp, loaded)
}

async fn get_json(kube: &RealKube, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    let out = kube.admin_kubectl(&args).await;
    serde_json::from_str(&out).expect("kubectl -o json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_apply_and_their_clusterrole_is_what_kubegate_rbac_prints() {
    let kube = deployed().await;

    // The base as stored: the generated ConfigMap is what the Deployment mounts, and the
    // pod is locked down.
    let cms = get_json(kube, &["get", "configmaps", "-n", "kubegate"]).await;
    let cm = cms["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kubegate-config-"))
        })
        .expect("the generated ConfigMap, named with its hash");
    assert!(
        cm["data"]["kubegate.toml"]
            .as_str()
            .unwrap()
            .contains("in_cluster = true")
    );
    assert!(
        cm["data"]["policy.toml"]
            .as_str()
            .unwrap()
            .contains("default = \"deny\"")
    );
    let d = get_json(kube, &["get", "deployment", "kubegate", "-n", "kubegate"]).await;
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["configMap"]["name"],
        cm["metadata"]["name"]
    );
    assert_eq!(pod["volumes"][1]["secret"]["secretName"], "kubegate-tls");
    assert_eq!(pod["serviceAccountName"], "kubegate");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(
        pod["topologySpreadConstraints"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    );
    let svc = get_json(kube, &["get", "service", "kubegate", "-n", "kubegate"]).await;
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    get_json(
        kube,
        &["get", "networkpolicy", "kubegate", "-n", "kubegate"],
    )
    .await;

    // The overlay: accepted by the API server as a change of the base.
    let (overlay, pdb) = rendered_without_pdb(kube, "overlays/example").await;
    let out = apply(kube, &overlay, &["--dry-run=server"]).await;
    assert!(out.contains("deployment.apps/kubegate configured"), "{out}");
    assert!(out.contains("service/kubegate configured"), "{out}");
    pdb_dry_run(kube, &pdb).await;
    assert!(overlay.contains("  replicas: 3\n"), "{overlay}");
    assert!(overlay.contains("  type: LoadBalancer\n"), "{overlay}");
    assert!(
        overlay.contains("aws-load-balancer-connection-idle-timeout"),
        "{overlay}"
    );
    assert!(overlay.contains("image: registry.example.com/platform/kubegate:0.1.0"));
    assert!(overlay.contains("https://login.example.org/realms/platform"));

    // The ClusterRole as the API server stores it equals `kubegate rbac`'s for the base's
    // and the overlay's configuration, applied under another name.
    let stored = get_json(kube, &["get", "clusterrole", "kubegate-impersonator"]).await;
    for dir in ["base", "overlays/example"] {
        let (_tmp, config) = shipped_config(dir);
        let name = format!("rbac-printed-{}", dir.replace('/', "-"));
        apply(
            kube,
            &kubegate::ops::rbac::cluster_role_yaml(&config, &name),
            &[],
        )
        .await;
        let printed = get_json(kube, &["get", "clusterrole", &name]).await;
        assert_eq!(printed["rules"], stored["rules"], "{dir}");
    }
    let binding = get_json(
        kube,
        &["get", "clusterrolebinding", "kubegate-impersonator"],
    )
    .await;
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "kubegate", "namespace": "kubegate"}])
    );
}

/// A token for `sa` in namespace `ns` from the TokenRequest API, bound to the Secret
/// `bound_to` (deleting it revokes the token).
async fn service_account_token(kube: &RealKube, ns: &str, sa: &str, bound_to: &str) -> String {
    kube.admin_apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {bound_to}, namespace: {ns}}}\n"
    ))
    .await;
    let token = kube
        .admin_kubectl(&[
            "create",
            "token",
            sa,
            "-n",
            ns,
            "--duration=1h",
            "--bound-object-kind=Secret",
            &format!("--bound-object-name={bound_to}"),
        ])
        .await;
    token.trim().to_string()
}

/// The kubelet's layout of a service account's files.
fn mount_service_account(dir: &Path, kube: &RealKube, token: &str) -> ServiceAccountEnv {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
    std::fs::copy(kube.ca_file(), dir.join("ca.crt")).unwrap();
    std::fs::write(dir.join("namespace"), "kubegate").unwrap();
    ServiceAccountEnv {
        dir: dir.to_path_buf(),
        host: Some("127.0.0.1".into()),
        port: Some(kube.port().to_string()),
    }
}

/// Swaps a new token in the way the kubelet does: a new file renamed over the old.
fn rotate(dir: &Path, token: &str) {
    let next = dir.join("..token.new");
    std::fs::write(&next, token).unwrap();
    std::fs::rename(&next, dir.join("token")).unwrap();
}

const POLICY: &str = r#"
default = "deny"

[[rule]]
name = "ic-devs"
effect = "allow"
subjects = { groups = ["ic-devs"] }
resources = [{ api_groups = [""], resources = ["configmaps", "secrets"], namespaces = ["ic"], verbs = ["get", "list"] }]
"#;

/// A gateway configuration with `in_cluster = true`, the test issuer, and `extra` appended
/// to the issuer's table.
fn in_cluster_config(dir: &Path, issuer: &TestIssuer, pki: &TestPki, extra: &str) -> PathBuf {
    write(dir, "tls.crt", &pki.cert_pem);
    write(dir, "tls.key", &pki.key_pem);
    write(dir, "jwks.json", &issuer.jwks());
    write(dir, "policy.toml", POLICY);
    write(
        dir,
        "kubegate.toml",
        &TestConfig {
            oidc: format!("{}{extra}\n", test_issuer_toml(&["RS256"])),
            admin: true,
            audit_file: Some("audit.log".into()),
            ..TestConfig::new("in_cluster = true")
        }
        .render(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_the_service_account_impersonates_the_person_and_survives_rotation() {
    let kube = deployed().await;
    kube.admin_apply(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: ic}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: marker, namespace: ic}
data: {colour: teal}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cm-reader, namespace: ic}
rules:
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ic-devs-cm-reader, namespace: ic}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: ic-devs}
"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let first = service_account_token(kube, "kubegate", "kubegate", "token-one").await;
    let env = mount_service_account(&dir.path().join("serviceaccount"), kube, &first);

    kubegate::app::install_crypto_provider();
    let issuer = TestIssuer::rs256();
    let pki = TestPki::generate();
    let config_path = in_cluster_config(dir.path(), &issuer, &pki, "");
    let config = kubegate_config::load(&config_path).expect("config");
    let prepared = kubegate::app::prepare_in(&config, &env)
        .await
        .expect("prepares");
    let router = prepared.router();
    let running = prepared.start(router).await.expect("starts");
    let url = format!("https://127.0.0.1:{}", running.addr().port());
    let client = https_client(&pki.ca_pem, false);
    let user = "ic-carol";
    let token = issuer.token(user, &["ic-devs"]);
    let get = async |path: &str| {
        let request = Request::get(format!("{url}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        collect(&client, request).await
    };

    // Exactly her RBAC: configmaps in ic, and the API server's own refusal for secrets.
    let r = get("/api/v1/namespaces/ic/configmaps/marker").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["data"]["colour"], "teal");
    let r = get("/api/v1/namespaces/ic/secrets").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert_eq!(
        r.json()["message"],
        r#"secrets is forbidden: User "ic-carol" cannot list resource "secrets" in API group "" in the namespace "ic""#
    );

    // The API server saw the service account impersonating her; the gateway's trail names
    // her.
    let sa = "system:serviceaccount:kubegate:kubegate";
    let seen = kube
        .wait_for_audit("ic-carol's configmap get", |e| {
            e["requestURI"] == "/api/v1/namespaces/ic/configmaps/marker"
                && e["stage"] == "ResponseComplete"
                // Not the fixture's own apply.
                && e["user"]["username"] != "admin"
        })
        .await;
    for e in &seen {
        assert_eq!(e["user"]["username"], sa, "{e}");
        assert_eq!(e["impersonatedUser"]["username"], user, "{e}");
        let groups = e["impersonatedUser"]["groups"].to_string();
        assert!(groups.contains("\"ic-devs\""), "{e}");
        assert_eq!(e["responseStatus"]["code"], 200, "{e}");
    }
    let records = audit_records_in(dir.path());
    assert!(
        records.iter().any(
            |r| r["requestURI"] == "/api/v1/namespaces/ic/configmaps/marker"
                && r["user"]["username"] == user
                && r["responseStatus"]["code"] == 200
        ),
        "{records:#?}"
    );

    // The kubelet rotates the token; the old one is then revoked (its bound Secret goes).
    let second = service_account_token(kube, "kubegate", "kubegate", "token-two").await;
    rotate(&env.dir, &second);
    kube.admin_kubectl(&[
        "delete",
        "secret",
        "token-one",
        "-n",
        "kubegate",
        "--wait=false",
    ])
    .await;
    let raw = https_client(&std::fs::read_to_string(kube.ca_file()).unwrap(), false);
    let old = async || {
        let request = Request::get(format!("{}/api", kube.server()))
            .header("authorization", format!("Bearer {first}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        collect(&raw, request).await.status
    };
    kubegate_tests::eventually("the first token is revoked", async || {
        old().await == StatusCode::UNAUTHORIZED
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get("/api/v1/namespaces/ic/configmaps/marker").await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway did not take up the rotated token: {} {:?}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get("/api/v1/namespaces/ic/configmaps").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn in_cluster_without_a_token_file_is_a_clear_error_at_start() {
    kubegate::app::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let sa = dir.path().join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    let ca = TestPki::generate();
    std::fs::write(sa.join("ca.crt"), &ca.ca_pem).unwrap();
    let env = ServiceAccountEnv {
        dir: sa.clone(),
        host: Some("127.0.0.1".into()),
        port: Some("6443".into()),
    };
    let issuer = TestIssuer::rs256();
    let config =
        kubegate_config::load(&in_cluster_config(dir.path(), &issuer, &ca, "")).expect("config");
    let e = match kubegate::app::prepare_in(&config, &env).await {
        Ok(_) => panic!("started without a service account token"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("kubegate.toml:"), "located: {e}");
    assert!(
        e.contains(&format!(
            "cannot read the service account token {}: No such file",
            sa.join("token").display()
        )),
        "{e}"
    );
}

/// `kubectl auth can-i <args> --as=system:serviceaccount:<ns>:<sa>` as the admin says yes:
/// the API server's RBAC cache has taken up a new binding.
async fn can_i(kube: &RealKube, ns: &str, sa: &str, args: &[&str]) -> bool {
    let who = format!("--as=system:serviceaccount:{ns}:{sa}");
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.push(&who);
    let (_, stdout, _) = kube.admin_kubectl_result(&all).await;
    stdout.trim() == "yes"
}

/// kubegate started in-cluster as ServiceAccount `sa` of namespace `selfcheck` with the
/// configuration at `config_path`: its `/readyz` (status, body).
async fn readyz_as(kube: &RealKube, sa: &str, config_path: &Path) -> (StatusCode, String) {
    let dir = tempfile::tempdir().unwrap();
    let token = service_account_token(kube, "selfcheck", sa, &format!("{sa}-token")).await;
    let env = mount_service_account(&dir.path().join("serviceaccount"), kube, &token);
    let config = kubegate_config::load(config_path).expect("config");
    let prepared = kubegate::app::prepare_in(&config, &env)
        .await
        .expect("prepares");
    let router = prepared.router();
    let running = prepared.start(router).await.expect("starts");
    let admin = running.admin_addr().expect("admin listener");
    let plain = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = Request::get(format!("http://{admin}/readyz"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = plain.request(request).await.expect("admin answers");
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("readyz body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_check_fails_readiness_on_a_missing_right_and_warns_of_excess_ones() {
    let kube = deployed().await;
    kubegate::app::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::rs256();
    let pki = TestPki::generate();
    // A uid claim is mapped: the gateway needs impersonate on uids.
    let config_path = in_cluster_config(dir.path(), &issuer, &pki, "uid_claim = \"sub\"");
    let config = kubegate_config::load(&config_path).expect("config");
    let exact = kubegate::ops::rbac::cluster_role_yaml(&config, "selfcheck-exact");
    assert!(exact.contains("\"uids\""), "{exact}");
    let binding = |sa: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
             metadata: {{name: selfcheck-{sa}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: selfcheck-{sa}}}\n\
             subjects: [{{kind: ServiceAccount, name: {sa}, namespace: selfcheck}}]\n"
        )
    };
    kube.admin_apply(&format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: selfcheck}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: missing, namespace: selfcheck}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: exact, namespace: selfcheck}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: broad, namespace: selfcheck}}
---
# The common mistake: users and groups, no uids.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: selfcheck-missing}}
rules:
- apiGroups: [""]
  resources: ["users", "groups"]
  verbs: ["impersonate"]
---
{exact}---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: selfcheck-broad}}
rules:
- apiGroups: [""]
  resources: ["users", "groups", "serviceaccounts"]
  verbs: ["impersonate"]
- apiGroups: ["authentication.k8s.io"]
  resources: ["uids"]
  verbs: ["impersonate"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list"]
---
{}---
{}---
{}"#,
        binding("missing"),
        binding("exact"),
        binding("broad"),
    ))
    .await;
    // The answers are cached for a minute: ask only once the bindings are in force. (Not
    // through uids: kubectl cannot name that resource to a v1.20 server, which does not
    // list it, and always answers no.)
    for (sa, right) in [
        ("missing", &["impersonate", "groups"][..]),
        ("exact", &["impersonate", "users"][..]),
        ("broad", &["list", "secrets"][..]),
    ] {
        kubegate_tests::eventually(&format!("{sa}'s binding in force"), async || {
            can_i(kube, "selfcheck", sa, right).await
        })
        .await;
    }

    let (status, body) = readyz_as(kube, "missing", &config_path).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("[+]upstream ok\n"), "{body}");
    assert!(
        body.contains(
            "[-]impersonation-rights failed: missing impersonate uids (authentication.k8s.io)\n"
        ),
        "{body}"
    );

    let (status, body) = readyz_as(kube, "exact", &config_path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("[+]impersonation-rights ok\n"), "{body}");
    // The reviews went with the gateway's own credential, impersonating nobody.
    let reviews = kube
        .wait_for_audit("the exact account's reviews", |e| {
            e["requestURI"] == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
                && e["user"]["username"] == "system:serviceaccount:selfcheck:exact"
                && e["stage"] == "ResponseComplete"
        })
        .await;
    for e in &reviews {
        assert!(e.get("impersonatedUser").is_none(), "{e}");
        assert_eq!(e["responseStatus"]["code"], 201, "{e}");
    }

    let (status, body) = readyz_as(kube, "broad", &config_path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(
            "[+]impersonation-rights ok (warning: holds rights no rule needs: get secrets (core), \
             list secrets (core), impersonate serviceaccounts (core))\n"
        ),
        "{body}"
    );
}
