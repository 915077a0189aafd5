//! The connection to the real kube-apiserver and the gateway's own credential there.
//!
//! Connection details come from a kubeconfig or the in-cluster service account, read with
//! the `kube` crate, so every credential kind it supports works: bearer tokens, token
//! files (re-read as they rotate), exec plugins (re-run before expiry) and client
//! certificates. The upstream's certificate is always verified against the configured CA.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubegate_config::UpstreamSource;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, ServiceExt};

use crate::error::GatewayError;

/// Why the upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The kubeconfig could not be read or has no usable context.
    #[error("cannot load the kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Not running in a pod, or the service account files are missing.
    #[error("cannot load the in-cluster configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    /// The credential or TLS settings cannot be used.
    #[error("cannot use the upstream credential or TLS settings: {0}")]
    Client(#[from] kube::Error),
    /// The cluster URL is not usable.
    #[error("the cluster URL must be https with a host: {0}")]
    Url(String),
}

type CredentialService =
    BoxCloneSyncService<Request<Empty<Bytes>>, Response<Request<Empty<Bytes>>>, BoxError>;

/// Connections and credentials for the kube-apiserver.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    scheme_authority: (http::uri::Scheme, http::uri::Authority),
    /// A path prefix in the cluster URL (some hosted clusters have one).
    base_path: String,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    credential: Option<CredentialService>,
    timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.inner.scheme_authority.1)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Loads the upstream named in the configuration.
    pub async fn load(config: &kubegate_config::Upstream) -> Result<Self, UpstreamError> {
        let kube_config = match &config.source {
            UpstreamSource::Kubeconfig { path, context } => {
                let kubeconfig = Kubeconfig::read_from(&path.value)?;
                let options = KubeConfigOptions {
                    context: context.clone(),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            UpstreamSource::InCluster => kube::Config::incluster()?,
        };
        Self::from_kube_config(&kube_config, config.timeout)
    }

    /// Builds the upstream from a `kube` client configuration.
    pub fn from_kube_config(
        config: &kube::Config,
        timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        let url = &config.cluster_url;
        if url.scheme_str() != Some("https") {
            // The gateway sends a credential on every request: never in clear text.
            return Err(UpstreamError::Url(format!(
                "scheme {:?} is not https",
                url.scheme_str().unwrap_or("")
            )));
        }
        let authority = url
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::Url("no host".into()))?;
        let base_path = url.path().trim_end_matches('/').to_string();

        // ALPN (h2, http/1.1) is set by the connector builder's `enable_all_versions`.
        let tls = config.rustls_client_config()?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let connector = match &config.tls_server_name {
            Some(name) => builder
                .with_server_name_resolver(FixedServerNameResolver::new(
                    name.clone()
                        .try_into()
                        .map_err(|_| UpstreamError::Url("invalid tls-server-name".into()))?,
                ))
                .enable_all_versions()
                .wrap_connector(http),
            None => builder.enable_all_versions().wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);

        let credential = config.auth_layer()?.map(|layer| {
            // The layer only adds a header; a service that hands the request back lets us
            // read that header and reuse kube's token refresh without its client.
            let identity = tower::service_fn(|r: Request<Empty<Bytes>>| async move {
                Ok::<_, BoxError>(Response::new(r))
            });
            BoxCloneSyncService::new(layer.layer(identity))
        });

        Ok(Upstream {
            inner: Arc::new(Inner {
                scheme_authority: (http::uri::Scheme::HTTPS, authority),
                base_path,
                client,
                credential,
                timeout,
            }),
        })
    }

    /// The time the upstream has to send response headers.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The upstream URI for a client's path and query, forwarded byte for byte.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, GatewayError> {
        let (scheme, authority) = &self.inner.scheme_authority;
        let pq = format!("{}{}", self.inner.base_path, path_and_query);
        Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded"))
    }

    /// The gateway's `Authorization` header for the upstream, if it uses a bearer token
    /// (client-certificate credentials live in the TLS configuration instead).
    pub async fn authorization(&self) -> Result<Option<HeaderValue>, GatewayError> {
        let Some(credential) = &self.inner.credential else {
            return Ok(None);
        };
        let request = credential
            .clone()
            .oneshot(Request::new(Empty::new()))
            .await
            .map_err(|e| {
                GatewayError::Internal(format!("cannot obtain the upstream credential: {e}"))
            })?;
        Ok(request.body().headers().get(AUTHORIZATION).cloned())
    }

    /// Asks the upstream for `path` with the gateway's credential: `Ok` on a 2xx answer
    /// within `timeout`. For health checks; the error is safe to show an operator.
    pub async fn probe(&self, path: &str, timeout: Duration) -> Result<(), String> {
        let uri = self.uri_for(path).map_err(|e| e.to_string())?;
        let mut request = Request::get(uri)
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        if let Some(auth) = self.authorization().await.map_err(|e| e.to_string())? {
            request.headers_mut().insert(AUTHORIZATION, auth);
        }
        match tokio::time::timeout(timeout, self.inner.client.request(request)).await {
            Ok(Ok(r)) if r.status().is_success() => Ok(()),
            Ok(Ok(r)) => Err(format!("answered {}", r.status())),
            Ok(Err(_)) => Err("unreachable".into()),
            Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
        }
    }

    /// Sends a prepared request, waiting at most the configured timeout for the headers.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, GatewayError> {
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, self.inner.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(GatewayError::UpstreamUnavailable(Box::new(e))),
            Err(_) => Err(GatewayError::UpstreamTimeout(timeout)),
        }
    }
}
