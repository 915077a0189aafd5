//! The credential plugin (`kubegate get-token`, `kubeconfig`, `login`, `logout`) against
//! the real OpenID provider (tests/oidc) and a real gateway, driven by the real kubectl.
//! The "browser" is tests/oidc/browser.mjs, which fills the provider's sign-in form as a
//! person would; the provider counts the grants it served, so "one sign-in for eight
//! kubectl runs" is counted where it happens.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use kubegate_tests::oidc_provider::{self, PLUGIN_CLIENT_ID, Provider, start_provider};
use kubegate_tests::{GatewayOptions, TestGateway, kubectl, kubegate_binary};
use serde_json::Value;

const AUTHCODE: &str = "authorization_code";
const REFRESH: &str = "refresh_token";
const DEVICE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A provider, a gateway trusting it, a private HOME with `kubegate` on PATH and the
/// kubeconfig `kubegate kubeconfig` printed.
struct Setup {
    provider: Provider,
    gw: TestGateway,
    home: tempfile::TempDir,
    bin: PathBuf,
    kubeconfig: PathBuf,
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Setup {
    async fn start() -> Self {
        let provider = start_provider();
        let gw = TestGateway::start_with(GatewayOptions {
            oidc_toml: Some(format!(
                "[[auth.oidc]]\nissuer = \"{}\"\ninsecure_http = true\naudiences = [\"{PLUGIN_CLIENT_ID}\"]\ngroups_claim = \"groups\"\nalgorithms = [\"RS256\"]\n",
                provider.issuer
            )),
            ..GatewayOptions::default()
        })
        .await;
        let home = tempfile::tempdir().expect("home");
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        // kubectl runs the bare `kubegate` from PATH, as on a user's machine.
        let bin = home.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(kubegate_binary(), bin.join("kubegate")).unwrap();
        let ca = home.path().join("gateway-ca.pem");
        std::fs::write(&ca, &gw.pki.ca_pem).unwrap();
        let mut setup = Setup {
            provider,
            gw,
            home,
            bin,
            kubeconfig: PathBuf::new(),
        };
        let server = setup.gw.url();
        let issuer = setup.provider.issuer.clone();
        let printed = setup
            .kubegate(
                &[
                    "kubeconfig",
                    "--server",
                    &server,
                    "--certificate-authority",
                    ca.to_str().unwrap(),
                    "--oidc-issuer-url",
                    &issuer,
                    "--oidc-client-id",
                    PLUGIN_CLIENT_ID,
                    "--oidc-extra-scope",
                    "offline_access",
                ],
                &[],
            )
            .await;
        assert!(printed.ok, "kubegate kubeconfig: {}", printed.stderr);
        assert!(!printed.stdout.contains("token:"), "{}", printed.stdout);
        setup.kubeconfig = setup.home.path().join("kubeconfig");
        std::fs::write(&setup.kubeconfig, &printed.stdout).unwrap();
        setup
    }

    fn cache_dir(&self) -> PathBuf {
        self.home.path().join(".kube/cache/kubegate")
    }

    fn cache_file(&self) -> PathBuf {
        let scopes = ["openid".to_string(), "offline_access".to_string()];
        let key = kubegate::login::cache::key(&self.provider.issuer, PLUGIN_CLIENT_ID, &scopes);
        self.cache_dir().join(format!("{key}.json"))
    }

    fn cached(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.cache_file()).expect("a cache file"))
            .expect("cache JSON")
    }

    /// Makes the cached ID token count as expired (the refresh token stays).
    fn expire_cache(&self) {
        let mut cached = self.cached();
        cached["expires_at"] = Value::from(1);
        std::fs::write(self.cache_file(), cached.to_string()).unwrap();
    }

    fn browser_log(&self) -> PathBuf {
        self.home.path().join("browser.log")
    }

    fn browser_runs(&self) -> usize {
        std::fs::read_to_string(self.browser_log())
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn env(&self, command: &mut tokio::process::Command) {
        command
            .env_clear()
            .env("HOME", self.home.path())
            .env(
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", self.bin.display()),
            )
            .env("KUBECONFIG", &self.kubeconfig)
            .env("BROWSER", oidc_provider::browser_script())
            .env("KUBEGATE_TEST_BROWSER_LOG", self.browser_log())
            .stdin(Stdio::null())
            .kill_on_drop(true);
    }

    async fn output(mut command: tokio::process::Command) -> Run {
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("finished within 60 s")
            .expect("runs");
        Run {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs `kubegate args` with extra environment variables.
    async fn kubegate(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = tokio::process::Command::new(self.bin.join("kubegate"));
        self.env(&mut command);
        command.args(args).envs(env.iter().copied());
        Self::output(command).await
    }

    /// `kubegate get-token` for the fixture's plugin client.
    async fn get_token(&self, extra: &[&str], env: &[(&str, &str)]) -> Run {
        let mut args = vec![
            "get-token",
            "--oidc-issuer-url",
            &self.provider.issuer,
            "--oidc-client-id",
            PLUGIN_CLIENT_ID,
            "--oidc-extra-scope",
            "offline_access",
            "--authentication-timeout",
            "20s",
        ];
        args.extend(extra);
        self.kubegate(&args, env).await
    }

    /// kubectl with the plugin kubeconfig; `tty`: under `script`, so kubectl sees a
    /// terminal and tells the plugin a person is there (interactiveMode IfAvailable).
    async fn kubectl(&self, args: &[&str], tty: bool) -> Run {
        let mut command = if tty {
            let line = std::iter::once(kubectl().display().to_string())
                .chain(args.iter().map(|a| a.to_string()))
                .collect::<Vec<_>>()
                .join(" ");
            let mut c = tokio::process::Command::new("script");
            c.args(["-qec", &line, "/dev/null"]);
            c
        } else {
            let mut c = tokio::process::Command::new(kubectl());
            c.args(args);
            c
        };
        self.env(&mut command);
        Self::output(command).await
    }
}

/// The token of an ExecCredential printed by get-token (which must be all of stdout).
fn credential_token(run: &Run) -> String {
    assert!(run.ok, "get-token failed: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout is one ExecCredential: {:?}",
        run.stdout
    );
    let v: Value = serde_json::from_str(lines[0]).expect("ExecCredential JSON");
    assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(v["kind"], "ExecCredential");
    let expiry = v["status"]["expirationTimestamp"].as_str().expect("expiry");
    assert!(
        expiry.len() == 20 && expiry.ends_with('Z') && expiry.as_bytes()[10] == b'T',
        "RFC 3339 UTC expiry: {expiry}"
    );
    v["status"]["token"].as_str().expect("token").to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

const NON_INTERACTIVE: &str = r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}"#;

#[tokio::test]
async fn get_token_signs_in_with_the_browser_and_the_gateway_accepts_the_token() {
    let s = Setup::start().await;
    let run = s.get_token(&[], &[]).await;
    let token = credential_token(&run);
    assert!(
        run.stderr.contains("to sign in at"),
        "URL shown on stderr: {}",
        run.stderr
    );
    assert_eq!(s.provider.grants(AUTHCODE).await, 1);
    let response = s.gw.get("/api/v1/namespaces/dev/pods", &token).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let listed =
        s.gw.sandbox
            .requests()
            .into_iter()
            .last()
            .expect("forwarded");
    assert_eq!(
        listed.impersonate_user(),
        Some("alice"),
        "the ID token's sub"
    );

    // Private on disk, and used again without the provider.
    assert_eq!(mode(&s.cache_dir()), 0o700);
    assert_eq!(mode(&s.cache_file()), 0o600);
    let again = credential_token(&s.get_token(&[], &[]).await);
    assert_eq!(again, token);
    assert_eq!(s.provider.grants(AUTHCODE).await, 1);
    assert_eq!(s.provider.grants(REFRESH).await, 0);
    assert_eq!(s.browser_runs(), 1);
}

#[tokio::test]
async fn eight_kubectl_runs_share_one_sign_in_then_one_refresh() {
    let s = Setup::start().await;
    let runs = futures_util::future::join_all(
        (0..8).map(|_| s.kubectl(&["get", "pods", "-n", "dev"], true)),
    )
    .await;
    for run in &runs {
        assert!(run.ok, "kubectl: {} {}", run.stdout, run.stderr);
    }
    assert_eq!(
        s.provider.grants(AUTHCODE).await,
        1,
        "one sign-in at the provider"
    );
    assert_eq!(s.browser_runs(), 1, "one browser window");
    let listed =
        s.gw.sandbox
            .requests()
            .into_iter()
            .filter(|r| r.path_and_query.starts_with("/api/v1/namespaces/dev/pods"))
            .count();
    assert!(listed >= 8, "each kubectl reached the cluster ({listed})");

    s.expire_cache();
    // No person needed for a refresh: kubectl without a terminal.
    let runs = futures_util::future::join_all(
        (0..8).map(|_| s.kubectl(&["get", "pods", "-n", "dev"], false)),
    )
    .await;
    for run in &runs {
        assert!(run.ok, "kubectl after expiry: {}", run.stderr);
    }
    assert_eq!(
        s.provider.grants(REFRESH).await,
        1,
        "one refresh at the provider"
    );
    assert_eq!(s.provider.grants(AUTHCODE).await, 1);
}

#[tokio::test]
async fn a_short_token_lifetime_forces_refreshes() {
    let s = Setup::start().await;
    // 30 s is within the plugin's margin: every run after the sign-in must refresh.
    s.provider.set_id_token_ttl(30).await;
    credential_token(&s.get_token(&[], &[]).await);
    let first = s.cached()["refresh_token"].clone();
    credential_token(&s.get_token(&[], &[]).await);
    let second = s.cached()["refresh_token"].clone();
    let third = credential_token(&s.get_token(&[], &[]).await);
    assert_eq!(s.provider.grants(AUTHCODE).await, 1);
    assert_eq!(s.provider.grants(REFRESH).await, 2);
    // Rotation: each refresh stored the new refresh token.
    assert_ne!(first, second);
    assert_ne!(second, s.cached()["refresh_token"]);
    let response = s.gw.get("/api/v1/namespaces/dev/pods", &third).await;
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_refresh_token_without_a_person_names_the_command() {
    let s = Setup::start().await;
    credential_token(&s.get_token(&[], &[]).await);
    let refresh = s.cached()["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    let revocation = s.provider.discovery("revocation_endpoint").await;
    let (status, body) = oidc_provider::post(
        &revocation,
        &format!("token={refresh}&token_type_hint=refresh_token&client_id={PLUGIN_CLIENT_ID}"),
    )
    .await;
    assert!(status.is_success(), "{status} {body}");
    s.expire_cache();
    let run = s
        .get_token(&[], &[("KUBERNETES_EXEC_INFO", NON_INTERACTIVE)])
        .await;
    assert!(!run.ok);
    assert!(run.stdout.is_empty(), "nothing on stdout: {}", run.stdout);
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("kubectl runs non-interactively; run: kubegate login --oidc-issuer-url="),
        "{}",
        run.stderr
    );
    assert!(last.contains("the refresh token was refused"), "{last}");
    assert_eq!(s.browser_runs(), 1, "no sign-in was started");
}

#[tokio::test]
async fn the_device_flow_is_completed_in_the_browser() {
    let s = Setup::start().await;
    let run = s.get_token(&["--grant-type", "device-code"], &[]).await;
    let token = credential_token(&run);
    assert!(run.stderr.contains("and enter the code"), "{}", run.stderr);
    assert_eq!(s.provider.grants(DEVICE).await, 1);
    assert_eq!(s.provider.grants(AUTHCODE).await, 0);
    let response = s.gw.get("/api/v1/namespaces/dev/pods", &token).await;
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn logout_deletes_and_revokes_then_kubectl_needs_a_sign_in() {
    let s = Setup::start().await;
    let run = s.kubectl(&["get", "pods", "-n", "dev"], true).await;
    assert!(run.ok, "{} {}", run.stdout, run.stderr);
    let refresh = s.cached()["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    let out = s.kubegate(&["logout", "--context", "kubegate"], &[]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("revoked"), "{}", out.stderr);
    assert!(!s.cache_file().exists());
    let (status, body) = oidc_provider::post(
        &format!("{}/token", s.provider.issuer),
        &format!("grant_type=refresh_token&refresh_token={refresh}&client_id={PLUGIN_CLIENT_ID}"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "revoked at the provider: {body}"
    );
    let run = s.kubectl(&["get", "pods", "-n", "dev"], false).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("run: kubegate login"), "{}", run.stderr);
}

#[tokio::test]
async fn login_writes_the_entry_beside_others() {
    let s = Setup::start().await;
    let config = s.home.path().join("merged");
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: Config\ncurrent-context: other\nclusters:\n- name: other\n  cluster:\n    server: https://other\ncontexts:\n- name: other\n  context:\n    cluster: other\n    user: other\nusers:\n- name: other\n  user:\n    token: keep-me\n",
    )
    .unwrap();
    let ca = s.home.path().join("gateway-ca.pem");
    let out = s
        .kubegate(
            &[
                "login",
                "--server",
                &s.gw.url(),
                "--certificate-authority",
                ca.to_str().unwrap(),
                "--context",
                "gw",
                "--oidc-issuer-url",
                &s.provider.issuer,
                "--oidc-client-id",
                PLUGIN_CLIENT_ID,
                "--oidc-extra-scope",
                "offline_access",
            ],
            &[("KUBECONFIG", config.to_str().unwrap())],
        )
        .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(s.provider.grants(AUTHCODE).await, 1);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("keep-me"), "{text}");
    let mut command = tokio::process::Command::new(kubectl());
    s.env(&mut command);
    command
        .env("KUBECONFIG", &config)
        .args(["--context", "gw", "get", "pods", "-n", "dev"]);
    let run = Setup::output(command).await;
    assert!(
        run.ok,
        "signed in already, so no person needed: {}",
        run.stderr
    );
    assert_eq!(s.provider.grants(AUTHCODE).await, 1);
}

#[tokio::test]
async fn a_taken_callback_port_falls_to_the_next_address() {
    let s = Setup::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let first = format!("127.0.0.1:{port}");
    let run = s
        .get_token(
            &[
                "--listen-address",
                &first,
                "--listen-address",
                "127.0.0.1:0",
            ],
            &[],
        )
        .await;
    credential_token(&run);
    let log = std::fs::read_to_string(s.browser_log()).unwrap();
    assert!(
        log.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "{log}"
    );
    assert!(!log.contains(&format!("127.0.0.1%3A{port}%2F")), "{log}");
}

/// Each failure: a specific message on stderr, nothing on stdout, no token file.
async fn refused(s: &Setup, run: Run, message: &str) {
    assert!(!run.ok, "must fail: {}", run.stdout);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains(message),
        "expected {message:?} in: {}",
        run.stderr
    );
    let _ = s;
}

#[tokio::test]
async fn bad_input_gets_a_specific_error_and_stores_nothing() {
    let s = Setup::start().await;

    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}", down.local_addr().unwrap().port());
    drop(down);
    let run = s
        .kubegate(
            &[
                "get-token",
                "--oidc-issuer-url",
                &dead,
                "--oidc-client-id",
                PLUGIN_CLIENT_ID,
            ],
            &[],
        )
        .await;
    refused(&s, run, "cannot reach the OpenID provider").await;

    let run = s
        .kubegate(
            &[
                "get-token",
                "--oidc-issuer-url",
                &s.provider.issuer,
                "--oidc-client-id",
                "no-such-client",
                "--grant-type",
                "device-code",
            ],
            &[],
        )
        .await;
    refused(&s, run, "invalid_client").await;

    let run = s
        .get_token(&[], &[("KUBEGATE_TEST_BROWSER_MODE", "no-state")])
        .await;
    refused(&s, run, "the sign-in callback carried no state").await;
    let run = s
        .get_token(&[], &[("KUBEGATE_TEST_BROWSER_MODE", "wrong-state")])
        .await;
    refused(&s, run, "carried a state this sign-in did not send").await;
    assert!(!s.cache_file().exists(), "no token written");
    assert_eq!(s.provider.grants(AUTHCODE).await, 0);

    let run = s.get_token(&["--listen-address", "0.0.0.0:0"], &[]).await;
    refused(&s, run, "is not a loopback address").await;

    // A corrupt cache file is reported, not used and not overwritten.
    std::fs::write(s.cache_file(), "{not json").unwrap();
    std::fs::set_permissions(s.cache_file(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = s.get_token(&[], &[]).await;
    refused(&s, run, "is corrupt").await;
    assert_eq!(
        std::fs::read_to_string(s.cache_file()).unwrap(),
        "{not json"
    );
    std::fs::remove_file(s.cache_file()).unwrap();

    std::fs::set_permissions(s.cache_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = s.get_token(&[], &[]).await;
    refused(&s, run, "is accessible by other users (mode 755)").await;
    assert!(!s.cache_file().exists());
    assert_eq!(s.provider.grants(AUTHCODE).await, 0);
    assert_eq!(
        s.browser_runs(),
        2,
        "only the two state probes opened the browser"
    );
}
