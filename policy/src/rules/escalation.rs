//! Escalation warnings: allow rules that let through requests Kubernetes
//! knows as privilege escalation paths (creating pods or the controllers
//! that create them, exec and attach, the kubelet proxy, minting
//! service-account tokens, impersonation, RBAC escalate and bind,
//! certificate signing, admission webhooks) or that read secrets directly.
//!
//! They are warnings, not errors: an administrator may mean to grant them,
//! and the API server's RBAC for the forwarded identity still decides
//! upstream. The loader only makes the consequence of a grant visible.
//! Matching goes through the engine's own verb, glob and resource-pattern
//! matching, so `*` and globs count exactly as they do in decisions. Deny
//! rules are not subtracted (except by a rule being wholly shadowed): a deny
//! with exceptions cannot be proven to cover a grant.

use crate::error::{Locator, PolicyWarning};
use crate::glob::Glob;

use super::model::{
    Effect, NamespacePattern, ResourceEntry, ResourcePattern, Rule, Target, verb_bit,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Namespaced,
    Cluster,
}

/// One Kubernetes permission: verbs on a resource of an api group.
struct Grant {
    verbs: &'static [&'static str],
    group: &'static str,
    resource: &'static str,
    /// `""` for the resource itself; `"*"` for any subresource.
    sub: &'static str,
    scope: Scope,
}

/// A kind of escalation: the grants that give it, and why they escalate.
struct Escalation {
    grants: &'static [Grant],
    why: &'static str,
}

const CREATE: &[&str] = &["create"];
const WRITE: &[&str] = &["create", "update", "patch"];
const UPDATE: &[&str] = &["update", "patch"];
/// What a proxy request resolves to: the verb of its method, as in RBAC.
const PROXY: &[&str] = &["get", "create", "update", "patch", "delete"];
const READ: &[&str] = &["get", "list", "watch"];
/// RBAC verbs no request resolves to; only `verbs = ["*"]` covers them.
const IMPERSONATE: &[&str] = &["impersonate"];
const ESCALATE_BIND: &[&str] = &["escalate", "bind"];

const fn ns(verbs: &'static [&'static str], group: &'static str, resource: &'static str) -> Grant {
    Grant {
        verbs,
        group,
        resource,
        sub: "",
        scope: Scope::Namespaced,
    }
}

const fn ns_sub(
    verbs: &'static [&'static str],
    resource: &'static str,
    sub: &'static str,
) -> Grant {
    Grant {
        verbs,
        group: "",
        resource,
        sub,
        scope: Scope::Namespaced,
    }
}

const fn cluster(
    verbs: &'static [&'static str],
    group: &'static str,
    resource: &'static str,
    sub: &'static str,
) -> Grant {
    Grant {
        verbs,
        group,
        resource,
        sub,
        scope: Scope::Cluster,
    }
}

const RBAC: &str = "rbac.authorization.k8s.io";
const CERTIFICATES: &str = "certificates.k8s.io";
const ADMISSION: &str = "admissionregistration.k8s.io";
const AUTHENTICATION: &str = "authentication.k8s.io";

const ESCALATIONS: &[Escalation] = &[
    Escalation {
        grants: &[ns(CREATE, "", "pods")],
        why: "a pod can mount any secret and service-account token of its namespace, and its containers can read them back",
    },
    Escalation {
        grants: &[
            ns_sub(CREATE, "pods", "exec"),
            ns_sub(CREATE, "pods", "attach"),
        ],
        why: "runs commands in (or attaches to) running containers, which hold their pod's secrets and service-account token (kubegate authorises these as create, kubectl's websocket GET included)",
    },
    Escalation {
        grants: &[ns_sub(UPDATE, "pods", "ephemeralcontainers")],
        why: "adds a container to a running pod, which runs with that pod's secrets and service-account token",
    },
    Escalation {
        grants: &[
            ns(WRITE, "apps", "deployments"),
            ns(WRITE, "apps", "replicasets"),
            ns(WRITE, "apps", "statefulsets"),
            ns(WRITE, "apps", "daemonsets"),
            ns(WRITE, "batch", "jobs"),
            ns(WRITE, "batch", "cronjobs"),
            ns(WRITE, "", "replicationcontrollers"),
        ],
        why: "a controller creates pods from its template, and a pod can mount any secret and service-account token of its namespace",
    },
    Escalation {
        // Any verb a proxy request resolves to: `get` is enough for the kubelet's
        // websocket exec, so a read-looking grant is no safer than create.
        grants: &[cluster(PROXY, "", "nodes", "proxy")],
        why: "reaches the kubelet api, which runs commands in any pod on the node (get alone is enough: the kubelet serves exec and attach over websocket GETs)",
    },
    Escalation {
        grants: &[ns_sub(CREATE, "serviceaccounts", "token")],
        why: "mints a token for a service account, which then acts with that account's permissions",
    },
    Escalation {
        grants: &[
            cluster(IMPERSONATE, "", "users", ""),
            cluster(IMPERSONATE, "", "groups", ""),
            ns(IMPERSONATE, "", "serviceaccounts"),
            cluster(IMPERSONATE, AUTHENTICATION, "uids", ""),
            cluster(IMPERSONATE, AUTHENTICATION, "userextras", "*"),
        ],
        why: "impersonation acts as another user, group or service account (verbs \"*\" include impersonate)",
    },
    Escalation {
        grants: &[
            ns(ESCALATE_BIND, RBAC, "roles"),
            cluster(ESCALATE_BIND, RBAC, "clusterroles", ""),
        ],
        why: "escalate writes roles with permissions their author lacks and bind binds them (verbs \"*\" include escalate and bind)",
    },
    Escalation {
        grants: &[
            cluster(CREATE, CERTIFICATES, "certificatesigningrequests", ""),
            cluster(
                UPDATE,
                CERTIFICATES,
                "certificatesigningrequests",
                "approval",
            ),
        ],
        why: "a signed client certificate authenticates as whatever user and groups it names",
    },
    Escalation {
        grants: &[
            cluster(WRITE, ADMISSION, "mutatingwebhookconfigurations", ""),
            cluster(WRITE, ADMISSION, "validatingwebhookconfigurations", ""),
        ],
        why: "an admission webhook receives (and a mutating one rewrites) every api request it matches, secrets included",
    },
    Escalation {
        grants: &[ns(READ, "", "secrets")],
        why: "reads secrets directly, service-account tokens included",
    },
];

/// Where a grant applies. Ordered by breadth: `Every` absorbs `Some`.
#[derive(Default)]
enum Namespaces {
    /// Cluster-scoped grants only.
    #[default]
    Unscoped,
    Some(Vec<String>),
    Every,
}

impl Namespaces {
    fn add(&mut self, other: Namespaces) {
        match other {
            Namespaces::Unscoped => {}
            Namespaces::Every => *self = Namespaces::Every,
            Namespaces::Some(theirs) => match self {
                Namespaces::Every => {}
                Namespaces::Unscoped => *self = Namespaces::Some(theirs),
                Namespaces::Some(mine) => {
                    for n in theirs {
                        if !mine.contains(&n) {
                            mine.push(n);
                        }
                    }
                }
            },
        }
    }

    fn phrase(&self) -> String {
        match self {
            Namespaces::Unscoped => String::new(),
            Namespaces::Every => " in every namespace".to_owned(),
            Namespaces::Some(list) => {
                let quoted: Vec<String> = list.iter().map(|n| format!("{n:?}")).collect();
                let noun = if list.len() == 1 {
                    "namespace"
                } else {
                    "namespaces"
                };
                format!(" in {noun} {}", quoted.join(", "))
            }
        }
    }
}

/// Warnings for every allow rule (not in `skip`, the ascending indices of
/// the wholly shadowed ones) that grants a known escalation path: one per (rule, kind), located at
/// the first resource entry that grants it.
pub(crate) fn escalation_warnings(
    loc: Locator<'_>,
    rules: &[Rule],
    skip: &[usize],
) -> Vec<PolicyWarning> {
    let mut out = Vec::new();
    for (r, rule) in rules.iter().enumerate() {
        let Target::Resources(entries) = &rule.target else {
            continue;
        };
        if rule.effect != Effect::Allow || skip.binary_search(&r).is_ok() {
            continue;
        }
        for kind in ESCALATIONS {
            if let Some(w) = check(loc, rule, entries, kind) {
                out.push(w);
            }
        }
    }
    out
}

fn check(
    loc: Locator<'_>,
    rule: &Rule,
    entries: &[ResourceEntry],
    kind: &Escalation,
) -> Option<PolicyWarning> {
    let mut first = None;
    let mut granted: Vec<(&str, String)> = Vec::new();
    let mut namespaces = Namespaces::default();
    for (i, e) in entries.iter().enumerate() {
        for g in kind.grants {
            for &verb in g.verbs {
                let Some(ns) = entry_grants(e, g, verb) else {
                    continue;
                };
                first.get_or_insert(i);
                namespaces.add(ns);
                let label = match g.sub {
                    "" => g.resource.to_owned(),
                    sub => format!("{}/{sub}", g.resource),
                };
                if !granted.iter().any(|(v, l)| *v == verb && *l == label) {
                    granted.push((verb, label));
                }
            }
        }
    }
    let i = first?;
    let mapped = if rule.mapping.is_some() {
        " (the rule forwards a mapped identity: the gateway still lets this through, and that identity's rbac decides upstream)"
    } else {
        ""
    };
    Some(loc.warning(
        Some(entries[i].span.clone()),
        Some(&rule.name),
        Some(&format!("resources[{i}]")),
        format!(
            "escalation path: {}{}: {}{mapped}",
            describe(&granted),
            namespaces.phrase(),
            kind.why
        ),
    ))
}

/// `create, update on deployments, jobs; update on x/approval`: resources
/// granted the same verbs share one group, in table order.
fn describe(granted: &[(&str, String)]) -> String {
    let mut labels: Vec<(&str, Vec<&str>)> = Vec::new();
    for (verb, label) in granted {
        match labels.iter_mut().find(|(l, _)| l == label) {
            Some((_, verbs)) => verbs.push(verb),
            None => labels.push((label, vec![verb])),
        }
    }
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for (label, verbs) in labels {
        let verbs = verbs.join(", ");
        match groups.iter_mut().find(|(v, _)| *v == verbs) {
            Some((_, ls)) => ls.push(label),
            None => groups.push((verbs, vec![label])),
        }
    }
    groups
        .iter()
        .map(|(verbs, ls)| format!("{verbs} on {}", ls.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether entry `e` lets through `verb` on grant `g`, field by field as
/// [`ResourceEntry::matches`] decides, and if so in which namespaces.
fn entry_grants(e: &ResourceEntry, g: &Grant, verb: &str) -> Option<Namespaces> {
    let resource_matches = |p: &ResourcePattern| match (g.sub, p) {
        // Any subresource (userextras/<key>): some key matches a Sub pattern
        // whose resource part matches, since its key part is a non-empty glob.
        ("*", ResourcePattern::All) => true,
        ("*", ResourcePattern::Sub(r, _)) => r.matches(g.resource),
        ("*", ResourcePattern::Plain(_)) => false,
        (sub, p) => p.matches(g.resource, sub),
    };
    // A create on a collection carries no object name, so an entry limited
    // to names never lets it through.
    let nameless = verb == "create" && g.sub.is_empty();
    if !e.verbs.contains(verb_bit(verb))
        || !e.api_groups.iter().any(|a| a.matches(g.group))
        || !e.resources.iter().any(resource_matches)
        || (nameless && e.names.is_some())
    {
        return None;
    }
    let Some(patterns) = &e.namespaces else {
        return Some(match g.scope {
            Scope::Namespaced => Namespaces::Every,
            Scope::Cluster => Namespaces::Unscoped,
        });
    };
    if g.scope == Scope::Cluster {
        return patterns
            .iter()
            .any(|p| matches!(p, NamespacePattern::None))
            .then_some(Namespaces::Unscoped);
    }
    // `""` on a namespaced resource is the list/watch across all namespaces.
    let across_all = matches!(verb, "list" | "watch");
    let mut named = Vec::new();
    for p in patterns {
        match p {
            NamespacePattern::None if across_all => return Some(Namespaces::Every),
            NamespacePattern::None => {}
            NamespacePattern::Glob(Glob::Any) => return Some(Namespaces::Every),
            NamespacePattern::Glob(glob) => named.push(glob.as_str().to_owned()),
        }
    }
    (!named.is_empty()).then_some(Namespaces::Some(named))
}
