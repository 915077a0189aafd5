//! `kubegate dev`: a working gateway with no setup.
//!
//! It generates a CA and a serving certificate, an ephemeral ES256 signing key, static
//! tokens for two sample users, the example policy, and a kubeconfig for them. The same key
//! signs for the dev issuer ([`issuer`]), a small OpenID provider served by the gateway
//! itself, so the sign-in web page (`[login]`, turned on here) and the credential plugin
//! run their real flows with no provider installed. As upstream it uses the current
//! kubeconfig context if that cluster answers, otherwise the built-in sandbox. Every file
//! is written to one directory and loaded through the same configuration path as
//! `kubegate serve`, so what `dev` runs is what production runs.

pub mod issuer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{EncodingKey, Header};
use kubegate_sandbox::{Sandbox, SandboxOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use serde_json::json;

use crate::app::{Running, StartError, bind, prepare};
use crate::upstream::Upstream;
use issuer::{Account, DevIssuer, PLUGIN_CLIENT_ID, WEB_CLIENT_ID};

/// The example policy shipped with the project; the dev users are written for it.
pub const EXAMPLE_POLICY: &str = include_str!("../../../examples/policy.toml");

/// How long the sample users' static tokens live.
const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The audience of the static tokens, which the gateway requires; also the sign-in page's
/// client id at the dev issuer (its ID tokens carry it as `aud`).
pub const DEV_AUDIENCE: &str = "kubegate";
const DEV_KID: &str = "kubegate-dev-1";

/// What `dev` should do.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Use the sandbox even if a cluster answers.
    pub force_sandbox: bool,
    /// Where to write the generated files (default: a new temporary directory).
    pub dir: Option<PathBuf>,
    /// How long the dev issuer's ID tokens live (short, so the plugin's refresh shows;
    /// [`issuer::DEFAULT_ID_TOKEN_LIFETIME`] unless set). Between 1 s and 24 h.
    pub id_token_lifetime: Duration,
}

/// The longest ID-token lifetime `dev` accepts.
const MAX_ID_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A sample user and their token.
#[derive(Clone)]
pub struct DevUser {
    /// Username.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// What the example policy lets them do.
    pub description: String,
    /// A signed token for them.
    pub token: String,
}

impl std::fmt::Debug for DevUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevUser")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// Which upstream dev mode chose.
#[derive(Debug)]
pub enum DevUpstream {
    /// The cluster of the current kubeconfig context.
    Cluster(PathBuf),
    /// The built-in sandbox, running in this process.
    Sandbox(Sandbox),
}

/// A running dev gateway and everything needed to use it.
pub struct DevEnvironment {
    /// The directory holding the generated files.
    pub dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    /// The gateway's URL.
    pub url: String,
    /// The CA certificate clients must trust.
    pub ca_file: PathBuf,
    /// The generated configuration file.
    pub config_file: PathBuf,
    /// A kubeconfig with one context per sample user.
    pub kubeconfig: PathBuf,
    /// The sample users.
    pub users: Vec<DevUser>,
    /// The upstream in use.
    pub upstream: DevUpstream,
    /// The running gateway.
    pub running: Running,
    /// The dev issuer's signing key.
    pub signer: Arc<DevSigner>,
    /// The dev issuer (its sign-in page, token and revocation endpoints).
    pub issuer: Arc<DevIssuer>,
}

/// The kubeconfig context `kubegate login` writes in the printed instructions.
pub const SIGNIN_CONTEXT: &str = "dev-signin";

impl DevEnvironment {
    /// The arguments of `kubegate login` (after `kubegate`) that sign in at the dev issuer
    /// through the credential plugin and merge the context `context`, whose user runs
    /// `kubegate get-token`, into `$KUBECONFIG`.
    pub fn login_command(&self, context: &str) -> Vec<String> {
        let ca = self.ca_file.display().to_string();
        [
            "login",
            "--server",
            &self.url,
            "--certificate-authority",
            &ca,
            "--oidc-issuer-url",
            &self.url,
            "--oidc-client-id",
            PLUGIN_CLIENT_ID,
            "--oidc-certificate-authority",
            &ca,
            "--context",
            context,
            "--namespace",
            "dev",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Instructions to paste, printed by `kubegate dev`.
    pub fn instructions(&self) -> String {
        let upstream = match &self.upstream {
            DevUpstream::Cluster(path) => format!(
                "the current context of {} (its RBAC applies to the impersonated users)",
                path.display()
            ),
            DevUpstream::Sandbox(s) => format!("the built-in sandbox at {}", s.url()),
        };
        let mut out = format!(
            "kubegate dev is listening on {url}\n  upstream: {upstream}\n  files:    {dir}\n  audit:    {dir}/audit.log\n  health and metrics: {admin}\n\nSample users (tokens valid {hours} h):\n",
            admin = self
                .running
                .admin_addr()
                .map_or("off".to_string(), |a| format!(
                    "http://{a}/readyz, http://{a}/metrics"
                )),
            url = self.url,
            dir = self.dir.display(),
            hours = TOKEN_LIFETIME.as_secs() / 3600,
        );
        for u in &self.users {
            out.push_str(&format!(
                "  {:<6} groups [{}]: {}\n",
                u.name,
                u.groups.join(", "),
                u.description
            ));
        }
        out.push_str(&format!(
            "\nWith kubectl:\n  export KUBECONFIG={kc}\n  kubectl --context alice get pods -n dev\n  kubectl --context bob get pods -n dev    # refused by the gateway's policy\n\nWith curl:\n",
            kc = self.kubeconfig.display()
        ));
        for u in &self.users {
            out.push_str(&format!(
                "  export TOKEN_{}={}\n",
                u.name.to_uppercase(),
                u.token
            ));
        }
        out.push_str(&format!(
            "  curl --cacert {ca} -H \"Authorization: Bearer $TOKEN_ALICE\" {url}/api/v1/namespaces/dev/pods\n",
            ca = self.ca_file.display(),
            url = self.url
        ));
        let login: Vec<String> = std::iter::once("kubegate".to_string())
            .chain(self.login_command(SIGNIN_CONTEXT))
            .map(|a| shell_word(&a))
            .collect();
        out.push_str(&format!(
            "\nSign in as a person does, at the dev issuer (dev only, no password: it asks \"alice or bob?\"):\n  sign in in a browser: {url}/kubegate/   (trust {ca}, or accept the certificate warning)\n  with kubectl, through the credential plugin (`kubegate` on PATH; after the export above):\n    {login}\n    kubectl --context {SIGNIN_CONTEXT} get pods -n dev\n  ID tokens last {lifetime}; the plugin refreshes them without a new sign-in.\n  Over SSH (no display): the dev issuer has no device flow; forward both ports\n  (ssh -L {port}:127.0.0.1:{port} -L 8000:127.0.0.1:8000), add --grant-type=authcode\n  and open the printed URL in your local browser.\n",
            url = self.url,
            ca = self.ca_file.display(),
            login = login.join(" "),
            lifetime = humantime::format_duration(self.issuer.id_token_lifetime()),
            port = self.url.rsplit(':').next().unwrap_or("8443"),
        ));
        out
    }
}

/// Generates everything and starts the dev gateway.
pub async fn start(options: DevOptions) -> Result<DevEnvironment, StartError> {
    crate::app::install_crypto_provider();
    if options.id_token_lifetime < Duration::from_secs(1)
        || options.id_token_lifetime > MAX_ID_TOKEN_LIFETIME
    {
        return Err(StartError::Runtime(
            "the dev issuer's ID-token lifetime must be between 1s and 24h".into(),
        ));
    }
    let (dir, tempdir) = match &options.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| io_error(d, e))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("kubegate-dev-")
                .tempdir()
                .map_err(|e| {
                    StartError::Runtime(format!("cannot create a temporary directory: {e}"))
                })?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    // Absolute: the plugin's --certificate-authority in the kubeconfig must not depend on
    // the directory kubectl runs in.
    let dir = std::fs::canonicalize(&dir).map_err(|e| io_error(&dir, e))?;

    // Bind first: the issuer URL and the kubeconfig need the real port.
    let listener = bind(options.listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    let url = format!("https://{addr}");

    let pki = DevPki::generate(&addr)?;
    let ca_file = write(&dir, "ca.crt", &pki.ca_pem)?;
    write(&dir, "tls.crt", &pki.cert_pem)?;
    write_private(&dir, "tls.key", &pki.key_pem)?;

    let signer = Arc::new(DevSigner::generate(url.clone())?);
    let jwks = signer.jwks();
    write(&dir, "jwks.json", &jwks.to_string())?;
    write(&dir, "policy.toml", EXAMPLE_POLICY)?;

    let upstream = choose_upstream(&dir, options.force_sandbox).await?;
    let kubeconfig_line = match &upstream {
        DevUpstream::Cluster(path) => toml_string(&path.display().to_string()),
        DevUpstream::Sandbox(_) => toml_string("sandbox.kubeconfig"),
    };
    let config_text = format!(
        r#"# Generated by `kubegate dev`. Every file named here is in this directory.
policy = "policy.toml"

[listen]
address = "{ip}"
port = {port}
tls_cert = "tls.crt"
tls_key = "tls.key"

[upstream]
kubeconfig = {kubeconfig_line}

# The dev issuer, served by this gateway: the static tokens carry audience {aud}, the
# sign-in page's and the plugin's ID tokens their client ids.
[[auth.oidc]]
issuer = {issuer}
audiences = [{aud}, {plugin}]
jwks_file = "jwks.json"
# The sign-in page reaches the dev issuer's endpoints over TLS.
certificate_authority = "ca.crt"
username_claim = "sub"
groups_claim = "groups"
algorithms = ["ES256"]

# The sign-in web page at {issuer_bare}/kubegate/, signing in at the dev issuer.
[login]
issuer = {issuer}
client_id = {web}
plugin_client_id = {plugin}
redirect_url = {redirect}
certificate_authority = "ca.crt"
plugin_certificate_authority = {ca_abs}

[admin]
address = "127.0.0.1"
port = 0

[audit]
file = "audit.log"
"#,
        ip = addr.ip(),
        port = addr.port(),
        issuer = toml_string(&url),
        issuer_bare = url,
        aud = toml_string(DEV_AUDIENCE),
        plugin = toml_string(PLUGIN_CLIENT_ID),
        web = toml_string(WEB_CLIENT_ID),
        redirect = toml_string(&format!("{url}/kubegate/callback")),
        ca_abs = toml_string(&ca_file.display().to_string()),
    );
    let config_file = write(&dir, "kubegate.toml", &config_text)?;
    let config = kubegate_config::load(&config_file)?;

    let users = vec![
        signer.user(
            "alice",
            &["devs"],
            "may read pods and configmaps in namespace dev, and create and delete pods there",
        )?,
        signer.user(
            "bob",
            &["guests"],
            "may use discovery only; namespace dev is refused",
        )?,
    ];
    let kubeconfig = write(
        &dir,
        "kubeconfig",
        &client_kubeconfig(&url, &pki.ca_pem, &users),
    )?;

    let accounts = users
        .iter()
        .map(|u| Account {
            name: u.name.clone(),
            groups: u.groups.clone(),
        })
        .collect();
    let issuer = Arc::new(DevIssuer::new(
        url.clone(),
        signer.clone(),
        accounts,
        options.id_token_lifetime,
    ));

    let prepared = prepare(&config).await?;
    let app = prepared.router().merge(issuer.clone().routes(jwks));
    let running = prepared.start_on(listener, app).await?;

    Ok(DevEnvironment {
        dir,
        _tempdir: tempdir,
        url,
        ca_file,
        config_file,
        kubeconfig,
        users,
        upstream,
        running,
        signer,
        issuer,
    })
}

async fn choose_upstream(dir: &Path, force_sandbox: bool) -> Result<DevUpstream, StartError> {
    if !force_sandbox
        && let Some(path) = default_kubeconfig()
        && cluster_answers(&path).await
    {
        return Ok(DevUpstream::Cluster(path));
    }
    let token = random_token()?;
    let sandbox = Sandbox::start(SandboxOptions::new(token))
        .await
        .map_err(|e| StartError::Runtime(format!("cannot start the sandbox: {e}")))?;
    sandbox
        .write_kubeconfig(&dir.join("sandbox.kubeconfig"))
        .map_err(|e| io_error(dir, e))?;
    Ok(DevUpstream::Sandbox(sandbox))
}

/// `$KUBECONFIG`'s first entry, or `~/.kube/config`, if the file exists.
fn default_kubeconfig() -> Option<PathBuf> {
    let path = match std::env::var_os("KUBECONFIG") {
        Some(v) => std::env::split_paths(&v).next()?,
        None => PathBuf::from(std::env::var_os("HOME")?).join(".kube/config"),
    };
    path.is_file().then_some(path)
}

/// Whether the kubeconfig's current cluster answers `/version` within two seconds: the
/// upstream is read by the same loader and probed by the same probe as in `serve`.
async fn cluster_answers(kubeconfig: &Path) -> bool {
    let Some(dir) = kubeconfig.parent() else {
        return false;
    };
    let text = format!(
        "[upstream]\nkubeconfig = {}\ntimeout = \"2s\"\n",
        toml_string(&kubeconfig.to_string_lossy())
    );
    let Ok(config) = kubegate_config::parse_upstream(&dir.join("kubegate-dev-probe.toml"), &text)
    else {
        return false;
    };
    let Ok(upstream) = Upstream::load(&config).await else {
        return false;
    };
    upstream
        .probe("/version", Duration::from_secs(2))
        .await
        .is_ok()
}

struct DevPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl DevPki {
    fn generate(addr: &SocketAddr) -> Result<Self, StartError> {
        let err =
            |e: rcgen::Error| StartError::Runtime(format!("cannot generate certificates: {e}"));
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "kubegate dev CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut leaf = CertificateParams::default();
        leaf.distinguished_name
            .push(DnType::CommonName, "kubegate dev");
        let mut sans = vec![
            SanType::DnsName("localhost".try_into().map_err(err)?),
            SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
        ];
        if !addr.ip().is_unspecified() && addr.ip() != std::net::IpAddr::from([127, 0, 0, 1]) {
            sans.push(SanType::IpAddress(addr.ip()));
        }
        leaf.subject_alt_names = sans;
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
        Ok(DevPki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The ephemeral ES256 key the dev issuer signs sample tokens with.
pub struct DevSigner {
    issuer: String,
    encoding: EncodingKey,
    public_point: Vec<u8>,
}

impl DevSigner {
    /// A new random key for `issuer`.
    pub fn generate(issuer: String) -> Result<Self, StartError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| StartError::Runtime(format!("cannot generate a signing key: {e}")))?;
        let encoding = EncodingKey::from_ec_der(&key.serialize_der());
        Ok(DevSigner {
            issuer,
            encoding,
            public_point: key.public_key_raw().to_vec(),
        })
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
        let (x, y) = self.public_point[1..].split_at(32);
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": DEV_KID,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
    }

    /// Signs a token for `name` in `groups`.
    pub fn token(&self, name: &str, groups: &[&str]) -> Result<String, StartError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| StartError::Runtime(e.to_string()))?
            .as_secs();
        let claims = json!({
            "iss": self.issuer, "aud": DEV_AUDIENCE, "sub": name, "groups": groups,
            "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME.as_secs(),
        });
        self.sign(&claims)
    }

    /// Signs arbitrary claims with the dev key.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, StartError> {
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(DEV_KID.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| StartError::Runtime(format!("cannot sign a token: {e}")))
    }

    fn user(&self, name: &str, groups: &[&str], description: &str) -> Result<DevUser, StartError> {
        Ok(DevUser {
            name: name.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            description: description.to_string(),
            token: self.token(name, groups)?,
        })
    }
}

fn client_kubeconfig(url: &str, ca_pem: &str, users: &[DevUser]) -> String {
    let ca = STANDARD.encode(ca_pem);
    let mut out = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubegate-dev\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\ncontexts:\n"
    );
    for u in users {
        out.push_str(&format!(
            "- name: {n}\n  context:\n    cluster: kubegate-dev\n    user: {n}\n    namespace: dev\n",
            n = u.name
        ));
    }
    out.push_str("users:\n");
    for u in users {
        out.push_str(&format!(
            "- name: {}\n  user:\n    token: {}\n",
            u.name, u.token
        ));
    }
    let first = users.first().map_or("alice", |u| u.name.as_str());
    out.push_str(&format!("current-context: {first}\n"));
    out
}

fn random_token() -> Result<String, StartError> {
    let mut bytes = [0u8; 32];
    crate::listener::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| StartError::Runtime("no secure random source".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// `s` as one shell word: as it is when plain, single-quoted otherwise.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn toml_string(s: &str) -> String {
    // TOML basic strings share JSON's escapes for everything we may write.
    serde_json::Value::String(s.to_string()).to_string()
}

fn io_error(path: &Path, e: std::io::Error) -> StartError {
    StartError::Runtime(format!("cannot write {}: {e}", path.display()))
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, StartError> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|e| io_error(&path, e))?;
    Ok(path)
}

/// Writes a file only its owner can read (private keys).
fn write_private(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, StartError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| io_error(&path, e))?;
    Ok(path)
}
