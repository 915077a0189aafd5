//! The request pipeline, written once, top to bottom.
//!
//! ```text
//! request ─ normalise path ─ resolve attributes ─ authenticate ─ authorize
//!         ─ sanitise headers ─ add credential + Impersonate-* ─ forward ─ stream back
//! ```
//!
//! Each phase either hands the next one what it needs or returns a [`GatewayError`];
//! nothing reaches the upstream unless every phase agreed. The path that is resolved and
//! authorized is the path that is forwarded, byte for byte.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{Method, Request, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use kubegate_config::Limits;
use kubegate_policy::{Decision, RequestAttributes, normalize_path, resolve};
use tracing::{info, warn};

use crate::authn::{Authenticator, Identity};
use crate::authz::PolicyStore;
use crate::error::GatewayError;
use crate::forward::{ForwardedIdentity, add_gateway_headers, sanitize_request, strip_hop_by_hop};
use crate::observe;
use crate::server::ConnInfo;
use crate::upstream::Upstream;

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    /// Verifies bearer tokens.
    pub authn: Authenticator,
    /// The policy in force.
    pub policy: Arc<PolicyStore>,
    /// The kube-apiserver.
    pub upstream: Upstream,
    /// Request bounds.
    pub limits: Limits,
}

/// The user-facing application: every request goes through [`proxy`].
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new().fallback(proxy).with_state(gateway)
}

/// What became of a request, phase by phase: the log line, the metrics and (later) the
/// audit record are written from it, whatever phase ended the request.
#[derive(Default)]
struct Outcome {
    attributes: Option<RequestAttributes>,
    identity: Option<Arc<Identity>>,
    forwarded: Option<ForwardedIdentity>,
    decision: Option<Decision>,
    upstream_wait: Duration,
}

impl Outcome {
    fn decision_label(&self) -> &'static str {
        match &self.decision {
            Some(d) if d.allowed => "allow",
            Some(_) => "deny",
            None => "none",
        }
    }
}

async fn proxy(State(gateway): State<Arc<Gateway>>, request: Request<Body>) -> Response {
    let started = Instant::now();
    let _in_flight = observe::InFlight::start();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut outcome = Outcome::default();
    let response = match gateway.handle(request, &mut outcome).await {
        Ok(response) => response,
        Err(error) => {
            if let GatewayError::Unauthenticated(e) = &error {
                observe::auth_failure(e.category());
            }
            if error.status().is_server_error() {
                warn!(%method, %path, error = %error, source = ?std::error::Error::source(&error), "request failed");
            }
            error.into_response()
        }
    };
    let elapsed = started.elapsed();
    let verb = outcome
        .attributes
        .as_ref()
        .map_or("other", |a| observe::verb_label(a.verb()));
    observe::request_done(
        response.status().as_u16(),
        verb,
        outcome.decision_label(),
        elapsed,
        outcome.upstream_wait,
    );
    info!(
        %method,
        %path,
        user = outcome.identity.as_ref().map_or("-", |i| i.username.as_str()),
        decision = outcome.decision.as_ref().map(|d| d.reason()).as_deref().unwrap_or("-"),
        status = response.status().as_u16(),
        elapsed_ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );
    response
}

impl Gateway {
    async fn handle(
        &self,
        request: Request<Body>,
        outcome: &mut Outcome,
    ) -> Result<Response, GatewayError> {
        let conn = request
            .extensions()
            .get::<ConnInfo>()
            .cloned()
            .ok_or_else(|| GatewayError::Internal("request without connection info".into()))?;
        let peer = conn.peer.ip();
        let (mut parts, body) = request.into_parts();

        // 1. The target. CONNECT has no path to authorize.
        if parts.method == Method::CONNECT {
            return Err(GatewayError::BadRequest("CONNECT is not supported"));
        }
        let path = normalize_path(parts.uri.path())?;
        let attributes = resolve(parts.method.as_str(), &path, parts.uri.query());
        let attributes = outcome.attributes.insert(attributes);

        // 2. Who is asking.
        let identity = self
            .authn
            .authenticate(&parts.headers, conn.client_cert.as_deref())
            .await?;
        outcome.identity = Some(identity.clone());

        // 3. May they?
        let decision = self
            .policy
            .snapshot()
            .decide(&identity.subject(), attributes);
        let allowed = decision.allowed;
        let forwarded = forwarded_identity(&identity, &decision);
        let denial = (!allowed).then(|| forbidden_message(&identity, attributes, &decision));
        outcome.decision = Some(decision);
        if let Some(message) = denial {
            return Err(GatewayError::Forbidden { message });
        }
        outcome.forwarded = Some(forwarded.clone());

        // Connection upgrades (exec, attach, port-forward) are not spliced yet: refuse
        // them explicitly rather than forwarding a request the upstream would misread.
        if parts.headers.contains_key(http::header::UPGRADE) {
            return Err(GatewayError::BadRequest(
                "connection upgrades are not supported by this gateway version",
            ));
        }

        // 4. Headers: the client's credentials and identity claims out, ours in.
        sanitize_request(&mut parts.headers);
        let credential = self.upstream.authorization().await?;
        add_gateway_headers(&mut parts.headers, credential, &forwarded, peer)?;

        // 5. Forward the exact path and query that were authorized.
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{}?{q}", path.as_str()),
            None => path.as_str().to_string(),
        };
        parts.uri = self.upstream.uri_for(&path_and_query)?;
        // The client's HTTP version is its hop's business; the upstream connection
        // negotiates its own (h2 when offered).
        parts.version = Version::HTTP_11;
        let body = self.bounded_body(&parts.headers, body).await?;
        let sent = Instant::now();
        let response = self.upstream.send(Request::from_parts(parts, body)).await;
        outcome.upstream_wait = sent.elapsed();
        let response = response?;

        // 6. Stream the answer back.
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

impl Gateway {
    /// Enforces the request body cap. A declared length is checked up front (and hyper
    /// holds the client to it); a chunked body is read up to the cap first, so an
    /// oversized one is answered 413 instead of being cut off half-way upstream.
    async fn bounded_body(
        &self,
        headers: &http::HeaderMap,
        body: Body,
    ) -> Result<Body, GatewayError> {
        let limit = self.limits.max_request_body;
        let too_large = GatewayError::PayloadTooLarge { limit };
        if let Some(length) = headers.get(http::header::CONTENT_LENGTH) {
            let length: u64 = length
                .to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(GatewayError::BadRequest("invalid Content-Length"))?;
            return if length > limit {
                Err(too_large)
            } else {
                Ok(body)
            };
        }
        if body.is_end_stream() {
            return Ok(body);
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        match http_body_util::Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(Body::from(collected.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large),
            Err(_) => Err(GatewayError::BadRequest(
                "the request body could not be read",
            )),
        }
    }
}

/// The identity sent upstream: the person, or the narrower identity the deciding rule maps
/// them to.
fn forwarded_identity(identity: &Identity, decision: &Decision) -> ForwardedIdentity {
    match &decision.forward_as {
        Some(mapped) => ForwardedIdentity {
            user: mapped.user.clone(),
            groups: mapped.groups.clone(),
            uid: mapped.uid.clone(),
            extra: mapped.extra.clone(),
        },
        None => ForwardedIdentity {
            user: identity.username.clone(),
            groups: identity.groups.clone(),
            uid: identity.uid.clone(),
            extra: identity.extra.clone(),
        },
    }
}

/// A denial worded like the API server's own, plus the policy's reason, so kubectl users
/// recognise it and policy owners can find the rule.
fn forbidden_message(
    identity: &Identity,
    attrs: &RequestAttributes,
    decision: &Decision,
) -> String {
    let who = format!("User {:?}", identity.username);
    let what = match attrs {
        RequestAttributes::Resource(r) => {
            let resource = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let mut s = format!(
                "{who} cannot {} resource {resource:?} in API group {:?}",
                r.verb, r.api_group
            );
            if !r.namespace.is_empty() {
                s.push_str(&format!(" in the namespace {:?}", r.namespace));
            }
            if !r.name.is_empty() {
                s.push_str(&format!(" (name {:?})", r.name));
            }
            s
        }
        RequestAttributes::NonResource(n) => {
            format!("{who} cannot {} path {:?}", n.verb, n.path)
        }
    };
    format!("{what}: {}", decision.reason())
}
