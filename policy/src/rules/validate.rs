//! Value checks used while compiling (can this glob ever match a real
//! Kubernetes name?) and the shadowed-rule warning.

use crate::glob::Glob;
use crate::subject::{ANONYMOUS_USER, UNAUTHENTICATED_GROUP};

use super::model::{Effect, ResourceEntry, Rule, SubjectMatcher, Target};

/// Shape constraints of one kind of Kubernetes value.
pub(crate) struct Shape {
    /// What the value is, for messages ("namespace").
    pub(crate) what: &'static str,
    /// Human summary of the rule, for messages.
    pub(crate) rule: &'static str,
    pub(crate) allowed: fn(char) -> bool,
    pub(crate) max_len: usize,
    /// First and last characters must be alphanumeric.
    pub(crate) alnum_edges: bool,
    /// Substrings that can never occur.
    pub(crate) forbidden: &'static [&'static str],
    /// Whole values that can never occur.
    pub(crate) forbidden_exact: &'static [&'static str],
}

fn lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

pub(crate) const NAMESPACE: Shape = Shape {
    what: "namespace",
    rule: "namespaces are DNS-1123 labels: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters",
    allowed: |c| lower_alnum(c) || c == '-',
    max_len: 63,
    alnum_edges: true,
    forbidden: &[],
    forbidden_exact: &[],
};

pub(crate) const API_GROUP: Shape = Shape {
    what: "api group",
    rule: "api groups are DNS-1123 subdomains: lower-case letters, digits, '-' and '.', at most 253 characters (\"\" is the core group)",
    allowed: |c| lower_alnum(c) || c == '-' || c == '.',
    max_len: 253,
    alnum_edges: true,
    forbidden: &["..", ".-", "-."],
    forbidden_exact: &[],
};

pub(crate) const RESOURCE: Shape = Shape {
    what: "resource",
    rule: "resource and subresource names are lower-case letters, digits, '-' and '.'",
    allowed: |c| lower_alnum(c) || c == '-' || c == '.',
    max_len: 253,
    alnum_edges: false,
    forbidden: &[],
    forbidden_exact: &[],
};

pub(crate) const NAME: Shape = Shape {
    what: "name",
    rule: "object names cannot contain '/', '%' or control characters, nor be '.' or '..'",
    allowed: |c| !c.is_control() && c != '/' && c != '%',
    max_len: 253 + 16, // service proxy names carry a scheme and port
    alnum_edges: false,
    forbidden: &[],
    forbidden_exact: &[".", ".."],
};

impl Shape {
    /// `Err(message)` when no valid value can match `glob`.
    pub(crate) fn check(&self, glob: &Glob) -> Result<(), String> {
        let parts = glob.parts();
        let cannot = || {
            Err(format!(
                "glob that cannot match any {}: {}",
                self.what, self.rule
            ))
        };
        if let Some(lit) = glob.literal()
            && self.forbidden_exact.contains(&lit)
        {
            return cannot();
        }
        let literal_len: usize = parts.iter().map(|p| p.len()).sum();
        if literal_len > self.max_len {
            return cannot();
        }
        for p in &parts {
            if !p.chars().all(self.allowed) || self.forbidden.iter().any(|f| p.contains(f)) {
                return cannot();
            }
        }
        if self.alnum_edges {
            let first = parts.first().and_then(|p| p.chars().next());
            let last = parts.last().and_then(|p| p.chars().last());
            if first.is_some_and(|c| !c.is_ascii_alphanumeric())
                || last.is_some_and(|c| !c.is_ascii_alphanumeric())
            {
                return cannot();
            }
        }
        Ok(())
    }
}

/// Allow rules that a deny rule makes dead: (allow index, deny index).
/// Conservative: reported only when coverage is certain.
pub(crate) fn shadowed(rules: &[Rule]) -> Vec<(usize, usize)> {
    let denies: Vec<usize> = (0..rules.len())
        .filter(|&i| rules[i].effect == Effect::Deny)
        .collect();
    let mut out = Vec::new();
    for (a, allow) in rules.iter().enumerate() {
        if allow.effect != Effect::Allow {
            continue;
        }
        if let Some(&d) = denies.iter().find(|&&d| {
            subjects_covered(&rules[d].subjects, &allow.subjects)
                && target_covered(&rules[d].target, &allow.target)
        }) {
            out.push((a, d));
        }
    }
    out
}

fn subjects_covered(d: &SubjectMatcher, a: &SubjectMatcher) -> bool {
    if !d.not_users.is_empty() || !d.not_groups.is_empty() {
        return false;
    }
    if d.users.contains(&Glob::Any) {
        return true;
    }
    // A literal, non-anonymous name only ever belongs to an authenticated caller.
    let auth_user = |g: &Glob| d.authenticated && g.literal().is_some_and(|u| u != ANONYMOUS_USER);
    let auth_group =
        |g: &Glob| d.authenticated && g.literal().is_some_and(|u| u != UNAUTHENTICATED_GROUP);
    (!a.authenticated || d.authenticated)
        && a.users
            .iter()
            .all(|u| auth_user(u) || d.users.iter().any(|g| g.covers(u)))
        && a.groups
            .iter()
            .all(|u| auth_group(u) || d.groups.iter().any(|g| g.covers(u)))
        && a.claims.iter().all(|c| {
            d.authenticated
                || d.claims
                    .iter()
                    .any(|dc| dc.path == c.path && c.values.iter().all(|v| dc.values.contains(v)))
        })
}

fn target_covered(d: &Target, a: &Target) -> bool {
    match (d, a) {
        (Target::Resources(ds), Target::Resources(as_)) => as_
            .iter()
            .all(|ae| ds.iter().any(|de| entry_covered(de, ae))),
        (Target::Paths(ds), Target::Paths(as_)) => {
            as_.iter().all(|ae| ds.iter().any(|de| de.covers(ae)))
        }
        _ => false,
    }
}

fn entry_covered(d: &ResourceEntry, a: &ResourceEntry) -> bool {
    d.verbs.covers(&a.verbs)
        && a.api_groups
            .iter()
            .all(|ag| d.api_groups.iter().any(|dg| dg.covers(ag)))
        && a.resources
            .iter()
            .all(|ar| d.resources.iter().any(|dr| dr.covers(ar)))
        && match (&d.namespaces, &a.namespaces) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(dn), Some(an)) => an.iter().all(|x| dn.iter().any(|y| y.covers(x))),
        }
        && match (&d.names, &a.names) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(dn), Some(an)) => an.iter().all(|x| dn.iter().any(|y| y.covers(x))),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let ok = |s: &Shape, g: &str| s.check(&Glob::new(g)).is_ok();
        assert!(ok(&NAMESPACE, "dev"));
        assert!(ok(&NAMESPACE, "team-*"));
        assert!(ok(&NAMESPACE, "*"));
        assert!(ok(&NAMESPACE, "*-prod"));
        assert!(!ok(&NAMESPACE, "Dev"));
        assert!(!ok(&NAMESPACE, "team_*"));
        assert!(!ok(&NAMESPACE, "-team*"));
        assert!(!ok(&NAMESPACE, "*team-"));
        assert!(!ok(&NAMESPACE, "a.b"));
        assert!(!ok(&NAMESPACE, &"a".repeat(64)));
        assert!(ok(&API_GROUP, "apps"));
        assert!(ok(&API_GROUP, "*.k8s.io"));
        assert!(!ok(&API_GROUP, "Apps"));
        assert!(!ok(&API_GROUP, "a..b"));
        assert!(ok(&RESOURCE, "pods"));
        assert!(!ok(&RESOURCE, "Pods"));
        assert!(ok(&NAME, "system:admin"));
        assert!(ok(&NAME, "Web*"));
        assert!(!ok(&NAME, "a/b"));
        assert!(!ok(&NAME, ".."));
        assert!(!ok(&NAME, "a%2f"));
    }
}
