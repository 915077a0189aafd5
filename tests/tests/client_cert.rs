//! Client-certificate authentication: the last CN is the username, every O a group, read
//! as the API server reads them; a certificate whose subject cannot be read so is refused;
//! a bearer token takes precedence; a certificate from another CA fails the handshake.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use kubegate_tests::{GatewayOptions, TestGateway, https_client_with_cert};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// A client certificate (PEM cert, PEM key) for `cn` in organizations `orgs`.
fn client_cert(ca: &Ca, cn: &str, orgs: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    for o in orgs {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn gateway(client_ca: &Ca) -> TestGateway {
    TestGateway::start_with(GatewayOptions {
        client_ca_pem: Some(client_ca.pem.clone()),
        ..GatewayOptions::default()
    })
    .await
}

/// GET with a client certificate (and maybe a token); `Err` when the connection fails.
async fn get(
    gw: &TestGateway,
    cert: &(String, String),
    path: &str,
    token: Option<&str>,
) -> Result<(StatusCode, Bytes), String> {
    let client = https_client_with_cert(&gw.pki.ca_pem, &cert.0, &cert.1);
    let mut request = http::Request::get(format!("{}{path}", gw.url()));
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let response = client
        .request(request.body(Default::default()).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, body))
}

#[tokio::test]
async fn a_verified_certificate_authenticates_as_cn_with_o_groups() {
    let users = ca("users CA");
    let gw = gateway(&users).await;
    // rcgen keeps one value per attribute type, so one O here.
    let alice = client_cert(&users, "alice", &["devs"]);
    let (status, body) = get(&gw, &alice, "/api/v1/namespaces/dev/pods", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let seen = gw.sandbox.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.impersonate_user(), Some("alice"));
    assert_eq!(last.impersonate_groups(), vec!["devs"]);
}

#[tokio::test]
async fn a_bearer_token_takes_precedence_over_the_certificate() {
    let users = ca("users CA");
    let gw = gateway(&users).await;
    let alice = client_cert(&users, "alice", &["devs"]);
    let bob = gw.issuer.token("bob", &["guests"]);
    let (status, _) = get(&gw, &alice, "/api/v1/namespaces/dev/pods", Some(&bob))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "judged as bob");
    // A bad token is not rescued by a good certificate.
    let (status, _) = get(&gw, &alice, "/api/v1/namespaces/dev/pods", Some("garbage"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let users = ca("users CA");
    let gw = gateway(&users).await;
    let stranger = client_cert(&ca("someone else's CA"), "alice", &["devs"]);
    let err = get(&gw, &stranger, "/version", None).await.unwrap_err();
    assert!(
        err.contains("UnknownCA"),
        "the gateway refused the chain: {err}"
    );
    assert_eq!(gw.sandbox.request_count(), 0);
}

#[tokio::test]
async fn without_a_certificate_bearer_tokens_still_work() {
    let users = ca("users CA");
    let gw = gateway(&users).await;
    let alice = gw.issuer.token("alice", &["devs"]);
    assert_eq!(
        gw.get("/api/v1/namespaces/dev/pods", &alice).await.status,
        StatusCode::OK
    );
    let r = gw.request(http::Method::GET, "/version", None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn reserved_names_in_certificates_are_refused() {
    let users = ca("users CA");
    let gw = gateway(&users).await;
    let masters = client_cert(&users, "mallory", &["system:masters"]);
    let (status, _) = get(&gw, &masters, "/version", None).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.sandbox.request_count(), 0);
}

/// The checked-in certificates (gateway/tests/data/client-certs/make-certs.sh), whose
/// subjects use what rcgen cannot write: repeated CNs and other string types.
mod checked_in {
    macro_rules! data {
        ($name:literal) => {
            include_str!(concat!("../../gateway/tests/data/client-certs/", $name))
        };
    }
    pub const CA: &str = data!("ca.pem");
    pub const TWO_CNS: (&str, &str) = (data!("two-cns.pem"), data!("two-cns.key"));
    pub const BMP: (&str, &str) = (data!("bmp.pem"), data!("bmp.key"));
    pub const UNIVERSAL: (&str, &str) = (data!("universal.pem"), data!("universal.key"));
}

async fn checked_in_gateway() -> TestGateway {
    TestGateway::start_with(GatewayOptions {
        client_ca_pem: Some(checked_in::CA.to_string()),
        ..GatewayOptions::default()
    })
    .await
}

fn owned((cert, key): (&str, &str)) -> (String, String) {
    (cert.to_string(), key.to_string())
}

#[tokio::test]
async fn a_certificate_with_two_cns_maps_like_the_api_servers() {
    let gw = checked_in_gateway().await;
    for (cert, user, groups) in [
        // Subject CN=bob, O=devs, CN=alice, O=ops: Go keeps the last CN, every O in order.
        (checked_in::TWO_CNS, "alice", ["devs", "ops"]),
        // O=team_bmp is a BMPString (UTF-16BE), a group like any other.
        (checked_in::BMP, "dave", ["devs", "team_bmp"]),
    ] {
        let (status, body) = get(&gw, &owned(cert), "/api/v1/namespaces/dev/pods", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let seen = gw.sandbox.requests();
        let last = seen.last().unwrap();
        assert_eq!(last.impersonate_user(), Some(user));
        assert_eq!(last.impersonate_groups(), groups);
    }
}

#[tokio::test]
async fn a_certificate_whose_subject_cannot_be_read_is_refused() {
    let gw = checked_in_gateway().await;
    // O=ops is a UniversalString, which Go cannot read: never "erin in devs" alone.
    let (status, body) = get(
        &gw,
        &owned(checked_in::UNIVERSAL),
        "/api/v1/namespaces/dev/pods",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("the client certificate's subject cannot be read"),
        "{message}"
    );
    assert_eq!(gw.sandbox.request_count(), 0);
    // A bearer token still takes precedence over the unreadable certificate.
    let alice = gw.issuer.token("alice", &["devs"]);
    let (status, _) = get(
        &gw,
        &owned(checked_in::UNIVERSAL),
        "/api/v1/namespaces/dev/pods",
        Some(&alice),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
}
