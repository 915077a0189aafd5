//! The real kubectl against the sandbox. kubectl is required: without it these tests fail,
//! they never skip. `KUBEGATE_KUBECTL` may point at another binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{Protocol, TestClient, pod, start};
use kubegate_sandbox::Sandbox;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

fn kubectl_path() -> PathBuf {
    let path = std::env::var_os("KUBEGATE_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/kubectl"));
    assert!(
        path.is_file(),
        "kubectl not found at {}: these tests need the real kubectl (1.32); install it or set \
         KUBEGATE_KUBECTL",
        path.display()
    );
    path
}

/// kubectl bound to one sandbox: its own kubeconfig and cache directory, passed only in the
/// child's environment and flags.
struct Kubectl {
    binary: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(sandbox: &Sandbox) -> Self {
        let binary = kubectl_path();
        let dir = tempfile::tempdir().unwrap();
        sandbox
            .write_kubeconfig(&dir.path().join("kubeconfig"))
            .unwrap();
        Kubectl { binary, dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        let output = self.command(args).output();
        tokio::time::timeout(COMMAND_TIMEOUT, output)
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl starts")
    }

    /// Runs kubectl, expects success, returns stdout and stderr.
    async fn ok(&self, args: &[&str]) -> (String, String) {
        let output = self.run(args).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "kubectl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        (stdout, stderr)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn kubectl_gets_creates_and_deletes() {
    let sandbox = start().await;
    let kubectl = Kubectl::new(&sandbox);

    let (version, _) = kubectl.ok(&["version", "-o", "json"]).await;
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.32.0-sandbox");

    let (namespaces, _) = kubectl.ok(&["get", "ns"]).await;
    let lines: Vec<Vec<&str>> = namespaces
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "STATUS", "AGE"], "{namespaces}");
    let names: Vec<&str> = lines[1..].iter().map(|l| l[0]).collect();
    assert_eq!(names, ["default", "dev", "kube-system"]);
    assert!(lines[1..].iter().all(|l| l[1] == "Active"));

    let (stdout, stderr) = kubectl.ok(&["get", "pods", "-n", "dev"]).await;
    assert_eq!(stdout, "");
    assert_eq!(stderr.trim(), "No resources found in dev namespace.");

    let manifest = kubectl.file(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: dev\n  labels:\n    app: web\n\
         spec:\n  containers:\n  - name: nginx\n    image: nginx:1.27\n",
    );
    // Default validation: kubectl first checks the sandbox's OpenAPI v3 for fieldValidation.
    let (created, _) = kubectl.ok(&["create", "-f", path_str(&manifest)]).await;
    assert_eq!(created.trim(), "pod/web created");

    let (pods, _) = kubectl.ok(&["get", "pods", "-n", "dev"]).await;
    let lines: Vec<Vec<&str>> = pods
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{pods}"
    );
    assert_eq!(lines[1][..4], ["web", "1/1", "Running", "0"], "{pods}");
    assert_eq!(lines.len(), 2);

    let (json, _) = kubectl
        .ok(&["get", "pod", "web", "-n", "dev", "-o", "json"])
        .await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["kind"], "Pod");
    assert_eq!(json["metadata"]["namespace"], "dev");
    assert_eq!(json["metadata"]["labels"]["app"], "web");
    assert_eq!(json["status"]["phase"], "Running");

    let (selected, _) = kubectl
        .ok(&["get", "pods", "-A", "-l", "app=web", "-o", "name"])
        .await;
    assert_eq!(selected.trim(), "pod/web");

    let (deleted, _) = kubectl.ok(&["delete", "pod", "web", "-n", "dev"]).await;
    assert_eq!(deleted.trim(), "pod \"web\" deleted");
    let (_, stderr) = kubectl.ok(&["get", "pods", "-n", "dev"]).await;
    assert_eq!(stderr.trim(), "No resources found in dev namespace.");

    let missing = kubectl.run(&["get", "pod", "web", "-n", "dev"]).await;
    assert!(!missing.status.success());
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "Error from server (NotFound): pods \"web\" not found"
    );

    let recorded = sandbox.requests();
    assert!(recorded.iter().all(|r| r.authorized));
    assert!(recorded.iter().any(
        |r| r.method == "POST" && r.path_and_query.starts_with("/api/v1/namespaces/dev/pods?")
    ));
}

#[tokio::test]
async fn kubectl_typed_creates_and_whoami() {
    let sandbox = start().await;
    let kubectl = Kubectl::new(&sandbox);

    // These commands send protobuf bodies.
    let (out, _) = kubectl
        .ok(&[
            "create",
            "configmap",
            "cfg",
            "-n",
            "dev",
            "--from-literal=a=b",
            "--from-literal=c=d",
        ])
        .await;
    assert_eq!(out.trim(), "configmap/cfg created");
    let (out, _) = kubectl
        .ok(&[
            "create",
            "secret",
            "generic",
            "sec",
            "-n",
            "dev",
            "--from-literal=pw=hunter2",
        ])
        .await;
    assert_eq!(out.trim(), "secret/sec created");
    let (out, _) = kubectl.ok(&["create", "namespace", "scratch"]).await;
    assert_eq!(out.trim(), "namespace/scratch created");

    let (cms, _) = kubectl.ok(&["get", "cm", "-n", "dev"]).await;
    let row: Vec<&str> = cms.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..2], ["cfg", "2"], "{cms}");
    let (secrets, _) = kubectl.ok(&["get", "secrets", "-n", "dev"]).await;
    let row: Vec<&str> = secrets.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["sec", "Opaque", "1"], "{secrets}");
    let (pw, _) = kubectl
        .ok(&[
            "get",
            "secret",
            "sec",
            "-n",
            "dev",
            "-o",
            "jsonpath={.data.pw}",
        ])
        .await;
    assert_eq!(pw, "aHVudGVyMg==");

    let (out, _) = kubectl
        .ok(&["label", "cm", "cfg", "-n", "dev", "team=blue"])
        .await;
    assert_eq!(out.trim(), "configmap/cfg labeled");
    let (out, _) = kubectl
        .ok(&["get", "cm", "-n", "dev", "-l", "team=blue", "-o", "name"])
        .await;
    assert_eq!(out.trim(), "configmap/cfg");

    let (whoami, _) = kubectl
        .ok(&[
            "auth",
            "whoami",
            "--as",
            "alice",
            "--as-group",
            "devs",
            "-o",
            "json",
        ])
        .await;
    let whoami: serde_json::Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(whoami["status"]["userInfo"]["username"], "alice");
    assert_eq!(
        whoami["status"]["userInfo"]["groups"],
        serde_json::json!(["devs", "system:authenticated"])
    );

    let (out, _) = kubectl.ok(&["delete", "namespace", "scratch"]).await;
    assert_eq!(out.trim(), "namespace \"scratch\" deleted");
}

#[tokio::test]
async fn kubectl_get_watch_prints_new_rows() {
    let sandbox = start().await;
    let kubectl = Kubectl::new(&sandbox);
    let mut child = kubectl
        .command(&["get", "pods", "-n", "dev", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    // Create the pod once kubectl's watch is open, so the row comes from the live stream.
    let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
    while !sandbox
        .requests()
        .iter()
        .any(|r| r.path_and_query.contains("watch=true"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "kubectl never started watching"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = TestClient::new(&sandbox, Protocol::Any);
    client
        .post_json("/api/v1/namespaces/dev/pods", &pod("late"))
        .await;

    let mut seen = Vec::new();
    let found = tokio::time::timeout(COMMAND_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.starts_with("late ") {
                return line;
            }
        }
        panic!("kubectl exited without printing the new pod: {seen:?}");
    })
    .await
    .expect("kubectl printed the new pod in time");
    let cells: Vec<&str> = found.split_whitespace().collect();
    assert_eq!(cells[..4], ["late", "1/1", "Running", "0"]);
    child.kill().await.unwrap();
}
