//! Who is asking, and who the request is forwarded as: the one identity type the gateway
//! uses from authentication through policy, forwarding and audit, and the one claim
//! lookup that both claim mappings and policy selectors read claims with.

use std::collections::BTreeMap;
use std::fmt;

/// An authenticated (or anonymous) caller, as the gateway's authenticator
/// produced it.
#[derive(Clone, Default, PartialEq)]
pub struct Subject {
    /// User name (e.g. the OIDC username claim after prefixing).
    pub user: String,
    /// Group names.
    pub groups: Vec<String>,
    /// Stable user id, when the authenticator has one.
    pub uid: Option<String>,
    /// Extra attributes (forwarded as `Impersonate-Extra-*`).
    pub extra: BTreeMap<String, Vec<String>>,
    /// Raw token claims, for `subjects.claims` selectors.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Debug for Subject {
    // Claims may hold personal data; logs and test failures need the name and groups.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subject")
            .field("user", &self.user)
            .field("uid", &self.uid)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// Looks up a claim: the whole `path` as a top-level key first (claim names may contain
/// dots, e.g. URLs), else a walk through nested objects split at dots
/// (`realm_access.roles`). The authenticator's claim mappings and the policy's claim
/// selectors both read claims through this, so they can never disagree on a claim.
pub fn claim<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    path: &str,
) -> Option<&'a serde_json::Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut steps = path.split('.');
    let mut cur = claims.get(steps.next()?)?;
    for step in steps {
        cur = cur.as_object()?.get(step)?;
    }
    Some(cur)
}

/// User name Kubernetes gives unauthenticated requests.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// Group Kubernetes gives unauthenticated requests.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";

impl Subject {
    /// A subject with just a user name and groups.
    pub fn new(
        user: impl Into<String>,
        groups: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Subject {
            user: user.into(),
            groups: groups.into_iter().map(Into::into).collect(),
            ..Subject::default()
        }
    }

    /// What `authenticated = true` selects: a non-empty user name that is not
    /// Kubernetes' anonymous identity, outside the unauthenticated group.
    pub fn is_authenticated(&self) -> bool {
        !self.user.is_empty()
            && self.user != ANONYMOUS_USER
            && !self.groups.iter().any(|g| g == UNAUTHENTICATED_GROUP)
    }

    /// Looks up one of the caller's claims with [`claim`].
    pub fn claim(&self, path: &str) -> Option<&serde_json::Value> {
        claim(&self.claims, path)
    }
}

/// The identity a request is forwarded upstream with (`Impersonate-*`), with
/// any rule templates already rendered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardIdentity {
    /// `Impersonate-User`.
    pub user: String,
    /// `Impersonate-Group`, one per entry.
    pub groups: Vec<String>,
    /// `Impersonate-Uid`.
    pub uid: Option<String>,
    /// `Impersonate-Extra-<key>`.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl ForwardIdentity {
    /// The subject's own identity, unchanged.
    pub fn of(subject: &Subject) -> Self {
        ForwardIdentity {
            user: subject.user.clone(),
            groups: subject.groups.clone(),
            uid: subject.uid.clone(),
            extra: subject.extra.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_lookup() {
        let mut s = Subject::new("a", ["g"]);
        let serde_json::Value::Object(m) = json!({
            "realm_access": {"roles": ["admin", "dev"]},
            "https://example.com/team": "blue",
            "email": "a@example.com",
        }) else {
            unreachable!()
        };
        s.claims = m;
        assert_eq!(
            s.claim("realm_access.roles"),
            Some(&json!(["admin", "dev"]))
        );
        assert_eq!(s.claim("https://example.com/team"), Some(&json!("blue")));
        assert_eq!(s.claim("email.x"), None);
        assert_eq!(s.claim("nope"), None);
    }

    #[test]
    fn debug_output_leaves_claims_out() {
        let mut s = Subject::new("alice", ["devs"]);
        s.claims.insert("email".into(), json!("alice@example.com"));
        let shown = format!("{s:?}");
        assert!(shown.contains("alice") && shown.contains("devs"), "{shown}");
        assert!(!shown.contains("example.com"), "{shown}");
    }

    #[test]
    fn authenticated() {
        assert!(Subject::new("alice", Vec::<String>::new()).is_authenticated());
        assert!(!Subject::new("", Vec::<String>::new()).is_authenticated());
        assert!(!Subject::new(ANONYMOUS_USER, Vec::<String>::new()).is_authenticated());
        assert!(!Subject::new("x", [UNAUTHENTICATED_GROUP]).is_authenticated());
    }
}
