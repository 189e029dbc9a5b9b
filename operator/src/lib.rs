//! Pure logic of `fim-operator`: what the operator wants the cluster to look like for a
//! FileIntegrity (agent DaemonSet, status, events, re-init bookkeeping, metric labels).
//!
//! Nothing here talks to the API server or reads the clock; the controller passes the observed
//! objects and `now` in and applies what comes out. That keeps every rule unit-testable.

pub mod daemonset;
pub mod error;
pub mod events;
pub mod metrics_labels;
pub mod phase;
pub mod reinit;

pub use error::{Error, Result};
