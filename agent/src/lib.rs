//! The kube-fim scan engine: AIDE-compatible configuration, parallel walking and hashing, the
//! baseline database, comparison and reports. Used by the `fim-agent` binary.

pub mod attrs;
pub mod config;
pub mod daemon;
pub mod db;
pub mod diff;
pub mod entry;
pub mod failure_report;
pub mod hash;
pub mod realtime;
pub mod report;
pub mod rules;
pub mod scan;
pub mod scope;
pub mod snapshot;
pub mod walk;
