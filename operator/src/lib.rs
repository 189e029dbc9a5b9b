//! `fim-operator`: what the operator wants the cluster to look like for a FileIntegrity
//! (agent DaemonSet, status, events, re-init bookkeeping, metric labels), the controller that
//! makes it so, and the runtime the controllers run in.
//!
//! The pure modules (`anchor`, `daemonset`, `phase`, `events`, `reinit`, `metrics_labels`, `config`)
//! neither talk to the API server nor read the clock; [`file_integrity`] passes the observed
//! objects and `now` in and applies what comes out. That keeps every rule unit-testable.
//! [`runtime`] owns signals, the HTTP endpoints, leader election and the metrics registry.

pub mod admission;
pub mod anchor;
pub mod config;
pub mod containers;
pub mod daemonset;
pub mod error;
pub mod events;
pub mod file_integrity;
pub mod metrics_labels;
pub mod node_objects;
pub mod phase;
pub mod reinit;
pub mod runtime;
pub mod snapshot;

pub use error::{Error, Result};
