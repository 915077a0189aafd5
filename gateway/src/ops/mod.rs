//! Operations: what the people running the gateway touch rather than its users: the admin
//! listener (health, readiness, metrics), the impersonation self-check, hot reloads, log
//! output and shutdown.

pub mod admin;
pub mod logwriter;
pub mod metrics;
pub mod rbac;
pub mod reload;
pub mod selfcheck;
pub mod shutdown;
