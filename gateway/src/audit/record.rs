//! From a request's facts to its audit record.
//!
//! An ordinary request gets one `ResponseComplete` record when its response starts. A
//! long-running one (watch, log follow, an upgraded exec/attach/port-forward) gets a
//! `ResponseStarted` record then, and a `ResponseComplete` record when its stream or
//! spliced connection ends, written by its response guard (`pipeline::response`).
//!
//! Every record is built by [`event`], which bounds what the client controls: the request
//! URI, the `User-Agent`, the verb and the object reference are cut at [`MAX_REQUEST_URI`],
//! [`MAX_USER_AGENT`] and [`MAX_ATTRIBUTE`] bytes (on a character boundary) and end in
//! [`TRUNCATED_SUFFIX`], and the record names the fields it cut in its
//! [`TRUNCATED_ANNOTATION`]. A record without an identity is then at most
//! [`MAX_RECORD_WITHOUT_IDENTITY`] bytes, whatever the client sent.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kubegate_policy::{ForwardIdentity, RequestAttributes};

use super::event::{decimal, put_digits};
use crate::audit::{Annotations, AuditId, Event, ObjectRef, Stage};
use crate::authn::Identity;

/// Longest `userAgent` kept, in bytes: the API server's own bound for its audit events
/// (k8s.io/apiserver `maxUserAgentLength`). Real clients send well under 200.
pub const MAX_USER_AGENT: usize = 1024;
/// Longest `requestURI` kept, in bytes. A request line may be 64 KiB or more; every
/// real Kubernetes path and query (a label selector, a long field selector) fits in this.
pub const MAX_REQUEST_URI: usize = 4096;
/// Longest verb and object reference field (resource, namespace, name, group, version,
/// subresource) kept, in bytes: twice the longest Kubernetes object name (253), so only a
/// path no API server would accept is cut.
pub const MAX_ATTRIBUTE: usize = 512;
/// What a cut field ends in, as the API server marks a cut `userAgent`.
pub const TRUNCATED_SUFFIX: &str = "...TRUNCATED";
/// Annotation listing the fields that were cut, e.g. `"requestURI,userAgent"`.
pub const TRUNCATED_ANNOTATION: &str = "kubegate.io/truncated";
/// The longest line (JSON and newline) a record without an authenticated identity can
/// take: every bounded field at its bound, each byte escaped to two (`"`), plus the fixed
/// fields, or the annotations of its summary. The unit tests build both and check them.
pub const MAX_RECORD_WITHOUT_IDENTITY: usize = 20 * 1024;

/// `value`, or its first `max` bytes (fewer, to end on a character boundary) followed by
/// [`TRUNCATED_SUFFIX`]; `field` is noted in `cut` when it was cut.
fn bounded<'a>(
    value: &'a str,
    max: usize,
    field: &'static str,
    cut: &mut Vec<&'static str>,
) -> Cow<'a, str> {
    if value.len() <= max {
        return Cow::Borrowed(value);
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    cut.push(field);
    Cow::Owned(format!("{}{TRUNCATED_SUFFIX}", &value[..end]))
}

/// `gateway_time` as the `kubegate.io/latency` annotation writes it: milliseconds with
/// three decimals, from whole microseconds rounded (`0.412ms`). Written digit by digit: an
/// f64 with a precision took a thousand instructions a request to format, `format!` of
/// two integers eight hundred.
pub fn latency(gateway_time: Duration) -> String {
    let micros = (gateway_time.as_nanos() + 500) / 1000;
    let (whole, fraction) = (micros / 1000, (micros % 1000) as u64);
    let mut text = String::with_capacity(28);
    match u64::try_from(whole) {
        Ok(whole) => text.extend(decimal(whole, &mut [0; 20]).iter().map(|&d| char::from(d))),
        // Past half a billion years, which no clock reading gives: the formatter.
        Err(_) => text.push_str(&whole.to_string()),
    }
    let mut thousandths = [0u8; 3];
    put_digits(&mut thousandths, fraction);
    text.push('.');
    text.extend(thousandths.map(char::from));
    text.push_str("ms");
    text
}

/// The longest request path a log line carries: logs are read by people and grepped, and
/// a client must not be able to make each line of them tens of kilobytes.
pub const MAX_LOGGED_PATH: usize = 512;

/// `path` as a log line carries it: cut at [`MAX_LOGGED_PATH`] with the usual marker.
pub fn logged_path(path: &str) -> Cow<'_, str> {
    bounded(path, MAX_LOGGED_PATH, "path", &mut Vec::new())
}

/// Everything the audit record of one request needs, filled in phase by phase.
pub struct Facts {
    /// The request's audit ID.
    pub audit_id: AuditId,
    /// When the request arrived.
    pub received: SystemTime,
    /// Path and query as received.
    pub request_uri: String,
    /// The client's address (`None` only for a request without connection info).
    pub source_ip: Option<std::net::IpAddr>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
}

/// Builds the audit event for a request, with every client-controlled field bounded (see
/// the module doc). It borrows its text from `facts` and `attributes`: within the bounds
/// (every real request) nothing is copied.
#[allow(clippy::too_many_arguments)]
pub fn event<'a>(
    facts: &'a Facts,
    stage: Stage,
    attributes: Option<&'a RequestAttributes>,
    identity: Option<&Arc<Identity>>,
    forwarded: Option<&Arc<ForwardIdentity>>,
    code: u16,
    mut annotations: Annotations<'a>,
) -> Event<'a> {
    let mut cut = Vec::new();
    let mut field =
        |value: &'a str, field: &'static str| bounded(value, MAX_ATTRIBUTE, field, &mut cut);
    let (verb, object_ref) = match attributes {
        Some(RequestAttributes::Resource(r)) => (
            field(&r.verb, "verb"),
            Some(ObjectRef {
                resource: field(&r.resource, "objectRef.resource"),
                namespace: field(&r.namespace, "objectRef.namespace"),
                name: field(&r.name, "objectRef.name"),
                api_group: field(&r.api_group, "objectRef.apiGroup"),
                api_version: field(&r.api_version, "objectRef.apiVersion"),
                subresource: field(&r.subresource, "objectRef.subresource"),
            }),
        ),
        Some(RequestAttributes::NonResource(n)) => (field(&n.verb, "verb"), None),
        None => (Cow::Borrowed(""), None),
    };
    let request_uri = bounded(&facts.request_uri, MAX_REQUEST_URI, "requestURI", &mut cut);
    let user_agent = facts
        .user_agent
        .as_deref()
        .map(|ua| bounded(ua, MAX_USER_AGENT, "userAgent", &mut cut));
    if !cut.is_empty() {
        annotations.insert(TRUNCATED_ANNOTATION.into(), cut.join(",").into());
    }
    Event {
        audit_id: facts.audit_id,
        stage,
        request_uri,
        verb,
        user: identity.cloned(),
        impersonated_user: forwarded.cloned(),
        source_ip: facts.source_ip,
        user_agent,
        object_ref,
        response_code: code,
        request_received: facts.received,
        stage_time: SystemTime::now(),
        annotations,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use kubegate_policy::{NonResourceAttributes, ResourceAttributes};

    use super::*;

    fn facts(uri: &str, ua: Option<&str>) -> Facts {
        Facts {
            audit_id: AuditId::new(),
            received: SystemTime::now(),
            request_uri: uri.into(),
            source_ip: Some("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()),
            user_agent: ua.map(str::to_string),
        }
    }

    fn refusal<'a>(facts: &'a Facts, attributes: Option<&'a RequestAttributes>) -> Event<'a> {
        let annotations = Annotations::from([
            ("kubegate.io/decision".into(), "none".into()),
            ("kubegate.io/latency".into(), "123456.789ms".into()),
        ]);
        event(
            facts,
            Stage::ResponseComplete,
            attributes,
            None,
            None,
            401,
            annotations,
        )
    }

    fn cut(value: &str, max: usize) -> (String, bool) {
        let mut fields = Vec::new();
        let out = bounded(value, max, "f", &mut fields).into_owned();
        (out, !fields.is_empty())
    }

    #[test]
    fn the_latency_annotation_has_three_decimals_of_milliseconds() {
        let text = |nanos: u64| latency(Duration::from_nanos(nanos));
        assert_eq!(text(0), "0.000ms");
        assert_eq!(text(499), "0.000ms");
        assert_eq!(text(500), "0.001ms");
        assert_eq!(text(412_345), "0.412ms");
        assert_eq!(text(1_000_000), "1.000ms");
        assert_eq!(text(123_456_789_499), "123456.789ms");
        let by_formatter = |d: Duration| {
            let micros = (d.as_nanos() + 500) / 1000;
            format!("{}.{:03}ms", micros / 1000, micros % 1000)
        };
        // Past u64 milliseconds (the formatter's branch), and the last value before it.
        for d in [
            Duration::MAX,
            Duration::from_millis(u64::MAX),
            Duration::from_micros(u64::MAX),
        ] {
            assert_eq!(latency(d), by_formatter(d));
        }
        for nanos in (0..5_000_000u64).step_by(7_919) {
            let d = Duration::from_nanos(nanos);
            assert_eq!(latency(d), by_formatter(d));
        }
    }

    #[test]
    fn log_lines_carry_a_bounded_path() {
        let short = "/api/v1/namespaces/dev/pods";
        assert_eq!(logged_path(short), short);
        let long = format!("/api/v1/{}", "é".repeat(10_000));
        let logged = logged_path(&long);
        assert!(logged.len() <= MAX_LOGGED_PATH + TRUNCATED_SUFFIX.len());
        assert!(logged.ends_with(TRUNCATED_SUFFIX));
        assert!(long.starts_with(logged.trim_end_matches(TRUNCATED_SUFFIX)));
    }

    #[test]
    fn fields_are_kept_up_to_their_bound_and_cut_past_it() {
        let at = "a".repeat(MAX_USER_AGENT);
        assert_eq!(cut(&at, MAX_USER_AGENT), (at.clone(), false));
        let over = format!("{at}b");
        assert_eq!(
            cut(&over, MAX_USER_AGENT),
            (format!("{at}...TRUNCATED"), true)
        );
        assert_eq!(cut("", 4), (String::new(), false));
        // The API server's suffix, after exactly the bound's bytes.
        assert_eq!(TRUNCATED_SUFFIX, "...TRUNCATED");
        assert_eq!(cut("abcdef", 4), ("abcd...TRUNCATED".into(), true));
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // "é" is two bytes, "€" three, "😀" four: the cut backs off to the character start.
        assert_eq!(cut("abcé", 4), ("abc...TRUNCATED".into(), true));
        assert_eq!(cut("abcé", 5), ("abcé".into(), false));
        assert_eq!(cut("ab€x", 3), ("ab...TRUNCATED".into(), true));
        assert_eq!(cut("ab€x", 4), ("ab...TRUNCATED".into(), true));
        assert_eq!(cut("ab€x", 5), ("ab€...TRUNCATED".into(), true));
        assert_eq!(cut("😀😀", 7), ("😀...TRUNCATED".into(), true));
        assert_eq!(cut("😀", 3), ("...TRUNCATED".into(), true));
        for max in 0..40 {
            let (out, was_cut) = cut("é€😀aé€😀a", max);
            assert!(out.len() <= max + TRUNCATED_SUFFIX.len(), "{max}: {out}");
            assert!(was_cut == ("é€😀aé€😀a".len() > max));
        }
    }

    #[test]
    fn every_record_is_bounded_and_says_what_was_cut() {
        let uri = format!(
            "/api/v1/namespaces/dev/pods?labelSelector={}",
            "x".repeat(70_000)
        );
        let ua = "u".repeat(400_000);
        let f = facts(&uri, Some(&ua));
        let e = refusal(&f, None);
        assert_eq!(
            e.request_uri.len(),
            MAX_REQUEST_URI + TRUNCATED_SUFFIX.len()
        );
        assert!(
            e.request_uri
                .starts_with("/api/v1/namespaces/dev/pods?labelSelector=xx")
        );
        assert!(e.request_uri.ends_with("x...TRUNCATED"));
        assert_eq!(
            e.user_agent.as_deref(),
            Some(format!("{}...TRUNCATED", &ua[..MAX_USER_AGENT]).as_str())
        );
        assert_eq!(e.annotations[TRUNCATED_ANNOTATION], "requestURI,userAgent");
        assert_eq!(e.annotations["kubegate.io/decision"], "none", "kept");

        // A request within the bounds is recorded as sent, and not marked.
        let f = facts(
            "/api/v1/namespaces/dev/pods?limit=5",
            Some("kubectl/v1.34.0"),
        );
        let e = refusal(&f, None);
        assert_eq!(e.request_uri, "/api/v1/namespaces/dev/pods?limit=5");
        assert_eq!(e.user_agent.as_deref(), Some("kubectl/v1.34.0"));
        assert!(!e.annotations.contains_key(TRUNCATED_ANNOTATION));
        let f = facts(&"/".repeat(MAX_REQUEST_URI), None);
        let e = refusal(&f, None);
        assert_eq!(e.request_uri.len(), MAX_REQUEST_URI);
        assert_eq!(e.user_agent, None);
        assert!(!e.annotations.contains_key(TRUNCATED_ANNOTATION));
    }

    #[test]
    fn attributes_from_a_long_path_are_cut_too() {
        let long = "n".repeat(MAX_ATTRIBUTE + 1);
        let resource = RequestAttributes::Resource(ResourceAttributes {
            verb: "get".into(),
            api_version: "v1".into(),
            namespace: "dev".into(),
            resource: "pods".into(),
            name: long.clone(),
            ..ResourceAttributes::default()
        });
        let f = facts("/api", None);
        let e = refusal(&f, Some(&resource));
        let object = e.object_ref.expect("object ref");
        assert_eq!(
            object.name,
            format!("{}...TRUNCATED", &long[..MAX_ATTRIBUTE])
        );
        assert_eq!(object.namespace, "dev");
        assert_eq!(e.verb, "get");
        assert_eq!(e.annotations[TRUNCATED_ANNOTATION], "objectRef.name");
        let odd = RequestAttributes::NonResource(NonResourceAttributes {
            verb: long.clone(),
            path: "/x".into(),
        });
        let f = facts("/x", None);
        let e = refusal(&f, Some(&odd));
        assert_eq!(e.verb.len(), MAX_ATTRIBUTE + TRUNCATED_SUFFIX.len());
        assert_eq!(e.annotations[TRUNCATED_ANNOTATION], "verb");
    }

    /// The record of a refusal whose every client-controlled field is at its bound and made
    /// of the character JSON escapes to two bytes.
    pub(crate) fn largest_refusal() -> Event<'static> {
        let huge = "\"".repeat(100_000);
        let attributes = RequestAttributes::Resource(ResourceAttributes {
            verb: huge.clone(),
            api_group: huge.clone(),
            api_version: huge.clone(),
            namespace: huge.clone(),
            resource: huge.clone(),
            subresource: huge.clone(),
            name: huge.clone(),
            ..ResourceAttributes::default()
        });
        refusal(&facts(&huge, Some(&huge)), Some(&attributes)).into_owned()
    }

    #[test]
    fn the_largest_record_without_an_identity_fits_its_documented_bound() {
        let e = largest_refusal();
        let mut line = serde_json::to_vec(&e).unwrap();
        line.push(b'\n');
        assert!(
            line.len() <= MAX_RECORD_WITHOUT_IDENTITY,
            "{} bytes",
            line.len()
        );
        // And the bound is not loose by much: the fields alone take most of it.
        assert!(
            line.len() > MAX_RECORD_WITHOUT_IDENTITY * 3 / 4,
            "{}",
            line.len()
        );
        assert_eq!(
            e.annotations[TRUNCATED_ANNOTATION],
            "verb,objectRef.resource,objectRef.namespace,objectRef.name,objectRef.apiGroup,\
             objectRef.apiVersion,objectRef.subresource,requestURI,userAgent"
        );
    }
}
