//! Path normalisation: the single gate every request path passes before the
//! resolver or the policy sees it.
//!
//! We never rewrite a path into a "clean" form: a path with any ambiguity
//! (dot segments, encoded separators, escapes of characters that have a plain
//! form) is rejected, so the string we authorise is byte-for-byte the string
//! the API server receives, and the segments we resolve are the segments the
//! API server's Go `net/url` decoding produces.

use thiserror::Error;

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 8192;
/// Longest accepted path segment (raw, before decoding), in bytes.
pub const MAX_SEGMENT_LEN: usize = 1024;

/// A request path that passed [`normalize_path`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalPath {
    raw: String,
    segments: Vec<String>,
}

impl CanonicalPath {
    /// The path exactly as the client sent it; this is what gets forwarded.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Percent-decoded segments (empty for `/`), as the API server splits them.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl std::fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Why a path was rejected. Messages never echo the path: it is attacker
/// controlled and ends up in logs and responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is the empty string.
    #[error("path is empty")]
    Empty,
    /// The path does not start with `/`.
    #[error("path does not start with /")]
    NotAbsolute,
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("path exceeds {MAX_PATH_LEN} bytes")]
    TooLong,
    /// A segment is longer than [`MAX_SEGMENT_LEN`].
    #[error("path segment exceeds {MAX_SEGMENT_LEN} bytes")]
    SegmentTooLong,
    /// `//` somewhere, or a trailing `/` on anything but the root.
    #[error("path contains an empty segment")]
    EmptySegment,
    /// A `.` or `..` segment, plain or percent-encoded.
    #[error("path contains a dot segment")]
    DotSegment,
    /// `%2F` / `%2f`.
    #[error("path contains an encoded slash")]
    EncodedSlash,
    /// A backslash, plain or encoded as `%5C`.
    #[error("path contains a backslash")]
    Backslash,
    /// A byte below 0x20 or 0x7f, plain or percent-encoded.
    #[error("path contains a control character")]
    ControlCharacter,
    /// `%` not followed by two hex digits.
    #[error("path contains a malformed percent escape")]
    MalformedEscape,
    /// An escape of ALPHA / DIGIT / `-` `.` `_` `~`, which have a plain form.
    #[error("path contains a percent-encoded unreserved character")]
    EncodedUnreserved,
    /// A segment whose decoded bytes are not UTF-8.
    #[error("path segment is not valid utf-8 after percent-decoding")]
    InvalidUtf8,
    /// `?` or `#`: the caller must split the query off first.
    #[error("path contains a query or fragment delimiter")]
    QueryOrFragment,
    /// A character an HTTP request target cannot carry unescaped (space,
    /// `<`, `>`, `` ` ``, non-ASCII).
    #[error("path contains a character that is not allowed in a url path")]
    InvalidCharacter,
}

/// Validates `raw` (a path without query) and decodes its segments.
///
/// The accepted raw alphabet is what the `http` crate accepts in a request
/// target, minus the backslash, so the gateway and a policy file agree on
/// which paths exist.
pub fn normalize_path(raw: &str) -> Result<CanonicalPath, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments = Vec::new();
    if !rest.is_empty() {
        for seg in rest.split('/') {
            segments.push(decode_segment(seg)?);
        }
    }
    Ok(CanonicalPath {
        raw: raw.to_owned(),
        segments,
    })
}

fn decode_segment(seg: &str) -> Result<String, PathError> {
    if seg.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if seg.len() > MAX_SEGMENT_LEN {
        return Err(PathError::SegmentTooLong);
    }
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    // Reported after decoding so `%2e%2e` says "dot segment", the real issue.
    let mut encoded_unreserved = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| hex(*c));
            let lo = bytes.get(i + 2).and_then(|c| hex(*c));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::MalformedEscape);
            };
            let v = (hi << 4) | lo;
            match v {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::Backslash),
                0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                _ if is_unreserved(v) => encoded_unreserved = true,
                _ => {}
            }
            out.push(v);
            i += 3;
            continue;
        }
        match b {
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'\\' => return Err(PathError::Backslash),
            b'?' | b'#' => return Err(PathError::QueryOrFragment),
            _ if is_path_char(b) => out.push(b),
            _ => return Err(PathError::InvalidCharacter),
        }
        i += 1;
    }
    let decoded = String::from_utf8(out).map_err(|_| PathError::InvalidUtf8)?;
    if decoded == "." || decoded == ".." {
        return Err(PathError::DotSegment);
    }
    if encoded_unreserved {
        return Err(PathError::EncodedUnreserved);
    }
    Ok(decoded)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes the `http` crate lets through unescaped in a path (its table plus
/// the `"{}` it tolerates for compatibility), minus `\`, `?`, `#`, `%`.
fn is_path_char(b: u8) -> bool {
    matches!(b,
        0x21 | 0x22 | 0x24..=0x3B | 0x3D | 0x40..=0x5B | 0x5D..=0x5F | 0x61..=0x7D | 0x7E)
        && b != b'%'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        normalize_path(p).unwrap().segments().to_vec()
    }

    #[test]
    fn accepts_and_decodes() {
        assert_eq!(segs("/"), Vec::<String>::new());
        assert_eq!(segs("/api/v1/pods"), ["api", "v1", "pods"]);
        assert_eq!(segs("/a%20b/c%3Ad"), ["a b", "c:d"]);
        assert_eq!(segs("/a%3ab"), ["a:b"]);
        assert_eq!(segs("/%C3%A9t%C3%A9"), ["été"]);
        assert_eq!(segs("/a%25b"), ["a%b"]);
        assert_eq!(
            segs("/svc/https:web:443/proxy"),
            ["svc", "https:web:443", "proxy"]
        );
        assert_eq!(segs("/..."), ["..."]);
        assert_eq!(segs("/.a/a."), [".a", "a."]);
        let p = normalize_path("/a%20b").unwrap();
        assert_eq!(p.as_str(), "/a%20b");
        assert_eq!(normalize_path(p.as_str()).unwrap(), p);
    }

    #[test]
    fn rejects() {
        use PathError::*;
        let long_seg = format!("/{}", "a".repeat(MAX_SEGMENT_LEN + 1));
        let long_path = "/abcdefgh".repeat(MAX_PATH_LEN / 9 + 1);
        let cases: &[(&str, PathError)] = &[
            ("", Empty),
            ("api", NotAbsolute),
            ("//", EmptySegment),
            ("/api//v1", EmptySegment),
            ("/api/", EmptySegment),
            ("/.", DotSegment),
            ("/api/..", DotSegment),
            ("/api/./v1", DotSegment),
            ("/%2e", DotSegment),
            ("/%2E%2e", DotSegment),
            ("/.%2e", DotSegment),
            ("/a%2Fb", EncodedSlash),
            ("/a%2fb", EncodedSlash),
            ("/a%5Cb", Backslash),
            ("/a%5cb", Backslash),
            ("/a\\b", Backslash),
            ("/a\0b", ControlCharacter),
            ("/a%00b", ControlCharacter),
            ("/a%7fb", ControlCharacter),
            ("/a\x7fb", ControlCharacter),
            ("/a%0Ab", ControlCharacter),
            ("/a\tb", ControlCharacter),
            ("/a%", MalformedEscape),
            ("/a%4", MalformedEscape),
            ("/a%zz", MalformedEscape),
            ("/a%+1", MalformedEscape),
            ("/%66oo", EncodedUnreserved),
            ("/a%2Db", EncodedUnreserved),
            ("/a%7E", EncodedUnreserved),
            ("/a%5F", EncodedUnreserved),
            ("/a%30", EncodedUnreserved),
            ("/a%ff", InvalidUtf8),
            ("/a%C3", InvalidUtf8),
            ("/a?b", QueryOrFragment),
            ("/a#b", QueryOrFragment),
            ("/a b", InvalidCharacter),
            ("/a<b", InvalidCharacter),
            ("/a`b", InvalidCharacter),
            ("/é", InvalidCharacter),
            (&long_seg, SegmentTooLong),
            (&long_path, TooLong),
        ];
        for (p, want) in cases {
            assert_eq!(normalize_path(p), Err(*want), "{p:?}");
        }
    }

    #[test]
    fn messages_are_specific() {
        assert_eq!(
            normalize_path("/a/../b").unwrap_err().to_string(),
            "path contains a dot segment"
        );
        assert_eq!(
            normalize_path("/a%2fb").unwrap_err().to_string(),
            "path contains an encoded slash"
        );
    }
}
