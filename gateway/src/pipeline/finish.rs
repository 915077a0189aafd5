//! The last phase, which every request passes whatever phase ended it: the error (if any)
//! becomes its `Status` response, the metrics and the log line are written, the audit
//! record is written (or counted into a summary), and the response guard is attached to
//! the body so that the slot, the stream count and a long-running response's final record
//! end with the last byte.

use axum::response::Response;
use http::{HeaderValue, StatusCode};
use tracing::{info, warn};

use super::headers::AUDIT_ID;
use super::{Gateway, Outcome};
use crate::audit::Stage;
use crate::audit::record::Facts;
use crate::error::GatewayError;
use crate::ops::metrics;

/// Turns what became of a request into the response the client gets, and leaves its trace.
pub(super) async fn finish(
    gateway: &Gateway,
    facts: &Facts,
    mut outcome: Outcome,
    handled: Result<Response, GatewayError>,
) -> Response {
    let mut response = match handled {
        Ok(response) => response,
        Err(error) => {
            match &error {
                GatewayError::Unauthenticated(e) => metrics::auth_failure(e.category()),
                GatewayError::TooManyRequests { limit, .. } => metrics::rate_limited(limit.label()),
                _ => {}
            }
            if error.status().is_server_error() {
                warn!(
                    method = %outcome.method,
                    path = %outcome.logged_path,
                    audit_id = %facts.audit_id,
                    error = %error,
                    source = ?std::error::Error::source(&error),
                    "request failed"
                );
            }
            error.into_response()
        }
    };
    let elapsed = outcome.started.elapsed();
    let status = response.status();
    let verb = outcome
        .attributes
        .as_ref()
        .map_or("other", |a| metrics::verb_label(a.verb()));
    metrics::request_done(
        status.as_u16(),
        verb,
        outcome.decision_label(),
        elapsed,
        outcome.upstream_wait,
    );
    info!(
        method = %outcome.method,
        path = %outcome.logged_path,
        audit_id = %facts.audit_id,
        user = outcome.identity.as_ref().map_or("-", |i| i.user.as_str()),
        decision = outcome.decision.as_ref().map(|d| d.reason()).as_deref().unwrap_or("-"),
        status = status.as_u16(),
        elapsed_ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );

    // The same ID goes to the client and (in `handle`) upstream.
    if let Ok(id) = HeaderValue::from_str(facts.audit_id.as_str()) {
        response.headers_mut().insert(AUDIT_ID, id);
    }
    // A spliced session took the guard already; every other response carries it.
    let guard = outcome.guard.take();
    // A long-running response that started gets a record now and one when it ends.
    let streaming = outcome.kind.is_long_running()
        && (status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS);
    let stage = if streaming {
        Stage::ResponseStarted
    } else {
        Stage::ResponseComplete
    };
    let event = outcome.event(
        facts,
        stage,
        status,
        elapsed.saturating_sub(outcome.upstream_wait),
    );
    if outcome.summarised(status) {
        let key = outcome.summary_key(facts, gateway.limits.ipv6_prefix_length);
        // Boxed: its state would otherwise enlarge every request's future (see `proxy`).
        Box::pin(gateway.audit.record_refusal(key, &event)).await;
    } else {
        gateway.audit.record(&event).await;
    }

    match guard {
        Some(mut guard) => {
            let shutdown = streaming.then(|| {
                guard.arm_final_record(gateway.audit.clone(), event, &gateway.pending_audit);
                gateway.shutdown.signal()
            });
            guard.attach(response, shutdown)
        }
        None => response,
    }
}
