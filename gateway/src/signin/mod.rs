//! The sign-in web page, served by the gateway itself under the reserved prefix
//! `/kubegate/` (never forwarded, with or without `[login]`).
//!
//! ```text
//! browser ─ GET /kubegate/login ─ 303 to the provider (code + PKCE S256, state, nonce)
//!           └ Set-Cookie: state, nonce, verifier, start time, sealed (cookie.rs)
//! provider ─ 303 to /kubegate/callback?code&state
//!           ├ cookie opened, in time, its state equal, not seen before (else a page)
//!           ├ error=access_denied? a page
//!           ├ the code exchanged with the verifier (flow.rs, the oauth2 crate)
//!           ├ the ID token verified by the gateway's own issuer (keys, audiences, claim
//!           │ mappings: the identity API requests get), its nonce and azp checked
//!           └ the page (page.rs): who, which rules apply, the kubeconfig, the commands
//! ```
//!
//! Nothing the sign-in returned is kept: the tokens are dropped once the page is rendered
//! and never shown or logged. The server remembers only which `state` values were used,
//! until their cookies would have expired, so a callback cannot be replayed. Every request
//! is charged to the client address's unauthenticated budget first, and every sign-in and
//! refusal leaves an audit record (`kubegate.io/signin`, `kubegate.io/signin-reason`).

pub mod cookie;
pub mod flow;
pub mod page;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::any;
use http::request::Parts;
use http::{HeaderValue, Method, Request, StatusCode, header};
use kubegate_config::{Config, ConfigError, Login};

use crate::audit::record::{self, Facts};
use crate::audit::{Annotations, AuditId, Stage, SummaryKey};
use crate::authn::{AuthError, Identity};
use crate::error::GatewayError;
use crate::listener::{ConnInfo, address_key};
use crate::pipeline::Gateway;
use cookie::{CookieError, CookieKey, Pending};
use flow::{FlowError, Provider};

/// Most sign-ins whose `state` is remembered as used at once; past it, callbacks are
/// refused until older ones expire (a flood cannot grow the set without bound).
const MAX_USED_STATES: usize = 100_000;

/// The sign-in page's state: its settings, cookie key, provider and used states.
pub struct SignIn {
    gateway: Arc<Gateway>,
    login: Login,
    key: CookieKey,
    provider: Provider,
    /// SHA-256 of each used `state` → when its cookie expires (seconds since the epoch).
    used: Mutex<HashMap<[u8; 32], u64>>,
}

impl SignIn {
    /// The page `config.login` describes, or `None` without a `[login]` table. Reads the
    /// client secret and the cookie key material, naming the setting on failure.
    pub fn new(gateway: Arc<Gateway>, config: &Config) -> Result<Option<Arc<Self>>, ConfigError> {
        let Some(login) = &config.login else {
            return Ok(None);
        };
        let issuer = config
            .auth
            .oidc
            .iter()
            .find(|i| i.issuer == login.issuer)
            .ok_or_else(|| {
                login
                    .location
                    .error("login.issuer names no configured issuer")
            })?;
        if !issuer.audiences.contains(&login.client_id) {
            tracing::warn!(
                client_id = %login.client_id,
                issuer = %login.issuer,
                "[login] client_id is not among the issuer's audiences: every sign-in will be refused until it is"
            );
        }
        let client_secret = match &login.client_secret_file {
            None => None,
            Some(file) => {
                let text = std::fs::read_to_string(&file.value)
                    .map_err(|e| file.location.error(format!("cannot read: {e}")))?;
                let secret = text.trim_end_matches(['\r', '\n']).to_string();
                if secret.is_empty() {
                    return Err(file.location.error("the client secret file is empty"));
                }
                Some(secret)
            }
        };
        let key = match &login.cookie_key_file {
            Some(file) => {
                let material = std::fs::read(&file.value)
                    .map_err(|e| file.location.error(format!("cannot read: {e}")))?;
                CookieKey::derive(&material).map_err(|e| file.location.error(e))?
            }
            None => CookieKey::generate().map_err(|e| login.location.error(e))?,
        };
        let provider = Provider::new(issuer, login, client_secret).map_err(|e| {
            issuer
                .location
                .error(format!("cannot set up TLS for this issuer: {e}"))
        })?;
        Ok(Some(Arc::new(SignIn {
            gateway,
            login: login.clone(),
            key,
            provider,
            used: Mutex::new(HashMap::new()),
        })))
    }
}

/// The routes of the reserved prefix: the sign-in pages when `signin` is on, otherwise a
/// refusal (400 `Status`) for every path under it, so it is never forwarded either way.
pub fn routes(signin: Option<Arc<SignIn>>, gateway: Arc<Gateway>) -> Router {
    match signin {
        Some(signin) => Router::new()
            .route("/kubegate", any(serve))
            .route("/kubegate/", any(serve))
            .route("/kubegate/{*rest}", any(serve))
            .with_state(signin),
        None => Router::new()
            .route("/kubegate", any(reserved))
            .route("/kubegate/", any(reserved))
            .route("/kubegate/{*rest}", any(reserved))
            .with_state(gateway),
    }
}

/// What a sign-in request's audit record says.
struct Outcome {
    /// `started`, `signed-in`, `refused`, or `None` for pages that need no record.
    signin: Option<&'static str>,
    reason: Option<&'static str>,
    identity: Option<Arc<Identity>>,
}

impl Outcome {
    fn none() -> Self {
        Outcome {
            signin: None,
            reason: None,
            identity: None,
        }
    }

    fn refused(reason: &'static str) -> Self {
        Outcome {
            signin: Some("refused"),
            reason: Some(reason),
            identity: None,
        }
    }
}

/// The facts of a request under the prefix. The record carries the path only: the
/// callback's query holds the code and state.
fn facts(request: &Request<Body>) -> Facts {
    Facts {
        audit_id: AuditId::new(),
        received: SystemTime::now(),
        request_uri: request.uri().path().to_string(),
        source_ip: request.extensions().get::<ConnInfo>().map(|c| c.peer.ip()),
        user_agent: request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// Writes the record of `outcome` and tags the response with its audit ID. Every sign-in
/// and every refusal of one gets a record of its own; refusals before any sign-in work (the
/// address budget's 429, the prefix without `[login]`) go through the per-address
/// summaries, as the pipeline's do, so a flood of them cannot rotate the trail.
async fn audit(gateway: &Gateway, facts: &Facts, outcome: Outcome, response: &mut Response) {
    if let Ok(id) = HeaderValue::from_str(facts.audit_id.as_str()) {
        response
            .headers_mut()
            .insert(crate::pipeline::headers::AUDIT_ID, id);
    }
    let Some(signin) = outcome.signin else { return };
    let mut annotations = Annotations::new();
    annotations.insert("kubegate.io/signin".into(), signin.into());
    if let Some(reason) = outcome.reason {
        annotations.insert("kubegate.io/signin-reason".into(), reason.into());
    }
    let event = record::event(
        facts,
        Stage::ResponseComplete,
        None,
        outcome.identity.as_ref(),
        None,
        response.status().as_u16(),
        annotations,
    );
    if matches!(outcome.reason, Some("rate-limited" | "disabled")) {
        let key = match facts.source_ip {
            Some(ip) => {
                SummaryKey::Address(address_key(ip, gateway.limits.ipv6_prefix_length).to_string())
            }
            None => SummaryKey::Address(String::new()),
        };
        gateway.audit.record_refusal(key, &event).await;
    } else {
        gateway.audit.record(&event).await;
    }
}

/// The prefix without `[login]`: refused, audited, never forwarded.
async fn reserved(State(gateway): State<Arc<Gateway>>, request: Request<Body>) -> Response {
    let facts = facts(&request);
    let mut response = GatewayError::BadRequest(
        "the path prefix /kubegate/ is reserved for the gateway's sign-in pages, which are not enabled ([login] in kubegate.toml)",
    )
    .into_response();
    audit(
        &gateway,
        &facts,
        Outcome::refused("disabled"),
        &mut response,
    )
    .await;
    response
}

async fn serve(State(signin): State<Arc<SignIn>>, request: Request<Body>) -> Response {
    let facts = facts(&request);
    // Only the head is read (a body is never taken), and it must be Sync across awaits.
    let (parts, _body) = request.into_parts();
    let (mut response, outcome) = signin.handle(&parts).await;
    page::secure(&mut response);
    audit(&signin.gateway, &facts, outcome, &mut response).await;
    response
}

impl SignIn {
    async fn handle(&self, request: &Parts) -> (Response, Outcome) {
        // Every page costs the address's unauthenticated budget, before any work.
        if let Some(conn) = request.extensions.get::<ConnInfo>()
            && let Err(e) = self.gateway.admission.check_unauthenticated(conn.peer.ip())
        {
            return (e.into_response(), Outcome::refused("rate-limited"));
        }
        if request.method != Method::GET && request.method != Method::HEAD {
            let mut r = page::refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "The sign-in pages answer GET only.",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return (r, Outcome::refused("method"));
        }
        match request.uri.path() {
            "/kubegate" | "/kubegate/" => (page::start(&self.login), Outcome::none()),
            "/kubegate/login" => self.start().await,
            "/kubegate/callback" => self.callback(request).await,
            "/kubegate/kubeconfig" => match self.kubeconfig().await {
                Ok(kc) => (page::kubeconfig_file(&self.login, kc), Outcome::none()),
                Err(r) => (r, Outcome::refused("kubeconfig")),
            },
            "/kubegate/style.css" => {
                let mut r = Response::new(Body::from(page::STYLESHEET));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/css; charset=utf-8"),
                );
                (r, Outcome::none())
            }
            _ => (
                page::refused(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "There is no such sign-in page.",
                ),
                Outcome::refused("not-found"),
            ),
        }
    }

    /// `/kubegate/login`: a new state, nonce and PKCE pair, sealed into the cookie, and the
    /// browser sent to the provider. The target is the provider's discovered endpoint,
    /// never anything from the request.
    async fn start(&self) -> (Response, Outcome) {
        let started = match self.provider.start().await {
            Ok(s) => s,
            Err(e) => return (self.provider_failed(&e), Outcome::refused("provider")),
        };
        let pending = Pending {
            state: started.state,
            nonce: started.nonce,
            verifier: started.verifier,
            started: cookie::now(),
        };
        let (sealed, location) =
            match (self.key.seal(&pending), HeaderValue::from_str(&started.url)) {
                (Ok(s), Ok(l)) => (s, l),
                _ => {
                    return (
                        page::refused(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "Sign-in failed",
                            "The gateway could not start the sign-in.",
                        ),
                        Outcome::refused("internal"),
                    );
                }
            };
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::SEE_OTHER;
        r.headers_mut().insert(header::LOCATION, location);
        if let Ok(v) = HeaderValue::from_str(&cookie::set(&sealed, self.login.sign_in_timeout)) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        (
            r,
            Outcome {
                signin: Some("started"),
                reason: None,
                identity: None,
            },
        )
    }

    fn provider_failed(&self, e: &FlowError) -> Response {
        tracing::warn!(error = %e, "sign-in: the identity provider failed");
        let status = match e {
            FlowError::CodeRefused(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        page::refused(status, "Sign-in failed", &e.to_string())
    }

    /// `/kubegate/callback`. Every answer removes the cookie.
    async fn callback(&self, request: &Parts) -> (Response, Outcome) {
        let (mut response, outcome) = self.finish(request).await;
        if let Ok(v) = HeaderValue::from_str(&cookie::clear()) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
        (response, outcome)
    }

    async fn finish(&self, request: &Parts) -> (Response, Outcome) {
        let bad = |title: &str, why: &str, reason: &'static str| {
            (
                page::refused(StatusCode::BAD_REQUEST, title, why),
                Outcome::refused(reason),
            )
        };
        let Some(query) = Query::parse(request.uri.query()) else {
            return bad(
                "Sign-in refused",
                "The callback's parameters are malformed or repeated.",
                "malformed",
            );
        };
        let pending = match cookie::read(&request.headers)
            .and_then(|v| self.key.open(v, self.login.sign_in_timeout))
        {
            Ok(p) => p,
            Err(e) => {
                let reason = match e {
                    CookieError::Missing => "no-cookie",
                    CookieError::Invalid => "bad-cookie",
                    CookieError::Expired => "expired",
                };
                return bad("Sign-in refused", &e.to_string(), reason);
            }
        };
        let Some(state) = query.state.as_deref() else {
            return bad(
                "Sign-in refused",
                "The callback carries no state.",
                "no-state",
            );
        };
        if aws_lc_rs::constant_time::verify_slices_are_equal(
            state.as_bytes(),
            pending.state.as_bytes(),
        )
        .is_err()
        {
            return bad(
                "Sign-in refused",
                "The callback's state does not match the sign-in started in this browser (a forged or mixed-up link).",
                "state-mismatch",
            );
        }
        if let Err(why) = self.consume(&pending) {
            return bad("Sign-in refused", why, "replayed");
        }
        if let Some(error) = &query.error {
            let (status, reason) = if error == "access_denied" {
                (StatusCode::FORBIDDEN, "access-denied")
            } else {
                (StatusCode::BAD_REQUEST, "provider-error")
            };
            let mut why = format!(
                "The identity provider did not sign you in: {}.",
                bounded(error)
            );
            if let Some(d) = &query.error_description {
                why.push_str(&format!(" It said: {}", bounded(d)));
            }
            return (
                page::refused(status, "Sign-in cancelled", &why),
                Outcome::refused(reason),
            );
        }
        let Some(code) = query.code.as_deref() else {
            return bad(
                "Sign-in refused",
                "The callback carries no code.",
                "no-code",
            );
        };
        let id_token = match self.provider.exchange(code, &pending.verifier).await {
            Ok(t) => t,
            Err(e) => {
                let reason = match e {
                    FlowError::CodeRefused(_) => "code-refused",
                    _ => "provider",
                };
                return (self.provider_failed(&e), Outcome::refused(reason));
            }
        };
        let identity = match self.verify(&id_token, &pending.nonce).await {
            Ok(identity) => identity,
            Err((why, reason)) => {
                return (
                    page::refused(StatusCode::UNAUTHORIZED, "Sign-in refused", &why),
                    Outcome::refused(reason),
                );
            }
        };
        drop(id_token);
        let rules = self.gateway.policy.snapshot().describe_for(&identity);
        let response = match self.kubeconfig().await {
            Ok(kc) => page::signed_in(&self.login, &identity, &rules, &kc),
            Err(r) => r,
        };
        (
            response,
            Outcome {
                signin: Some("signed-in"),
                reason: None,
                identity: Some(Arc::new(identity)),
            },
        )
    }

    /// Marks the sign-in's state used; `Err` if it already was, or too many are remembered.
    fn consume(&self, pending: &Pending) -> Result<(), &'static str> {
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pending.state.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        let expires = pending
            .started
            .saturating_add(self.login.sign_in_timeout.as_secs());
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if used.contains_key(&key) {
            return Err(
                "This sign-in was already completed or refused once; its link cannot be used again.",
            );
        }
        if used.len() >= MAX_USED_STATES {
            let now = cookie::now();
            used.retain(|_, until| *until >= now);
            if used.len() >= MAX_USED_STATES {
                return Err("Too many sign-ins are in progress; try again in a few minutes.");
            }
        }
        used.insert(key, expires);
        Ok(())
    }

    /// The ID token, verified by the running issuer exactly as an API request's token
    /// would be (signature, issuer, audiences, expiry, claim rules and mappings), then
    /// bound to this sign-in: its `nonce` ours, its `aud` naming our client, and `azp`, when
    /// present, our client. Never cached.
    async fn verify(
        &self,
        id_token: &str,
        nonce: &str,
    ) -> Result<Identity, (String, &'static str)> {
        let verifier = self
            .gateway
            .authn
            .issuers()
            .into_iter()
            .find(|v| v.issuer() == self.login.issuer)
            .ok_or_else(|| {
                (
                    "The sign-in's issuer is no longer configured.".to_string(),
                    "issuer",
                )
            })?;
        let verified = verifier.verify(id_token).await.map_err(|e| match e {
            AuthError::Audience => (
                format!(
                    "The ID token is for another audience: the gateway accepts this issuer's tokens only for its configured audiences, and client {:?} is not among them.",
                    self.login.client_id
                ),
                "audience",
            ),
            other => (format!("The ID token was refused: {other}."), other.category()),
        })?;
        let identity = verified.identity;
        let claims = &identity.claims;
        if claims.get("nonce").and_then(|n| n.as_str()) != Some(nonce) {
            return Err((
                "The ID token does not belong to this sign-in (its nonce differs).".into(),
                "nonce",
            ));
        }
        let ours = |v: &serde_json::Value| v.as_str() == Some(self.login.client_id.as_str());
        let aud_ok = match claims.get("aud") {
            Some(serde_json::Value::Array(a)) => a.iter().any(ours),
            Some(v) => ours(v),
            None => false,
        };
        let azp_ok = claims.get("azp").is_none_or(ours);
        if !aud_ok || !azp_ok {
            return Err((
                format!(
                    "The ID token is for another audience, not client {:?}.",
                    self.login.client_id
                ),
                "audience",
            ));
        }
        Ok(identity)
    }

    /// The kubeconfig, with the CA bundle read now (the listener's certificate may have
    /// been rotated since start).
    async fn kubeconfig(&self) -> Result<String, Response> {
        let ca = &self.login.certificate_authority;
        match tokio::fs::read(&ca.value).await {
            Ok(pem) => Ok(page::kubeconfig(&self.login, &pem)),
            Err(e) => {
                tracing::error!(file = %ca.value.display(), error = %e, "sign-in: cannot read the kubeconfig's CA bundle");
                Err(page::refused(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Kubeconfig unavailable",
                    "The gateway cannot read its CA bundle; tell its operators.",
                ))
            }
        }
    }
}

/// A provider's text, shortened for the page (it is escaped there).
fn bounded(text: &str) -> String {
    text.chars().take(200).collect()
}

/// The callback's query: each parameter at most once.
#[derive(Default)]
struct Query {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Option<Query> {
        let mut q = Query::default();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match name.as_ref() {
                "code" => &mut q.code,
                "state" => &mut q.state,
                "error" => &mut q.error,
                "error_description" => &mut q.error_description,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return None;
            }
        }
        Some(q)
    }
}

#[cfg(test)]
mod tests {
    use super::Query;

    #[test]
    fn a_repeated_callback_parameter_is_refused() {
        let q = Query::parse(Some("code=a&state=b&iss=x")).unwrap();
        assert_eq!(
            (q.code.as_deref(), q.state.as_deref()),
            (Some("a"), Some("b"))
        );
        assert!(Query::parse(Some("state=a&state=b")).is_none());
        assert!(Query::parse(None).unwrap().state.is_none());
    }
}
