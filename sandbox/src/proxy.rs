//! The service and pod proxy: `/api/v1/namespaces/<ns>/{services,pods}/<name>/proxy<path>`
//! forwarded over plain HTTP/1.1 to a backend registered with [`crate::Sandbox::proxy_to`],
//! as the API server forwards it to an endpoint. The name may carry a scheme and a port
//! (`web:80`, `https:web:443`); every port of a name reaches its one backend.
//!
//! What the backend sees is what a real cluster's backend sees: the path after `proxy` and
//! the query exactly as received (a request with nothing after `proxy` is redirected to
//! `proxy/` first, as the API server does, so relative links resolve below it), and none of
//! the caller's credentials or identity headers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use axum::body::Body;
use axum::response::Response;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use hyper_util::rt::TokioIo;

use crate::state::{Shared, spawn_until_stopped};
use crate::status::ApiError;

/// What a proxied name belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    /// `services/<name>/proxy`.
    Service,
    /// `pods/<name>/proxy`.
    Pod,
}

impl ProxyKind {
    fn plural(self) -> &'static str {
        match self {
            ProxyKind::Service => "services",
            ProxyKind::Pod => "pods",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            ProxyKind::Service => "service",
            ProxyKind::Pod => "pod",
        }
    }
}

/// Registered backends by kind, namespace and name (without scheme or port).
#[derive(Default)]
pub(crate) struct Backends(Mutex<HashMap<(ProxyKind, String, String), SocketAddr>>);

impl Backends {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<(ProxyKind, String, String), SocketAddr>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A proxy request, read from the raw path so empty segments and a trailing slash survive.
pub(crate) struct ProxyTarget<'a> {
    kind: ProxyKind,
    ns: &'a str,
    /// As written: `web:80`.
    name: &'a str,
    /// Everything after `proxy`: `""`, `/`, `//a`, `/a/`.
    rest: &'a str,
}

impl<'a> ProxyTarget<'a> {
    /// `Some` for `/api/v1/namespaces/<ns>/{services,pods}/<name>/proxy[/...]`.
    pub(crate) fn parse(raw: &'a str) -> Option<Self> {
        let tail = raw.strip_prefix("/api/v1/namespaces/")?;
        let mut pieces = tail.splitn(4, '/');
        let (ns, plural, name) = (pieces.next()?, pieces.next()?, pieces.next()?);
        let after = pieces.next()?;
        let rest = after.strip_prefix("proxy")?;
        let kind = match plural {
            "services" => ProxyKind::Service,
            "pods" => ProxyKind::Pod,
            _ => return None,
        };
        if ns.is_empty() || name.is_empty() || !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        Some(ProxyTarget {
            kind,
            ns,
            name,
            rest,
        })
    }

    /// The name without `scheme:` and `:port`, as `net.SplitSchemeNamePort` splits it.
    fn base_name(&self) -> Option<&'a str> {
        let parts: Vec<&str> = self.name.split(':').collect();
        let name = match parts.as_slice() {
            [name] | [name, _] => name,
            [scheme, name, _] if matches!(*scheme, "http" | "https") => name,
            _ => return None,
        };
        (!name.is_empty()).then_some(*name)
    }
}

/// Headers that are the caller's business with the sandbox, never the backend's.
fn is_private(name: &HeaderName) -> bool {
    const HOP_BY_HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    ];
    let n = name.as_str();
    HOP_BY_HOP.contains(&n)
        || n == "authorization"
        || n == "proxy-authorization"
        || n.starts_with("impersonate-")
        || n.starts_with("x-remote-")
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !is_private(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Forwards one proxy request to its backend and relays the answer as it streams.
pub(crate) async fn forward(
    shared: &Shared,
    target: ProxyTarget<'_>,
    parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let plural = target.kind.plural();
    let unknown = || ApiError::not_found(plural, target.name);
    let base = target.base_name().ok_or_else(unknown)?;
    let addr = shared
        .backends
        .lock()
        .get(&(target.kind, target.ns.to_owned(), base.to_owned()))
        .copied()
        .ok_or_else(unknown)?;
    let query = parts.uri.query();
    if target.rest.is_empty() {
        // As the API server does: relative links need the page's URL to end in `/`.
        let location = match query {
            Some(q) => format!("{}/?{q}", parts.uri.path()),
            None => format!("{}/", parts.uri.path()),
        };
        let location = HeaderValue::try_from(location)
            .map_err(|_| ApiError::bad_request("the proxy path cannot be redirected"))?;
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
        response.headers_mut().insert(header::LOCATION, location);
        return Ok(response);
    }
    let path_and_query = match query {
        Some(q) => format!("{}?{q}", target.rest),
        None => target.rest.to_owned(),
    };
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::service_unavailable(format!(
            "error trying to reach {} {:?}: {e}",
            target.kind.singular(),
            target.name
        ))
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    spawn_until_stopped(shared.stop.clone(), connection);
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(path_and_query)
        .body(body)
        .map_err(|_| ApiError::bad_request("the proxy path is not a valid request target"))?;
    copy_headers(&parts.headers, request.headers_mut());
    let host = HeaderValue::try_from(addr.to_string()).map_err(|e| unreachable(&e))?;
    request.headers_mut().insert(header::HOST, host);
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(&e))?;
    let (answer, body) = answer.into_parts();
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = answer.status;
    copy_headers(&answer.headers, response.headers_mut());
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_raw_path() {
        let t = ProxyTarget::parse("/api/v1/namespaces/dev/services/web:80/proxy//a/").unwrap();
        assert_eq!(
            (t.kind, t.ns, t.name, t.rest, t.base_name()),
            (ProxyKind::Service, "dev", "web:80", "//a/", Some("web"))
        );
        let t = ProxyTarget::parse("/api/v1/namespaces/dev/pods/https:web-0:8443/proxy").unwrap();
        assert_eq!(
            (t.kind, t.rest, t.base_name()),
            (ProxyKind::Pod, "", Some("web-0"))
        );
        for raw in [
            "/api/v1/namespaces/dev/services/web/proxyx",
            "/api/v1/namespaces/dev/configmaps/web/proxy/",
            "/api/v1/namespaces/dev/services/web",
            "/api/v1/namespaces//services/web/proxy/",
            "/api/v1/nodes/n/proxy/",
        ] {
            assert!(ProxyTarget::parse(raw).is_none(), "{raw}");
        }
        let odd = ProxyTarget::parse("/api/v1/namespaces/dev/services/ftp:web:21/proxy/").unwrap();
        assert_eq!(odd.base_name(), None);
    }
}
