//! Golden cases from the Kubernetes documentation, "Authentication configuration from a
//! file" (<https://kubernetes.io/docs/reference/access-authn-authz/authentication/#using-authentication-configuration>):
//! its annotated example file and the three example configurations published with a
//! token payload and the resulting `UserInfo`. Each configuration, kept as published in
//! `gateway/tests/data/k8s-docs-authentication/` (see the README there), gets a token it
//! accepts with exactly the user the page shows and a token it refuses with the error
//! category the API server's 401 stands for, through [`IssuerVerifier::verify`] with real
//! RS256 signatures.

use serde_json::{Value, json};

use super::super::jwt::Verified;
use super::super::{AuthError, IssuerVerifier};
use super::evaluate;
use super::tests::{now, sign, signer, verifier};

macro_rules! data {
    ($name:literal) => {
        include_str!(concat!(
            "../../../tests/data/k8s-docs-authentication/",
            $name
        ))
    };
}

/// The payload published with the "Valid token" and "Fails claim validation" tabs.
const PAYLOAD: &str = data!("payload.json");
/// The payload published with the "Fails user validation" tab (it carries `hd`).
const PAYLOAD_HD: &str = data!("payload-hd.json");

/// A published payload with `iat`, `nbf` and `exp` moved so that it was issued now (the
/// distances between them kept), and `aud` replaced when given: the page's payloads say
/// `kubernetes` while its configurations accept only `my-app`.
fn published(payload: &str, aud: Option<&str>) -> Value {
    let mut claims: Value = serde_json::from_str(payload).unwrap();
    let shift = now() - claims["iat"].as_u64().unwrap();
    for time in ["iat", "nbf", "exp"] {
        claims[time] = json!(claims[time].as_u64().unwrap() + shift);
    }
    if let Some(aud) = aud {
        claims["aud"] = json!(aud);
    }
    claims
}

/// The `UserInfo` the page shows for the "Valid token" tab.
fn assert_documented_user(v: &Verified) {
    let id = &v.identity;
    assert_eq!(id.user, "foo:external-user");
    assert_eq!(id.uid.as_deref(), Some("auth"));
    assert_eq!(id.groups, ["user", "admin"]);
    assert_eq!(id.extra.len(), 1, "{:?}", id.extra);
    assert_eq!(
        id.extra["example.com/tenant"],
        ["72f988bf-86f1-41af-91ab-2d7cd011db4a"]
    );
}

/// The refusal of `claims.hd == "example.com"` on a token without `hd`.
fn no_such_hd() -> AuthError {
    AuthError::Expression(
        r#"jwt[0].claimValidationRules[0].expression "claims.hd == \"example.com\"" failed: no such key "hd""#
            .into(),
    )
}

async fn refused(v: &IssuerVerifier, token: &str) -> AuthError {
    match v.verify(token).await {
        Ok(ok) => panic!("accepted as {:?}", ok.identity),
        Err(e) => e,
    }
}

fn load_error(yaml: &str) -> String {
    kubegate_config::parse_authentication_config(std::path::Path::new("auth.yaml"), yaml)
        .expect_err("refused")
        .to_string()
}

#[test]
fn the_annotated_example_as_published_does_not_load() {
    // It lists `claim` and `expression` side by side to document both, and has
    // `<placeholders>`: a file to read, not to load (the API server refuses it too). Each
    // refusal is located and specific; taking one away shows the next.
    let published = data!("full-example.yaml");
    // kubegate does not take `egressSelectorType` (it has no egress selector).
    assert_eq!(
        load_error(published),
        "auth.yaml:20:25: jwt[0].issuer.egressSelectorType: kubegate reaches issuers \
         directly, it has no egress selector; remove egressSelectorType from the file \
         kubegate reads"
    );
    let without = |fields: &[&str]| -> String {
        published
            .lines()
            .filter(|l| !fields.iter().any(|f| l.contains(f)))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert_eq!(
        load_error(&without(&["egressSelectorType"])),
        "auth.yaml:14:27: jwt[0].issuer.certificateAuthority: must hold PEM-encoded CA \
         certificates"
    );
    // Then the first pair of alternatives written side by side.
    assert_eq!(
        load_error(&without(&["egressSelectorType", "certificateAuthority"])),
        "auth.yaml:30:14: jwt[0].claimMappings.username: set either claim or expression, \
         not both"
    );
}

#[tokio::test]
async fn the_annotated_example_with_its_expressions() {
    let s = signer();
    let v = verifier(data!("full-example-expressions.yaml"), &s).await;

    // Accepted: the published payload with `hd`, for the second audience (MatchAny), with a
    // lifetime inside the example's 24 hours.
    let mut good = published(PAYLOAD_HD, Some("my-other-app"));
    good["exp"] = json!(good["nbf"].as_u64().unwrap() + 3600);
    assert_documented_user(&v.verify(&sign(&s, &good)).await.unwrap());

    // Refused: the published payload lives 24.5 days, and the example caps it at 24 hours.
    let e = refused(&v, &sign(&s, &published(PAYLOAD_HD, Some("my-app")))).await;
    assert_eq!(
        e,
        AuthError::Claims("total token lifetime must not exceed 24 hours".into())
    );
    assert_eq!(e.category(), "claims");
    // Refused: no `hd`; the `claim`/`requiredValue` rule runs first.
    let mut no_hd = good.clone();
    no_hd.as_object_mut().unwrap().remove("hd");
    let e = refused(&v, &sign(&s, &no_hd)).await;
    assert_eq!(
        e,
        AuthError::Claims(r#"claim "hd" is missing or has another value"#.into())
    );
    // Refused: a group under `system:`, by the second user validation rule.
    let mut system_group = good;
    system_group["roles"] = json!("user,system:masters");
    let e = refused(&v, &sign(&s, &system_group)).await;
    assert_eq!(
        e,
        AuthError::Claims("groups cannot used reserved system: prefix".into())
    );
}

#[tokio::test]
async fn the_valid_token_example() {
    let s = signer();
    let v = verifier(data!("valid-token.yaml"), &s).await;

    // Accepted, with exactly the documented user, once `aud` names the configured audience.
    let good = published(PAYLOAD, Some("my-app"));
    assert_documented_user(&v.verify(&sign(&s, &good)).await.unwrap());

    // Refused: the payload exactly as published, whose `aud` is `kubernetes`.
    let e = refused(&v, &sign(&s, &published(PAYLOAD, None))).await;
    assert_eq!(e, AuthError::Audience);
    assert_eq!(e.category(), "audience");
    // Refused: a missing claim makes the mapping fail, a categorised 401 and no panic.
    let mut no_roles = good.clone();
    no_roles.as_object_mut().unwrap().remove("roles");
    let e = refused(&v, &sign(&s, &no_roles)).await;
    assert_eq!(e.category(), "claim_expression", "{e}");
    assert!(
        e.to_string().contains(r#"claims.roles.split(\",\")"#),
        "{e}"
    );
    // Refused: a `system:` username, by the example's user validation rule.
    let mut system_user = good;
    system_user["username"] = json!("system:foo");
    let e = refused(&v, &sign(&s, &system_user)).await;
    assert_eq!(
        e,
        AuthError::Claims("username cannot used reserved system: prefix".into())
    );
}

#[tokio::test]
async fn the_fails_claim_validation_example() {
    let s = signer();
    let v = verifier(data!("fails-claim-validation.yaml"), &s).await;

    // Refused, as the page says: the published payload has no `hd`. `claims.hd` on a
    // missing key is a CEL evaluation error, not `false`, so (as on the API server, whose
    // error says "no such key") the 401 names the failed expression, not the message.
    let e = refused(&v, &sign(&s, &published(PAYLOAD, Some("my-app")))).await;
    assert_eq!(e.category(), "claim_expression", "{e}");
    assert_eq!(e, no_such_hd());
    // Refused: an `hd` of another domain, with the rule's message.
    let mut other = published(PAYLOAD_HD, Some("my-app"));
    other["hd"] = json!("example.org");
    let e = refused(&v, &sign(&s, &other)).await;
    assert_eq!(
        e,
        AuthError::Claims("the hd claim must be set to example.com".into())
    );
    assert_eq!(e.category(), "claims");

    // Accepted: the payload with `hd` (the third tab's), mapped as the first tab shows.
    let good = published(PAYLOAD_HD, Some("my-app"));
    assert_documented_user(&v.verify(&sign(&s, &good)).await.unwrap());
}

#[tokio::test]
async fn the_fails_user_validation_example() {
    let s = signer();
    let v = verifier(data!("fails-user-validation.yaml"), &s).await;

    // Refused, as the page says: the username is mapped to `system:foo`.
    let good_claims = published(PAYLOAD_HD, Some("my-app"));
    let e = refused(&v, &sign(&s, &good_claims)).await;
    assert_eq!(
        e,
        AuthError::Claims("username cannot used reserved system: prefix".into())
    );
    assert_eq!(e.category(), "claims");
    // The claim rule held and the user rule did not, in that order.
    let rules = v.claim_rules().expect("claim rules");
    let evaluation = evaluate(&rules, good_claims.as_object().unwrap());
    let outcomes: Vec<(&str, bool)> = evaluation
        .rules
        .iter()
        .map(|r| (r.rule.as_str(), r.passed))
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                r#"jwt[0].claimValidationRules[0].expression: claims.hd == "example.com""#,
                true
            ),
            (
                "jwt[0].userValidationRules[0].expression: !user.username.startsWith('system:')",
                false
            ),
        ]
    );

    // This configuration accepts no token: every username it maps begins with
    // `system:`. A payload without `hd` is refused earlier, by the claim rule.
    let e = refused(&v, &sign(&s, &published(PAYLOAD, Some("my-app")))).await;
    assert_eq!(e, no_such_hd());
}
