//! Re-initialisation of baselines, requested with the `fim.kubefim.io/re-init` annotation.
//!
//! # Protocol
//!
//! The annotation value alone cannot identify a request: a user who asks twice for `""` (all
//! nodes) makes two requests with the same value. So the operator turns the annotation into an
//! explicit, numbered [`ReinitRequest`] and the agents acknowledge by number:
//!
//! 1. The user sets `fim.kubefim.io/re-init` (empty = all selected nodes, or `node-a,node-b`).
//! 2. The operator records `{id, annotation, nodes, done: false}` in the FileIntegrity
//!    annotation [`REQUEST_ANNOTATION`], with `id` one more than the previous request's (see
//!    [`plan_request`]); ids only grow, so the record is kept after completion.
//! 3. The agent of each targeted node whose acknowledged id is below `id` backs up and
//!    re-creates its baseline, then writes `id` into the annotation [`ACK_ANNOTATION`] of its
//!    FileIntegrityNodeStatus, together with the new `baselineDigest`. A higher id also answers
//!    every older request: one re-baseline satisfies them all.
//! 4. When every targeted node that is still selected has acknowledged
//!    ([`annotation_can_be_removed`]), the operator removes `fim.kubefim.io/re-init` and sets
//!    `done: true` in one patch. Setting the annotation again then starts request `id + 1`.
//!
//! Both annotations stand in for CRD fields that should replace them: `status.reinit` on the
//! FileIntegrity (operator-owned) and `reinitAcknowledged` on the FileIntegrityNodeStatus
//! (agent-owned). Annotations work today without a CRD change and keep the same semantics.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, labels};

use crate::{Error, Result};

/// Nodes named by a `fim.kubefim.io/re-init` value.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ReinitTargets {
    /// Whether the value asked for every selected node (empty value).
    pub all: bool,
    /// Selected nodes to re-initialise.
    pub nodes: BTreeSet<String>,
    /// Named nodes that are not selected by the FileIntegrity (reported, not targeted).
    pub unknown: BTreeSet<String>,
}

impl ReinitTargets {
    /// `by` label of `file_integrity_operator_reinit_total`: `demand` for all nodes, `node`
    /// for a list.
    pub fn by(&self) -> &'static str {
        if self.all { "demand" } else { "node" }
    }
}

/// Value of the `fim.kubefim.io/re-init` annotation, if present.
pub fn reinit_annotation(fi: &FileIntegrity) -> Option<&str> {
    fi.annotations().get(labels::REINIT).map(String::as_str)
}

/// Parses a re-init annotation value against the selected nodes.
///
/// Names are trimmed and deduplicated; a value without any name (`""`, `" , "`) means all
/// selected nodes.
pub fn parse_targets(value: &str, selected: &BTreeSet<String>) -> ReinitTargets {
    let named: BTreeSet<String> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if named.is_empty() {
        return ReinitTargets {
            all: true,
            nodes: selected.clone(),
            unknown: BTreeSet::new(),
        };
    }
    let (nodes, unknown) = named.into_iter().partition(|n| selected.contains(n));
    ReinitTargets {
        all: false,
        nodes,
        unknown,
    }
}

pub use kube_fim_crds::reinit::{
    ACK_ANNOTATION, REQUEST_ANNOTATION, ReinitRequest, acknowledged_id,
};

/// The request recorded on `fi`, if any.
pub fn recorded_request(fi: &FileIntegrity) -> Result<Option<ReinitRequest>> {
    ReinitRequest::from_file_integrity(fi).map_err(Error::InvalidReinitRequest)
}

/// The request the operator should record, given the user annotation and the recorded request.
///
/// Returns `(request, targets)` when a new request must be recorded (`targets` carries the
/// unknown node names to report), `None` when nothing changes: no annotation, or the recorded
/// request is still in progress for the same value. A changed value while in progress
/// supersedes the running request.
pub fn plan_request(
    annotation: Option<&str>,
    recorded: Option<&ReinitRequest>,
    selected: &BTreeSet<String>,
) -> Option<(ReinitRequest, ReinitTargets)> {
    let value = annotation?;
    if recorded.is_some_and(|r| !r.done && r.annotation == value) {
        return None;
    }
    let targets = parse_targets(value, selected);
    let request = ReinitRequest {
        id: recorded.map_or(1, |r| r.id + 1),
        annotation: value.to_owned(),
        nodes: targets.nodes.clone(),
        done: false,
    };
    Some((request, targets))
}

/// Acknowledged request id per node.
pub fn acknowledgements(statuses: &[FileIntegrityNodeStatus]) -> BTreeMap<String, u64> {
    statuses
        .iter()
        .filter_map(|s| Some((s.spec.node_name.clone(), acknowledged_id(s)?)))
        .collect()
}

/// Targeted nodes of `request` that are still selected: a node that left the selection (or
/// the cluster) can never acknowledge and must not hold the request open.
pub fn targeted(request: &ReinitRequest, selected: &BTreeSet<String>) -> BTreeSet<String> {
    request.nodes.intersection(selected).cloned().collect()
}

/// Nodes that acknowledged `request` (or a later one).
pub fn acknowledged(request: &ReinitRequest, acks: &BTreeMap<String, u64>) -> BTreeSet<String> {
    acks.iter()
        .filter(|(_, id)| **id >= request.id)
        .map(|(node, _)| node.clone())
        .collect()
}

/// Nodes still to re-initialise for `request`: targeted, still selected, not acknowledged.
/// Empty for a completed request.
pub fn pending(
    request: &ReinitRequest,
    acks: &BTreeMap<String, u64>,
    selected: &BTreeSet<String>,
) -> BTreeSet<String> {
    if request.done {
        return BTreeSet::new();
    }
    let acknowledged = acknowledged(request, acks);
    targeted(request, selected)
        .difference(&acknowledged)
        .cloned()
        .collect()
}

/// Whether the user annotation can be removed: every targeted node acknowledged.
pub fn annotation_can_be_removed(
    targeted: &BTreeSet<String>,
    acknowledged: &BTreeSet<String>,
) -> bool {
    targeted.is_subset(acknowledged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn fi_with_annotations(annotations: &str) -> FileIntegrity {
        serde_saphyr::from_str(&format!(
            "
apiVersion: fim.kubefim.io/v1alpha1
kind: FileIntegrity
metadata:
  name: example
  namespace: kube-fim
  annotations:
{annotations}
spec: {{}}
"
        ))
        .unwrap()
    }

    fn node_status(node: &str, ack: Option<&str>) -> FileIntegrityNodeStatus {
        let annotations = ack
            .map(|a| format!("  annotations:\n    fim.kubefim.io/re-init-ack: '{a}'\n"))
            .unwrap_or_default();
        serde_saphyr::from_str(&format!(
            "
apiVersion: fim.kubefim.io/v1alpha1
kind: FileIntegrityNodeStatus
metadata:
  name: example-{node}
  namespace: kube-fim
{annotations}nodeName: {node}
"
        ))
        .unwrap()
    }

    #[test]
    fn empty_value_targets_all_selected_nodes() {
        let selected = nodes(&["a", "b", "c"]);
        for value in ["", "  ", " , ,"] {
            let t = parse_targets(value, &selected);
            assert!(t.all, "{value:?}");
            assert_eq!(t.nodes, selected);
            assert!(t.unknown.is_empty());
            assert_eq!(t.by(), "demand");
        }
    }

    #[test]
    fn node_list_is_trimmed_deduplicated_and_checked() {
        let selected = nodes(&["a", "b", "c"]);
        let t = parse_targets(" b, a ,b,,ghost ", &selected);
        assert!(!t.all);
        assert_eq!(t.nodes, nodes(&["a", "b"]));
        assert_eq!(t.unknown, nodes(&["ghost"]));
        assert_eq!(t.by(), "node");
    }

    #[test]
    fn annotation_is_read_from_the_object() {
        let fi = fi_with_annotations("    fim.kubefim.io/re-init: 'node-a'");
        assert_eq!(reinit_annotation(&fi), Some("node-a"));
        assert_eq!(recorded_request(&fi).unwrap(), None);

        let fi = fi_with_annotations("    fim.kubefim.io/re-init-request: 'not json'");
        assert!(matches!(
            recorded_request(&fi),
            Err(Error::InvalidReinitRequest(_))
        ));
    }

    #[test]
    fn requests_are_numbered_and_survive_round_trips() {
        let selected = nodes(&["a", "b"]);
        assert_eq!(plan_request(None, None, &selected), None);

        let (first, _) = plan_request(Some(""), None, &selected).unwrap();
        assert_eq!(first.id, 1);
        assert_eq!(first.nodes, selected);

        // Stored on the object and read back.
        let fi = fi_with_annotations(&format!(
            "    fim.kubefim.io/re-init-request: '{}'",
            first.to_annotation()
        ));
        let recorded = recorded_request(&fi).unwrap().unwrap();
        assert_eq!(recorded, first);

        // Same value while in progress: nothing to do.
        assert_eq!(plan_request(Some(""), Some(&recorded), &selected), None);
        // A different value supersedes it.
        let (second, targets) = plan_request(Some("b,x"), Some(&recorded), &selected).unwrap();
        assert_eq!((second.id, second.nodes.clone()), (2, nodes(&["b"])));
        assert_eq!(targets.unknown, nodes(&["x"]));
        // The same value again after completion is a new request.
        let (third, _) = plan_request(Some("b,x"), Some(&second.completed()), &selected).unwrap();
        assert_eq!(third.id, 3);
    }

    #[test]
    fn acknowledgements_drive_pending_and_removal() {
        let selected = nodes(&["a", "b", "c"]);
        let request = ReinitRequest {
            id: 4,
            annotation: String::new(),
            nodes: selected.clone(),
            done: false,
        };
        let statuses = [
            node_status("a", Some("4")),
            node_status("b", Some("3")), // acknowledged an older request only
            node_status("c", None),
        ];
        let acks = acknowledgements(&statuses);
        assert_eq!(acks, BTreeMap::from([("a".into(), 4), ("b".into(), 3)]));
        assert_eq!(pending(&request, &acks, &selected), nodes(&["b", "c"]));
        let done = acknowledged(&request, &acks);
        assert!(!annotation_can_be_removed(
            &targeted(&request, &selected),
            &done
        ));

        // b re-baselines for a later request (5 also covers 4); c leaves the cluster.
        let statuses = [node_status("a", Some("4")), node_status("b", Some("5"))];
        let acks = acknowledgements(&statuses);
        let still_selected = nodes(&["a", "b"]);
        assert!(pending(&request, &acks, &still_selected).is_empty());
        assert!(annotation_can_be_removed(
            &targeted(&request, &still_selected),
            &acknowledged(&request, &acks)
        ));
        assert!(pending(&request.completed(), &BTreeMap::new(), &selected).is_empty());
    }

    #[test]
    fn unreadable_ack_counts_as_not_acknowledged() {
        assert_eq!(acknowledged_id(&node_status("a", Some(" 7 "))), Some(7));
        assert_eq!(acknowledged_id(&node_status("a", Some("seven"))), None);
        assert_eq!(acknowledged_id(&node_status("a", None)), None);
    }
}
