//! The credential plugin (`kubegate get-token`, `kubeconfig`, `login`, `logout`) against
//! the real OpenID provider (tests/oidc) and a real gateway, driven by the real kubectl.
//! The browser is headless Chromium (Debian's `chromium`, tests/browser/plugin_signin.mjs
//! as `--browser-command`, screenshots under target/tmp/credential-plugin/) for the flows
//! a person sees: kubectl's sign-in, the device flow, the keyboard flow and a replayed
//! code. Where only the protocol matters (refreshes, logout, bad input) it is
//! tests/oidc/browser.mjs, which fills the same forms over plain HTTP in a fraction of
//! the time. The provider counts the grants it served, so "one sign-in for eight kubectl
//! runs" is counted where it happens.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use kubegate_tests::browser::{browser_driver, chromium};
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
    chromium: Option<Chromium>,
}

/// Headless Chromium as the `--browser-command`.
struct Chromium {
    /// Debian's chromium.
    binary: PathBuf,
    /// tests/browser/plugin_signin.mjs.
    script: PathBuf,
    /// Where its screenshots go (a test artifact).
    shots: PathBuf,
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Setup {
    /// With the scripted browser as `$BROWSER`.
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// With headless Chromium as the `--browser-command` of get-token and of the
    /// kubeconfig's exec user (and `$BROWSER` a program that fails, so the flag is what
    /// opens the page); screenshots go to target/tmp/credential-plugin/`test`.
    async fn with_chromium(test: &str) -> Self {
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("credential-plugin")
            .join(test);
        let _ = std::fs::remove_dir_all(&shots);
        let chromium = Chromium {
            binary: chromium(),
            script: browser_driver().join("plugin_signin.mjs"),
            shots,
        };
        let setup = Self::start_with(Some(chromium)).await;
        let flag = setup.browser_flag().expect("chromium");
        setup.add_plugin_args(&[&flag]);
        setup
    }

    /// `--browser-command=...` for Chromium, when this setup has it.
    fn browser_flag(&self) -> Option<String> {
        self.chromium
            .as_ref()
            .map(|c| format!("--browser-command={}", c.script.display()))
    }

    /// Adds `args` to the kubeconfig's `get-token` arguments.
    fn add_plugin_args(&self, args: &[&str]) {
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let line = text
            .lines()
            .find(|l| l.trim() == "- get-token")
            .expect("the exec args in the kubeconfig")
            .to_string();
        let indent = &line[..line.len() - line.trim_start().len()];
        let mut with = line.clone();
        for arg in args {
            with.push_str(&format!("\n{indent}- {arg}"));
        }
        std::fs::write(&self.kubeconfig, text.replacen(&line, &with, 1)).unwrap();
    }

    /// The gateway forwarded its last request as alice (the ID token's `sub`).
    fn assert_last_request_was_alices(&self) {
        let last = self.gw.sandbox.requests().into_iter().last();
        let last = last.expect("a forwarded request");
        assert_eq!(last.impersonate_user(), Some("alice"), "the ID token's sub");
    }

    /// Waits for the `count` screenshots Chromium writes of `page` (a browser outlives a
    /// kubectl run whose plugin it answered, so they may come a little after): each a real
    /// rendering, more than a blank page's few hundred bytes.
    async fn screenshots(&self, page: &str, count: usize) {
        let dir = &self.chromium.as_ref().expect("chromium").shots;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let shots: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
                .map(|d| d.filter_map(Result::ok).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.file_name().to_string_lossy().contains(page))
                .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect();
            if shots.len() == count && shots.iter().all(|(_, len)| *len > 3_000) {
                eprintln!("screenshots of {page}: {shots:?}");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {count} screenshots of {page} in {}: {shots:?}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start_with(chromium: Option<Chromium>) -> Self {
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
            chromium,
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
            .env("KUBEGATE_TEST_BROWSER_LOG", self.browser_log())
            .env(
                "KUBEGATE_TEST_CALLBACK_LOG",
                self.home.path().join("callbacks.log"),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match &self.chromium {
            None => command.env("BROWSER", oidc_provider::browser_script()),
            Some(c) => command
                .env("BROWSER", "/bin/false")
                .env("CHROMIUM", &c.binary)
                .env("KUBEGATE_TEST_SHOTS", &c.shots),
        };
    }

    async fn output(mut command: tokio::process::Command) -> Run {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        Self::finish(command.spawn().expect("runs")).await
    }

    /// Collects a started child (two minutes at most: a Chromium sign-in on a busy
    /// machine takes seconds, not minutes).
    async fn finish(child: tokio::process::Child) -> Run {
        let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("finished within 120 s")
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
        let browser = self.browser_flag();
        let mut args = vec![
            "get-token",
            "--oidc-issuer-url",
            &self.provider.issuer,
            "--oidc-client-id",
            PLUGIN_CLIENT_ID,
            "--oidc-extra-scope",
            "offline_access",
            "--authentication-timeout",
            if browser.is_some() { "90s" } else { "20s" },
        ];
        args.extend(browser.as_deref());
        args.extend(extra);
        self.kubegate(&args, env).await
    }

    /// kubectl with the plugin kubeconfig; `tty`: under `script`, so kubectl sees a
    /// terminal and tells the plugin a person is there (interactiveMode IfAvailable).
    async fn kubectl(&self, args: &[&str], tty: bool) -> Run {
        Self::output(self.kubectl_command(args, tty)).await
    }

    fn kubectl_command(&self, args: &[&str], tty: bool) -> tokio::process::Command {
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
        command
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
    s.assert_last_request_was_alices();

    // Private on disk, and used again without the provider.
    assert_eq!(mode(&s.cache_dir()), 0o700);
    assert_eq!(mode(&s.cache_file()), 0o600);
    let again = credential_token(&s.get_token(&[], &[]).await);
    assert_eq!(again, token);
    assert_eq!(s.provider.grants(AUTHCODE).await, 1);
    assert_eq!(s.provider.grants(REFRESH).await, 0);
    assert_eq!(s.browser_runs(), 1);
}

/// The issue's "get pods -n dev works through the gateway after a browser sign-in driven
/// by --browser-command", eight times at once: one Chromium sign-in serves all eight
/// (the other seven wait on the cache lock while a real browser takes its seconds).
#[tokio::test]
async fn eight_kubectl_runs_share_one_sign_in_then_one_refresh() {
    let s = Setup::with_chromium("eight-kubectl").await;
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
    s.assert_last_request_was_alices();
    s.screenshots("provider-login", 1).await;
    s.screenshots("plugin-callback", 1).await;

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

/// Chromium opens the plain verification URI, types the user code the plugin printed,
/// confirms it and signs in; the plugin's polling then gets the token.
#[tokio::test]
async fn the_device_flow_is_completed_in_the_browser() {
    let s = Setup::with_chromium("device-flow").await;
    let run = s.get_token(&["--grant-type", "device-code"], &[]).await;
    let token = credential_token(&run);
    assert!(run.stderr.contains("and enter the code"), "{}", run.stderr);
    assert_eq!(s.provider.grants(DEVICE).await, 1);
    assert_eq!(s.provider.grants(AUTHCODE).await, 0);
    let response = s.gw.get("/api/v1/namespaces/dev/pods", &token).await;
    assert_eq!(response.status, StatusCode::OK);
    for page in [
        "provider-device-code",
        "provider-device-confirm",
        "provider-login",
        "provider-device-success",
    ] {
        s.screenshots(page, 1).await;
    }
}

/// `--grant-type authcode-keyboard` under kubectl: the provider shows the code for the
/// out-of-band redirect URI, the person types it at the terminal (kubectl's, /dev/tty),
/// and kubectl gets its answer.
#[tokio::test]
async fn the_keyboard_flow_takes_the_code_typed_at_the_terminal() {
    let s = Setup::with_chromium("keyboard-flow").await;
    s.add_plugin_args(&["--grant-type=authcode-keyboard"]);
    let code_file = s.home.path().join("code");
    let mut command = s.kubectl_command(&["get", "pods", "-n", "dev"], true);
    command
        .env("KUBEGATE_TEST_CODE_FILE", &code_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("kubectl runs");
    // The person reads the code off the provider's page (a Chromium start and sign-in on
    // a busy machine takes seconds).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let code = loop {
        if let Some(code) = std::fs::read_to_string(&code_file)
            .ok()
            .filter(|c| c.ends_with('\n'))
        {
            break code;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the provider showed no code"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    s.screenshots("provider-code", 1).await;
    let mut stdin = child.stdin.take().expect("stdin");
    use tokio::io::AsyncWriteExt as _;
    stdin.write_all(code.as_bytes()).await.unwrap();
    let run = Setup::finish(child).await;
    drop(stdin);
    assert!(run.ok, "kubectl: {} {}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("paste the code"),
        "the prompt reached the terminal: {}",
        run.stdout
    );
    assert_eq!(s.provider.grants(AUTHCODE).await, 1);
    let log = std::fs::read_to_string(s.browser_log()).unwrap();
    assert!(
        log.contains("redirect_uri=urn%3Aietf%3Awg%3Aoauth%3A2.0%3Aoob"),
        "{log}"
    );
    let token = s.cached()["id_token"].as_str().expect("cached").to_string();
    let response = s.gw.get("/api/v1/namespaces/dev/pods", &token).await;
    assert_eq!(response.status, StatusCode::OK);
}

/// A code that was already redeemed, brought to a new sign-in's callback with that
/// sign-in's own state: the provider refuses it (PKCE binds a code to the run that asked
/// for it) and nothing is written.
#[tokio::test]
async fn a_replayed_code_is_refused_and_nothing_is_stored() {
    let s = Setup::with_chromium("replayed-code").await;
    credential_token(&s.get_token(&[], &[]).await);
    std::fs::remove_file(s.cache_file()).unwrap();
    let run = s
        .get_token(&[], &[("KUBEGATE_TEST_BROWSER_MODE", "replay-code")])
        .await;
    assert!(run.stderr.contains("invalid_grant"), "{}", run.stderr);
    refused(
        &s,
        run,
        "the OpenID provider refused the authorization code: ",
    )
    .await;
    assert!(!s.cache_file().exists(), "no token written");
    assert_eq!(s.provider.grants(AUTHCODE).await, 1);
    s.screenshots("replayed-callback", 1).await;
}

#[tokio::test]
async fn force_refresh_ignores_a_good_cache_and_makes_one_new_grant() {
    let s = Setup::start().await;
    let first = credential_token(&s.get_token(&[], &[]).await);
    let again = credential_token(&s.get_token(&[], &[]).await);
    assert_eq!(first, again, "the cache is good");
    assert_eq!(s.provider.grants(REFRESH).await, 0);
    let refresh = s.cached()["refresh_token"].clone();
    let forced = credential_token(&s.get_token(&["--force-refresh"], &[]).await);
    assert_eq!(s.provider.grants(REFRESH).await, 1, "exactly one new grant");
    // (The new ID token may equal the old byte for byte when issued in the same second;
    // the rotated refresh token shows the cache was rewritten from the new grant.)
    assert_ne!(s.cached()["refresh_token"], refresh);
    assert_eq!(s.provider.grants(AUTHCODE).await, 1);
    assert_eq!(s.cached()["id_token"].as_str(), Some(forced.as_str()));
}

#[tokio::test]
async fn logout_all_removes_every_context_and_revokes_their_refresh_tokens() {
    let s = Setup::start().await;
    // Two sign-ins with different scopes: two cache files, as two contexts make.
    credential_token(&s.get_token(&[], &[]).await);
    credential_token(&s.get_token(&["--oidc-extra-scope", "profile"], &[]).await);
    let files: Vec<PathBuf> = std::fs::read_dir(s.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let refresh_tokens: Vec<String> = files
        .iter()
        .map(|f| {
            let v: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
            v["refresh_token"].as_str().expect("refresh").to_string()
        })
        .collect();
    let out = s.kubegate(&["logout", "--all"], &[]).await;
    assert!(out.ok, "{}", out.stderr);
    for file in &files {
        assert!(!file.exists(), "{} removed", file.display());
    }
    for refresh in &refresh_tokens {
        let (status, body) = oidc_provider::post(
            &format!("{}/token", s.provider.issuer),
            &format!(
                "grant_type=refresh_token&refresh_token={refresh}&client_id={PLUGIN_CLIENT_ID}"
            ),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "revoked: {body}");
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }
    let run = s
        .get_token(&[], &[("KUBERNETES_EXEC_INFO", NON_INTERACTIVE)])
        .await;
    refused(&s, run, "run: kubegate login").await;
}

/// A cache file someone else owns (root's test makes it `nobody`'s) is refused, not
/// read, not replaced.
#[tokio::test]
async fn a_cache_file_of_another_user_is_refused() {
    let s = Setup::start().await;
    credential_token(&s.get_token(&[], &[]).await);
    let before = std::fs::read(s.cache_file()).unwrap();
    let status = std::process::Command::new("chown")
        .arg("nobody")
        .arg(s.cache_file())
        .status()
        .expect("chown runs");
    assert!(status.success(), "chown nobody (the tests run as root)");
    for extra in [&[][..], &["--force-refresh"][..]] {
        let run = s.get_token(extra, &[]).await;
        refused(&s, run, "belongs to another user (uid 65534)").await;
    }
    assert_eq!(std::fs::read(s.cache_file()).unwrap(), before, "untouched");
    assert_eq!(s.provider.grants(AUTHCODE).await, 1);
    assert_eq!(s.provider.grants(REFRESH).await, 0);
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

    // A client the provider does not know. In the browser and keyboard flows its error
    // page never reaches the plugin, so the plugin asks the authorization endpoint first
    // and stops at once instead of waiting out the authentication timeout.
    let refused_request = "the provider refused the sign-in request (HTTP 400, invalid_client): check --oidc-client-id and that the client allows redirect URI";
    for (grant, message) in [
        ("device-code", "invalid_client".to_string()),
        ("authcode", format!("{refused_request} http://127.0.0.1:")),
        (
            "authcode-keyboard",
            format!("{refused_request} urn:ietf:wg:oauth:2.0:oob"),
        ),
    ] {
        let started = std::time::Instant::now();
        let run = s
            .kubegate(
                &[
                    "get-token",
                    "--oidc-issuer-url",
                    &s.provider.issuer,
                    "--oidc-client-id",
                    "no-such-client",
                    "--grant-type",
                    grant,
                    "--authentication-timeout",
                    "60s",
                ],
                &[],
            )
            .await;
        refused(&s, run, &message).await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{grant}: not the timeout: {:?}",
            started.elapsed()
        );
    }

    // Every callback address taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let only = taken.local_addr().unwrap().to_string();
    let run = s.get_token(&["--listen-address", &only], &[]).await;
    refused(
        &s,
        run,
        &format!("cannot listen for the sign-in redirect on any of {only}"),
    )
    .await;

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
    // No token of any sign-in above (other client ids have other cache files).
    let tokens: Vec<_> = std::fs::read_dir(s.cache_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| e.path())
        .collect();
    assert!(tokens.is_empty(), "no token written: {tokens:?}");
}
