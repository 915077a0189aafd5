//! Authentication: turns a request's bearer token into an [`Identity`], or refuses it.
//!
//! Every token is verified against exactly one configured issuer, chosen by the token's
//! `iss` (read unverified only for that choice); the issuer's own key set, algorithm
//! allow-list and audiences then decide. Failures are sorted into a few categories the
//! client may see (expired, audience, signature, ...); the token itself never appears in
//! an error, a log line or a `Debug` output.

mod cache;
mod jwks;
mod jwt;
pub mod keys;

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;

pub use jwks::{KeySet, KeySetError};
pub use jwt::{IssuerVerifier, Verified};

/// Tokens longer than this are refused before any parsing: real ID and access tokens are a
/// few KiB, and a cap keeps decoding cost bounded for unauthenticated input.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Who made a request, as the cluster should see them.
#[derive(Clone, PartialEq)]
pub struct Identity {
    /// The Kubernetes username.
    pub username: String,
    /// A stable unique id for the user, when the issuer provides one.
    pub uid: Option<String>,
    /// The user's groups.
    pub groups: Vec<String>,
    /// Extra attributes forwarded as `Impersonate-Extra-<key>`.
    pub extra: BTreeMap<String, Vec<String>>,
    /// The verified token claims, for policy rules on claim values.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// The identity as the policy sees it, built once: a cached identity serves many
    /// requests, and the claims need not be copied for each.
    pub subject: std::sync::OnceLock<kubegate_policy::Subject>,
}

impl std::fmt::Debug for Identity {
    // Claims may hold personal data; the log needs the name and groups only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("username", &self.username)
            .field("uid", &self.uid)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity as the policy engine sees it.
    pub fn subject(&self) -> &kubegate_policy::Subject {
        self.subject.get_or_init(|| kubegate_policy::Subject {
            user: self.username.clone(),
            groups: self.groups.clone(),
            uid: self.uid.clone(),
            extra: self.extra.clone(),
            claims: self.claims.clone(),
        })
    }
}

/// Why a request was not authenticated. Display strings are safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no bearer token in the Authorization header")]
    MissingToken,
    /// More than one `Authorization` header, or not a `Bearer` one.
    #[error("the Authorization header must be exactly one \"Bearer <token>\"")]
    MalformedHeader,
    /// Not a well-formed JWT.
    #[error("the bearer token is not a well-formed JWT")]
    MalformedToken,
    /// The `iss` claim names no configured issuer.
    #[error("the token's issuer is not trusted")]
    UnknownIssuer,
    /// The algorithm is not on the issuer's allow-list (this includes `none` and HMAC).
    #[error("the token's signature algorithm is not accepted")]
    Algorithm,
    /// The signature does not verify, or no key of the issuer can verify it.
    #[error("the token's signature is invalid")]
    Signature,
    /// The issuer's keys have not been loaded yet.
    #[error("the issuer's signing keys are not available")]
    KeysUnavailable,
    /// `exp` is in the past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// `aud` does not name an accepted audience.
    #[error("the token's audience is not accepted")]
    Audience,
    /// A required claim is missing or malformed; the text names the claim, never its value.
    #[error("the token's claims are not acceptable: {0}")]
    Claims(String),
    /// The request relies on a client certificate that names no one.
    #[error("{0}")]
    Certificate(crate::tls::UnreadableCert),
}

impl AuthError {
    /// A short, bounded label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing",
            AuthError::MalformedHeader | AuthError::MalformedToken => "malformed",
            AuthError::UnknownIssuer => "issuer",
            AuthError::Algorithm => "algorithm",
            AuthError::Signature => "signature",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::Expired => "expired",
            AuthError::NotYetValid | AuthError::IssuedInFuture => "not_yet_valid",
            AuthError::Audience => "audience",
            AuthError::Claims(_) => "claims",
            AuthError::Certificate(_) => "certificate",
        }
    }
}

/// Verifies bearer tokens against the configured issuers.
pub struct Authenticator {
    issuers: Vec<Arc<IssuerVerifier>>,
    cache: cache::TokenCache,
    /// Background key refreshes; stopped with the authenticator.
    key_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        for task in &self.key_tasks {
            task.abort();
        }
    }
}

impl Authenticator {
    /// An authenticator over these issuers, with the token cache `auth` configures.
    pub fn new(
        issuers: Vec<Arc<IssuerVerifier>>,
        auth: &kubegate_config::Auth,
        key_tasks: Vec<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Authenticator {
            issuers,
            cache: cache::TokenCache::new(auth.token_cache_ttl, auth.token_cache_size),
            key_tasks,
        }
    }

    /// The issuers, for key refresh and readiness.
    pub fn issuers(&self) -> &[Arc<IssuerVerifier>] {
        &self.issuers
    }

    /// The identity when it costs no cryptography: a verified client certificate (when no
    /// `Authorization` header was sent), or a token whose verdict is cached. `None` means
    /// the token must be verified, or there is no usable credential: the per-address
    /// budget pays for that before [`Authenticator::verify_token`] runs.
    pub fn authenticate_cached(
        &self,
        headers: &HeaderMap,
        client_cert: Option<&crate::tls::ClientCert>,
    ) -> Option<Result<Arc<Identity>, AuthError>> {
        if !headers.contains_key(AUTHORIZATION)
            && let Some(cert) = client_cert
        {
            return Some(certificate_identity(cert).map(Arc::new));
        }
        if !self.cache.enabled() {
            return None;
        }
        let token = bearer_token(headers).ok()?;
        self.cache
            .get(&cache::digest_of(token), |i| self.issuers[i].generation())
            .map(Ok)
    }

    /// Verifies the bearer token (signature, claims, mapping) and caches the verdict.
    pub async fn verify_token(&self, headers: &HeaderMap) -> Result<Arc<Identity>, AuthError> {
        let token = bearer_token(headers)?;
        let issuer = jwt::unverified_issuer(token)?;
        let (index, verifier) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, v)| v.issuer() == issuer)
            .ok_or(AuthError::UnknownIssuer)?;
        // Read before verifying: a key change during verification must void this verdict.
        let generation = verifier.generation();
        let verified = verifier.verify(token).await?;
        let identity = Arc::new(verified.identity);
        if self.cache.enabled() {
            self.cache.insert(
                cache::digest_of(token),
                identity.clone(),
                verified.expires_at,
                index,
                generation,
            );
        }
        Ok(identity)
    }

    /// Authenticates a request: by its bearer token when it sends an `Authorization`
    /// header (a bad token is refused even if a certificate was presented: the client
    /// asked to be judged by it), otherwise by the verified client certificate.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client_cert: Option<&crate::tls::ClientCert>,
    ) -> Result<Arc<Identity>, AuthError> {
        match self.authenticate_cached(headers, client_cert) {
            Some(result) => result,
            None => self.verify_token(headers).await,
        }
    }
}

/// A client certificate's identity, under the same reserved-name rule as tokens. An
/// unreadable certificate is refused with its reason, never mapped to a partial identity.
fn certificate_identity(cert: &crate::tls::ClientCert) -> Result<Identity, AuthError> {
    let cert = match cert {
        crate::tls::ClientCert::Identity(identity) => identity,
        crate::tls::ClientCert::Unreadable(reason) => return Err(AuthError::Certificate(*reason)),
    };
    let reserved = |n: &str| n.starts_with("system:");
    if reserved(&cert.username) || cert.groups.iter().any(|g| reserved(g)) {
        return Err(AuthError::Claims(
            "certificate names starting with \"system:\" are reserved for the cluster".into(),
        ));
    }
    Ok(Identity {
        username: cert.username.clone(),
        uid: None,
        groups: cert.groups.clone(),
        extra: BTreeMap::new(),
        claims: serde_json::Map::new(),
        subject: Default::default(),
    })
}

/// Extracts the one bearer token. Two `Authorization` headers are ambiguous (which one
/// would a downstream component read?), so they are refused rather than picked from.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::MalformedHeader);
    }
    let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedHeader);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::MalformedToken);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&["bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&[])), Err(AuthError::MissingToken));
        assert_eq!(
            bearer_token(&headers(&["Basic dXNlcjpwYXNz"])),
            Err(AuthError::MalformedHeader)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthError::MalformedHeader)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer  "])),
            Err(AuthError::MissingToken)
        );
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(
            bearer_token(&headers(&[&long])),
            Err(AuthError::MalformedToken)
        );
    }

    fn cert(username: &str, groups: &[&str]) -> crate::tls::ClientCert {
        crate::tls::ClientCert::Identity(crate::tls::CertIdentity {
            username: username.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    }

    #[test]
    fn an_unreadable_certificate_is_refused_with_its_reason() {
        use crate::tls::{ClientCert, UnreadableCert};
        let err =
            certificate_identity(&ClientCert::Unreadable(UnreadableCert::Undecodable)).unwrap_err();
        assert_eq!(err, AuthError::Certificate(UnreadableCert::Undecodable));
        assert!(
            err.to_string()
                .starts_with("the client certificate's subject cannot be read"),
            "{err}"
        );
        let alice = certificate_identity(&cert("alice", &["devs", "ops"])).unwrap();
        assert_eq!(alice.username, "alice");
        assert_eq!(alice.groups, vec!["devs", "ops"]);
        assert!(certificate_identity(&cert("alice", &["system:masters"])).is_err());
    }

    #[test]
    fn identity_debug_hides_claims() {
        let mut claims = serde_json::Map::new();
        claims.insert("email".into(), "alice@example.com".into());
        let id = Identity {
            username: "alice".into(),
            uid: None,
            groups: vec![],
            extra: BTreeMap::new(),
            claims,
            subject: Default::default(),
        };
        assert!(!format!("{id:?}").contains("example.com"));
    }
}
