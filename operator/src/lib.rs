//! `fim-operator`: what the operator wants the cluster to look like for a FileIntegrity
//! (agent DaemonSet, status, events, re-init bookkeeping, metric labels), and the controller
//! that makes it so.
//!
//! The pure modules (`daemonset`, `phase`, `events`, `reinit`, `metrics_labels`, `config`)
//! neither talk to the API server nor read the clock; [`controller`] passes the observed
//! objects and `now` in and applies what comes out. That keeps every rule unit-testable.

pub mod config;
pub mod controller;
pub mod daemonset;
pub mod error;
pub mod events;
pub mod metrics;
pub mod metrics_labels;
pub mod phase;
pub mod reinit;
pub mod snapshot;

pub use error::{Error, Result};
