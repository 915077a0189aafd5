//! Kubernetes' own `AuthenticationConfiguration` file (`apiserver.config.k8s.io/v1beta1`
//! and `v1`): its JWT issuers with their CEL claim rules, parsed and validated the way the
//! API server does, so the same file describes identity for the API server and for
//! kubegate.
//!
//! The YAML is read raw (unknown fields refused, every value with its line and column),
//! then validated into [`OidcIssuer`]s whose [`ClaimRules`] hold the compiled CEL
//! programs. Every expression is compiled, scope-checked, type-checked as far as its
//! shape allows and cost-bounded here, at load: a bad expression is a located load error
//! naming the issuer, the field and the expression, never a request-time surprise.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;
use url::Url;

use crate::cel::{self, Kind, Scope};
use crate::{Algorithm, ConfigError, KeySource, Location, OidcIssuer};

/// The API server accepts at most 64 JWT authenticators.
const MAX_ISSUERS: usize = 64;

/// The API versions of the file kubegate reads.
const API_VERSIONS: [&str; 2] = [
    "apiserver.config.k8s.io/v1beta1",
    "apiserver.config.k8s.io/v1",
];

/// Claim rules of one issuer from an `AuthenticationConfiguration` file: they replace the
/// `username_claim` / `groups_claim` / ... settings of a `[[auth.oidc]]` issuer.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    /// `claimValidationRules`, in file order.
    pub claim_validation: Vec<ClaimValidationRule>,
    /// `claimMappings.username`.
    pub username: Mapping,
    /// `claimMappings.groups`, if set.
    pub groups: Option<Mapping>,
    /// `claimMappings.uid`, if set.
    pub uid: Option<Mapping>,
    /// `claimMappings.extra`, in file order; keys unique.
    pub extra: Vec<ExtraMapping>,
    /// `userValidationRules`, in file order.
    pub user_validation: Vec<UserValidationRule>,
}

/// One `claimValidationRules` entry.
#[derive(Debug, Clone)]
pub enum ClaimValidationRule {
    /// `claim` must be present and equal `required_value` (a string claim).
    Required {
        /// The claim name (top level, as the API server reads it).
        claim: String,
        /// Its required value.
        value: String,
        /// The entry.
        location: Location,
    },
    /// `expression` must evaluate to `true`.
    Expression {
        /// The compiled expression.
        expression: Expression,
        /// Shown when it does not hold.
        message: Option<String>,
    },
}

/// A username, groups or uid mapping.
#[derive(Debug, Clone)]
pub enum Mapping {
    /// A top-level claim with a prefix (`Some("")` for none; uid has no prefix).
    Claim {
        /// The claim name.
        claim: String,
        /// Prepended to each value.
        prefix: String,
    },
    /// A CEL expression over `claims`.
    Expression(Expression),
}

/// One `claimMappings.extra` entry.
#[derive(Debug, Clone)]
pub struct ExtraMapping {
    /// The extra key: lower-case and domain-prefixed (`example.com/team`).
    pub key: String,
    /// Evaluates to a string or a list of strings; empty results are left out.
    pub value: Expression,
}

/// One `userValidationRules` entry.
#[derive(Debug, Clone)]
pub struct UserValidationRule {
    /// The compiled expression over `user`.
    pub expression: Expression,
    /// Shown when it does not hold.
    pub message: Option<String>,
}

/// A compiled CEL expression and where it was written.
#[derive(Clone)]
pub struct Expression {
    /// The expression as written.
    pub source: String,
    /// The compiled program.
    pub program: Arc<::cel::Program>,
    /// Its estimated worst-case cost (see `docs/architecture.md`), at most the limit.
    pub cost: u64,
    /// The field (`jwt[0].claimMappings.username.expression`) and its place in the file.
    pub location: Location,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expression")
            .field("source", &self.source)
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// The shared CEL environment: the standard library, optional syntax, the `strings` and
/// `lists` extensions. Programs compiled here are evaluated with it.
pub fn cel_env() -> Arc<::cel::Env> {
    cel::env()
}

// ---- the file as written -------------------------------------------------------------

type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    api_version: Option<S<String>>,
    kind: Option<S<String>>,
    #[serde(default)]
    jwt: Vec<S<RawJwt>>,
    // Known sections kubegate refuses, so the message can say why.
    anonymous: Option<S<serde::de::IgnoredAny>>,
    authorizers: Option<S<serde::de::IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawJwt {
    issuer: S<RawIssuer>,
    #[serde(default)]
    claim_validation_rules: Vec<S<RawClaimValidation>>,
    claim_mappings: S<RawClaimMappings>,
    #[serde(default)]
    user_validation_rules: Vec<S<RawUserValidation>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIssuer {
    url: S<String>,
    #[serde(rename = "discoveryURL")]
    discovery_url: Option<S<String>>,
    certificate_authority: Option<S<String>>,
    #[serde(default)]
    audiences: Vec<S<String>>,
    audience_match_policy: Option<S<String>>,
    // Known to the API server, refused here so the message can say why.
    egress_selector_type: Option<S<serde::de::IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawClaimValidation {
    claim: Option<S<String>>,
    required_value: Option<S<String>>,
    expression: Option<S<String>>,
    message: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawClaimMappings {
    username: Option<S<RawPrefixed>>,
    groups: Option<S<RawPrefixed>>,
    uid: Option<S<RawClaimOrExpression>>,
    #[serde(default)]
    extra: Vec<S<RawExtra>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPrefixed {
    claim: Option<S<String>>,
    prefix: Option<S<String>>,
    expression: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawClaimOrExpression {
    claim: Option<S<String>>,
    expression: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawExtra {
    key: S<String>,
    value_expression: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawUserValidation {
    expression: S<String>,
    message: Option<S<String>>,
}

// ---- validation ----------------------------------------------------------------------

/// How kubegate-side settings apply to the file's issuers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    /// `[auth] authentication_config_insecure_http`: loopback http issuers (tests only).
    pub(crate) insecure_http: bool,
}

/// Reads and validates an `AuthenticationConfiguration` file into issuers.
pub(crate) fn load(path: &Path, defaults: Defaults) -> Result<Vec<OidcIssuer>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::file(
            path,
            format!("cannot read authentication configuration: {e}"),
        )
    })?;
    parse(path, &text, defaults)
}

/// Validates the text of an `AuthenticationConfiguration` file; `file` names it in errors.
pub fn parse_authentication_config(
    file: &Path,
    text: &str,
) -> Result<Vec<OidcIssuer>, ConfigError> {
    parse(
        file,
        text,
        Defaults {
            insecure_http: false,
        },
    )
}

fn parse(file: &Path, text: &str, defaults: Defaults) -> Result<Vec<OidcIssuer>, ConfigError> {
    let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| yaml_error(file, &e))?;
    let v = Validator {
        file,
        insecure_http: defaults.insecure_http,
    };
    v.file(raw)
}

fn yaml_error(file: &Path, e: &serde_saphyr::Error) -> ConfigError {
    // The crate's Display adds a snippet of the source; the first line is the message.
    let shown = e.to_string();
    let first = shown
        .lines()
        .next()
        .unwrap_or("not a valid AuthenticationConfiguration")
        .trim();
    // Drop the crate's own "error: line N column M: ", the location is ours to print.
    let message = first
        .strip_prefix("error: ")
        .map(|rest| match rest.split_once(": ") {
            Some((at, m)) if at.starts_with("line ") => m,
            _ => rest,
        })
        .unwrap_or(first)
        .to_string();
    let location = e.location();
    ConfigError {
        file: file.to_path_buf(),
        line: location.map(|l| l.line() as usize),
        column: location.map(|l| l.column() as usize),
        field: None,
        message,
    }
}

struct Validator<'a> {
    file: &'a Path,
    insecure_http: bool,
}

impl Validator<'_> {
    fn location<T>(&self, s: &S<T>, field: &str) -> Location {
        let at = if s.referenced.line() > 0 {
            s.referenced
        } else {
            s.defined
        };
        Location {
            file: self.file.to_path_buf(),
            line: at.line() as usize,
            column: at.column() as usize,
            field: field.to_string(),
        }
    }

    fn err<T>(&self, s: &S<T>, field: &str, message: impl Into<String>) -> ConfigError {
        self.location(s, field).error(message)
    }

    fn whole_file(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::file(self.file, message)
    }

    fn file(&self, raw: RawFile) -> Result<Vec<OidcIssuer>, ConfigError> {
        match &raw.kind {
            Some(k) if k.value == "AuthenticationConfiguration" => {}
            Some(k) => {
                return Err(self.err(k, "kind", "must be AuthenticationConfiguration"));
            }
            None => return Err(self.whole_file("kind: AuthenticationConfiguration is required")),
        }
        match &raw.api_version {
            Some(v) if API_VERSIONS.contains(&v.value.as_str()) => {}
            Some(v) => {
                return Err(self.err(
                    v,
                    "apiVersion",
                    format!("must be one of {}", API_VERSIONS.join(", ")),
                ));
            }
            None => {
                return Err(self.whole_file(format!(
                    "apiVersion is required (one of {})",
                    API_VERSIONS.join(", ")
                )));
            }
        }
        if let Some(a) = &raw.anonymous {
            return Err(self.err(
                a,
                "anonymous",
                "kubegate never admits anonymous requests; remove the anonymous section from the file kubegate reads",
            ));
        }
        if let Some(a) = &raw.authorizers {
            return Err(self.err(
                a,
                "authorizers",
                "authorization is kubegate's policy file, not this file; remove the authorizers section",
            ));
        }
        if raw.jwt.is_empty() {
            return Err(self.whole_file("jwt: at least one issuer is required"));
        }
        if raw.jwt.len() > MAX_ISSUERS {
            return Err(self.err(
                &raw.jwt[MAX_ISSUERS],
                "jwt",
                format!("at most {MAX_ISSUERS} issuers are supported"),
            ));
        }
        let mut urls = HashSet::new();
        let mut discovery = HashSet::new();
        let mut issuers = Vec::with_capacity(raw.jwt.len());
        for (i, jwt) in raw.jwt.iter().enumerate() {
            let field = format!("jwt[{i}]");
            let issuer = &jwt.value.issuer.value;
            if !urls.insert(issuer.url.value.clone()) {
                return Err(self.err(
                    &issuer.url,
                    &format!("{field}.issuer.url"),
                    "duplicate issuer URL: each issuer may be configured once",
                ));
            }
            if let Some(d) = &issuer.discovery_url
                && !discovery.insert(d.value.clone())
            {
                return Err(self.err(
                    d,
                    &format!("{field}.issuer.discoveryURL"),
                    "duplicate discoveryURL",
                ));
            }
            issuers.push(self.jwt(jwt, &field)?);
        }
        Ok(issuers)
    }

    fn url(&self, raw: &S<String>, field: &str) -> Result<Url, ConfigError> {
        crate::validate::checked_url(
            &raw.value,
            self.insecure_http,
            "[auth] authentication_config_insecure_http = true",
        )
        .map_err(|m| self.err(raw, field, m))
    }

    fn jwt(&self, jwt: &S<RawJwt>, field: &str) -> Result<OidcIssuer, ConfigError> {
        let raw = &jwt.value;
        let iss = &raw.issuer.value;
        let url_field = format!("{field}.issuer.url");
        self.url(&iss.url, &url_field)?;
        let issuer = iss.url.value.clone();
        if let Some(e) = &iss.egress_selector_type {
            return Err(self.err(
                e,
                &format!("{field}.issuer.egressSelectorType"),
                "kubegate reaches issuers directly, it has no egress selector; remove egressSelectorType from the file kubegate reads",
            ));
        }

        let keys = match &iss.discovery_url {
            None => KeySource::Discovery(format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            )),
            Some(d) => {
                let f = format!("{field}.issuer.discoveryURL");
                let url = self.url(d, &f)?;
                if d.value.trim_end_matches('/') == issuer.trim_end_matches('/') {
                    return Err(self.err(d, &f, "must be different from url"));
                }
                KeySource::Discovery(url.to_string())
            }
        };

        let aud_field = format!("{field}.issuer.audiences");
        if iss.audiences.is_empty() {
            return Err(self.err(&raw.issuer, &aud_field, "at least one audience is required"));
        }
        let mut seen = HashSet::new();
        for a in &iss.audiences {
            if a.value.is_empty() {
                return Err(self.err(a, &aud_field, "audiences must not be empty strings"));
            }
            if !seen.insert(a.value.as_str()) {
                return Err(self.err(a, &aud_field, "duplicate audience"));
            }
        }
        match &iss.audience_match_policy {
            Some(p) if p.value == "MatchAny" => {}
            Some(p) if p.value.is_empty() && iss.audiences.len() == 1 => {}
            Some(p) => {
                return Err(self.err(
                    p,
                    &format!("{field}.issuer.audienceMatchPolicy"),
                    "must be MatchAny",
                ));
            }
            None if iss.audiences.len() > 1 => {
                return Err(self.err(
                    &raw.issuer,
                    &format!("{field}.issuer.audienceMatchPolicy"),
                    "must be MatchAny when more than one audience is listed",
                ));
            }
            None => {}
        }
        let certificate_authority_pem = match &iss.certificate_authority {
            None => None,
            Some(ca) if !ca.value.contains("-----BEGIN CERTIFICATE-----") => {
                return Err(self.err(
                    ca,
                    &format!("{field}.issuer.certificateAuthority"),
                    "must hold PEM-encoded CA certificates",
                ));
            }
            Some(ca) => Some(ca.value.clone()),
        };

        let rules = self.rules(raw, field, &issuer)?;
        let location = self.location(jwt, field);
        Ok(OidcIssuer {
            issuer,
            audiences: iss.audiences.iter().map(|a| a.value.clone()).collect(),
            keys,
            // The claim settings of `[[auth.oidc]]` do not apply: `rules` decides.
            username_claim: String::new(),
            username_prefix: None,
            groups_claim: None,
            groups_prefix: None,
            uid_claim: None,
            extra: Default::default(),
            required_claims: Default::default(),
            max_token_lifetime: None,
            certificate_authority: None,
            certificate_authority_pem,
            insecure_http: self.insecure_http,
            key_refresh_cooldown: Duration::from_secs(30),
            // The API server accepts every asymmetric JOSE algorithm.
            algorithms: vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
                Algorithm::ES256,
                Algorithm::ES384,
            ],
            leeway: Duration::from_secs(60),
            claim_rules: Some(Arc::new(rules)),
            location,
        })
    }

    /// Compiles one expression, naming the issuer, field and expression on failure.
    fn expr(
        &self,
        raw: &S<String>,
        field: &str,
        issuer: &str,
        scope: Scope,
        want: &[Kind],
    ) -> Result<Expression, ConfigError> {
        let location = self.location(raw, field);
        let fail = |what: String| {
            location.error(format!(
                "issuer {issuer:?}: expression {:?} {what}",
                raw.value
            ))
        };
        if raw.value.trim().is_empty() {
            return Err(fail("is empty".into()));
        }
        let compiled = cel::compile(&raw.value, scope, want).map_err(fail)?;
        Ok(Expression {
            source: raw.value.clone(),
            program: Arc::new(compiled.program),
            cost: compiled.cost,
            location,
        })
    }

    fn rules(&self, raw: &RawJwt, field: &str, issuer: &str) -> Result<ClaimRules, ConfigError> {
        let mut claim_validation = Vec::new();
        let mut required_claims = HashSet::new();
        for (i, rule) in raw.claim_validation_rules.iter().enumerate() {
            let f = format!("{field}.claimValidationRules[{i}]");
            let r = &rule.value;
            match (&r.claim, &r.expression) {
                (Some(claim), None) => {
                    if claim.value.is_empty() {
                        return Err(self.err(claim, &format!("{f}.claim"), "must name a claim"));
                    }
                    if let Some(m) = &r.message {
                        return Err(self.err(
                            m,
                            &format!("{f}.message"),
                            "message applies to expression rules only",
                        ));
                    }
                    if !required_claims.insert(claim.value.clone()) {
                        return Err(self.err(claim, &format!("{f}.claim"), "duplicate claim"));
                    }
                    claim_validation.push(ClaimValidationRule::Required {
                        claim: claim.value.clone(),
                        value: r
                            .required_value
                            .as_ref()
                            .map(|v| v.value.clone())
                            .unwrap_or_default(),
                        location: self.location(claim, &format!("{f}.claim")),
                    });
                }
                (None, Some(expression)) => {
                    if let Some(v) = &r.required_value {
                        return Err(self.err(
                            v,
                            &format!("{f}.requiredValue"),
                            "requiredValue applies to claim rules only",
                        ));
                    }
                    claim_validation.push(ClaimValidationRule::Expression {
                        expression: self.expr(
                            expression,
                            &format!("{f}.expression"),
                            issuer,
                            Scope::Claims,
                            &[Kind::Bool],
                        )?,
                        message: r.message.as_ref().map(|m| m.value.clone()),
                    });
                }
                (Some(c), Some(_)) => {
                    return Err(self.err(c, &f, "set either claim or expression, not both"));
                }
                (None, None) => {
                    return Err(self.err(rule, &f, "set claim or expression"));
                }
            }
        }

        let mappings = &raw.claim_mappings;
        let mf = format!("{field}.claimMappings");
        let username = match &mappings.value.username {
            None => {
                return Err(self.err(mappings, &format!("{mf}.username"), "is required"));
            }
            Some(u) => self.prefixed(u, &format!("{mf}.username"), issuer, &[Kind::String])?,
        };
        let groups = mappings
            .value
            .groups
            .as_ref()
            .map(|g| {
                self.prefixed(
                    g,
                    &format!("{mf}.groups"),
                    issuer,
                    &[Kind::String, Kind::List],
                )
            })
            .transpose()?;
        let uid = match &mappings.value.uid {
            None => None,
            Some(u) => {
                let f = format!("{mf}.uid");
                Some(match (&u.value.claim, &u.value.expression) {
                    (Some(c), None) if !c.value.is_empty() => Mapping::Claim {
                        claim: c.value.clone(),
                        prefix: String::new(),
                    },
                    (None, Some(e)) => Mapping::Expression(self.expr(
                        e,
                        &format!("{f}.expression"),
                        issuer,
                        Scope::Claims,
                        &[Kind::String],
                    )?),
                    _ => return Err(self.err(u, &f, "set exactly one of claim or expression")),
                })
            }
        };
        let mut extra = Vec::new();
        let mut keys = HashSet::new();
        for (i, e) in mappings.value.extra.iter().enumerate() {
            let f = format!("{mf}.extra[{i}]");
            let key = &e.value.key;
            check_extra_key(&key.value).map_err(|m| self.err(key, &format!("{f}.key"), m))?;
            if !keys.insert(key.value.clone()) {
                return Err(self.err(key, &format!("{f}.key"), "duplicate key"));
            }
            extra.push(ExtraMapping {
                key: key.value.clone(),
                value: self.expr(
                    &e.value.value_expression,
                    &format!("{f}.valueExpression"),
                    issuer,
                    Scope::Claims,
                    &[Kind::String, Kind::List],
                )?,
            });
        }
        let mut user_validation = Vec::new();
        for (i, r) in raw.user_validation_rules.iter().enumerate() {
            user_validation.push(UserValidationRule {
                expression: self.expr(
                    &r.value.expression,
                    &format!("{field}.userValidationRules[{i}].expression"),
                    issuer,
                    Scope::User,
                    &[Kind::Bool],
                )?,
                message: r.value.message.as_ref().map(|m| m.value.clone()),
            });
        }

        // As the API server: an email is an identity only once the issuer verified it, so
        // an expression that reads claims.email must look at claims.email_verified too.
        if let (Some(u), Mapping::Expression(e)) = (&mappings.value.username, &username) {
            let validates = |x: &Expression| cel::reads_claim(&x.program, "email_verified");
            if cel::reads_claim(&e.program, "email")
                && !validates(e)
                && !claim_validation.iter().any(|r| match r {
                    ClaimValidationRule::Expression { expression, .. } => validates(expression),
                    ClaimValidationRule::Required { claim, .. } => claim == "email_verified",
                })
            {
                return Err(self.err(
                    u,
                    &format!("{mf}.username.expression"),
                    "claims.email_verified must be used in claimMappings.username.expression or claimValidationRules[*].expression when claimMappings.username.expression uses claims.email",
                ));
            }
        }
        Ok(ClaimRules {
            claim_validation,
            username,
            groups,
            uid,
            extra,
            user_validation,
        })
    }

    /// A username or groups mapping: `claim` with a required `prefix` ("" allowed), or
    /// `expression` without one.
    fn prefixed(
        &self,
        raw: &S<RawPrefixed>,
        field: &str,
        issuer: &str,
        want: &[Kind],
    ) -> Result<Mapping, ConfigError> {
        let r = &raw.value;
        match (&r.claim, &r.expression) {
            (Some(c), None) => {
                if c.value.is_empty() {
                    return Err(self.err(c, &format!("{field}.claim"), "must name a claim"));
                }
                let Some(prefix) = &r.prefix else {
                    return Err(self.err(
                        raw,
                        &format!("{field}.prefix"),
                        "is required when claim is set (it may be the empty string)",
                    ));
                };
                if prefix.value.starts_with(crate::RESERVED_PREFIX) {
                    return Err(self.err(
                        prefix,
                        &format!("{field}.prefix"),
                        "must not start with \"system:\" (reserved for the cluster)",
                    ));
                }
                Ok(Mapping::Claim {
                    claim: c.value.clone(),
                    prefix: prefix.value.clone(),
                })
            }
            (None, Some(e)) => {
                if let Some(p) = &r.prefix {
                    return Err(self.err(
                        p,
                        &format!("{field}.prefix"),
                        "must not be set when expression is set",
                    ));
                }
                Ok(Mapping::Expression(self.expr(
                    e,
                    &format!("{field}.expression"),
                    issuer,
                    Scope::Claims,
                    want,
                )?))
            }
            (Some(c), Some(_)) => {
                Err(self.err(c, field, "set either claim or expression, not both"))
            }
            (None, None) => Err(self.err(raw, field, "set claim or expression")),
        }
    }
}

/// An extra key as the API server accepts it: lower-case, a domain-prefixed path
/// (`example.com/team`), not under the Kubernetes domains.
fn check_extra_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    if key.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("must be lower-case".into());
    }
    let Some((domain, path)) = key.split_once('/') else {
        return Err("must be a domain-prefixed path (such as \"example.com/team\")".into());
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() > 253 || !domain.contains('.') || !domain.split('.').all(label_ok) {
        return Err("must be a domain-prefixed path (such as \"example.com/team\")".into());
    }
    if path.is_empty() || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the path after the domain must be non-empty, without spaces".into());
    }
    for reserved in ["kubernetes.io", "k8s.io"] {
        if domain == reserved || domain.ends_with(&format!(".{reserved}")) {
            return Err(format!("the {reserved} domain is reserved for Kubernetes"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"apiVersion: apiserver.config.k8s.io/v1beta1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://example.com
    audiences: [my-app, my-other-app]
    audienceMatchPolicy: MatchAny
  claimValidationRules:
  - expression: 'claims.hd == "example.com"'
    message: the hd claim must be set to example.com
  claimMappings:
    username:
      expression: 'claims.username + ":external-user"'
    groups:
      expression: 'claims.roles.split(",")'
    uid:
      expression: 'claims.sub'
    extra:
    - key: 'example.com/tenant'
      valueExpression: 'claims.tenant'
  userValidationRules:
  - expression: "!user.username.startsWith('system:')"
    message: 'username cannot used reserved system: prefix'
"#;

    fn parse(text: &str) -> Result<Vec<OidcIssuer>, ConfigError> {
        parse_authentication_config(Path::new("auth.yaml"), text)
    }

    #[test]
    fn the_documented_example_validates() {
        let issuers = parse(GOOD).unwrap();
        let rules = issuers[0].claim_rules.as_ref().unwrap();
        assert_eq!(issuers[0].audiences, ["my-app", "my-other-app"]);
        assert_eq!(rules.claim_validation.len(), 1);
        assert_eq!(rules.extra[0].key, "example.com/tenant");
        assert!(matches!(rules.username, Mapping::Expression(_)));
        let v1 = GOOD.replace("v1beta1", "v1");
        assert!(parse(&v1).is_ok());
    }

    /// Each bad input: (replace, with, field, line, message part).
    #[test]
    fn bad_input_is_a_located_specific_error() {
        let cases: &[(&str, &str, Option<&str>, usize, &str)] = &[
            (
                "    audienceMatchPolicy: MatchAny\n",
                "    audienceMatchPolicy: MatchAny\n    color: blue\n",
                None,
                8,
                "unknown field",
            ),
            ("v1beta1", "v2", Some("apiVersion"), 1, "must be one of"),
            (
                "kind: AuthenticationConfiguration",
                "kind: AuthorizationConfiguration",
                Some("kind"),
                2,
                "must be AuthenticationConfiguration",
            ),
            (
                "'claims.sub'",
                "'claims.sub +'",
                Some("jwt[0].claimMappings.uid.expression"),
                17,
                "does not compile",
            ),
            (
                "'claims.hd == \"example.com\"'",
                "'size(claims.hd) > 0 ? \"x\" : \"y\"'",
                Some("jwt[0].claimValidationRules[0].expression"),
                9,
                "evaluates to string",
            ),
            (
                "'claims.tenant'",
                "'claims.tenants.map(a, claims.tenants.map(b, claims.tenants.map(c, a + b + c)))'",
                Some("jwt[0].claimMappings.extra[0].valueExpression"),
                20,
                "too expensive",
            ),
            (
                "'example.com/tenant'",
                "'Example.com/tenant'",
                Some("jwt[0].claimMappings.extra[0].key"),
                19,
                "lower-case",
            ),
            (
                "'example.com/tenant'",
                "'tenant'",
                Some("jwt[0].claimMappings.extra[0].key"),
                19,
                "domain-prefixed",
            ),
            (
                "'example.com/tenant'",
                "'kubernetes.io/tenant'",
                Some("jwt[0].claimMappings.extra[0].key"),
                19,
                "reserved",
            ),
            (
                "    audienceMatchPolicy: MatchAny\n",
                "",
                Some("jwt[0].issuer.audienceMatchPolicy"),
                5,
                "must be MatchAny",
            ),
            (
                "https://example.com",
                "http://example.com",
                Some("jwt[0].issuer.url"),
                5,
                "https",
            ),
            (
                "username:\n      expression: 'claims.username + \":external-user\"'",
                "username:\n      claim: sub",
                Some("jwt[0].claimMappings.username.prefix"),
                13,
                "required when claim is set",
            ),
            (
                "username:\n      expression: 'claims.username + \":external-user\"'",
                "username:\n      claim: sub\n      prefix: 'system:'",
                Some("jwt[0].claimMappings.username.prefix"),
                14,
                "system:",
            ),
            (
                "claims.username + \":external-user\"",
                "claims.email",
                Some("jwt[0].claimMappings.username.expression"),
                13,
                "email_verified",
            ),
            (
                "kind: AuthenticationConfiguration",
                "kind: AuthenticationConfiguration\nanonymous:\n  enabled: true",
                Some("anonymous"),
                4,
                "never admits anonymous",
            ),
        ];
        for (from, to, field, line, message) in cases {
            assert!(GOOD.contains(from), "{from}");
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert_eq!(e.field.as_deref(), *field, "{to}: {e}");
            assert_eq!(e.line, Some(*line), "{to}: {e}");
            assert!(e.message.contains(message), "{to}: {e}");
        }
        // A failing expression names the issuer and the expression.
        let e = parse(&GOOD.replace("'claims.sub'", "'claims.sub +'")).unwrap_err();
        assert!(e.message.contains("\"https://example.com\""), "{e}");
        assert!(e.message.contains("\"claims.sub +\""), "{e}");
    }

    #[test]
    fn an_egress_selector_is_refused_with_the_reason() {
        // The API server's field, which kubegate cannot honour: not an "unknown field".
        let with = GOOD.replace(
            "    audienceMatchPolicy: MatchAny\n",
            "    audienceMatchPolicy: MatchAny\n    egressSelectorType: controlplane\n",
        );
        let e = parse(&with).unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("jwt[0].issuer.egressSelectorType"),
            "{e}"
        );
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("reaches issuers directly"), "{e}");
        assert!(e.message.contains("remove egressSelectorType"), "{e}");
    }

    #[test]
    fn duplicate_issuers_in_the_file_are_refused() {
        let body = GOOD.split_once("jwt:\n").unwrap().1;
        let e = parse(&format!("{GOOD}{body}")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("jwt[1].issuer.url"), "{e}");
        assert!(e.message.contains("duplicate issuer"), "{e}");
        assert_eq!(e.line, Some(25));
    }
}
