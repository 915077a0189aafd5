//! The few query parameters that change authorisation, parsed the way the
//! API server (Go `net/url` + apimachinery conversions) parses them.
//!
//! Fidelity matters more than tidiness here: if we read `watch` differently
//! from the API server, a policy that allows `list` but not `watch` could be
//! bypassed. Hence Go's quirks are kept: first value wins, `+` is a space, a
//! pair with a bad escape or any `;` is dropped, keys are case-sensitive.

use std::borrow::Cow;

/// First values of the parameters the resolver cares about.
#[derive(Debug, Default)]
pub(crate) struct QueryParams {
    pub(crate) watch: Option<String>,
    pub(crate) follow: Option<String>,
    pub(crate) field_selector: Option<String>,
    pub(crate) limit: Option<String>,
    pub(crate) timeout_seconds: Option<String>,
}

impl QueryParams {
    /// Parses a raw query string (without the leading `?`).
    pub(crate) fn parse(query: &str) -> QueryParams {
        let mut out = QueryParams::default();
        for pair in query.split('&') {
            // Go (since 1.17) rejects the whole pair when it contains `;`.
            if pair.is_empty() || pair.contains(';') {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(key) = unescape(k) else { continue };
            let slot = match key.as_ref() {
                "watch" => &mut out.watch,
                "follow" => &mut out.follow,
                "fieldSelector" => &mut out.field_selector,
                "limit" => &mut out.limit,
                "timeoutSeconds" => &mut out.timeout_seconds,
                _ => continue,
            };
            let Some(value) = unescape(v) else { continue };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        out
    }
}

/// Go's `url.QueryUnescape`; Go strings may hold invalid UTF-8, we go lossy
/// (U+FFFD can never equal any value we compare against, as in Go).
fn unescape(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains(['%', '+']) {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = b.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let lo = b.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return None;
                };
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

/// apimachinery `Convert_Slice_string_To_bool` on the first value: only
/// absence, "0" and a case-folded "false" are false (Go's `EqualFold`, which
/// also folds U+017F LATIN SMALL LETTER LONG S to `s`).
pub(crate) fn query_bool(v: Option<&str>) -> bool {
    match v {
        None => false,
        Some(v) => !(v == "0" || go_equal_fold_false(v)),
    }
}

fn go_equal_fold_false(v: &str) -> bool {
    let mut it = v.chars();
    for want in ['f', 'a', 'l', 's', 'e'] {
        match it.next() {
            Some(c) if c.eq_ignore_ascii_case(&want) => {}
            Some('\u{17f}') if want == 's' => {}
            _ => return false,
        }
    }
    it.next().is_none()
}

/// The bool rule requestinfo.go applies when ListOptions failed to decode:
/// `strings.ToLower(v)` must be exactly "false" or "0".
pub(crate) fn fallback_watch_bool(v: Option<&str>) -> bool {
    match v {
        None => false,
        Some(v) => {
            let l = v.to_lowercase();
            !(l == "false" || l == "0")
        }
    }
}

/// The largest `timeoutSeconds` accepted: the API server multiplies the value into a Go
/// `time.Duration` (nanoseconds in an `i64`), so anything larger would overflow there and
/// be read as some other, possibly negative, timeout.
pub const MAX_TIMEOUT_SECONDS: u64 = i64::MAX as u64 / 1_000_000_000;

/// Why a query parameter the gateway acts on was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `timeoutSeconds` is not a whole number of seconds in range.
    #[error("timeoutSeconds must be a whole number of seconds from 0 to {MAX_TIMEOUT_SECONDS}")]
    TimeoutSeconds,
}

/// The request's `timeoutSeconds`, read as the API server reads it (the first value, Go's
/// unescaping) and bounded: `Ok(None)` when absent, an error when it is not an integer the
/// API server would accept or lies outside `0..=MAX_TIMEOUT_SECONDS`.
pub fn timeout_seconds(query: Option<&str>) -> Result<Option<u64>, QueryError> {
    let Some(raw) = query.and_then(|q| QueryParams::parse(q).timeout_seconds) else {
        return Ok(None);
    };
    match raw.parse::<i64>() {
        Ok(secs) if (0..=MAX_TIMEOUT_SECONDS as i64).contains(&secs) => Ok(Some(secs as u64)),
        _ => Err(QueryError::TimeoutSeconds),
    }
}

/// `strconv.ParseInt(s, 10, 64)` succeeds.
pub(crate) fn go_parse_int_ok(s: &str) -> bool {
    s.parse::<i64>().is_ok()
}

/// Parses a field selector like `fields.ParseSelector` and returns what
/// `RequiresExactMatch("metadata.name")` would: `Err` if the selector is
/// malformed, `Ok(None)` if it has no `metadata.name` equality term.
pub(crate) fn field_selector_name(selector: &str) -> Result<Option<String>, ()> {
    let mut terms = split_terms(selector);
    // fields.parseSelector sorts the raw terms; the first metadata.name
    // equality in that order wins.
    terms.sort_unstable();
    let mut found = None;
    for term in terms {
        if term.is_empty() {
            continue;
        }
        let (lhs, op, rhs) = split_term(term).ok_or(())?;
        let value = unescape_value(rhs)?;
        if found.is_none() && op != "!=" && lhs == "metadata.name" {
            found = Some(value);
        }
    }
    Ok(found)
}

fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if let Some(rhs) = rest.strip_prefix(op) {
                return Some((&term[..i], op, rhs));
            }
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, ()> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(());
            }
            out.push(c);
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => return Err(()),
            _ => out.push(c),
        }
    }
    if in_slash { Err(()) } else { Ok(out) }
}

/// apimachinery `path.IsValidPathSegmentName`.
pub(crate) fn is_valid_path_segment_name(name: &str) -> bool {
    name != "." && name != ".." && !name.contains(['/', '%'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_seconds_is_bounded_before_anyone_adds_to_it() {
        assert_eq!(timeout_seconds(None), Ok(None));
        assert_eq!(timeout_seconds(Some("watch=1")), Ok(None));
        assert_eq!(timeout_seconds(Some("timeoutSeconds=300")), Ok(Some(300)));
        assert_eq!(timeout_seconds(Some("timeoutSeconds=0")), Ok(Some(0)));
        assert_eq!(timeout_seconds(Some("timeoutSeconds=%2B7")), Ok(Some(7)));
        // The first value wins, as in the API server.
        assert_eq!(
            timeout_seconds(Some("timeoutSeconds=5&timeoutSeconds=x")),
            Ok(Some(5))
        );
        let max = MAX_TIMEOUT_SECONDS.to_string();
        assert_eq!(
            timeout_seconds(Some(&format!("timeoutSeconds={max}"))),
            Ok(Some(MAX_TIMEOUT_SECONDS))
        );
        for bad in [
            "18446744073709551615",
            "9223372036854775807",
            "9223372037",
            "-1",
            "1.5",
            "",
            "ten",
        ] {
            assert_eq!(
                timeout_seconds(Some(&format!("timeoutSeconds={bad}"))),
                Err(QueryError::TimeoutSeconds),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn go_query_quirks() {
        let q = QueryParams::parse("watch=1&watch=0");
        assert_eq!(q.watch.as_deref(), Some("1"));
        let q = QueryParams::parse("%77atch=true");
        assert_eq!(q.watch.as_deref(), Some("true"));
        let q = QueryParams::parse("Watch=true");
        assert_eq!(q.watch, None);
        let q = QueryParams::parse("watch=%zz&watch=false");
        assert_eq!(q.watch.as_deref(), Some("false"));
        let q = QueryParams::parse("watch=true;x&watch=0");
        assert_eq!(q.watch.as_deref(), Some("0"));
        let q = QueryParams::parse("fieldSelector=metadata.name%3Dfoo+bar");
        assert_eq!(q.field_selector.as_deref(), Some("metadata.name=foo bar"));
        let q = QueryParams::parse("watch");
        assert_eq!(q.watch.as_deref(), Some(""));
    }

    #[test]
    fn bools() {
        for (v, want) in [
            (None, false),
            (Some("0"), false),
            (Some("false"), false),
            (Some("FaLsE"), false),
            (Some("fal\u{17f}e"), false),
            (Some(""), true),
            (Some("1"), true),
            (Some("true"), true),
            (Some("no"), true),
            (Some("false "), true),
        ] {
            assert_eq!(query_bool(v), want, "{v:?}");
        }
        assert!(fallback_watch_bool(Some("fal\u{17f}e")));
        assert!(!fallback_watch_bool(Some("FALSE")));
    }

    #[test]
    fn field_selectors() {
        let ok = |s: &str| field_selector_name(s).unwrap();
        assert_eq!(ok("metadata.name=foo"), Some("foo".into()));
        assert_eq!(ok("metadata.name==foo"), Some("foo".into()));
        assert_eq!(ok("metadata.name!=foo"), None);
        assert_eq!(ok("foo=bar"), None);
        assert_eq!(ok(""), None);
        assert_eq!(ok("a=b,metadata.name=x"), Some("x".into()));
        assert_eq!(ok("metadata.name==b,metadata.name=a"), Some("b".into()));
        assert_eq!(ok("metadata.name=a\\,b"), Some("a,b".into()));
        assert!(field_selector_name("metadata.name=name1,foo").is_err());
        assert!(field_selector_name("metadata.name=a=b").is_err());
        assert!(field_selector_name("metadata.name=a\\x").is_err());
        assert!(field_selector_name("metadata.name=a\\").is_err());
    }
}
