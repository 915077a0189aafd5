//! Raw structs → validated configuration. Every rejection carries its location.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use url::Url;

use crate::error::SourceMap;
use crate::raw::{RawConfig, RawListen, RawOidc, RawUpstream};
use crate::{
    Algorithm, Auth, Config, ConfigError, KeySource, Limits, Listen, OidcIssuer, Setting, Upstream,
    UpstreamSource,
};

/// The API server accepts up to 64 issuers in its structured authentication config.
const MAX_ISSUERS: usize = 64;

mod login;

pub(crate) fn validate(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let map = SourceMap::new(file, text);
    let raw: RawConfig = toml::from_str(text).map_err(|e| map.toml_error(&e))?;
    let v = Validator::new(&map, file);
    let mut config = Config {
        file: file.to_path_buf(),
        listen: v.listen(raw.listen.into_inner())?,
        upstream: v.upstream(raw.upstream)?,
        auth: v.auth(raw.auth.into_inner())?,
        policy: v.readable_file(&raw.policy, "policy")?,
        limits: v.limits(raw.limits)?,
        admin: raw.admin.map(|a| v.admin(a.into_inner())).transpose()?,
        audit: raw
            .audit
            .map(|a| v.audit(a))
            .transpose()?
            .unwrap_or_default(),
        recording: raw.recording.map(|r| v.recording(r)).transpose()?,
        login: None,
    };
    // After the issuers and the listener: the sign-in names one and defaults to the other.
    config.login = raw
        .login
        .map(|l| v.login(l, &config.auth, &config.listen))
        .transpose()?;
    Ok(config)
}

/// A file holding only an `[upstream]` table, validated exactly as in a full config.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamOnly {
    upstream: Spanned<RawUpstream>,
}

pub(crate) fn validate_upstream(file: &Path, text: &str) -> Result<Upstream, ConfigError> {
    let map = SourceMap::new(file, text);
    let raw: RawUpstreamOnly = toml::from_str(text).map_err(|e| map.toml_error(&e))?;
    Validator::new(&map, file).upstream(raw.upstream)
}

struct Validator<'a> {
    map: &'a SourceMap<'a>,
    base: PathBuf,
}

impl<'a> Validator<'a> {
    /// A validator for `file`, whose relative paths are resolved against its directory.
    fn new(map: &'a SourceMap<'a>, file: &Path) -> Self {
        Validator {
            map,
            // `Path::new("kubegate.toml").parent()` is `Some("")`, not the current directory.
            base: file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        }
    }
}

impl Validator<'_> {
    fn map_file(&self) -> PathBuf {
        self.map.file().to_path_buf()
    }

    fn err<T>(&self, spanned: &Spanned<T>, field: &str, msg: impl Into<String>) -> ConfigError {
        self.map.location(spanned.span(), field).error(msg)
    }

    fn setting<T, U>(&self, spanned: &Spanned<T>, field: &str, value: U) -> Setting<U> {
        Setting {
            value,
            location: self.map.location(spanned.span(), field),
        }
    }

    fn readable_file(
        &self,
        raw: &Spanned<String>,
        field: &str,
    ) -> Result<Setting<PathBuf>, ConfigError> {
        if raw.get_ref().trim().is_empty() {
            return Err(self.err(raw, field, "must name a file"));
        }
        let path = self.base.join(raw.get_ref());
        match std::fs::File::open(&path) {
            Ok(f) => match f.metadata() {
                Ok(m) if m.is_file() => Ok(self.setting(raw, field, path)),
                Ok(_) => Err(self.err(raw, field, format!("{} is not a file", path.display()))),
                Err(e) => Err(self.err(raw, field, format!("cannot read {}: {e}", path.display()))),
            },
            Err(e) => Err(self.err(raw, field, format!("cannot read {}: {e}", path.display()))),
        }
    }

    fn duration(
        &self,
        raw: Option<&Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(raw) = raw else { return Ok(default) };
        // humantime's message quotes the input; ours does not, in case it was a secret.
        let d = humantime::parse_duration(raw.get_ref()).map_err(|_| {
            self.err(
                raw,
                field,
                "not a duration; write for example \"30s\" or \"5m\"",
            )
        })?;
        if d.is_zero() {
            return Err(self.err(raw, field, "must be greater than zero"));
        }
        Ok(d)
    }

    fn ip(&self, raw: Option<&Spanned<String>>, field: &str) -> Result<IpAddr, ConfigError> {
        match raw {
            None => Ok(IpAddr::from([127, 0, 0, 1])),
            Some(a) => a.get_ref().parse().map_err(|_| {
                self.err(
                    a,
                    field,
                    "not an IP address (for example 0.0.0.0 or 127.0.0.1)",
                )
            }),
        }
    }

    fn admin(&self, raw: crate::raw::RawAdmin) -> Result<crate::Admin, ConfigError> {
        let ip = self.ip(raw.address.as_ref(), "admin.address")?;
        let port = raw.port.as_ref().map_or(9090, |p| *p.get_ref());
        Ok(crate::Admin {
            addr: SocketAddr::new(ip, port),
        })
    }

    fn listen(&self, raw: RawListen) -> Result<Listen, ConfigError> {
        let ip = self.ip(raw.address.as_ref(), "listen.address")?;
        let port = raw.port.as_ref().map_or(8443, |p| *p.get_ref());
        Ok(Listen {
            addr: SocketAddr::new(ip, port),
            tls_cert: self.readable_file(&raw.tls_cert, "listen.tls_cert")?,
            tls_key: self.readable_file(&raw.tls_key, "listen.tls_key")?,
            client_ca: raw
                .client_ca
                .as_ref()
                .map(|f| self.readable_file(f, "listen.client_ca"))
                .transpose()?,
            handshake_timeout: self.duration(
                raw.handshake_timeout.as_ref(),
                "listen.handshake_timeout",
                Duration::from_secs(10),
            )?,
            header_read_timeout: self.duration(
                raw.header_read_timeout.as_ref(),
                "listen.header_read_timeout",
                Duration::from_secs(30),
            )?,
            idle_timeout: self.duration(
                raw.idle_timeout.as_ref(),
                "listen.idle_timeout",
                Duration::from_secs(3 * 60),
            )?,
        })
    }

    fn upstream(&self, raw: Spanned<RawUpstream>) -> Result<Upstream, ConfigError> {
        let location = self.map.location(raw.span(), "upstream");
        let raw = raw.into_inner();
        let in_cluster = raw.in_cluster.as_ref().map(|b| (*b.get_ref(), b));
        let source = match (&raw.kubeconfig, in_cluster) {
            (Some(path), None | Some((false, _))) => UpstreamSource::Kubeconfig {
                path: self.readable_file(path, "upstream.kubeconfig")?,
                context: match &raw.context {
                    Some(c) if c.get_ref().is_empty() => {
                        return Err(self.err(c, "upstream.context", "must not be empty"));
                    }
                    c => c.as_ref().map(|c| c.get_ref().clone()),
                },
            },
            (None, Some((true, _))) => {
                if let Some(c) = &raw.context {
                    return Err(self.err(
                        c,
                        "upstream.context",
                        "a context only applies to a kubeconfig, not with in_cluster = true",
                    ));
                }
                UpstreamSource::InCluster
            }
            (Some(_), Some((true, flag))) => {
                return Err(self.err(
                    flag,
                    "upstream.in_cluster",
                    "set either kubeconfig or in_cluster = true, not both",
                ));
            }
            (None, _) => {
                return Err(
                    location.error("no upstream: set kubeconfig = \"<path>\" or in_cluster = true")
                );
            }
        };
        Ok(Upstream {
            source,
            timeout: self.duration(
                raw.timeout.as_ref(),
                "upstream.timeout",
                Duration::from_secs(30),
            )?,
            location,
        })
    }

    fn auth(&self, raw: crate::raw::RawAuth) -> Result<Auth, ConfigError> {
        let empty = Vec::new();
        let list = raw.oidc.as_ref().map_or(&empty, |l| l.get_ref());
        if let Some(l) = &raw.oidc
            && l.get_ref().is_empty()
        {
            return Err(self.err(l, "auth.oidc", "at least one issuer is required"));
        }
        let mut seen = HashSet::new();
        let mut oidc = Vec::with_capacity(list.len());
        for entry in list {
            let issuer = self.oidc(entry)?;
            if !seen.insert(issuer.issuer.clone()) {
                return Err(self.err(
                    &entry.get_ref().issuer,
                    "auth.oidc.issuer",
                    "duplicate issuer: each issuer may be configured once",
                ));
            }
            oidc.push(issuer);
        }
        let insecure_http = raw
            .authentication_config_insecure_http
            .as_ref()
            .is_some_and(|b| *b.get_ref());
        let authentication_config = match &raw.authentication_config {
            None => {
                if let Some(flag) = &raw.authentication_config_insecure_http {
                    return Err(self.err(
                        flag,
                        "auth.authentication_config_insecure_http",
                        "applies only with authentication_config set",
                    ));
                }
                None
            }
            Some(name) => {
                let file = self.readable_file(name, "auth.authentication_config")?;
                let from_file = crate::authentication_config::load(
                    &file.value,
                    crate::authentication_config::Defaults { insecure_http },
                )?;
                for issuer in from_file {
                    // Refused rather than merged: which claim rules would apply?
                    if !seen.insert(issuer.issuer.clone()) {
                        return Err(issuer.location.error(
                            "duplicate issuer: this URL is also an [[auth.oidc]] issuer in the kubegate configuration; configure it in one place",
                        ));
                    }
                    oidc.push(issuer);
                }
                Some(file)
            }
        };
        if oidc.is_empty() {
            return Err(ConfigError::file(
                &self.map_file(),
                "auth: at least one issuer is required ([[auth.oidc]] or authentication_config)",
            ));
        }
        if oidc.len() > MAX_ISSUERS {
            return Err(ConfigError::file(
                &self.map_file(),
                format!("auth: at most {MAX_ISSUERS} issuers are supported in all"),
            ));
        }
        let token_cache_ttl = match &raw.token_cache_ttl {
            // Zero is meaningful (no cache), so not `duration()`.
            Some(t) => humantime::parse_duration(t.get_ref()).map_err(|_| {
                self.err(
                    t,
                    "auth.token_cache_ttl",
                    "not a duration; write for example \"60s\" (\"0s\" disables the cache)",
                )
            })?,
            None => Duration::from_secs(60),
        };
        let token_cache_size = match &raw.token_cache_size {
            Some(n) if *n.get_ref() == 0 => {
                return Err(self.err(
                    n,
                    "auth.token_cache_size",
                    "must be greater than zero (set token_cache_ttl = \"0s\" to disable the cache)",
                ));
            }
            Some(n) => *n.get_ref(),
            None => 10_000,
        };
        Ok(Auth {
            oidc,
            authentication_config,
            token_cache_ttl,
            token_cache_size,
        })
    }

    fn url(
        &self,
        raw: &Spanned<String>,
        field: &str,
        allow_loopback_http: bool,
    ) -> Result<Url, ConfigError> {
        checked_url(raw.get_ref(), allow_loopback_http, "insecure_http = true")
            .map_err(|m| self.err(raw, field, m))
    }

    fn oidc(&self, entry: &Spanned<RawOidc>) -> Result<OidcIssuer, ConfigError> {
        let location = self.map.location(entry.span(), "auth.oidc");
        let raw = entry.get_ref();
        let insecure_http = raw.insecure_http.as_ref().is_some_and(|b| *b.get_ref());
        self.url(&raw.issuer, "auth.oidc.issuer", insecure_http)?;
        let issuer = raw.issuer.get_ref().clone();

        let audiences = raw.audiences.get_ref();
        if audiences.is_empty() || audiences.iter().any(|a| a.is_empty()) {
            return Err(self.err(
                &raw.audiences,
                "auth.oidc.audiences",
                "list at least one non-empty audience",
            ));
        }

        let keys = match (&raw.jwks_file, &raw.discovery_url) {
            (Some(f), None) => KeySource::JwksFile(self.readable_file(f, "auth.oidc.jwks_file")?),
            (None, Some(u)) => KeySource::Discovery(
                self.url(u, "auth.oidc.discovery_url", insecure_http)?
                    .to_string(),
            ),
            (None, None) => KeySource::Discovery(format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            )),
            (Some(f), Some(_)) => {
                return Err(self.err(
                    f,
                    "auth.oidc.jwks_file",
                    "set either jwks_file or discovery_url, not both",
                ));
            }
        };

        let claim = |c: &Option<Spanned<String>>, field: &str| -> Result<_, ConfigError> {
            match c {
                Some(c) if c.get_ref().trim().is_empty() => {
                    Err(self.err(c, field, "must name a claim"))
                }
                c => Ok(c.as_ref().map(|c| c.get_ref().clone())),
            }
        };
        let username_claim = claim(&raw.username_claim, "auth.oidc.username_claim")?
            .unwrap_or_else(|| "sub".to_string());
        let groups_claim = claim(&raw.groups_claim, "auth.oidc.groups_claim")?;
        let uid_claim = claim(&raw.uid_claim, "auth.oidc.uid_claim")?;
        let prefix = |p: &Option<Spanned<String>>, field: &str| -> Result<_, ConfigError> {
            match p {
                Some(p) if p.get_ref().is_empty() => {
                    Err(self.err(p, field, "must not be empty (omit it for no prefix)"))
                }
                p => Ok(p.as_ref().map(|p| p.get_ref().clone())),
            }
        };
        let username_prefix = prefix(&raw.username_prefix, "auth.oidc.username_prefix")?;
        let groups_prefix = prefix(&raw.groups_prefix, "auth.oidc.groups_prefix")?;
        let extra = match &raw.extra {
            None => Default::default(),
            Some(map) => {
                for (key, claim) in map.get_ref() {
                    // The API server lower-cases extra keys; a mixed-case key here would
                    // never match what it records.
                    if key.is_empty() || key.chars().any(|c| c.is_uppercase() || c.is_whitespace())
                    {
                        return Err(self.err(
                            map,
                            "auth.oidc.extra",
                            format!("key {key:?} must be non-empty, lower-case and without spaces"),
                        ));
                    }
                    if claim.trim().is_empty() {
                        return Err(self.err(
                            map,
                            "auth.oidc.extra",
                            format!("key {key:?} must name a claim"),
                        ));
                    }
                }
                map.get_ref().clone()
            }
        };
        let required_claims = match &raw.required_claims {
            None => Default::default(),
            Some(map) => {
                if map.get_ref().keys().any(|k| k.trim().is_empty()) {
                    return Err(self.err(
                        map,
                        "auth.oidc.required_claims",
                        "claim names must not be empty",
                    ));
                }
                map.get_ref().clone()
            }
        };
        let max_token_lifetime = match &raw.max_token_lifetime {
            None => None,
            Some(d) => {
                Some(self.duration(Some(d), "auth.oidc.max_token_lifetime", Duration::ZERO)?)
            }
        };
        let certificate_authority = match &raw.certificate_authority {
            None => None,
            Some(f) => Some(self.readable_file(f, "auth.oidc.certificate_authority")?),
        };

        let algorithms = match &raw.algorithms {
            None => vec![Algorithm::RS256],
            Some(list) if list.get_ref().is_empty() => {
                return Err(self.err(list, "auth.oidc.algorithms", "list at least one algorithm"));
            }
            Some(list) => list
                .get_ref()
                .iter()
                .map(|a| {
                    Algorithm::from_name(a.get_ref())
                        .map_err(|m| self.err(a, "auth.oidc.algorithms", m))
                })
                .collect::<Result<_, _>>()?,
        };

        let key_refresh_cooldown = self.duration(
            raw.key_refresh_cooldown.as_ref(),
            "auth.oidc.key_refresh_cooldown",
            Duration::from_secs(30),
        )?;
        Ok(OidcIssuer {
            issuer,
            key_refresh_cooldown,
            audiences: audiences.clone(),
            keys,
            username_claim,
            username_prefix,
            groups_claim,
            groups_prefix,
            uid_claim,
            extra,
            required_claims,
            max_token_lifetime,
            certificate_authority_pem: None,
            claim_rules: None,
            certificate_authority,
            insecure_http,
            algorithms,
            leeway: match &raw.leeway {
                // Zero leeway is legitimate here, so not `duration()`.
                Some(l) => humantime::parse_duration(l.get_ref()).map_err(|_| {
                    self.err(
                        l,
                        "auth.oidc.leeway",
                        "not a duration; write for example \"60s\"",
                    )
                })?,
                None => Duration::from_secs(60),
            },
            location,
        })
    }

    fn positive(
        &self,
        raw: &Option<Spanned<u32>>,
        field: &str,
        default: u32,
    ) -> Result<u32, ConfigError> {
        match raw {
            Some(n) if *n.get_ref() == 0 => Err(self.err(n, field, "must be greater than zero")),
            Some(n) => Ok(*n.get_ref()),
            None => Ok(default),
        }
    }

    fn rate(
        &self,
        per_second: &Option<Spanned<u32>>,
        burst: &Option<Spanned<u32>>,
        (per_field, burst_field): (&str, &str),
        default: crate::Rate,
    ) -> Result<crate::Rate, ConfigError> {
        let nz = |n: u32| std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN);
        let per = self.positive(per_second, per_field, default.per_second.get())?;
        // A burst defaults to twice the rate when only the rate is given.
        let burst_default = if per_second.is_some() {
            per.saturating_mul(2)
        } else {
            default.burst.get()
        };
        let burst = self.positive(burst, burst_field, burst_default)?;
        Ok(crate::Rate {
            per_second: nz(per),
            burst: nz(burst),
        })
    }

    fn audit(&self, raw: Spanned<crate::raw::RawAudit>) -> Result<crate::Audit, ConfigError> {
        let location = self.map.location(raw.span(), "audit");
        let raw = raw.into_inner();
        let defaults = crate::Audit::default();
        let file = raw.file.as_ref().map(|f| self.base.join(f.get_ref()));
        let webhook = raw
            .webhook
            .as_ref()
            .map(|w| self.audit_webhook(w))
            .transpose()?;
        // A file or a webhook was named: stdout only if asked for as well.
        let stdout = raw
            .stdout
            .as_ref()
            .map_or(file.is_none() && webhook.is_none(), |b| *b.get_ref());
        if !stdout && file.is_none() && webhook.is_none() {
            return Err(location.error(
                "audit records must go somewhere: set file = \"<path>\", stdout = true or an [audit.webhook]",
            ));
        }
        if let Some(f) = &raw.file
            && let Some(parent) = self.base.join(f.get_ref()).parent()
            && !parent.is_dir()
        {
            return Err(self.err(
                f,
                "audit.file",
                format!("directory {} does not exist", parent.display()),
            ));
        }
        let positive = |n: &Option<Spanned<usize>>, field: &str, default: usize| match n {
            Some(n) if *n.get_ref() == 0 => Err(self.err(n, field, "must be greater than zero")),
            Some(n) => Ok(*n.get_ref()),
            None => Ok(default),
        };
        let max_file_size = match &raw.max_file_size {
            Some(n) if *n.get_ref() < 4096 => {
                return Err(self.err(n, "audit.max_file_size", "must be at least 4096 bytes"));
            }
            Some(n) => *n.get_ref(),
            None => defaults.max_file_size,
        };
        Ok(crate::Audit {
            stdout,
            file,
            max_file_size,
            max_backups: positive(&raw.max_backups, "audit.max_backups", defaults.max_backups)?,
            queue_size: positive(&raw.queue_size, "audit.queue_size", defaults.queue_size)?,
            omit_user_info: raw.omit_user_info.is_some_and(|b| *b.get_ref()),
            webhook,
        })
    }

    fn recording(
        &self,
        raw: Spanned<crate::raw::RawRecording>,
    ) -> Result<crate::Recording, ConfigError> {
        let location = self.map.location(raw.span(), "recording");
        let raw = raw.into_inner();
        if raw.dir.get_ref().trim().is_empty() {
            return Err(self.err(&raw.dir, "recording.dir", "must name a directory"));
        }
        let dir = self.base.join(raw.dir.get_ref());
        if let Some(parent) = dir.parent()
            && !parent.as_os_str().is_empty()
            && !parent.is_dir()
        {
            return Err(self.err(
                &raw.dir,
                "recording.dir",
                format!("directory {} does not exist", parent.display()),
            ));
        }
        let names = |list: &Option<Spanned<Vec<Spanned<String>>>>, field: &str| {
            let mut out = Vec::new();
            for (i, name) in list.iter().flat_map(|l| l.get_ref()).enumerate() {
                if name.get_ref().trim().is_empty() {
                    return Err(self.err(name, &format!("{field}[{i}]"), "must not be empty"));
                }
                out.push(name.get_ref().clone());
            }
            Ok(out)
        };
        let groups = names(&raw.groups, "recording.groups")?;
        let users = names(&raw.users, "recording.users")?;
        if groups.is_empty() && users.is_empty() {
            return Err(location.error(
                "name whose sessions are recorded: groups = [\"...\"] or users = [\"...\"]",
            ));
        }
        let max_buffered = match &raw.max_buffered {
            None => crate::Recording::DEFAULT_MAX_BUFFERED,
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(n @ 1..=65_536) => n,
                _ => {
                    return Err(self.err(
                        n,
                        "recording.max_buffered",
                        "must be between 1 and 65536",
                    ));
                }
            },
        };
        Ok(crate::Recording {
            dir: self.setting(&raw.dir, "recording.dir", dir),
            groups,
            users,
            max_buffered,
        })
    }

    fn audit_webhook(
        &self,
        raw: &Spanned<crate::raw::RawAuditWebhook>,
    ) -> Result<crate::AuditWebhook, ConfigError> {
        const MINUTE: Duration = Duration::from_secs(60);
        let raw = raw.get_ref();
        let mode = match &raw.mode {
            None => crate::WebhookMode::Batch,
            Some(m) => match m.get_ref().as_str() {
                "batch" => crate::WebhookMode::Batch,
                "blocking" => crate::WebhookMode::Blocking,
                "blocking-strict" => {
                    return Err(self.err(
                        m,
                        "audit.webhook.mode",
                        "blocking-strict is not supported: the API server fails a request whose \
                         RequestReceived record cannot be written, and kubegate writes no \
                         RequestReceived stage; use \"blocking\" (a full buffer makes requests wait)",
                    ));
                }
                _ => {
                    return Err(self.err(
                        m,
                        "audit.webhook.mode",
                        "must be \"batch\" or \"blocking\"",
                    ));
                }
            },
        };
        let count = |n: &Option<Spanned<i64>>, field: &str, min: i64, max: i64, default: i64| {
            let Some(n) = n else { return Ok(default) };
            let v = *n.get_ref();
            if (min..=max).contains(&v) {
                Ok(v)
            } else {
                Err(self.err(n, field, format!("must be from {min} to {max}")))
            }
        };
        let duration = |d: &Option<Spanned<String>>, field: &str, max: Duration, default| {
            let value = self.duration(d.as_ref(), field, default)?;
            match d {
                Some(d) if value > max => Err(self.err(
                    d,
                    field,
                    format!("must be at most {}", humantime::format_duration(max)),
                )),
                _ => Ok(value),
            }
        };
        // The bounds keep a batch's body, the buffer's memory and shutdown's wait sane.
        Ok(crate::AuditWebhook {
            config_file: self.readable_file(&raw.config_file, "audit.webhook.config_file")?,
            mode,
            batch_max_size: count(
                &raw.batch_max_size,
                "audit.webhook.batch_max_size",
                1,
                10_000,
                400,
            )? as usize,
            batch_max_wait: duration(
                &raw.batch_max_wait,
                "audit.webhook.batch_max_wait",
                10 * MINUTE,
                Duration::from_secs(30),
            )?,
            buffer_size: count(
                &raw.buffer_size,
                "audit.webhook.buffer_size",
                1,
                1_000_000,
                10_000,
            )? as usize,
            initial_backoff: duration(
                &raw.initial_backoff,
                "audit.webhook.initial_backoff",
                5 * MINUTE,
                Duration::from_secs(10),
            )?,
            max_retries: count(&raw.max_retries, "audit.webhook.max_retries", 0, 20, 4)? as u32,
            request_timeout: duration(
                &raw.request_timeout,
                "audit.webhook.request_timeout",
                10 * MINUTE,
                Duration::from_secs(30),
            )?,
            flush_timeout: duration(
                &raw.flush_timeout,
                "audit.webhook.flush_timeout",
                10 * MINUTE,
                Duration::from_secs(30),
            )?,
        })
    }

    fn limits(&self, raw: crate::raw::RawLimits) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        limits.rate = self.rate(
            &raw.requests_per_second,
            &raw.burst,
            ("limits.requests_per_second", "limits.burst"),
            limits.rate,
        )?;
        limits.unauthenticated_rate = self.rate(
            &raw.unauthenticated_per_second,
            &raw.unauthenticated_burst,
            (
                "limits.unauthenticated_per_second",
                "limits.unauthenticated_burst",
            ),
            limits.unauthenticated_rate,
        )?;
        limits.max_in_flight = self.positive(
            &raw.max_in_flight,
            "limits.max_in_flight",
            limits.max_in_flight,
        )?;
        limits.max_in_flight_per_user = self.positive(
            &raw.max_in_flight_per_user,
            "limits.max_in_flight_per_user",
            limits.max_in_flight_per_user,
        )?;
        limits.max_streams =
            self.positive(&raw.max_streams, "limits.max_streams", limits.max_streams)?;
        limits.max_streams_per_user = self.positive(
            &raw.max_streams_per_user,
            "limits.max_streams_per_user",
            limits.max_streams_per_user,
        )?;
        limits.max_connections = self.positive(
            &raw.max_connections,
            "limits.max_connections",
            limits.max_connections,
        )?;
        limits.max_connections_per_address = match &raw.max_connections_per_address {
            Some(n) if *n.get_ref() > limits.max_connections => {
                return Err(self.err(
                    n,
                    "limits.max_connections_per_address",
                    format!(
                        "must not exceed max_connections ({})",
                        limits.max_connections
                    ),
                ));
            }
            n => self.positive(
                n,
                "limits.max_connections_per_address",
                limits
                    .max_connections_per_address
                    .min(limits.max_connections),
            )?,
        };
        limits.ipv6_prefix_length = match &raw.ipv6_prefix_length {
            Some(n) => u8::try_from(*n.get_ref())
                .ok()
                .filter(|len| (1..=128).contains(len))
                .ok_or_else(|| {
                    self.err(n, "limits.ipv6_prefix_length", "must be between 1 and 128")
                })?,
            None => limits.ipv6_prefix_length,
        };
        for o in &raw.overrides {
            let entry = o.get_ref();
            let subject = match (&entry.user, &entry.group) {
                (Some(u), None) if !u.get_ref().is_empty() => {
                    crate::RateSubject::User(u.get_ref().clone())
                }
                (None, Some(g)) if !g.get_ref().is_empty() => {
                    crate::RateSubject::Group(g.get_ref().clone())
                }
                _ => {
                    return Err(self
                        .map
                        .location(o.span(), "limits.override")
                        .error("name exactly one non-empty user or group"));
                }
            };
            let rate = self.rate(
                &Some(entry.requests_per_second.clone()),
                &entry.burst,
                (
                    "limits.override.requests_per_second",
                    "limits.override.burst",
                ),
                limits.rate,
            )?;
            limits.overrides.push(crate::RateOverride { subject, rate });
        }
        if let Some(max) = &raw.max_request_body {
            if *max.get_ref() == 0 {
                return Err(self.err(max, "limits.max_request_body", "must be greater than zero"));
            }
            limits.max_request_body = *max.get_ref();
        }
        limits.stream_idle_timeout = self.duration(
            raw.stream_idle_timeout.as_ref(),
            "limits.stream_idle_timeout",
            limits.stream_idle_timeout,
        )?;
        Ok(limits)
    }
}

/// An https URL, or with `allow_loopback_http` a plain-http URL whose host is a loopback
/// address (a local test issuer; never a remote one in clear text). `flag` names the
/// setting that allows http, for the message.
pub(crate) fn checked_url(
    text: &str,
    allow_loopback_http: bool,
    flag: &str,
) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if allow_loopback_http && !loopback => {
            return Err(format!(
                "{flag} only allows a loopback host (127.0.0.1, ::1, localhost)"
            ));
        }
        "http" if allow_loopback_http => {}
        _ => {
            return Err(format!(
                "must be an https URL (plain http only with {flag} on a loopback host)"
            ));
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) struct Dir(tempfile::TempDir);

    impl Dir {
        pub(super) fn new() -> Self {
            let d = tempfile::tempdir().unwrap();
            for f in [
                "tls.crt",
                "tls.key",
                "jwks.json",
                "kubeconfig",
                "policy.toml",
            ] {
                std::fs::write(d.path().join(f), "x").unwrap();
            }
            Dir(d)
        }
        pub(super) fn parse(&self, text: &str) -> Result<Config, ConfigError> {
            parse_in(self.0.path(), text)
        }
    }

    fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
        validate(&dir.join("kubegate.toml"), text)
    }

    pub(super) const GOOD: &str = r#"
policy = "policy.toml"

[listen]
address = "0.0.0.0"
port = 9443
tls_cert = "tls.crt"
tls_key = "tls.key"

[upstream]
kubeconfig = "kubeconfig"
context = "prod"
timeout = "15s"

[[auth.oidc]]
issuer = "https://idp.example.com/realms/ops"
audiences = ["kubegate"]
jwks_file = "jwks.json"
groups_claim = "groups"
algorithms = ["RS256", "ES256"]
"#;

    #[test]
    fn a_complete_file_validates() {
        let d = Dir::new();
        let c = d.parse(GOOD).unwrap();
        assert_eq!(c.listen.addr, "0.0.0.0:9443".parse().unwrap());
        assert_eq!(c.upstream.timeout, Duration::from_secs(15));
        assert!(matches!(
            &c.upstream.source,
            UpstreamSource::Kubeconfig { context: Some(ctx), .. } if ctx == "prod"
        ));
        let i = &c.auth.oidc[0];
        assert_eq!(i.username_claim, "sub");
        assert_eq!(i.groups_claim.as_deref(), Some("groups"));
        assert_eq!(i.algorithms, vec![Algorithm::RS256, Algorithm::ES256]);
        assert_eq!(i.leeway, Duration::from_secs(60));
        assert!(matches!(i.keys, KeySource::JwksFile(_)));
        assert_eq!(c.limits.max_request_body, 3 * 1024 * 1024);
        assert_eq!(c.limits.stream_idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.policy.value, d.0.path().join("policy.toml"));
        // Safe defaults for what is not security-relevant.
        assert_eq!(c.listen.handshake_timeout, Duration::from_secs(10));
    }

    #[test]
    fn admin_is_optional_and_loopback_by_default() {
        let d = Dir::new();
        assert!(d.parse(GOOD).unwrap().admin.is_none());
        let c = d.parse(&format!("{GOOD}\n[admin]\n")).unwrap();
        assert_eq!(c.admin.unwrap().addr, "127.0.0.1:9090".parse().unwrap());
        let e = d
            .parse(&format!("{GOOD}\n[admin]\naddress = \"nowhere\"\n"))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("admin.address"));
    }

    #[test]
    fn stream_idle_timeout_is_a_positive_duration() {
        let d = Dir::new();
        let c = d
            .parse(&format!(
                "{GOOD}\n[limits]\nstream_idle_timeout = \"90s\"\n"
            ))
            .unwrap();
        assert_eq!(c.limits.stream_idle_timeout, Duration::from_secs(90));
        for bad in ["0s", "soon"] {
            let e = d
                .parse(&format!(
                    "{GOOD}\n[limits]\nstream_idle_timeout = \"{bad}\"\n"
                ))
                .unwrap_err();
            assert_eq!(
                e.field.as_deref(),
                Some("limits.stream_idle_timeout"),
                "{bad}"
            );
        }
    }

    #[test]
    fn limits_and_overrides() {
        let text = format!(
            "{GOOD}\n[limits]\nrequests_per_second = 5\nmax_in_flight = 10\n[[limits.override]]\ngroup = \"ci\"\nrequests_per_second = 100\nburst = 300\n"
        );
        let c = Dir::new().parse(&text).unwrap();
        assert_eq!(c.limits.rate.per_second.get(), 5);
        assert_eq!(
            c.limits.rate.burst.get(),
            10,
            "burst defaults to twice the rate"
        );
        assert_eq!(c.limits.max_in_flight, 10);
        assert_eq!(
            c.limits.overrides[0].subject,
            crate::RateSubject::Group("ci".into())
        );
        assert_eq!(c.limits.overrides[0].rate.burst.get(), 300);
        let zero = text.replace("requests_per_second = 5", "requests_per_second = 0");
        assert_eq!(
            error_of(&zero).field.as_deref(),
            Some("limits.requests_per_second")
        );
        let both = text.replace("group = \"ci\"", "group = \"ci\"\nuser = \"a\"");
        assert!(error_of(&both).message.contains("exactly one"));
    }

    #[test]
    fn audit_goes_to_stdout_by_default_and_somewhere_always() {
        let d = Dir::new();
        let c = d.parse(GOOD).unwrap();
        assert!(c.audit.stdout && c.audit.file.is_none());
        let c = d
            .parse(&format!("{GOOD}\n[audit]\nfile = \"audit.log\"\n"))
            .unwrap();
        assert!(!c.audit.stdout);
        assert_eq!(c.audit.file, Some(d.0.path().join("audit.log")));
        let e = d
            .parse(&format!("{GOOD}\n[audit]\nstdout = false\n"))
            .unwrap_err();
        assert!(e.message.contains("must go somewhere"), "{e}");
        let e = d
            .parse(&format!("{GOOD}\n[audit]\nfile = \"nope/audit.log\"\n"))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("audit.file"));
    }

    #[test]
    fn an_audit_webhook_has_the_api_servers_defaults_and_bounded_options() {
        let d = Dir::new();
        std::fs::write(d.0.path().join("webhook.kubeconfig"), "apiVersion: v1\n").unwrap();
        let table = "[audit]\nomit_user_info = true\n[audit.webhook]\nconfig_file = \"webhook.kubeconfig\"\n";
        let c = d.parse(&format!("{GOOD}\n{table}")).unwrap();
        assert!(c.audit.omit_user_info);
        // A webhook alone is a sink: stdout only if asked for.
        assert!(!c.audit.stdout && c.audit.file.is_none());
        let w = c.audit.webhook.unwrap();
        assert_eq!(w.config_file.value, d.0.path().join("webhook.kubeconfig"));
        assert_eq!(w.mode, crate::WebhookMode::Batch);
        assert_eq!(
            (w.batch_max_size, w.buffer_size, w.max_retries),
            (400, 10_000, 4)
        );
        assert_eq!(w.batch_max_wait, Duration::from_secs(30));
        assert_eq!(w.initial_backoff, Duration::from_secs(10));
        assert_eq!(w.request_timeout, Duration::from_secs(30));
        assert_eq!(w.flush_timeout, Duration::from_secs(30));
        assert!(!d.parse(GOOD).unwrap().audit.omit_user_info);

        let with = |line: &str| d.parse(&format!("{GOOD}\n{table}{line}\n"));
        let c = with("mode = \"blocking\"\nbatch_max_size = 1\ninitial_backoff = \"5ms\"").unwrap();
        let w = c.audit.webhook.unwrap();
        assert_eq!(w.mode, crate::WebhookMode::Blocking);
        assert_eq!(w.batch_max_size, 1);
        assert_eq!(w.initial_backoff, Duration::from_millis(5));
        for (line, field, message) in [
            (
                "mode = \"blocking-strict\"",
                "audit.webhook.mode",
                "not supported",
            ),
            (
                "mode = \"fast\"",
                "audit.webhook.mode",
                "\"batch\" or \"blocking\"",
            ),
            (
                "batch_max_size = 0",
                "audit.webhook.batch_max_size",
                "from 1 to 10000",
            ),
            (
                "batch_max_size = -1",
                "audit.webhook.batch_max_size",
                "from 1 to 10000",
            ),
            (
                "buffer_size = 0",
                "audit.webhook.buffer_size",
                "from 1 to 1000000",
            ),
            (
                "buffer_size = 99999999999",
                "audit.webhook.buffer_size",
                "from 1 to 1000000",
            ),
            (
                "max_retries = 21",
                "audit.webhook.max_retries",
                "from 0 to 20",
            ),
            (
                "batch_max_wait = \"0s\"",
                "audit.webhook.batch_max_wait",
                "greater than zero",
            ),
            (
                "initial_backoff = \"1h\"",
                "audit.webhook.initial_backoff",
                "at most 5m",
            ),
            (
                "request_timeout = \"soon\"",
                "audit.webhook.request_timeout",
                "not a duration",
            ),
            (
                "flush_timeout = \"1d\"",
                "audit.webhook.flush_timeout",
                "at most 10m",
            ),
            (
                "url = \"https://siem\"",
                "audit.webhook.url",
                "unknown field",
            ),
        ] {
            let e = with(line).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{line}: {e}");
            assert!(e.message.contains(message), "{line}: {e}");
        }
        let e = d
            .parse(&format!(
                "{GOOD}\n[audit.webhook]\nconfig_file = \"missing.kubeconfig\"\n"
            ))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("audit.webhook.config_file"), "{e}");
        let e = d.parse(&format!("{GOOD}\n[audit.webhook]\n")).unwrap_err();
        assert!(e.message.contains("config_file"), "{e}");
    }

    #[test]
    fn recording_is_off_by_default_and_must_say_whose_sessions() {
        let d = Dir::new();
        assert!(d.parse(GOOD).unwrap().recording.is_none());
        let c = d
            .parse(&format!(
                "{GOOD}\n[recording]\ndir = \"casts\"\ngroups = [\"contractors\"]\n"
            ))
            .unwrap();
        let r = c.recording.unwrap();
        assert_eq!(r.dir.value, d.0.path().join("casts"));
        assert_eq!(r.groups, vec!["contractors".to_string()]);
        assert!(r.users.is_empty());
        assert_eq!(r.max_buffered, crate::Recording::DEFAULT_MAX_BUFFERED);
        for (table, field, message) in [
            ("dir = \"casts\"", "recording", "groups = ["),
            ("dir = \"casts\"\ngroups = []", "recording", "users = ["),
            (
                "dir = \"\"\nusers = [\"a\"]",
                "recording.dir",
                "must name a directory",
            ),
            (
                "dir = \"missing/casts\"\nusers = [\"a\"]",
                "recording.dir",
                "does not exist",
            ),
            (
                "dir = \"casts\"\nusers = [\"a\", \" \"]",
                "recording.users[1]",
                "empty",
            ),
            (
                "dir = \"casts\"\nusers = [\"a\"]\nmax_buffered = 0",
                "recording.max_buffered",
                "between 1 and 65536",
            ),
            (
                "dir = \"casts\"\nusers = [\"a\"]\nall = true",
                "recording.all",
                "unknown field",
            ),
        ] {
            let e = d
                .parse(&format!("{GOOD}\n[recording]\n{table}\n"))
                .unwrap_err();
            assert!(
                e.field.as_deref().is_some_and(|f| f.starts_with(field)),
                "{table}: {e}"
            );
            assert!(e.message.contains(message), "{table}: {e}");
        }
    }

    #[test]
    fn connection_deadlines_and_caps_have_defaults() {
        let c = Dir::new().parse(GOOD).unwrap();
        assert_eq!(c.listen.header_read_timeout, Duration::from_secs(30));
        assert_eq!(c.listen.idle_timeout, Duration::from_secs(180));
        assert_eq!(c.limits.max_connections, 8192);
        assert_eq!(c.limits.max_connections_per_address, 256);
        assert_eq!(c.limits.ipv6_prefix_length, 64);
    }

    #[test]
    fn idle_timeout_is_a_positive_duration() {
        let text = GOOD.replace("port = 9443", "port = 9443\nidle_timeout = \"90s\"");
        let c = Dir::new().parse(&text).unwrap();
        assert_eq!(c.listen.idle_timeout, Duration::from_secs(90));
        for bad in ["0s", "later"] {
            let e = error_of(&text.replace("90s", bad));
            assert_eq!(e.field.as_deref(), Some("listen.idle_timeout"), "{bad}");
            assert_eq!(e.line, Some(7), "{bad}");
        }
    }

    #[test]
    fn the_per_address_connection_cap_fits_under_the_global_one() {
        let limits = |body: &str| Dir::new().parse(&format!("{GOOD}\n[limits]\n{body}\n"));
        let c = limits("max_connections = 100\nmax_connections_per_address = 100").unwrap();
        assert_eq!(c.limits.max_connections_per_address, 100);
        // Unset, it follows a global cap below its default instead of refusing the file.
        let c = limits("max_connections = 10").unwrap();
        assert_eq!(c.limits.max_connections_per_address, 10);
        let e = limits("max_connections = 100\nmax_connections_per_address = 101").unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("limits.max_connections_per_address")
        );
        assert!(e.message.contains("max_connections (100)"), "{e}");
        assert_eq!(e.line, Some(24));
        let e = limits("max_connections_per_address = 0").unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("limits.max_connections_per_address")
        );
        let e = limits("max_connections_per_address = 9000").unwrap_err();
        assert!(e.message.contains("max_connections (8192)"), "{e}");
    }

    #[test]
    fn the_ipv6_prefix_length_is_1_to_128() {
        let limits =
            |n: &str| Dir::new().parse(&format!("{GOOD}\n[limits]\nipv6_prefix_length = {n}\n"));
        assert_eq!(limits("48").unwrap().limits.ipv6_prefix_length, 48);
        assert_eq!(limits("128").unwrap().limits.ipv6_prefix_length, 128);
        assert_eq!(limits("1").unwrap().limits.ipv6_prefix_length, 1);
        for bad in ["0", "129", "300", "-1"] {
            let e = limits(bad).unwrap_err();
            assert_eq!(
                e.field.as_deref(),
                Some("limits.ipv6_prefix_length"),
                "{bad}: {e}"
            );
            assert_eq!(e.line, Some(23), "{bad}");
        }
    }

    #[test]
    fn listen_defaults_to_loopback() {
        let d = Dir::new();
        let text = GOOD.replace("address = \"0.0.0.0\"\nport = 9443\n", "");
        let c = d.parse(&text).unwrap();
        assert_eq!(c.listen.addr, "127.0.0.1:8443".parse().unwrap());
    }

    fn error_of(text: &str) -> ConfigError {
        Dir::new().parse(text).unwrap_err()
    }

    #[test]
    fn unknown_key_names_line_column_and_field() {
        let text = GOOD.replace("port = 9443", "port = 9443\nprot = 1");
        let e = error_of(&text);
        assert_eq!(e.field.as_deref(), Some("listen.prot"));
        assert_eq!(e.line, Some(7));
        assert_eq!(e.column, Some(1));
        let shown = e.to_string();
        assert!(
            shown.contains("kubegate.toml:7:1: listen.prot: unknown field"),
            "{shown}"
        );
    }

    #[test]
    fn missing_issuer_is_named() {
        let text = GOOD.replace("issuer = \"https://idp.example.com/realms/ops\"\n", "");
        let e = error_of(&text);
        assert_eq!(e.field.as_deref(), Some("auth.oidc.issuer"), "{e}");
        assert!(e.message.contains("missing field"), "{e}");
        assert!(e.line.is_some());
    }

    #[test]
    fn bad_duration_is_located() {
        let e = error_of(&GOOD.replace("timeout = \"15s\"", "timeout = \"soon\""));
        assert_eq!(e.field.as_deref(), Some("upstream.timeout"));
        assert_eq!(e.line, Some(13));
        assert_eq!(e.column, Some(11));
        assert!(e.message.contains("not a duration"));
    }

    #[test]
    fn unreadable_cert_is_located() {
        let e = error_of(&GOOD.replace("tls.crt", "missing.crt"));
        assert_eq!(e.field.as_deref(), Some("listen.tls_cert"));
        assert_eq!(e.line, Some(7));
        assert!(e.message.contains("cannot read"), "{e}");
    }

    #[test]
    fn symmetric_and_unsigned_algorithms_are_refused() {
        for alg in ["HS256", "none", "XS1"] {
            let e = error_of(&GOOD.replace("\"RS256\", \"ES256\"", &format!("\"{alg}\"")));
            assert_eq!(e.field.as_deref(), Some("auth.oidc.algorithms"), "{alg}");
        }
    }

    #[test]
    fn issuer_must_be_https() {
        let e = error_of(&GOOD.replace("https://idp.example.com", "http://idp.example.com"));
        assert_eq!(e.field.as_deref(), Some("auth.oidc.issuer"));
        assert!(e.message.contains("https"));
    }

    #[test]
    fn audiences_are_required_and_non_empty() {
        let e = error_of(&GOOD.replace("audiences = [\"kubegate\"]", "audiences = []"));
        assert_eq!(e.field.as_deref(), Some("auth.oidc.audiences"));
        let e = error_of(&GOOD.replace("audiences = [\"kubegate\"]\n", ""));
        assert_eq!(e.field.as_deref(), Some("auth.oidc.audiences"));
    }

    #[test]
    fn duplicate_issuers_are_refused() {
        let extra = r#"
[[auth.oidc]]
issuer = "https://idp.example.com/realms/ops"
audiences = ["other"]
"#;
        let e = error_of(&format!("{GOOD}{extra}"));
        assert!(e.message.contains("duplicate issuer"), "{e}");
        assert_eq!(e.line, Some(23));
    }

    #[test]
    fn upstream_needs_exactly_one_source() {
        let none = GOOD.replace("kubeconfig = \"kubeconfig\"\ncontext = \"prod\"\n", "");
        assert!(error_of(&none).message.contains("no upstream"));
        let both = GOOD.replace("context = \"prod\"", "in_cluster = true");
        assert_eq!(
            error_of(&both).field.as_deref(),
            Some("upstream.in_cluster")
        );
    }

    #[test]
    fn an_upstream_table_alone_validates_like_a_whole_file() {
        let d = Dir::new();
        std::fs::write(
            d.0.path().join("kubeconfig"),
            "apiVersion: v1\nkind: Config\n",
        )
        .unwrap();
        let file = d.0.path().join("upstream.toml");
        let upstream = crate::parse_upstream(
            &file,
            "[upstream]\nkubeconfig = \"kubeconfig\"\ntimeout = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(upstream.timeout, Duration::from_secs(2));
        assert!(matches!(
            upstream.source,
            UpstreamSource::Kubeconfig { ref path, .. } if path.value == d.0.path().join("kubeconfig")
        ));
        let e = crate::parse_upstream(&file, "[upstream]\nkubeconfig = \"missing\"\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("upstream.kubeconfig"), "{e}");
        assert!(crate::parse_upstream(&file, "[upstream]\nbogus = 1\n").is_err());
    }

    #[test]
    fn upstream_is_required() {
        let text = GOOD.replace(
            "[upstream]\nkubeconfig = \"kubeconfig\"\ncontext = \"prod\"\ntimeout = \"15s\"\n",
            "",
        );
        let e = error_of(&text);
        assert!(e.message.contains("missing field `upstream`"), "{e}");
    }

    #[test]
    fn discovery_defaults_to_well_known() {
        let c = Dir::new()
            .parse(&GOOD.replace("jwks_file = \"jwks.json\"\n", ""))
            .unwrap();
        assert_eq!(
            c.auth.oidc[0].keys,
            KeySource::Discovery(
                "https://idp.example.com/realms/ops/.well-known/openid-configuration".into()
            )
        );
    }

    #[test]
    fn plain_http_issuers_only_on_loopback_and_only_when_asked() {
        let http = GOOD.replace(
            "https://idp.example.com/realms/ops",
            "http://127.0.0.1:5556/dex",
        );
        assert!(error_of(&http).message.contains("insecure_http"));
        let allowed = http.replace("jwks_file", "insecure_http = true\njwks_file");
        let c = Dir::new().parse(&allowed).unwrap();
        assert!(c.auth.oidc[0].insecure_http);
        let remote = allowed.replace("127.0.0.1", "10.0.0.1");
        assert!(error_of(&remote).message.contains("loopback"));
    }

    #[test]
    fn claim_mappings_validate() {
        let mapped = GOOD.replace(
            "groups_claim = \"groups\"",
            "groups_claim = \"realm_access.roles\"\ngroups_prefix = \"kc:\"\nusername_prefix = \"kc:\"\nuid_claim = \"sid\"\nextra = { \"example.com/team\" = \"team\" }\nrequired_claims = { hd = \"example.com\" }\nmax_token_lifetime = \"1h\"",
        );
        let c = Dir::new().parse(&mapped).unwrap();
        let i = &c.auth.oidc[0];
        assert_eq!(i.groups_claim.as_deref(), Some("realm_access.roles"));
        assert_eq!(i.username_prefix.as_deref(), Some("kc:"));
        assert_eq!(i.extra["example.com/team"], "team");
        assert_eq!(i.required_claims["hd"], "example.com");
        assert_eq!(i.max_token_lifetime, Some(Duration::from_secs(3600)));
        let upper = mapped.replace("example.com/team", "Team");
        assert_eq!(error_of(&upper).field.as_deref(), Some("auth.oidc.extra"));
        let empty = mapped.replace("username_prefix = \"kc:\"", "username_prefix = \"\"");
        assert_eq!(
            error_of(&empty).field.as_deref(),
            Some("auth.oidc.username_prefix")
        );
    }

    #[test]
    fn an_issuer_in_both_the_file_and_auth_oidc_is_refused() {
        let d = Dir::new();
        let yaml = "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n- issuer:\n    url: https://idp.example.com/realms/ops\n    audiences: [kubegate]\n  claimMappings:\n    username:\n      claim: sub\n      prefix: ''\n";
        std::fs::write(d.0.path().join("auth.yaml"), yaml).unwrap();
        let text = GOOD.replace(
            "[[auth.oidc]]",
            "[auth]\nauthentication_config = \"auth.yaml\"\n\n[[auth.oidc]]",
        );
        let e = d.parse(&text).unwrap_err();
        assert!(e.message.contains("also an [[auth.oidc]] issuer"), "{e}");
        assert!(e.file.ends_with("auth.yaml") && e.line == Some(4), "{e}");
        // Alone, the file supplies the issuer.
        let alone = d
            .parse(&text.replace(
                "issuer = \"https://idp.example.com/realms/ops\"",
                "issuer = \"https://other.example.com\"",
            ))
            .unwrap();
        assert_eq!(alone.auth.oidc.len(), 2);
        assert!(alone.auth.oidc[1].claim_rules.is_some());
    }

    #[test]
    fn errors_never_quote_values() {
        // A token pasted into a duration field must not reach the log through the error.
        let e = error_of(&GOOD.replace("timeout = \"15s\"", "timeout = \"eyJhbGciOi.secret\""));
        assert!(!e.to_string().contains("eyJhbGciOi"), "{e}");
    }
}
