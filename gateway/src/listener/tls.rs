//! TLS for the user-facing listener: TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`,
//! aws-lc-rs as the only crypto provider, and a certificate that can be swapped while
//! the gateway runs (new handshakes get the new pair, open connections keep theirs).

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
    /// The key file holds no usable PEM private key.
    #[error("{0} holds no usable PEM private key")]
    NoKey(String),
    /// The client CA bundle cannot be used.
    #[error("the client CA bundle cannot be used: {0}")]
    ClientCa(String),
    /// The key does not match the certificate, or rustls refused it.
    #[error("the certificate and key cannot be used together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What a verified client certificate says about its holder, read once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCert {
    /// The subject, read as the API server reads it.
    Identity(CertIdentity),
    /// rustls verified the chain, but the subject cannot be read as the API server would
    /// read it: the certificate names no one, and a request relying on it is refused
    /// (never given an identity with fewer groups).
    Unreadable(UnreadableCert),
}

/// The identity a verified client certificate asserts, by the Kubernetes convention:
/// the subject's (last) CN is the username, each subject O a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject's common name.
    pub username: String,
    /// The subject's organizations, in order.
    pub groups: Vec<String>,
}

/// Why a client certificate names no one. Display strings are safe to show the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnreadableCert {
    /// The certificate does not parse.
    #[error("the client certificate's subject cannot be read: the certificate does not parse")]
    Malformed,
    /// A subject attribute is not a string Go's crypto/x509 decodes; the API server
    /// refuses such a certificate outright.
    #[error(
        "the client certificate's subject cannot be read: an attribute is not a string type the API server accepts"
    )]
    Undecodable,
    /// No CN, or the last CN is empty: the API server authenticates no one by it.
    #[error("the client certificate's subject has no common name")]
    NoCommonName,
}

/// Reads a verified client certificate (DER) the way the API server does: Go's
/// `pkix.Name` keeps the last CN and every O in order, and Go refuses the whole
/// certificate when any subject attribute is not a string type it decodes.
pub fn client_cert(der: &[u8]) -> ClientCert {
    match cert_identity(der) {
        Ok(identity) => ClientCert::Identity(identity),
        Err(reason) => ClientCert::Unreadable(reason),
    }
}

fn cert_identity(der: &[u8]) -> Result<CertIdentity, UnreadableCert> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| UnreadableCert::Malformed)?;
    let mut username = None;
    let mut groups = Vec::new();
    for attribute in cert.subject().iter_attributes() {
        let value = go_string(attribute.attr_value()).ok_or(UnreadableCert::Undecodable)?;
        let kind = attribute.attr_type();
        if *kind == x509_parser::oid_registry::OID_X509_COMMON_NAME {
            username = Some(value);
        } else if *kind == x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME {
            groups.push(value);
        }
    }
    match username {
        Some(username) if !username.is_empty() => Ok(CertIdentity { username, groups }),
        _ => Err(UnreadableCert::NoCommonName),
    }
}

/// An attribute value as Go's crypto/x509 `parseASN1String` reads it, or `None` where Go
/// refuses it. x509-parser's `as_str` neither decodes T61String and BMPString nor checks
/// that a PrintableString or IA5String holds only its own characters, so this does.
fn go_string(value: &x509_parser::asn1_rs::Any<'_>) -> Option<String> {
    use x509_parser::asn1_rs::{Class, Tag};
    if value.header.class() != Class::Universal || value.header.is_constructed() {
        return None;
    }
    let data = value.data;
    let ascii = |ok: fn(u8) -> bool| {
        data.iter()
            .all(|&b| ok(b))
            .then(|| data.iter().map(|&b| char::from(b)).collect())
    };
    match value.header.tag() {
        // T.61 is read as Latin-1, as Go (and BoringSSL) do.
        Tag::T61String => Some(data.iter().map(|&b| char::from(b)).collect()),
        Tag::PrintableString => ascii(go_printable),
        Tag::Utf8String => std::str::from_utf8(data).ok().map(str::to_string),
        Tag::BmpString => bmp_string(data),
        Tag::Ia5String => ascii(|b| b.is_ascii()),
        Tag::NumericString => ascii(|b| b.is_ascii_digit() || b == b' '),
        _ => None,
    }
}

/// Go's PrintableString set, which admits `*` and `&` because real certificates use them.
fn go_printable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" '()+,-./:=?*&".contains(&b)
}

/// UTF-16BE without surrogates or noncharacters, a trailing NUL dropped, as Go reads it.
fn bmp_string(data: &[u8]) -> Option<String> {
    if !data.len().is_multiple_of(2) {
        return None;
    }
    let data = data.strip_suffix(&[0, 0]).unwrap_or(data);
    data.chunks_exact(2)
        .map(|pair| {
            let unit = u16::from_be_bytes([pair[0], pair[1]]);
            let refused = matches!(unit, 0xfffe | 0xffff | 0xfdd0..=0xfdef | 0xd800..=0xdfff);
            // Without surrogates every unit is one scalar value.
            (!refused)
                .then(|| char::from_u32(u32::from(unit)))
                .flatten()
        })
        .collect()
}

/// The process's one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads a PEM certificate chain and private key into a signing identity.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    certified_key_from_pem(
        &cert_pem,
        &key_pem,
        &cert.display().to_string(),
        &key.display().to_string(),
    )
}

/// Builds a signing identity from PEM bytes; `cert_name`/`key_name` label errors.
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate(cert_name.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_name.to_string()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| TlsError::NoKey(key_name.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, &provider())?;
    Ok(certified)
}

/// Serves whichever certificate is current; [`CertStore::replace`] swaps it atomically.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// A store serving `key`.
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(key),
        })
    }

    /// Serves `key` to every handshake from now on.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A trust store from a PEM bundle file; an empty or unreadable bundle is an error, never
/// an empty store that would trust nothing (or, worse, be mistaken for "no CA set").
pub fn root_store(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    roots_from_pem(&pem, &path.display().to_string())
}

/// A trust store from PEM bytes (`name` labels errors); empty is an error, as for
/// [`root_store`].
pub fn roots_from_pem(pem: &[u8], name: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|_| TlsError::NoCertificate(name.to_string()))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate(name.to_string()));
    }
    Ok(roots)
}

/// The listener's rustls configuration. With `client_ca`, clients may present a
/// certificate signed by one of those CAs (one from any other CA fails the handshake);
/// clients without one still connect and authenticate with a bearer token.
pub fn server_config(
    certs: Arc<CertStore>,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = root_store(path)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::asn1_rs::{Any, Class, Tag};

    /// The checked-in certificates (gateway/tests/data/client-certs/make-certs.sh).
    fn der(pem: &[u8]) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem).unwrap().to_vec()
    }

    fn identity(username: &str, groups: &[&str]) -> ClientCert {
        ClientCert::Identity(CertIdentity {
            username: username.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    }

    #[test]
    fn the_last_cn_is_the_user_and_every_o_a_group() {
        // Subject CN=bob, O=devs, CN=alice, O=ops: Go's pkix.Name keeps the last CN.
        let cert = der(include_bytes!("../../tests/data/client-certs/two-cns.pem"));
        assert_eq!(client_cert(&cert), identity("alice", &["devs", "ops"]));
    }

    #[test]
    fn bmp_and_t61_strings_are_decoded_as_go_decodes_them() {
        let bmp = der(include_bytes!("../../tests/data/client-certs/bmp.pem"));
        assert_eq!(client_cert(&bmp), identity("dave", &["devs", "team_bmp"]));
        let t61 = der(include_bytes!("../../tests/data/client-certs/t61.pem"));
        assert_eq!(client_cert(&t61), identity("tess", &["team_t61"]));
    }

    #[test]
    fn a_string_type_go_cannot_read_makes_the_certificate_unreadable() {
        // O=ops as a UniversalString: no group may silently go missing.
        let cert = der(include_bytes!(
            "../../tests/data/client-certs/universal.pem"
        ));
        assert_eq!(
            client_cert(&cert),
            ClientCert::Unreadable(UnreadableCert::Undecodable)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let mut cert = der(include_bytes!("../../tests/data/client-certs/two-cns.pem"));
        cert.truncate(cert.len() / 2);
        assert_eq!(
            client_cert(&cert),
            ClientCert::Unreadable(UnreadableCert::Malformed)
        );
        assert_eq!(
            client_cert(b"not a certificate"),
            ClientCert::Unreadable(UnreadableCert::Malformed)
        );
    }

    #[test]
    fn a_subject_without_a_cn_names_no_one() {
        let cert = der(include_bytes!("../../tests/data/client-certs/no-cn.pem"));
        assert_eq!(
            client_cert(&cert),
            ClientCert::Unreadable(UnreadableCert::NoCommonName)
        );
    }

    fn read(tag: Tag, data: &[u8]) -> Option<String> {
        go_string(&Any::from_tag_and_data(tag, data))
    }

    #[test]
    fn string_types_follow_go() {
        assert_eq!(read(Tag::PrintableString, b"a-b *&"), Some("a-b *&".into()));
        assert_eq!(read(Tag::PrintableString, b"a_b"), None);
        assert_eq!(read(Tag::Ia5String, b"a_b@c"), Some("a_b@c".into()));
        assert_eq!(read(Tag::Ia5String, "é".as_bytes()), None);
        assert_eq!(read(Tag::Utf8String, "é".as_bytes()), Some("é".into()));
        assert_eq!(read(Tag::Utf8String, &[0xff]), None);
        assert_eq!(read(Tag::T61String, &[b'a', 0xe9]), Some("aé".into()));
        assert_eq!(read(Tag::NumericString, b"12 3"), Some("12 3".into()));
        assert_eq!(read(Tag::NumericString, b"12a"), None);
        assert_eq!(
            read(Tag::BmpString, &[0, b'o', 0, b'k', 0, 0]),
            Some("ok".into())
        );
        assert_eq!(read(Tag::BmpString, &[0, b'o', 0]), None, "odd length");
        assert_eq!(
            read(Tag::BmpString, &[0xd8, 0x3d, 0xde, 0x00]),
            None,
            "surrogates"
        );
        assert_eq!(read(Tag::BmpString, &[0xff, 0xfe]), None, "noncharacter");
        assert_eq!(read(Tag::UniversalString, &[0, 0, 0, b'a']), None);
        assert_eq!(read(Tag::OctetString, b"a"), None);
        let context =
            Any::from_tag_and_data(Tag::Utf8String, b"a").with_class(Class::ContextSpecific);
        assert_eq!(go_string(&context), None);
    }
}
