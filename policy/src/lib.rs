//! kubegate-policy owns every authorisation decision the gateway makes: it
//! validates request paths ([`normalize_path`]), turns a request into the
//! Kubernetes attributes the API server would see ([`resolve`]), loads and
//! compiles the TOML policy ([`Policy::from_toml`]), decides requests
//! ([`Policy::decide`]) and runs policy test files ([`run_cases`]). It is pure:
//! no async, no I/O; callers hand in strings.

mod cases;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod glob;
mod path;
mod query;
mod request;
mod rules;
mod subject;

pub use cases::{CaseFailure, CaseReport, run_cases};
pub use error::{PolicyError, PolicyWarning};
pub use path::{CanonicalPath, MAX_PATH_LEN, MAX_SEGMENT_LEN, PathError, normalize_path};
pub use query::{MAX_TIMEOUT_SECONDS, QueryError, timeout_seconds};
pub use request::{
    KUBERNETES_VERBS, NonResourceAttributes, RequestAttributes, ResourceAttributes, resolve,
};
pub use rules::{Cell, Decision, Grants, HTTP_METHODS, LoadedPolicy, Policy, RuleDescription};
pub use subject::{ANONYMOUS_USER, ForwardIdentity, Subject, UNAUTHENTICATED_GROUP, claim};
