//! The registered claims every verified token must pass (RFC 7519 section 4.1): `exp`
//! and `iss` and `aud` present, `exp` not past, `nbf` not ahead, `iss` the issuer's own,
//! `aud` naming an accepted audience. Checked on the claims parsed once for the identity
//! mapping, after the signature verified.
//!
//! Stricter than the JWT library these checks replace in two ways: `iss` must be one
//! string (the library also took a list), and `exp`/`nbf` must be numbers (the library
//! also took numeric strings).

use serde_json::{Map, Value};

use super::AuthError;

/// What the claims are checked against.
pub(super) struct Expected<'a> {
    /// The issuer's `iss`, exactly.
    pub issuer: &'a str,
    /// Accepted audiences: `aud` must name one of them.
    pub audiences: &'a [String],
    /// Clock skew allowed either way, in seconds.
    pub leeway: f64,
    /// Now, in seconds since the epoch.
    pub now: f64,
}

/// Checks the registered claims; the error names the claim, never its value.
pub(super) fn check(claims: &Map<String, Value>, expected: &Expected<'_>) -> Result<(), AuthError> {
    let missing = |claim: &str| AuthError::Claims(format!("required claim {claim:?} is missing"));
    let exp = claims.get("exp").ok_or_else(|| missing("exp"))?;
    let iss = claims.get("iss").ok_or_else(|| missing("iss"))?;
    let aud = claims.get("aud").ok_or_else(|| missing("aud"))?;

    let exp = exp.as_f64().ok_or(AuthError::MalformedToken)?;
    if exp < expected.now - expected.leeway {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().ok_or(AuthError::MalformedToken)?;
        if nbf > expected.now + expected.leeway {
            return Err(AuthError::NotYetValid);
        }
    }
    if iss.as_str() != Some(expected.issuer) {
        return Err(AuthError::UnknownIssuer);
    }
    let accepted = |a: &str| expected.audiences.iter().any(|e| e == a);
    let named = match aud {
        Value::String(a) => accepted(a),
        Value::Array(list) => {
            let mut named = false;
            for a in list {
                named |= accepted(a.as_str().ok_or(AuthError::MalformedToken)?);
            }
            named
        }
        _ => return Err(AuthError::MalformedToken),
    };
    if !named {
        return Err(AuthError::Audience);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: f64 = 1_800_000_000.0;

    fn checked(claims: Value) -> Result<(), AuthError> {
        let audiences = ["kubegate".to_string(), "other".to_string()];
        let expected = Expected {
            issuer: "https://i",
            audiences: &audiences,
            leeway: 60.0,
            now: NOW,
        };
        check(claims.as_object().expect("an object"), &expected)
    }

    fn good() -> Value {
        json!({"iss": "https://i", "aud": "kubegate", "exp": NOW + 600.0, "sub": "a"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut claims = good();
        claims[key] = value;
        claims
    }

    fn without(key: &str) -> Value {
        let mut claims = good();
        claims.as_object_mut().expect("an object").remove(key);
        claims
    }

    #[test]
    fn a_good_token_passes_with_either_audience_shape() {
        assert_eq!(checked(good()), Ok(()));
        assert_eq!(checked(with("aud", json!(["x", "other"]))), Ok(()));
        assert_eq!(checked(with("nbf", json!(NOW - 10.0))), Ok(()));
        // Integers, as issuers write them, and the edges of the leeway.
        assert_eq!(checked(with("exp", json!(1_800_000_000u64))), Ok(()));
        assert_eq!(checked(with("exp", json!(NOW - 60.0))), Ok(()));
        assert_eq!(checked(with("nbf", json!(NOW + 60.0))), Ok(()));
    }

    #[test]
    fn each_missing_claim_is_named() {
        for claim in ["exp", "iss", "aud"] {
            assert_eq!(
                checked(without(claim)),
                Err(AuthError::Claims(format!(
                    "required claim {claim:?} is missing"
                ))),
                "{claim}"
            );
        }
    }

    #[test]
    fn time_claims_are_checked_with_the_leeway() {
        assert_eq!(
            checked(with("exp", json!(NOW - 61.0))),
            Err(AuthError::Expired)
        );
        assert_eq!(
            checked(with("nbf", json!(NOW + 61.0))),
            Err(AuthError::NotYetValid)
        );
        // JSON's extremes decide, without overflow.
        assert_eq!(
            checked(with("exp", json!(-f64::MAX))),
            Err(AuthError::Expired)
        );
        assert_eq!(checked(with("exp", json!(f64::MAX))), Ok(()));
        assert_eq!(
            checked(with("nbf", json!(u64::MAX))),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn issuer_and_audience_must_match() {
        assert_eq!(
            checked(with("iss", json!("https://evil"))),
            Err(AuthError::UnknownIssuer)
        );
        assert_eq!(
            checked(with("iss", json!(["https://i"]))),
            Err(AuthError::UnknownIssuer),
            "one issuer, never a list"
        );
        assert_eq!(
            checked(with("aud", json!("someone-else"))),
            Err(AuthError::Audience)
        );
        assert_eq!(checked(with("aud", json!([]))), Err(AuthError::Audience));
    }

    #[test]
    fn claims_of_the_wrong_type_are_malformed() {
        for (claim, value) in [
            ("exp", json!("1800000600")),
            ("exp", json!(null)),
            ("nbf", json!("0")),
            ("aud", json!(5)),
            ("aud", json!(["kubegate", 5])),
            ("aud", json!({"kubegate": true})),
        ] {
            assert_eq!(
                checked(with(claim, value.clone())),
                Err(AuthError::MalformedToken),
                "{claim}: {value}"
            );
        }
    }
}
