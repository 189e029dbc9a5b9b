//! The re-init request record shared by the operator (which writes it on the FileIntegrity) and
//! the agent (which acknowledges it on its FileIntegrityNodeStatus). The protocol is described in
//! the operator's `reinit` module.

use std::collections::BTreeSet;

use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::{FileIntegrity, FileIntegrityNodeStatus};

/// Annotation on a FileIntegrity, owned by the operator: the current (or last) [`ReinitRequest`]
/// as JSON.
pub const REQUEST_ANNOTATION: &str = "fim.kubefim.io/re-init-request";
/// Annotation on a FileIntegrityNodeStatus, owned by the agent: id of the latest request whose
/// re-baseline it completed.
pub const ACK_ANNOTATION: &str = "fim.kubefim.io/re-init-ack";

/// A numbered re-init request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReinitRequest {
    /// Grows by one per request, never reused.
    pub id: u64,
    /// The `fim.kubefim.io/re-init` value the request was made from.
    pub annotation: String,
    /// Nodes to re-initialise, fixed when the request is made.
    pub nodes: BTreeSet<String>,
    /// Every targeted node acknowledged and the user annotation was removed.
    #[serde(default)]
    pub done: bool,
}

impl ReinitRequest {
    /// The request recorded on `fi`, if any.
    pub fn from_file_integrity(fi: &FileIntegrity) -> Result<Option<Self>, serde_json::Error> {
        fi.annotations()
            .get(REQUEST_ANNOTATION)
            .map(|json| serde_json::from_str(json))
            .transpose()
    }

    /// The annotation value recording this request.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("a ReinitRequest always serializes")
    }

    /// This request, completed.
    pub fn completed(&self) -> Self {
        Self {
            done: true,
            ..self.clone()
        }
    }

    /// Whether `node` still has to re-initialise for this request, given the id it acknowledged.
    pub fn pending_for(&self, node: &str, acknowledged: Option<u64>) -> bool {
        !self.done && self.nodes.contains(node) && acknowledged.is_none_or(|a| a < self.id)
    }
}

/// Request id a node status acknowledges; `None` when absent or unreadable.
pub fn acknowledged_id(status: &FileIntegrityNodeStatus) -> Option<u64> {
    status
        .annotations()
        .get(ACK_ANNOTATION)?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_until_acknowledged_with_the_id_or_a_later_one() {
        let request = ReinitRequest {
            id: 3,
            annotation: String::new(),
            nodes: ["a".to_owned()].into(),
            done: false,
        };
        assert!(request.pending_for("a", None));
        assert!(request.pending_for("a", Some(2)));
        assert!(!request.pending_for("a", Some(3)));
        assert!(!request.pending_for("a", Some(4)));
        assert!(!request.pending_for("b", None), "not targeted");
        assert!(!request.completed().pending_for("a", None));
    }

    #[test]
    fn annotation_round_trips() {
        let request = ReinitRequest {
            id: 7,
            annotation: "a,b".into(),
            nodes: ["a".to_owned(), "b".to_owned()].into(),
            done: true,
        };
        let back: ReinitRequest = serde_json::from_str(&request.to_annotation()).unwrap();
        assert_eq!(back, request);
    }
}
