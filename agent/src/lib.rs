//! fim-agent: the node daemon (baseline store, realtime watcher, publishers) built on the
//! `fim_engine` scan engine. The CLI lives in `main.rs`.

pub mod containers;
pub mod daemon;
pub mod failure_report;
pub mod health;
pub mod progress;
pub mod realtime;
pub mod snapshot_store;
pub mod syslog;
