//! An issuer's signing keys, parsed from a JWKS document into verification keys.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm as JwtAlg, DecodingKey};
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

struct Key {
    kind: KeyKind,
    /// The key's own `alg`, when the JWKS pins one.
    alg: Option<JwtAlg>,
    decoding: DecodingKey,
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
        let allowed_kinds: Vec<KeyKind> = allowed
            .iter()
            .filter_map(|a| kind_of(jwt_alg(*a)))
            .collect();
        let mut keys = Vec::new();
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(key) = usable_key(jwk) else { continue };
            if !allowed_kinds.contains(&key.kind) {
                continue;
            }
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
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        let kind = kind_of(alg);
        let fits = move |k: &&Key| Some(k.kind) == kind && k.alg.is_none_or(|a| a == alg);
        let chosen: Box<dyn Iterator<Item = &Key>> = match kid {
            Some(kid) => Box::new(self.by_kid.get(kid).map(|&i| &self.keys[i]).into_iter()),
            None => Box::new(self.keys.iter()),
        };
        chosen.filter(fits).map(|k| &k.decoding)
    }

    /// Whether the set has a key with this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }
}

fn usable_key(jwk: &Jwk) -> Option<Key> {
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
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            let alg: JwtAlg = a.to_string().parse().ok()?;
            if kind_of(alg) != Some(kind) {
                return None;
            }
            Some(alg)
        }
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kind,
        alg,
        decoding,
    })
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
