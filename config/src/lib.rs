//! kubegate's configuration: the `kubegate.toml` schema and its validation.
//!
//! The file is parsed into raw serde structs (`deny_unknown_fields` everywhere), then
//! validated into the types in this crate, which cannot hold an invalid value: a listen
//! address is a `SocketAddr`, a duration is a `Duration`, an issuer is an `https` URL, a
//! file is known to be readable. Security-relevant settings (the TLS pair, the upstream,
//! the issuers and their audiences, the policy) have no defaults; everything else has a
//! safe one. Every error names the file, the line and column, and the dotted field.
//!
//! This crate does no networking and starts nothing; the gateway interprets the values.

mod authentication_config;
mod cel;
mod error;
mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use authentication_config::{
    ClaimRules, ClaimValidationRule, Expression, ExtraMapping, Mapping, UserValidationRule,
    cel_env, parse_authentication_config,
};
pub use cel::{COST_LIMIT, MAX_INPUT_BYTES};
pub use error::{ConfigError, Location};

/// Usernames and groups under `system:` belong to the cluster's own components; no
/// prefix or mapping may produce one.
pub const RESERVED_PREFIX: &str = "system:";

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read configuration file: {e}")))?;
    parse(path, &text)
}

/// Validates configuration text. `file` names the source in errors, and relative paths in
/// the file are resolved against its directory.
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    validate::validate(file, text)
}

/// Validates text holding only an `[upstream]` table, with the same rules (and relative
/// paths resolved the same way) as in a whole configuration: for tools that need the
/// upstream before there is a configuration, such as `kubegate dev`'s cluster probe.
pub fn parse_upstream(file: &Path, text: &str) -> Result<Upstream, ConfigError> {
    validate::validate_upstream(file, text)
}

/// A value together with the place in the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    /// The validated value.
    pub value: T,
    /// Where it was set, for errors found after validation (a PEM file that does not parse).
    pub location: Location,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from.
    pub file: PathBuf,
    /// The TLS listener remote users connect to.
    pub listen: Listen,
    /// The kube-apiserver behind the gateway.
    pub upstream: Upstream,
    /// How users are authenticated.
    pub auth: Auth,
    /// The policy file.
    pub policy: Setting<PathBuf>,
    /// Bounds on requests.
    pub limits: Limits,
    /// The operator listener for health and metrics; `None` when the file has no
    /// `[admin]` table.
    pub admin: Option<Admin>,
    /// The audit trail.
    pub audit: Audit,
    /// Exec and attach sessions written as asciicast files; `None` without a
    /// `[recording]` table (nothing is recorded).
    pub recording: Option<Recording>,
    /// The sign-in web pages under [`LOGIN_PREFIX`]; `None` without a `[login]` table
    /// (the prefix is then refused, never forwarded).
    pub login: Option<Login>,
}

/// The path prefix the gateway keeps for its own pages (sign-in, callback, kubeconfig).
/// Requests under it are answered by the gateway and never forwarded, with or without a
/// `[login]` table.
pub const LOGIN_PREFIX: &str = "/kubegate/";

/// `[login]`: the sign-in page. A person opens `/kubegate/login`, signs in at the OpenID
/// provider (authorization code with PKCE), and gets a page with who the gateway takes
/// them for, what the policy lets them do, and a kubeconfig that calls the credential
/// plugin (`kubegate get-token`): no token and no secret in it.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The provider, exactly as one of the configured issuers (`[[auth.oidc]]` or the
    /// `authentication_config` file) names it, so the ID token is verified with that
    /// issuer's keys, audiences and claim mappings: the page shows the identity API
    /// requests get.
    pub issuer: String,
    /// The web page's client at the provider. Its ID tokens carry it as `aud`, so it must
    /// be among the issuer's audiences (a token for another audience is refused).
    pub client_id: String,
    /// The client secret (a confidential client); `None` for a public client, which then
    /// relies on PKCE alone. Read at start, never logged.
    pub client_secret_file: Option<Setting<PathBuf>>,
    /// The external https URL of `/kubegate/callback`, as registered at the provider.
    pub redirect_url: String,
    /// Scopes asked for; always includes `openid`. Default `["openid"]`.
    pub scopes: Vec<String>,
    /// The public client the handed-out kubeconfig's plugin signs in with
    /// (`--oidc-client-id`). Default `client_id` when that is a public client; required
    /// with a confidential one (its secret cannot go into a kubeconfig).
    pub plugin_client_id: String,
    /// `--oidc-extra-scope` values for the plugin. Default: `scopes` without `openid`.
    pub plugin_extra_scopes: Vec<String>,
    /// A path *on users' machines* of a CA bundle for the provider, passed to the plugin as
    /// `--certificate-authority`; not read by the gateway.
    pub plugin_certificate_authority: Option<String>,
    /// Key material (at least 32 bytes) the sign-in cookie's encryption key is derived
    /// from. Without it a key is generated at start, and sign-ins in flight across a
    /// restart (or between replicas) fail with a clear page and must be started again.
    pub cookie_key_file: Option<Setting<PathBuf>>,
    /// The API server URL the kubeconfig points at. Default: `redirect_url`'s origin.
    pub server_url: String,
    /// The CA bundle the kubeconfig trusts for `server_url`. Default: the listener's own
    /// certificate chain (`[listen] tls_cert`), which must then end in the CA clients
    /// should trust.
    pub certificate_authority: Setting<PathBuf>,
    /// How long a started sign-in may take, from `/kubegate/login` to the callback: the
    /// life of its cookie. Default 10 min, at most 1 h.
    pub sign_in_timeout: Duration,
    /// The `[login]` table.
    pub location: Location,
}

impl std::fmt::Debug for Login {
    // Paths and names only; the secret files' contents are never read here.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("confidential", &self.client_secret_file.is_some())
            .field("redirect_url", &self.redirect_url)
            .field("plugin_client_id", &self.plugin_client_id)
            .finish_non_exhaustive()
    }
}

/// `[recording]`: the terminal of selected exec and attach sessions, written as
/// asciicast v2 files named by the session's audit ID. Opt-in: a session is recorded
/// when the authenticated user is named in `users` or is in one of `groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// Where the files go; created with mode 0700 if missing, and refused at start when
    /// it cannot be created or is open to other users (group or world bits set).
    pub dir: Setting<PathBuf>,
    /// Sessions of users in any of these groups (the groups they authenticated with,
    /// before any `as_groups`) are recorded.
    pub groups: Vec<String>,
    /// Sessions of these users (as authenticated, before any `as_user`) are recorded.
    pub users: Vec<String>,
    /// Chunks of session bytes waiting for a session's writer (each at most one read,
    /// 8 KiB as the splice reads); past it the recording of that session ends, the
    /// session does not. Default 256 (at most 2 MiB per session).
    pub max_buffered: usize,
}

impl Recording {
    /// Default for [`Recording::max_buffered`].
    pub const DEFAULT_MAX_BUFFERED: usize = 256;
}

/// The operator-facing plain-HTTP listener: `/livez`, `/readyz`, `/healthz`, `/metrics`.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Address and port. Defaults to `127.0.0.1:9090`: health and metrics are for the
    /// node's probes and the cluster's scraper, not for users.
    pub addr: SocketAddr,
}

/// The user-facing TLS listener.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Address and port to bind. Defaults to `127.0.0.1:8443`: exposing the gateway is a
    /// decision the operator writes down.
    pub addr: SocketAddr,
    /// PEM certificate chain served to clients.
    pub tls_cert: Setting<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Setting<PathBuf>,
    /// PEM bundle of CAs whose client certificates authenticate users (CN = username,
    /// O = groups). Optional: without it no client certificate is asked for.
    pub client_ca: Option<Setting<PathBuf>>,
    /// A client that has not finished the TLS handshake by then is dropped, so idle
    /// sockets cannot pin connection slots. Default 10 s.
    pub handshake_timeout: Duration,
    /// A connection whose first request's headers have not arrived this long after it
    /// was accepted is dropped; the time covers the TLS handshake and HTTP version
    /// detection too. Also bounds each later HTTP/1.1 request's headers. Default 30 s.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY),
    /// so idle sockets, including HTTP/2 connections that only answer pings, cannot pin
    /// connection slots. Default 3 min.
    pub idle_timeout: Duration,
}

/// The kube-apiserver the gateway forwards to, and the credential it uses there.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Where the connection details and credential come from.
    pub source: UpstreamSource,
    /// How long the gateway waits for the upstream's response headers before answering
    /// 504. Streams (watch, logs) are not bounded by it once their headers arrived.
    /// Default 30 s.
    pub timeout: Duration,
    /// The `[upstream]` table.
    pub location: Location,
}

/// The source of the upstream connection details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSource {
    /// A kubeconfig file and, optionally, a context in it (default: its current context).
    Kubeconfig {
        /// The kubeconfig file.
        path: Setting<PathBuf>,
        /// The context to use.
        context: Option<String>,
    },
    /// The service account of the pod the gateway runs in.
    InCluster,
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct Auth {
    /// OIDC issuers whose JWTs are accepted: the `[[auth.oidc]]` entries, then the
    /// `authentication_config` file's. Never empty, issuer URLs unique across both.
    pub oidc: Vec<OidcIssuer>,
    /// The Kubernetes `AuthenticationConfiguration` file the issuers after the
    /// `[[auth.oidc]]` ones came from, if one is set.
    pub authentication_config: Option<Setting<PathBuf>>,
    /// How long a verified token is remembered (never past its `exp`), so a busy client
    /// pays for the signature check once. Zero disables the cache. Default 60 s.
    pub token_cache_ttl: Duration,
    /// Most tokens remembered at once. Default 10,000.
    pub token_cache_size: usize,
}

/// One trusted OIDC issuer.
#[derive(Debug, Clone)]
pub struct OidcIssuer {
    /// The issuer exactly as tokens carry it in `iss` (compared byte for byte).
    pub issuer: String,
    /// Accepted audiences: a token is accepted if its `aud` names any of them. Never empty.
    pub audiences: Vec<String>,
    /// Where the signing keys come from.
    pub keys: KeySource,
    /// Claim that becomes the Kubernetes username. Default `sub`. Claims may be nested:
    /// `realm_access.roles` reads `roles` inside `realm_access`.
    pub username_claim: String,
    /// Prepended to every username from this issuer, so its users cannot collide with
    /// another issuer's or the cluster's own.
    pub username_prefix: Option<String>,
    /// Claim holding the user's groups (a string or an array of strings), if any.
    pub groups_claim: Option<String>,
    /// Prepended to every group from this issuer.
    pub groups_prefix: Option<String>,
    /// Claim forwarded as `Impersonate-Uid`, if any.
    pub uid_claim: Option<String>,
    /// Extra attributes forwarded as `Impersonate-Extra-<key>`: key → claim.
    pub extra: std::collections::BTreeMap<String, String>,
    /// Claims that must be present with exactly these string values.
    pub required_claims: std::collections::BTreeMap<String, String>,
    /// Tokens whose `exp - iat` exceeds this are refused (and must carry `iat`).
    pub max_token_lifetime: Option<Duration>,
    /// A PEM bundle trusted for the issuer's discovery and JWKS endpoints instead of the
    /// system roots.
    pub certificate_authority: Option<Setting<PathBuf>>,
    /// PEM CA certificates given inline (`certificateAuthority` of an
    /// `AuthenticationConfiguration` file), trusted like `certificate_authority`.
    pub certificate_authority_pem: Option<String>,
    /// The issuer is a plain-http loopback URL (development only; set explicitly).
    pub insecure_http: bool,
    /// A token naming an unknown `kid` makes the gateway re-fetch the issuer's keys at
    /// most once per this period, so random kids cannot turn into a fetch flood.
    /// Default 30 s.
    pub key_refresh_cooldown: Duration,
    /// Signature algorithms accepted from this issuer. Asymmetric only; default RS256.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Default 60 s.
    pub leeway: Duration,
    /// For an issuer from an `AuthenticationConfiguration` file: its claim validation
    /// rules and mappings, which replace the claim settings above.
    pub claim_rules: Option<std::sync::Arc<ClaimRules>>,
    /// The `[[auth.oidc]]` entry, or the `jwt[i]` entry of the file.
    pub location: Location,
}

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document on disk.
    JwksFile(Setting<PathBuf>),
    /// OpenID discovery at this URL (default `<issuer>/.well-known/openid-configuration`).
    Discovery(String),
}

/// JWT signature algorithms kubegate accepts. Symmetric (HMAC) and `none` are absent on
/// purpose: a gateway must never share a verification secret with anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// Parses the JOSE name (`RS256`, ...). HMAC and `none` are refused with a reason.
    pub fn from_name(name: &str) -> Result<Self, String> {
        Ok(match name {
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "EdDSA" => Algorithm::EdDSA,
            "HS256" | "HS384" | "HS512" => {
                return Err(format!(
                    "{name} is a symmetric algorithm; only asymmetric algorithms are accepted"
                ));
            }
            "none" => return Err("unsigned tokens (none) are never accepted".into()),
            _ => return Err(format!("unknown algorithm {name:?}")),
        })
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

/// Bounds on what one request may cost.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body forwarded for a non-streaming request, in bytes. Default 3 MiB,
    /// the API server's own limit for JSON bodies.
    pub max_request_body: u64,
    /// A long-running response (watch, `logs --follow`) or a spliced upgrade (exec, attach,
    /// port-forward) that moves no byte for this long is closed, so abandoned streams
    /// cannot pin gateway resources forever. Default 1 h.
    pub stream_idle_timeout: Duration,
    /// Each identity's request quota. Every request draws one token; a watch, log follow
    /// or upgrade draws it when it starts.
    pub rate: Rate,
    /// Quotas for particular users or groups; the first matching user entry wins, then
    /// the first matching group entry, then `rate`.
    pub overrides: Vec<RateOverride>,
    /// Per client IP: requests whose credential still needs checking (an uncached token,
    /// or none at all). Bounds the signature checks and key fetches one source can cause.
    pub unauthenticated_rate: Rate,
    /// Requests handled at once, in total. Default 2048.
    pub max_in_flight: u32,
    /// Requests handled at once for one identity. Default 128.
    pub max_in_flight_per_user: u32,
    /// Open watches, log follows and upgrades, in total. Default 4096.
    pub max_streams: u32,
    /// Open streams for one identity. Default 128.
    pub max_streams_per_user: u32,
    /// Open client connections. Default 8192.
    pub max_connections: u32,
    /// Open client connections from one address (see `ipv6_prefix_length`), so one
    /// source cannot take every `max_connections` slot. Never above `max_connections`.
    /// Default 256 (or `max_connections` when that is lower).
    pub max_connections_per_address: u32,
    /// IPv6 clients are counted by this prefix for every per-address bound (connections,
    /// unauthenticated requests): one host usually holds a whole /64. 1 to 128; default 64.
    pub ipv6_prefix_length: u8,
}

/// A token-bucket quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained requests per second (never zero).
    pub per_second: std::num::NonZeroU32,
    /// Requests allowed at once above the sustained rate (never zero).
    pub burst: std::num::NonZeroU32,
}

/// A quota for one user or group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateOverride {
    /// Whom it applies to.
    pub subject: RateSubject,
    /// Their quota.
    pub rate: Rate,
}

/// The subject of a [`RateOverride`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateSubject {
    /// A username (after claim mapping and prefixes).
    User(String),
    /// A group.
    Group(String),
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// JSON lines on standard output.
    pub stdout: bool,
    /// JSON lines in this file, rotated by size.
    pub file: Option<PathBuf>,
    /// Rotate before the file would grow past this many bytes. Default 100 MiB.
    pub max_file_size: u64,
    /// Rotated files kept (`audit.log.1` ...). Default 5.
    pub max_backups: usize,
    /// Records waiting for the writer before requests wait for it. Default 10,000.
    pub queue_size: usize,
    /// Leave `user` and `impersonatedUser` (usernames, UIDs, groups, extra) out of every
    /// record in every sink, for sites whose policy forbids keeping them in the trail.
    /// Default false.
    pub omit_user_info: bool,
    /// The API server's webhook backend, to a SIEM or Falco; `None` without an
    /// `[audit.webhook]` table.
    pub webhook: Option<AuditWebhook>,
}

/// `[audit.webhook]`: batches of records POSTed as an `audit.k8s.io/v1` `EventList`, with
/// the API server's `--audit-webhook-*` options and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditWebhook {
    /// A kubeconfig-format file naming the receiver, as `--audit-webhook-config-file`
    /// takes it: the current context's cluster (`server`, which must be https, and its
    /// CA) and user (client certificate or bearer token). Read at start.
    pub config_file: Setting<PathBuf>,
    /// What a full buffer does. Default [`WebhookMode::Batch`].
    pub mode: WebhookMode,
    /// Most records in one POST. Default 400.
    pub batch_max_size: usize,
    /// How long a record waits for others to join its batch. Default 30 s.
    pub batch_max_wait: Duration,
    /// Records held while the receiver is slow or down (besides the batch being sent).
    /// Default 10,000.
    pub buffer_size: usize,
    /// The wait before the first retry of a failed POST; each later wait doubles, up to
    /// 5 minutes. Default 10 s (`--audit-webhook-initial-backoff`).
    pub initial_backoff: Duration,
    /// Retries of a failed POST before its records are counted as lost. Default 4 (five
    /// attempts in all).
    pub max_retries: u32,
    /// One POST's limit, from connecting to the end of the answer. Default 30 s.
    pub request_timeout: Duration,
    /// How long shutdown waits for the buffer to be delivered before counting the rest as
    /// lost. Default 30 s.
    pub flush_timeout: Duration,
}

/// The API server's `--audit-webhook-mode`, as far as kubegate can honour it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookMode {
    /// A full buffer drops the record, counted and logged: requests never wait for the
    /// receiver.
    Batch,
    /// A full buffer makes the request wait for room: nothing is dropped for lack of
    /// space, and a receiver that is down slows requests once the buffer is full.
    Blocking,
}

impl Default for Audit {
    /// Without an `[audit]` table every record still goes somewhere: standard output.
    fn default() -> Self {
        Audit {
            stdout: true,
            file: None,
            max_file_size: 100 * 1024 * 1024,
            max_backups: 5,
            queue_size: 10_000,
            omit_user_info: false,
            webhook: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body: 3 * 1024 * 1024,
            stream_idle_timeout: Duration::from_secs(60 * 60),
            rate: Rate {
                per_second: std::num::NonZeroU32::new(50).unwrap_or(std::num::NonZeroU32::MIN),
                burst: std::num::NonZeroU32::new(100).unwrap_or(std::num::NonZeroU32::MIN),
            },
            overrides: Vec::new(),
            unauthenticated_rate: Rate {
                per_second: std::num::NonZeroU32::new(20).unwrap_or(std::num::NonZeroU32::MIN),
                burst: std::num::NonZeroU32::new(40).unwrap_or(std::num::NonZeroU32::MIN),
            },
            max_in_flight: 2048,
            max_in_flight_per_user: 128,
            max_streams: 4096,
            max_streams_per_user: 128,
            max_connections: 8192,
            max_connections_per_address: 256,
            ipv6_prefix_length: 64,
        }
    }
}
