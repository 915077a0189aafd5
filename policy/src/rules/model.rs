//! Compiled rules: everything parsed, validated and precompiled, so matching
//! is comparisons only.

use compact_str::CompactString;

use crate::glob::Glob;
use crate::request::ResourceAttributes;
use crate::subject::{ForwardIdentity, Subject};

use super::template::Template;

/// Kubernetes verbs a rule may name, in bit order.
pub(crate) use crate::request::KUBERNETES_VERBS as VERBS;
/// HTTP methods (lower case) a path rule may name, in bit order.
pub const METHODS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];

/// A set of verbs (or methods) by position in [`VERBS`] / [`METHODS`];
/// `all` is `*`, which also covers verbs outside the list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct VerbSet {
    pub(crate) bits: u16,
    pub(crate) all: bool,
}

impl VerbSet {
    pub(crate) fn contains(&self, bit: Option<usize>) -> bool {
        self.all || bit.is_some_and(|b| self.bits & (1 << b) != 0)
    }

    /// Every verb in `other` is in `self`.
    pub(crate) fn covers(&self, other: &VerbSet) -> bool {
        self.all || (!other.all && other.bits & !self.bits == 0)
    }
}

pub(crate) fn verb_bit(verb: &str) -> Option<usize> {
    VERBS.iter().position(|v| *v == verb)
}

pub(crate) fn method_bit(method: &str) -> Option<usize> {
    METHODS.iter().position(|m| *m == method)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    Allow,
    Deny,
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) effect: Effect,
    /// Byte span of the rule's name, for warnings.
    pub(crate) name_span: std::ops::Range<usize>,
    pub(crate) subjects: SubjectMatcher,
    pub(crate) target: Target,
    pub(crate) mapping: Option<Mapping>,
}

#[derive(Debug, Default)]
pub(crate) struct SubjectMatcher {
    pub(crate) authenticated: bool,
    pub(crate) users: Vec<Glob>,
    pub(crate) groups: Vec<Glob>,
    pub(crate) claims: Vec<ClaimMatcher>,
    pub(crate) not_users: Vec<Glob>,
    pub(crate) not_groups: Vec<Glob>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClaimMatcher {
    pub(crate) path: String,
    /// Any of these; a claim matches when it equals one, or is an array
    /// containing one. Booleans and numbers compare by their JSON text.
    pub(crate) values: Vec<String>,
}

impl ClaimMatcher {
    fn matches(&self, subject: &Subject) -> bool {
        match subject.claim(&self.path) {
            Some(serde_json::Value::Array(items)) => items.iter().any(|v| self.scalar_matches(v)),
            Some(v) => self.scalar_matches(v),
            None => false,
        }
    }

    fn scalar_matches(&self, v: &serde_json::Value) -> bool {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return false,
        };
        self.values.contains(&text)
    }
}

impl SubjectMatcher {
    pub(crate) fn matches(&self, s: &Subject) -> bool {
        let positive = (self.authenticated && s.is_authenticated())
            || self.users.iter().any(|g| g.matches(&s.user))
            || self
                .groups
                .iter()
                .any(|g| s.groups.iter().any(|sg| g.matches(sg)))
            || self.claims.iter().any(|c| c.matches(s));
        positive
            && !self.not_users.iter().any(|g| g.matches(&s.user))
            && !self
                .not_groups
                .iter()
                .any(|g| s.groups.iter().any(|sg| g.matches(sg)))
    }

    /// Literal user and group names if every positive selector is a literal
    /// user or group (so the rule can be indexed by them); `None` otherwise.
    pub(crate) fn literal_keys(&self) -> Option<(Vec<&str>, Vec<&str>)> {
        if self.authenticated || !self.claims.is_empty() {
            return None;
        }
        let users = self
            .users
            .iter()
            .map(Glob::literal)
            .collect::<Option<Vec<_>>>()?;
        let groups = self
            .groups
            .iter()
            .map(Glob::literal)
            .collect::<Option<Vec<_>>>()?;
        Some((users, groups))
    }
}

impl Target {
    /// Literal namespace keys ("" for cluster-scoped) if every resource
    /// entry is limited to literal namespaces; `None` otherwise.
    pub(crate) fn literal_namespaces(&self) -> Option<Vec<&str>> {
        let Target::Resources(entries) = self else {
            return None;
        };
        let mut out = Vec::new();
        for e in entries {
            for ns in e.namespaces.as_ref()? {
                out.push(match ns {
                    NamespacePattern::None => "",
                    NamespacePattern::Glob(g) => g.literal()?,
                });
            }
        }
        Some(out)
    }
}

#[derive(Debug)]
pub(crate) enum Target {
    Resources(Vec<ResourceEntry>),
    Paths(Vec<PathEntry>),
}

#[derive(Debug)]
pub(crate) struct ResourceEntry {
    /// Byte span of the entry, for warnings.
    pub(crate) span: std::ops::Range<usize>,
    pub(crate) verbs: VerbSet,
    pub(crate) api_groups: Vec<Glob>,
    pub(crate) resources: Vec<ResourcePattern>,
    /// `None`: any namespace, and no namespace.
    pub(crate) namespaces: Option<Vec<NamespacePattern>>,
    /// `None`: any name, and no name.
    pub(crate) names: Option<Vec<Glob>>,
}

#[derive(Debug)]
pub(crate) enum ResourcePattern {
    /// `*`: every resource and every subresource (RBAC semantics).
    All,
    /// `pods`, `pod*`: the resource itself, never its subresources.
    Plain(Glob),
    /// `pods/log`, `*/proxy`, `pods/*`: only subresources.
    Sub(Glob, Glob),
}

impl ResourcePattern {
    pub(crate) fn matches(&self, resource: &str, subresource: &str) -> bool {
        match self {
            ResourcePattern::All => true,
            ResourcePattern::Plain(g) => subresource.is_empty() && g.matches(resource),
            ResourcePattern::Sub(r, s) => {
                !subresource.is_empty() && r.matches(resource) && s.matches(subresource)
            }
        }
    }

    /// Conservative subsumption (see `Glob::covers`).
    pub(crate) fn covers(&self, other: &ResourcePattern) -> bool {
        match (self, other) {
            (ResourcePattern::All, _) => true,
            (ResourcePattern::Plain(a), ResourcePattern::Plain(b)) => a.covers(b),
            (ResourcePattern::Sub(a, x), ResourcePattern::Sub(b, y)) => a.covers(b) && x.covers(y),
            _ => false,
        }
    }
}

#[derive(Debug)]
pub(crate) enum NamespacePattern {
    /// `""`: requests without a namespace (cluster-scoped objects, and
    /// list/watch across all namespaces).
    None,
    /// A namespace glob; never matches the empty namespace.
    Glob(Glob),
}

impl NamespacePattern {
    pub(crate) fn matches(&self, ns: &str) -> bool {
        match self {
            NamespacePattern::None => ns.is_empty(),
            NamespacePattern::Glob(g) => !ns.is_empty() && g.matches(ns),
        }
    }

    pub(crate) fn covers(&self, other: &NamespacePattern) -> bool {
        match (self, other) {
            (NamespacePattern::None, NamespacePattern::None) => true,
            (NamespacePattern::Glob(a), NamespacePattern::Glob(b)) => a.covers(b),
            _ => false,
        }
    }
}

impl ResourceEntry {
    pub(crate) fn matches(&self, r: &ResourceAttributes, verb_bit: Option<usize>) -> bool {
        self.verbs.contains(verb_bit)
            && self.api_groups.iter().any(|g| g.matches(&r.api_group))
            && self
                .resources
                .iter()
                .any(|p| p.matches(&r.resource, &r.subresource))
            && self
                .namespaces
                .as_ref()
                .is_none_or(|ns| ns.iter().any(|p| p.matches(&r.namespace)))
            && self
                .names
                .as_ref()
                .is_none_or(|ns| !r.name.is_empty() && ns.iter().any(|g| g.matches(&r.name)))
    }
}

#[derive(Debug)]
pub(crate) struct PathEntry {
    pub(crate) segments: Vec<CompactString>,
    pub(crate) prefix: bool,
    pub(crate) methods: VerbSet,
    /// Span of the path when it (and so everything under it) resolves to a
    /// resource request: the entry can never match; kept for the warning.
    pub(crate) resource_path: Option<std::ops::Range<usize>>,
}

impl PathEntry {
    pub(crate) fn matches(&self, segments: &[CompactString], method_bit: Option<usize>) -> bool {
        self.methods.contains(method_bit)
            && if self.prefix {
                segments.starts_with(&self.segments)
            } else {
                segments == self.segments.as_slice()
            }
    }

    pub(crate) fn covers(&self, other: &PathEntry) -> bool {
        self.methods.covers(&other.methods)
            && if self.prefix {
                other.segments.starts_with(&self.segments)
            } else {
                !other.prefix && other.segments == self.segments
            }
    }
}

/// `as_user` / `as_groups` of an allow rule.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub(crate) user: Option<Template>,
    pub(crate) groups: Option<Vec<Template>>,
}

impl Mapping {
    /// With `as_user`, the forwarded identity is entirely the rule's (groups
    /// from `as_groups` or none; the person's uid and extra are dropped, they
    /// describe someone else). With only `as_groups`, the person keeps their
    /// user, uid and extra and gets exactly the listed groups.
    pub(crate) fn render(&self, s: &Subject) -> Option<ForwardIdentity> {
        let groups = match &self.groups {
            Some(ts) => ts.iter().map(|t| t.render(s)).collect::<Option<Vec<_>>>()?,
            None if self.user.is_some() => Vec::new(),
            None => s.groups.clone(),
        };
        match &self.user {
            Some(t) => Some(ForwardIdentity {
                user: t.render(s)?,
                groups,
                uid: None,
                extra: Default::default(),
            }),
            None => Some(ForwardIdentity {
                groups,
                ..ForwardIdentity::of(s)
            }),
        }
    }
}

impl Rule {
    pub(crate) fn matches_resource(&self, r: &ResourceAttributes, verb_bit: Option<usize>) -> bool {
        match &self.target {
            Target::Resources(es) => es.iter().any(|e| e.matches(r, verb_bit)),
            Target::Paths(_) => false,
        }
    }

    pub(crate) fn matches_path(
        &self,
        segments: &[CompactString],
        method_bit: Option<usize>,
    ) -> bool {
        match &self.target {
            Target::Paths(es) => es.iter().any(|e| e.matches(segments, method_bit)),
            Target::Resources(_) => false,
        }
    }

    /// The identity to forward if this allow rule decides; `None` when a
    /// template cannot be rendered for this subject (the rule then does not apply).
    pub(crate) fn forward(&self, s: &Subject) -> Option<ForwardIdentity> {
        match &self.mapping {
            Some(m) => m.render(s),
            None => Some(ForwardIdentity::of(s)),
        }
    }
}
