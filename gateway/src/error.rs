//! The one place where failures become responses.
//!
//! Every phase of the pipeline returns a [`GatewayError`]; [`GatewayError::into_response`]
//! turns it into a Kubernetes `Status` object so kubectl and client libraries show the
//! message as they would one from the API server. The client sees a safe, specific message;
//! details that could help an attacker (or leak a secret) go to the log only.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::authn::AuthError;

/// Everything that can stop a request in the gateway, by who caused it.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request target is not a canonical path (client's fault).
    #[error("invalid request path: {0}")]
    BadPath(#[from] kubegate_policy::PathError),
    /// A query parameter the gateway acts on is out of bounds (client's fault).
    #[error("invalid query: {0}")]
    BadQuery(#[from] kubegate_policy::QueryError),
    /// The request is malformed in another way (client's fault).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// No valid credential (client's fault).
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] AuthError),
    /// The policy denied the request (client's fault).
    #[error("{message}")]
    Forbidden {
        /// The message shown to the client: the attributes and the deciding rule.
        message: String,
    },
    /// The request body is larger than the configured cap (client's fault).
    #[error("request body too large: the limit is {limit} bytes")]
    PayloadTooLarge {
        /// The cap, in bytes.
        limit: u64,
    },
    /// Over a rate or concurrency limit (client's fault; try again later).
    #[error("{message}")]
    TooManyRequests {
        /// Which limit.
        limit: crate::pipeline::admission::Limit,
        /// Which limit, in words.
        message: String,
        /// When a retry may succeed.
        retry_after: std::time::Duration,
    },
    /// The upstream could not be reached or broke the connection (upstream's fault).
    #[error("upstream unavailable")]
    UpstreamUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The upstream did not answer in time (upstream's fault).
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// The gateway itself failed (our fault), for example its upstream credential could
    /// not be obtained.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// The HTTP status code for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadPath(_) | GatewayError::BadQuery(_) | GatewayError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden { .. } => StatusCode::FORBIDDEN,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Kubernetes `Status.reason` for this error.
    fn reason(&self) -> &'static str {
        match self {
            GatewayError::BadPath(_) | GatewayError::BadQuery(_) | GatewayError::BadRequest(_) => {
                "BadRequest"
            }
            GatewayError::Unauthenticated(_) => "Unauthorized",
            GatewayError::Forbidden { .. } => "Forbidden",
            GatewayError::PayloadTooLarge { .. } => "RequestEntityTooLarge",
            GatewayError::TooManyRequests { .. } => "TooManyRequests",
            GatewayError::UpstreamUnavailable(_) => "ServiceUnavailable",
            GatewayError::UpstreamTimeout(_) => "Timeout",
            GatewayError::Internal(_) => "InternalError",
        }
    }

    /// The message the client sees. It never includes a token, a key or the upstream's
    /// address: the log has the full chain.
    fn client_message(&self) -> String {
        match self {
            GatewayError::UpstreamUnavailable(_) => {
                "kubegate: the Kubernetes API server is unavailable".to_string()
            }
            GatewayError::UpstreamTimeout(d) => format!(
                "kubegate: the Kubernetes API server did not answer within {}",
                humantime::format_duration(*d)
            ),
            GatewayError::Internal(_) => "kubegate: internal error".to_string(),
            other => format!("kubegate: {other}"),
        }
    }

    /// Renders the error as a Kubernetes `Status` response.
    pub fn into_response(self) -> Response {
        let code = self.status();
        let retry_after = match &self {
            // Whole seconds, rounded up: a client retrying early is refused again.
            GatewayError::TooManyRequests { retry_after, .. } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
            }
            _ => None,
        };
        let status = Status {
            kind: "Status",
            api_version: "v1",
            metadata: EmptyMeta {},
            status: "Failure",
            message: self.client_message(),
            reason: self.reason(),
            code: code.as_u16(),
        };
        let body = serde_json::to_vec(&status).unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = code;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if code == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="kubegate", error="invalid_token""#),
            );
        }
        response
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        GatewayError::into_response(self)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    kind: &'static str,
    api_version: &'static str,
    metadata: EmptyMeta,
    status: &'static str,
    message: String,
    reason: &'static str,
    code: u16,
}

#[derive(Serialize)]
struct EmptyMeta {}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(r: Response) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn unauthorized_is_a_status_with_challenge() {
        let r = GatewayError::Unauthenticated(AuthError::MissingToken).into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="kubegate", error="invalid_token""#
        );
        let v = body_json(r).await;
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "Unauthorized");
        assert_eq!(v["code"], 401);
    }

    #[tokio::test]
    async fn too_many_requests_says_when_to_retry() {
        let r = GatewayError::TooManyRequests {
            limit: crate::pipeline::admission::Limit::User,
            message: "slow down".into(),
            retry_after: std::time::Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let v = body_json(r).await;
        assert_eq!(v["reason"], "TooManyRequests");
        assert_eq!(v["code"], 429);
    }

    #[tokio::test]
    async fn upstream_errors_do_not_leak_details() {
        let inner: Box<dyn std::error::Error + Send + Sync> =
            "connect to 10.0.0.1:6443 refused".into();
        let r = GatewayError::UpstreamUnavailable(inner).into_response();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let v = body_json(r).await;
        assert!(!v["message"].as_str().unwrap().contains("10.0.0.1"));
    }
}
