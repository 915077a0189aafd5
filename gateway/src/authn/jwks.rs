//! An issuer's signing keys, parsed from a JWKS document into verification keys.
//!
//! Each key is parsed once, when the document arrives, into one aws-lc-rs
//! [`ParsedPublicKey`] per algorithm it may verify. The JWT library rebuilt the key from
//! its JWK components on every verification (and cloned them): with the second parse of
//! the claims, a third of an RS256 cache miss.

use std::collections::HashMap;

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm as JwtAlg;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use kubegate_config::Algorithm;

/// A JWKS larger than this is refused: real ones are a few KiB.
pub(crate) const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a JWKS document was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// Not a JWKS document.
    #[error("not a JWKS document: {0}")]
    Parse(#[from] serde_json::Error),
    /// No key in it can verify any of the issuer's allowed algorithms.
    #[error("the JWKS holds no usable signing key for the allowed algorithms")]
    NoUsableKey,
    /// Larger than [`MAX_JWKS_BYTES`].
    #[error("the JWKS document is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
}

/// The key families a signature algorithm may be verified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

fn kind_of(alg: JwtAlg) -> Option<KeyKind> {
    Some(match alg {
        JwtAlg::RS256
        | JwtAlg::RS384
        | JwtAlg::RS512
        | JwtAlg::PS256
        | JwtAlg::PS384
        | JwtAlg::PS512 => KeyKind::Rsa,
        JwtAlg::ES256 => KeyKind::P256,
        JwtAlg::ES384 => KeyKind::P384,
        JwtAlg::EdDSA => KeyKind::Ed25519,
        // Symmetric algorithms have no public key: never usable here.
        _ => return None,
    })
}

/// Maps the configuration's algorithm names to the JWT library's.
pub(crate) fn jwt_alg(alg: Algorithm) -> JwtAlg {
    match alg {
        Algorithm::RS256 => JwtAlg::RS256,
        Algorithm::RS384 => JwtAlg::RS384,
        Algorithm::RS512 => JwtAlg::RS512,
        Algorithm::PS256 => JwtAlg::PS256,
        Algorithm::PS384 => JwtAlg::PS384,
        Algorithm::PS512 => JwtAlg::PS512,
        Algorithm::ES256 => JwtAlg::ES256,
        Algorithm::ES384 => JwtAlg::ES384,
        Algorithm::EdDSA => JwtAlg::EdDSA,
    }
}

/// The RSA parameters of each RSA algorithm (the same the JWT library verified with).
fn rsa_parameters(alg: JwtAlg) -> Option<&'static sig::RsaParameters> {
    Some(match alg {
        JwtAlg::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        JwtAlg::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        JwtAlg::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        JwtAlg::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        JwtAlg::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        JwtAlg::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// The verification algorithm of each elliptic-curve JWS algorithm. JWS carries ECDSA
/// signatures as fixed-width r || s (RFC 7518 section 3.4).
fn curve_verification(alg: JwtAlg) -> Option<&'static dyn sig::VerificationAlgorithm> {
    Some(match alg {
        JwtAlg::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        JwtAlg::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        JwtAlg::EdDSA => &sig::ED25519,
        _ => return None,
    })
}

struct Key {
    /// One parsed key per allowed algorithm this key may verify.
    verifiers: Vec<(JwtAlg, ParsedPublicKey)>,
}

/// The verification keys of one issuer.
pub struct KeySet {
    keys: Vec<Key>,
    by_kid: HashMap<String, usize>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.len())
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys that can verify one of `allowed`.
    ///
    /// Symmetric (`oct`) keys, encryption keys (`use: enc`) and keys of unknown types are
    /// skipped; a document with nothing usable left is an error, since an issuer without
    /// keys would reject every user.
    pub fn parse(json: &[u8], allowed: &[Algorithm]) -> Result<KeySet, KeySetError> {
        if json.len() > MAX_JWKS_BYTES {
            return Err(KeySetError::TooLarge);
        }
        let set: JwkSet = serde_json::from_slice(json)?;
        let allowed: Vec<JwtAlg> = allowed.iter().map(|a| jwt_alg(*a)).collect();
        let mut keys = Vec::new();
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(key) = usable_key(jwk, &allowed) else {
                continue;
            };
            if let Some(kid) = &jwk.common.key_id {
                // A duplicate kid is ambiguous; the first one wins, like most verifiers.
                by_kid.entry(kid.clone()).or_insert(keys.len());
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeySetError::NoUsableKey);
        }
        Ok(KeySet { keys, by_kid })
    }

    /// The number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty (never true for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that may verify a token signed with `alg` and naming `kid`.
    ///
    /// With a `kid`, only that key (if its type fits the algorithm). Without one, every
    /// key of the right type: issuers with a single key often omit `kid`.
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&str>,
        alg: JwtAlg,
    ) -> impl Iterator<Item = &'a ParsedPublicKey> + 'a {
        let chosen: &[Key] = match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(&i) => std::slice::from_ref(&self.keys[i]),
                None => &[],
            },
            None => &self.keys,
        };
        chosen.iter().filter_map(move |k| {
            k.verifiers
                .iter()
                .find(|(a, _)| *a == alg)
                .map(|(_, key)| key)
        })
    }

    /// Whether the set has a key with this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }
}

/// The key of a JWK, parsed for each of `allowed` it may verify; `None` when it may verify
/// none of them (or is malformed: one bad key does not spoil the document).
fn usable_key(jwk: &Jwk, allowed: &[JwtAlg]) -> Option<Key> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        // `oct` keys are shared secrets: accepting one would let anyone who fetched the
        // JWKS mint tokens.
        _ => return None,
    };
    let pinned = match jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            let alg: JwtAlg = a.to_string().parse().ok()?;
            if kind_of(alg) != Some(kind) {
                return None;
            }
            Some(alg)
        }
    };
    let mut verifiers = Vec::new();
    for &alg in allowed {
        if kind_of(alg) != Some(kind) || pinned.is_some_and(|p| p != alg) {
            continue;
        }
        verifiers.push((alg, parse_key(&jwk.algorithm, alg)?));
    }
    if verifiers.is_empty() {
        return None;
    }
    Some(Key { verifiers })
}

/// Parses the public key of a JWK (already known to fit `alg`'s key type) for `alg`.
fn parse_key(params: &AlgorithmParameters, alg: JwtAlg) -> Option<ParsedPublicKey> {
    let b64 = |v: &str| URL_SAFE_NO_PAD.decode(v).ok();
    match params {
        AlgorithmParameters::RSA(rsa) => {
            let (n, e) = (b64(&rsa.n)?, b64(&rsa.e)?);
            RsaPublicKeyComponents { n: &n, e: &e }
                .to_parsed_public_key(rsa_parameters(alg)?)
                .ok()
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let width = if kind_of(alg) == Some(KeyKind::P256) {
                32
            } else {
                48
            };
            let (x, y) = (b64(&ec.x)?, b64(&ec.y)?);
            if x.len() != width || y.len() != width {
                return None;
            }
            // The uncompressed point (SEC 1): 0x04 || x || y. aws-lc checks it lies on
            // the curve.
            let mut point = Vec::with_capacity(1 + 2 * width);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ParsedPublicKey::new(curve_verification(alg)?, point).ok()
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            ParsedPublicKey::new(curve_verification(alg)?, b64(&okp.x)?).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OCT_ONLY: &str = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#;

    #[test]
    fn symmetric_keys_are_never_usable() {
        let e = KeySet::parse(OCT_ONLY.as_bytes(), &[Algorithm::RS256]).unwrap_err();
        assert!(matches!(e, KeySetError::NoUsableKey));
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            KeySet::parse(b"{", &[Algorithm::RS256]),
            Err(KeySetError::Parse(_))
        ));
    }

    #[test]
    fn oversized_documents_are_refused() {
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(matches!(
            KeySet::parse(&big, &[Algorithm::RS256]),
            Err(KeySetError::TooLarge)
        ));
    }
}
