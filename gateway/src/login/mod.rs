//! Sign-in for remote users, the client side: `kubegate get-token` (a kubectl exec
//! credential plugin), `login`, `logout` and `kubeconfig`.
//!
//! The plugin gets an ID token from the company's OpenID provider, verifies it, keeps it
//! in a private cache and hands it to kubectl as an `ExecCredential`; the gateway then
//! verifies it again with its own issuer configuration. Files, each for one concern:
//!
//! - [`args`]: the flags, named as kubelogin names them;
//! - [`plugin`]: the get-token corridor: cache, lock, refresh, sign-in;
//! - [`cache`] and [`lock`]: the private token files and the cross-process lock;
//! - [`provider`]: discovery, the HTTP client, ID token verification;
//! - [`authcode`], [`keyboard`], [`device`]: the three interactive sign-ins;
//! - [`browser`]: opening the sign-in page;
//! - [`exec_credential`]: kubectl's side of the protocol;
//! - [`kubeconfig`]: the exec entry `kubeconfig` prints and `login` merges;
//! - [`logout`]: deleting and revoking; [`error`]: every failure, in words.

pub mod args;
pub mod authcode;
pub mod browser;
pub mod cache;
pub mod device;
pub mod error;
pub mod exec_credential;
pub mod keyboard;
pub mod kubeconfig;
pub mod lock;
pub mod logout;
pub mod plugin;
pub mod provider;

pub use error::LoginError;
pub use plugin::Environment;

/// `kubegate login`: sign in now (unless the cache is good) and, with `--server`, write
/// the kubeconfig entry.
pub async fn login(
    entry: &args::EntryArgs,
    sign_in: &args::SignInArgs,
    force_refresh: bool,
    env: &Environment,
) -> Result<Option<std::path::PathBuf>, LoginError> {
    let tokens = plugin::tokens(&entry.provider(), sign_in, force_refresh, env).await?;
    eprintln!(
        "kubegate: signed in at {}; the token is good until {}",
        tokens.issuer,
        humantime::format_rfc3339_seconds(tokens.expiry())
    );
    if entry.server.is_none() {
        return Ok(None);
    }
    let path = kubeconfig::path(env)?;
    kubeconfig::merge(&path, entry)?;
    Ok(Some(path))
}
