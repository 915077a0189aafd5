//! The authorization code flow with PKCE (S256) and a loopback redirect (RFC 8252).
//!
//! A listener on the first free `--listen-address` (127.0.0.1:8000, then :18000, then any
//! port) takes exactly one callback. The first callback decides: one without `state`, with
//! a `state` this run did not send, or with the provider's error ends the sign-in with a
//! specific error and nothing is stored, rather than waiting for a better one (a forged
//! callback is an attack to report, not noise to skip).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use http::StatusCode;
use openidconnect::RedirectUrl;
use tokio::sync::oneshot;

use super::args::SignInArgs;
use super::browser;
use super::cache::CachedTokens;
use super::error::LoginError;
use super::provider::Provider;

/// The redirect path on the loopback listener.
pub const CALLBACK_PATH: &str = "/callback";

/// Binds the first address of `addresses` that is free.
pub async fn bind(addresses: &[SocketAddr]) -> Result<tokio::net::TcpListener, LoginError> {
    let mut last = String::from("no address given");
    for addr in addresses {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "redirect address not available");
                last = format!("{addr}: {e}");
            }
        }
    }
    Err(LoginError::NoCallbackAddress {
        tried: addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        reason: last,
    })
}

type Outcome = Result<String, LoginError>;

struct Callback {
    state: String,
    issuer: String,
    done: Mutex<Option<oneshot::Sender<Outcome>>>,
}

/// Judges one callback's query: the code, or why it is refused.
fn judge(query: &HashMap<String, String>, expected_state: &str, issuer: &str) -> Outcome {
    let state = query.get("state").ok_or(LoginError::CallbackWithoutState)?;
    // Both are ours or an attacker's; a constant-time compare costs nothing here.
    if !constant_time_eq(state.as_bytes(), expected_state.as_bytes()) {
        return Err(LoginError::CallbackWrongState);
    }
    // RFC 9207: a provider that names itself must be the one this sign-in went to.
    if let Some(got) = query.get("iss")
        && got != issuer
    {
        return Err(LoginError::CallbackWrongIssuer {
            got: got.clone(),
            expected: issuer.to_string(),
        });
    }
    if let Some(error) = query.get("error") {
        return Err(LoginError::ProviderRefused {
            error: error.clone(),
            description: query.get("error_description").cloned(),
        });
    }
    query
        .get("code")
        .filter(|c| !c.is_empty())
        .cloned()
        .ok_or(LoginError::CallbackWithoutCode)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn on_callback(
    State(callback): State<Arc<Callback>>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, Html<String>) {
    let outcome = judge(&query, &callback.state, &callback.issuer);
    let page = match &outcome {
        // The code is redeemed after this page is answered: the terminal says whether the
        // sign-in worked (a replayed or expired code fails there), so the page claims no more.
        Ok(_) => (
            StatusCode::OK,
            "kubegate received the sign-in. Go back to the terminal, which shows whether it worked; you can close this window.".to_string(),
        ),
        Err(e) => (StatusCode::BAD_REQUEST, format!("Sign-in refused: {e}")),
    };
    let sender = callback
        .done
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let (status, text) = match sender {
        Some(sender) => {
            let _ = sender.send(outcome);
            page
        }
        None => (
            StatusCode::CONFLICT,
            "This sign-in has already received its callback.".to_string(),
        ),
    };
    (
        status,
        Html(format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>kubegate</title></head><body><p>{}</p></body></html>",
            escape(&text)
        )),
    )
}

/// Signs in through the browser and returns the verified tokens.
pub async fn sign_in(
    provider: &Provider,
    scopes: &[String],
    args: &SignInArgs,
) -> Result<CachedTokens, LoginError> {
    let listener = bind(&args.listen_addresses()?).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| LoginError::NoCallbackAddress {
            tried: "the bound listener".into(),
            reason: e.to_string(),
        })?;
    let redirect = RedirectUrl::new(format!("http://{addr}{CALLBACK_PATH}"))
        .map_err(|e| LoginError::BadArgument(format!("redirect URL: {e}")))?;
    let authorization = provider.authorize(redirect, scopes).await?;

    let (done, outcome) = oneshot::channel();
    let callback = Arc::new(Callback {
        state: authorization.state.secret().clone(),
        issuer: provider.issuer.clone(),
        done: Mutex::new(Some(done)),
    });
    let app = axum::Router::new()
        .route(CALLBACK_PATH, get(on_callback))
        .with_state(callback);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });

    browser::open(
        authorization.url.as_str(),
        &format!("to sign in at {}", provider.issuer),
        args,
    );
    let result = tokio::time::timeout(args.authentication_timeout, outcome).await;
    // The callback's page has been answered; stop listening (bounded, in case a browser
    // keeps its connection open).
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    let code = match result {
        Err(_) => return Err(LoginError::Timeout(args.authentication_timeout)),
        Ok(Err(_)) => return Err(LoginError::Timeout(args.authentication_timeout)),
        Ok(Ok(outcome)) => outcome?,
    };
    provider.redeem(authorization, code).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const I: &str = "https://idp.example";

    #[test]
    fn a_callback_must_carry_our_state() {
        assert!(matches!(
            judge(&q(&[("code", "c")]), "s1", I),
            Err(LoginError::CallbackWithoutState)
        ));
        assert!(matches!(
            judge(&q(&[("code", "c"), ("state", "s2")]), "s1", I),
            Err(LoginError::CallbackWrongState)
        ));
        assert!(matches!(
            judge(&q(&[("state", "s1")]), "s1", I),
            Err(LoginError::CallbackWithoutCode)
        ));
        assert!(matches!(
            judge(&q(&[("state", "s1"), ("error", "access_denied")]), "s1", I),
            Err(LoginError::ProviderRefused { .. })
        ));
        assert!(matches!(
            judge(
                &q(&[("code", "c"), ("state", "s1"), ("iss", "https://evil")]),
                "s1",
                I
            ),
            Err(LoginError::CallbackWrongIssuer { .. })
        ));
        let ok = q(&[("code", "c"), ("state", "s1"), ("iss", I)]);
        assert_eq!(judge(&ok, "s1", I).unwrap(), "c");
        assert_eq!(
            judge(&q(&[("code", "c"), ("state", "s1")]), "s1", I).unwrap(),
            "c"
        );
    }

    #[tokio::test]
    async fn a_taken_port_falls_to_the_next() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let busy = taken.local_addr().unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let got = bind(&[busy, any]).await.unwrap();
        assert_ne!(got.local_addr().unwrap().port(), busy.port());
        let err = bind(&[busy]).await.unwrap_err();
        assert!(matches!(err, LoginError::NoCallbackAddress { .. }), "{err}");
    }
}
