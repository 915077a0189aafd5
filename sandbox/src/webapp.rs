//! A small web application to put behind the service and pod proxy in tests and in dev
//! mode: plain HTTP/1.1 on loopback, a page that loads a stylesheet and a script by
//! relative links (so it works only when the proxy keeps the page's URL and the links
//! below it intact), and a record of every request target exactly as it arrived.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

/// The page at `/`: both links are relative, as in most web apps.
pub const PAGE: &str = "<!doctype html>\n\
<html><head><title>kubegate lab</title>\n\
<link rel=\"stylesheet\" href=\"static/style.css\">\n\
<script src=\"static/app.js\" defer></script>\n\
</head><body><h1 id=\"title\">Hello from the lab</h1>\n\
<p id=\"status\">the script did not run</p></body></html>\n";
/// `/static/style.css`.
pub const STYLESHEET: &str = "h1 { color: rgb(0, 128, 0); }\n";
/// `/static/app.js`.
pub const SCRIPT: &str = "document.getElementById('status').textContent = 'the script ran';\n";

/// A running web app. Dropping it stops it and closes its connections.
pub struct WebApp {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for WebApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebApp").field("addr", &self.addr).finish()
    }
}

impl WebApp {
    /// Binds `127.0.0.1` on a free port and serves in the background. Must be called within
    /// a Tokio runtime.
    pub async fn start() -> std::io::Result<WebApp> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let accept = tokio::spawn(async move {
            // Owned here, so aborting the accept task drops every connection too.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                let service = service_fn(move |request| {
                    let record = record.clone();
                    async move { Ok::<_, Infallible>(answer(&record, &request)) }
                });
                connections.spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(WebApp { addr, seen, accept })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request target received (`/static/app.js`, `//a?x=1`), in arrival order.
    pub fn targets(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for WebApp {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn answer(seen: &Mutex<Vec<String>>, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), ToString::to_string);
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(target.clone());
    let (kind, body) = match request.uri().path() {
        "/" => ("text/html; charset=utf-8", PAGE.to_owned()),
        "/static/style.css" => ("text/css", STYLESHEET.to_owned()),
        "/static/app.js" => ("text/javascript", SCRIPT.to_owned()),
        // Every other path says what it was asked for, so tests see the exact target.
        _ => ("text/plain", format!("you asked for {target}\n")),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::OK;
    if let Ok(kind) = header::HeaderValue::from_str(kind) {
        response.headers_mut().insert(header::CONTENT_TYPE, kind);
    }
    response
}
