//! The device authorization grant (RFC 8628), for a shell without a browser: the
//! verification URI and the user code go to stderr (and to the browser command, when one
//! is set), then the token endpoint is polled at the provider's interval until the person
//! has signed in elsewhere, the code expires or `--authentication-timeout` passes.

use openidconnect::Scope;
use openidconnect::core::CoreDeviceAuthorizationResponse;

use super::args::SignInArgs;
use super::browser;
use super::cache::CachedTokens;
use super::error::LoginError;
use super::provider::{NonceCheck, Provider, error_chain};

/// Runs the device flow and returns the verified tokens.
pub async fn sign_in(
    provider: &Provider,
    scopes: &[String],
    args: &SignInArgs,
) -> Result<CachedTokens, LoginError> {
    let endpoint = provider
        .extra
        .device_authorization_endpoint
        .clone()
        .ok_or_else(|| LoginError::Unsupported {
            issuer: provider.issuer.clone(),
            what: "device authorization endpoint (use --grant-type authcode or authcode-keyboard)",
        })?;
    let client = provider
        .client
        .clone()
        .set_device_authorization_url(endpoint);
    let mut request = client.exchange_device_code();
    for scope in scopes.iter().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let details: CoreDeviceAuthorizationResponse = request
        .request_async(&provider.http)
        .await
        .map_err(|e| LoginError::TokenRequest {
            grant: "device authorization request",
            reason: error_chain(&e),
        })?;
    eprintln!(
        "kubegate: to sign in at {}, open {} and enter the code {}",
        provider.issuer,
        details.verification_uri().as_str(),
        details.user_code().secret()
    );
    if args.browser_command.is_some()
        && let Some(complete) = details.verification_uri_complete()
    {
        browser::open(complete.secret(), "to confirm the code", args);
    }
    let response = client
        .exchange_device_access_token(&details)
        .map_err(|_| LoginError::Unsupported {
            issuer: provider.issuer.clone(),
            what: "token endpoint",
        })?
        .request_async(
            &provider.http,
            tokio::time::sleep,
            Some(args.authentication_timeout),
        )
        .await
        .map_err(|e| LoginError::TokenRequest {
            grant: "device code",
            reason: error_chain(&e),
        })?;
    provider.verify(&response, NonceCheck::AbsentOr(None), None)
}
