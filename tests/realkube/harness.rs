//! A real etcd + kube-apiserver for kubegate's test binaries, driven through
//! `tests/realkube/cluster.py` (see the README beside this file). Included with
//! `#[path = "../realkube/harness.rs"] mod harness;` by each test file that needs a
//! cluster; each binary uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kubegate_tests::run_kubectl;
use serde_json::Value;

/// A running etcd + kube-apiserver, driven through `cluster.py`'s stdin. Dropping it (or
/// this process ending, however it ends) closes that stdin, and the script stops both
/// servers and removes their directory.
pub struct RealKube {
    info: Value,
    control: Mutex<Control>,
}

struct Control {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// What cluster.py printed on stderr so far, for failure messages.
    stderr: Arc<Mutex<String>>,
}

fn realkube_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("realkube")
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The cached kube-apiserver, building it first when this machine has none.
/// `KUBEGATE_KUBE_APISERVER` names another binary to use instead (it must exist).
fn apiserver_binary() -> Result<PathBuf, String> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("KUBEGATE_KUBE_APISERVER") {
                let path = PathBuf::from(path);
                return if path.is_file() {
                    Ok(path)
                } else {
                    Err(format!(
                        "KUBEGATE_KUBE_APISERVER={} is not a file",
                        path.display()
                    ))
                };
            }
            let script = realkube_dir().join("build-apiserver.sh");
            let started = Instant::now();
            eprintln!(
                "realkube: {} (builds kube-apiserver the first time on a machine; progress below)",
                script.display()
            );
            let output = Command::new("bash")
                .arg(&script)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !output.status.success() {
                return Err(format!(
                    "{} failed ({}): see its messages above; the real-cluster tests need \
                     kube-apiserver built from Debian's kubernetes source package",
                    script.display(),
                    output.status
                ));
            }
            let stdout = String::from_utf8_lossy(&output.stdout);
            let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
            if !path.is_file() {
                return Err(format!(
                    "{} printed {stdout:?}, which is not a file",
                    script.display()
                ));
            }
            eprintln!(
                "realkube: kube-apiserver {} ready after {:.1} s",
                path.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(path)
        })
        .clone()
}

impl RealKube {
    /// Starts a fresh etcd + kube-apiserver (building the server first if needed).
    pub fn start() -> Result<RealKube, String> {
        let apiserver = apiserver_binary()?;
        let started = Instant::now();
        let script = realkube_dir().join("cluster.py");
        let mut child = Command::new(python())
            .arg(&script)
            .arg("--apiserver")
            .arg(&apiserver)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut control = Control {
            child,
            stdin,
            stdout,
            stderr,
        };
        let info = control.read_answer().map_err(|e| {
            format!(
                "the real API server did not start: {e}\n{}",
                control.stderr_text()
            )
        })?;
        eprintln!(
            "realkube: etcd + kube-apiserver at {} up in {:.1} s",
            info["server"].as_str().unwrap_or("?"),
            started.elapsed().as_secs_f64()
        );
        Ok(RealKube {
            info,
            control: Mutex::new(control),
        })
    }

    pub fn field(&self, name: &str) -> &str {
        self.info[name]
            .as_str()
            .unwrap_or_else(|| panic!("cluster.py reported no {name}: {}", self.info))
    }

    pub fn server(&self) -> &str {
        self.field("server")
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        PathBuf::from(self.field("admin_kubeconfig"))
    }

    pub fn gateway_kubeconfig(&self) -> PathBuf {
        PathBuf::from(self.field("gateway_kubeconfig"))
    }

    /// Sends a command to cluster.py and waits for its answer.
    pub fn command(&self, command: &str) {
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let result = control
            .stdin
            .as_mut()
            .ok_or_else(|| "cluster.py's stdin is closed".to_string())
            .and_then(|stdin| {
                writeln!(stdin, "{command}")
                    .and_then(|()| stdin.flush())
                    .map_err(|e| format!("cannot write to cluster.py: {e}"))
            })
            .and_then(|()| control.read_answer());
        match result {
            Ok(answer) if answer["ok"] == true => {}
            Ok(answer) => panic!("cluster.py {command}: {answer}"),
            Err(e) => panic!("cluster.py {command}: {e}\n{}", control.stderr_text()),
        }
    }

    pub fn stop_apiserver(&self) {
        self.command("stop-apiserver");
    }

    pub fn start_apiserver(&self) {
        self.command("start-apiserver");
    }

    /// Every event in the API server's audit log so far.
    pub fn audit_events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.field("audit_log")).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (up to 15 s) until the audit log holds an event for which `pred` holds, and
    /// returns all such events.
    pub async fn wait_for_audit(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found: Vec<Value> = self.audit_events().into_iter().filter(&pred).collect();
            if !found.is_empty() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no audit event for {what} within 15 s in {}",
                self.field("audit_log")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs kubectl as the cluster admin (directly, not through the gateway).
    pub async fn admin_kubectl(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = run_kubectl(&self.admin_kubeconfig(), args).await;
        assert!(ok, "admin kubectl {args:?} failed: {stderr}");
        stdout
    }

    /// Applies `yaml` as the cluster admin.
    pub async fn admin_apply(&self, yaml: &str) {
        let file = tempfile::NamedTempFile::with_suffix(".yaml").expect("temp manifest");
        std::fs::write(file.path(), yaml).expect("write manifest");
        let path = file.path().to_str().expect("utf-8 path").to_string();
        self.admin_kubectl(&["apply", "-f", &path]).await;
    }
}

impl Control {
    /// Reads one JSON line from cluster.py.
    fn read_answer(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => {
                // Its output is closed: it is on its way out.
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut status = None;
                while status.is_none() && Instant::now() < deadline {
                    status = self.child.try_wait().ok().flatten();
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(format!(
                    "cluster.py exited ({})",
                    status.map_or("no exit status yet".to_string(), |s| s.to_string())
                ))
            }
            Ok(_) => serde_json::from_str(&line)
                .map_err(|e| format!("cluster.py answered {line:?}: {e}")),
            Err(e) => Err(format!("cannot read from cluster.py: {e}")),
        }
    }

    fn stderr_text(&self) -> String {
        // Give the reader thread a moment to collect the last words of a dying script.
        std::thread::sleep(Duration::from_millis(200));
        let text = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        format!("cluster.py's messages:\n{text}")
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // End of input: cluster.py stops kube-apiserver and etcd and removes its files.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RealKube {
    /// Runs kubectl as the cluster admin, returning (success, stdout, stderr).
    pub async fn admin_kubectl_result(&self, args: &[&str]) -> (bool, String, String) {
        run_kubectl(&self.admin_kubeconfig(), args).await
    }

    /// The cluster's CA bundle (PEM file).
    pub fn ca_file(&self) -> PathBuf {
        PathBuf::from(self.field("ca_file"))
    }

    /// The API server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", self.server()))
    }
}

/// Starts a cluster of its own for the calling test binary, or panics with the reason.
pub fn start_or_panic() -> RealKube {
    tokio::task::block_in_place(RealKube::start)
        .unwrap_or_else(|e| panic!("kubegate's real-cluster tests need a kube-apiserver: {e}"))
}
