//! The request pipeline, written once, top to bottom.
//!
//! ```text
//! request ─ normalise path ─ resolve attributes ─ bound query numbers ─ [address budget]
//!         ─ authenticate ─ admit (rate, concurrency) ─ upgrade target? ─ authorize
//!         ─ sanitise headers
//!         ─ add credential + Impersonate-* + Audit-ID ─ forward ─ stream back ─ audit
//! ```
//!
//! Each phase either hands the next one what it needs or returns a [`GatewayError`];
//! nothing reaches the upstream unless every phase agreed. The path that is resolved and
//! authorized is the path that is forwarded, byte for byte.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use futures_util::FutureExt as _;
use http::{HeaderValue, Method, Request, StatusCode, Version};
use kubegate_config::Limits;
use kubegate_policy::{Decision, RequestAttributes, normalize_path, resolve};
use tracing::{info, warn};

use crate::audit::{AuditId, AuditLog, Stage, SummaryKey};
use crate::authn::{Authenticator, Identity};
use crate::authz::PolicyStore;
use crate::error::GatewayError;
use crate::forward::{ForwardedIdentity, add_gateway_headers, sanitize_request};
use crate::limits::{Admission, Kind, Permit};
use crate::observe;
use crate::record::{self, Completion, Facts, Guarded, Pending};
use crate::server::{ConnInfo, address_key};
use crate::upstream::Upstream;
use crate::{stream, upgrade};

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
    /// Rate limits and concurrency caps.
    pub admission: Admission,
    /// The audit trail.
    pub audit: AuditLog,
    /// Audit records of ended streams still being written.
    pub pending_audit: Pending,
    /// Ends long-running streams when the gateway shuts down.
    pub shutdown: record::ShutdownTrigger,
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
    /// The admission slot, released with the response.
    permit: Option<Permit>,
    /// A watch, log follow or upgrade: audited at start and at end.
    long_running: bool,
    /// Set just before the request goes to the upstream: from then on the API server may
    /// have seen it, so its record is never folded into a summary.
    sent_upstream: bool,
}

impl Outcome {
    fn decision_label(&self) -> &'static str {
        match &self.decision {
            Some(d) if d.allowed => "allow",
            Some(_) => "deny",
            None => "none",
        }
    }

    /// Whether the record is one of the refusals [`AuditLog::record_refusal`] summarises:
    /// the API server never saw the request, and no policy decided it (a bad path, a 401)
    /// or admission refused it (a 429 the gateway answered itself). Forwarded requests and
    /// policy decisions (403) always keep a record of their own.
    fn summarised(&self, status: StatusCode) -> bool {
        !self.sent_upstream && (self.decision.is_none() || status == StatusCode::TOO_MANY_REQUESTS)
    }

    /// Whose refusals the record is counted with: the verified user, else the client's
    /// address.
    /// Whose window a summarised refusal counts in: the verified user, else the client's
    /// address as every per-address bound counts it (IPv6 by its prefix).
    fn summary_key(&self, facts: &Facts, ipv6_prefix_length: u8) -> SummaryKey {
        match (&self.identity, facts.source_ip) {
            (Some(identity), _) => SummaryKey::User(identity.username.clone()),
            (None, Some(ip)) => {
                SummaryKey::Address(address_key(ip, ipv6_prefix_length).to_string())
            }
            (None, None) => SummaryKey::Address(String::new()),
        }
    }

    fn annotations(&self, gateway_time: Duration) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        a.insert("kubegate.io/decision".into(), self.decision_label().into());
        if let Some(rule) = self.decision.as_ref().and_then(|d| d.rule.clone()) {
            a.insert("kubegate.io/rule".into(), rule);
        }
        a.insert(
            "kubegate.io/latency".into(),
            format!("{:.3}ms", gateway_time.as_secs_f64() * 1e3),
        );
        a
    }
}

async fn proxy(State(gateway): State<Arc<Gateway>>, request: Request<Body>) -> Response {
    let started = Instant::now();
    let _in_flight = observe::InFlight::start();
    let method = request.method().clone();
    // For the log lines: bounded, since the client chooses it.
    let path = record::logged_path(request.uri().path()).into_owned();
    let facts = Facts {
        audit_id: AuditId::new(),
        received: SystemTime::now(),
        request_uri: request.uri().path_and_query().map_or_else(
            || request.uri().path().to_string(),
            |pq| pq.as_str().to_string(),
        ),
        source_ip: request.extensions().get::<ConnInfo>().map(|c| c.peer.ip()),
        user_agent: request
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let mut outcome = Outcome::default();
    let handled = contain_panic(gateway.handle(request, &facts, &mut outcome)).await;
    let mut response = match handled {
        Ok(response) => response,
        Err(error) => {
            match &error {
                GatewayError::Unauthenticated(e) => observe::auth_failure(e.category()),
                GatewayError::TooManyRequests { limit, .. } => observe::rate_limited(limit),
                _ => {}
            }
            if error.status().is_server_error() {
                warn!(%method, %path, audit_id = %facts.audit_id, error = %error, source = ?std::error::Error::source(&error), "request failed");
            }
            error.into_response()
        }
    };
    let elapsed = started.elapsed();
    let status = response.status();
    let verb = outcome
        .attributes
        .as_ref()
        .map_or("other", |a| observe::verb_label(a.verb()));
    observe::request_done(
        status.as_u16(),
        verb,
        outcome.decision_label(),
        elapsed,
        outcome.upstream_wait,
    );
    info!(
        %method,
        %path,
        audit_id = %facts.audit_id,
        user = outcome.identity.as_ref().map_or("-", |i| i.username.as_str()),
        decision = outcome.decision.as_ref().map(|d| d.reason()).as_deref().unwrap_or("-"),
        status = status.as_u16(),
        elapsed_ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );

    // The audit record: the same ID goes to the client and (in `handle`) upstream.
    if let Ok(id) = HeaderValue::from_str(facts.audit_id.as_str()) {
        response.headers_mut().insert("audit-id", id);
    }
    let streaming =
        outcome.long_running && (status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS);
    let event = record::event(
        &facts,
        if streaming {
            Stage::ResponseStarted
        } else {
            Stage::ResponseComplete
        },
        outcome.attributes.as_ref(),
        outcome.identity.as_deref(),
        outcome.forwarded.as_ref(),
        status.as_u16(),
        outcome.annotations(elapsed.saturating_sub(outcome.upstream_wait)),
    );
    if outcome.summarised(status) {
        let key = outcome.summary_key(&facts, gateway.limits.ipv6_prefix_length);
        gateway.audit.record_refusal(key, &event).await;
    } else {
        gateway.audit.record(&event).await;
    }
    if streaming && status != StatusCode::SWITCHING_PROTOCOLS {
        // The stream's end writes `ResponseComplete` and frees its slot.
        let completion = Completion::new(
            outcome.permit.take(),
            Some((gateway.audit.clone(), event)),
            &gateway.pending_audit,
        );
        let (parts, body) = response.into_parts();
        response = Response::from_parts(
            parts,
            Body::new(Guarded::new(body, completion, gateway.shutdown.signal())),
        );
    }
    response
}

impl Gateway {
    async fn handle(
        &self,
        request: Request<Body>,
        facts: &Facts,
        outcome: &mut Outcome,
    ) -> Result<Response, GatewayError> {
        let audit_id = &facts.audit_id;
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
        // Numbers the gateway itself acts on are bounded before anything is done with them.
        let timeout_seconds = kubegate_policy::timeout_seconds(parts.uri.query())?;

        // 2. Who is asking. Checking a credential costs crypto: each client address has a
        // budget for that, spent before any is done.
        let identity = match self
            .authn
            .authenticate_cached(&parts.headers, conn.client_cert.as_deref())
        {
            Some(cached) => cached?,
            None => {
                self.admission.check_unauthenticated(peer)?;
                self.authn.verify_token(&parts.headers).await?
            }
        };
        outcome.identity = Some(identity.clone());

        // Connection upgrades (exec, attach, port-forward) take every phase like any other
        // request. Read before sanitising, which drops `Upgrade` as hop-by-hop; only
        // SPDY/3.1 and websocket are accepted (400 otherwise).
        let upgrade = upgrade::requested(&mut parts)?;

        // 3. Within their quota? Every request costs a token of the user's rate, before
        // the policy is asked, so a flood of refused requests is throttled too; a
        // long-running one also takes a stream slot instead of a request slot.
        outcome.long_running = upgrade.is_some() || attributes.is_long_running();
        let kind = if outcome.long_running {
            Kind::Stream
        } else {
            Kind::Request
        };
        outcome.permit = Some(
            self.admission
                .admit(&identity.username, &identity.groups, kind)?,
        );
        // Only endpoints that switch protocols may be upgraded; asked after admission, so
        // upgrade headers are no way around the quota either.
        if upgrade.is_some() {
            upgrade::check_target(&parts.method, attributes)?;
        }

        // 4. May they?
        let decision = self
            .policy
            .snapshot()
            .decide(identity.subject(), attributes);
        let allowed = decision.allowed;
        let forwarded = forwarded_identity(&identity, &decision);
        let denial = (!allowed).then(|| forbidden_message(&identity, attributes, &decision));
        outcome.decision = Some(decision);
        if let Some(message) = denial {
            return Err(GatewayError::Forbidden { message });
        }
        outcome.forwarded = Some(forwarded.clone());

        // 5. Headers: the client's credentials and identity claims out, ours in.
        sanitize_request(&mut parts.headers);
        let credential = self.upstream.authorization().await?;
        add_gateway_headers(&mut parts.headers, credential, &forwarded, peer)?;
        // The API server records this ID too, so both audit trails can be joined.
        if let Ok(id) = HeaderValue::from_str(audit_id.as_str()) {
            parts.headers.insert("audit-id", id);
        }

        // 6. Forward the exact path and query that were authorized.
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{}?{q}", path.as_str()),
            None => path.as_str().to_string(),
        };
        parts.uri = self.upstream.uri_for(&path_and_query)?;
        // The client's HTTP version is its hop's business; the upstream connection
        // negotiates its own (h2 when offered).
        parts.version = Version::HTTP_11;
        outcome.sent_upstream = true;
        let sent = Instant::now();
        let response = match upgrade {
            // Spliced only once the upstream switched protocols as asked (upgrade.rs).
            Some(upgrade) => {
                // The spliced connection keeps the slot and writes `ResponseComplete` when
                // it closes; a refused upgrade hands the completion back.
                let completion = Completion::new(
                    outcome.permit.take(),
                    Some((self.audit.clone(), upgrade_completion(facts, outcome))),
                    &self.pending_audit,
                );
                upgrade::forward(
                    &self.upstream,
                    &self.limits,
                    upgrade,
                    parts,
                    body,
                    completion,
                    self.shutdown.signal(),
                )
                .await
                .map(|(response, returned)| {
                    if let Some(mut completion) = returned {
                        completion.disarm();
                        outcome.permit = completion.into_permit();
                    }
                    response
                })
            }
            // 7. The body capped and streamed up, the answer streamed back (stream.rs).
            None => {
                stream::forward(
                    &self.upstream,
                    &self.limits,
                    attributes,
                    timeout_seconds,
                    parts,
                    body,
                )
                .await
            }
        };
        outcome.upstream_wait = sent.elapsed();
        response
    }
}

/// Runs a request's phases so that a panic in one of them (a bug) becomes a 500 `Status`
/// and the request still gets its log line and audit record, instead of a dropped
/// connection and a request the API server may have acted on without a trace.
async fn contain_panic(
    phases: impl Future<Output = Result<Response, GatewayError>>,
) -> Result<Response, GatewayError> {
    AssertUnwindSafe(phases)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            Err(GatewayError::Internal(format!(
                "request handling panicked: {what}"
            )))
        })
}

/// The `ResponseComplete` record an upgraded connection writes when it closes.
fn upgrade_completion(facts: &Facts, outcome: &Outcome) -> crate::audit::Event {
    record::event(
        facts,
        Stage::ResponseComplete,
        outcome.attributes.as_ref(),
        outcome.identity.as_deref(),
        outcome.forwarded.as_ref(),
        StatusCode::SWITCHING_PROTOCOLS.as_u16(),
        outcome.annotations(Duration::ZERO),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_summarised_per_ipv6_prefix() {
        let facts = |ip: &str| Facts {
            audit_id: AuditId::new(),
            received: SystemTime::now(),
            request_uri: "/".into(),
            source_ip: Some(ip.parse().unwrap()),
            user_agent: None,
        };
        let anonymous = Outcome::default();
        let key = |ip: &str| anonymous.summary_key(&facts(ip), 64);
        // One host's /64 is one client, whichever address in it a request comes from.
        assert_eq!(key("2001:db8:0:1::1"), key("2001:db8:0:1:ffff::9"));
        assert_ne!(key("2001:db8:0:1::1"), key("2001:db8:0:2::1"));
        assert_eq!(key("192.0.2.1"), SummaryKey::Address("192.0.2.1".into()));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    }

    #[tokio::test]
    async fn a_panicking_phase_becomes_a_500_status() {
        let contained = contain_panic(async {
            if true {
                panic!("boom at phase 3");
            }
            Ok(Response::new(Body::empty()))
        })
        .await;
        let error = contained.unwrap_err();
        assert!(error.to_string().contains("boom at phase 3"), "{error}");
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["reason"], "InternalError");
        // The panic's text is for the log, not the client.
        assert_eq!(status["message"], "kubegate: internal error");

        let fine = contain_panic(async { Ok(Response::new(Body::empty())) }).await;
        assert_eq!(fine.unwrap().status(), StatusCode::OK);
    }
}
