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

use crate::ops::selfcheck::SelfCheck;
use crate::pipeline::Gateway;

/// How long readiness waits for the upstream's own `/readyz`.
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The admin application; readiness includes `selfcheck`.
pub fn router(gateway: Arc<Gateway>, selfcheck: Arc<SelfCheck>) -> Router {
    Router::new()
        .route("/livez", get(live))
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state((gateway, selfcheck))
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
    /// Something the operator should fix that does not stop readiness.
    pub warning: Option<String>,
}

/// Ready means: every issuer has keys, the policy is loaded, the upstream's `/readyz`
/// answers 200 to the gateway's credential, and that credential holds the impersonation
/// the configuration needs (`selfcheck`).
pub async fn readiness(gateway: &Gateway, selfcheck: &SelfCheck) -> Vec<Check> {
    let mut checks = Vec::new();
    for issuer in gateway.authn.issuers() {
        checks.push(Check {
            name: format!("issuer keys {}", issuer.issuer()),
            result: if issuer.has_keys() {
                Ok(())
            } else {
                Err("no signing keys loaded yet".into())
            },
            warning: None,
        });
    }
    checks.push(Check {
        name: "policy".into(),
        result: Ok(()),
        warning: None,
    });
    // Side by side: an unreachable upstream costs one timeout, not two.
    let (upstream, rights) = tokio::join!(
        gateway.upstream.probe("/readyz", UPSTREAM_PROBE_TIMEOUT),
        selfcheck.check(&gateway.upstream)
    );
    checks.push(Check {
        name: "upstream".into(),
        result: upstream,
        warning: None,
    });
    checks.push(rights);
    checks
}

async fn ready(State((gateway, selfcheck)): State<(Arc<Gateway>, Arc<SelfCheck>)>) -> Response {
    let checks = readiness(&gateway, &selfcheck).await;
    let ok = checks.iter().all(|c| c.result.is_ok());
    // The API server's own verbose readiness format.
    let mut body = String::new();
    for c in &checks {
        match &c.result {
            Ok(()) => body.push_str(&format!("[+]{} ok", c.name)),
            Err(e) => body.push_str(&format!("[-]{} failed: {e}", c.name)),
        }
        if let Some(w) = &c.warning {
            body.push_str(&format!(" (warning: {w})"));
        }
        body.push('\n');
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
