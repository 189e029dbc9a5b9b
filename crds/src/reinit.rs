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
    /// Chosen by the operator: one more than the previous request's, or a fresh start (the
    /// time in milliseconds) when none is recorded.
    pub id: u64,
    /// The `fim.kubefim.io/re-init` value the request covers, if the annotation was set when it
    /// was made (`None`: made by a rule change or `re-init-on-failed` alone, so a later
    /// `re-init` annotation is a new request, whatever its value). Records written before this
    /// was optional hold a string, read as `Some`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation: Option<String>,
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
    /// Only this request's id answers it (ids are the operator's; see the operator's `reinit`).
    pub fn pending_for(&self, node: &str, acknowledged: Option<u64>) -> bool {
        !self.done && self.nodes.contains(node) && acknowledged != Some(self.id)
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
    fn pending_until_acknowledged_with_exactly_its_id() {
        let request = ReinitRequest {
            id: 3,
            annotation: None,
            nodes: ["a".to_owned()].into(),
            done: false,
        };
        assert!(request.pending_for("a", None));
        assert!(request.pending_for("a", Some(2)));
        assert!(!request.pending_for("a", Some(3)));
        assert!(
            request.pending_for("a", Some(4)),
            "only the exact id answers: an id acknowledged before a fresh start is no answer"
        );
        assert!(!request.pending_for("b", None), "not targeted");
        assert!(!request.completed().pending_for("a", None));
    }

    #[test]
    fn records_with_a_string_or_no_annotation_read_back() {
        // Written before `annotation` was optional: a config request recorded "".
        let old: ReinitRequest =
            serde_json::from_str(r#"{"id":3,"annotation":"","nodes":["a"],"done":true}"#).unwrap();
        assert_eq!(old.annotation.as_deref(), Some(""));
        let none = ReinitRequest {
            id: 4,
            annotation: None,
            nodes: BTreeSet::new(),
            done: false,
        };
        let json = none.to_annotation();
        assert!(!json.contains("annotation"), "{json}");
        assert_eq!(serde_json::from_str::<ReinitRequest>(&json).unwrap(), none);
    }

    #[test]
    fn annotation_round_trips() {
        let request = ReinitRequest {
            id: 7,
            annotation: Some("a,b".into()),
            nodes: ["a".to_owned(), "b".to_owned()].into(),
            done: true,
        };
        let back: ReinitRequest = serde_json::from_str(&request.to_annotation()).unwrap();
        assert_eq!(back, request);
    }
}
