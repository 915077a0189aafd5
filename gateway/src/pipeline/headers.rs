//! Header hygiene between the client and the upstream.
//!
//! The order is the security property: first remove everything the client sent that
//! could carry a credential or an identity, or that belongs to the client's hop only;
//! then add the gateway's credential and the identity it vouches for. Nothing the client
//! sent can survive into an identity header.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use kubegate_policy::ForwardIdentity;
use smallvec::SmallVec;

use crate::authn::websocket;
use crate::error::GatewayError;
use crate::ip_text::IpText;

/// Headers that describe one hop of the connection, never the request (RFC 9110 §7.6.1),
/// plus the de-facto `proxy-connection` and `keep-alive`.
/// A `static`, not a `const`: a const array would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Header name prefixes that assert an identity to the API server: the impersonation
/// headers, and the request-header authentication headers a front proxy may be trusted
/// to send (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-*`).
const IDENTITY_PREFIXES: [&str; 2] = ["impersonate-", "x-remote-"];

/// `Audit-ID`: the request's audit ID, to the client and to the API server. Names the
/// gateway writes on every request are built from static text: a `&str` name is parsed
/// and copied into a new allocation at each insert.
pub const AUDIT_ID: HeaderName = HeaderName::from_static("audit-id");
const IMPERSONATE_USER: HeaderName = HeaderName::from_static("impersonate-user");
const IMPERSONATE_GROUP: HeaderName = HeaderName::from_static("impersonate-group");
const IMPERSONATE_UID: HeaderName = HeaderName::from_static("impersonate-uid");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers the gateway sets itself; a client's copy would be a lie or a spoof (a forged
/// `Audit-ID` would let a client tie its request to someone else's audit record).
static GATEWAY_OWNED: [HeaderName; 5] = [
    header::AUTHORIZATION,
    header::HOST,
    X_FORWARDED_FOR,
    HeaderName::from_static("forwarded"),
    AUDIT_ID,
];

/// Removes hop-by-hop headers, including every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, |_| false);
}

/// Removes every client header that could carry a credential or an identity, and every
/// hop-by-hop header.
pub fn sanitize_request(headers: &mut HeaderMap) {
    // `HeaderName`s are stored lower-case, so one comparison covers every spelling.
    remove_where(headers, |name| {
        GATEWAY_OWNED.contains(name)
            || IDENTITY_PREFIXES
                .iter()
                .any(|p| name.as_str().starts_with(p))
    });
    strip_bearer_protocols(headers);
}

/// Removes the hop-by-hop headers, those named in `Connection`, and those `also` picks.
///
/// One pass over the names present decides: a request carries a handful of headers and
/// usually two of those to remove, where a removal per listed name would hash and probe
/// the map fifteen times. The lists are short and live on the stack: two heap lists here
/// were 1k instructions of every response.
fn remove_where(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    let named: SmallVec<[&str; 4]> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let doomed: SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|name| {
            HOP_BY_HOP.contains(name)
                || also(name)
                || named.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()))
        })
        .cloned()
        .collect();
    // `named` borrows the map; it must go before the removals.
    drop(named);
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes the API server's WebSocket credential (`base64url.bearer.authorization.k8s.io.`
/// sub-protocols) from `Sec-WebSocket-Protocol`, on every request whether or not it was
/// read as the credential: the upstream must only ever see the gateway's. The other
/// sub-protocols go on in order, on one line; with none left the header goes.
fn strip_bearer_protocols(headers: &mut HeaderMap) {
    let values: Vec<HeaderValue> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .cloned()
        .collect();
    let entries = || {
        values
            .iter()
            .flat_map(|v| websocket::protocol_entries(v.as_bytes()))
    };
    if !entries().any(websocket::carries_bearer) {
        return;
    }
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    let kept: Vec<&[u8]> = entries()
        .filter(|e| !e.is_empty() && !websocket::carries_bearer(e))
        .collect();
    if kept.is_empty() {
        return;
    }
    // Pieces of valid header values joined by ", " are a valid header value; should that
    // ever fail, the header stays removed.
    if let Ok(value) = HeaderValue::from_bytes(&kept.join(&b", "[..])) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
}

/// Adds the gateway's credential, the impersonation headers and `X-Forwarded-For`.
/// Call only after [`sanitize_request`].
pub fn add_gateway_headers(
    headers: &mut HeaderMap,
    credential: Option<HeaderValue>,
    identity: &ForwardIdentity,
    peer: IpAddr,
) -> Result<(), GatewayError> {
    if let Some(mut credential) = credential {
        credential.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, credential);
    }
    headers.insert(IMPERSONATE_USER, identity_value(&identity.user)?);
    for group in &identity.groups {
        headers.append(IMPERSONATE_GROUP, identity_value(group)?);
    }
    if let Some(uid) = &identity.uid {
        headers.insert(IMPERSONATE_UID, identity_value(uid)?);
    }
    for (key, values) in &identity.extra {
        let name = HeaderName::from_bytes(extra_header_name(key).as_bytes())
            .map_err(|_| identity_error())?;
        for value in values {
            headers.append(name.clone(), identity_value(value)?);
        }
    }
    let forwarded_for = HeaderValue::from_str(IpText::new(peer).as_str());
    headers.insert(
        X_FORWARDED_FOR,
        forwarded_for.expect("an IP address is a header value"),
    );
    Ok(())
}

fn identity_error() -> GatewayError {
    GatewayError::Unauthenticated(crate::authn::AuthError::Claims(
        "the identity contains characters that cannot be sent in an HTTP header".into(),
    ))
}

fn identity_value(value: &str) -> Result<HeaderValue, GatewayError> {
    // Control characters (CR, LF, NUL) would be refused by `HeaderValue`, but an identity
    // with a leading or trailing space would be silently trimmed by the server: refuse it.
    if value.is_empty() || value.trim() != value {
        return Err(identity_error());
    }
    HeaderValue::from_str(value).map_err(|_| identity_error())
}

/// `Impersonate-Extra-<key>`: the API server percent-decodes the key, so anything outside
/// the HTTP token characters (and `%` itself) is percent-encoded, as client-go does.
pub fn extra_header_name(key: &str) -> String {
    let mut name = String::from("impersonate-extra-");
    for b in key.bytes() {
        let legal = b.is_ascii_alphanumeric() || b"-!#$&'*+.^_`|~".contains(&b);
        if legal {
            name.push(b.to_ascii_lowercase() as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn every_identity_and_credential_header_is_removed() {
        let mut h = map(&[
            ("Authorization", "Bearer a"),
            ("authorization", "Bearer b"),
            ("Impersonate-User", "admin"),
            ("impersonate-group", "system:masters"),
            ("IMPERSONATE-UID", "1"),
            ("Impersonate-Extra-Scopes", "all"),
            ("X-Remote-User", "admin"),
            ("x-remote-group", "system:masters"),
            ("Proxy-Authorization", "Basic x"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("Forwarded", "for=1.2.3.4"),
            ("Host", "evil"),
            ("Accept", "application/json"),
            ("User-Agent", "kubectl"),
        ]);
        sanitize_request(&mut h);
        // The order of different names carries no meaning (RFC 9110 §5.3), and removals
        // reorder the map.
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "user-agent"]);
    }

    fn protocols(h: &HeaderMap) -> Vec<&str> {
        h.get_all("sec-websocket-protocol")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn the_websocket_bearer_protocol_never_survives() {
        let bearer = "base64url.bearer.authorization.k8s.io.dG9rZW4";
        for lines in [
            vec![format!("v5.channel.k8s.io, {bearer}, v4.channel.k8s.io")],
            vec![
                format!("v5.channel.k8s.io,{bearer}"),
                "v4.channel.k8s.io".into(),
            ],
            vec![
                "v5.channel.k8s.io".into(),
                format!(" {bearer} "),
                format!("v4.channel.k8s.io ,{}", bearer.to_uppercase()),
            ],
        ] {
            let pairs: Vec<(&str, &str)> = lines
                .iter()
                .map(|l| ("Sec-WebSocket-Protocol", l.as_str()))
                .collect();
            let mut h = map(&pairs);
            sanitize_request(&mut h);
            let left = protocols(&h).join(",");
            assert!(!left.to_lowercase().contains("bearer"), "{lines:?}: {left}");
            assert!(left.starts_with("v5.channel.k8s.io"), "order kept: {left}");
        }
        // Go trims U+00A0 too, so the API server would read this entry as a token.
        let mut h = HeaderMap::new();
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_bytes(format!("v5.channel.k8s.io,\u{a0}{bearer}").as_bytes())
                .unwrap(),
        );
        sanitize_request(&mut h);
        assert_eq!(protocols(&h), vec!["v5.channel.k8s.io"]);
        let mut h = map(&[(
            "Sec-WebSocket-Protocol",
            "v5.channel.k8s.io, base64url.bearer.authorization.k8s.io.x, v4.channel.k8s.io",
        )]);
        sanitize_request(&mut h);
        assert_eq!(protocols(&h), vec!["v5.channel.k8s.io, v4.channel.k8s.io"]);
    }

    #[test]
    fn a_lone_bearer_protocol_takes_the_header_with_it() {
        let mut h = map(&[
            (
                "Sec-WebSocket-Protocol",
                "base64url.bearer.authorization.k8s.io.x",
            ),
            ("Sec-WebSocket-Protocol", " , "),
        ]);
        sanitize_request(&mut h);
        assert!(!h.contains_key("sec-websocket-protocol"));
    }

    #[test]
    fn protocols_without_a_bearer_entry_pass_as_sent() {
        let mut h = map(&[
            (
                "Sec-WebSocket-Protocol",
                "v5.channel.k8s.io,  v4.channel.k8s.io",
            ),
            ("Sec-WebSocket-Protocol", "channel.k8s.io"),
        ]);
        sanitize_request(&mut h);
        assert_eq!(
            protocols(&h),
            vec!["v5.channel.k8s.io,  v4.channel.k8s.io", "channel.k8s.io"]
        );
    }

    #[test]
    fn headers_named_in_connection_are_removed() {
        let mut h = map(&[
            ("Connection", "X-Custom, keep-alive"),
            ("Connection", "Impersonate-User"),
            ("X-Custom", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn more_names_than_the_stack_lists_hold_are_all_removed() {
        // Six names in `Connection` and eight headers to remove: past the four each list
        // keeps on the stack.
        let names = ["x-a", "x-b", "x-c", "x-d", "x-e", "x-f"];
        let mut pairs = vec![
            ("Connection", "x-a, x-b, x-c"),
            ("Connection", "x-d,x-e , x-f"),
        ];
        pairs.extend(names.iter().map(|n| (*n, "1")));
        pairs.extend([("Upgrade", "h2c"), ("Accept", "*/*")]);
        let mut h = map(&pairs);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn gateway_headers_are_added_after_sanitising() {
        let mut h = map(&[("Impersonate-User", "mallory")]);
        sanitize_request(&mut h);
        let id = ForwardIdentity {
            user: "alice".into(),
            groups: vec!["devs".into(), "ops".into()],
            uid: Some("42".into()),
            extra: [("scopes".to_string(), vec!["a".to_string(), "b".to_string()])].into(),
        };
        add_gateway_headers(
            &mut h,
            Some(HeaderValue::from_static("Bearer gw")),
            &id,
            "10.1.2.3".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(h["authorization"], "Bearer gw");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h.get_all("impersonate-user").iter().count(), 1);
        assert_eq!(h["impersonate-user"], "alice");
        let groups: Vec<_> = h.get_all("impersonate-group").iter().collect();
        assert_eq!(groups, vec!["devs", "ops"]);
        assert_eq!(h["impersonate-uid"], "42");
        assert_eq!(h.get_all("impersonate-extra-scopes").iter().count(), 2);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    }

    #[test]
    fn identity_values_with_control_or_padding_are_refused() {
        for bad in ["a\r\nb", " a", "a ", ""] {
            let id = ForwardIdentity {
                user: bad.into(),
                groups: vec![],
                uid: None,
                extra: Default::default(),
            };
            assert!(
                add_gateway_headers(&mut HeaderMap::new(), None, &id, [127, 0, 0, 1].into())
                    .is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn extra_keys_are_percent_encoded() {
        assert_eq!(extra_header_name("scopes"), "impersonate-extra-scopes");
        assert_eq!(
            extra_header_name("example.com/team"),
            "impersonate-extra-example.com%2Fteam"
        );
        assert_eq!(extra_header_name("a%b"), "impersonate-extra-a%25b");
        assert_eq!(extra_header_name("Dept"), "impersonate-extra-dept");
    }
}
