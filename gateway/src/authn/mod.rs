//! Authentication: turns a request's credential into an [`Identity`], or refuses it.
//!
//! A request presents one bearer token, in `Authorization` or (on a WebSocket upgrade) in
//! the API server's `Sec-WebSocket-Protocol` form ([`websocket`]); presenting both is
//! refused as ambiguous. Without a token, the verified client certificate speaks for it.
//! Every token is verified against exactly one configured issuer, chosen by the token's
//! `iss` (read unverified only for that choice); the issuer's own key set, algorithm
//! allow-list and audiences then decide. Failures are sorted into a few categories the
//! client may see (expired, audience, signature, ...); the token itself never appears in
//! an error, a log line or a `Debug` output. A reload of the `AuthenticationConfiguration`
//! file swaps in a whole new issuer set, only once every new issuer's keys have loaded
//! ([`Authenticator::reload_rules`]).

mod cache;
mod jwks;
mod jwt;
pub mod keys;
pub mod mapping;
mod registered;
pub(crate) mod websocket;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
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
    /// The file names an issuer that `[[auth.oidc]]` runs already (the TOML changed
    /// since start; its issuers change with a restart only).
    #[error(
        "{location}: issuer {issuer:?} is configured in [[auth.oidc]] too; each issuer may be configured once (the file was not applied)"
    )]
    DuplicateIssuer {
        /// The issuer URL.
        issuer: String,
        /// Its `jwt[i]` entry.
        location: kubegate_config::Location,
    },
    /// A new or changed issuer's `certificateAuthority` cannot be used.
    #[error(
        "{location}: issuer {issuer:?}: cannot set up TLS for its key fetches: {source} (the file was not applied)"
    )]
    Tls {
        /// The issuer URL.
        issuer: String,
        /// Its `jwt[i]` entry.
        location: kubegate_config::Location,
        /// Why.
        source: std::io::Error,
    },
    /// A new issuer's signing keys (or a changed issuer's, from its new source) could not
    /// be loaded: switching to it would refuse all its tokens, so nothing switches.
    #[error(
        "{location}: issuer {issuer:?}: cannot load its signing keys: {source} (the file was not applied)"
    )]
    Keys {
        /// The issuer URL.
        issuer: String,
        /// Its `jwt[i]` entry.
        location: kubegate_config::Location,
        /// Why.
        source: keys::KeyLoadError,
    },
}

/// Verifies bearer tokens against the configured issuers.
pub struct Authenticator {
    /// The running issuers: `[[auth.oidc]]` ones first, then the file's. A reload swaps
    /// in a whole new set; a request loads it without a lock.
    issuers: ArcSwap<Vec<Arc<IssuerVerifier>>>,
    cache: cache::TokenCache,
    /// `AuthenticationConfiguration` reloads applied and refused.
    rules_reloads: AtomicU64,
    rules_reload_failures: AtomicU64,
    /// One reload at a time: each builds on the set the last one left.
    reloading: tokio::sync::Mutex<()>,
    /// Background key refreshes of the issuers it started with; stopped with the
    /// authenticator (a reload stops a removed issuer's through [`IssuerVerifier::retire`]).
    key_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        for task in &self.key_tasks {
            task.abort();
        }
        for verifier in self.issuers.load().iter() {
            verifier.stop_refresh();
        }
    }
}

/// Whether `new` fetches its keys the way `old`'s verifier does (so it keeps that
/// verifier and its keys, and takes only the new audiences and claim rules).
fn same_key_source(old: &kubegate_config::OidcIssuer, new: &kubegate_config::OidcIssuer) -> bool {
    old.keys == new.keys
        && old.certificate_authority_pem == new.certificate_authority_pem
        && old.insecure_http == new.insecure_http
}

impl Authenticator {
    /// An authenticator over these issuers, with the token cache `auth` configures.
    pub fn new(
        issuers: Vec<Arc<IssuerVerifier>>,
        auth: &kubegate_config::Auth,
        key_tasks: Vec<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Authenticator {
            issuers: ArcSwap::from_pointee(issuers),
            cache: cache::TokenCache::new(auth.token_cache_ttl, auth.token_cache_size),
            rules_reloads: AtomicU64::new(0),
            rules_reload_failures: AtomicU64::new(0),
            reloading: tokio::sync::Mutex::new(()),
            key_tasks,
        }
    }

    /// Applies a reloaded `AuthenticationConfiguration` file: `reloaded` is the whole
    /// validated configuration's issuers (those of the file carry claim rules; those of
    /// `[[auth.oidc]]` are left as they run). The file may add issuers, remove them and
    /// change any of their fields. An issuer whose key source is unchanged keeps its
    /// verifier and keys and takes the new audiences and claim rules; a new issuer, or one
    /// whose `discoveryURL` or `certificateAuthority` changed, gets a new verifier whose
    /// keys are loaded before anything switches. Nothing changes unless the whole file
    /// applies. Removed and replaced verifiers are retired: their tokens get 401 and their
    /// cached verdicts end at once.
    pub async fn reload_rules(
        &self,
        reloaded: Result<Vec<kubegate_config::OidcIssuer>, kubegate_config::ConfigError>,
    ) -> Result<(), RulesReloadError> {
        let result = self.apply_rules(reloaded).await;
        let counter = match result {
            Ok(()) => &self.rules_reloads,
            Err(_) => &self.rules_reload_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn apply_rules(
        &self,
        reloaded: Result<Vec<kubegate_config::OidcIssuer>, kubegate_config::ConfigError>,
    ) -> Result<(), RulesReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let from_file: Vec<_> = reloaded?
            .into_iter()
            .filter(|i| i.claim_rules.is_some())
            .collect();
        let running = self.issuers.load_full();
        let (from_toml, running_file): (Vec<_>, Vec<_>) = running
            .iter()
            .cloned()
            .partition(|v| v.config().claim_rules.is_none());

        // Decide each issuer of the file: keep its verifier, or build a new one.
        let mut next_file = Vec::with_capacity(from_file.len());
        let mut kept = Vec::new();
        let mut built = Vec::new();
        for new in &from_file {
            if from_toml.iter().any(|v| v.issuer() == new.issuer) {
                return Err(RulesReloadError::DuplicateIssuer {
                    issuer: new.issuer.clone(),
                    location: new.location.clone(),
                });
            }
            let old = running_file.iter().find(|v| v.issuer() == new.issuer);
            match old {
                Some(old) if same_key_source(old.config(), new) => {
                    kept.push((old.clone(), new));
                    next_file.push(old.clone());
                }
                _ => {
                    let verifier = IssuerVerifier::new(new.clone()).map_err(|source| {
                        RulesReloadError::Tls {
                            issuer: new.issuer.clone(),
                            location: new.location.clone(),
                            source,
                        }
                    })?;
                    let verifier = Arc::new(verifier);
                    built.push(verifier.clone());
                    next_file.push(verifier);
                }
            }
        }

        // Load the new verifiers' keys side by side (each fetch bounded by its timeout);
        // one that fails refuses the whole file.
        let loads = futures_util::future::join_all(built.iter().map(|v| v.refresh_keys())).await;
        let mut first_loads = Vec::with_capacity(built.len());
        for (verifier, load) in built.iter().zip(loads) {
            match load {
                Ok(max_age) => first_loads.push(max_age),
                Err(source) => {
                    return Err(RulesReloadError::Keys {
                        issuer: verifier.issuer().to_string(),
                        location: verifier.config().location.clone(),
                        source,
                    });
                }
            }
        }

        // Everything validated and loaded: switch.
        for (verifier, new) in kept {
            verifier.replace_rules(new);
        }
        let next: Vec<_> = from_toml.into_iter().chain(next_file).collect();
        self.issuers.store(Arc::new(next.clone()));
        for old in &running_file {
            if !next.iter().any(|v| Arc::ptr_eq(v, old)) {
                old.retire();
            }
        }
        for (verifier, max_age) in built.into_iter().zip(first_loads) {
            tracing::info!(issuer = verifier.issuer(), "issuer keys loaded");
            // The verifier holds the handle: retiring it stops the task.
            drop(keys::spawn_key_refresh(verifier, Some(max_age)));
        }
        self.cache
            .retain_issuers(|id| next.iter().any(|v| v.id() == id));
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

    /// The running issuers, for readiness (a snapshot: a reload may change them).
    pub fn issuers(&self) -> Vec<Arc<IssuerVerifier>> {
        self.issuers.load().as_ref().clone()
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
        let issuers = self.issuers.load();
        self.cache
            .get(&cache::digest_of(&token), |i| {
                issuers.get(i).map(|v| (v.id(), v.generation()))
            })
            .map(Ok)
    }

    /// Verifies the bearer token (signature, claims, mapping) and caches the verdict.
    pub async fn verify_token(&self, headers: &HeaderMap) -> Result<Arc<Identity>, AuthError> {
        let token = presented_token(headers)?.ok_or(AuthError::MissingToken)?;
        let token = token.as_ref();
        let issuer = jwt::unverified_issuer(token)?;
        // The verifier is taken out of the set (a reference count, no copy) so a reload
        // during verification does not wait for it.
        let (index, verifier) = self
            .issuers
            .load()
            .iter()
            .enumerate()
            .find(|(_, v)| v.issuer() == issuer)
            .map(|(i, v)| (i, v.clone()))
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
                (index, verifier.id(), generation),
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

    /// Reloads of an `AuthenticationConfiguration` file: the issuer set swaps whole, new
    /// issuers' keys load first, and nothing outlives its issuer in the token cache.
    mod reload {
        use super::super::mapping::tests::{Signer, jwks_file, signer, token};
        use super::*;
        use kubegate_config::OidcIssuer;
        use serde_json::json;

        /// One file issuer `url`, with username `<tag>:<sub>` and its keys from `s`.
        fn file_issuer(url: &str, tag: &str, s: &Signer) -> OidcIssuer {
            let yaml = format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n- issuer:\n    url: {url}\n    audiences: [kubegate]\n  claimMappings:\n    username:\n      expression: '\"{tag}:\" + claims.sub'\n"
            );
            let mut issuer = kubegate_config::parse_authentication_config(
                std::path::Path::new("auth.yaml"),
                &yaml,
            )
            .unwrap()
            .remove(0);
            issuer.keys = jwks_file(s, &issuer.location);
            issuer
        }

        fn auth() -> kubegate_config::Auth {
            kubegate_config::Auth {
                oidc: Vec::new(),
                authentication_config: None,
                token_cache_ttl: std::time::Duration::from_secs(60),
                token_cache_size: 100,
            }
        }

        async fn authenticator(issuers: &[OidcIssuer]) -> Authenticator {
            let mut verifiers = Vec::new();
            for issuer in issuers {
                let v = Arc::new(IssuerVerifier::new(issuer.clone()).unwrap());
                v.refresh_keys().await.unwrap();
                verifiers.push(v);
            }
            Authenticator::new(verifiers, &auth(), Vec::new())
        }

        fn bearer_of(s: &Signer, iss: &str) -> HeaderMap {
            let t = token(s, json!({"iss": iss, "aud": "kubegate", "sub": "jane"}));
            headers(&[&format!("Bearer {t}")])
        }

        async fn user(authn: &Authenticator, h: &HeaderMap) -> Result<String, AuthError> {
            authn.authenticate(h, None).await.map(|i| i.user.clone())
        }

        const A: &str = "https://a.example";

        /// An authenticator over the file issuer [`A`] alone, and a token of `A` it has
        /// verified (and cached) once.
        async fn started_with_a(s: &Signer) -> (Authenticator, HeaderMap) {
            let authn = authenticator(&[file_issuer(A, "a", s)]).await;
            let token_a = bearer_of(s, A);
            assert_eq!(user(&authn, &token_a).await.unwrap(), "a:jane");
            assert!(
                authn.authenticate_cached(&token_a, None).is_some(),
                "cached"
            );
            (authn, token_a)
        }

        /// Reloads applied and refused.
        fn reloads(authn: &Authenticator) -> (u64, u64) {
            (authn.rules_reloads(), authn.rules_reload_failures())
        }

        #[tokio::test]
        async fn issuers_are_added_and_removed_and_a_removed_ones_cached_verdicts_end() {
            let s = signer();
            let (a, b) = ("https://a.example", "https://b.example");
            let authn = authenticator(&[file_issuer(a, "a", &s)]).await;
            let (token_a, token_b) = (bearer_of(&s, a), bearer_of(&s, b));
            assert_eq!(user(&authn, &token_a).await.unwrap(), "a:jane");
            assert!(
                authn.authenticate_cached(&token_a, None).is_some(),
                "cached"
            );
            assert_eq!(user(&authn, &token_b).await, Err(AuthError::UnknownIssuer));
            let kept = authn.issuers()[0].clone();

            // Add b: a keeps its verifier (and keys), b's keys load before the swap.
            let both = vec![file_issuer(a, "a", &s), file_issuer(b, "b", &s)];
            authn.reload_rules(Ok(both)).await.unwrap();
            assert!(Arc::ptr_eq(&authn.issuers()[0], &kept));
            assert!(authn.issuers()[1].has_keys());
            assert_eq!(user(&authn, &token_b).await.unwrap(), "b:jane");

            // Remove a: its token, cached a moment ago, is refused at once. (The reload
            // gave a its rules anew, which ended its earlier verdict.)
            assert!(authn.authenticate_cached(&token_a, None).is_none());
            assert_eq!(user(&authn, &token_a).await.unwrap(), "a:jane");
            assert!(authn.authenticate_cached(&token_a, None).is_some());
            authn
                .reload_rules(Ok(vec![file_issuer(b, "b", &s)]))
                .await
                .unwrap();
            assert!(kept.is_retired());
            assert!(authn.authenticate_cached(&token_a, None).is_none());
            assert_eq!(user(&authn, &token_a).await, Err(AuthError::UnknownIssuer));
            assert_eq!(user(&authn, &token_b).await.unwrap(), "b:jane");
            assert_eq!(reloads(&authn), (2, 0));
        }

        #[tokio::test]
        async fn a_new_issuer_without_keys_refuses_the_whole_file() {
            let s = signer();
            let (a, c) = (A, "https://c.example");
            let (authn, token_a) = started_with_a(&s).await;
            let before = authn.issuers();

            let mut nowhere = file_issuer(c, "c", &s);
            nowhere.keys = jwks_file(&s, &nowhere.location);
            if let kubegate_config::KeySource::JwksFile(f) = &mut nowhere.keys {
                f.value.set_file_name("missing.json");
            }
            // The file also changes a's mapping: that must not apply either.
            let file = vec![file_issuer(a, "changed", &s), nowhere];
            let e = authn.reload_rules(Ok(file)).await.unwrap_err();
            assert!(
                matches!(e, RulesReloadError::Keys { ref issuer, .. } if issuer == c),
                "{e}"
            );
            let shown = e.to_string();
            assert!(shown.contains("auth.yaml"), "located: {shown}");
            assert!(shown.contains("cannot load its signing keys"), "{shown}");
            assert!(shown.contains("missing.json"), "the reason: {shown}");

            let after = authn.issuers();
            assert_eq!(after.len(), 1);
            assert!(Arc::ptr_eq(&after[0], &before[0]) && !after[0].is_retired());
            assert!(authn.authenticate_cached(&token_a, None).is_some());
            assert_eq!(user(&authn, &token_a).await.unwrap(), "a:jane");
            assert_eq!(reloads(&authn), (0, 1));
        }

        #[tokio::test]
        async fn a_changed_key_source_gets_a_new_verifier() {
            let s = signer();
            let a = A;
            let (authn, token_a) = started_with_a(&s).await;
            let old = authn.issuers()[0].clone();

            // The same keys from another file: a new source, so a new verifier.
            let mut moved = file_issuer(a, "a", &s);
            if let kubegate_config::KeySource::JwksFile(f) = &mut moved.keys {
                let copy = f.value.with_file_name("moved.json");
                std::fs::copy(&f.value, &copy).unwrap();
                f.value = copy;
            }
            authn.reload_rules(Ok(vec![moved])).await.unwrap();
            let new = authn.issuers()[0].clone();
            assert!(!Arc::ptr_eq(&old, &new));
            assert!(old.is_retired() && !new.is_retired());
            assert!(
                authn.authenticate_cached(&token_a, None).is_none(),
                "re-verified"
            );
            assert_eq!(user(&authn, &token_a).await.unwrap(), "a:jane");
            assert_eq!(new.fetch_count(), 1);
        }

        #[tokio::test]
        async fn toml_issuers_stay_and_may_not_be_named_by_the_file() {
            let s = signer();
            let (a, t) = (A, "https://t.example");
            let mut toml = file_issuer(t, "t", &s);
            toml.claim_rules = None;
            toml.username_claim = "sub".into();
            let authn = authenticator(&[toml.clone(), file_issuer(a, "a", &s)]).await;
            let from_toml = authn.issuers()[0].clone();

            // The file names the TOML's issuer: refused.
            let e = authn
                .reload_rules(Ok(vec![toml.clone(), file_issuer(t, "t", &s)]))
                .await
                .unwrap_err();
            assert!(matches!(e, RulesReloadError::DuplicateIssuer { .. }), "{e}");

            // The file drops its only issuer's entry for another: the TOML one stays.
            let b = "https://b.example";
            authn
                .reload_rules(Ok(vec![toml, file_issuer(b, "b", &s)]))
                .await
                .unwrap();
            let now = authn.issuers();
            assert_eq!(now.len(), 2);
            assert!(Arc::ptr_eq(&now[0], &from_toml) && !from_toml.is_retired());
            assert_eq!(user(&authn, &bearer_of(&s, t)).await.unwrap(), "jane");
        }
    }
}
