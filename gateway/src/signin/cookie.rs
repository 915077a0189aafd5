//! The sign-in cookie: what a started sign-in must remember until its callback (state,
//! nonce, PKCE verifier, start time), sealed with AES-256-GCM (aws-lc-rs) so the browser
//! can neither read nor change it, and nothing about it is kept on the server.
//!
//! The cookie is `__Secure-` prefixed, `Secure`, `HttpOnly`, `SameSite=Lax` (the
//! provider's redirect back is a top-level GET, which Lax lets through) and scoped to
//! `/kubegate/`. Its name is the AEAD's associated data, so a value sealed for another
//! purpose does not open as this one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

/// The cookie's name. `__Secure-`: browsers accept it only with `Secure` over https.
pub const NAME: &str = "__Secure-kubegate-signin";
/// Key material shorter than this is refused: the key is derived from it, and it must be
/// at least as strong as the key.
pub const MIN_KEY_MATERIAL: usize = 32;
/// Sealed values longer than this are not even decoded (a real one is about 250 bytes).
const MAX_SEALED: usize = 2048;

/// What a started sign-in remembers until its callback.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    /// The `state` sent to the provider; the callback must bring it back.
    pub state: String,
    /// The `nonce` sent to the provider; the ID token must carry it.
    pub nonce: String,
    /// The PKCE code verifier whose S256 challenge went to the provider.
    pub verifier: String,
    /// When the sign-in started, seconds since the epoch.
    pub started: u64,
}

/// Why the cookie is not usable. The messages are the page's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CookieError {
    /// No sign-in cookie came with the callback.
    #[error(
        "no sign-in is in progress in this browser (its cookie is missing: the sign-in was started elsewhere, already finished, or cookies are blocked)"
    )]
    Missing,
    /// The cookie does not open with the gateway's key.
    #[error(
        "the sign-in cookie is not valid (it was changed, or sealed before the gateway restarted with a new key)"
    )]
    Invalid,
    /// The sign-in started too long ago.
    #[error("the sign-in took too long and has expired")]
    Expired,
}

/// The key that seals and opens sign-in cookies.
pub struct CookieKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

impl CookieKey {
    /// A key derived (HKDF-SHA256) from `material`, at least [`MIN_KEY_MATERIAL`] bytes,
    /// so every replica given the same file opens every other's cookies.
    pub fn derive(material: &[u8]) -> Result<Self, String> {
        if material.len() < MIN_KEY_MATERIAL {
            return Err(format!(
                "must hold at least {MIN_KEY_MATERIAL} bytes of random data (for example: head -c 32 /dev/urandom > FILE)"
            ));
        }
        let salt = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, b"kubegate sign-in");
        let mut key = [0u8; 32];
        salt.extract(material)
            .expand(&[b"cookie key v1".as_slice()], &AES_256_GCM)
            .and_then(|okm| okm.fill(&mut key))
            .map_err(|_| "cannot derive the cookie key".to_string())?;
        Self::from_bytes(&key)
    }

    /// A random key for this process only: sign-ins in flight across a restart fail.
    pub fn generate() -> Result<Self, String> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| "no randomness for the cookie key".to_string())?;
        Self::from_bytes(&key)
    }

    fn from_bytes(key: &[u8; 32]) -> Result<Self, String> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| "bad cookie key".to_string())?;
        Ok(CookieKey {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// `pending`, sealed: a random nonce, then the ciphertext and tag, base64url.
    pub fn seal(&self, pending: &Pending) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "no randomness for the cookie".to_string())?;
        let mut data = serde_json::to_vec(pending).map_err(|e| e.to_string())?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(NAME),
                &mut data,
            )
            .map_err(|_| "cannot seal the cookie".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a sealed value and checks its age against `lifetime`.
    pub fn open(&self, sealed: &str, lifetime: Duration) -> Result<Pending, CookieError> {
        if sealed.len() > MAX_SEALED {
            return Err(CookieError::Invalid);
        }
        let mut bytes = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| CookieError::Invalid)?;
        if bytes.len() < NONCE_LEN {
            return Err(CookieError::Invalid);
        }
        let mut data = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| CookieError::Invalid)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(NAME), &mut data)
            .map_err(|_| CookieError::Invalid)?;
        let pending: Pending = serde_json::from_slice(plain).map_err(|_| CookieError::Invalid)?;
        let age = now().saturating_sub(pending.started);
        if age > lifetime.as_secs() {
            return Err(CookieError::Expired);
        }
        Ok(pending)
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `Set-Cookie` value that stores `sealed` for `lifetime`.
pub fn set(sealed: &str, lifetime: Duration) -> String {
    format!(
        "{NAME}={sealed}; Max-Age={}; Path=/kubegate/; Secure; HttpOnly; SameSite=Lax",
        lifetime.as_secs()
    )
}

/// The `Set-Cookie` value that removes the cookie: every callback answer sends it, so a
/// finished or refused sign-in cannot be replayed from the same browser.
pub fn clear() -> String {
    format!("{NAME}=; Max-Age=0; Path=/kubegate/; Secure; HttpOnly; SameSite=Lax")
}

/// The sign-in cookie's value in the request, if it carries exactly one.
pub fn read(headers: &HeaderMap) -> Result<&str, CookieError> {
    let mut found = None;
    for value in headers.get_all(http::header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((name, v)) = pair.trim().split_once('=')
                && name == NAME
            {
                // Two of them (one planted by a sibling host?): trust neither.
                if found.replace(v).is_some() {
                    return Err(CookieError::Invalid);
                }
            }
        }
    }
    found.ok_or(CookieError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(started: u64) -> Pending {
        Pending {
            state: "s".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            started,
        }
    }

    #[test]
    fn a_sealed_cookie_opens_only_unchanged_with_its_key_and_in_time() {
        let key = CookieKey::derive(&[7u8; 32]).unwrap();
        let started = now();
        let sealed = key.seal(&pending(started)).unwrap();
        let ten = Duration::from_secs(600);
        assert!(key.open(&sealed, ten).unwrap() == pending(started));
        // The same material derives the same key (another replica, a restart).
        let again = CookieKey::derive(&[7u8; 32]).unwrap();
        assert!(again.open(&sealed, ten).is_ok());
        // Another key, a flipped byte, garbage, an old cookie: refused.
        let other = CookieKey::generate().unwrap();
        assert_eq!(other.open(&sealed, ten).err(), Some(CookieError::Invalid));
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let flipped = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(key.open(&flipped, ten).err(), Some(CookieError::Invalid));
        assert_eq!(key.open("!!", ten).err(), Some(CookieError::Invalid));
        assert_eq!(key.open("", ten).err(), Some(CookieError::Invalid));
        let old = key.seal(&pending(now() - 601)).unwrap();
        assert_eq!(key.open(&old, ten).err(), Some(CookieError::Expired));
        // Too little key material is refused.
        assert!(CookieKey::derive(&[1u8; 31]).is_err());
    }

    #[test]
    fn the_cookie_is_read_once_and_set_with_every_flag() {
        let mut h = HeaderMap::new();
        assert_eq!(read(&h), Err(CookieError::Missing));
        h.append("cookie", format!("a=b; {NAME}=xyz; c=d").parse().unwrap());
        assert_eq!(read(&h), Ok("xyz"));
        h.append("cookie", format!("{NAME}=other").parse().unwrap());
        assert_eq!(read(&h), Err(CookieError::Invalid));
        let set = set("xyz", Duration::from_secs(600));
        for flag in [
            "Max-Age=600",
            "Path=/kubegate/",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
        ] {
            assert!(set.contains(flag), "{set}");
        }
        assert!(clear().contains("Max-Age=0"));
    }
}
