//! `kubegate logout`: delete the cached tokens of one kubeconfig context (or all of
//! them) and revoke each refresh token at the provider's revocation endpoint (RFC 7009)
//! where discovery names one. Revocation is best effort and reported; the local tokens
//! are deleted either way, so a provider that is down cannot keep a user signed in here.

use clap::Parser;
use openidconnect::RefreshToken;
use openidconnect::core::CoreRevocableToken;

use super::args::{GetTokenArgs, LogoutArgs, ProviderArgs};
use super::cache::{CacheDir, CachedTokens};
use super::error::LoginError;
use super::kubeconfig;
use super::plugin::{self, Environment};
use super::provider::{Provider, error_chain};

/// Parses a kubeconfig exec user's `get-token ...` arguments.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct ExecArgs {
    #[command(subcommand)]
    command: ExecCommand,
}

#[derive(clap::Subcommand)]
enum ExecCommand {
    GetToken(GetTokenArgs),
}

/// The provider flags a kubeconfig context's exec user passes to `get-token`.
pub fn context_provider(env: &Environment, context: &str) -> Result<ProviderArgs, LoginError> {
    let path = kubeconfig::path(env)?;
    let args = kubeconfig::context_plugin_args(&path, context)?;
    let parsed = ExecArgs::try_parse_from(&args).map_err(|e| LoginError::Kubeconfig {
        path: path.clone(),
        reason: format!("the get-token arguments of context `{context}`: {e}"),
    })?;
    let ExecCommand::GetToken(get_token) = parsed.command;
    Ok(get_token.provider)
}

async fn revoke(tokens: &CachedTokens, provider: &ProviderArgs) -> Result<bool, LoginError> {
    let Some(refresh) = &tokens.refresh_token else {
        return Ok(false);
    };
    let idp = Provider::discover(provider).await?;
    let Some(url) = idp.extra.revocation_endpoint.clone() else {
        return Ok(false);
    };
    if url.url().scheme() == "http" {
        return revoke_on_loopback(&idp, url.url(), refresh).await;
    }
    idp.client
        .clone()
        .set_revocation_url(url)
        .revoke_token(CoreRevocableToken::RefreshToken(RefreshToken::new(
            refresh.clone(),
        )))
        .map_err(|e| LoginError::TokenRequest {
            grant: "revocation",
            reason: e.to_string(),
        })?
        .request_async(&idp.http)
        .await
        .map_err(|e| LoginError::TokenRequest {
            grant: "revocation",
            reason: error_chain(&e),
        })?;
    Ok(true)
}

/// RFC 7009 over plain http, which oauth2 refuses: only for a provider on this machine
/// (an `insecure_http`-style test or dev issuer), where nothing crosses a network.
async fn revoke_on_loopback(
    idp: &Provider,
    url: &url::Url,
    refresh: &str,
) -> Result<bool, LoginError> {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if !loopback {
        return Err(LoginError::TokenRequest {
            grant: "revocation",
            reason: format!("the revocation endpoint {url} is plain http off this machine"),
        });
    }
    let form = [
        ("token", refresh),
        ("token_type_hint", "refresh_token"),
        ("client_id", idp.client_id.as_str()),
    ];
    let response = idp
        .http
        .post(url.clone())
        .form(&form)
        .send()
        .await
        .map_err(|e| LoginError::TokenRequest {
            grant: "revocation",
            reason: error_chain(&e),
        })?;
    if !response.status().is_success() {
        return Err(LoginError::TokenRequest {
            grant: "revocation",
            reason: format!("HTTP {}", response.status()),
        });
    }
    Ok(true)
}

/// Signs out of one cache entry: revoke (best effort), then delete.
async fn sign_out(dir: &CacheDir, key: &str, provider: &ProviderArgs) -> Result<(), LoginError> {
    // A corrupt or foreign file is deleted without being trusted for anything.
    let tokens = dir.read(key).ok().flatten();
    if let Some(tokens) = &tokens {
        match revoke(tokens, provider).await {
            Ok(true) => eprintln!("kubegate: revoked the refresh token at {}", tokens.issuer),
            Ok(false) => {}
            Err(e) => eprintln!("kubegate: could not revoke the refresh token: {e}"),
        }
    }
    if dir.remove(key)? {
        eprintln!(
            "kubegate: deleted the cached tokens {}",
            dir.token_file(key).display()
        );
    }
    Ok(())
}

/// `kubegate logout`.
pub async fn logout(args: &LogoutArgs, env: &Environment) -> Result<(), LoginError> {
    if let Some(context) = &args.context {
        let provider = context_provider(env, context)?;
        let dir = CacheDir::open(&env.cache_dir(provider.token_cache_dir.as_deref())?)?;
        let key = plugin::cache_key(&provider);
        sign_out(&dir, &key, &provider).await?;
        return Ok(());
    }
    let dir = CacheDir::open(&env.cache_dir(args.token_cache_dir.as_deref())?)?;
    for key in dir.keys()? {
        let tokens = dir.read(&key).ok().flatten();
        // What the file names is enough to find the revocation endpoint (system roots).
        let provider = tokens.as_ref().and_then(|t| {
            Some(ProviderArgs {
                oidc_issuer_url: url::Url::parse(&t.issuer).ok()?,
                oidc_client_id: t.client_id.clone(),
                oidc_client_secret: None,
                oidc_extra_scope: vec![],
                certificate_authority: None,
                token_cache_dir: None,
            })
        });
        match provider {
            Some(provider) => sign_out(&dir, &key, &provider).await?,
            None => {
                dir.remove(&key)?;
            }
        }
    }
    Ok(())
}
