//! kubegate: the gateway that puts remote users in front of a Kubernetes API server safely.
//!
//! This crate owns the request pipeline and the `kubegate` binary. Its folders are the
//! layers a request passes through, outside in (docs/architecture.md draws them):
//!
//! - [`listener`]: TCP, TLS and HTTP connections, each phase under a deadline;
//! - [`pipeline`]: one request's phases, top to bottom: admission, authorization, header
//!   hygiene, streams and upgrades, the response's lifetime and the finishing record;
//! - [`authn`]: credentials into an identity (JWTs, client certificates);
//! - [`recording`]: exec and attach sessions written as asciicast files (opt-in);
//! - [`upstream`]: the kube-apiserver connection and the gateway's own credential;
//! - [`audit`]: the audit trail, from a request's facts to rotated files;
//! - [`signin`]: the sign-in web page under `/kubegate/`, which hands out a kubeconfig;
//! - [`login`]: the client side of sign-in: the `get-token` credential plugin, `login`,
//!   `logout` and `kubeconfig` (it runs on the user's machine, not in the gateway);
//! - [`ops`]: what operators touch: health and metrics, reloads, logs, shutdown;
//! - [`app`]: start-up from a validated configuration; [`error`]: the one place failures
//!   become responses; [`ip_text`]: the peer's address as text, on every request;
//!   [`dev`] (feature `dev`): the zero-setup dev mode.

pub mod app;
pub mod audit;
pub mod authn;
#[cfg(feature = "dev")]
pub mod dev;
pub mod error;
pub mod ip_text;
pub mod listener;
pub mod login;
pub mod ops;
pub mod pipeline;
pub mod recording;
pub mod signin;
#[cfg(test)]
mod testing;
pub mod upstream;

pub use app::{Running, StartError, start};
