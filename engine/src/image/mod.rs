//! Container images without a container runtime: references and object keys ([`reference`]) and
//! snapshots read straight from `docker save` and OCI layout archives ([`archive`]).

pub mod archive;
pub mod lines;
pub mod reference;

pub use reference::{ImageRef, ReferenceError};
