//! The rules that apply to one subject, in words: what the sign-in page shows a person
//! ("what the policy lets you do"). Deny rules are listed too, since any of them wins.
//! A description never claims more than the rule: each entry names exactly its verbs,
//! groups, resources, namespaces and names (globs as written), and the identity the rule
//! forwards as.

use crate::glob::Glob;
use crate::subject::Subject;

use super::Policy;
use super::model::{
    Effect, METHODS, NamespacePattern, ResourcePattern, Rule, Target, VERBS, VerbSet,
};

/// One rule that applies to a subject, described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleDescription {
    /// The rule's name.
    pub name: String,
    /// An allow rule (`false`: a deny rule, which wins over every allow).
    pub allow: bool,
    /// One sentence per resource or path entry.
    pub entries: Vec<String>,
    /// For an allow rule that maps the identity (`as_user`, `as_groups`): who the request
    /// is forwarded as, e.g. `viewer groups [readers]`.
    pub forwarded_as: Option<String>,
}

impl Policy {
    /// The rules whose subjects match `subject`, in file order, described. The decision
    /// still takes the request: deny rules win, and the first allow rule decides.
    pub fn describe_for(&self, subject: &Subject) -> Vec<RuleDescription> {
        self.rules
            .iter()
            .filter(|r| r.subjects.matches(subject))
            .map(|r| describe(r, subject))
            .collect()
    }
}

fn describe(rule: &Rule, subject: &Subject) -> RuleDescription {
    let entries = match &rule.target {
        Target::Resources(entries) => entries
            .iter()
            .map(|e| {
                let groups = list(e.api_groups.iter().map(|g| match g.as_str() {
                    "" => "the core group".to_string(),
                    "*" => "every API group".to_string(),
                    g => format!("group {g}"),
                }));
                let resources = list(e.resources.iter().map(|p| match p {
                    ResourcePattern::All => "every resource and subresource".to_string(),
                    ResourcePattern::Plain(g) => glob(g),
                    ResourcePattern::Sub(r, s) => format!("{}/{}", r.as_str(), s.as_str()),
                }));
                let namespaces = match &e.namespaces {
                    None => "in every namespace and cluster-wide".to_string(),
                    Some(ns) => list(ns.iter().map(|n| match n {
                        NamespacePattern::None => "cluster-wide".to_string(),
                        NamespacePattern::Glob(g) => format!("in namespace {}", glob(g)),
                    })),
                };
                let names = match &e.names {
                    None => String::new(),
                    Some(names) => format!(", only named {}", list(names.iter().map(glob))),
                };
                format!(
                    "{} on {resources} ({groups}), {namespaces}{names}",
                    verbs(&e.verbs, &VERBS)
                )
            })
            .collect(),
        Target::Paths(entries) => entries
            .iter()
            .map(|p| {
                let path = format!("/{}", p.segments.join("/"));
                let scope = if p.prefix {
                    " and everything under it"
                } else {
                    ""
                };
                let methods = if p.methods.all {
                    verbs(&p.methods, &METHODS)
                } else {
                    verbs(&p.methods, &METHODS).to_uppercase()
                };
                format!("{methods} on the path {path}{scope}")
            })
            .collect(),
    };
    let allow = rule.effect == Effect::Allow;
    let forwarded_as = match (&rule.mapping, allow) {
        (Some(_), true) => rule
            .forward(subject)
            .map(|f| format!("{} groups [{}]", f.user, f.groups.join(", "))),
        _ => None,
    };
    RuleDescription {
        name: rule.name.clone(),
        allow,
        entries,
        forwarded_as,
    }
}

fn glob(g: &Glob) -> String {
    match g {
        Glob::Any => "any".to_string(),
        g => g.as_str().to_string(),
    }
}

fn verbs(set: &VerbSet, names: &[&str]) -> String {
    if set.all {
        return "any verb".to_string();
    }
    list(
        names
            .iter()
            .enumerate()
            .filter(|(bit, _)| set.contains(Some(*bit)))
            .map(|(_, v)| v.to_string()),
    )
}

fn list(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use crate::{Policy, Subject};

    #[test]
    fn the_rules_that_match_are_described_in_file_order() {
        let text = r#"
default = "deny"
[[rule]]
name = "discovery"
effect = "allow"
subjects = { authenticated = true }
paths = [{ path = "/api", prefix = true, methods = ["get"] }]
[[rule]]
name = "no-secrets"
effect = "deny"
subjects = { authenticated = true }
resources = [{ api_groups = [""], resources = ["secrets"], verbs = ["*"] }]
[[rule]]
name = "devs-read"
effect = "allow"
subjects = { groups = ["devs"] }
resources = [{ api_groups = ["", "apps"], resources = ["pods", "pods/log"], verbs = ["get", "list"], namespaces = ["dev"], names = ["web-*"] }]
as_groups = ["readers"]
[[rule]]
name = "admins"
effect = "allow"
subjects = { groups = ["admins"] }
resources = [{ api_groups = ["*"], resources = ["*"], verbs = ["*"] }]
"#;
        let policy = Policy::from_toml("p.toml", text).unwrap().policy;
        let alice = Subject::new("alice", ["devs"]);
        let d = policy.describe_for(&alice);
        let names: Vec<_> = d.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["discovery", "no-secrets", "devs-read"]);
        assert_eq!(
            d[0].entries,
            ["GET on the path /api and everything under it"]
        );
        assert!(!d[1].allow);
        assert_eq!(
            d[1].entries,
            ["any verb on secrets (the core group), in every namespace and cluster-wide"]
        );
        assert_eq!(
            d[2].entries,
            [
                "get, list on pods, pods/log (the core group, group apps), in namespace dev, only named web-*"
            ]
        );
        assert_eq!(d[2].forwarded_as.as_deref(), Some("alice groups [readers]"));
        assert_eq!(d[0].forwarded_as, None);
    }
}
