//! kubegate: the gateway that puts remote users in front of a Kubernetes API server safely.
//!
//! This crate owns the request pipeline and the `kubegate` binary: TLS termination
//! ([`tls`], [`server`]), authentication of bearer tokens ([`authn`]), authorization against
//! the policy ([`authz`], with the pure engine in `kubegate-policy`), header hygiene and
//! impersonation ([`forward`]), the upstream connection ([`upstream`]), the one place errors
//! become responses ([`error`]), log output ([`logwriter`]), start-up ([`app`]) and the zero-setup `dev` mode ([`dev`]).
//! [`pipeline`] strings the phases together in order; `docs/architecture.md` draws it.

pub mod admin;
pub mod app;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod dev;
pub mod error;
pub mod forward;
pub mod incluster;
pub mod limits;
pub mod logwriter;
pub mod observe;
pub mod pipeline;
pub mod rbac;
pub mod record;
pub mod reload;
pub mod server;
pub mod stream;
pub mod tls;
pub mod upgrade;
pub mod upstream;

pub use app::{Running, StartError, start};
