//! The OpenID provider as the plugin sees it: discovery, the HTTP client that talks to it,
//! and the checks an ID token passes before anything stores or prints it.
//!
//! The protocol is openidconnect's (PKCE, nonce, signature against the discovered JWKS,
//! issuer, audience, expiry); this module only chooses settings and words the errors. The
//! HTTP client follows no redirects (openidconnect's advice against SSRF) and trusts the
//! system's roots or exactly the `--certificate-authority` file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType,
    CoreIdToken, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType, CoreTokenResponse,
};
use openidconnect::{
    AdditionalProviderMetadata, ClientId, ClientSecret, DeviceAuthorizationUrl, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, ProviderMetadata,
    RevocationUrl, TokenResponse,
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

    /// Redeems an authorization `code` (with its PKCE verifier, at the token endpoint of
    /// `client`, which carries the redirect URI the code was issued for) and verifies the
    /// ID token against `nonce`: the last step of the browser and the keyboard flows.
    pub async fn redeem_code(
        &self,
        client: &Client,
        code: String,
        verifier: openidconnect::PkceCodeVerifier,
        nonce: &openidconnect::Nonce,
    ) -> Result<CachedTokens, LoginError> {
        let response = client
            .exchange_code(openidconnect::AuthorizationCode::new(code))
            .map_err(|_| LoginError::Unsupported {
                issuer: self.issuer.clone(),
                what: "token endpoint",
            })?
            .set_pkce_verifier(verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| LoginError::TokenRequest {
                grant: "authorization code",
                reason: error_chain(&e),
            })?;
        self.verify(&response, NonceCheck::Exact(nonce), None)
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
