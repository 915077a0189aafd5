//! The operator listener: liveness, readiness and Prometheus metrics, over plain HTTP on
//! a separate (loopback by default) address, so probes and scrapers never need a user's
//! credentials and users never reach these endpoints.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::pipeline::Gateway;

/// How long readiness waits for the upstream's own `/readyz`.
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The admin application.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/livez", get(live))
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

/// Alive means the process serves HTTP; it never waits on issuers or the upstream, so a
/// slow dependency does not get the gateway restarted.
async fn live() -> &'static str {
    "ok"
}

/// One readiness check's outcome.
#[derive(Debug)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// `Err` says why it is not ready.
    pub result: Result<(), String>,
}

/// Ready means: every issuer has keys, the policy is loaded, and the upstream's `/readyz`
/// answers 200 to the gateway's credential.
pub async fn readiness(gateway: &Gateway) -> Vec<Check> {
    let mut checks = Vec::new();
    for issuer in gateway.authn.issuers() {
        checks.push(Check {
            name: format!("issuer keys {}", issuer.issuer()),
            result: if issuer.has_keys() {
                Ok(())
            } else {
                Err("no signing keys loaded yet".into())
            },
        });
    }
    checks.push(Check {
        name: "policy".into(),
        result: Ok(()),
    });
    checks.push(Check {
        name: "upstream".into(),
        result: gateway
            .upstream
            .probe("/readyz", UPSTREAM_PROBE_TIMEOUT)
            .await,
    });
    checks
}

async fn ready(State(gateway): State<Arc<Gateway>>) -> Response {
    let checks = readiness(&gateway).await;
    let ok = checks.iter().all(|c| c.result.is_ok());
    // The API server's own verbose readiness format.
    let mut body = String::new();
    for c in &checks {
        match &c.result {
            Ok(()) => body.push_str(&format!("[+]{} ok\n", c.name)),
            Err(e) => body.push_str(&format!("[-]{} failed: {e}\n", c.name)),
        }
    }
    body.push_str(if ok {
        "readyz check passed\n"
    } else {
        "readyz check failed\n"
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::ops::metrics::recorder().render(),
    )
        .into_response()
}
