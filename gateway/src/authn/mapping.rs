//! The claim rules of an `AuthenticationConfiguration` issuer, applied to a verified
//! token's claims: claim validation rules, then the username, groups, uid and extra
//! mappings, then the user validation rules, as the API server runs them.
//!
//! The expressions were compiled and cost-bounded at load (kubegate-config); here they
//! only run. Whatever goes wrong at request time (a missing claim, a value of the wrong
//! type, a rule that does not hold) is an [`AuthError`] the client sees as a 401 with its
//! category, never a panic. [`evaluate`] also records each rule's outcome for
//! `kubegate auth explain`.

use std::collections::BTreeMap;
use std::sync::Arc;

use cel::{Context, Value as Cel};
use kubegate_config::{ClaimRules, ClaimValidationRule, Expression, Mapping, RESERVED_PREFIX};
use serde_json::{Map, Value};

use super::AuthError;

/// A user as the mappings made it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MappedUser {
    /// The username, prefix included.
    pub username: String,
    /// The uid, if mapped.
    pub uid: Option<String>,
    /// The groups, prefix included.
    pub groups: Vec<String>,
    /// The extra attributes; keys with an empty value are left out.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// One rule's outcome, for `kubegate auth explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOutcome {
    /// The field, such as `jwt[0].claimValidationRules[1]`, and the rule as written.
    pub rule: String,
    /// Whether it held.
    pub passed: bool,
}

/// The whole evaluation: every rule that ran, and the user or why there is none.
#[derive(Debug)]
pub struct Evaluation {
    /// Rules in the order they ran; evaluation stops at the first failure.
    pub rules: Vec<RuleOutcome>,
    /// The mapped user, or the refusal.
    pub result: Result<MappedUser, AuthError>,
}

/// Applies `rules` to `claims`.
pub fn evaluate(rules: &ClaimRules, claims: &Map<String, Value>) -> Evaluation {
    let mut outcomes = Vec::new();
    let result = run(rules, claims, &mut outcomes);
    Evaluation {
        rules: outcomes,
        result,
    }
}

fn run(
    rules: &ClaimRules,
    claims: &Map<String, Value>,
    outcomes: &mut Vec<RuleOutcome>,
) -> Result<MappedUser, AuthError> {
    let env = kubegate_config::cel_env();
    let claims_value = cel::to_value(claims)
        .map_err(|_| AuthError::Expression("the claims cannot be read as CEL values".into()))?;
    let mut ctx = Context::with_env(env.clone());
    ctx.add_variable_from_value("claims", claims_value);

    for rule in &rules.claim_validation {
        let (name, passed, message) = match rule {
            ClaimValidationRule::Required {
                claim,
                value,
                location,
            } => (
                format!("{}: {claim} == {value:?}", location.field),
                claims.get(claim).and_then(Value::as_str) == Some(value.as_str()),
                format!("claim {claim:?} is missing or has another value"),
            ),
            ClaimValidationRule::Expression {
                expression,
                message,
            } => (
                format!("{}: {}", expression.location.field, expression.source),
                boolean(&ctx, expression)?,
                message.clone().unwrap_or_else(|| {
                    format!("claim validation rule {:?} failed", expression.source)
                }),
            ),
        };
        outcomes.push(RuleOutcome { rule: name, passed });
        if !passed {
            return Err(AuthError::Claims(message));
        }
    }

    let username = match &rules.username {
        Mapping::Claim { claim, prefix } => {
            let value = match claims.get(claim) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(_) => {
                    return Err(AuthError::Claims(format!(
                        "claim {claim:?} is not a non-empty string"
                    )));
                }
                None => return Err(AuthError::Claims(format!("claim {claim:?} is missing"))),
            };
            // As the API server: an email is an identity only once the issuer verified it.
            if claim == "email" {
                match claims.get("email_verified") {
                    None | Some(Value::Bool(true)) => {}
                    Some(_) => return Err(AuthError::Claims("email_verified is not true".into())),
                }
            }
            format!("{prefix}{value}")
        }
        Mapping::Expression(e) => {
            let s = string(&ctx, e)?;
            if s.is_empty() {
                return Err(AuthError::Expression(format!(
                    "username expression {:?} evaluated to an empty string",
                    e.source
                )));
            }
            s
        }
    };
    let groups = match &rules.groups {
        None => Vec::new(),
        Some(Mapping::Claim { claim, prefix }) => match claims.get(claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![format!("{prefix}{s}")],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(format!("{prefix}{s}")),
                    _ => Err(AuthError::Claims(format!(
                        "claim {claim:?} must hold strings only"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(AuthError::Claims(format!(
                    "claim {claim:?} must be a string or a list of strings"
                )));
            }
        },
        Some(Mapping::Expression(e)) => strings(&ctx, e)?,
    };
    let uid = match &rules.uid {
        None => None,
        Some(Mapping::Claim { claim, .. }) => match claims.get(claim) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(AuthError::Claims(format!(
                    "claim {claim:?} is not a string"
                )));
            }
            None => return Err(AuthError::Claims(format!("claim {claim:?} is missing"))),
        },
        Some(Mapping::Expression(e)) => Some(string(&ctx, e)?),
    };
    let mut extra = BTreeMap::new();
    for mapping in &rules.extra {
        let values: Vec<String> = strings(&ctx, &mapping.value)?
            .into_iter()
            .filter(|v| !v.is_empty())
            .collect();
        if !values.is_empty() {
            extra.insert(mapping.key.clone(), values);
        }
    }
    let user = MappedUser {
        username,
        uid,
        groups,
        extra,
    };

    if !rules.user_validation.is_empty() {
        let mut user_ctx = Context::with_env(env);
        user_ctx.add_variable_from_value("user", user_value(&user)?);
        for rule in &rules.user_validation {
            let passed = boolean(&user_ctx, &rule.expression)?;
            outcomes.push(RuleOutcome {
                rule: format!(
                    "{}: {}",
                    rule.expression.location.field, rule.expression.source
                ),
                passed,
            });
            if !passed {
                return Err(AuthError::Claims(rule.message.clone().unwrap_or_else(
                    || format!("user validation rule {:?} failed", rule.expression.source),
                )));
            }
        }
    }

    // kubegate's own rule on top of the file's: `system:` names are the cluster's.
    if user.username.starts_with(RESERVED_PREFIX)
        || user.groups.iter().any(|g| g.starts_with(RESERVED_PREFIX))
    {
        return Err(AuthError::Claims(format!(
            "usernames and groups starting with {RESERVED_PREFIX:?} are reserved for the cluster"
        )));
    }
    Ok(user)
}

fn user_value(user: &MappedUser) -> Result<Cel, AuthError> {
    #[derive(serde::Serialize)]
    struct UserInfo<'a> {
        username: &'a str,
        uid: &'a str,
        groups: &'a [String],
        extra: &'a BTreeMap<String, Vec<String>>,
    }
    cel::to_value(UserInfo {
        username: &user.username,
        uid: user.uid.as_deref().unwrap_or(""),
        groups: &user.groups,
        extra: &user.extra,
    })
    .map_err(|_| AuthError::Expression("the user cannot be read as a CEL value".into()))
}

fn execute(ctx: &Context, e: &Expression) -> Result<Cel, AuthError> {
    e.program.execute(ctx).map_err(|err| {
        // The error text names the missing key or the mismatched types, never a value.
        AuthError::Expression(format!(
            "{} {:?} failed: {}",
            e.location.field,
            e.source,
            describe(&err)
        ))
    })
}

fn describe(err: &cel::ExecutionError) -> String {
    match err {
        cel::ExecutionError::NoSuchKey(k) => format!("no such key {k:?}"),
        cel::ExecutionError::UndeclaredReference(r) => format!("undeclared reference {r:?}"),
        other => {
            let text = other.to_string();
            // Bounded: some messages could quote a value from the claims.
            text.chars().take(120).collect()
        }
    }
}

fn wrong_type(e: &Expression, want: &str, got: &Cel) -> AuthError {
    AuthError::Expression(format!(
        "{} {:?} must evaluate to {want}, not {:?}",
        e.location.field,
        e.source,
        got.type_of()
    ))
}

fn boolean(ctx: &Context, e: &Expression) -> Result<bool, AuthError> {
    match execute(ctx, e)? {
        Cel::Bool(b) => Ok(b),
        other => Err(wrong_type(e, "a bool", &other)),
    }
}

fn string(ctx: &Context, e: &Expression) -> Result<String, AuthError> {
    match execute(ctx, e)? {
        Cel::String(s) => Ok(Arc::unwrap_or_clone(s)),
        other => Err(wrong_type(e, "a string", &other)),
    }
}

fn strings(ctx: &Context, e: &Expression) -> Result<Vec<String>, AuthError> {
    match execute(ctx, e)? {
        Cel::String(s) => Ok(vec![Arc::unwrap_or_clone(s)]),
        Cel::List(items) => items
            .iter()
            .map(|v| match v {
                Cel::String(s) => Ok(s.to_string()),
                other => Err(wrong_type(e, "a string or a list of strings", other)),
            })
            .collect(),
        Cel::Null => Ok(Vec::new()),
        other => Err(wrong_type(e, "a string or a list of strings", &other)),
    }
}

#[cfg(test)]
mod golden;

#[cfg(test)]
pub(super) mod tests {
    //! Claim rules run through [`super::super::IssuerVerifier::verify`] with real
    //! signatures; the helpers here serve the documentation's golden cases too.

    use std::path::Path;

    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use kubegate_config::{KeySource, Setting};
    use serde_json::json;

    use super::super::{AuthError, IssuerVerifier};

    /// The key id in the header of the documentation's example tokens.
    const KID: &str = "f7t_m8DNZaSBMhXl9AvSXhAP-8cBfgBUlUiLnhBH1us";

    /// An RS256 key (as the documentation's tokens use) and its JWKS in a file.
    pub(in crate::authn) struct Signer {
        key: EncodingKey,
        dir: tempfile::TempDir,
    }

    pub(in crate::authn) fn signer() -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let key = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(KID.into());
        let dir = tempfile::tempdir().unwrap();
        let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] }).unwrap();
        std::fs::write(dir.path().join("jwks.json"), jwks).unwrap();
        Signer { key, dir }
    }

    /// The issuer of `yaml`'s first `jwt` entry with its keys read from `s`'s JWKS file
    /// instead of discovery; everything else as the file says.
    pub(super) async fn verifier(yaml: &str, s: &Signer) -> IssuerVerifier {
        let mut issuers =
            kubegate_config::parse_authentication_config(Path::new("auth.yaml"), yaml).unwrap();
        let mut issuer = issuers.remove(0);
        issuer.keys = jwks_file(s, &issuer.location);
        let v = IssuerVerifier::new(issuer).unwrap();
        v.refresh_keys().await.unwrap();
        v
    }

    pub(super) fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// `claims` signed as they are.
    pub(super) fn sign(s: &Signer, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.into());
        jsonwebtoken::encode(&header, claims, &s.key).unwrap()
    }

    /// `s`'s JWKS file, as a key source for `location`'s issuer.
    pub(in crate::authn) fn jwks_file(
        s: &Signer,
        location: &kubegate_config::Location,
    ) -> KeySource {
        KeySource::JwksFile(Setting {
            value: s.dir.path().join("jwks.json"),
            location: location.clone(),
        })
    }

    /// `claims`, valid from now for ten minutes, signed.
    pub(in crate::authn) fn token(s: &Signer, mut claims: serde_json::Value) -> String {
        let now = now();
        claims["iat"] = json!(now);
        claims["exp"] = json!(now + 600);
        sign(s, &claims)
    }

    #[tokio::test]
    async fn claim_and_prefix_mappings_with_email_verification() {
        let yaml = r#"apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://example.com
    audiences: [my-app, other]
    audienceMatchPolicy: MatchAny
  claimValidationRules:
  - claim: hd
    requiredValue: example.com
  claimMappings:
    username:
      claim: email
      prefix: ""
    groups:
      claim: groups
      prefix: "oidc:"
    extra:
    - key: example.com/team
      valueExpression: 'claims.?org.team.orValue("")'
"#;
        let s = signer();
        let v = verifier(yaml, &s).await;
        let good = json!({
            "iss": "https://example.com", "aud": ["other"], "sub": "1",
            "hd": "example.com", "email": "jane@example.com", "email_verified": true,
            "groups": ["dev", "ops"],
        });
        let id = v.verify(&token(&s, good.clone())).await.unwrap().identity;
        assert_eq!(id.user, "jane@example.com");
        assert_eq!(id.groups, ["oidc:dev", "oidc:ops"]);
        // An absent optional claim gives an empty value, which is left out.
        assert!(id.extra.is_empty());
        let mut unverified = good;
        unverified["email_verified"] = json!(false);
        assert_eq!(
            v.verify(&token(&s, unverified)).await.err(),
            Some(AuthError::Claims("email_verified is not true".into()))
        );
    }
}
