//! The keyboard flow: authorization code with PKCE where the person pastes the code
//! (or the whole redirect URL) at the terminal, for machines whose browser cannot reach
//! a loopback listener. The redirect URI is `--oidc-redirect-url`, by default the
//! out-of-band `urn:ietf:wg:oauth:2.0:oob` that providers show the code for.
//!
//! The code is read from /dev/tty when there is one (kubectl owns stdin and stdout),
//! else from stdin. A pasted URL must carry this sign-in's `state`.

use std::io::BufRead;

use openidconnect::RedirectUrl;

use super::args::SignInArgs;
use super::browser;
use super::cache::CachedTokens;
use super::error::LoginError;
use super::provider::Provider;

/// The out-of-band redirect URI.
pub const OOB: &str = "urn:ietf:wg:oauth:2.0:oob";

/// The code in what the person pasted: a bare code, or a redirect URL whose `state` must
/// be ours.
pub fn parse_pasted(text: &str, state: &str) -> Result<String, LoginError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(LoginError::CallbackWithoutCode);
    }
    let Ok(url) = url::Url::parse(text) else {
        return Ok(text.to_string());
    };
    let query: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    match query.get("state") {
        None => return Err(LoginError::CallbackWithoutState),
        Some(s) if s != state => return Err(LoginError::CallbackWrongState),
        Some(_) => {}
    }
    if let Some(error) = query.get("error") {
        return Err(LoginError::ProviderRefused {
            error: error.clone(),
            description: query.get("error_description").cloned(),
        });
    }
    query
        .get("code")
        .cloned()
        .ok_or(LoginError::CallbackWithoutCode)
}

fn read_line() -> Result<String, LoginError> {
    let mut line = String::new();
    match std::fs::File::open("/dev/tty") {
        Ok(tty) => std::io::BufReader::new(tty).read_line(&mut line),
        Err(_) => std::io::stdin().lock().read_line(&mut line),
    }
    .map_err(LoginError::Prompt)?;
    Ok(line)
}

/// Runs the keyboard flow and returns the verified tokens.
pub async fn sign_in(
    provider: &Provider,
    scopes: &[String],
    args: &SignInArgs,
) -> Result<CachedTokens, LoginError> {
    let redirect = args
        .oidc_redirect_url
        .clone()
        .unwrap_or_else(|| OOB.to_string());
    let redirect = RedirectUrl::new(redirect)
        .map_err(|e| LoginError::BadArgument(format!("--oidc-redirect-url: {e}")))?;
    let authorization = provider.authorize(redirect, scopes).await?;
    let no_browser = SignInArgs {
        skip_open_browser: true,
        ..args.clone()
    };
    browser::open(
        authorization.url.as_str(),
        &format!("to sign in at {}", provider.issuer),
        if args.browser_command.is_some() {
            args
        } else {
            &no_browser
        },
    );
    eprint!("kubegate: paste the code (or the whole address the browser ended on): ");
    let line = tokio::time::timeout(
        args.authentication_timeout,
        tokio::task::spawn_blocking(read_line),
    )
    .await
    .map_err(|_| LoginError::Timeout(args.authentication_timeout))?
    .map_err(|e| LoginError::Prompt(std::io::Error::other(e)))??;
    let code = parse_pasted(&line, authorization.state.secret())?;
    provider.redeem(authorization, code).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pasted_url_must_carry_our_state() {
        assert_eq!(parse_pasted(" abc \n", "s").unwrap(), "abc");
        assert_eq!(
            parse_pasted("http://127.0.0.1:8000/callback?code=abc&state=s", "s").unwrap(),
            "abc"
        );
        assert!(matches!(
            parse_pasted("http://127.0.0.1:8000/callback?code=abc&state=x", "s"),
            Err(LoginError::CallbackWrongState)
        ));
        assert!(matches!(
            parse_pasted("http://127.0.0.1:8000/callback?code=abc", "s"),
            Err(LoginError::CallbackWithoutState)
        ));
        assert!(matches!(
            parse_pasted("\n", "s"),
            Err(LoginError::CallbackWithoutCode)
        ));
    }
}
