//! The OAuth 2.0 side of the sign-in (RFC 6749 authorization code with PKCE S256, RFC
//! 7636), through the `oauth2` crate: the provider's endpoints from its discovery
//! document, the authorization URL, and the code exchange. The ID token it returns is
//! handed back unverified: the caller verifies it with the gateway's own issuer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kubegate_config::{KeySource, Login, OidcIssuer};
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

use crate::authn::keys::KeyFetcher;

/// Each call to the provider, from connecting to the end of its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest discovery document or token response read.
const MAX_ANSWER: usize = 64 * 1024;
/// The provider's endpoints are looked up again after this long.
const DISCOVERY_TTL: Duration = Duration::from_secs(60 * 60);

/// Why the sign-in could not go on with the provider. Display strings are the page's and
/// the log's: they never hold a code, a token or the client secret.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// Discovery failed, or the provider could not be reached.
    #[error("the identity provider cannot be reached or answered unusably: {0}")]
    Provider(String),
    /// The token endpoint refused the code (expired, already used, another client's).
    #[error("the identity provider refused the sign-in code ({0}); start the sign-in again")]
    CodeRefused(String),
    /// The token endpoint answered without an ID token.
    #[error("the identity provider returned no ID token; is \"openid\" among the scopes?")]
    NoIdToken,
}

/// The `id_token` field of the token response. Its `Debug` leaves the token out.
#[derive(Clone, Serialize, Deserialize)]
pub struct IdTokenField {
    id_token: Option<String>,
}

impl std::fmt::Debug for IdTokenField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdTokenField(..)")
    }
}

impl ExtraTokenFields for IdTokenField {}

type TokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;
type WebClient = oauth2::Client<
    BasicErrorResponse,
    TokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
}

/// A sign-in started: where to send the browser, and what the callback must match.
pub struct Started {
    /// The provider's authorization URL with every parameter.
    pub url: String,
    /// The `state` in it.
    pub state: String,
    /// The `nonce` in it.
    pub nonce: String,
    /// The PKCE verifier of its challenge.
    pub verifier: String,
}

/// The provider as the sign-in page talks to it.
pub struct Provider {
    fetcher: KeyFetcher,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    discovery_url: String,
    issuer: String,
    allow_http: bool,
    client_id: String,
    client_secret: Option<String>,
    redirect_url: String,
    scopes: Vec<String>,
    endpoints: Mutex<Option<(Instant, Arc<WebClient>)>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The failure of one HTTP call to the provider, for the `oauth2` crate.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CallError(String);

impl Provider {
    /// The provider of `issuer` for the page `login` configures; `client_secret` is the
    /// confidential client's secret.
    pub fn new(
        issuer: &OidcIssuer,
        login: &Login,
        client_secret: Option<String>,
    ) -> std::io::Result<Self> {
        let discovery_url = match &issuer.keys {
            KeySource::Discovery(url) => url.clone(),
            KeySource::JwksFile(_) => format!(
                "{}/.well-known/openid-configuration",
                issuer.issuer.trim_end_matches('/')
            ),
        };
        Ok(Provider {
            fetcher: KeyFetcher::for_issuer(issuer)?,
            http: Client::builder(TokioExecutor::new())
                .build(crate::authn::keys::issuer_connector(issuer)?),
            discovery_url,
            issuer: issuer.issuer.clone(),
            allow_http: issuer.insecure_http,
            client_id: login.client_id.clone(),
            client_secret,
            redirect_url: login.redirect_url.clone(),
            scopes: login.scopes.clone(),
            endpoints: Mutex::new(None),
        })
    }

    /// The OAuth client with the provider's endpoints, looked up by discovery at most once
    /// an hour (the document's `issuer` must be ours).
    async fn client(&self) -> Result<Arc<WebClient>, FlowError> {
        if let Ok(guard) = self.endpoints.lock()
            && let Some((at, client)) = guard.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(client.clone());
        }
        let (doc, _) = self
            .fetcher
            .get(&self.discovery_url, MAX_ANSWER)
            .await
            .map_err(|e| FlowError::Provider(e.to_string()))?;
        let doc: Discovery = serde_json::from_slice(&doc)
            .map_err(|e| FlowError::Provider(format!("discovery document: {e}")))?;
        if doc.issuer != self.issuer {
            return Err(FlowError::Provider(format!(
                "the discovery document names another issuer ({:?})",
                doc.issuer
            )));
        }
        let endpoint = |url: &str, what: &str| {
            let ok = url.starts_with("https://") || (self.allow_http && url.starts_with("http://"));
            if ok {
                Ok(url.to_string())
            } else {
                Err(FlowError::Provider(format!("{what} must be https")))
            }
        };
        let bad = |e: url::ParseError| FlowError::Provider(e.to_string());
        let mut client: WebClient = oauth2::Client::new(ClientId::new(self.client_id.clone()))
            .set_auth_uri(
                AuthUrl::new(endpoint(
                    &doc.authorization_endpoint,
                    "authorization_endpoint",
                )?)
                .map_err(bad)?,
            )
            .set_token_uri(
                TokenUrl::new(endpoint(&doc.token_endpoint, "token_endpoint")?).map_err(bad)?,
            )
            .set_redirect_uri(RedirectUrl::new(self.redirect_url.clone()).map_err(bad)?);
        if let Some(secret) = &self.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.clone()));
        }
        let client = Arc::new(client);
        if let Ok(mut guard) = self.endpoints.lock() {
            *guard = Some((Instant::now(), client.clone()));
        }
        Ok(client)
    }

    /// Starts a sign-in: a fresh state, nonce and PKCE pair, and the URL carrying them.
    pub async fn start(&self) -> Result<Started, FlowError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = CsrfToken::new_random().secret().clone();
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(self.scopes.iter().cloned().map(Scope::new))
            .add_extra_param("nonce", nonce.clone())
            .set_pkce_challenge(challenge)
            .url();
        Ok(Started {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce,
            verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges `code` (with the PKCE `verifier`) for the provider's ID token. Only the
    /// ID token is kept from the answer, and only until it is verified.
    pub async fn exchange(&self, code: &str, verifier: &str) -> Result<String, FlowError> {
        let client = self.client().await?;
        // The future owns its client (a handle): a borrow of `self` here would make the
        // handler's future not Send for every lifetime.
        let http = self.http.clone();
        let send = move |request: oauth2::HttpRequest| send(http.clone(), request);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(&send)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(e) => FlowError::CodeRefused(match e.error() {
                    BasicErrorResponseType::InvalidGrant => {
                        "invalid_grant: the code expired, was already used, or is another client's"
                            .to_string()
                    }
                    other => other.to_string(),
                }),
                RequestTokenError::Request(e) => FlowError::Provider(e.to_string()),
                RequestTokenError::Parse(e, _) => {
                    FlowError::Provider(format!("unreadable token response: {}", e.inner()))
                }
                RequestTokenError::Other(e) => FlowError::Provider(e),
            })?;
        response
            .extra_fields()
            .id_token
            .clone()
            .ok_or(FlowError::NoIdToken)
    }
}

/// One HTTP call for the `oauth2` crate: bounded in time and size.
async fn send(
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, CallError> {
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
    let call = async {
        let response = http
            .request(request)
            .await
            .map_err(|e| CallError(format!("token endpoint: {e}")))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| CallError(format!("token endpoint: {e}")))?
            .to_bytes();
        Ok(http::Response::from_parts(parts, body.to_vec()))
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| CallError("token endpoint: timed out".into()))?
}
