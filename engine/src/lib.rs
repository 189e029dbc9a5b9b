//! The kube-fim scan engine: the AIDE configuration language, rules, walking and hashing below one
//! root, the baseline database, comparison, reports and the snapshot format.
//!
//! No Kubernetes, async runtime or network code lives here: the node daemon, the CLI and the
//! operator (which validates rules with [`config`]) build on it. Dependencies point one way:
//! `scan` uses `walk`, `entry`, `db` and `diff`; `report` renders a scan's outcome; nothing here
//! depends on `report`.

pub mod attrs;
pub mod config;
pub mod db;
pub mod diff;
pub mod display;
pub mod entry;
pub mod hash;
pub mod image;
pub mod report;
pub mod root;
pub mod rules;
pub mod scan;
pub mod scope;
pub mod snapshot;
pub mod walk;
