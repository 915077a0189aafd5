//! Request resolution: method + canonical path + query into the attributes
//! the API server's authorizer sees, following k8s.io/apiserver
//! `pkg/endpoints/request/requestinfo.go` (`RequestInfoFactory.NewRequestInfo`)
//! with prefixes `api` (groupless) and `apis`.
//!
//! The `proxy` subresource of pods, services and nodes is read exactly as the
//! API server reads it: the verb comes from the method (GET and HEAD `get`,
//! POST `create`, PUT `update`, PATCH `patch`, DELETE `delete`), the name is
//! the segment as written (`web:80`, `https:web:443`), and the backend's path
//! after `proxy` is not read at all (see [`crate::path`]). So a policy says
//! what an RBAC role says, and `kubectl auth can-i get services/proxy` agrees.
//!
//! Deliberate deviations, all in the direction of "never weaker":
//! - `exec`, `attach` and `portforward` subresources resolve to verb `create`
//!   whatever the method (their WebSocket form arrives as GET, current API
//!   servers authorise it as create too, and a read-only grant must not open
//!   a shell).
//! - For a resource request with a method outside POST/GET/HEAD/PUT/PATCH/
//!   DELETE the API server uses verb "" (and then rejects the method); we use
//!   the lower-case method, or "" if that would spell a Kubernetes verb
//!   (`LIST`, lower-case `get`), so an odd method never borrows a real verb.

use std::fmt;

use compact_str::CompactString;

use crate::path::CanonicalPath;
use crate::query::{
    QueryParams, fallback_watch_bool, field_selector_name, go_parse_int_ok,
    is_valid_path_segment_name, query_bool,
};

/// What a request asks for, in Kubernetes authorisation terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestAttributes {
    /// A request on an API resource (`/api/v1/...`, `/apis/<g>/<v>/...`).
    Resource(ResourceAttributes),
    /// Anything else (`/version`, `/healthz`, `/api`, `/apis/<g>`, ...).
    NonResource(NonResourceAttributes),
}

/// Attributes of a resource request; an empty string means "absent", as in
/// Kubernetes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceAttributes {
    /// Kubernetes verb: get, list, watch, create, update, patch, delete,
    /// deletecollection (or `proxy` for the legacy `/proxy/` path prefix).
    pub verb: String,
    /// `api` or `apis`.
    pub api_prefix: String,
    /// API group; "" is the core group.
    pub api_group: String,
    /// API version, e.g. `v1`.
    pub api_version: String,
    /// Namespace; "" for cluster-scoped requests and all-namespace lists.
    pub namespace: String,
    /// Resource, e.g. `pods`.
    pub resource: String,
    /// Subresource, e.g. `log`, `exec`, `status`.
    pub subresource: String,
    /// Object name, from the path or a `metadata.name=` field selector.
    pub name: String,
    /// The raw request path (what is forwarded).
    pub path: String,
    /// `follow` was true on a `log` subresource request (it streams).
    pub follow: bool,
}

/// Attributes of a non-resource request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NonResourceAttributes {
    /// Lower-case HTTP method: get, post, put, patch, delete, head, options.
    pub verb: String,
    /// The raw request path (what is forwarded).
    pub path: String,
}

impl RequestAttributes {
    /// The verb the policy is evaluated against.
    pub fn verb(&self) -> &str {
        match self {
            RequestAttributes::Resource(r) => &r.verb,
            RequestAttributes::NonResource(n) => &n.verb,
        }
    }

    /// The raw request path.
    pub fn path(&self) -> &str {
        match self {
            RequestAttributes::Resource(r) => &r.path,
            RequestAttributes::NonResource(n) => &n.path,
        }
    }

    /// Whether the request streams (so the gateway must not apply its normal
    /// request timeout): watch, the legacy proxy verb, exec/attach/
    /// portforward/proxy subresources, and `log` with `follow=true`.
    pub fn is_long_running(&self) -> bool {
        match self {
            RequestAttributes::NonResource(_) => false,
            RequestAttributes::Resource(r) => {
                matches!(r.verb.as_str(), "watch" | "proxy")
                    || matches!(
                        r.subresource.as_str(),
                        "exec" | "attach" | "portforward" | "proxy"
                    )
                    || (r.subresource == "log" && r.follow)
            }
        }
    }
}

impl fmt::Display for RequestAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestAttributes::NonResource(n) => {
                write!(f, "{} non-resource path {}", n.verb.escape_debug(), n.path)
            }
            RequestAttributes::Resource(r) => {
                write!(f, "{} {}", r.verb.escape_debug(), r.resource.escape_debug())?;
                if !r.subresource.is_empty() {
                    write!(f, "/{}", r.subresource.escape_debug())?;
                }
                if !r.name.is_empty() {
                    write!(f, " {:?}", r.name)?;
                }
                if !r.namespace.is_empty() {
                    write!(f, " in namespace {:?}", r.namespace)?;
                }
                write!(
                    f,
                    " (group {:?}, version {})",
                    r.api_group,
                    r.api_version.escape_debug()
                )
            }
        }
    }
}

/// Subresources that are really "run something" and are authorised as create
/// (not `proxy`: its verb is the method's, as in RBAC).
const CONNECT_SUBRESOURCES: [&str; 3] = ["exec", "attach", "portforward"];

/// The Kubernetes API verbs: what a resource request resolves to and a rule may name.
pub const KUBERNETES_VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
/// Resolves a request. `query` is the raw query string without `?`.
pub fn resolve(method: &str, path: &CanonicalPath, query: Option<&str>) -> RequestAttributes {
    let parts = path.segments();
    let non_resource = || {
        RequestAttributes::NonResource(NonResourceAttributes {
            verb: method.to_lowercase(),
            path: path.as_str().to_owned(),
        })
    };
    if parts.len() < 3 {
        return non_resource();
    }
    let mut ri = ResourceAttributes {
        path: path.as_str().to_owned(),
        ..Default::default()
    };
    // Fields are copied with `as_str().to_owned()`: a `CompactString`'s `to_string()`
    // goes through `Display` and the formatter, about 200 instructions each.
    let mut cur: &[CompactString] = match parts[0].as_str() {
        "api" => &parts[1..],
        "apis" => {
            // One more part (the group) is needed before this is a resource request.
            if parts.len() < 4 {
                return non_resource();
            }
            ri.api_group = parts[1].as_str().to_owned();
            &parts[2..]
        }
        _ => return non_resource(),
    };
    ri.api_prefix = parts[0].as_str().to_owned();
    ri.api_version = cur[0].as_str().to_owned();
    cur = &cur[1..];

    let verb_via_path = matches!(cur[0].as_str(), "proxy" | "watch");
    if verb_via_path {
        ri.verb = cur[0].as_str().to_owned();
        if cur.len() < 2 {
            // The API server fails these with an error; the attributes we
            // return (a verb and no resource) only match `resources = ["*"]`.
            return RequestAttributes::Resource(ri);
        }
        cur = &cur[1..];
    } else {
        ri.verb = method_verb(method);
    }

    // `namespaces/<ns>/<resource>/...` re-roots at the resource, except for
    // the namespace's own subresources.
    if cur[0] == "namespaces" && cur.len() > 1 {
        ri.namespace = cur[1].as_str().to_owned();
        if cur.len() > 2 && !matches!(cur[2].as_str(), "status" | "finalize") {
            cur = &cur[2..];
        }
    }

    if cur.len() >= 3 && ri.verb != "proxy" {
        ri.subresource = cur[2].as_str().to_owned();
    }
    if cur.len() >= 2 {
        ri.name = cur[1].as_str().to_owned();
    }
    ri.resource = cur[0].as_str().to_owned();

    let params = query.map(QueryParams::parse).unwrap_or_default();
    if ri.name.is_empty() && ri.verb == "get" {
        // Mirrors ListOptions decoding: if any parameter fails to convert, the
        // API server falls back to a stricter watch test and ignores the
        // field selector. (A malformed labelSelector also fails decoding; we
        // do not parse label selectors, but such a list is then rejected by
        // the API server itself with 400.)
        let selector = params.field_selector.as_deref().map(field_selector_name);
        let decode_failed = matches!(selector, Some(Err(())))
            || params.limit.as_deref().is_some_and(|v| !go_parse_int_ok(v))
            || params
                .timeout_seconds
                .as_deref()
                .is_some_and(|v| !go_parse_int_ok(v));
        let watch = if decode_failed {
            fallback_watch_bool(params.watch.as_deref())
        } else {
            query_bool(params.watch.as_deref())
        };
        ri.verb = if watch { "watch" } else { "list" }.to_owned();
        if !decode_failed
            && let Some(Ok(Some(name))) = selector
            && is_valid_path_segment_name(&name)
        {
            ri.name = name;
        }
    }
    if ri.name.is_empty() && ri.verb == "delete" {
        ri.verb = "deletecollection".to_owned();
    }
    if CONNECT_SUBRESOURCES.contains(&ri.subresource.as_str()) {
        ri.verb = "create".to_owned();
    }
    ri.follow = ri.subresource == "log" && query_bool(params.follow.as_deref());
    RequestAttributes::Resource(ri)
}

fn method_verb(method: &str) -> String {
    match method {
        "POST" => "create".to_owned(),
        "GET" | "HEAD" => "get".to_owned(),
        "PUT" => "update".to_owned(),
        "PATCH" => "patch".to_owned(),
        "DELETE" => "delete".to_owned(),
        other => {
            let lower = other.to_lowercase();
            if KUBERNETES_VERBS.contains(&lower.as_str()) || lower == "proxy" {
                String::new()
            } else {
                lower
            }
        }
    }
}

#[cfg(test)]
mod tests;
