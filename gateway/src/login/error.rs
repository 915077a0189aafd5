//! Every way a sign-in can fail, each with a message that tells the person what to do.
//!
//! The credential plugin prints these on stderr (kubectl shows them); none carries a
//! token, a code or a client secret.

use std::path::PathBuf;

/// A failed `get-token`, `login`, `logout` or `kubeconfig`.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// An argument cannot be used (the user's fault).
    #[error("{0}")]
    BadArgument(String),
    /// The token cache directory is open to other users.
    #[error(
        "the token cache directory {} is accessible by other users (mode {mode:o}); run `chmod 700 {}`",
        dir.display(),
        dir.display()
    )]
    CacheDirPermissions {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A cache path belongs to another user: its contents cannot be trusted.
    #[error("{} belongs to another user (uid {owner}); remove it or choose another --token-cache-dir", path.display())]
    CacheForeignOwner {
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// A cache file is readable by others.
    #[error("the token cache file {} is accessible by other users (mode {mode:o}); remove it", path.display())]
    CacheFilePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A cache file does not hold what kubegate writes.
    #[error("the token cache file {} is corrupt ({reason}); remove it or run `kubegate logout`", path.display())]
    CacheCorrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, without its contents.
        reason: String,
    },
    /// Reading or writing the cache failed.
    #[error("token cache {}: {source}", path.display())]
    CacheIo {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another kubegate process kept the cache lock for longer than the sign-in may take.
    #[error("another kubegate get-token held the lock {} for {waited:?}; is a sign-in waiting in another window?", path.display())]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long this process waited.
        waited: std::time::Duration,
    },
    /// The provider's discovery document or keys could not be loaded.
    #[error("cannot reach the OpenID provider {issuer}: {reason}")]
    Discovery {
        /// The issuer.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// No loopback address of the list could be bound for the redirect.
    #[error("cannot listen for the sign-in redirect on any of {tried}: {reason}")]
    NoCallbackAddress {
        /// The addresses tried.
        tried: String,
        /// The last error.
        reason: String,
    },
    /// The redirect reached the loopback listener without a `state`.
    #[error("the sign-in callback carried no state parameter; refusing it (nothing was stored)")]
    CallbackWithoutState,
    /// The redirect carried a `state` this sign-in did not send: a forged or stale callback.
    #[error(
        "the sign-in callback carried a state this sign-in did not send; refusing it (nothing was stored)"
    )]
    CallbackWrongState,
    /// The redirect named another issuer (RFC 9207): a mix-up attack or a misconfiguration.
    #[error("the sign-in callback came from issuer {got}, not {expected}; refusing it")]
    CallbackWrongIssuer {
        /// The `iss` parameter.
        got: String,
        /// The issuer this sign-in went to.
        expected: String,
    },
    /// The redirect carried neither a code nor an error.
    #[error("the sign-in callback carried no authorization code")]
    CallbackWithoutCode,
    /// The provider answered the authorization request with an error.
    #[error("the OpenID provider refused the sign-in: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    ProviderRefused {
        /// The OAuth error code, e.g. `access_denied`.
        error: String,
        /// The provider's description.
        description: Option<String>,
    },
    /// The authorization endpoint refused the sign-in request itself (an unknown client id,
    /// a redirect URI the client does not allow): the provider shows an error page and
    /// never redirects, so without this the sign-in would only time out.
    #[error(
        "the provider refused the sign-in request (HTTP {status}{}): check --oidc-client-id and that the client allows redirect URI {redirect}",
        error.as_deref().map(|e| format!(", {e}")).unwrap_or_default()
    )]
    AuthorizationRefused {
        /// The authorization endpoint's status code.
        status: u16,
        /// The OAuth error code its page names, when it names a known one.
        error: Option<&'static str>,
        /// The redirect URI this sign-in asked for.
        redirect: String,
    },
    /// Nobody completed the sign-in in time.
    #[error("the sign-in was not completed within {0:?} (--authentication-timeout)")]
    Timeout(std::time::Duration),
    /// A token request failed at the provider.
    #[error("the OpenID provider refused the {grant}: {reason}")]
    TokenRequest {
        /// Which request: "authorization code", "refresh token", "device code".
        grant: &'static str,
        /// The provider's answer, in words.
        reason: String,
    },
    /// The provider's answer held no ID token.
    #[error(
        "the OpenID provider returned no ID token (is the `openid` scope allowed for client {0}?)"
    )]
    NoIdToken(String),
    /// The ID token failed verification; it was not stored.
    #[error("the ID token from the OpenID provider failed verification: {0}")]
    IdTokenInvalid(String),
    /// The provider does not offer what the chosen grant needs.
    #[error("the OpenID provider {issuer} has no {what}")]
    Unsupported {
        /// The issuer.
        issuer: String,
        /// The missing endpoint or feature.
        what: &'static str,
    },
    /// A sign-in is needed but kubectl runs without a person to do it.
    #[error("sign-in needed ({reason}) but kubectl runs non-interactively; run: {command}")]
    NonInteractive {
        /// Why the cache and the refresh token did not do.
        reason: String,
        /// The command that signs in.
        command: String,
    },
    /// Reading the pasted code failed.
    #[error("cannot read the authorization code: {0}")]
    Prompt(std::io::Error),
    /// A kubeconfig could not be read or written.
    #[error("kubeconfig {}: {reason}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}
