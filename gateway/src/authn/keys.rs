//! Loading issuers' signing keys: from a JWKS file, or by OpenID discovery.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kubegate_config::KeySource;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::IssuerVerifier;
use super::jwks::{KeySet, KeySetError, MAX_JWKS_BYTES};

/// How long an issuer has to answer a discovery or JWKS request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often keys are refreshed when the issuer gives no cache lifetime.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Refresh at least this far apart, whatever the issuer says.
const MIN_REFRESH: Duration = Duration::from_secs(60);
/// Refresh at least this often, so a revoked key stops working within this bound.
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// How soon a failed first load is retried.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Why an issuer's keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    /// Reading the JWKS file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Fetching a document failed.
    #[error("cannot fetch {url}: {reason}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The discovery document names another issuer.
    #[error("discovery document at {url} names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch {
        /// The discovery URL.
        url: String,
        /// The configured issuer.
        expected: String,
        /// The issuer in the document.
        found: String,
    },
    /// The document is not a usable JWKS or discovery document.
    #[error("invalid key set from {origin}: {source}")]
    KeySet {
        /// Where it came from.
        origin: String,
        /// Why it is unusable.
        source: KeySetError,
    },
}

/// Fetches an issuer's discovery and JWKS documents.
#[derive(Clone)]
pub struct KeyFetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    allow_http: bool,
}

impl KeyFetcher {
    /// A fetcher for one issuer: it trusts the issuer's `certificate_authority` if one is
    /// configured, the platform's roots otherwise, and speaks plain http only when the
    /// configuration allowed it for a loopback issuer.
    pub fn for_issuer(issuer: &kubegate_config::OidcIssuer) -> std::io::Result<Self> {
        Ok(KeyFetcher {
            client: Client::builder(TokioExecutor::new()).build(issuer_connector(issuer)?),
            allow_http: issuer.insecure_http,
        })
    }

    /// GETs `url` under the fetch timeout, reading at most `limit` bytes: the body and
    /// the response's `max-age`.
    pub(crate) async fn get(
        &self,
        url: &str,
        limit: usize,
    ) -> Result<(Bytes, Option<Duration>), KeyLoadError> {
        let fail = |reason: String| KeyLoadError::Fetch {
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| fail("not a valid URL".into()))?;
        let request = Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| fail(e.to_string()))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| fail("timed out".into()))?
            .map_err(|e| fail(e.to_string()))?;
        if response.status() != StatusCode::OK {
            return Err(fail(format!("status {}", response.status())));
        }
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), limit).collect(),
        )
        .await
        .map_err(|_| fail("timed out reading the body".into()))?
        .map_err(|e| fail(e.to_string()))?;
        Ok((body.to_bytes(), max_age))
    }
}

/// The connector for an issuer's endpoints: it trusts the issuer's `certificate_authority`
/// if one is configured, the platform's roots otherwise, and speaks plain http only when
/// the configuration allowed it for a loopback issuer. Shared by the key fetcher and the
/// sign-in page's calls to the provider.
pub(crate) fn issuer_connector(
    issuer: &kubegate_config::OidcIssuer,
) -> std::io::Result<HttpsConnector<HttpConnector>> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    // An AuthenticationConfiguration file gives its CA inline (certificateAuthority).
    let roots = match (
        &issuer.certificate_authority_pem,
        &issuer.certificate_authority,
    ) {
        (Some(pem), _) => Some(
            crate::listener::tls::roots_from_pem(pem.as_bytes(), "certificateAuthority")
                .map_err(std::io::Error::other)?,
        ),
        (None, Some(ca)) => {
            Some(crate::listener::tls::root_store(&ca.value).map_err(std::io::Error::other)?)
        }
        (None, None) => None,
    };
    let builder = match roots {
        Some(roots) => {
            let tls = rustls::ClientConfig::builder_with_provider(crate::listener::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(std::io::Error::other)?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(tls)
        }
        None => builder.with_provider_and_native_roots(crate::listener::tls::provider())?,
    };
    let connector = if issuer.insecure_http {
        builder.https_or_http().enable_http1().build()
    } else {
        builder.https_only().enable_http1().build()
    };
    Ok(connector)
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// `max-age` from a `Cache-Control` header.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        k.eq_ignore_ascii_case("max-age")
            .then(|| v.trim().parse().ok().map(Duration::from_secs))?
    })
}

/// Fetches `verifier`'s key set from its configured source, with the cache lifetime the
/// JWKS response gave (if any). Counted in the metrics either way.
pub(crate) async fn fetch_key_set(
    verifier: &IssuerVerifier,
    fetcher: &KeyFetcher,
) -> Result<(KeySet, Option<Duration>), KeyLoadError> {
    let result = fetch(verifier, fetcher).await;
    crate::ops::metrics::jwks_fetch(result.is_ok());
    result
}

async fn fetch(
    verifier: &IssuerVerifier,
    fetcher: &KeyFetcher,
) -> Result<(KeySet, Option<Duration>), KeyLoadError> {
    let allowed = &verifier.config().algorithms;
    let keys = match verifier.key_source() {
        KeySource::JwksFile(file) => {
            let path = file.value.display().to_string();
            let bytes =
                tokio::fs::read(&file.value)
                    .await
                    .map_err(|source| KeyLoadError::Read {
                        path: path.clone(),
                        source,
                    })?;
            let keys = KeySet::parse(&bytes, allowed).map_err(|source| KeyLoadError::KeySet {
                origin: path,
                source,
            })?;
            (keys, None)
        }
        KeySource::Discovery(url) => {
            let (doc, _) = fetcher.get(url, 64 * 1024).await?;
            let doc: Discovery =
                serde_json::from_slice(&doc).map_err(|e| KeyLoadError::KeySet {
                    origin: url.clone(),
                    source: KeySetError::Parse(e),
                })?;
            // A discovery document for another issuer would let that issuer's tokens in.
            if doc.issuer != verifier.issuer() {
                return Err(KeyLoadError::IssuerMismatch {
                    url: url.clone(),
                    expected: verifier.issuer().to_string(),
                    found: doc.issuer,
                });
            }
            let scheme_ok = doc.jwks_uri.starts_with("https://")
                || (fetcher.allow_http && doc.jwks_uri.starts_with("http://"));
            if !scheme_ok {
                return Err(KeyLoadError::Fetch {
                    url: doc.jwks_uri,
                    reason: "jwks_uri must be https".into(),
                });
            }
            let (jwks, max_age) = fetcher.get(&doc.jwks_uri, MAX_JWKS_BYTES).await?;
            let keys = KeySet::parse(&jwks, allowed).map_err(|source| KeyLoadError::KeySet {
                origin: doc.jwks_uri.clone(),
                source,
            })?;
            (keys, max_age)
        }
    };
    Ok(keys)
}

/// Loads every issuer's keys at start-up (logging, not failing, on error: readiness
/// reports it) and keeps them fresh in the background (`spawn_key_refresh`).
pub async fn start_key_loading(issuers: &[Arc<IssuerVerifier>]) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for verifier in issuers {
        let first = verifier.refresh_keys().await;
        match &first {
            Ok(_) => info!(issuer = verifier.issuer(), "issuer keys loaded"),
            Err(e) => {
                warn!(issuer = verifier.issuer(), error = %e, "cannot load issuer keys; will retry")
            }
        }
        tasks.push(spawn_key_refresh(verifier.clone(), first.ok()));
    }
    tasks
}

/// Keeps `verifier`'s keys fresh in the background, on the JWKS response's cache
/// lifetime bounded to [`MIN_REFRESH`, `MAX_REFRESH`]; the last good key set stays in
/// use while the issuer is unreachable. `first` is the outcome of the load just done
/// (`Some(max_age)` when it succeeded). The verifier holds the task's handle, so
/// [`IssuerVerifier::retire`] stops it.
pub(crate) fn spawn_key_refresh(
    verifier: Arc<IssuerVerifier>,
    first: Option<Option<Duration>>,
) -> JoinHandle<()> {
    let task = tokio::spawn({
        let verifier = verifier.clone();
        async move {
            let mut last = first;
            loop {
                let wait = match last {
                    Some(max_age) => max_age
                        .unwrap_or(DEFAULT_REFRESH)
                        .clamp(MIN_REFRESH, MAX_REFRESH),
                    None => RETRY_INTERVAL,
                };
                tokio::time::sleep(wait).await;
                last = match verifier.refresh_keys().await {
                    Ok(max_age) => Some(max_age),
                    Err(e) => {
                        warn!(issuer = verifier.issuer(), error = %e, "cannot refresh issuer keys; keeping the last good set");
                        None
                    }
                };
            }
        }
    });
    verifier.set_refresh_task(task.abort_handle());
    task
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("Max-Age=5"), Some(Duration::from_secs(5)));
        assert_eq!(max_age("no-store"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
