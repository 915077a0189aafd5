//! Bodies of the cargo-fuzz targets in `fuzz/`, kept in the crate so a plain
//! stable `#[test]` can run them too. Each panics when an invariant breaks.

use std::sync::OnceLock;

use crate::{Policy, RequestAttributes, Subject, normalize_path, resolve};

const SAMPLE_POLICY: &str = include_str!("../../examples/policy.toml");

fn sample_policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        Policy::from_toml("examples/policy.toml", SAMPLE_POLICY)
            .expect("example policy loads")
            .policy
    })
}

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "LIST",
];

/// `resolve_path` target: treat the bytes as `path[?query]`, normalise,
/// resolve and decide, checking invariants on the way. Returns whether the
/// path was accepted (so tests can check their inputs reach that far).
pub fn resolve_path(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let canonical = match normalize_path(path) {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return false;
        }
    };
    assert_eq!(canonical.as_str(), path);
    assert_eq!(normalize_path(canonical.as_str()).as_ref(), Ok(&canonical));
    for seg in canonical.segments() {
        assert!(
            !seg.is_empty() && seg != "." && seg != "..",
            "bad segment {seg:?}"
        );
        assert!(!seg.contains(['/', '\\']), "separator in segment {seg:?}");
        assert!(
            !seg.chars().any(char::is_control),
            "control in segment {seg:?}"
        );
    }
    let lower = path.to_ascii_lowercase();
    assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%2e"));
    // Empty segments only in a proxy request's backend path; the part decided on
    // has none, and the backend path is the raw tail, forwarded as sent.
    let decided = match canonical.backend_path() {
        Some(backend) => {
            assert!(path.ends_with(backend));
            &path[..path.len() - backend.len()]
        }
        None => path,
    };
    assert!(!decided.contains("//") && (decided == "/" || !decided.ends_with('/')));
    for seg in path.split('/') {
        assert!(seg != "." && seg != "..", "dot segment in {path:?}");
    }

    let method = METHODS[data.len() % METHODS.len()];
    let attrs = resolve(method, &canonical, query);
    assert_eq!(attrs.path(), path);
    let _ = attrs.to_string();
    let _ = attrs.is_long_running();
    if let RequestAttributes::Resource(r) = &attrs {
        assert!(r.api_prefix == "api" || r.api_prefix == "apis");
        if ["exec", "attach", "portforward"].contains(&r.subresource.as_str()) {
            assert_eq!(r.verb, "create");
        }
    }
    // The backend path is never part of the decision: the request without it
    // resolves to the same attributes.
    if canonical.backend_path().is_some() {
        let bare = normalize_path(decided).expect("the decided part is canonical alone");
        assert_eq!(bare.backend_path(), Some(""));
        let mut without = resolve(method, &bare, query);
        if let (RequestAttributes::Resource(w), RequestAttributes::Resource(r)) =
            (&mut without, &attrs)
        {
            w.path.clone_from(&r.path);
        }
        assert_eq!(without, attrs);
    }
    for subject in [
        Subject::new("alice", ["devs"]),
        Subject::new("bob", ["guests"]),
        Subject::new("system:anonymous", ["system:unauthenticated"]),
    ] {
        let d = sample_policy().decide(&subject, &attrs);
        assert_eq!(d.allowed, d.forward_as.is_some());
        assert!(d.allowed <= d.rule.is_some());
        if !subject.is_authenticated() {
            assert!(!d.allowed, "anonymous allowed: {attrs}");
        }
    }
    true
}

/// `parse_policy` target: load arbitrary text as a policy; errors must be
/// located inside the text, and a loaded policy must decide without panicking.
/// Returns whether the policy loaded.
pub fn parse_policy(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    match Policy::from_toml("fuzz.toml", text) {
        Err(e) => {
            let lines = text.split('\n').count();
            if let Some(line) = e.line {
                assert!(
                    line >= 1 && line as usize <= lines,
                    "line {line} of {lines}"
                );
            }
            assert!(e.column.is_none_or(|c| c >= 1));
            assert!(e.to_string().starts_with("fuzz.toml"));
            false
        }
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = w.to_string();
            }
            let subject = Subject::new("alice", ["devs"]);
            for (m, p, q) in [
                ("GET", "/api/v1/namespaces/dev/pods", None),
                ("GET", "/api/v1/namespaces/dev/pods", Some("watch=1")),
                ("POST", "/api/v1/namespaces/dev/pods/x/exec", None),
                ("GET", "/version", None),
                ("DELETE", "/apis/apps/v1/deployments", None),
            ] {
                let attrs = resolve(m, &normalize_path(p).expect("canonical"), q);
                let d = loaded.policy.decide(&subject, &attrs);
                assert_eq!(d.allowed, d.forward_as.is_some());
                let _ = d.reason();
            }
            true
        }
    }
}
