//! Authentication: turns a request's credential into an [`Identity`], or refuses it.
//!
//! A request presents one bearer token, in `Authorization` or (on a WebSocket upgrade) in
//! the API server's `Sec-WebSocket-Protocol` form ([`websocket`]); presenting both is
//! refused as ambiguous. Without a token, the verified client certificate speaks for it.
//! Every token is verified against exactly one configured issuer, chosen by the token's
//! `iss` (read unverified only for that choice); the issuer's own key set, algorithm
//! allow-list and audiences then decide. Failures are sorted into a few categories the
//! client may see (expired, audience, signature, ...); the token itself never appears in
//! an error, a log line or a `Debug` output.

mod cache;
mod jwks;
mod jwt;
pub mod keys;
pub mod mapping;
pub(crate) mod websocket;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;
use http::header::AUTHORIZATION;

pub use jwks::{KeySet, KeySetError};
pub use jwt::{IssuerVerifier, Verified};

/// Tokens longer than this are refused before any parsing: real ID and access tokens are a
/// few KiB, and a cap keeps decoding cost bounded for unauthenticated input.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Who made a request: the one identity type of the gateway, from authentication through
/// policy, forwarding and audit (its `Debug` leaves the claims out).
pub use kubegate_policy::Subject as Identity;

/// Why a request was not authenticated. Display strings are safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no bearer token in the Authorization header")]
    MissingToken,
    /// More than one `Authorization` header, or not a `Bearer` one.
    #[error("the Authorization header must be exactly one \"Bearer <token>\"")]
    MalformedHeader,
    /// Both an `Authorization` header and a WebSocket protocol token, or two protocol
    /// tokens: which one would a downstream component read?
    #[error(
        "the request carries more than one bearer token (Authorization and Sec-WebSocket-Protocol, or two protocol tokens); send exactly one"
    )]
    AmbiguousCredential,
    /// The `base64url.bearer.authorization.k8s.io.` sub-protocol does not decode.
    #[error(
        "the bearer token in Sec-WebSocket-Protocol must be unpadded base64url of a UTF-8 token"
    )]
    MalformedProtocolToken,
    /// A protocol token with no other sub-protocol for the server to choose.
    #[error("a bearer token in Sec-WebSocket-Protocol needs another sub-protocol beside it")]
    ProtocolTokenAlone,
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
    /// A claim rule's CEL expression failed on this token (a missing claim, a value of
    /// the wrong type); the text names the rule, never a claim value.
    #[error("a claim expression failed: {0}")]
    Expression(String),
    /// The request relies on a client certificate that names no one.
    #[error("{0}")]
    Certificate(crate::listener::tls::UnreadableCert),
}

impl AuthError {
    /// A short, bounded label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing",
            AuthError::MalformedHeader
            | AuthError::MalformedToken
            | AuthError::MalformedProtocolToken
            | AuthError::ProtocolTokenAlone => "malformed",
            AuthError::AmbiguousCredential => "ambiguous",
            AuthError::UnknownIssuer => "issuer",
            AuthError::Algorithm => "algorithm",
            AuthError::Signature => "signature",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::Expired => "expired",
            AuthError::NotYetValid | AuthError::IssuedInFuture => "not_yet_valid",
            AuthError::Audience => "audience",
            AuthError::Claims(_) => "claims",
            AuthError::Expression(_) => "claim_expression",
            AuthError::Certificate(_) => "certificate",
        }
    }
}

/// Why a reloaded `AuthenticationConfiguration` file was not applied.
#[derive(Debug, thiserror::Error)]
pub enum RulesReloadError {
    /// The file does not load (a located configuration error).
    #[error(transparent)]
    Config(#[from] kubegate_config::ConfigError),
    /// The file names an issuer the gateway did not start with: its keys are loaded at
    /// start-up only.
    #[error(
        "{location}: issuer {issuer:?} is new; adding an issuer takes a restart (the file was not applied)"
    )]
    NewIssuer {
        /// The issuer URL.
        issuer: String,
        /// Its `jwt[i]` entry.
        location: kubegate_config::Location,
    },
    /// An issuer's discovery URL or certificate authority changed: where its keys come
    /// from is fixed at start-up.
    #[error(
        "{location}: the discoveryURL or certificateAuthority of issuer {issuer:?} changed; that takes a restart (the file was not applied)"
    )]
    KeySourceChanged {
        /// The issuer URL.
        issuer: String,
        /// Its `jwt[i]` entry.
        location: kubegate_config::Location,
    },
}

/// Verifies bearer tokens against the configured issuers.
pub struct Authenticator {
    issuers: Vec<Arc<IssuerVerifier>>,
    cache: cache::TokenCache,
    /// `AuthenticationConfiguration` reloads applied and refused.
    rules_reloads: AtomicU64,
    rules_reload_failures: AtomicU64,
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
            rules_reloads: AtomicU64::new(0),
            rules_reload_failures: AtomicU64::new(0),
            key_tasks,
        }
    }

    /// Applies a reloaded `AuthenticationConfiguration` file: `reloaded` is the whole
    /// validated configuration's issuers (those of the file carry claim rules). Each
    /// issuer of the file takes its new audiences and claim rules; an issuer the file no
    /// longer names is retired. Nothing changes unless the whole file applies: a new
    /// issuer or a changed key source is refused.
    pub fn reload_rules(
        &self,
        reloaded: Result<Vec<kubegate_config::OidcIssuer>, kubegate_config::ConfigError>,
    ) -> Result<(), RulesReloadError> {
        let result = self.apply_rules(reloaded);
        let counter = match result {
            Ok(()) => &self.rules_reloads,
            Err(_) => &self.rules_reload_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn apply_rules(
        &self,
        reloaded: Result<Vec<kubegate_config::OidcIssuer>, kubegate_config::ConfigError>,
    ) -> Result<(), RulesReloadError> {
        let from_file: Vec<_> = reloaded?
            .into_iter()
            .filter(|i| i.claim_rules.is_some())
            .collect();
        let running: Vec<_> = self
            .issuers
            .iter()
            .filter(|v| v.config().claim_rules.is_some())
            .collect();
        let mut matched = Vec::with_capacity(from_file.len());
        for new in &from_file {
            let Some(verifier) = running.iter().find(|v| v.issuer() == new.issuer) else {
                return Err(RulesReloadError::NewIssuer {
                    issuer: new.issuer.clone(),
                    location: new.location.clone(),
                });
            };
            let old = verifier.config();
            if old.keys != new.keys
                || old.certificate_authority_pem != new.certificate_authority_pem
            {
                return Err(RulesReloadError::KeySourceChanged {
                    issuer: new.issuer.clone(),
                    location: new.location.clone(),
                });
            }
            matched.push((verifier, new));
        }
        for (verifier, new) in matched {
            verifier.replace_rules(new);
        }
        for verifier in running {
            if !from_file.iter().any(|n| n.issuer == verifier.issuer()) {
                verifier.retire();
            }
        }
        Ok(())
    }

    /// `AuthenticationConfiguration` reloads applied since start.
    pub fn rules_reloads(&self) -> u64 {
        self.rules_reloads.load(Ordering::Relaxed)
    }

    /// `AuthenticationConfiguration` reloads refused since start.
    pub fn rules_reload_failures(&self) -> u64 {
        self.rules_reload_failures.load(Ordering::Relaxed)
    }

    /// The issuers, for key refresh and readiness.
    pub fn issuers(&self) -> &[Arc<IssuerVerifier>] {
        &self.issuers
    }

    /// The identity when it costs no cryptography: the client certificate (when no token
    /// was presented), or a token whose verdict is cached. `None` means the token must be
    /// verified, or there is no usable credential: the per-address budget pays for that
    /// before [`Authenticator::verify_token`] runs (and reports what was wrong).
    pub fn authenticate_cached(
        &self,
        headers: &HeaderMap,
        client_cert: Option<&crate::listener::tls::ClientCert>,
    ) -> Option<Result<Arc<Identity>, AuthError>> {
        let token = match presented_token(headers) {
            Ok(Some(token)) => token,
            Ok(None) => return client_cert.map(|cert| certificate_identity(cert).map(Arc::new)),
            Err(_) => return None,
        };
        if !self.cache.enabled() {
            return None;
        }
        self.cache
            .get(&cache::digest_of(&token), |i| self.issuers[i].generation())
            .map(Ok)
    }

    /// Verifies the bearer token (signature, claims, mapping) and caches the verdict.
    pub async fn verify_token(&self, headers: &HeaderMap) -> Result<Arc<Identity>, AuthError> {
        let token = presented_token(headers)?.ok_or(AuthError::MissingToken)?;
        let token = token.as_ref();
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

    /// Authenticates a request: by its bearer token when it presents one (a bad token is
    /// refused even if a certificate was presented: the client asked to be judged by it),
    /// otherwise by the verified client certificate.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client_cert: Option<&crate::listener::tls::ClientCert>,
    ) -> Result<Arc<Identity>, AuthError> {
        match self.authenticate_cached(headers, client_cert) {
            Some(result) => result,
            None => self.verify_token(headers).await,
        }
    }
}

/// A client certificate's identity, under the same reserved-name rule as tokens. An
/// unreadable certificate is refused with its reason, never mapped to a partial identity.
fn certificate_identity(cert: &crate::listener::tls::ClientCert) -> Result<Identity, AuthError> {
    let cert = match cert {
        crate::listener::tls::ClientCert::Identity(identity) => identity,
        crate::listener::tls::ClientCert::Unreadable(reason) => {
            return Err(AuthError::Certificate(*reason));
        }
    };
    let reserved = |n: &str| n.starts_with("system:");
    if reserved(&cert.username) || cert.groups.iter().any(|g| reserved(g)) {
        return Err(AuthError::Claims(
            "certificate names starting with \"system:\" are reserved for the cluster".into(),
        ));
    }
    Ok(Identity::new(
        cert.username.clone(),
        cert.groups.iter().cloned(),
    ))
}

/// The one bearer token the request presents, wherever the API server would read it from;
/// `None` when it presents none. A token in both places is refused, not picked from.
fn presented_token(headers: &HeaderMap) -> Result<Option<Cow<'_, str>>, AuthError> {
    let from_protocol = websocket::protocol_token(headers)?;
    match (from_protocol, headers.contains_key(AUTHORIZATION)) {
        (Some(_), true) => Err(AuthError::AmbiguousCredential),
        (Some(token), false) => Ok(Some(Cow::Owned(token))),
        (None, true) => bearer_token(headers).map(|t| Some(Cow::Borrowed(t))),
        (None, false) => Ok(None),
    }
}

/// Extracts the one `Authorization` bearer token. Two `Authorization` headers are ambiguous (which one
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

    /// A WebSocket upgrade offering `v5.channel.k8s.io` and a protocol token.
    fn websocket_with_token(token_b64: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        let protocols = format!(
            "v5.channel.k8s.io, {}{token_b64}",
            websocket::BEARER_PROTOCOL_PREFIX
        );
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&protocols).unwrap(),
        );
        h
    }

    #[test]
    fn a_websocket_token_is_the_credential_unless_authorization_is_sent_too() {
        // "dG9r" is base64url for "tok".
        let h = websocket_with_token("dG9r");
        assert_eq!(presented_token(&h), Ok(Some(Cow::Borrowed("tok"))));
        let mut both = h.clone();
        both.insert(AUTHORIZATION, HeaderValue::from_static("Bearer other"));
        assert_eq!(presented_token(&both), Err(AuthError::AmbiguousCredential));
        // An empty protocol token is no token: Authorization alone decides.
        let mut empty = websocket_with_token("");
        empty.insert(AUTHORIZATION, HeaderValue::from_static("Bearer other"));
        assert_eq!(presented_token(&empty), Ok(Some(Cow::Borrowed("other"))));
        assert_eq!(presented_token(&HeaderMap::new()), Ok(None));
        assert_eq!(
            presented_token(&websocket_with_token("dG9r=")),
            Err(AuthError::MalformedProtocolToken)
        );
    }

    fn cert(username: &str, groups: &[&str]) -> crate::listener::tls::ClientCert {
        crate::listener::tls::ClientCert::Identity(crate::listener::tls::CertIdentity {
            username: username.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    }

    #[test]
    fn an_unreadable_certificate_is_refused_with_its_reason() {
        use crate::listener::tls::{ClientCert, UnreadableCert};
        let err =
            certificate_identity(&ClientCert::Unreadable(UnreadableCert::Undecodable)).unwrap_err();
        assert_eq!(err, AuthError::Certificate(UnreadableCert::Undecodable));
        assert!(
            err.to_string()
                .starts_with("the client certificate's subject cannot be read"),
            "{err}"
        );
        let alice = certificate_identity(&cert("alice", &["devs", "ops"])).unwrap();
        assert_eq!(alice.user, "alice");
        assert_eq!(alice.groups, vec!["devs", "ops"]);
        assert!(certificate_identity(&cert("alice", &["system:masters"])).is_err());
    }
}
