//! Certificates and the rustls server configuration. A fresh CA per sandbox keeps every test
//! run independent; clients trust it through [`crate::Sandbox::ca_pem`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA and the serving certificate it signed.
pub(crate) struct Certs {
    pub(crate) ca_pem: String,
    pub(crate) server_der: CertificateDer<'static>,
    pub(crate) server_key_pkcs8: Vec<u8>,
}

/// Generates a CA and a serving certificate for loopback, `localhost` and `bind_ip`.
pub(crate) fn generate(bind_ip: IpAddr) -> Result<Certs, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kubegate-sandbox-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server_params = CertificateParams::new(vec!["localhost".to_string()])?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "kubegate-sandbox");
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if !bind_ip.is_unspecified() && !ips.contains(&bind_ip) {
        ips.push(bind_ip);
    }
    server_params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    server_params.use_authority_key_identifier_extension = true;
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    Ok(Certs {
        ca_pem: ca_cert.pem(),
        server_der: server_cert.der().clone(),
        server_key_pkcs8: server_key.serialize_der(),
    })
}

/// A rustls server config on the aws-lc-rs provider offering h2 and http/1.1.
pub(crate) fn server_config(certs: &Certs) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certs.server_key_pkcs8.clone()));
    let chain = vec![certs.server_der.clone()];
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
