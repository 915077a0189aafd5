//! Cost of authenticating one request: a full JWT verification (cache miss) and a
//! cached verdict (cache hit), for RS256 and ES256, and for an ES256 issuer of an
//! `AuthenticationConfiguration` file with three CEL mappings and two validation rules.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubegate::authn::{Authenticator, IssuerVerifier, KeySet};

const ISSUER: &str = "https://issuer.bench";

/// Three CEL mappings (username, groups, extra) and two validation rules.
const CEL_RULES: &str = r#"apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://issuer.bench
    audiences: [kubegate]
  claimValidationRules:
  - expression: 'claims.tier != "blocked"'
  - expression: 'claims.groups.exists(g, g.startsWith("devs"))'
  claimMappings:
    username:
      expression: 'claims.sub + "@" + claims.tenant'
    groups:
      expression: 'claims.groups.filter(g, g.startsWith("devs"))'
    extra:
    - key: example.com/unit
      valueExpression: 'claims.org.unit'
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    authn: Authenticator,
    headers: HeaderMap,
}

fn fixture(rt: &tokio::runtime::Runtime, alg: Algorithm, cache_ttl: &str, cel: bool) -> Fixture {
    let (sig, pem_key): (&'static rcgen::SignatureAlgorithm, fn(&[u8]) -> _) = match alg {
        Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
        _ => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
    };
    let pair = rcgen::KeyPair::generate_for(sig).expect("key");
    let key = pem_key(pair.serialize_pem().as_bytes()).expect("encoding key");
    let mut jwk = Jwk::from_encoding_key(&key, alg).expect("jwk");
    jwk.common.key_id = Some("bench".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for f in ["tls.crt", "tls.key", "policy.toml", "kubeconfig"] {
        std::fs::write(d.join(f), "x").expect("write");
    }
    let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] }).expect("jwks");
    std::fs::write(d.join("jwks.json"), &jwks).expect("write jwks");
    let text = format!(
        "policy = \"policy.toml\"\n[listen]\ntls_cert = \"tls.crt\"\ntls_key = \"tls.key\"\n[upstream]\nkubeconfig = \"kubeconfig\"\n[auth]\ntoken_cache_ttl = \"{cache_ttl}\"\n[[auth.oidc]]\nissuer = \"{ISSUER}\"\naudiences = [\"kubegate\"]\njwks_file = \"jwks.json\"\ngroups_claim = \"groups\"\nalgorithms = [\"RS256\", \"ES256\"]\n"
    );
    let config = kubegate_config::parse(&d.join("kubegate.toml"), &text).expect("config");
    let verifier = if cel {
        // The file's issuer uses discovery; the bench installs the same keys directly.
        let issuer = kubegate_config::parse_authentication_config(&d.join("auth.yaml"), CEL_RULES)
            .expect("authentication config")
            .remove(0);
        let keys = KeySet::parse(jwks.as_bytes(), &issuer.algorithms).expect("key set");
        let verifier = IssuerVerifier::new(issuer).expect("verifier");
        verifier.set_keys(keys);
        Arc::new(verifier)
    } else {
        let verifier =
            Arc::new(IssuerVerifier::new(config.auth.oidc[0].clone()).expect("verifier"));
        rt.block_on(verifier.refresh_keys()).expect("keys");
        verifier
    };
    let authn = Authenticator::new(vec![verifier], &config.auth, vec![]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": "kubegate", "sub": "alice", "groups": ["devs", "ops"],
        "iat": now, "exp": now + 3600, "tenant": "acme", "tier": "gold",
        "org": {"unit": "payments"},
    });
    let mut header = Header::new(alg);
    header.kid = Some("bench".into());
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("token");
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    Fixture {
        _dir: dir,
        authn,
        headers,
    }
}

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (name, alg, cel) in [
        ("RS256", Algorithm::RS256, false),
        ("ES256", Algorithm::ES256, false),
        ("ES256+cel", Algorithm::ES256, true),
    ] {
        let miss = fixture(&rt, alg, "0s", cel);
        c.bench_function(&format!("authenticate/{name}/miss"), |b| {
            b.iter(|| {
                rt.block_on(miss.authn.authenticate(&miss.headers, None))
                    .expect("valid")
            })
        });
        let hit = fixture(&rt, alg, "60s", cel);
        c.bench_function(&format!("authenticate/{name}/hit"), |b| {
            b.iter(|| {
                rt.block_on(hit.authn.authenticate(&hit.headers, None))
                    .expect("valid")
            })
        });
    }
}

criterion_group!(benches, verify);
criterion_main!(benches);
