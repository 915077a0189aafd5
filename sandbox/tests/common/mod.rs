//! A small HTTPS client for the sandbox tests: hyper-util's legacy client over hyper-rustls
//! (aws-lc-rs), trusting only the sandbox CA.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kubegate_sandbox::{Sandbox, SandboxOptions};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;

pub const TOKEN: &str = "sandbox-test-token";

pub const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

pub async fn start() -> Sandbox {
    Sandbox::start(SandboxOptions::new(TOKEN))
        .await
        .expect("sandbox starts")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// ALPN offers h2 and http/1.1; the sandbox picks h2.
    Any,
    Http1,
}

pub struct TestClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    pub token: Option<String>,
}

pub struct Reply {
    pub status: StatusCode,
    pub version: http::Version,
    pub content_type: String,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl TestClient {
    pub fn new(sandbox: &Sandbox, protocol: Protocol) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(sandbox.ca_pem().as_bytes()) {
            roots
                .add(cert.expect("CA PEM parses"))
                .expect("CA is usable");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only();
        let connector = match protocol {
            Protocol::Any => builder.enable_http1().enable_http2().build(),
            Protocol::Http1 => builder.enable_http1().build(),
        };
        TestClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: sandbox.url(),
            token: Some(TOKEN.to_string()),
        }
    }

    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        let response = tokio::time::timeout(Duration::from_secs(20), self.client.request(request))
            .await
            .expect("response in time")
            .expect("request succeeds");
        let status = response.status();
        let version = response.version();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            version,
            content_type,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(
            self.request(Method::GET, path)
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    pub async fn get_accept(&self, path: &str, accept: &str) -> Reply {
        let request = self
            .request(Method::GET, path)
            .header("accept", accept)
            .body(Full::default())
            .unwrap();
        self.send(request).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let request = self
            .request(Method::POST, path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        self.send(request).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(
            self.request(Method::DELETE, path)
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    /// Starts a streaming GET (a watch) and returns the response once its headers arrive.
    pub async fn stream(&self, path: &str, accept: &str) -> WatchStream {
        let request = self
            .request(Method::GET, path)
            .header("accept", accept)
            .body(Full::default())
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(20), self.client.request(request))
            .await
            .expect("watch headers in time")
            .expect("watch request succeeds");
        assert_eq!(response.status(), StatusCode::OK);
        WatchStream {
            body: response.into_body(),
            buffer: Vec::new(),
        }
    }
}

pub struct WatchStream {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl WatchStream {
    /// Reads until the stream ends or fails.
    pub async fn drain(&mut self) {
        while let Some(Ok(_)) = self.body.frame().await {}
    }

    /// The next newline-terminated JSON event, or `None` when the stream ends.
    pub async fn next_event(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).expect("watch line is JSON"));
            }
            let frame = tokio::time::timeout(Duration::from_secs(20), self.body.frame())
                .await
                .expect("watch event in time")?
                .expect("watch body readable");
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }
}

pub fn pod(name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]},
    })
}
