//! Verification of one issuer's JWTs and the mapping of their claims to an identity.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm as JwtAlg;
use kubegate_config::{ClaimRules, KeySource, OidcIssuer};
use serde::Deserialize;
use serde_json::{Map, Value};

use tokio::time::Instant;
use tracing::{info, warn};

use super::jwks::{KeySet, jwt_alg};
use super::keys::{KeyFetcher, KeyLoadError, fetch_key_set};
use super::registered;
use super::{AuthError, Identity};

/// Usernames and groups under `system:` belong to the cluster's own components; a token
/// must never be able to claim one.
const RESERVED_PREFIX: &str = "system:";

/// Verifies the tokens of one issuer, and owns that issuer's keys.
pub struct IssuerVerifier {
    /// Unique among the verifiers of this process: a cached verdict names the verifier
    /// that made it, so one made by a verifier a reload removed or replaced never counts.
    id: u64,
    config: OidcIssuer,
    /// What a reload of the `AuthenticationConfiguration` file may change; read through
    /// this, never through `config`.
    live: ArcSwap<Live>,
    allowed: Vec<JwtAlg>,
    keys: ArcSwapOption<KeySet>,
    /// Bumped on every key-set change, so cached verdicts made with older keys expire.
    generation: AtomicU64,
    /// Key fetches attempted, for tests and logs.
    fetches: AtomicU64,
    fetcher: KeyFetcher,
    /// Held while fetching: concurrent misses wait for one fetch instead of each starting
    /// their own. Holds the time of the last fetch attempt.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    /// Kids that the last fetch (at the recorded time) did not have: asked again within
    /// the cooldown, they are refused without taking the refresh lock.
    unknown_kids: std::sync::Mutex<(Option<Instant>, HashSet<String>)>,
    /// The background key refresh of this verifier, stopped when a reload removes it.
    refresh_task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

/// Hands out [`IssuerVerifier::id`]s.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The audiences and claim rules of an issuer as the last good reload of its file left
/// them; `retired` once a reload removed or replaced it.
struct Live {
    audiences: Vec<String>,
    claim_rules: Option<Arc<ClaimRules>>,
    retired: bool,
}

/// Unknown kids remembered at most; past this the set restarts (the cooldown still bounds
/// fetches, this only bounds memory).
const MAX_UNKNOWN_KIDS: usize = 10_000;

impl std::fmt::Debug for IssuerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerVerifier")
            .field("issuer", &self.config.issuer)
            .field("has_keys", &self.keys.load().is_some())
            .finish()
    }
}

/// A verified token: who, and until when the verdict holds.
pub struct Verified {
    /// The mapped identity.
    pub identity: Identity,
    /// The token's `exp`, seconds since the epoch.
    pub expires_at: u64,
}

impl IssuerVerifier {
    /// A verifier for this issuer, with no keys yet. Fails only when the issuer's
    /// `certificate_authority` cannot be used.
    pub fn new(config: OidcIssuer) -> std::io::Result<Self> {
        let allowed = config.algorithms.iter().map(|a| jwt_alg(*a)).collect();
        let fetcher = KeyFetcher::for_issuer(&config)?;
        let live = ArcSwap::from_pointee(Live {
            audiences: config.audiences.clone(),
            claim_rules: config.claim_rules.clone(),
            retired: false,
        });
        Ok(IssuerVerifier {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            config,
            live,
            allowed,
            keys: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            fetcher,
            refresh: tokio::sync::Mutex::new(None),
            unknown_kids: std::sync::Mutex::new((None, HashSet::new())),
            refresh_task: std::sync::Mutex::new(None),
        })
    }

    /// This verifier's process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records the task that refreshes this verifier's keys, so a reload that removes
    /// the verifier can stop it.
    pub(crate) fn set_refresh_task(&self, task: tokio::task::AbortHandle) {
        if let Ok(mut slot) = self.refresh_task.lock()
            && let Some(old) = slot.replace(task)
        {
            old.abort();
        }
    }

    /// Stops the background key refresh, if one runs.
    pub(crate) fn stop_refresh(&self) {
        if let Ok(mut slot) = self.refresh_task.lock()
            && let Some(task) = slot.take()
        {
            task.abort();
        }
    }

    /// The issuer URL, exactly as tokens must carry it.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The issuer's configuration.
    pub fn config(&self) -> &OidcIssuer {
        &self.config
    }

    /// Where this issuer's keys come from.
    pub fn key_source(&self) -> &KeySource {
        &self.config.keys
    }

    /// Installs the audiences and claim rules of `reloaded` (the same issuer and key
    /// source, from a reloaded `AuthenticationConfiguration` file). Cached verdicts made
    /// under the old rules end here.
    pub fn replace_rules(&self, reloaded: &OidcIssuer) {
        let retired = self.live.load().retired;
        self.live.store(Arc::new(Live {
            audiences: reloaded.audiences.clone(),
            claim_rules: reloaded.claim_rules.clone(),
            retired,
        }));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Stops accepting this issuer's tokens (a reload removed or replaced it): a
    /// verification that still holds this verifier refuses them as from an untrusted
    /// issuer, its cached verdicts end, and its key refresh stops.
    pub fn retire(&self) {
        let live = self.live.load();
        self.live.store(Arc::new(Live {
            audiences: live.audiences.clone(),
            claim_rules: live.claim_rules.clone(),
            retired: true,
        }));
        self.generation.fetch_add(1, Ordering::Release);
        self.stop_refresh();
    }

    /// Whether a reload retired this issuer.
    pub fn is_retired(&self) -> bool {
        self.live.load().retired
    }

    /// The claim rules in force (an `AuthenticationConfiguration` issuer's).
    pub fn claim_rules(&self) -> Option<Arc<ClaimRules>> {
        self.live.load().claim_rules.clone()
    }

    /// Installs a new key set; requests already verifying keep the one they loaded.
    pub fn set_keys(&self, keys: KeySet) {
        self.keys.store(Some(Arc::new(keys)));
        self.generation.fetch_add(1, Ordering::Release);
        if let Ok(mut kids) = self.unknown_kids.lock() {
            kids.1.clear();
        }
    }

    /// Whether keys have been loaded.
    pub fn has_keys(&self) -> bool {
        self.keys.load().is_some()
    }

    /// The key-set generation (changes whenever the keys do).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Key fetches attempted since start (successful or not).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches the keys now, whatever the cooldown (start-up and scheduled refreshes).
    /// Returns the document's cache lifetime, if it gave one. On failure the last good
    /// key set stays in use.
    pub async fn refresh_keys(&self) -> Result<Option<Duration>, KeyLoadError> {
        let mut last = self.refresh.lock().await;
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let (keys, max_age) = fetch_key_set(self, &self.fetcher).await?;
        self.set_keys(keys);
        Ok(max_age)
    }

    /// A token named `kid`, which the current keys lack: fetch again if the cooldown
    /// allows, sharing the fetch with concurrent callers. Returns the key set to use.
    async fn keys_for_unknown_kid(&self, kid: &str) -> Option<Arc<KeySet>> {
        let cooldown = self.config.key_refresh_cooldown;
        let remembered = self
            .unknown_kids
            .lock()
            .is_ok_and(|k| k.1.contains(kid) && k.0.is_some_and(|t| t.elapsed() < cooldown));
        if remembered {
            return None;
        }
        let mut last = self.refresh.lock().await;
        // Whoever held the lock may have fetched a set that has it.
        if let Some(keys) = self.keys.load_full()
            && keys.has_kid(kid)
        {
            return Some(keys);
        }
        if last.is_none_or(|t| t.elapsed() >= cooldown) {
            *last = Some(Instant::now());
            self.fetches.fetch_add(1, Ordering::Relaxed);
            match fetch_key_set(self, &self.fetcher).await {
                Ok((keys, _)) => {
                    info!(issuer = self.issuer(), "keys refreshed for an unknown kid");
                    self.set_keys(keys);
                }
                Err(e) => {
                    warn!(issuer = self.issuer(), error = %e, "key refresh for an unknown kid failed; keeping the last good set")
                }
            }
        }
        let keys = self.keys.load_full();
        if !keys.as_ref().is_some_and(|k| k.has_kid(kid))
            && let Ok(mut kids) = self.unknown_kids.lock()
        {
            // Remembered against the fetch that lacked it: a later fetch forgets it.
            if kids.0 != *last || kids.1.len() >= MAX_UNKNOWN_KIDS {
                kids.1.clear();
                kids.0 = *last;
            }
            kids.1.insert(kid.to_string());
        }
        keys
    }

    /// Verifies a token and maps its claims to an identity.
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        // One snapshot of the rules for the whole verification.
        let live = self.live.load_full();
        if live.retired {
            return Err(AuthError::UnknownIssuer);
        }
        let (head, payload, signature) = parts(token)?;
        let header = peek_header(head)?;
        let alg = self.allowed_alg(&header.alg)?;
        let mut keys = self.keys.load_full();
        if let Some(kid) = header.kid.as_deref()
            && !keys.as_ref().is_some_and(|k| k.has_kid(kid))
        {
            keys = self.keys_for_unknown_kid(kid).await.or(keys);
        }
        let keys = keys.ok_or(AuthError::KeysUnavailable)?;

        // The signing input: the header and payload as sent, with the dot between them.
        let signed = &token[..head.len() + 1 + payload.len()];
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::MalformedToken)?;
        // Only a key that fits the algorithm and the kid is tried; none verifying is a bad
        // signature.
        if !keys
            .candidates(header.kid.as_deref(), alg)
            .any(|key| key.verify_sig(signed.as_bytes(), &signature).is_ok())
        {
            return Err(AuthError::Signature);
        }
        // The claims of a token whose signature verified.
        let claims: Map<String, Value> = json_part(payload)?;
        registered::check(
            &claims,
            &registered::Expected {
                issuer: &self.config.issuer,
                audiences: &live.audiences,
                leeway: self.config.leeway.as_secs_f64(),
                now: now_secs(),
            },
        )?;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map_or(0, |e| e.max(0.0) as u64);
        Ok(Verified {
            identity: self.identity(claims, live.claim_rules.as_deref())?,
            expires_at,
        })
    }

    fn allowed_alg(&self, name: &str) -> Result<JwtAlg, AuthError> {
        // Parse through the library's names but decide by our allow-list: `none` and the
        // HMAC family are never on it (the configuration refuses them).
        let alg: JwtAlg = name.parse().map_err(|_| AuthError::Algorithm)?;
        if self.allowed.contains(&alg) {
            Ok(alg)
        } else {
            Err(AuthError::Algorithm)
        }
    }

    fn identity(
        &self,
        claims: Map<String, Value>,
        claim_rules: Option<&ClaimRules>,
    ) -> Result<Identity, AuthError> {
        let config = &self.config;
        let iat = match claims.get("iat") {
            None => None,
            Some(v) => Some(
                v.as_f64()
                    .ok_or_else(|| AuthError::Claims("iat is not a number".into()))?,
            ),
        };
        // The library does not check `iat`; a token from the future means a broken or
        // hostile issuer clock.
        if iat.is_some_and(|iat| iat > now_secs() + config.leeway.as_secs_f64()) {
            return Err(AuthError::IssuedInFuture);
        }
        if let Some(max) = config.max_token_lifetime {
            let iat = iat.ok_or_else(|| {
                AuthError::Claims("iat is required to bound the token's lifetime".into())
            })?;
            let exp = claims
                .get("exp")
                .and_then(Value::as_f64)
                .unwrap_or(f64::MAX);
            if exp - iat > max.as_secs_f64() {
                return Err(AuthError::Claims(format!(
                    "the token lives longer than the allowed {}s",
                    max.as_secs()
                )));
            }
        }
        // AuthenticationConfiguration issuers: the file's CEL claim rules decide
        // (gateway/src/authn/mapping.rs).
        if let Some(rules) = claim_rules {
            let user = super::mapping::evaluate(rules, &claims).result?;
            return Ok(Identity {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                claims,
            });
        }
        for (claim, expected) in &config.required_claims {
            if kubegate_policy::claim(&claims, claim).and_then(Value::as_str)
                != Some(expected.as_str())
            {
                return Err(AuthError::Claims(format!(
                    "required claim {claim:?} is missing or has another value"
                )));
            }
        }

        let username_claim = &config.username_claim;
        let username = match kubegate_policy::claim(&claims, username_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                return Err(AuthError::Claims(format!(
                    "claim {username_claim:?} is not a non-empty string"
                )));
            }
            None => {
                return Err(AuthError::Claims(format!(
                    "claim {username_claim:?} is missing"
                )));
            }
        };
        // As the API server: an email is only an identity once the issuer verified it.
        if username_claim == "email" {
            match claims.get("email_verified") {
                None | Some(Value::Bool(true)) => {}
                Some(_) => return Err(AuthError::Claims("email_verified is not true".into())),
            }
        }
        let username = prefixed(config.username_prefix.as_deref(), username);

        let groups = match &config.groups_claim {
            None => Vec::new(),
            Some(claim) => string_or_list(&claims, claim)?
                .into_iter()
                .map(|g| prefixed(config.groups_prefix.as_deref(), g))
                .collect(),
        };
        // After mapping: a prefix is what lets an issuer's "system:x" through, as
        // "oidc:system:x".
        if username.starts_with(RESERVED_PREFIX) {
            return Err(AuthError::Claims(format!(
                "usernames starting with {RESERVED_PREFIX:?} are reserved for the cluster (set a username_prefix)"
            )));
        }
        if groups.iter().any(|g| g.starts_with(RESERVED_PREFIX)) {
            return Err(AuthError::Claims(format!(
                "groups starting with {RESERVED_PREFIX:?} are reserved for the cluster (set a groups_prefix)"
            )));
        }

        let uid = match &config.uid_claim {
            None => None,
            Some(claim) => match kubegate_policy::claim(&claims, claim) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(_) => {
                    return Err(AuthError::Claims(format!(
                        "claim {claim:?} is not a non-empty string"
                    )));
                }
                None => return Err(AuthError::Claims(format!("claim {claim:?} is missing"))),
            },
        };
        let mut extra = BTreeMap::new();
        for (key, claim) in &config.extra {
            let values = string_or_list(&claims, claim)?;
            if !values.is_empty() {
                extra.insert(key.clone(), values);
            }
        }

        Ok(Identity {
            user: username,
            uid,
            groups,
            extra,
            claims,
        })
    }
}

fn prefixed(prefix: Option<&str>, value: String) -> String {
    match prefix {
        Some(p) => format!("{p}{value}"),
        None => value,
    }
}

/// A claim holding one string or a list of strings; absent means empty.
fn string_or_list(claims: &Map<String, Value>, claim: &str) -> Result<Vec<String>, AuthError> {
    match kubegate_policy::claim(claims, claim) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(AuthError::Claims(format!(
                    "claim {claim:?} must hold strings only"
                ))),
            })
            .collect(),
        Some(_) => Err(AuthError::Claims(format!(
            "claim {claim:?} must be a string or a list of strings"
        ))),
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The three parts of a compact JWS: header, payload and signature, each base64url.
fn parts(token: &str) -> Result<(&str, &str, &str), AuthError> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(head), Some(payload), Some(signature), None) => Ok((head, payload, signature)),
        _ => Err(AuthError::MalformedToken),
    }
}

/// One base64url part of a token, read as JSON.
fn json_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::MalformedToken)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::MalformedToken)
}

#[derive(Deserialize)]
struct PeekHeader {
    alg: String,
    kid: Option<String>,
}

/// The token header's `alg` and `kid`, read before verification only to choose the key.
/// Other header fields (`jwk`, `jku`, `x5u`, `x5c`) are ignored on purpose: a token must not
/// bring its own key.
fn peek_header(head: &str) -> Result<PeekHeader, AuthError> {
    json_part(head)
}

/// The `iss` claim, read unverified only to choose which issuer verifies the token.
pub(super) fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let (_, payload, _) = parts(token)?;
    let iss: Iss = json_part(payload)?;
    iss.iss
        .ok_or_else(|| AuthError::Claims("claim \"iss\" is missing".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn issuer_is_read_from_the_payload() {
        let t = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"iss":"https://i"}"#)
        );
        assert_eq!(unverified_issuer(&t).unwrap(), "https://i");
        assert_eq!(unverified_issuer("a.b"), Err(AuthError::MalformedToken));
        assert_eq!(unverified_issuer("a.b.c.d"), Err(AuthError::MalformedToken));
        let no_iss = format!("{}.{}.sig", b64("{}"), b64("{}"));
        assert!(matches!(
            unverified_issuer(&no_iss),
            Err(AuthError::Claims(_))
        ));
    }

    fn issuer(edit: impl FnOnce(&mut OidcIssuer)) -> IssuerVerifier {
        let location = kubegate_config::Location {
            file: "t.toml".into(),
            line: 1,
            column: 1,
            field: "auth.oidc".into(),
        };
        let mut config = OidcIssuer {
            issuer: "https://i".into(),
            audiences: vec!["a".into()],
            keys: KeySource::Discovery("https://i/.well-known/openid-configuration".into()),
            username_claim: "sub".into(),
            username_prefix: None,
            groups_claim: Some("groups".into()),
            groups_prefix: None,
            uid_claim: None,
            extra: BTreeMap::new(),
            required_claims: BTreeMap::new(),
            max_token_lifetime: None,
            certificate_authority: None,
            certificate_authority_pem: None,
            claim_rules: None,
            insecure_http: false,
            algorithms: vec![kubegate_config::Algorithm::RS256],
            leeway: std::time::Duration::from_secs(60),
            key_refresh_cooldown: std::time::Duration::from_secs(30),
            location,
        };
        edit(&mut config);
        IssuerVerifier::new(config).unwrap()
    }

    impl IssuerVerifier {
        fn identity_of(&self, claims: Map<String, Value>) -> Result<Identity, AuthError> {
            self.identity(claims, None)
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn nested_claims_prefixes_uid_and_extra_are_mapped() {
        let v = issuer(|c| {
            c.username_claim = "preferred_username".into();
            c.username_prefix = Some("kc:".into());
            c.groups_claim = Some("realm_access.roles".into());
            c.groups_prefix = Some("kc:".into());
            c.uid_claim = Some("sid".into());
            c.extra.insert("example.com/team".into(), "team".into());
        });
        let id = v
            .identity_of(claims(serde_json::json!({
                "preferred_username": "system:alice",
                "realm_access": {"roles": ["system:masters", "devs"]},
                "sid": "u-1", "team": ["a", "b"],
            })))
            .unwrap();
        assert_eq!(
            id.user, "kc:system:alice",
            "a prefix makes system: names safe"
        );
        assert_eq!(id.groups, vec!["kc:system:masters", "kc:devs"]);
        assert_eq!(id.uid.as_deref(), Some("u-1"));
        assert_eq!(id.extra["example.com/team"], vec!["a", "b"]);
    }

    #[test]
    fn claims_with_dots_in_their_name_are_read_first() {
        let v = issuer(|c| c.groups_claim = Some("https://example.com/groups".into()));
        let id = v
            .identity_of(claims(serde_json::json!({
                "sub": "alice", "https://example.com/groups": ["devs"],
            })))
            .unwrap();
        assert_eq!(id.groups, vec!["devs"]);
    }

    #[test]
    fn reserved_names_without_a_prefix_are_refused() {
        let v = issuer(|_| {});
        let user = v.identity_of(claims(serde_json::json!({"sub": "system:admin"})));
        assert!(matches!(user, Err(AuthError::Claims(_))));
        let group = v.identity_of(claims(
            serde_json::json!({"sub": "a", "groups": ["system:masters"]}),
        ));
        assert!(matches!(group, Err(AuthError::Claims(_))));
    }

    #[test]
    fn required_claims_lifetime_and_email_verification() {
        let v = issuer(|c| {
            c.required_claims.insert("hd".into(), "example.com".into());
        });
        assert!(
            v.identity_of(claims(serde_json::json!({"sub": "a", "hd": "example.com"})))
                .is_ok()
        );
        assert!(
            v.identity_of(claims(serde_json::json!({"sub": "a", "hd": "evil.com"})))
                .is_err()
        );
        assert!(
            v.identity_of(claims(serde_json::json!({"sub": "a"})))
                .is_err()
        );

        let v = issuer(|c| c.max_token_lifetime = Some(std::time::Duration::from_secs(3600)));
        let now = now_secs();
        assert!(
            v.identity_of(claims(
                serde_json::json!({"sub": "a", "iat": now, "exp": now + 600.0})
            ))
            .is_ok()
        );
        assert!(
            v.identity_of(claims(
                serde_json::json!({"sub": "a", "iat": now, "exp": now + 7200.0})
            ))
            .is_err()
        );
        assert!(
            v.identity_of(claims(serde_json::json!({"sub": "a", "exp": now + 600.0})))
                .is_err(),
            "iat required"
        );
        assert_eq!(
            v.identity_of(claims(
                serde_json::json!({"sub": "a", "iat": now + 3600.0, "exp": now + 4000.0})
            )),
            Err(AuthError::IssuedInFuture)
        );

        // Numbers from the token at the edges of what JSON can carry: decided, never a
        // panic or a wrapped subtraction.
        for (iat, exp) in [(-1e308, 1e308), (0.0, f64::MAX), (-f64::MAX, now + 600.0)] {
            assert!(
                matches!(
                    v.identity_of(claims(
                        serde_json::json!({"sub": "a", "iat": iat, "exp": exp})
                    )),
                    Err(AuthError::Claims(_))
                ),
                "iat {iat} exp {exp}"
            );
        }
        assert_eq!(
            v.identity_of(claims(serde_json::json!({
                "sub": "a", "iat": 18446744073709551615u64, "exp": 18446744073709551615u64
            }))),
            Err(AuthError::IssuedInFuture)
        );

        let v = issuer(|c| c.username_claim = "email".into());
        assert!(
            v.identity_of(claims(
                serde_json::json!({"email": "a@x", "email_verified": true})
            ))
            .is_ok()
        );
        assert!(
            v.identity_of(claims(
                serde_json::json!({"email": "a@x", "email_verified": false})
            ))
            .is_err()
        );
        assert!(
            v.identity_of(claims(serde_json::json!({"email": "a@x"})))
                .is_ok()
        );
    }

    #[test]
    fn mapped_claims_of_the_wrong_type_are_refused() {
        let v = issuer(|c| c.uid_claim = Some("sid".into()));
        assert!(
            v.identity_of(claims(serde_json::json!({"sub": "a", "sid": 5})))
                .is_err()
        );
        assert!(
            v.identity_of(claims(serde_json::json!({"sub": "a"})))
                .is_err(),
            "uid missing"
        );
        assert!(
            v.identity_of(claims(serde_json::json!({"sub": 7, "sid": "x"})))
                .is_err()
        );
    }

    /// A signing key of `alg` and its public JWK (kid "k", `alg` pinned when `pin`).
    fn signer(alg: JwtAlg, pin: bool) -> (jsonwebtoken::EncodingKey, jsonwebtoken::jwk::Jwk) {
        use jsonwebtoken::EncodingKey;
        let (sig, pem_key): (&'static rcgen::SignatureAlgorithm, fn(&[u8]) -> _) = match alg {
            JwtAlg::RS256 | JwtAlg::PS256 => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
            JwtAlg::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
            JwtAlg::ES384 => (&rcgen::PKCS_ECDSA_P384_SHA384, EncodingKey::from_ec_pem),
            _ => (&rcgen::PKCS_ED25519, EncodingKey::from_ed_pem),
        };
        let pair = rcgen::KeyPair::generate_for(sig).unwrap();
        let key = match alg {
            // The library reads Ed25519 keys as PKCS#8 DER only.
            JwtAlg::EdDSA => EncodingKey::from_ed_der(&pair.serialize_der()),
            _ => pem_key(pair.serialize_pem().as_bytes()).unwrap(),
        };
        let mut jwk = match alg {
            // The library cannot derive an Ed25519 JWK from its key; aws-lc can.
            JwtAlg::EdDSA => {
                use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
                let pair =
                    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pair.serialize_der()).unwrap();
                let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
                serde_json::from_value(
                    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"}),
                )
                .unwrap()
            }
            _ => jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap(),
        };
        jwk.common.key_id = Some("k".into());
        if !pin {
            jwk.common.key_algorithm = None;
        }
        (key, jwk)
    }

    fn signed(alg: JwtAlg, key: &jsonwebtoken::EncodingKey, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some("k".into());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    #[tokio::test]
    async fn every_algorithm_verifies_with_its_parsed_key_and_only_its_own() {
        use kubegate_config::Algorithm as A;
        let now = now_secs();
        let good = serde_json::json!({
            "iss": "https://i", "aud": "a", "sub": "alice", "exp": now + 600.0,
        });
        for (alg, config_alg) in [
            (JwtAlg::RS256, A::RS256),
            (JwtAlg::PS256, A::PS256),
            (JwtAlg::ES256, A::ES256),
            (JwtAlg::ES384, A::ES384),
            (JwtAlg::EdDSA, A::EdDSA),
        ] {
            let (key, jwk) = signer(alg, true);
            let jwks = serde_json::to_vec(&serde_json::json!({ "keys": [jwk] })).unwrap();
            let v = issuer(|c| c.algorithms = vec![config_alg]);
            v.set_keys(KeySet::parse(&jwks, &[config_alg]).unwrap());
            let token = signed(alg, &key, &good);
            let verified = v
                .verify(&token)
                .await
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(verified.identity.user, "alice", "{alg:?}");
            assert_eq!(verified.expires_at, (now + 600.0) as u64, "{alg:?}");

            // One flipped bit of the payload, and the signature no longer covers it.
            let (head, rest) = token.split_once('.').unwrap();
            let (payload, signature) = rest.split_once('.').unwrap();
            let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
            bytes[2] ^= 1;
            let tampered = format!("{head}.{}.{signature}", URL_SAFE_NO_PAD.encode(bytes));
            assert_eq!(
                v.verify(&tampered).await.err(),
                Some(AuthError::Signature),
                "{alg:?}"
            );
            for malformed in [format!("{token}.x"), format!("{head}.{payload}.%%")] {
                assert_eq!(
                    v.verify(&malformed).await.err(),
                    Some(AuthError::MalformedToken),
                    "{alg:?}"
                );
            }
        }

        // An RSA key pinned to RS256 does not verify PS256, even when the issuer allows
        // both; unpinned, it verifies either.
        let (key, jwk) = signer(JwtAlg::RS256, true);
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": [jwk.clone()] })).unwrap();
        let v = issuer(|c| c.algorithms = vec![A::RS256, A::PS256]);
        v.set_keys(KeySet::parse(&jwks, &[A::RS256, A::PS256]).unwrap());
        assert!(v.verify(&signed(JwtAlg::RS256, &key, &good)).await.is_ok());
        assert_eq!(
            v.verify(&signed(JwtAlg::PS256, &key, &good)).await.err(),
            Some(AuthError::Signature)
        );
        let mut unpinned = jwk;
        unpinned.common.key_algorithm = None;
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": [unpinned] })).unwrap();
        v.set_keys(KeySet::parse(&jwks, &[A::RS256, A::PS256]).unwrap());
        assert!(v.verify(&signed(JwtAlg::PS256, &key, &good)).await.is_ok());

        // The registered claims are checked after the signature.
        let mut expired = good.clone();
        expired["exp"] = serde_json::json!(now - 3600.0);
        assert_eq!(
            v.verify(&signed(JwtAlg::RS256, &key, &expired)).await.err(),
            Some(AuthError::Expired)
        );
    }

    #[test]
    fn a_curve_point_of_the_wrong_width_is_no_key() {
        let (_, mut jwk) = signer(JwtAlg::ES256, true);
        if let jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec) = &mut jwk.algorithm {
            ec.x.truncate(ec.x.len() - 2);
        }
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": [jwk] })).unwrap();
        assert!(KeySet::parse(&jwks, &[kubegate_config::Algorithm::ES256]).is_err());
    }

    #[test]
    fn groups_claim_shapes() {
        let mut m = Map::new();
        m.insert("g".into(), Value::String("a".into()));
        assert_eq!(string_or_list(&m, "g").unwrap(), vec!["a"]);
        m.insert("g".into(), serde_json::json!(["a", "b"]));
        assert_eq!(string_or_list(&m, "g").unwrap(), vec!["a", "b"]);
        m.insert("g".into(), serde_json::json!([1]));
        assert!(string_or_list(&m, "g").is_err());
        m.insert("g".into(), serde_json::json!({"a": 1}));
        assert!(string_or_list(&m, "g").is_err());
        assert!(string_or_list(&m, "missing").unwrap().is_empty());
    }
}
