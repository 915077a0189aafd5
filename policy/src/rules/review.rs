//! What the gateway needs from the policy to answer `kubectl auth can-i` truthfully: whether
//! a decision could change with a name or a wildcard the review cannot express
//! ([`Policy::every_name`], [`Policy::wildcard_deny`]), and the literal grants and forwarded
//! identities a subject's allow rules name ([`Policy::grants`]), from which a rules review
//! is intersected with the API server's.
//!
//! Everything here errs towards "cannot tell": a caller that gets `None` or a rule name
//! answers less, never more.

use crate::glob::Glob;
use crate::request::{RequestAttributes, ResourceAttributes};
use crate::subject::{ForwardIdentity, Subject};

use super::Policy;
use super::model::{Effect, ResourcePattern, Rule, Target, VERBS, verb_bit};

/// One verb on one resource (or subresource) of one API group: a cell of a rules review.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    /// API group; "" is the core group.
    pub api_group: String,
    /// Resource, e.g. `pods`.
    pub resource: String,
    /// Subresource, e.g. `log`; "" for the resource itself.
    pub subresource: String,
    /// A Kubernetes verb.
    pub verb: String,
}

/// The literal grants of the allow rules that apply to a subject, and who they forward as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Every literal verb × group × resource an applicable allow rule names (`*` verbs
    /// expanded to the Kubernetes verbs). Namespaces and names are not considered here:
    /// each cell is still decided with [`Policy::every_name`].
    pub cells: Vec<Cell>,
    /// Some applicable allow rule names a group or resource by a glob, so `cells` does
    /// not hold everything it grants.
    pub globbed: bool,
    /// The identities the applicable allow rules forward as (the subject's own first),
    /// without repeats.
    pub identities: Vec<ForwardIdentity>,
}

impl Policy {
    /// The identity a request with `attrs` is forwarded as when the policy allows it for
    /// every name *and* without one (what an RBAC rule without `resourceNames` grants), and
    /// with the same identity whatever the name; `None` when it is denied, or when a rule
    /// with `names` could change the answer for some name.
    pub fn every_name(
        &self,
        subject: &Subject,
        attrs: &ResourceAttributes,
    ) -> Option<ForwardIdentity> {
        let unnamed = ResourceAttributes {
            name: String::new(),
            ..attrs.clone()
        };
        let decision = self.decide(subject, &RequestAttributes::Resource(unnamed.clone()));
        let forward =
            std::sync::Arc::unwrap_or_clone(decision.forward_as.filter(|_| decision.allowed)?);
        let deciding = decision.rule.as_deref();
        let bit = verb_bit(&unnamed.verb);
        for rule in &self.rules {
            if !rule.subjects.matches(subject) || !names_matter(rule, &unnamed, bit) {
                continue;
            }
            match rule.effect {
                // Some name is denied.
                Effect::Deny => return None,
                // Some name is decided by this earlier rule, as someone else.
                Effect::Allow
                    if self.precedes(rule, deciding)
                        && rule.forward(subject).as_ref() != Some(&forward) =>
                {
                    return None;
                }
                Effect::Allow => {}
            }
        }
        Some(forward)
    }

    /// For a review whose verb, group, resource or subresource is `*` (a question about
    /// every value at once, which a decision reads as the literal `*`): the first deny
    /// rule that applies to `subject` and could deny some of those values.
    pub fn wildcard_deny(&self, subject: &Subject, attrs: &ResourceAttributes) -> Option<&str> {
        self.rules
            .iter()
            .filter(|r| r.effect == Effect::Deny && r.subjects.matches(subject))
            .find(|r| could_match(r, attrs))
            .map(|r| r.name.as_str())
    }

    /// The literal grants and forwarded identities of the allow rules that apply to
    /// `subject` (resource rules only).
    pub fn grants(&self, subject: &Subject) -> Grants {
        let mut grants = Grants {
            identities: vec![ForwardIdentity::of(subject)],
            ..Grants::default()
        };
        for rule in &self.rules {
            if rule.effect != Effect::Allow || !rule.subjects.matches(subject) {
                continue;
            }
            let Target::Resources(entries) = &rule.target else {
                continue;
            };
            if let Some(identity) = rule.forward(subject)
                && !grants.identities.contains(&identity)
            {
                grants.identities.push(identity);
            }
            for entry in entries {
                let verbs: Vec<&str> = VERBS
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| entry.verbs.contains(Some(*bit)))
                    .map(|(_, v)| *v)
                    .collect();
                for group in &entry.api_groups {
                    let Some(group) = group.literal() else {
                        grants.globbed = true;
                        continue;
                    };
                    for pattern in &entry.resources {
                        let Some((resource, subresource)) = literal_resource(pattern) else {
                            grants.globbed = true;
                            continue;
                        };
                        for verb in &verbs {
                            let cell = Cell {
                                api_group: group.to_owned(),
                                resource: resource.to_owned(),
                                subresource: subresource.to_owned(),
                                verb: (*verb).to_owned(),
                            };
                            if !grants.cells.contains(&cell) {
                                grants.cells.push(cell);
                            }
                        }
                    }
                }
            }
        }
        grants
    }

    fn precedes(&self, rule: &Rule, deciding: Option<&str>) -> bool {
        let position = |name: &str| self.rules.iter().position(|r| r.name == name);
        match (position(&rule.name), deciding.and_then(position)) {
            (Some(a), Some(b)) => a < b,
            _ => true,
        }
    }
}

/// `rule` matches `attrs` apart from the name, and limits names: the decision for some
/// name could differ from the decision without one.
fn names_matter(rule: &Rule, attrs: &ResourceAttributes, bit: Option<usize>) -> bool {
    let Target::Resources(entries) = &rule.target else {
        return false;
    };
    entries.iter().any(|e| {
        e.names.is_some() && {
            let Some(name) = e.names.as_ref().and_then(|n| n.first()) else {
                return false;
            };
            // Any name the entry admits, to ask whether it matches otherwise.
            let named = ResourceAttributes {
                name: sample(name),
                ..attrs.clone()
            };
            e.matches(&named, bit)
        }
    })
}

/// A value `glob` matches.
fn sample(glob: &Glob) -> String {
    glob.parts().concat()
}

/// Whether a deny rule could match some request the wildcard attributes stand for: a `*`
/// verb, group, resource or subresource matches anything the rule names, a `*` resource
/// includes its subresources, and names are not read (a deny with names might still hit).
fn could_match(rule: &Rule, attrs: &ResourceAttributes) -> bool {
    let Target::Resources(entries) = &rule.target else {
        return false;
    };
    let any = |v: &str| v == "*";
    let resource_any = any(&attrs.resource);
    let sub_any = any(&attrs.subresource) || (resource_any && attrs.subresource.is_empty());
    let resource = |p: &ResourcePattern| match p {
        ResourcePattern::All => true,
        ResourcePattern::Plain(g) => {
            (attrs.subresource.is_empty() || sub_any)
                && (resource_any || g.matches(&attrs.resource))
        }
        ResourcePattern::Sub(r, s) => {
            (resource_any || r.matches(&attrs.resource))
                && (sub_any || (!attrs.subresource.is_empty() && s.matches(&attrs.subresource)))
        }
    };
    entries.iter().any(|e| {
        (any(&attrs.verb) || e.verbs.contains(verb_bit(&attrs.verb)))
            && (any(&attrs.api_group) || e.api_groups.iter().any(|g| g.matches(&attrs.api_group)))
            && e.resources.iter().any(resource)
            && e.namespaces
                .as_ref()
                .is_none_or(|ns| ns.iter().any(|p| p.matches(&attrs.namespace)))
    })
}

/// `pods` or `pods/log` when the pattern is literal.
fn literal_resource(pattern: &ResourcePattern) -> Option<(&str, &str)> {
    match pattern {
        ResourcePattern::All => None,
        ResourcePattern::Plain(g) => Some((g.literal()?, "")),
        ResourcePattern::Sub(r, s) => Some((r.literal()?, s.literal()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[rule]]
name = "no-named-secret"
effect = "deny"
subjects = { authenticated = true }
resources = [{ api_groups = [""], resources = ["secrets"], names = ["root"], verbs = ["get"] }]

[[rule]]
name = "no-exec"
effect = "deny"
subjects = { groups = ["devs"] }
resources = [{ api_groups = [""], resources = ["pods/exec"], namespaces = ["prod"], verbs = ["*"] }]

[[rule]]
name = "web-as-robot"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [{ api_groups = [""], resources = ["configmaps"], names = ["web"], verbs = ["get"] }]
as_user = "robot"

[[rule]]
name = "devs"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [
  { api_groups = [""], resources = ["pods", "pods/log", "secrets", "configmaps"], namespaces = ["dev", "prod"], verbs = ["get", "list"] },
  { api_groups = ["app*"], resources = ["deployments"], verbs = ["get"] },
  { api_groups = ["*"], resources = ["*"], namespaces = ["prod"], verbs = ["*"] },
]
"#;

    fn policy() -> Policy {
        Policy::from_toml("p.toml", POLICY).unwrap().policy
    }

    fn attrs(verb: &str, resource: &str, subresource: &str, ns: &str) -> ResourceAttributes {
        ResourceAttributes {
            verb: verb.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: ns.into(),
            api_version: "v1".into(),
            ..ResourceAttributes::default()
        }
    }

    #[test]
    fn every_name_holds_only_when_no_name_can_change_the_answer() {
        let p = policy();
        let alice = Subject::new("alice", ["devs"]);
        let own = ForwardIdentity::of(&alice);
        assert_eq!(
            p.every_name(&alice, &attrs("get", "pods", "", "dev")),
            Some(own.clone())
        );
        assert_eq!(
            p.every_name(&alice, &attrs("create", "pods", "log", "dev")),
            None,
            "not granted"
        );
        assert_eq!(
            p.every_name(&alice, &attrs("get", "pods", "", "qa")),
            None,
            "not in qa"
        );
        // `get secrets` is allowed without a name, but the secret "root" is denied.
        assert_eq!(
            p.every_name(&alice, &attrs("get", "secrets", "", "dev")),
            None
        );
        assert_eq!(
            p.every_name(&alice, &attrs("list", "secrets", "", "dev")),
            Some(own.clone())
        );
        // configmap "web" is forwarded as someone else.
        assert_eq!(
            p.every_name(&alice, &attrs("get", "configmaps", "", "dev")),
            None
        );
        assert_eq!(
            p.every_name(&alice, &attrs("list", "configmaps", "", "dev")),
            Some(own)
        );
    }

    #[test]
    fn a_wildcard_review_finds_the_denies_that_could_apply() {
        let p = policy();
        let alice = Subject::new("alice", ["devs"]);
        let bob = Subject::new("bob", ["guests"]);
        let all = attrs("*", "*", "", "prod");
        assert_eq!(p.wildcard_deny(&alice, &all), Some("no-named-secret"));
        assert_eq!(
            p.wildcard_deny(&alice, &attrs("*", "pods", "*", "prod")),
            Some("no-exec")
        );
        assert_eq!(
            p.wildcard_deny(&alice, &attrs("*", "pods", "*", "dev")),
            None
        );
        assert_eq!(
            p.wildcard_deny(&alice, &attrs("*", "pods", "", "prod")),
            None
        );
        assert_eq!(
            p.wildcard_deny(&alice, &attrs("create", "pods", "*", "prod")),
            Some("no-exec")
        );
        assert_eq!(
            p.wildcard_deny(&alice, &attrs("get", "pods", "*", "prod")),
            Some("no-exec")
        );
        assert_eq!(
            p.wildcard_deny(&bob, &attrs("*", "pods", "*", "prod")),
            None
        );
    }

    #[test]
    fn grants_list_literal_cells_and_identities() {
        let p = policy();
        let grants = p.grants(&Subject::new("alice", ["devs"]));
        assert!(grants.globbed, "app* and * are globs");
        let cell = |r: &str, s: &str, v: &str| Cell {
            api_group: String::new(),
            resource: r.into(),
            subresource: s.into(),
            verb: v.into(),
        };
        assert!(grants.cells.contains(&cell("pods", "log", "list")));
        assert!(grants.cells.contains(&cell("configmaps", "", "get")));
        assert!(!grants.cells.contains(&cell("pods", "", "create")));
        let users: Vec<&str> = grants.identities.iter().map(|i| i.user.as_str()).collect();
        assert_eq!(users, ["alice", "robot"]);
        let bob = p.grants(&Subject::new("bob", ["guests"]));
        assert!(bob.cells.is_empty() && !bob.globbed);
        assert_eq!(bob.identities.len(), 1);
    }
}
