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
use tracing::{info, warn};

use super::IssuerVerifier;
use super::jwks::{KeySet, KeySetError, MAX_JWKS_BYTES};

/// How long an issuer has to answer a discovery or JWKS request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often keys from discovery are refreshed, so rotated keys are picked up.
const REFRESH_INTERVAL: Duration = Duration::from_secs(300);
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

/// Fetches issuer documents over HTTPS, trusting the system's CA bundle.
#[derive(Clone)]
pub struct KeyFetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl KeyFetcher {
    /// A fetcher trusting the platform's root certificates.
    pub fn new() -> std::io::Result<Self> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(crate::tls::provider())?
            .https_only()
            .enable_http1()
            .build();
        Ok(KeyFetcher {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    async fn get(&self, url: &str, limit: usize) -> Result<Bytes, KeyLoadError> {
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
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), limit).collect(),
        )
        .await
        .map_err(|_| fail("timed out reading the body".into()))?
        .map_err(|e| fail(e.to_string()))?;
        Ok(body.to_bytes())
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Loads `verifier`'s keys once from its configured source.
pub async fn load_keys(
    verifier: &IssuerVerifier,
    fetcher: &KeyFetcher,
) -> Result<usize, KeyLoadError> {
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
            KeySet::parse(&bytes, allowed).map_err(|source| KeyLoadError::KeySet {
                origin: path,
                source,
            })?
        }
        KeySource::Discovery(url) => {
            let doc = fetcher.get(url, 64 * 1024).await?;
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
            if !doc.jwks_uri.starts_with("https://") {
                return Err(KeyLoadError::Fetch {
                    url: doc.jwks_uri,
                    reason: "jwks_uri must be https".into(),
                });
            }
            let jwks = fetcher.get(&doc.jwks_uri, MAX_JWKS_BYTES).await?;
            KeySet::parse(&jwks, allowed).map_err(|source| KeyLoadError::KeySet {
                origin: doc.jwks_uri.clone(),
                source,
            })?
        }
    };
    let count = keys.len();
    verifier.set_keys(keys);
    Ok(count)
}

/// Loads every issuer's keys at start-up (logging, not failing, on error) and keeps
/// discovery-based ones fresh in the background. The last good key set stays in use
/// while an issuer is unreachable.
pub async fn start_key_loading(issuers: Vec<Arc<IssuerVerifier>>, fetcher: KeyFetcher) {
    for verifier in issuers {
        let fetcher = fetcher.clone();
        match load_keys(&verifier, &fetcher).await {
            Ok(n) => info!(issuer = verifier.issuer(), keys = n, "issuer keys loaded"),
            Err(e) => {
                warn!(issuer = verifier.issuer(), error = %e, "cannot load issuer keys; will retry")
            }
        }
        let refresh = matches!(verifier.key_source(), KeySource::Discovery(_));
        if !refresh && verifier.has_keys() {
            continue;
        }
        tokio::spawn(async move {
            loop {
                let wait = if verifier.has_keys() {
                    REFRESH_INTERVAL
                } else {
                    RETRY_INTERVAL
                };
                tokio::time::sleep(wait).await;
                match load_keys(&verifier, &fetcher).await {
                    Ok(n) => info!(
                        issuer = verifier.issuer(),
                        keys = n,
                        "issuer keys refreshed"
                    ),
                    Err(e) => {
                        warn!(issuer = verifier.issuer(), error = %e, "cannot refresh issuer keys; keeping the last good set")
                    }
                }
                if !refresh && verifier.has_keys() {
                    return;
                }
            }
        });
    }
}
