//! The API server's WebSocket credential: a bearer token sent as the sub-protocol
//! `base64url.bearer.authorization.k8s.io.<token>`, because browsers cannot set an
//! `Authorization` header on a WebSocket.
//!
//! Read as k8s.io/apiserver's `websocket.ProtocolAuthenticator` reads it: only on a
//! WebSocket upgrade; every `Sec-WebSocket-Protocol` line split on commas and trimmed; the
//! token base64url-encoded without padding and UTF-8 once decoded; an empty token is no
//! token; two such entries are refused; a token needs another sub-protocol beside it (the
//! one the server will echo). The same entry parser tells the header sanitiser what to
//! strip, so what is read as a credential and what is removed cannot drift apart.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::HeaderMap;
use http::header::{CONNECTION, SEC_WEBSOCKET_PROTOCOL, UPGRADE};

use super::{AuthError, MAX_TOKEN_BYTES};

/// The sub-protocol prefix the API server reads a bearer token from (case-sensitive).
pub(crate) const BEARER_PROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// Go's `base64.RawURLEncoding`: no padding accepted, and (not being `Strict`) non-zero
/// trailing bits tolerated.
const RAW_URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// The entries of one `Sec-WebSocket-Protocol` value: split on commas, each trimmed as
/// Go's `strings.TrimSpace` trims (of the whitespace a header value can hold: space, tab,
/// and the UTF-8 encodings of U+0085 and U+00A0).
pub(crate) fn protocol_entries(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(go_trim)
}

fn go_trim(mut s: &[u8]) -> &[u8] {
    const WIDE: [[u8; 2]; 2] = [[0xc2, 0x85], [0xc2, 0xa0]];
    loop {
        let before = s.len();
        s = s.trim_ascii();
        for w in &WIDE {
            s = s.strip_prefix(w).unwrap_or(s);
            s = s.strip_suffix(w).unwrap_or(s);
        }
        if s.len() == before {
            return s;
        }
    }
}

/// Whether an entry must never be forwarded: it carries the bearer prefix anywhere, in any
/// case. Wider than what is read as a credential, on purpose: nothing token-shaped leaves.
pub(crate) fn carries_bearer(entry: &[u8]) -> bool {
    let prefix = BEARER_PROTOCOL_PREFIX.as_bytes();
    entry
        .windows(prefix.len())
        .any(|w| w.eq_ignore_ascii_case(prefix))
}

/// Whether the API server would treat the request as a WebSocket upgrade
/// (`Upgrade: websocket` announced in `Connection`).
fn is_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
    upgrade
        && headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|option| option.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
}

/// The bearer token carried in `Sec-WebSocket-Protocol`, if any. The token is never part
/// of an error.
pub(crate) fn protocol_token(headers: &HeaderMap) -> Result<Option<String>, AuthError> {
    if !is_websocket(headers) {
        return Ok(None);
    }
    let mut encoded = None;
    let mut others = 0usize;
    for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        for entry in protocol_entries(value.as_bytes()) {
            match entry.strip_prefix(BEARER_PROTOCOL_PREFIX.as_bytes()) {
                Some(token) if encoded.is_none() => encoded = Some(token),
                Some(_) => return Err(AuthError::AmbiguousCredential),
                None => others += 1,
            }
        }
    }
    let Some(encoded) = encoded else {
        return Ok(None);
    };
    // Bounded before decoding: base64 is 4 characters for every 3 bytes.
    if encoded.len() > MAX_TOKEN_BYTES.div_ceil(3) * 4 {
        return Err(AuthError::MalformedToken);
    }
    let decoded = RAW_URL
        .decode(encoded)
        .map_err(|_| AuthError::MalformedProtocolToken)?;
    let token = String::from_utf8(decoded).map_err(|_| AuthError::MalformedProtocolToken)?;
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::MalformedToken);
    }
    if others == 0 {
        return Err(AuthError::ProtocolTokenAlone);
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// A WebSocket upgrade with these `Sec-WebSocket-Protocol` lines.
    fn upgrade(protocols: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        for p in protocols {
            h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(p).unwrap());
        }
        h
    }

    fn entry(token: &str) -> String {
        format!("{BEARER_PROTOCOL_PREFIX}{}", RAW_URL.encode(token))
    }

    #[test]
    fn the_token_is_read_from_any_line_with_any_spacing() {
        let t = entry("header.claims.sig");
        for lines in [
            vec![format!("v5.channel.k8s.io, {t}")],
            vec![format!(" {t} ,v4.channel.k8s.io ")],
            vec!["v5.channel.k8s.io".to_string(), format!("\t{t}")],
        ] {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            assert_eq!(
                protocol_token(&upgrade(&lines)),
                Ok(Some("header.claims.sig".into())),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn only_a_websocket_upgrade_carries_it() {
        let t = entry("tok");
        let mut plain = upgrade(&[&format!("v5.channel.k8s.io,{t}")]);
        plain.remove(UPGRADE);
        assert_eq!(protocol_token(&plain), Ok(None));
        let mut unannounced = upgrade(&[&format!("v5.channel.k8s.io,{t}")]);
        unannounced.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(protocol_token(&unannounced), Ok(None));
    }

    #[test]
    fn the_api_servers_refusals_are_kept() {
        let t = entry("tok");
        assert_eq!(
            protocol_token(&upgrade(&[&format!("v5.channel.k8s.io,{t}"), &t])),
            Err(AuthError::AmbiguousCredential)
        );
        // Two entries are refused even when one is empty, as the API server does.
        assert_eq!(
            protocol_token(&upgrade(&[&format!("a,{t},{BEARER_PROTOCOL_PREFIX}")])),
            Err(AuthError::AmbiguousCredential)
        );
        assert_eq!(
            protocol_token(&upgrade(&[&t])),
            Err(AuthError::ProtocolTokenAlone)
        );
        for bad in [
            format!("{t}="),                        // padded
            format!("{BEARER_PROTOCOL_PREFIX}a+b"), // standard alphabet
            format!("{BEARER_PROTOCOL_PREFIX}a"),   // impossible length
            format!("{BEARER_PROTOCOL_PREFIX}_w"),  // 0xff: not UTF-8
        ] {
            assert_eq!(
                protocol_token(&upgrade(&["v5.channel.k8s.io", &bad])),
                Err(AuthError::MalformedProtocolToken),
                "{bad}"
            );
        }
        // Too long once decoded, and too long to decode at all.
        for len in [MAX_TOKEN_BYTES + 1, 2 * MAX_TOKEN_BYTES] {
            let huge = entry(&"a".repeat(len));
            let result = protocol_token(&upgrade(&["v5.channel.k8s.io", &huge]));
            assert!(matches!(result, Err(AuthError::MalformedToken)), "{len}");
        }
    }

    #[test]
    fn an_empty_token_or_another_spelling_is_no_token() {
        assert_eq!(
            protocol_token(&upgrade(&[&format!(
                "v5.channel.k8s.io,{BEARER_PROTOCOL_PREFIX}"
            )])),
            Ok(None)
        );
        // The API server's prefix is case-sensitive; the sanitiser still strips this.
        let upper = entry("tok").to_uppercase();
        assert_eq!(
            protocol_token(&upgrade(&[&format!("v5.channel.k8s.io,{upper}")])),
            Ok(None)
        );
        assert!(carries_bearer(upper.as_bytes()));
    }

    #[test]
    fn non_canonical_trailing_bits_are_tolerated_as_go_does() {
        // "YR" decodes to "a" with non-zero trailing bits ("YQ" is canonical).
        let t = format!("{BEARER_PROTOCOL_PREFIX}YR");
        assert_eq!(
            protocol_token(&upgrade(&["v5.channel.k8s.io", &t])),
            Ok(Some("a".into()))
        );
    }

    #[test]
    fn entries_are_trimmed_like_go() {
        let entries: Vec<&[u8]> = protocol_entries(b" a ,\tb,\xc2\xa0c\xc2\x85, ,").collect();
        assert_eq!(entries, vec![&b"a"[..], b"b", b"c", b"", b""]);
    }
}
