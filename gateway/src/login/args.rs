//! The command-line flags of `get-token`, `login`, `logout` and `kubeconfig`, named as
//! kubelogin (`kubectl oidc-login`) names them so kubeconfigs read the same.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::error::LoginError;

/// The redirect listeners tried in order when `--listen-address` is not given: kubelogin's
/// two ports (often registered at providers that want exact redirect URIs), then any port.
pub const DEFAULT_LISTEN: [&str; 3] = ["127.0.0.1:8000", "127.0.0.1:18000", "127.0.0.1:0"];

/// Which sign-in to run when the cache and the refresh token do not do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GrantType {
    /// The device flow over SSH or without a display, the browser otherwise.
    Auto,
    /// Authorization code with PKCE and a loopback redirect (RFC 8252).
    Authcode,
    /// Authorization code with PKCE; the code is pasted at the terminal.
    AuthcodeKeyboard,
    /// The device authorization grant (RFC 8628).
    DeviceCode,
}

/// What identifies a sign-in: the provider, the client, the scopes and where tokens live.
#[derive(Args, Clone)]
pub struct ProviderArgs {
    /// The OpenID provider's issuer URL.
    #[arg(long)]
    pub oidc_issuer_url: url::Url,
    /// The client id registered at the provider (a public client).
    #[arg(long)]
    pub oidc_client_id: String,
    /// The client secret, for providers that give command-line clients one.
    #[arg(long, hide_env_values = true)]
    pub oidc_client_secret: Option<String>,
    /// A scope to ask for besides `openid` (repeatable), e.g. `offline_access`.
    #[arg(long = "oidc-extra-scope")]
    pub oidc_extra_scope: Vec<String>,
    /// A PEM file of CAs to trust for the provider (instead of the system's).
    #[arg(long)]
    pub certificate_authority: Option<PathBuf>,
    /// Where tokens are cached [default: ~/.kube/cache/kubegate].
    #[arg(long)]
    pub token_cache_dir: Option<PathBuf>,
}

impl std::fmt::Debug for ProviderArgs {
    // The client secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderArgs")
            .field("oidc_issuer_url", &self.oidc_issuer_url.as_str())
            .field("oidc_client_id", &self.oidc_client_id)
            .field("oidc_extra_scope", &self.oidc_extra_scope)
            .finish_non_exhaustive()
    }
}

impl ProviderArgs {
    /// The issuer exactly as it must appear in `iss`: kubelogin users write it with or
    /// without a trailing slash, and providers publish it without one more often.
    pub fn issuer(&self) -> String {
        let text = self.oidc_issuer_url.as_str();
        if self.oidc_issuer_url.path() == "/" {
            text.trim_end_matches('/').to_string()
        } else {
            text.to_string()
        }
    }

    /// Every scope asked for: `openid` first, then the extras.
    pub fn scopes(&self) -> Vec<String> {
        let mut scopes = vec!["openid".to_string()];
        for s in &self.oidc_extra_scope {
            for s in s.split([' ', ',']).filter(|s| !s.is_empty()) {
                if !scopes.iter().any(|have| have == s) {
                    scopes.push(s.to_string());
                }
            }
        }
        scopes
    }

    /// The flags that name this sign-in, for a command line the user can run; `ca_flag`
    /// is the name the provider's CA file has there (`get-token`'s
    /// `--certificate-authority`, `login`'s `--oidc-certificate-authority`).
    pub fn command_line(&self, ca_flag: &str) -> Vec<String> {
        let mut args = vec![
            format!("--oidc-issuer-url={}", self.oidc_issuer_url),
            format!("--oidc-client-id={}", self.oidc_client_id),
        ];
        for s in &self.oidc_extra_scope {
            args.push(format!("--oidc-extra-scope={s}"));
        }
        if let Some(ca) = &self.certificate_authority {
            args.push(format!("{ca_flag}={}", ca.display()));
        }
        if let Some(dir) = &self.token_cache_dir {
            args.push(format!("--token-cache-dir={}", dir.display()));
        }
        args
    }
}

/// How an interactive sign-in runs.
#[derive(Args, Clone, Debug)]
pub struct SignInArgs {
    /// The sign-in to use when a new one is needed.
    #[arg(long, value_enum, default_value_t = GrantType::Auto)]
    pub grant_type: GrantType,
    /// A loopback address for the redirect (repeatable; the first free one is used)
    /// [default: 127.0.0.1:8000, then 127.0.0.1:18000, then any free port].
    #[arg(long = "listen-address")]
    pub listen_address: Vec<SocketAddr>,
    /// Print the sign-in URL instead of opening a browser.
    #[arg(long)]
    pub skip_open_browser: bool,
    /// The program that opens the sign-in URL (it gets the URL as its one argument).
    #[arg(long, env = "BROWSER")]
    pub browser_command: Option<String>,
    /// The redirect URI of the keyboard flow [default: urn:ietf:wg:oauth:2.0:oob].
    #[arg(long)]
    pub oidc_redirect_url: Option<String>,
    /// How long a sign-in (and the wait for another process's sign-in) may take.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "180s")]
    pub authentication_timeout: Duration,
}

impl SignInArgs {
    /// The loopback addresses to try, in order; refuses any that is not loopback, since a
    /// redirect listener on another interface would hand the code to the network.
    pub fn listen_addresses(&self) -> Result<Vec<SocketAddr>, LoginError> {
        if self.listen_address.is_empty() {
            return Ok(DEFAULT_LISTEN
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect());
        }
        if let Some(bad) = self.listen_address.iter().find(|a| !a.ip().is_loopback()) {
            return Err(LoginError::BadArgument(format!(
                "--listen-address {bad} is not a loopback address (use 127.0.0.1 or [::1])"
            )));
        }
        Ok(self.listen_address.clone())
    }

    /// Sign-in flags parsed as the command line would parse them. The test process's
    /// own `$BROWSER` does not decide: without `--browser-command` there is none.
    #[cfg(test)]
    pub fn parse_for_test(flags: &[&str]) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            sign_in: SignInArgs,
        }
        let mut args =
            Cli::parse_from(std::iter::once("kubegate").chain(flags.iter().copied())).sign_in;
        if !flags.iter().any(|a| a.starts_with("--browser-command")) {
            args.browser_command = None;
        }
        args
    }
}

/// `kubegate get-token`.
#[derive(Args, Clone, Debug)]
pub struct GetTokenArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub provider: ProviderArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub sign_in: SignInArgs,
    /// Skip the cached ID token: refresh it (or sign in) now.
    #[arg(long)]
    pub force_refresh: bool,
}

/// What `kubeconfig` and `login` write: a cluster, a context and an exec user that runs
/// `kubegate get-token` with the provider flags. No token and no secret go in.
#[derive(Args, Clone, Debug)]
pub struct EntryArgs {
    /// The gateway's URL (required by `kubeconfig`; `login` without it only signs in).
    #[arg(long)]
    pub server: Option<url::Url>,
    /// The CA file (PEM) of the gateway's certificate, embedded in the kubeconfig.
    #[arg(long)]
    pub certificate_authority: Option<PathBuf>,
    /// The name of the cluster, user and context entries.
    #[arg(long, default_value = "kubegate")]
    pub context: String,
    /// The default namespace of the context.
    #[arg(long)]
    pub namespace: Option<String>,
    /// The OpenID provider's issuer URL.
    #[arg(long)]
    pub oidc_issuer_url: url::Url,
    /// The public client id registered at the provider for the plugin.
    #[arg(long)]
    pub oidc_client_id: String,
    /// A scope to ask for besides `openid` (repeatable), e.g. `offline_access`.
    #[arg(long = "oidc-extra-scope")]
    pub oidc_extra_scope: Vec<String>,
    /// A PEM file of CAs for the provider (the plugin's `--certificate-authority`).
    #[arg(long)]
    pub oidc_certificate_authority: Option<PathBuf>,
    /// The plugin's token cache directory, when not the default.
    #[arg(long)]
    pub token_cache_dir: Option<PathBuf>,
}

impl EntryArgs {
    /// The plugin's provider flags.
    pub fn provider(&self) -> ProviderArgs {
        ProviderArgs {
            oidc_issuer_url: self.oidc_issuer_url.clone(),
            oidc_client_id: self.oidc_client_id.clone(),
            oidc_client_secret: None,
            oidc_extra_scope: self.oidc_extra_scope.clone(),
            certificate_authority: self.oidc_certificate_authority.clone(),
            token_cache_dir: self.token_cache_dir.clone(),
        }
    }
}

/// `kubegate logout`.
#[derive(Args, Clone, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["context", "all"])))]
pub struct LogoutArgs {
    /// Sign out of the kubeconfig context of this name (its exec user's provider).
    #[arg(long)]
    pub context: Option<String>,
    /// Sign out of everything in the token cache directory.
    #[arg(long)]
    pub all: bool,
    /// The token cache directory for `--all` [default: ~/.kube/cache/kubegate].
    #[arg(long)]
    pub token_cache_dir: Option<PathBuf>,
}
