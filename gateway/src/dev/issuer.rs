//! The dev issuer: a small OpenID provider that `kubegate dev` serves from the gateway
//! itself, so the real sign-in flows (the web page, the credential plugin, refresh) run
//! with no provider installed. Dev mode only; nothing else mounts these routes.
//!
//! ```text
//! GET  /.well-known/openid-configuration, /openid/v1/jwks   discovery and keys
//! GET  /kubegate/dev-issuer/authorize   checks the request, shows "dev only — no password:
//!                                       choose alice or bob" (a form holding one random,
//!                                       single-use request id; nothing else is posted)
//! POST /kubegate/dev-issuer/authorize   303 to redirect_uri?code&state&iss
//! POST /kubegate/dev-issuer/token       authorization_code (PKCE S256 required) and
//!                                       refresh_token (rotated; a reused one revokes its
//!                                       chain); OAuth error JSON otherwise
//! POST /kubegate/dev-issuer/revoke      RFC 7009
//! ```
//!
//! Two public clients: the plugin's ([`PLUGIN_CLIENT_ID`], loopback redirects only, gets
//! refresh tokens) and the web page's ([`WEB_CLIENT_ID`], exactly the gateway's own
//! `/kubegate/callback`). Codes live 60 s and are redeemed once; a replayed code revokes
//! what it was redeemed for. Every input is bounded, every table holds at most
//! [`MAX_ENTRIES`], and only SHA-256 digests of codes and tokens are kept, in memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use serde_json::json;
use tokio::time::Instant;

use super::DevSigner;
use crate::listener::ConnInfo;
use crate::signin::page::escape;

/// The plugin's client id (a public client with loopback redirects, RFC 8252).
pub const PLUGIN_CLIENT_ID: &str = "kubectl";
/// The web page's client id (a public client; its one redirect is the gateway's callback).
pub const WEB_CLIENT_ID: &str = super::DEV_AUDIENCE;
/// Where the issuer's endpoints live: under the gateway's reserved prefix, never forwarded.
pub const AUTHORIZE_PATH: &str = "/kubegate/dev-issuer/authorize";
/// The token endpoint.
pub const TOKEN_PATH: &str = "/kubegate/dev-issuer/token";
/// The revocation endpoint.
pub const REVOKE_PATH: &str = "/kubegate/dev-issuer/revoke";
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
const JWKS_PATH: &str = "/openid/v1/jwks";

/// The ID tokens' lifetime unless `kubegate dev --id-token-lifetime` says otherwise: short,
/// so a newcomer sees the plugin refresh.
pub const DEFAULT_ID_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// A code must be redeemed this soon.
const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// The choice page must be answered this soon.
const REQUEST_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// A refresh token (each rotation starts it again).
const REFRESH_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most entries any one table (pages shown, codes, refresh tokens) holds.
pub const MAX_ENTRIES: usize = 10_000;
/// The largest query or form body read.
const MAX_INPUT: usize = 8 * 1024;
/// The longest single parameter (a redirect URI, a state, a nonce).
const MAX_PARAM: usize = 1024;

/// A sample account the choice page offers.
#[derive(Debug, Clone)]
pub struct Account {
    /// The username (`sub`).
    pub name: String,
    /// The groups (`groups`).
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Plugin,
    Web,
}

impl Client {
    fn from_id(id: &str) -> Option<Self> {
        match id {
            PLUGIN_CLIENT_ID => Some(Client::Plugin),
            WEB_CLIENT_ID => Some(Client::Web),
            _ => None,
        }
    }

    fn id(self) -> &'static str {
        match self {
            Client::Plugin => PLUGIN_CLIENT_ID,
            Client::Web => WEB_CLIENT_ID,
        }
    }
}

/// A checked authorization request, waiting for the person's choice.
#[derive(Debug, Clone)]
struct AuthRequest {
    client: Client,
    redirect_uri: String,
    state: Option<String>,
    nonce: Option<String>,
    challenge: String,
    scope: String,
}

/// An issued code: the request it answers and who was chosen.
#[derive(Debug)]
struct Code {
    request: AuthRequest,
    account: usize,
}

/// A live refresh token. `chain` names the sign-in it descends from.
#[derive(Debug, Clone)]
struct Refresh {
    client: Client,
    account: usize,
    scope: String,
    auth_time: u64,
    chain: u64,
}

type Digest = [u8; 32];

/// A table of entries that expire, at most [`MAX_ENTRIES`] long.
#[derive(Debug)]
struct Table<V> {
    entries: HashMap<Digest, (Instant, V)>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            entries: HashMap::new(),
        }
    }
}

impl<V> Table<V> {
    /// Inserts unless full of live entries.
    fn insert(&mut self, key: Digest, lifetime: Duration, value: V) -> Result<(), Full> {
        let now = Instant::now();
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, (until, _)| *until > now);
            if self.entries.len() >= MAX_ENTRIES {
                return Err(Full);
            }
        }
        self.entries.insert(key, (now + lifetime, value));
        Ok(())
    }

    /// Removes and returns a live entry.
    fn take(&mut self, key: &Digest) -> Option<V> {
        let (until, value) = self.entries.remove(key)?;
        (until > Instant::now()).then_some(value)
    }
}

/// A table is full of live entries.
#[derive(Debug)]
struct Full;

#[derive(Debug, Default)]
struct Store {
    /// Choice pages shown: request id → the checked request.
    requests: Table<AuthRequest>,
    codes: Table<Code>,
    /// Redeemed or refused codes → the chain they started, so a replay revokes it.
    spent_codes: Table<Option<u64>>,
    refresh: Table<Refresh>,
    /// Rotated refresh tokens → their chain, so a reuse revokes it (RFC 9700 4.14.2).
    rotated: Table<u64>,
    next_chain: u64,
}

impl Store {
    fn revoke_chain(&mut self, chain: u64) {
        self.refresh.entries.retain(|_, (_, r)| r.chain != chain);
    }
}

/// What the issuer has done, for tests and the curious.
#[derive(Debug, Default)]
pub struct Counts {
    /// Codes redeemed for tokens.
    pub codes_redeemed: AtomicU64,
    /// Refresh tokens redeemed for new tokens.
    pub refreshes: AtomicU64,
}

/// The dev issuer.
pub struct DevIssuer {
    issuer: String,
    signer: Arc<DevSigner>,
    accounts: Vec<Account>,
    id_token_lifetime: Duration,
    web_redirect: String,
    store: Mutex<Store>,
    /// What it has done.
    pub counts: Counts,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// An OAuth error (RFC 6749 5.2): its code, what went wrong, and the status.
#[derive(Debug)]
pub struct OAuthError {
    code: &'static str,
    description: String,
    status: StatusCode,
}

fn oauth(code: &'static str, description: impl Into<String>) -> OAuthError {
    let status = if code == "invalid_client" {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    OAuthError {
        code,
        description: description.into(),
        status,
    }
}

impl OAuthError {
    fn into_response(self) -> Response {
        let mut r = json_response(
            self.status,
            &json!({"error": self.code, "error_description": self.description}),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"kubegate dev issuer\""),
            );
        }
        r
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(value.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Token responses must never be cached (RFC 6749 5.1).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn digest(secret: &str) -> Digest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// 32 random bytes, base64url: codes, tokens, request ids.
fn random_secret() -> Result<String, OAuthError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| oauth("server_error", "no secure random source"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses a form or query: each parameter at most once and at most [`MAX_PARAM`] bytes.
fn parse_form(text: &[u8]) -> Result<HashMap<String, String>, String> {
    if text.len() > MAX_INPUT {
        return Err(format!("the parameters exceed {MAX_INPUT} bytes"));
    }
    let mut out = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(text) {
        if value.len() > MAX_PARAM {
            return Err(format!("parameter {name} exceeds {MAX_PARAM} bytes"));
        }
        if out
            .insert(name.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(format!("parameter {name} is repeated"));
        }
    }
    Ok(out)
}

/// Whether `uri` is a loopback redirect for a native app (RFC 8252 7.3): plain http to
/// 127.0.0.1, [::1] or localhost on any port, no credentials, query or fragment.
fn loopback_redirect(uri: &str) -> bool {
    let Ok(url) = url::Url::parse(uri) else {
        return false;
    };
    let host_ok = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    url.scheme() == "http"
        && host_ok
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
}

/// A PKCE `code_verifier` (RFC 7636 4.1): 43 to 128 unreserved characters.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An S256 `code_challenge`: the base64url of a SHA-256, 43 characters.
fn valid_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A `state` or `nonce`: printable ASCII (RFC 6749 VSCHAR), at most 512 bytes.
fn valid_opaque(v: &str) -> bool {
    !v.is_empty() && v.len() <= 512 && v.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Why an authorization request is refused, and whether its redirect URI may hear it.
enum Refusal {
    /// The client or redirect URI is not trusted: a page only, never a redirect (RFC
    /// 6749 4.1.2.1), so the issuer cannot be used as an open redirector.
    Page(String),
    /// Sent back to the checked redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

impl DevIssuer {
    /// The issuer at `issuer` (the gateway's URL), signing with `signer` for `accounts`.
    pub fn new(
        issuer: String,
        signer: Arc<DevSigner>,
        accounts: Vec<Account>,
        id_token_lifetime: Duration,
    ) -> Self {
        let web_redirect = format!("{issuer}/kubegate/callback");
        DevIssuer {
            issuer,
            signer,
            accounts,
            id_token_lifetime,
            web_redirect,
            store: Mutex::new(Store::default()),
            counts: Counts::default(),
        }
    }

    /// How long its ID tokens live.
    pub fn id_token_lifetime(&self) -> Duration {
        self.id_token_lifetime
    }

    /// The web page's one redirect URI.
    pub fn web_redirect(&self) -> &str {
        &self.web_redirect
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The discovery document.
    pub fn discovery(&self) -> serde_json::Value {
        let i = &self.issuer;
        json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}{AUTHORIZE_PATH}"),
            "token_endpoint": format!("{i}{TOKEN_PATH}"),
            "revocation_endpoint": format!("{i}{REVOKE_PATH}"),
            "jwks_uri": format!("{i}{JWKS_PATH}"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "scopes_supported": ["openid", "groups", "offline_access"],
            "claims_supported": ["sub", "groups", "iss", "aud", "exp", "iat", "nonce", "auth_time", "azp"],
            "authorization_response_iss_parameter_supported": true,
        })
    }

    /// Checks an authorization request's query.
    fn check_request(&self, query: Option<&str>) -> Result<AuthRequest, Refusal> {
        let q = parse_form(query.unwrap_or("").as_bytes()).map_err(Refusal::Page)?;
        let client_id = q
            .get("client_id")
            .ok_or_else(|| Refusal::Page("the request names no client_id".into()))?;
        let client = Client::from_id(client_id).ok_or_else(|| {
            Refusal::Page(format!(
                "unknown client_id {:?} (the dev issuer knows {PLUGIN_CLIENT_ID:?} and {WEB_CLIENT_ID:?})",
                bounded(client_id)
            ))
        })?;
        let redirect_uri = q
            .get("redirect_uri")
            .ok_or_else(|| Refusal::Page("the request names no redirect_uri".into()))?;
        let allowed = match client {
            Client::Plugin => loopback_redirect(redirect_uri),
            Client::Web => *redirect_uri == self.web_redirect,
        };
        if !allowed {
            return Err(Refusal::Page(match client {
                Client::Plugin => format!(
                    "redirect_uri {:?} is not a loopback URL: client {PLUGIN_CLIENT_ID:?} may only be sent back to http://127.0.0.1:PORT/…, http://[::1]:PORT/… or http://localhost:PORT/…",
                    bounded(redirect_uri)
                ),
                Client::Web => format!(
                    "redirect_uri {:?} is not the gateway's callback: client {WEB_CLIENT_ID:?} may only be sent back to {}",
                    bounded(redirect_uri),
                    self.web_redirect
                ),
            }));
        }
        let state = q.get("state").cloned();
        let refuse = |error: &'static str, description: String| Refusal::Redirect {
            redirect_uri: redirect_uri.clone(),
            state: state.clone().filter(|s| valid_opaque(s)),
            error,
            description,
        };
        if let Some(s) = &state
            && !valid_opaque(s)
        {
            return Err(refuse(
                "invalid_request",
                "state must be 1 to 512 printable ASCII characters".into(),
            ));
        }
        if q.get("response_type").map(String::as_str) != Some("code") {
            return Err(refuse(
                "unsupported_response_type",
                "response_type must be \"code\"".into(),
            ));
        }
        let scope = q.get("scope").cloned().unwrap_or_default();
        if !scope.split(' ').any(|s| s == "openid") {
            return Err(refuse(
                "invalid_scope",
                "scope must include \"openid\"".into(),
            ));
        }
        let challenge = match (
            q.get("code_challenge"),
            q.get("code_challenge_method").map(String::as_str),
        ) {
            (None, _) => {
                return Err(refuse(
                    "invalid_request",
                    "PKCE is required: code_challenge is missing".into(),
                ));
            }
            (Some(_), m) if m != Some("S256") => {
                return Err(refuse(
                    "invalid_request",
                    "code_challenge_method must be S256".into(),
                ));
            }
            (Some(c), _) if !valid_challenge(c) => {
                return Err(refuse(
                    "invalid_request",
                    "code_challenge must be 43 base64url characters (an S256 challenge)".into(),
                ));
            }
            (Some(c), _) => c.clone(),
        };
        let nonce = q.get("nonce").cloned();
        if let Some(n) = &nonce
            && !valid_opaque(n)
        {
            return Err(refuse(
                "invalid_request",
                "nonce must be 1 to 512 printable ASCII characters".into(),
            ));
        }
        Ok(AuthRequest {
            client,
            redirect_uri: redirect_uri.clone(),
            state,
            nonce,
            challenge,
            scope,
        })
    }

    /// `GET authorize`: the choice page, or the refusal.
    fn authorize_page(&self, peer: Option<IpAddr>, parts: &Parts) -> Response {
        if let Some(refused) = off_this_machine(peer) {
            return refused;
        }
        let request = match self.check_request(parts.uri.query()) {
            Ok(r) => r,
            Err(refusal) => return self.refuse(refusal),
        };
        let Ok(id) = random_secret() else {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Dev sign-in failed",
                "<p>No secure random source.</p>",
            );
        };
        let client = request.client;
        let redirect = request.redirect_uri.clone();
        if self
            .store()
            .requests
            .insert(digest(&id), REQUEST_LIFETIME, request)
            .is_err()
        {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Dev sign-in busy",
                "<p>Too many sign-in pages are open; try again in a few minutes.</p>",
            );
        }
        let buttons: String = self
            .accounts
            .iter()
            .map(|a| {
                format!(
                    "<p><button type=\"submit\" name=\"user\" value=\"{n}\">Sign in as <strong>{n}</strong></button> <span class=\"muted\">groups: {g}</span></p>\n",
                    n = escape(&a.name),
                    g = escape(&a.groups.join(", ")),
                )
            })
            .collect();
        let who = match client {
            Client::Plugin => "the kubegate credential plugin (kubectl)",
            Client::Web => "the gateway's sign-in page",
        };
        page(
            StatusCode::OK,
            "Dev sign-in",
            &format!(
                "<h1>kubegate dev issuer</h1>\n<section class=\"error\"><p><strong>dev only — no password.</strong> This is the built-in issuer of <code>kubegate dev</code>: anyone who can reach it can sign in as anyone it lists. Never use it for a real cluster.</p></section>\n<section><p>{who} (client <code>{cid}</code>) asks who you are; you will be sent back to <code>{redirect}</code>.</p>\n<form method=\"post\" action=\"{AUTHORIZE_PATH}\">\n<input type=\"hidden\" name=\"request\" value=\"{id}\">\n{buttons}<p><button type=\"submit\" name=\"user\" value=\"\">Cancel</button></p>\n</form></section>",
                cid = escape(client.id()),
                redirect = escape(&redirect),
            ),
        )
    }

    /// `POST authorize`: the person's choice → a code, sent back with the state.
    fn authorize_choice(&self, peer: Option<IpAddr>, headers: &HeaderMap, body: &[u8]) -> Response {
        if let Some(refused) = off_this_machine(peer) {
            return refused;
        }
        // A browser names the page's origin; a form posted from elsewhere is refused (the
        // request id already ties the post to a page this issuer showed).
        if let Some(origin) = headers.get(header::ORIGIN)
            && origin.as_bytes() != self.issuer.as_bytes()
        {
            return page(
                StatusCode::FORBIDDEN,
                "Dev sign-in refused",
                "<p>The form was posted from another site.</p>",
            );
        }
        let form = match parse_form(body) {
            Ok(f) => f,
            Err(e) => return self.refuse(Refusal::Page(e)),
        };
        let Some(id) = form.get("request") else {
            return self.refuse(Refusal::Page("the form carries no request id".into()));
        };
        let Some(request) = self.store().requests.take(&digest(id)) else {
            return self.refuse(Refusal::Page(
                "this sign-in page expired or was already answered; start the sign-in again".into(),
            ));
        };
        let chosen = form.get("user").map(String::as_str).unwrap_or("");
        if chosen.is_empty() {
            return self.refuse(Refusal::Redirect {
                redirect_uri: request.redirect_uri,
                state: request.state,
                error: "access_denied",
                description: "the sign-in was cancelled".into(),
            });
        }
        let Some(account) = self.accounts.iter().position(|a| a.name == chosen) else {
            return self.refuse(Refusal::Page(format!(
                "there is no dev user {:?}",
                bounded(chosen)
            )));
        };
        let Ok(code) = random_secret() else {
            return self.refuse(Refusal::Page("no secure random source".into()));
        };
        let location = redirect_with(
            &request.redirect_uri,
            &[
                ("code", Some(code.as_str())),
                ("state", request.state.as_deref()),
                ("iss", Some(self.issuer.as_str())),
            ],
        );
        if self
            .store()
            .codes
            .insert(digest(&code), CODE_LIFETIME, Code { request, account })
            .is_err()
        {
            return self.refuse(Refusal::Page(
                "too many sign-ins are in progress; try again in a minute".into(),
            ));
        }
        see_other(&location)
    }

    fn refuse(&self, refusal: Refusal) -> Response {
        match refusal {
            Refusal::Page(why) => page(
                StatusCode::BAD_REQUEST,
                "Dev sign-in refused",
                &format!(
                    "<h1>Sign-in refused</h1>\n<section class=\"error\"><p>{}</p><p>No code or token was issued.</p></section>",
                    escape(&why)
                ),
            ),
            Refusal::Redirect {
                redirect_uri,
                state,
                error,
                description,
            } => see_other(&redirect_with(
                &redirect_uri,
                &[
                    ("error", Some(error)),
                    ("error_description", Some(description.as_str())),
                    ("state", state.as_deref()),
                    ("iss", Some(self.issuer.as_str())),
                ],
            )),
        }
    }

    /// `POST token`.
    pub fn token(&self, headers: &HeaderMap, body: &[u8]) -> Result<serde_json::Value, OAuthError> {
        let form = form_request(headers, body)?;
        let client = client_of(headers, &form)?;
        let need = |name: &str| {
            form.get(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| oauth("invalid_request", format!("{name} is required")))
        };
        match need("grant_type")?.as_str() {
            "authorization_code" => {
                let code = need("code")?;
                let redirect_uri = need("redirect_uri")?;
                let verifier = form.get("code_verifier").ok_or_else(|| {
                    oauth(
                        "invalid_request",
                        "PKCE is required: code_verifier is missing",
                    )
                })?;
                if !valid_verifier(verifier) {
                    return Err(oauth(
                        "invalid_request",
                        "code_verifier must be 43 to 128 unreserved characters",
                    ));
                }
                self.redeem_code(client, code, redirect_uri, verifier)
            }
            "refresh_token" => self.redeem_refresh(client, need("refresh_token")?),
            other => Err(oauth(
                "unsupported_grant_type",
                format!(
                    "grant_type {:?} is not supported (authorization_code, refresh_token)",
                    bounded(other)
                ),
            )),
        }
    }

    fn redeem_code(
        &self,
        client: Client,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<serde_json::Value, OAuthError> {
        let key = digest(code);
        let mut store = self.store();
        let Some(grant) = store.codes.take(&key) else {
            if let Some(chain) = store.spent_codes.take(&key) {
                // RFC 6749 4.1.2: a code used twice revokes what it was redeemed for.
                if let Some(chain) = chain {
                    store.revoke_chain(chain);
                }
                let _ = store.spent_codes.insert(key, CODE_LIFETIME, None);
                return Err(oauth(
                    "invalid_grant",
                    "the code was already used; the tokens issued for it are revoked",
                ));
            }
            return Err(oauth("invalid_grant", "the code is unknown or expired"));
        };
        // Whatever happens now, the code is spent.
        let _ = store.spent_codes.insert(key, CODE_LIFETIME, None);
        let request = &grant.request;
        if request.client != client {
            return Err(oauth(
                "invalid_grant",
                "the code was issued to another client",
            ));
        }
        if request.redirect_uri != redirect_uri {
            return Err(oauth(
                "invalid_grant",
                "redirect_uri differs from the authorization request's",
            ));
        }
        let computed = URL_SAFE_NO_PAD.encode(digest(verifier));
        if aws_lc_rs::constant_time::verify_slices_are_equal(
            computed.as_bytes(),
            request.challenge.as_bytes(),
        )
        .is_err()
        {
            return Err(oauth(
                "invalid_grant",
                "code_verifier does not match the code_challenge (PKCE S256)",
            ));
        }
        let chain = store.next_chain;
        store.next_chain += 1;
        let auth_time = unix_now();
        let refresh = Refresh {
            client,
            account: grant.account,
            scope: request.scope.clone(),
            auth_time,
            chain,
        };
        let answer = self.issue(&mut store, &refresh, request.nonce.as_deref())?;
        if client == Client::Plugin {
            let _ = store.spent_codes.insert(key, CODE_LIFETIME, Some(chain));
        }
        self.counts.codes_redeemed.fetch_add(1, Ordering::Relaxed);
        Ok(answer)
    }

    fn redeem_refresh(&self, client: Client, token: &str) -> Result<serde_json::Value, OAuthError> {
        let key = digest(token);
        let mut store = self.store();
        let Some(old) = store.refresh.take(&key) else {
            if let Some(chain) = store.rotated.take(&key) {
                store.revoke_chain(chain);
                return Err(oauth(
                    "invalid_grant",
                    "the refresh token was already used (rotated); every token of its sign-in is revoked",
                ));
            }
            return Err(oauth(
                "invalid_grant",
                "the refresh token is unknown, expired or revoked",
            ));
        };
        if old.client != client {
            store.revoke_chain(old.chain);
            return Err(oauth(
                "invalid_grant",
                "the refresh token was issued to another client",
            ));
        }
        let _ = store.rotated.insert(key, REFRESH_LIFETIME, old.chain);
        let answer = self.issue(&mut store, &old, None)?;
        self.counts.refreshes.fetch_add(1, Ordering::Relaxed);
        Ok(answer)
    }

    /// Signs an ID token and, for the plugin, stores a new refresh token.
    fn issue(
        &self,
        store: &mut Store,
        grant: &Refresh,
        nonce: Option<&str>,
    ) -> Result<serde_json::Value, OAuthError> {
        let account = self
            .accounts
            .get(grant.account)
            .ok_or_else(|| oauth("server_error", "the account is gone"))?;
        let now = unix_now();
        let lifetime = self.id_token_lifetime.as_secs();
        let mut claims = json!({
            "iss": self.issuer, "sub": account.name, "aud": grant.client.id(),
            "azp": grant.client.id(), "groups": account.groups,
            "iat": now, "nbf": now, "exp": now + lifetime, "auth_time": grant.auth_time,
        });
        if let Some(n) = nonce {
            claims["nonce"] = json!(n);
        }
        let id_token = self
            .signer
            .sign(&claims)
            .map_err(|e| oauth("server_error", e.to_string()))?;
        let mut answer = json!({
            "access_token": random_secret()?,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "id_token": id_token,
            "scope": grant.scope,
        });
        if grant.client == Client::Plugin {
            let refresh = random_secret()?;
            store
                .refresh
                .insert(digest(&refresh), REFRESH_LIFETIME, grant.clone())
                .map_err(|_| oauth("invalid_request", "too many sign-ins are live"))?;
            answer["refresh_token"] = json!(refresh);
        }
        Ok(answer)
    }

    /// `POST revoke` (RFC 7009): a refresh token of the client revokes its whole chain;
    /// anything else is answered 200 too, as the RFC asks.
    pub fn revoke(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), OAuthError> {
        let form = form_request(headers, body)?;
        let client = client_of(headers, &form)?;
        let token = form
            .get("token")
            .ok_or_else(|| oauth("invalid_request", "token is required"))?;
        let mut store = self.store();
        let key = digest(token);
        if let Some((_, r)) = store.refresh.entries.get(&key)
            && r.client == client
        {
            let chain = r.chain;
            store.revoke_chain(chain);
        }
        Ok(())
    }

    /// The issuer's routes, mounted on the dev gateway.
    pub fn routes(self: Arc<Self>, jwks: serde_json::Value) -> Router {
        let discovery = self.discovery();
        Router::new()
            .route(
                DISCOVERY_PATH,
                get(move || async move { json_response(StatusCode::OK, &discovery) }),
            )
            .route(
                JWKS_PATH,
                get(move || async move { json_response(StatusCode::OK, &jwks) }),
            )
            .route(AUTHORIZE_PATH, get(authorize_get).post(authorize_post))
            .route(TOKEN_PATH, post(token_post))
            .route(REVOKE_PATH, post(revoke_post))
            .with_state(self)
    }
}

/// The pages ask for no password, so they serve only this machine (a loopback peer),
/// even when `kubegate dev --listen` opens the gateway to the network; a peer off it
/// could also fill the table of open pages.
fn off_this_machine(peer: Option<IpAddr>) -> Option<Response> {
    if peer.is_some_and(|ip| ip.is_loopback()) {
        return None;
    }
    Some(page(
        StatusCode::FORBIDDEN,
        "Dev sign-in refused",
        "<p>The dev issuer signs in only people on the machine running <code>kubegate dev</code> (a loopback address): it asks for no password.</p>",
    ))
}

fn peer_of(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ConnInfo>().map(|c| c.peer.ip())
}

fn bounded(text: &str) -> String {
    text.chars().take(100).collect()
}

/// A token or revocation request's form: `application/x-www-form-urlencoded` only.
fn form_request(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(oauth(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    parse_form(body).map_err(|e| oauth("invalid_request", e))
}

/// The public client a request names: `client_id` in the form, or HTTP Basic with an
/// empty password (both must agree when both are given).
fn client_of(headers: &HeaderMap, form: &HashMap<String, String>) -> Result<Client, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let bad = || {
                oauth(
                    "invalid_client",
                    "the Authorization header is not Basic client credentials",
                )
            };
            let text = v.to_str().map_err(|_| bad())?;
            let encoded = text.strip_prefix("Basic ").ok_or_else(bad)?;
            let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
            if !secret.is_empty() {
                return Err(oauth(
                    "invalid_client",
                    "the dev issuer's clients are public: they have no secret",
                ));
            }
            let id = percent_encoding::percent_decode_str(id)
                .decode_utf8()
                .map_err(|_| bad())?
                .into_owned();
            Some(id)
        }
    };
    let id = match (basic, form.get("client_id")) {
        (Some(a), Some(b)) if &a != b => {
            return Err(oauth(
                "invalid_request",
                "client_id differs between the Authorization header and the body",
            ));
        }
        (Some(a), _) => a,
        (None, Some(b)) => b.clone(),
        (None, None) => return Err(oauth("invalid_client", "client_id is required")),
    };
    Client::from_id(&id).ok_or_else(|| {
        oauth(
            "invalid_client",
            format!("unknown client_id {:?}", bounded(&id)),
        )
    })
}

fn redirect_with(base: &str, params: &[(&str, Option<&str>)]) -> String {
    let Ok(mut url) = url::Url::parse(base) else {
        return base.to_string();
    };
    {
        let mut q = url.query_pairs_mut();
        for (name, value) in params {
            if let Some(v) = value {
                q.append_pair(name, v);
            }
        }
    }
    url.to_string()
}

fn see_other(location: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// No scripts and no frames; unlike the sign-in pages, one form (posted here, then
/// redirected to the client, so `form-action` is left open).
const CSP: &str = "default-src 'none'; style-src 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A page in the sign-in pages' frame and stylesheet, with their headers but [`CSP`].
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let mut r = crate::signin::page::html(status, title, body);
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

async fn authorize_get(State(issuer): State<Arc<DevIssuer>>, request: Request<Body>) -> Response {
    let (parts, _) = request.into_parts();
    issuer.authorize_page(peer_of(&parts), &parts)
}

async fn authorize_post(State(issuer): State<Arc<DevIssuer>>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    match read_body(body).await {
        Ok(body) => issuer.authorize_choice(peer_of(&parts), &parts.headers, &body),
        Err(reason) => issuer.refuse(Refusal::Page(reason)),
    }
}

/// How long a form's body may take to arrive: these routes sit beside the pipeline, so
/// nothing else bounds a client that sends its body slowly.
const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// A form's body, at most [`MAX_INPUT`] bytes within [`BODY_DEADLINE`]; else why not.
async fn read_body(body: Body) -> Result<axum::body::Bytes, String> {
    match tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, MAX_INPUT)).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(_)) => Err(format!("the body exceeds {MAX_INPUT} bytes")),
        Err(_) => Err(format!(
            "the body did not arrive within {} s",
            BODY_DEADLINE.as_secs()
        )),
    }
}

/// A form-posting endpoint: the body read (bounded), `answer` asked, JSON either way.
async fn form_endpoint(
    request: Request<Body>,
    answer: impl FnOnce(&HeaderMap, &[u8]) -> Result<serde_json::Value, OAuthError>,
) -> Response {
    let (parts, body) = request.into_parts();
    let result = match read_body(body).await {
        Ok(body) => answer(&parts.headers, &body),
        Err(reason) => Err(oauth("invalid_request", reason)),
    };
    match result {
        Ok(value) => {
            let mut r = json_response(StatusCode::OK, &value);
            r.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn token_post(State(issuer): State<Arc<DevIssuer>>, request: Request<Body>) -> Response {
    form_endpoint(request, |h, b| issuer.token(h, b)).await
}

async fn revoke_post(State(issuer): State<Arc<DevIssuer>>, request: Request<Body>) -> Response {
    form_endpoint(request, |h, b| issuer.revoke(h, b).map(|()| json!({}))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://gw.test:8443";
    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const LOOPBACK: &str = "http://127.0.0.1:38000/callback";
    /// A verifier and its S256 challenge (computed apart, with Python's hashlib).
    const VERIFIER: &str = "dBjftJeZ4CVP-mJ92IZwZQnd9ALdjrLMwNi2gMJFL8E";
    const CHALLENGE: &str = "A-AGfKhG2FONg3sp2rBmXaWO-r3-4U8QSuWGbLSnNqk";

    fn issuer() -> DevIssuer {
        let signer = Arc::new(DevSigner::generate(ISSUER.into()).unwrap());
        let accounts = vec![
            Account {
                name: "alice".into(),
                groups: vec!["devs".into()],
            },
            Account {
                name: "bob".into(),
                groups: vec!["guests".into()],
            },
        ];
        DevIssuer::new(ISSUER.into(), signer, accounts, Duration::from_secs(20))
    }

    fn query(pairs: &[(&str, &str)]) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    }

    fn get(issuer: &DevIssuer, pairs: &[(&str, &str)]) -> Response {
        let (parts, ()) = Request::get(format!("{AUTHORIZE_PATH}?{}", query(pairs)))
            .body(())
            .unwrap()
            .into_parts();
        issuer.authorize_page(Some(LOCAL), &parts)
    }

    fn plugin_request(redirect: &str) -> Vec<(&str, &str)> {
        vec![
            ("response_type", "code"),
            ("client_id", PLUGIN_CLIENT_ID),
            ("redirect_uri", redirect),
            ("scope", "openid"),
            ("state", "st-1"),
            ("nonce", "n-1"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ]
    }

    async fn text(r: Response) -> String {
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn location(r: &Response) -> url::Url {
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        url::Url::parse(r.headers()[header::LOCATION].to_str().unwrap()).unwrap()
    }

    fn param(url: &url::Url, name: &str) -> Option<String> {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The request id in a choice page's form.
    fn request_id(html: &str) -> String {
        html.split("name=\"request\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string()
    }

    /// Shows the choice page for `pairs`, then chooses `user`: the redirect.
    async fn choose(issuer: &DevIssuer, pairs: &[(&str, &str)], user: &str) -> Response {
        let page = get(issuer, pairs);
        assert_eq!(page.status(), StatusCode::OK);
        let html = text(page).await;
        let id = request_id(&html);
        issuer.authorize_choice(
            Some(LOCAL),
            &HeaderMap::new(),
            query(&[("request", &id), ("user", user)]).as_bytes(),
        )
    }

    async fn code_for(issuer: &DevIssuer, redirect: &str, user: &str) -> String {
        let r = choose(issuer, &plugin_request(redirect), user).await;
        let url = location(&r);
        assert_eq!(param(&url, "state").as_deref(), Some("st-1"));
        assert_eq!(param(&url, "iss").as_deref(), Some(ISSUER));
        param(&url, "code").unwrap()
    }

    fn form_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h
    }

    fn token(issuer: &DevIssuer, pairs: &[(&str, &str)]) -> Result<serde_json::Value, OAuthError> {
        issuer.token(&form_headers(), query(pairs).as_bytes())
    }

    fn redeem(
        issuer: &DevIssuer,
        code: &str,
        verifier: &str,
    ) -> Result<serde_json::Value, OAuthError> {
        token(
            issuer,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", PLUGIN_CLIENT_ID),
                ("code", code),
                ("redirect_uri", LOOPBACK),
                ("code_verifier", verifier),
            ],
        )
    }

    fn refresh(issuer: &DevIssuer, token_: &str) -> Result<serde_json::Value, OAuthError> {
        token(
            issuer,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", PLUGIN_CLIENT_ID),
                ("refresh_token", token_),
            ],
        )
    }

    fn claims(answer: &serde_json::Value) -> serde_json::Value {
        let jwt = answer["id_token"].as_str().unwrap();
        let payload = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    fn refused(result: Result<serde_json::Value, OAuthError>, code: &str, words: &str) {
        let e = result.expect_err("refused");
        assert_eq!(e.code, code, "{e:?}");
        assert!(e.description.contains(words), "{e:?}");
    }

    #[tokio::test]
    async fn a_code_with_its_verifier_gives_signed_tokens_once() {
        let issuer = issuer();
        let code = code_for(&issuer, LOOPBACK, "alice").await;
        let answer = redeem(&issuer, &code, VERIFIER).unwrap();
        let c = claims(&answer);
        assert_eq!(c["iss"], ISSUER);
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["aud"], PLUGIN_CLIENT_ID);
        assert_eq!(c["groups"], json!(["devs"]));
        assert_eq!(c["nonce"], "n-1");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 20);
        assert_eq!(answer["token_type"], "Bearer");
        let refresh_token = answer["refresh_token"].as_str().unwrap().to_string();
        // The signature verifies against the published key.
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(issuer.signer.jwks()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&[PLUGIN_CLIENT_ID]);
        v.set_issuer(&[ISSUER]);
        jsonwebtoken::decode::<serde_json::Value>(answer["id_token"].as_str().unwrap(), &key, &v)
            .unwrap();

        // A replayed code is refused and revokes the refresh token it was redeemed for.
        refused(
            redeem(&issuer, &code, VERIFIER),
            "invalid_grant",
            "already used",
        );
        refused(refresh(&issuer, &refresh_token), "invalid_grant", "unknown");
        assert_eq!(issuer.counts.codes_redeemed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn pkce_s256_is_required_at_both_ends() {
        let issuer = issuer();
        // At the authorize endpoint: a trusted redirect URI hears the error, with the state.
        for (drop, set, words) in [
            ("code_challenge", None, "code_challenge is missing"),
            (
                "code_challenge_method",
                Some(("code_challenge_method", "plain")),
                "S256",
            ),
            (
                "code_challenge",
                Some(("code_challenge", "short")),
                "43 base64url",
            ),
        ] {
            let mut pairs: Vec<_> = plugin_request(LOOPBACK)
                .into_iter()
                .filter(|(k, _)| *k != drop)
                .collect();
            pairs.extend(set);
            let r = get(&issuer, &pairs);
            let url = location(&r);
            assert!(url.as_str().starts_with(LOOPBACK), "{url}");
            assert_eq!(param(&url, "error").as_deref(), Some("invalid_request"));
            assert!(param(&url, "error_description").unwrap().contains(words));
            assert_eq!(param(&url, "state").as_deref(), Some("st-1"));
            assert!(param(&url, "code").is_none());
        }
        // At the token endpoint: no verifier is refused before the code is touched...
        let code = code_for(&issuer, LOOPBACK, "alice").await;
        refused(
            token(
                &issuer,
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", PLUGIN_CLIENT_ID),
                    ("code", &code),
                    ("redirect_uri", LOOPBACK),
                ],
            ),
            "invalid_request",
            "code_verifier is missing",
        );
        // ...a wrong one spends the code, so the right one cannot follow.
        let wrong = "x".repeat(43);
        refused(redeem(&issuer, &code, &wrong), "invalid_grant", "PKCE");
        refused(
            redeem(&issuer, &code, VERIFIER),
            "invalid_grant",
            "already used",
        );
        refused(
            redeem(&issuer, &code, "short"),
            "invalid_request",
            "43 to 128",
        );
        assert_eq!(issuer.counts.codes_redeemed.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn only_registered_clients_and_their_redirects_are_served() {
        let issuer = issuer();
        let web_redirect = format!("{ISSUER}/kubegate/callback");
        let bad = [
            (
                PLUGIN_CLIENT_ID,
                "https://evil.example/callback",
                "not a loopback",
            ),
            (
                PLUGIN_CLIENT_ID,
                "http://10.0.0.1:8000/callback",
                "not a loopback",
            ),
            (
                PLUGIN_CLIENT_ID,
                "http://127.0.0.1.evil.example/cb",
                "not a loopback",
            ),
            (
                PLUGIN_CLIENT_ID,
                "http://localhost.evil.example:80/",
                "not a loopback",
            ),
            (
                PLUGIN_CLIENT_ID,
                "http://user@127.0.0.1:80/",
                "not a loopback",
            ),
            (
                PLUGIN_CLIENT_ID,
                "http://127.0.0.1:80/?next=x",
                "not a loopback",
            ),
            (WEB_CLIENT_ID, LOOPBACK, "not the gateway"),
            (
                WEB_CLIENT_ID,
                "https://gw.test:8443/kubegate/other",
                "not the gateway",
            ),
            ("someone", LOOPBACK, "unknown client_id"),
        ];
        for (client, redirect, words) in bad {
            let mut pairs = plugin_request(redirect);
            pairs[1] = ("client_id", client);
            let r = get(&issuer, &pairs);
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{redirect}");
            assert!(r.headers().get(header::LOCATION).is_none(), "{redirect}");
            let html = text(r).await;
            assert!(html.contains(words), "{redirect}: {html}");
            assert!(html.contains("No code or token was issued"));
        }
        for ok in [
            LOOPBACK,
            "http://localhost:9/",
            "http://[::1]:18000/callback",
        ] {
            assert_eq!(
                get(&issuer, &plugin_request(ok)).status(),
                StatusCode::OK,
                "{ok}"
            );
        }
        let mut web = plugin_request(&web_redirect);
        web[1] = ("client_id", WEB_CLIENT_ID);
        assert_eq!(get(&issuer, &web).status(), StatusCode::OK);

        // The token endpoint: an unknown client is invalid_client (401); another client's
        // code is invalid_grant; the web client gets no refresh token.
        let code = code_for(&issuer, LOOPBACK, "bob").await;
        let e = token(
            &issuer,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "someone"),
                ("code", &code),
                ("redirect_uri", LOOPBACK),
                ("code_verifier", VERIFIER),
            ],
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.status),
            ("invalid_client", StatusCode::UNAUTHORIZED)
        );
        let other = token(
            &issuer,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", WEB_CLIENT_ID),
                ("code", &code),
                ("redirect_uri", LOOPBACK),
                ("code_verifier", VERIFIER),
            ],
        );
        refused(other, "invalid_grant", "another client");
        let r = choose(&issuer, &web, "bob").await;
        let web_code = param(&location(&r), "code").unwrap();
        let answer = token(
            &issuer,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", WEB_CLIENT_ID),
                ("code", &web_code),
                ("redirect_uri", &web_redirect),
                ("code_verifier", VERIFIER),
            ],
        )
        .unwrap();
        assert_eq!(claims(&answer)["aud"], WEB_CLIENT_ID);
        assert!(answer.get("refresh_token").is_none());
    }

    #[tokio::test]
    async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_chain() {
        let issuer = issuer();
        let code = code_for(&issuer, LOOPBACK, "alice").await;
        let first = redeem(&issuer, &code, VERIFIER).unwrap();
        let r1 = first["refresh_token"].as_str().unwrap().to_string();
        let second = refresh(&issuer, &r1).unwrap();
        let r2 = second["refresh_token"].as_str().unwrap().to_string();
        assert_ne!(r1, r2);
        let c = claims(&second);
        assert_eq!((c["sub"].as_str(), c.get("nonce")), (Some("alice"), None));
        // r1 again: refused, and r2 (same sign-in) with it.
        refused(refresh(&issuer, &r1), "invalid_grant", "already used");
        refused(refresh(&issuer, &r2), "invalid_grant", "unknown");
        assert_eq!(issuer.counts.refreshes.load(Ordering::Relaxed), 1);

        // Revocation (RFC 7009) ends a chain too; an unknown token is answered quietly.
        let code = code_for(&issuer, LOOPBACK, "alice").await;
        let r3 = redeem(&issuer, &code, VERIFIER).unwrap()["refresh_token"]
            .as_str()
            .unwrap()
            .to_string();
        let revoke = |t: &str| {
            issuer.revoke(
                &form_headers(),
                query(&[("token", t), ("client_id", PLUGIN_CLIENT_ID)]).as_bytes(),
            )
        };
        revoke("nonsense").unwrap();
        revoke(&r3).unwrap();
        refused(refresh(&issuer, &r3), "invalid_grant", "unknown");
        refused(refresh(&issuer, "nonsense"), "invalid_grant", "unknown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_code_lives_sixty_seconds() {
        let issuer = issuer();
        let code = code_for(&issuer, LOOPBACK, "alice").await;
        tokio::time::advance(CODE_LIFETIME + Duration::from_secs(1)).await;
        refused(
            redeem(&issuer, &code, VERIFIER),
            "invalid_grant",
            "unknown or expired",
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_arrives_is_refused_at_the_deadline() {
        let issuer = Arc::new(issuer());
        let request = Request::post(TOKEN_PATH)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from_stream(futures_util::stream::pending::<
                Result<axum::body::Bytes, std::io::Error>,
            >()))
            .unwrap();
        let answer = tokio::spawn(token_post(State(issuer), request));
        tokio::time::advance(BODY_DEADLINE + Duration::from_secs(1)).await;
        let response = tokio::time::timeout(Duration::from_secs(60), answer)
            .await
            .expect("the request was still waiting for its body")
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = text(response).await;
        assert!(body.contains("invalid_request"), "{body}");
        assert!(body.contains("did not arrive within 10 s"), "{body}");
    }

    #[tokio::test]
    async fn the_choice_page_is_single_use_and_refuses_bad_posts() {
        let issuer = issuer();
        let html = text(get(&issuer, &plugin_request(LOOPBACK))).await;
        assert!(html.contains("dev only — no password"), "{html}");
        assert!(html.contains("alice") && html.contains("bob"));
        let id = request_id(&html);
        let post = |headers: &HeaderMap, user: &str| {
            issuer.authorize_choice(
                Some(LOCAL),
                headers,
                query(&[("request", &id), ("user", user)]).as_bytes(),
            )
        };
        let mut foreign = HeaderMap::new();
        foreign.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert_eq!(post(&foreign, "alice").status(), StatusCode::FORBIDDEN);
        // Nobody from another machine sees the page or chooses (nor from no known address).
        let (parts, ()) = Request::get(format!(
            "{AUTHORIZE_PATH}?{}",
            query(&plugin_request(LOOPBACK))
        ))
        .body(())
        .unwrap()
        .into_parts();
        let r = issuer.authorize_page(Some(IpAddr::from([10, 0, 0, 7])), &parts);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let form = query(&[("request", &id), ("user", "alice")]);
        for peer in [Some(IpAddr::from([10, 0, 0, 7])), None] {
            let r = issuer.authorize_choice(peer, &HeaderMap::new(), form.as_bytes());
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            assert!(text(r).await.contains("loopback"));
        }
        // Cancel: access_denied at the client, with the state.
        let url = location(&post(&HeaderMap::new(), ""));
        assert_eq!(param(&url, "error").as_deref(), Some("access_denied"));
        assert_eq!(param(&url, "state").as_deref(), Some("st-1"));
        // The id was spent by the cancel.
        let again = post(&HeaderMap::new(), "alice");
        assert_eq!(again.status(), StatusCode::BAD_REQUEST);
        assert!(text(again).await.contains("already answered"));
        // A user the page did not offer.
        let r = choose(&issuer, &plugin_request(LOOPBACK), "mallory").await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn every_input_is_bounded() {
        let issuer = issuer();
        let long = "s".repeat(MAX_PARAM + 1);
        let mut pairs = plugin_request(LOOPBACK);
        pairs.push(("prompt", &long));
        let r = get(&issuer, &pairs);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(text(r).await.contains("exceeds"));
        let mut pairs = plugin_request(LOOPBACK);
        pairs.push(("state", "twice"));
        assert!(text(get(&issuer, &pairs)).await.contains("repeated"));
        let state = "s".repeat(513);
        let mut pairs = plugin_request(LOOPBACK);
        pairs[4] = ("state", &state);
        let url = location(&get(&issuer, &pairs));
        assert_eq!(param(&url, "error").as_deref(), Some("invalid_request"));
        assert!(param(&url, "state").is_none());
        let body = "a".repeat(MAX_INPUT + 1);
        let e = issuer.token(&form_headers(), body.as_bytes()).unwrap_err();
        assert_eq!(e.code, "invalid_request");
        let e = issuer
            .token(&HeaderMap::new(), b"grant_type=refresh_token")
            .unwrap_err();
        assert!(e.description.contains("x-www-form-urlencoded"), "{e:?}");
        refused(
            token(
                &issuer,
                &[("grant_type", "password"), ("client_id", PLUGIN_CLIENT_ID)],
            ),
            "unsupported_grant_type",
            "password",
        );
        // A table full of live entries refuses more rather than grow.
        let mut table = Table::default();
        for i in 0..MAX_ENTRIES {
            table
                .insert(digest(&i.to_string()), CODE_LIFETIME, ())
                .unwrap();
        }
        assert!(table.insert(digest("one more"), CODE_LIFETIME, ()).is_err());
    }

    #[test]
    fn a_public_client_may_name_itself_with_basic_auth() {
        let mut h = form_headers();
        let basic = format!("Basic {}", STANDARD.encode(format!("{PLUGIN_CLIENT_ID}:")));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&basic).unwrap(),
        );
        assert_eq!(client_of(&h, &HashMap::new()).unwrap(), Client::Plugin);
        let form = HashMap::from([("client_id".to_string(), WEB_CLIENT_ID.to_string())]);
        assert_eq!(client_of(&h, &form).unwrap_err().code, "invalid_request");
        let secret = format!("Basic {}", STANDARD.encode(format!("{PLUGIN_CLIENT_ID}:x")));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&secret).unwrap(),
        );
        assert_eq!(
            client_of(&h, &HashMap::new()).unwrap_err().code,
            "invalid_client"
        );
    }
}
