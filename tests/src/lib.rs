//! kubegate's integration-test harness: the real gateway, started in-process on
//! `127.0.0.1:0` in front of the in-process sandbox API server, with a test identity
//! provider whose keys and tokens the tests control, and a TLS client that trusts the
//! gateway's test CA.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubegate_sandbox::{Sandbox, SandboxOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use serde_json::{Value, json};

pub mod browser;
pub mod oidc_provider;

/// The issuer URL of the test identity provider.
pub const ISSUER: &str = "https://issuer.kubegate.test";
/// The audience the gateway is configured to accept.
pub const AUDIENCE: &str = "kubegate";
/// The token the gateway presents to the sandbox.
pub const UPSTREAM_TOKEN: &str = "gateway-upstream-token";

/// The discovery rule every test policy starts with: the API's discovery paths, the OpenAPI
/// documents and `/version` for every authenticated user, as kubectl needs them.
#[doc(hidden)]
#[macro_export]
macro_rules! discovery_rule {
    () => {
        r#"
[[rule]]
name = "discovery"
effect = "allow"
subjects = { authenticated = true }
paths = [
  { path = "/api", prefix = true, methods = ["get"] },
  { path = "/apis", prefix = true, methods = ["get"] },
  { path = "/openapi", prefix = true, methods = ["get"] },
  { path = "/version", methods = ["get"] },
]
"#
    };
}

/// The start of every test policy, as a literal for `concat!`: deny by default, then the
/// discovery rule every user needs; the test's own rules follow.
#[macro_export]
macro_rules! policy_preamble {
    () => {
        concat!("default = \"deny\"\n", $crate::discovery_rule!())
    };
}

/// A policy for the tests: discovery for everyone, `devs` read and write pods in `dev`,
/// nobody reads secrets.
pub const TEST_POLICY: &str = concat!(
    policy_preamble!(),
    r#"
[[rule]]
name = "devs-pods"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [{ api_groups = [""], resources = ["pods", "configmaps"], namespaces = ["dev"], verbs = ["get", "list", "watch", "create", "delete"] }]

[[rule]]
name = "no-secrets"
effect = "deny"
subjects = { authenticated = true }
resources = [{ api_groups = ["*"], resources = ["secrets"], verbs = ["*"] }]
"#
);

/// A certificate authority and a server certificate it signed, as PEM.
pub struct TestPki {
    /// The CA certificate.
    pub ca_pem: String,
    /// The server certificate (SANs 127.0.0.1 and localhost).
    pub cert_pem: String,
    /// The server key.
    pub key_pem: String,
}

impl TestPki {
    /// Generates a fresh CA and server certificate.
    pub fn generate() -> Self {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "kubegate test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut leaf = CertificateParams::default();
        leaf.subject_alt_names = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().expect("dns name")),
        ];
        let cert = leaf.signed_by(&key, &issuer).expect("server cert");
        TestPki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A test identity provider: one signing key, a JWKS, and tokens on demand.
pub struct TestIssuer {
    /// The `iss` it writes.
    pub issuer: String,
    /// The key id in its JWKS and token headers.
    pub kid: String,
    /// The signature algorithm.
    pub alg: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
    /// The public key as PEM (for the HMAC-with-public-key attack test).
    pub public_pem: String,
}

impl TestIssuer {
    /// An RS256 issuer.
    pub fn rs256() -> Self {
        Self::generate(&rcgen::PKCS_RSA_SHA256, Algorithm::RS256)
    }

    /// An ES256 issuer.
    pub fn es256() -> Self {
        Self::generate(&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256)
    }

    fn generate(sig: &'static rcgen::SignatureAlgorithm, alg: Algorithm) -> Self {
        let pair = KeyPair::generate_for(sig).expect("signing key");
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()),
            _ => EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()),
        }
        .expect("encoding key");
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("jwk");
        let kid = format!(
            "test-{}",
            &URL_SAFE_NO_PAD.encode(pair.public_key_raw())[..12]
        );
        jwk.common.key_id = Some(kid.clone());
        TestIssuer {
            issuer: ISSUER.to_string(),
            kid,
            alg,
            key,
            jwk,
            public_pem: pair.public_key_pem(),
        }
    }

    /// The JWKS document.
    pub fn jwks(&self) -> String {
        serde_json::to_string(&JwkSet {
            keys: vec![self.jwk.clone()],
        })
        .expect("jwks json")
    }

    /// Standard claims for `user` in `groups`, valid for an hour.
    pub fn claims(&self, user: &str, groups: &[&str]) -> Value {
        let now = now();
        json!({
            "iss": self.issuer, "aud": AUDIENCE, "sub": user, "groups": groups,
            "iat": now, "nbf": now, "exp": now + 3600,
        })
    }

    /// The private key, for tokens with hand-made headers.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.key
    }

    /// Signs arbitrary claims with this issuer's key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }

    /// A valid token for `user` in `groups`.
    pub fn token(&self, user: &str, groups: &[&str]) -> String {
        self.sign(&self.claims(user, groups))
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Builds an unsigned-style token from raw header and claims JSON and a raw signature.
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// How to set up a test gateway.
pub struct GatewayOptions {
    /// The policy text.
    pub policy: String,
    /// The upstream timeout.
    pub upstream_timeout: Duration,
    /// Point the gateway at a kubeconfig whose server is this URL instead of the
    /// sandbox (for unreachable-upstream tests).
    pub upstream_override: Option<String>,
    /// Use an ES256 identity provider instead of RS256.
    pub es256: bool,
    /// Replaces the `[[auth.oidc]]` table (for tests against another issuer).
    pub oidc_toml: Option<String>,
    /// Files written into the gateway's directory before its configuration is loaded:
    /// (name, contents), for files the configuration names (an authentication config).
    pub files: Vec<(String, String)>,
    /// A PEM CA bundle for client certificates (`[listen] client_ca`).
    pub client_ca_pem: Option<String>,
    /// A `[limits]` table body, e.g. `stream_idle_timeout = "1s"`.
    pub limits_toml: Option<String>,
    /// Extra lines for the `[listen]` table, e.g. `idle_timeout = "1s"`.
    pub listen_toml: Option<String>,
    /// Extra lines for the `[audit]` table (which always has `file = "audit.log"`).
    pub audit_toml: Option<String>,
    /// Further tables, e.g. `[recording]`, appended after the rest.
    pub tables_toml: Option<String>,
    /// Serve connections on the test's own runtime instead of connection threads: for
    /// tests that pause the clock, which only the test's runtime sees.
    pub on_test_runtime: bool,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            policy: TEST_POLICY.to_string(),
            upstream_timeout: Duration::from_secs(5),
            upstream_override: None,
            es256: false,
            oidc_toml: None,
            files: Vec::new(),
            client_ca_pem: None,
            limits_toml: None,
            listen_toml: None,
            audit_toml: None,
            tables_toml: None,
            on_test_runtime: false,
        }
    }
}

/// A running gateway in front of a running sandbox.
pub struct TestGateway {
    /// The sandbox upstream.
    pub sandbox: Sandbox,
    /// The gateway.
    pub running: kubegate::Running,
    /// The identity provider.
    pub issuer: TestIssuer,
    /// The gateway's test PKI.
    pub pki: TestPki,
    /// The directory holding config, certificates and keys.
    pub dir: tempfile::TempDir,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A response, collected.
#[derive(Debug)]
pub struct Collected {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Collected {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl TestGateway {
    /// Starts a sandbox and a gateway with default options.
    pub async fn start() -> Self {
        Self::start_with(GatewayOptions::default()).await
    }

    /// Starts a sandbox and a gateway.
    pub async fn start_with(options: GatewayOptions) -> Self {
        kubegate::app::install_crypto_provider();
        let sandbox = Sandbox::start(SandboxOptions::new(UPSTREAM_TOKEN))
            .await
            .expect("sandbox");
        let issuer = if options.es256 {
            TestIssuer::es256()
        } else {
            TestIssuer::rs256()
        };
        let pki = TestPki::generate();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write(d, "tls.crt", &pki.cert_pem);
        write(d, "tls.key", &pki.key_pem);
        write(d, "jwks.json", &issuer.jwks());
        write(d, "policy.toml", &options.policy);
        for (name, contents) in &options.files {
            write(d, name, contents);
        }
        let kubeconfig = d.join("upstream.kubeconfig");
        sandbox.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        if let Some(url) = &options.upstream_override {
            let text = std::fs::read_to_string(&kubeconfig).expect("read kubeconfig");
            let text = text.replace(&sandbox.url(), url);
            std::fs::write(&kubeconfig, text).expect("write kubeconfig");
        }
        let mut listen = options.listen_toml.clone().unwrap_or_default();
        if let Some(pem) = &options.client_ca_pem {
            write(d, "client-ca.crt", pem);
            listen.push_str("\nclient_ca = \"client-ca.crt\"\n");
        }
        let mut config = TestConfig::new("kubeconfig = \"upstream.kubeconfig\"");
        config.upstream_timeout = options.upstream_timeout;
        if let Some(oidc) = &options.oidc_toml {
            config.oidc = oidc.clone();
        }
        config.listen = listen;
        config.limits = options.limits_toml.clone();
        config.admin = true;
        config.audit_file = Some("audit.log".into());
        config.audit = options.audit_toml.clone().unwrap_or_default();
        config.tables = options.tables_toml.clone().unwrap_or_default();
        let config_text = config.render();
        let config_path = write(d, "kubegate.toml", &config_text);
        let config = kubegate_config::load(&config_path).expect("config");
        let mut prepared = kubegate::app::prepare(&config)
            .await
            .expect("gateway prepares");
        if options.on_test_runtime {
            prepared.set_connection_threads(0);
        }
        let app = prepared.router();
        let running = prepared.start(app).await.expect("gateway starts");
        let client = https_client(&pki.ca_pem, false);
        TestGateway {
            sandbox,
            running,
            issuer,
            pki,
            dir,
            client,
        }
    }

    /// The audit records written so far (JSON lines of `audit.log`).
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        audit_records_in(self.dir.path())
    }

    /// The gateway's base URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.running.addr().port())
    }

    /// GET on the plain-HTTP admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let addr = self.running.admin_addr().expect("admin listener");
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let request = Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = client.request(request).await.expect("admin answers");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends a request with `token` (if any) and extra headers, collecting the response.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Collected {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.url(), path));
        if let Some(t) = token {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(Bytes::new())).expect("request");
        collect(&self.client, request).await
    }

    /// GET with a token.
    pub async fn get(&self, path: &str, token: &str) -> Collected {
        self.request(Method::GET, path, Some(token), &[]).await
    }

    /// Writes a client kubeconfig for `token` and returns its path.
    pub fn client_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.pki.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gw\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\ncontexts:\n- name: gw\n  context:\n    cluster: gw\n    user: u\ncurrent-context: gw\nusers:\n- name: u\n  user:\n    token: {token}\n",
            url = self.url()
        );
        write(self.dir.path(), &format!("{name}.kubeconfig"), &text)
    }
}

/// A trust store holding the certificates of `ca_pem`.
pub fn roots(ca_pem: &str) -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("add root");
    }
    roots
}

/// A rustls client configuration on aws-lc-rs, before roots and client auth.
fn client_config() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
}

/// A raw TLS connector trusting `ca_pem` (for connection-level tests).
pub fn tls_connector(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut tls = client_config()
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    // The gateway serves HTTP/2 only when ALPN agreed on it, as the API server does.
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
}

/// An HTTPS client trusting `ca_pem`; `http1_only` forces HTTP/1.1 (for headers that
/// HTTP/2 forbids, like `Connection`).
pub fn https_client(
    ca_pem: &str,
    http1_only: bool,
) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let tls = client_config()
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if http1_only {
        builder.enable_http1().build()
    } else {
        builder.enable_all_versions().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// An HTTPS client (HTTP/1.1) trusting `ca_pem` that presents a client certificate.
pub fn https_client_with_cert(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("client cert pem");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let tls = client_config()
        .with_root_certificates(roots(ca_pem))
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends a request and collects the whole response.
pub async fn collect(
    client: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Collected {
    let response = client
        .request(request)
        .await
        .expect("request reaches the gateway");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Collected {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A response read off a raw connection by [`read_response`], for tests that speak
/// HTTP/1.1 by hand (upgrades, headers a client library would not send).
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body (empty for a 101: what follows its head is the new protocol's).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Every value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Reads one HTTP/1.1 response, its body by Content-Length or chunked; within 10 s.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(conn: &mut S) -> RawResponse {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(Duration::from_secs(10), conn.read_u8())
            .await
            .expect("a response within 10 s")
            .expect("a response head");
        head.push(byte);
    }
    let head = String::from_utf8(head).expect("a UTF-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut response = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 101 {
        return response;
    }
    if let Some(length) = response.header("content-length").first() {
        let mut body = vec![0; length.parse().expect("a length")];
        conn.read_exact(&mut body).await.expect("the body");
        response.body = body;
    } else if response.header("transfer-encoding") == ["chunked"] {
        loop {
            let mut size_line = Vec::new();
            while !size_line.ends_with(b"\r\n") {
                size_line.push(conn.read_u8().await.expect("a chunk size"));
            }
            let size = std::str::from_utf8(&size_line)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .expect("a hex chunk size");
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk).await.expect("a chunk");
            if size == 0 {
                break;
            }
            response.body.extend_from_slice(&chunk[..size]);
        }
    }
    response
}

/// Waits until `condition` holds, checking every 20 ms for at most 10 s; panics naming
/// `what` otherwise. For effects that land in another task (an audit record, a gauge).
pub async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TLS connection to the gateway offering only HTTP/1.1 (as an upgrading client does),
/// for tests that write requests by hand.
pub async fn connect_http1(
    gw: &TestGateway,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = client_config()
        .with_root_certificates(roots(&gw.pki.ca_pem))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.running.addr())
        .await
        .expect("connect to the gateway");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("127.0.0.1".try_into().expect("server name"), tcp)
        .await
        .expect("TLS handshake with the gateway")
}

/// The `[[auth.oidc]]` table for the test identity provider: [`ISSUER`], [`AUDIENCE`],
/// keys from `jwks.json`, groups from the `groups` claim, these algorithms.
pub fn test_issuer_toml(algorithms: &[&str]) -> String {
    let algorithms = algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[auth.oidc]]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\njwks_file = \"jwks.json\"\ngroups_claim = \"groups\"\nalgorithms = [{algorithms}]\n"
    )
}

/// A gateway configuration for tests, rendered as `kubegate.toml` text: the files it names
/// (`tls.crt`, `tls.key`, `policy.toml`, and `jwks.json` for [`test_issuer_toml`]) are the
/// test's to write beside it. One template for every test that starts a gateway.
pub struct TestConfig {
    /// The `[upstream]` table's source line(s): `kubeconfig = "..."` or `in_cluster = true`.
    pub upstream: String,
    /// `[upstream] timeout`.
    pub upstream_timeout: Duration,
    /// The issuer tables (default: [`test_issuer_toml`] with RS256 and ES256).
    pub oidc: String,
    /// `[listen] port` (default 0: an ephemeral port the running gateway reports).
    pub port: u16,
    /// Extra `[listen]` lines.
    pub listen: String,
    /// The `[limits]` table's body, if any.
    pub limits: Option<String>,
    /// An `[admin]` listener on a free loopback port.
    pub admin: bool,
    /// `[audit] file`, if any (relative to the configuration).
    pub audit_file: Option<String>,
    /// Extra `[audit]` lines.
    pub audit: String,
    /// An `[auth]` table's body, if any.
    pub auth: Option<String>,
    /// Further tables (`[recording]` ...), appended last.
    pub tables: String,
}

impl TestConfig {
    /// A configuration in front of the upstream that `upstream` names.
    pub fn new(upstream: impl Into<String>) -> Self {
        TestConfig {
            upstream: upstream.into(),
            upstream_timeout: Duration::from_secs(10),
            oidc: test_issuer_toml(&["RS256", "ES256"]),
            port: 0,
            listen: String::new(),
            limits: None,
            admin: false,
            audit_file: None,
            audit: String::new(),
            auth: None,
            tables: String::new(),
        }
    }

    /// The `kubegate.toml` text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "policy = \"policy.toml\"\n[listen]\naddress = \"127.0.0.1\"\nport = {port}\ntls_cert = \"tls.crt\"\ntls_key = \"tls.key\"\n{listen}\n[upstream]\n{upstream}\ntimeout = \"{timeout}ms\"\n{oidc}\n",
            port = self.port,
            listen = self.listen,
            upstream = self.upstream,
            timeout = self.upstream_timeout.as_millis(),
            oidc = self.oidc,
        );
        if let Some(auth) = &self.auth {
            text.push_str(&format!("[auth]\n{auth}\n"));
        }
        if self.admin {
            text.push_str("[admin]\naddress = \"127.0.0.1\"\nport = 0\n");
        }
        if self.audit_file.is_some() || !self.audit.is_empty() {
            text.push_str("[audit]\n");
            if let Some(file) = &self.audit_file {
                text.push_str(&format!("file = {file:?}\n"));
            }
            text.push_str(&self.audit);
            text.push('\n');
        }
        if let Some(limits) = &self.limits {
            text.push_str(&format!("[limits]\n{limits}\n"));
        }
        text.push_str(&self.tables);
        text
    }
}

/// Writes `pki`'s server certificate and key and `policy` into `dir`, and returns the
/// start of a kubegate.toml that uses them: the policy and a TLS listener on an ephemeral
/// loopback port.
pub fn write_listener_files(dir: &Path, pki: &TestPki, policy: &str) -> &'static str {
    write(dir, "tls.crt", &pki.cert_pem);
    write(dir, "tls.key", &pki.key_pem);
    write(dir, "policy.toml", policy);
    "policy = \"policy.toml\"\n[listen]\naddress = \"127.0.0.1\"\nport = 0\n\
     tls_cert = \"tls.crt\"\ntls_key = \"tls.key\"\n"
}

/// Writes a file into `dir`.
pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path
}

/// The real kubectl. Tests that need it fail (never skip) when it is missing.
pub fn kubectl() -> PathBuf {
    let path =
        PathBuf::from(std::env::var_os("KUBECTL").unwrap_or_else(|| "/usr/bin/kubectl".into()));
    assert!(
        path.is_file(),
        "kubectl not found at {}: install kubectl 1.32 there (or set KUBECTL); these tests need the real client",
        path.display()
    );
    path
}

/// Runs kubectl with `kubeconfig`, returning (success, stdout, stderr).
pub async fn run_kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(kubectl());
    command
        .args(args)
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap_or(Path::new("/tmp")))
        .kill_on_drop(true);
    output_within_a_minute(command).await
}

/// The lines of `text` that end in a newline: a file's writer may be half-way through the
/// last one.
fn whole_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
}

/// The audit records in `dir/audit.log` (a gateway's test directory, also after shutdown).
pub fn audit_records_in(dir: &Path) -> Vec<serde_json::Value> {
    whole_lines(&std::fs::read_to_string(dir.join("audit.log")).unwrap_or_default())
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// The stages recorded for audit ID `id` in `dir/audit.log`, in order.
pub fn audit_stages_in(dir: &Path, id: &str) -> Vec<String> {
    audit_records_in(dir)
        .iter()
        .filter(|r| r["auditID"] == id)
        .map(|r| r["stage"].as_str().expect("stage").to_string())
        .collect()
}

/// Every whole line of the audit trail in `dir`, oldest first: the rotated backups
/// (`audit.log.N` ... `audit.log.1`) and then `audit.log`.
pub fn audit_trail_lines_in(dir: &Path) -> Vec<String> {
    let backups = (1..)
        .map(|i| dir.join(format!("audit.log.{i}")))
        .take_while(|p| p.exists())
        .collect::<Vec<_>>();
    backups
        .iter()
        .rev()
        .chain(std::iter::once(&dir.join("audit.log")))
        .flat_map(|p| {
            whole_lines(&std::fs::read_to_string(p).unwrap_or_default())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Creates pod `name` (one busybox container) in `namespace` through the gateway as the
/// holder of `token`, asserting 201: the target of exec, attach and log tests.
pub async fn create_pod(gw: &TestGateway, token: &str, namespace: &str, name: &str) {
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    });
    let request = Request::post(format!("{}/api/v1/namespaces/{namespace}/pods", gw.url()))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(pod.to_string())))
        .expect("request");
    let r = collect(&gw.client, request).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// `kubectl auth can-i VERB RESOURCE -n NAMESPACE` with `kubeconfig`: its yes or no (any
/// other answer fails the test).
pub async fn kubectl_can_i(kubeconfig: &Path, verb: &str, resource: &str, namespace: &str) -> bool {
    let (ok, stdout, stderr) = run_kubectl(
        kubeconfig,
        &["auth", "can-i", verb, resource, "-n", namespace],
    )
    .await;
    match stdout.split_whitespace().next() {
        Some("yes") if ok => true,
        Some("no") if !ok => false,
        _ => panic!("can-i {verb} {resource} -n {namespace}: {stdout} {stderr}"),
    }
}

/// The rows of `kubectl auth can-i --list`: (resource as kubectl prints it, e.g. `pods` or
/// `deployments.apps`; resource names; verbs). Non-resource rows are left out.
pub fn can_i_list_rows(stdout: &str) -> Vec<(String, String, Vec<String>)> {
    let mut rows = Vec::new();
    for line in stdout.lines().skip(1) {
        let (Some(open), Some(close)) = (line.rfind('['), line.rfind(']')) else {
            continue;
        };
        let verbs = line[open + 1..close]
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let columns: Vec<&str> = line[..open].split_whitespace().collect();
        let names = line[..open]
            .find('[')
            .map(|at| line[at..open].trim().to_string())
            .unwrap_or_default();
        match columns.first() {
            Some(resource) if !resource.starts_with('[') && !resource.starts_with('/') => {
                rows.push((resource.to_string(), names, verbs));
            }
            _ => {}
        }
    }
    rows
}

/// The request kubectl makes for VERB on RESOURCE (core group) in NAMESPACE, on the object
/// `name` for verbs that take one: (method, path, JSON body for creates).
pub fn cell_request(
    verb: &str,
    resource: &str,
    namespace: &str,
    name: &str,
) -> (Method, String, Option<String>) {
    let collection = format!("/api/v1/namespaces/{namespace}/{resource}");
    let object = format!("{collection}/{name}");
    let kind = match resource {
        "pods" => "Pod",
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        other => panic!("no object kind for {other}"),
    };
    let spec = if kind == "Pod" {
        r#","spec":{"containers":[{"name":"c","image":"nginx"}]}"#
    } else {
        ""
    };
    let body = format!(
        r#"{{"apiVersion":"v1","kind":"{kind}","metadata":{{"name":"{name}","namespace":"{namespace}"}}{spec}}}"#
    );
    match verb {
        "get" => (Method::GET, object, None),
        "list" => (Method::GET, collection, None),
        "watch" => (
            Method::GET,
            format!("{collection}?watch=true&timeoutSeconds=1"),
            None,
        ),
        "create" => (Method::POST, collection, Some(body)),
        "delete" => (Method::DELETE, object, None),
        other => panic!("no request for verb {other}"),
    }
}

/// A private HOME (0700) whose `bin/` holds `kubegate` (the built binary), as the
/// credential plugin is found on a user's machine: kubeconfigs call the bare `kubegate`
/// from PATH. Returns the home and its `bin/`.
pub fn plugin_home() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("home");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(kubegate_binary(), bin.join("kubegate")).unwrap();
    (home, bin)
}

/// Clears `command`'s environment to what a user's shell gives kubectl and the plugin:
/// `HOME`, `PATH` with `bin` first, `KUBECONFIG`; no stdin; killed when dropped.
pub fn plugin_env(
    command: &mut tokio::process::Command,
    home: &Path,
    bin: &Path,
    kubeconfig: &Path,
) {
    command
        .env_clear()
        .env("HOME", home)
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
        )
        .env("KUBECONFIG", kubeconfig)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
}

/// Runs `command` to its end, within 60 s: (success, stdout, stderr).
pub async fn output_within_a_minute(
    mut command: tokio::process::Command,
) -> (bool, String, String) {
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("finished within 60 s")
        .expect("runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The `kubegate` binary of this workspace, found once per test binary.
///
/// A test in this crate cannot name another crate's binary with `CARGO_BIN_EXE_*`, and a
/// stale one from an earlier build would test old code, so cargo is asked for it with the
/// README's own selection (`cargo test --workspace --no-run`). Under that command the
/// answer is a no-op that names the binary the surrounding run already built; `cargo
/// build -p kubegate` would resolve features differently (no dev-dependencies, so tokio
/// without `test-util`) and build the whole dependency tree a second time, which once
/// filled CI's disk.
pub fn kubegate_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let output = std::process::Command::new(env!("CARGO"))
            .args([
                "test",
                "--workspace",
                "--no-run",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(workspace)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("cargo runs to build the kubegate binary");
        assert!(
            output.status.success(),
            "building the kubegate binary failed"
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|m| {
                m["reason"] == "compiler-artifact"
                    && m["target"]["name"] == "kubegate"
                    && m["profile"]["test"] == false
                    && m["target"]["kind"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
            })
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the kubegate executable")
    })
    .clone()
}
