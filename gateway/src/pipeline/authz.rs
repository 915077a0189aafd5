//! Authorization: the current policy (swapped atomically on reload) and the phase that asks
//! it, [`PolicyStore::authorize`]: the identity a request is forwarded as, or the 403 that
//! names the deciding rule in the API server's own words.
//!
//! Each request decides on one snapshot (`Arc`) of the policy, so it is decided entirely
//! by the policy it started with even if a reload lands in the middle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use kubegate_policy::{
    Decision, ForwardIdentity, Policy, PolicyError, PolicyWarning, RequestAttributes,
};

use crate::authn::Identity;
use crate::error::GatewayError;

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid policy; the error carries file, line and rule.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
}

/// Reads and compiles a policy file.
pub fn load_policy(path: &Path) -> Result<(Policy, Vec<PolicyWarning>), PolicyLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyLoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let loaded = Policy::from_toml(&path.display().to_string(), &text)?;
    Ok((loaded.policy, loaded.warnings))
}

/// The policy in force.
#[derive(Debug)]
pub struct PolicyStore {
    path: PathBuf,
    current: ArcSwap<Policy>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl PolicyStore {
    /// A store serving `policy`, reloadable from `path`.
    pub fn new(path: PathBuf, policy: Policy) -> Self {
        PolicyStore {
            path,
            current: ArcSwap::from_pointee(policy),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }

    /// The policy for one request.
    pub fn snapshot(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Re-reads the file; only a policy that validates replaces the running one.
    pub fn reload(&self) -> Result<Vec<PolicyWarning>, PolicyLoadError> {
        match load_policy(&self.path) {
            Ok((policy, warnings)) => {
                self.current.store(Arc::new(policy));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(warnings)
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Successful reloads since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Failed reloads since start (the running policy was kept each time).
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// The file the policy is read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl PolicyStore {
    /// Decides a request on the current policy: the identity it is forwarded as (the
    /// caller, or the narrower identity the deciding rule maps them to), or a 403 naming
    /// the rule. The decision is left in `decided` either way, for the log line and the
    /// audit record.
    pub fn authorize(
        &self,
        identity: &Identity,
        attributes: &RequestAttributes,
        decided: &mut Option<Decision>,
    ) -> Result<Arc<ForwardIdentity>, GatewayError> {
        let decision = decided.insert(self.snapshot().decide(identity, attributes));
        match (&decision.forward_as, decision.allowed) {
            (Some(forward_as), true) => Ok(forward_as.clone()),
            _ => Err(GatewayError::Forbidden {
                message: forbidden_message(identity, attributes, decision),
            }),
        }
    }
}

/// A denial worded like the API server's own, plus the policy's reason, so kubectl users
/// recognise it and policy owners can find the rule.
fn forbidden_message(
    identity: &Identity,
    attrs: &RequestAttributes,
    decision: &Decision,
) -> String {
    let who = format!("User {:?}", identity.user);
    let what = match attrs {
        RequestAttributes::Resource(r) => {
            let resource = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let mut s = format!(
                "{who} cannot {} resource {resource:?} in API group {:?}",
                r.verb, r.api_group
            );
            if !r.namespace.is_empty() {
                s.push_str(&format!(" in the namespace {:?}", r.namespace));
            }
            if !r.name.is_empty() {
                s.push_str(&format!(" (name {:?})", r.name));
            }
            s
        }
        RequestAttributes::NonResource(n) => {
            format!("{who} cannot {} path {:?}", n.verb, n.path)
        }
    };
    format!("{what}: {}", decision.reason())
}
