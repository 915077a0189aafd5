//! Path normalisation: the single gate every request path passes before the
//! resolver or the policy sees it.
//!
//! We never rewrite a path into a "clean" form: a path with any ambiguity
//! (dot segments, encoded separators, escapes of characters that have a plain
//! form) is rejected, so the string we authorise is byte-for-byte the string
//! the API server receives, and the segments we resolve are the segments the
//! API server's Go `net/url` decoding produces.
//!
//! One part of a path is not ours to read: what follows the `proxy`
//! subresource of a pod, service or node (core group, and the legacy
//! `/api/<version>/proxy/...` form after the name) is the backend's path. The
//! API server hands it to the backend and never authorises on it, so neither
//! do we: it is excluded from [`CanonicalPath::segments`] and may be empty,
//! end with `/` or contain `//`, since web applications need those. Every
//! other rule (dot segments, encoded separators, backslashes, control bytes,
//! escapes) holds there too, and it is forwarded byte for byte.

use compact_str::CompactString;
use thiserror::Error;

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 8192;
/// Longest accepted path segment (raw, before decoding), in bytes.
pub const MAX_SEGMENT_LEN: usize = 1024;

/// A request path that passed [`normalize_path`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalPath {
    raw: String,
    /// Inline up to 24 bytes, which nearly every API path segment is: the usual path of
    /// six segments was seven allocations.
    segments: Vec<CompactString>,
    /// Where the backend's path of a proxy request starts in `raw`.
    backend_at: Option<usize>,
}

impl CanonicalPath {
    /// The path exactly as the client sent it; this is what gets forwarded.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Percent-decoded segments (empty for `/`), as the API server splits them:
    /// the ones a decision reads, so for a proxy request those up to `proxy` (the
    /// legacy form: up to the name), not the backend's path.
    pub fn segments(&self) -> &[CompactString] {
        &self.segments
    }

    /// The backend's path of a proxy request, raw: what follows
    /// `.../<pods|services|nodes>/<name>/proxy` (`""`, `/`, `/a/`, `//a`, ...).
    /// `None` for any other request.
    pub fn backend_path(&self) -> Option<&str> {
        self.backend_at.map(|at| &self.raw[at..])
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
    /// `//` somewhere, or a trailing `/` on anything but the root (a proxy
    /// request's backend path may have both).
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
    // Room for the usual API path (`api/v1/namespaces/<ns>/pods/<name>/log` is 7) without
    // growing.
    let mut segments = Vec::with_capacity(8);
    let mut backend_at = None;
    if !rest.is_empty() {
        // Byte offset in `raw` of the segment being read.
        let mut at = 1;
        for seg in rest.split('/') {
            if backend_at.is_none() {
                segments.push(decode_segment(seg)?);
                if is_proxy_prefix(&segments) {
                    backend_at = Some(at + seg.len());
                }
            } else if !seg.is_empty() {
                decode_segment(seg)?;
            }
            at += seg.len() + 1;
        }
    }
    Ok(CanonicalPath {
        raw: raw.to_owned(),
        segments,
        backend_at,
    })
}

/// Resources whose `proxy` subresource reaches a backend.
const PROXIED: [&str; 3] = ["pods", "services", "nodes"];

/// Whether `s` is, read as RequestInfo reads it, a whole proxy target:
/// `api/<v>/[namespaces/<ns>/]<resource>/<name>/proxy` or the legacy
/// `api/<v>/proxy/[namespaces/<ns>/]<resource>/<name>`. Asked after every
/// segment, so the first such prefix ends the part a decision reads.
fn is_proxy_prefix(s: &[CompactString]) -> bool {
    let [api, _version, rest @ ..] = s else {
        return false;
    };
    if api != "api" {
        return false;
    }
    let (legacy, rest) = match rest {
        [verb, rest @ ..] if verb == "proxy" => (true, rest),
        _ => (false, rest),
    };
    // RequestInfo re-roots at the resource after `namespaces/<ns>`, except for
    // the namespace's own subresources.
    let rest = match rest {
        [namespaces, _ns, r @ ..]
            if namespaces == "namespaces"
                && r.first().is_some_and(|s| s != "status" && s != "finalize") =>
        {
            r
        }
        _ => rest,
    };
    match (legacy, rest) {
        (true, [resource, _name]) => PROXIED.contains(&resource.as_str()),
        (false, [resource, _name, sub]) => PROXIED.contains(&resource.as_str()) && sub == "proxy",
        _ => false,
    }
}

fn decode_segment(seg: &str) -> Result<CompactString, PathError> {
    if seg.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if seg.len() > MAX_SEGMENT_LEN {
        return Err(PathError::SegmentTooLong);
    }
    let bytes = seg.as_bytes();
    // Almost every segment is plain: no escape, nothing refused. It decodes to itself, so
    // only the dot segments are left to refuse. One pass without early exit, which the
    // compiler can vectorise.
    if bytes.iter().fold(true, |plain, &b| plain & is_path_char(b)) {
        if seg == "." || seg == ".." {
            return Err(PathError::DotSegment);
        }
        return Ok(CompactString::new(seg));
    }
    decode_escaped(bytes).map(CompactString::from)
}

/// Decodes and checks a segment byte by byte: the general case, and what the plain case
/// must agree with.
fn decode_escaped(bytes: &[u8]) -> Result<String, PathError> {
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

    proptest::proptest! {
        /// The plain-segment shortcut answers as the byte-by-byte decoder does.
        #[test]
        fn the_plain_shortcut_agrees_with_the_decoder(seg in "[a-zA-Z0-9._~:@!$&'()*+,;=%/?#\\\\ \"{}<>`\x00-\x1f\x7f-]{1,12}") {
            proptest::prop_assert_eq!(
                decode_segment(&seg),
                decode_escaped(seg.as_bytes()).map(CompactString::from)
            );
        }
    }

    fn segs(p: &str) -> Vec<String> {
        let segments = normalize_path(p).unwrap().segments().to_vec();
        segments.into_iter().map(String::from).collect()
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

    const SVC: &str = "/api/v1/namespaces/dev/services/web:80/proxy";

    #[test]
    fn a_proxy_requests_backend_path_is_set_aside_and_may_have_empty_segments() {
        let svc = [
            "api",
            "v1",
            "namespaces",
            "dev",
            "services",
            "web:80",
            "proxy",
        ];
        for (rest, backend) in [
            ("", ""),
            ("/", "/"),
            ("//a", "//a"),
            ("/a/", "/a/"),
            ("/static/app.js", "/static/app.js"),
            ("/a//b//", "/a//b//"),
            ("/a%20b/", "/a%20b/"),
        ] {
            let raw = format!("{SVC}{rest}");
            let p = normalize_path(&raw).unwrap();
            assert_eq!(p.as_str(), raw);
            assert_eq!(p.segments(), svc, "{raw}");
            assert_eq!(p.backend_path(), Some(backend), "{raw}");
            assert_eq!(normalize_path(p.as_str()).unwrap(), p);
        }
        for (raw, backend) in [
            ("/api/v1/namespaces/dev/pods/x/proxy/", "/"),
            ("/api/v1/namespaces/dev/pods/x:8080/proxy/a//", "/a//"),
            ("/api/v1/nodes/n1:10250/proxy/", "/"),
            ("/api/v1/nodes/n1/proxy", ""),
            // Legacy: the backend's path follows the name.
            ("/api/v1/proxy/namespaces/dev/services/web/", "/"),
            ("/api/v1/proxy/nodes/n1//a", "//a"),
        ] {
            let p = normalize_path(raw).unwrap();
            assert_eq!(p.backend_path(), Some(backend), "{raw}");
            assert!(!p.segments().iter().any(|s| s.is_empty()), "{raw}");
        }
        assert_eq!(normalize_path("/api/v1/pods").unwrap().backend_path(), None);
    }

    #[test]
    fn only_a_proxy_target_may_end_in_a_slash() {
        for raw in [
            "/api/v1/namespaces/dev/configmaps/x/proxy/",
            "/apis/g/v1/namespaces/dev/pods/x/proxy/",
            "/api/v1/namespaces/dev/pods/x/log/",
            "/api/v1/namespaces/dev/pods/x/exec/",
            "/api/v1/namespaces/dev/services//proxy/",
            "/api/v1/namespaces//services/web/proxy/",
            "/api/v1/namespaces/dev/services/web/proxy2/",
            "/api/v1/watch/namespaces/dev/pods/x/proxy/",
            "/api/v1/namespaces/dev/status/x/proxy/",
            "/api/v1/proxy/namespaces/dev/",
            "/api//proxy/nodes/n/",
            "/api/v1/services/",
        ] {
            assert_eq!(normalize_path(raw), Err(PathError::EmptySegment), "{raw}");
        }
    }

    #[test]
    fn a_backend_path_obeys_every_other_rule() {
        use PathError::*;
        for (rest, want) in [
            ("/../secrets", DotSegment),
            ("/%2e%2e/", DotSegment),
            ("/./", DotSegment),
            ("//..", DotSegment),
            ("/a/%2E", DotSegment),
            ("/a%2Fb", EncodedSlash),
            ("/a%5cb", Backslash),
            ("/a\\b", Backslash),
            ("/%00", ControlCharacter),
            ("/a\tb", ControlCharacter),
            ("/a%zz", MalformedEscape),
            ("/%41", EncodedUnreserved),
            ("/%ff", InvalidUtf8),
            ("/a?b", QueryOrFragment),
            ("/a b", InvalidCharacter),
        ] {
            let raw = format!("{SVC}{rest}");
            assert_eq!(normalize_path(&raw), Err(want), "{raw:?}");
        }
        let long = format!("{SVC}//{}", "a".repeat(MAX_SEGMENT_LEN + 1));
        assert_eq!(normalize_path(&long), Err(SegmentTooLong));
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
