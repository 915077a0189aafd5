//! The real kubectl (/usr/bin/kubectl) through the gateway, and the zero-setup dev mode.

use std::net::SocketAddr;

use kubegate::dev::{DevOptions, DevUpstream};
use kubegate_tests::{TestGateway, run_kubectl};

#[tokio::test]
async fn kubectl_get_pods_allowed_and_forbidden() {
    let gw = TestGateway::start().await;
    let alice = gw.client_kubeconfig("alice", &gw.issuer.token("alice", &["devs"]));
    let bob = gw.client_kubeconfig("bob", &gw.issuer.token("bob", &["guests"]));

    let (ok, stdout, stderr) = run_kubectl(&alice, &["get", "pods", "-n", "dev"]).await;
    assert!(ok, "alice may list pods in dev: {stderr}");
    assert!(!stderr.contains("Forbidden"), "{stderr}");
    let _ = stdout;
    let listed = gw
        .sandbox
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.starts_with("/api/v1/namespaces/dev/pods"))
        .collect::<Vec<_>>();
    assert!(!listed.is_empty(), "kubectl's list reached the upstream");
    assert!(listed.iter().all(|r| r.impersonate_user() == Some("alice")));

    let (ok, _, stderr) = run_kubectl(&bob, &["get", "pods", "-n", "dev"]).await;
    assert!(!ok, "bob must be refused");
    assert!(stderr.contains("Forbidden"), "{stderr}");
    assert!(
        stderr.contains("kubegate"),
        "the gateway's own message: {stderr}"
    );
    assert!(
        stderr.contains(r#"User "bob" cannot list resource "pods""#),
        "{stderr}"
    );
}

#[tokio::test]
async fn kubectl_create_get_delete_through_the_gateway() {
    let gw = TestGateway::start().await;
    let alice = gw.client_kubeconfig("alice", &gw.issuer.token("alice", &["devs"]));
    let manifest = gw.dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: dev\nspec:\n  containers:\n  - name: web\n    image: nginx\n",
    )
    .unwrap();
    let manifest = manifest.to_str().unwrap();
    let (ok, _, stderr) =
        run_kubectl(&alice, &["create", "-f", manifest, "--validate=false"]).await;
    assert!(ok, "create: {stderr}");
    let (ok, stdout, stderr) =
        run_kubectl(&alice, &["get", "pod", "web", "-n", "dev", "-o", "name"]).await;
    assert!(ok, "get: {stderr}");
    assert_eq!(stdout.trim(), "pod/web");
    let (ok, _, stderr) = run_kubectl(
        &alice,
        &["delete", "pod", "web", "-n", "dev", "--wait=false"],
    )
    .await;
    assert!(ok, "delete: {stderr}");
    let (ok, _, stderr) = run_kubectl(&alice, &["get", "pod", "web", "-n", "dev"]).await;
    assert!(!ok && stderr.contains("NotFound"), "{stderr}");
}

#[tokio::test]
async fn dev_mode_works_with_no_setup() {
    let env = kubegate::dev::start(DevOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        force_sandbox: true,
        dir: None,
        id_token_lifetime: kubegate::dev::issuer::DEFAULT_ID_TOKEN_LIFETIME,
    })
    .await
    .expect("dev mode starts");
    assert!(matches!(env.upstream, DevUpstream::Sandbox(_)));
    let text = env.instructions();
    assert!(
        text.contains("kubectl --context alice get pods -n dev"),
        "{text}"
    );
    assert!(text.contains("curl --cacert"), "{text}");
    assert!(text.contains(&env.kubeconfig.display().to_string()));

    let kc = &env.kubeconfig;
    let (ok, _, stderr) =
        run_kubectl(kc, &["--context", "alice", "get", "pods", "-n", "dev"]).await;
    assert!(ok, "alice: {stderr}");
    let (ok, _, stderr) = run_kubectl(kc, &["--context", "bob", "get", "pods", "-n", "dev"]).await;
    assert!(!ok && stderr.contains("Forbidden"), "bob: {stderr}");

    // The generated configuration passes the same check `kubegate check-config` runs.
    let config = kubegate_config::load(&env.config_file).expect("generated config loads");
    kubegate::app::check(&config)
        .await
        .expect("generated config checks");
    env.running.shutdown().await.unwrap();
}
