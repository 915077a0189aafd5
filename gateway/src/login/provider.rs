//! The OpenID provider as the plugin sees it: discovery, the HTTP client that talks to it,
//! and the checks an ID token passes before anything stores or prints it.
//!
//! The protocol is openidconnect's (PKCE, nonce, signature against the discovered JWKS,
//! issuer, audience, expiry); this module only chooses settings and words the errors. The
//! HTTP client follows no redirects (openidconnect's advice against SSRF) and trusts the
//! system's roots or exactly the `--certificate-authority` file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGrantType, CoreIdToken, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType, CoreTokenResponse,
};
use openidconnect::{
    AdditionalProviderMetadata, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, RevocationUrl, Scope,
    TokenResponse,
};
use serde::{Deserialize, Serialize};

use super::args::ProviderArgs;
use super::cache::CachedTokens;
use super::error::LoginError;

/// Discovery fields openidconnect's core metadata leaves out.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ExtraMetadata {
    /// RFC 8628's endpoint, for the device flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
    /// RFC 7009's endpoint, for `logout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<RevocationUrl>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

/// The discovery document with [`ExtraMetadata`].
pub type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The client as built from discovery: authorization endpoint set, token endpoint from
/// the document.
pub type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// What an ID token's `nonce` must be.
#[derive(Clone, Copy, Debug)]
pub enum NonceCheck<'a> {
    /// A fresh sign-in's: the token must carry exactly this nonce.
    Exact(&'a Nonce),
    /// A refresh's (OpenID Connect Core 12.2: the nonce may be left out, or repeat the
    /// original one) or the device flow's (which sends none).
    AbsentOr(Option<&'a str>),
}

/// A discovered provider and the client registered there.
pub struct Provider {
    /// The HTTP client for every request to the provider.
    pub http: reqwest::Client,
    /// The OpenID client.
    pub client: Client,
    /// The extra discovery fields.
    pub extra: ExtraMetadata,
    /// The issuer, for messages.
    pub issuer: String,
    /// The client id, for messages.
    pub client_id: String,
}

/// One sign-in's authorization request: the URL to open, and what its answer must match
/// and is redeemed with.
pub struct Authorization {
    /// The client with this sign-in's redirect URI, for redeeming the code.
    pub client: Client,
    /// The authorization URL to open.
    pub url: url::Url,
    /// The `state` the answer must carry.
    pub state: CsrfToken,
    /// The `nonce` the ID token must carry.
    pub nonce: Nonce,
    /// The PKCE verifier the code is redeemed with.
    pub verifier: PkceCodeVerifier,
}

/// No single request to the provider may take longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client: no redirects, aws-lc-rs, the system's roots or exactly `ca_file`'s.
pub fn http_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, LoginError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    LoginError::BadArgument(format!(
                        "--certificate-authority {}: {e}",
                        path.display()
                    ))
                })?;
            if certs.is_empty() {
                return Err(LoginError::BadArgument(format!(
                    "--certificate-authority {} holds no certificate",
                    path.display()
                )));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    LoginError::BadArgument(format!(
                        "--certificate-authority {}: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LoginError::BadArgument(format!("TLS settings: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| LoginError::BadArgument(format!("cannot build the HTTP client: {e}")))
}

impl Provider {
    /// Discovers the provider (and its JWKS) named by `args`.
    pub async fn discover(args: &ProviderArgs) -> Result<Self, LoginError> {
        let issuer = args.issuer();
        let http = http_client(args.certificate_authority.as_deref())?;
        let discovery = |reason: String| LoginError::Discovery {
            issuer: issuer.clone(),
            reason,
        };
        let url = IssuerUrl::new(issuer.clone()).map_err(|e| discovery(e.to_string()))?;
        let metadata = Metadata::discover_async(url, &http)
            .await
            .map_err(|e| discovery(error_chain(&e)))?;
        let extra = metadata.additional_metadata().clone();
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(args.oidc_client_id.clone()),
            args.oidc_client_secret.clone().map(ClientSecret::new),
        );
        Ok(Provider {
            http,
            client,
            extra,
            issuer,
            client_id: args.oidc_client_id.clone(),
        })
    }

    /// The authorization request of a sign-in answered at `redirect` (PKCE S256, a fresh
    /// state and nonce, `scopes` besides `openid`, which openidconnect always sends),
    /// probed before it is returned: a wrong client id or a redirect URI the client does
    /// not allow fails now, not after the authentication timeout.
    pub async fn authorize(
        &self,
        redirect: RedirectUrl,
        scopes: &[String],
    ) -> Result<Authorization, LoginError> {
        let client = self.client.clone().set_redirect_uri(redirect.clone());
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        self.probe_authorization(&url, redirect.as_str()).await?;
        Ok(Authorization {
            client,
            url,
            state,
            nonce,
            verifier,
        })
    }

    /// Asks the authorization endpoint for `url` once, without following redirects, before
    /// a person is sent there. Why: a provider that does not know the client id, or whose
    /// client does not allow `redirect`, must not redirect (RFC 6749 4.1.2.1) and shows an
    /// error page instead, so the loopback listener would hear nothing until the
    /// authentication timeout. A 4xx or 5xx answer, or a redirect to `redirect` that
    /// carries an OAuth `error`, ends the sign-in now with a specific error. The probe
    /// carries nothing the browser would not (state, nonce and the PKCE challenge are public
    /// parts of the request); the provider may start a login session for it, which is
    /// abandoned. Any other answer (a login page, a redirect to one) lets the sign-in go on.
    async fn probe_authorization(&self, url: &url::Url, redirect: &str) -> Result<(), LoginError> {
        let response =
            self.http
                .get(url.as_str())
                .send()
                .await
                .map_err(|e| LoginError::Discovery {
                    issuer: self.issuer.clone(),
                    reason: format!("authorization endpoint: {}", error_chain(&e)),
                })?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| url.join(l).ok());
        let mut page = Vec::new();
        if status.is_client_error() || status.is_server_error() {
            let mut response = response;
            while page.len() < PROBE_PAGE_LIMIT
                && let Ok(Some(chunk)) = response.chunk().await
            {
                page.extend_from_slice(&chunk);
            }
            page.truncate(PROBE_PAGE_LIMIT);
        }
        judge_probe(status.as_u16(), location.as_ref(), redirect, &page)
    }

    /// Redeems the `code` that answered `authorization` (with its PKCE verifier, at the
    /// token endpoint, for the redirect URI the code was issued for) and verifies the ID
    /// token against its nonce: the last step of the browser and the keyboard flows.
    pub async fn redeem(
        &self,
        authorization: Authorization,
        code: String,
    ) -> Result<CachedTokens, LoginError> {
        let response = authorization
            .client
            .exchange_code(openidconnect::AuthorizationCode::new(code))
            .map_err(|_| LoginError::Unsupported {
                issuer: self.issuer.clone(),
                what: "token endpoint",
            })?
            .set_pkce_verifier(authorization.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| LoginError::TokenRequest {
                grant: "authorization code",
                reason: error_chain(&e),
            })?;
        self.verify(&response, NonceCheck::Exact(&authorization.nonce), None)
    }

    /// Checks the ID token of a token response and returns what the cache keeps.
    pub fn verify(
        &self,
        response: &CoreTokenResponse,
        nonce: NonceCheck<'_>,
        previous_refresh: Option<&str>,
    ) -> Result<CachedTokens, LoginError> {
        let id_token: &CoreIdToken = response
            .id_token()
            .ok_or_else(|| LoginError::NoIdToken(self.client_id.clone()))?;
        let verifier = self.client.id_token_verifier();
        let (claims, kept) = match nonce {
            NonceCheck::Exact(n) => (id_token.claims(&verifier, n), Some(n.secret().clone())),
            NonceCheck::AbsentOr(expected) => (
                id_token.claims(&verifier, |got: Option<&Nonce>| match (got, expected) {
                    (None, _) => Ok(()),
                    (Some(n), Some(e)) if n.secret() == e => Ok(()),
                    (Some(_), _) => {
                        Err("the ID token carries a nonce this sign-in did not send".to_string())
                    }
                }),
                expected.map(str::to_string),
            ),
        };
        let claims = claims.map_err(|e| LoginError::IdTokenInvalid(error_chain(&e)))?;
        let expires_at = claims.expiration().timestamp();
        let expires_at = u64::try_from(expires_at)
            .map_err(|_| LoginError::IdTokenInvalid("the expiry is before 1970".into()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if expires_at <= now {
            return Err(LoginError::IdTokenInvalid(
                "the ID token has expired".into(),
            ));
        }
        Ok(CachedTokens {
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            id_token: id_token.to_string(),
            expires_at,
            // Rotation: a new refresh token replaces the old; without one the old one stays.
            refresh_token: response
                .refresh_token()
                .map(|r| r.secret().clone())
                .or_else(|| previous_refresh.map(str::to_string)),
            nonce: kept,
        })
    }
}

/// How much of an authorization endpoint's error page [`judge_probe`] reads.
const PROBE_PAGE_LIMIT: usize = 16 * 1024;

/// The OAuth error codes an authorization endpoint's error page may name that point at the
/// client's registration (RFC 6749 4.1.2.1 and 5.2); only these are repeated, never the
/// page's own text.
const REGISTRATION_ERRORS: [&str; 5] = [
    "invalid_client",
    "invalid_redirect_uri",
    "unauthorized_client",
    "invalid_request",
    "invalid_scope",
];

/// Judges the authorization endpoint's answer to the probe in [`Provider::authorize`]:
/// `status`, its `location` (resolved) and the start of its `page`.
pub fn judge_probe(
    status: u16,
    location: Option<&url::Url>,
    redirect: &str,
    page: &[u8],
) -> Result<(), LoginError> {
    if (400..600).contains(&status) {
        let page = String::from_utf8_lossy(page);
        return Err(LoginError::AuthorizationRefused {
            status,
            error: REGISTRATION_ERRORS
                .into_iter()
                .find(|code| page.contains(code)),
            redirect: redirect.to_string(),
        });
    }
    let Some(location) = location else {
        return Ok(());
    };
    let to_us = location
        .as_str()
        .split(['?', '#'])
        .next()
        .is_some_and(|base| base == redirect);
    if !to_us {
        return Ok(());
    }
    let query: std::collections::HashMap<String, String> =
        location.query_pairs().into_owned().collect();
    match query.get("error") {
        Some(error) => Err(LoginError::ProviderRefused {
            error: error.clone(),
            description: query.get("error_description").cloned(),
        }),
        None => Ok(()),
    }
}

/// An error and its causes in one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIRECT: &str = "http://127.0.0.1:8000/callback";

    fn at(text: &str) -> url::Url {
        url::Url::parse(text).unwrap()
    }

    #[test]
    fn the_authorization_probe_refuses_error_pages_and_error_redirects() {
        let err = judge_probe(400, None, REDIRECT, b"<pre>invalid_client</pre>").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("the provider refused the sign-in request (HTTP 400, invalid_client): check --oidc-client-id")
                && text.ends_with(REDIRECT),
            "{text}"
        );
        // Only known codes are repeated, never the page.
        let err = judge_probe(500, None, REDIRECT, b"<script>x</script>").unwrap_err();
        assert!(
            matches!(
                err,
                LoginError::AuthorizationRefused {
                    status: 500,
                    error: None,
                    ..
                }
            ),
            "{err}"
        );
        let back =
            at("http://127.0.0.1:8000/callback?error=invalid_scope&error_description=no&state=s");
        let err = judge_probe(303, Some(&back), REDIRECT, b"").unwrap_err();
        assert!(matches!(err, LoginError::ProviderRefused { .. }), "{err}");

        // A login page, a redirect to one, or a redirect elsewhere carrying `error` (not
        // to this sign-in's listener) let the sign-in go on.
        assert!(judge_probe(200, None, REDIRECT, b"").is_ok());
        let login = at("https://idp.example/interaction/abc");
        assert!(judge_probe(303, Some(&login), REDIRECT, b"").is_ok());
        let other = at("http://127.0.0.1:8001/callback?error=x");
        assert!(judge_probe(302, Some(&other), REDIRECT, b"").is_ok());
        let code = at("http://127.0.0.1:8000/callback?code=c&state=s");
        assert!(judge_probe(303, Some(&code), REDIRECT, b"").is_ok());
    }
}
