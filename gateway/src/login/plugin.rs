//! `kubegate get-token`: the cached ID token while it is good, else the refresh token,
//! else a new sign-in, with the cache lock held from the second look at the cache to
//! the write, so parallel kubectl runs share one refresh or one sign-in.
//!
//! The order, as the issue and kubelogin's users asked for it:
//! 1. cache hit (more than [`MARGIN`] left): print it, no lock, no network;
//! 2. lock, read again (another process may have just signed in);
//! 3. the refresh token, if any; its ID token is verified like a new one;
//! 4. with `KUBERNETES_EXEC_INFO` saying non-interactive: stop with the command to run;
//! 5. otherwise the chosen sign-in (browser, keyboard or device), then write the cache.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use openidconnect::RefreshToken;

use super::args::{GrantType, ProviderArgs, SignInArgs};
use super::cache::{self, CacheDir, CachedTokens};
use super::error::LoginError;
use super::lock::CacheLock;
use super::provider::{NonceCheck, Provider, error_chain};
use super::{authcode, device, exec_credential, keyboard};

/// A cached ID token is used until this long before it expires: kubectl and the gateway
/// must both see it valid, and the request may take a while.
pub const MARGIN: Duration = Duration::from_secs(30);

/// What the plugin reads from its surroundings, gathered once in `main` (tests pass
/// their own instead of setting process variables).
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// `KUBERNETES_EXEC_INFO`, from kubectl.
    pub exec_info: Option<String>,
    /// `SSH_CONNECTION` is set: the browser would open on another machine, if at all.
    pub ssh: bool,
    /// `DISPLAY` or `WAYLAND_DISPLAY` is set, or this is macOS.
    pub display: bool,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$KUBECONFIG`.
    pub kubeconfig: Option<String>,
}

impl Environment {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        Environment {
            exec_info: std::env::var("KUBERNETES_EXEC_INFO").ok(),
            ssh: set("SSH_CONNECTION"),
            display: set("DISPLAY") || set("WAYLAND_DISPLAY") || cfg!(target_os = "macos"),
            home: std::env::var_os("HOME").map(PathBuf::from),
            kubeconfig: std::env::var("KUBECONFIG").ok(),
        }
    }

    /// The token cache directory: `flag`, else `~/.kube/cache/kubegate`.
    pub fn cache_dir(&self, flag: Option<&std::path::Path>) -> Result<PathBuf, LoginError> {
        if let Some(dir) = flag {
            return Ok(dir.to_path_buf());
        }
        self.home
            .as_ref()
            .map(|h| h.join(".kube/cache/kubegate"))
            .ok_or_else(|| {
                LoginError::BadArgument("HOME is not set; pass --token-cache-dir".into())
            })
    }
}

/// The sign-in `auto` stands for here: the device flow where a browser cannot open on
/// this machine (SSH, no display), unless a browser command was named explicitly.
pub fn resolve_grant(chosen: GrantType, env: &Environment, args: &SignInArgs) -> GrantType {
    match chosen {
        GrantType::Auto if args.browser_command.is_some() => GrantType::Authcode,
        GrantType::Auto if env.ssh || !env.display => GrantType::DeviceCode,
        GrantType::Auto => GrantType::Authcode,
        other => other,
    }
}

/// The cache key of a sign-in.
pub fn cache_key(provider: &ProviderArgs) -> String {
    cache::key(
        &provider.issuer(),
        &provider.oidc_client_id,
        &provider.scopes(),
    )
}

/// Fresh, verified tokens for `provider`: from the cache, a refresh or a sign-in.
pub async fn tokens(
    provider: &ProviderArgs,
    sign_in: &SignInArgs,
    force_refresh: bool,
    env: &Environment,
) -> Result<CachedTokens, LoginError> {
    let dir = CacheDir::open(&env.cache_dir(provider.token_cache_dir.as_deref())?)?;
    let key = cache_key(provider);
    let fresh = |t: &CachedTokens| t.fresh_at(SystemTime::now(), MARGIN);
    if !force_refresh
        && let Some(t) = dir.read(&key)?
        && fresh(&t)
    {
        return Ok(t);
    }
    let _lock = CacheLock::acquire(&dir.lock_file(&key), sign_in.authentication_timeout).await?;
    let cached = dir.read(&key)?;
    if !force_refresh
        && let Some(t) = &cached
        && fresh(t)
    {
        return Ok(t.clone());
    }
    let idp = Provider::discover(provider).await?;
    let mut reason = match &cached {
        None => "no cached token".to_string(),
        Some(_) => "the cached token expired and there is no refresh token".to_string(),
    };
    if let Some(old) = &cached
        && let Some(refresh_token) = &old.refresh_token
    {
        match refresh(&idp, old, refresh_token).await {
            Ok(new) => {
                dir.write(&key, &new)?;
                return Ok(new);
            }
            Err(e) => {
                eprintln!("kubegate: the refresh token was not accepted: {e}");
                reason = "the refresh token was refused".to_string();
            }
        }
    }
    if !exec_credential::interactive(env.exec_info.as_deref()) {
        let mut command = vec!["kubegate".to_string(), "login".to_string()];
        command.extend(provider.command_line("--oidc-certificate-authority"));
        return Err(LoginError::NonInteractive {
            reason,
            command: command.join(" "),
        });
    }
    let scopes = provider.scopes();
    let new = match resolve_grant(sign_in.grant_type, env, sign_in) {
        GrantType::DeviceCode => device::sign_in(&idp, &scopes, sign_in).await?,
        GrantType::AuthcodeKeyboard => keyboard::sign_in(&idp, &scopes, sign_in).await?,
        GrantType::Authcode | GrantType::Auto => authcode::sign_in(&idp, &scopes, sign_in).await?,
    };
    dir.write(&key, &new)?;
    Ok(new)
}

async fn refresh(
    idp: &Provider,
    old: &CachedTokens,
    refresh_token: &str,
) -> Result<CachedTokens, LoginError> {
    let token = RefreshToken::new(refresh_token.to_string());
    let response = idp
        .client
        .exchange_refresh_token(&token)
        .map_err(|_| LoginError::Unsupported {
            issuer: idp.issuer.clone(),
            what: "token endpoint",
        })?
        .request_async(&idp.http)
        .await
        .map_err(|e| LoginError::TokenRequest {
            grant: "refresh token",
            reason: error_chain(&e),
        })?;
    idp.verify(
        &response,
        NonceCheck::AbsentOr(old.nonce.as_deref()),
        Some(refresh_token),
    )
}

/// `kubegate get-token`: the `ExecCredential` JSON for stdout.
pub async fn get_token(
    provider: &ProviderArgs,
    sign_in: &SignInArgs,
    force_refresh: bool,
    env: &Environment,
) -> Result<String, LoginError> {
    let tokens = tokens(provider, sign_in, force_refresh, env).await?;
    Ok(exec_credential::render(&tokens.id_token, tokens.expiry()))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn auto_picks_the_device_flow_without_a_local_browser() {
        let desktop = Environment {
            display: true,
            ..Environment::default()
        };
        let ssh = Environment {
            display: true,
            ssh: true,
            ..Environment::default()
        };
        let headless = Environment::default();
        let auto = SignInArgs::parse_for_test(&[]);
        assert_eq!(
            resolve_grant(GrantType::Auto, &desktop, &auto),
            GrantType::Authcode
        );
        assert_eq!(
            resolve_grant(GrantType::Auto, &ssh, &auto),
            GrantType::DeviceCode
        );
        assert_eq!(
            resolve_grant(GrantType::Auto, &headless, &auto),
            GrantType::DeviceCode
        );
        let named = SignInArgs::parse_for_test(&["--browser-command", "/bin/true"]);
        assert_eq!(
            resolve_grant(GrantType::Auto, &ssh, &named),
            GrantType::Authcode
        );
        assert_eq!(
            resolve_grant(GrantType::AuthcodeKeyboard, &desktop, &auto),
            GrantType::AuthcodeKeyboard
        );
    }

    #[test]
    fn listen_addresses_are_loopback_only() {
        assert_eq!(
            SignInArgs::parse_for_test(&[])
                .listen_addresses()
                .unwrap()
                .len(),
            3
        );
        let err = SignInArgs::parse_for_test(&["--listen-address", "0.0.0.0:8000"])
            .listen_addresses()
            .unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
        let ok = SignInArgs::parse_for_test(&[
            "--listen-address",
            "127.0.0.1:9",
            "--listen-address",
            "[::1]:0",
        ]);
        assert_eq!(ok.listen_addresses().unwrap().len(), 2);
    }
}
