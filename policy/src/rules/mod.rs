//! The policy: loading (schema → validation → compiled rules + index) and
//! deciding.

pub(crate) mod compile;
mod decide;
mod describe;
mod escalation;
mod model;
mod prefilter;
mod review;
mod schema;
mod template;
mod validate;

use std::fmt;

use crate::error::{Locator, PolicyError, PolicyWarning};
use crate::request::RequestAttributes;
use crate::subject::Subject;

pub use decide::Decision;
pub use describe::RuleDescription;
pub use model::METHODS as HTTP_METHODS;
pub use review::{Cell, Grants};

/// A compiled policy. Immutable once loaded; share it behind an `Arc`.
///
/// # Language
///
/// ```toml
/// default = "deny"          # optional; the only accepted value
///
/// [[rule]]
/// name = "devs-read-dev"    # required, unique, non-empty
/// description = "free text" # optional, ignored
/// effect = "allow"          # "allow" | "deny"
/// subjects = { groups = ["devs"], not_users = ["mallory"] }
/// resources = [             # exactly one of `resources` / `paths`
///   { api_groups = [""], resources = ["pods", "pods/log"], namespaces = ["dev", "team-*"], verbs = ["get", "list", "watch"] },
/// ]
/// as_user = "dev:{username}"   # allow rules only; placeholders {username} {uid}
/// as_groups = ["viewers"]
/// ```
///
/// - `subjects`: `users`, `groups` (globs), `claims` (claim path → string or
///   list of strings; a claim matches when it equals a value or is an array
///   containing one; booleans/numbers compare by JSON text; the path is a
///   top-level key first, else dot-separated through nested objects),
///   `authenticated = true`, `not_users`, `not_groups`. The rule applies when
///   any positive selector matches and no negation does; at least one
///   positive selector is required.
/// - `resources` entries: `api_groups` (`""` core, globs), `resources`
///   (`*` = everything incl. subresources; `pods` or `pod*` = the resource
///   only; `pods/log`, `*/proxy`, `pods/*` = subresources only), optional
///   `namespaces` (omitted = any incl. none; `""` = requests without a
///   namespace; globs never match the empty namespace), optional `names`
///   (omitted = any incl. none; otherwise requests must carry a name),
///   `verbs` (get list watch create update patch delete deletecollection
///   or `*`). exec/attach/portforward subresources are always `create`; a
///   proxy subresource has its method's verb (GET `get`, POST `create`, ...).
/// - `paths` entries (non-resource requests only): `path` (canonical),
///   `prefix` (whole-segment prefix, default false), `methods` (get post put
///   patch delete head options or `*`; default all).
/// - Globs: `*` matches any run of characters; everything else is literal.
/// - Decision: any matching deny rule denies; else the first matching allow
///   rule in file order allows (and maps the identity); else denied.
/// - Warnings (the policy still loads): allow rules a deny rule wholly
///   shadows, resource paths in path rules, and allow rules granting a known
///   Kubernetes escalation path (creating pods or workload controllers, exec
///   and attach, nodes/proxy, service-account tokens, impersonation, RBAC
///   escalate/bind, certificate signing, admission webhooks, reading secrets).
pub struct Policy {
    source: String,
    rules: Vec<model::Rule>,
    index: decide::Index,
}

/// A policy that loaded, with what looked suspicious about it.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The compiled policy.
    pub policy: Policy,
    /// Legal but probably unintended constructs (shadowed rules), and grants
    /// that are known escalation paths in Kubernetes.
    pub warnings: Vec<PolicyWarning>,
}

impl Policy {
    /// Parses, validates and compiles a policy. `source` is the file name
    /// used in error messages.
    pub fn from_toml(source: &str, text: &str) -> Result<LoadedPolicy, PolicyError> {
        let loc = Locator { file: source, text };
        let (rules, warnings) = compile::compile(loc)?;
        let index = decide::Index::build(&rules);
        Ok(LoadedPolicy {
            policy: Policy {
                source: source.to_owned(),
                rules,
                index,
            },
            warnings,
        })
    }

    /// Decides a request: any matching deny rule denies; otherwise the first
    /// matching allow rule (file order) allows; otherwise denied.
    pub fn decide(&self, subject: &Subject, attrs: &RequestAttributes) -> Decision {
        decide::decide(&self.rules, &self.index, subject, attrs)
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Rule names in file order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// The file name the policy was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("source", &self.source)
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod escalation_tests;
#[cfg(test)]
mod prefilter_tests;
#[cfg(test)]
mod tests;
