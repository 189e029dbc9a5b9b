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
//! 3. The agent of each targeted node whose acknowledged id is not `id` backs up and
//!    re-creates its baseline, then writes `id` into the annotation [`ACK_ANNOTATION`] of its
//!    FileIntegrityNodeStatus, together with the new `baselineDigest`. Only the exact id
//!    answers a request: a request that replaces another carries its unacknowledged nodes.
//! 4. When every targeted node that is still selected has acknowledged
//!    ([`annotation_can_be_removed`]), the operator removes `fim.kubefim.io/re-init` and sets
//!    `done: true` in one patch. Setting the annotation again then starts request `id + 1`.
//!
//! A change of the effective rules (the content of `fim-config-<fi>`) is a request too: the
//! operator keeps the digest of the rules the agents were last asked to baseline with in the
//! FileIntegrity annotation [`CONFIG_HASH_ANNOTATION`]; when the rules differ from it, it records
//! a request for every selected node (`by="config"`) in the same patch that updates the digest.
//! The first rules of a FileIntegrity need no request (the first baselines are made with them).
//! [`step`] computes, from everything observed, the one patch to make.
//!
//! A new request never drops nodes that have not acknowledged the request it replaces: an agent
//! may already be re-baselining for it, and a config change must reach every node.
//!
//! Ids belong to the operator: never computed from the acks agents write (a hostile agent could
//! otherwise choose the next id, or overflow it with `u64::MAX`). With no request recorded (the
//! first one, or the annotation was lost) the id is the observation time in milliseconds, so a
//! new request cannot collide with an id some agent acknowledged earlier.
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
    if recorded.is_some_and(|r| !r.done && r.annotation.as_deref() == Some(value)) {
        return None;
    }
    let targets = parse_targets(value, selected);
    let request = ReinitRequest {
        id: next_id(recorded, 1),
        annotation: Some(value.to_owned()),
        nodes: targets.nodes.clone(),
        done: false,
    };
    Some((request, targets))
}

/// The id of a request replacing `recorded`: one more than its id, or `fresh` when there is
/// none (or it is the largest id: `fresh` then starts a new sequence instead of overflowing).
pub fn next_id(recorded: Option<&ReinitRequest>, fresh: u64) -> u64 {
    recorded.and_then(|r| r.id.checked_add(1)).unwrap_or(fresh)
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

/// Nodes that acknowledged `request` (its exact id: an agent cannot answer requests in advance).
pub fn acknowledged(request: &ReinitRequest, acks: &BTreeMap<String, u64>) -> BTreeSet<String> {
    acks.iter()
        .filter(|(_, id)| **id == request.id)
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

/// Operator-owned annotation on a FileIntegrity: digest of the rules the agents were last asked
/// to baseline with (see the module docs).
pub const CONFIG_HASH_ANNOTATION: &str = "fim.kubefim.io/re-init-config-hash";

/// `by` label of a request made because the rules changed.
pub const BY_CONFIG: &str = crate::metrics_labels::REINIT_BY_CONFIG;
/// `by` label of a request made by `fim.kubefim.io/re-init-on-failed`.
pub const BY_FAILED: &str = crate::metrics_labels::REINIT_BY_FAILED;

/// Everything [`step`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct ReinitInput<'a> {
    /// Value of `fim.kubefim.io/re-init`, if set.
    pub annotation: Option<&'a str>,
    /// Whether `fim.kubefim.io/re-init-on-failed` is set.
    pub on_failed: bool,
    /// Nodes whose latest result is Failed.
    pub failed: &'a BTreeSet<String>,
    /// The request recorded on the FileIntegrity.
    pub recorded: Option<&'a ReinitRequest>,
    /// [`CONFIG_HASH_ANNOTATION`] on the FileIntegrity.
    pub recorded_config_hash: Option<&'a str>,
    /// Digest of the effective rules (`None` while there never were valid rules).
    pub config_hash: Option<&'a str>,
    /// Nodes the FileIntegrity selects now.
    pub selected: &'a BTreeSet<String>,
    /// Acknowledged request id per node ([`acknowledgements`]).
    pub acks: &'a BTreeMap<String, u64>,
    /// Id of a request when none is recorded: chosen by the operator (the observation time in
    /// milliseconds), never derived from `acks`.
    pub fresh_id: u64,
}

/// A request [`step`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRequest {
    /// The request as recorded (possibly already completed, when nothing is left to do).
    pub request: ReinitRequest,
    /// Why: `by` label values (`demand`, `node`, `config`), one per trigger.
    pub by: Vec<&'static str>,
    /// Names in the user annotation that no selected node has.
    pub unknown: BTreeSet<String>,
}

/// What the operator writes on the FileIntegrity, in one merge patch of its annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReinitStep {
    /// New value of [`REQUEST_ANNOTATION`]; `None` leaves it as it is.
    pub record: Option<ReinitRequest>,
    /// Remove `fim.kubefim.io/re-init`: the request it made is done.
    pub remove_annotation: bool,
    /// The Failed nodes `fim.kubefim.io/re-init-on-failed` asked for (`None`: not set). The
    /// annotation is removed in the same patch that records their request: it is a one-shot
    /// trigger (as in file-integrity-operator), the request then follows the protocol.
    pub on_failed: Option<BTreeSet<String>>,
    /// New value of [`CONFIG_HASH_ANNOTATION`].
    pub config_hash: Option<String>,
    /// The request made by this step, for events and metrics.
    pub new: Option<NewRequest>,
    /// Nodes still to re-initialise once the step is applied (they count as Initializing).
    pub pending: BTreeSet<String>,
}

impl ReinitStep {
    /// Whether there is nothing to write.
    pub fn is_noop(&self) -> bool {
        self.record.is_none()
            && !self.remove_annotation
            && self.on_failed.is_none()
            && self.config_hash.is_none()
    }

    /// The JSON merge patch of `metadata.annotations` that applies this step, guarded by
    /// `resource_version` so a user annotation set meanwhile is never removed unseen.
    pub fn merge_patch(&self, resource_version: Option<&str>) -> serde_json::Value {
        let mut annotations = serde_json::Map::new();
        if let Some(request) = &self.record {
            annotations.insert(REQUEST_ANNOTATION.into(), request.to_annotation().into());
        }
        if self.remove_annotation {
            annotations.insert(labels::REINIT.into(), serde_json::Value::Null);
        }
        if self.on_failed.is_some() {
            annotations.insert(labels::REINIT_ON_FAILED.into(), serde_json::Value::Null);
        }
        if let Some(hash) = &self.config_hash {
            annotations.insert(CONFIG_HASH_ANNOTATION.into(), hash.clone().into());
        }
        let mut metadata = serde_json::Map::new();
        metadata.insert("annotations".into(), annotations.into());
        if let Some(rv) = resource_version {
            metadata.insert("resourceVersion".into(), rv.into());
        }
        serde_json::json!({ "metadata": metadata })
    }
}

/// The next step of the re-init protocol (see the module docs).
pub fn step(input: ReinitInput<'_>) -> ReinitStep {
    let ReinitInput {
        annotation,
        on_failed,
        failed,
        recorded,
        recorded_config_hash,
        config_hash,
        selected,
        acks,
        fresh_id,
    } = input;
    let mut out = ReinitStep::default();

    let config_changed = match (recorded_config_hash, config_hash) {
        (_, None) => false,
        (Some(old), Some(new)) if old == new => false,
        (old, Some(new)) => {
            out.config_hash = Some(new.to_owned());
            old.is_some()
        }
    };

    let next_id = next_id(recorded, fresh_id);
    // Nodes the recorded request still waits for: carried into any request replacing it.
    let carried = recorded.map_or_else(BTreeSet::new, |r| pending(r, acks, selected));
    let user = plan_request(annotation, recorded, selected);
    // Only nodes an agent runs on: the others could never acknowledge.
    let failed: Option<BTreeSet<String>> =
        on_failed.then(|| failed.intersection(selected).cloned().collect());
    let by_failed = failed
        .as_ref()
        .is_some_and(|f| !f.is_empty())
        .then_some(BY_FAILED);
    out.on_failed = failed.clone();

    // A new request covers the user annotation whenever it is set (it is either new, merged
    // here, or the recorded request's, carried): it records its value so that it is not made
    // again, and removes it once done.
    let covers = annotation.map(str::to_owned);
    let new = if config_changed {
        // Every selected node, which also covers the user's and the Failed nodes.
        let (by_user, unknown) =
            user.map_or((None, BTreeSet::new()), |(_, t)| (Some(t.by()), t.unknown));
        Some(NewRequest {
            request: ReinitRequest {
                id: next_id,
                annotation: covers,
                nodes: selected.union(&carried).cloned().collect(),
                done: false,
            },
            by: std::iter::once(BY_CONFIG)
                .chain(by_user)
                .chain(by_failed)
                .collect(),
            unknown,
        })
    } else if user.is_some() || by_failed.is_some() {
        let (mut nodes, by_user, unknown) = user
            .map_or((BTreeSet::new(), None, BTreeSet::new()), |(r, t)| {
                (r.nodes, Some(t.by()), t.unknown)
            });
        nodes.extend(carried);
        nodes.extend(failed.unwrap_or_default());
        Some(NewRequest {
            request: ReinitRequest {
                id: next_id,
                annotation: covers,
                nodes,
                done: false,
            },
            by: by_user.into_iter().chain(by_failed).collect(),
            unknown,
        })
    } else {
        None
    };

    let current = match new {
        Some(mut new) => {
            if pending(&new.request, acks, selected).is_empty() {
                // Nothing to wait for (only unknown nodes, or none selected): done at once.
                new.request = new.request.completed();
                out.remove_annotation = annotation.is_some();
            }
            out.record = Some(new.request.clone());
            out.new = Some(new);
            out.record.clone()
        }
        None => match recorded {
            Some(r) if !r.done && pending(r, acks, selected).is_empty() => {
                out.record = Some(r.completed());
                out.remove_annotation = annotation.is_some();
                out.record.clone()
            }
            other => other.cloned(),
        },
    };
    out.pending = current.map_or_else(BTreeSet::new, |r| pending(&r, acks, selected));
    out
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
            annotation: None,
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

        // An ack above the request answers nothing (acks are the agents' word, ids the
        // operator's).
        let statuses = [node_status("a", Some("4")), node_status("b", Some("5"))];
        let acks = acknowledgements(&statuses);
        assert_eq!(pending(&request, &acks, &selected), nodes(&["b", "c"]));

        // b re-baselines for it; c leaves the cluster.
        let statuses = [node_status("a", Some("4")), node_status("b", Some("4"))];
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

    fn input<'a>(
        annotation: Option<&'a str>,
        recorded: Option<&'a ReinitRequest>,
        selected: &'a BTreeSet<String>,
        acks: &'a BTreeMap<String, u64>,
    ) -> ReinitInput<'a> {
        static NO_FAILED: BTreeSet<String> = BTreeSet::new();
        ReinitInput {
            annotation,
            on_failed: false,
            failed: &NO_FAILED,
            recorded,
            recorded_config_hash: Some("h1"),
            config_hash: Some("h1"),
            selected,
            acks,
            fresh_id: 1,
        }
    }

    #[test]
    fn step_walks_an_annotation_through_its_lifecycle() {
        let selected = nodes(&["a", "b"]);
        let none = BTreeMap::new();
        // Nothing asked: nothing to write.
        let idle = step(input(None, None, &selected, &none));
        assert!(idle.is_noop(), "{idle:?}");
        assert!(idle.pending.is_empty());

        // Asked for all nodes: request 1 recorded, both pending.
        let first = step(input(Some(""), None, &selected, &none));
        let request = first.record.clone().unwrap();
        assert_eq!((request.id, request.done), (1, false));
        assert_eq!(request.nodes, selected);
        assert_eq!(first.new.as_ref().unwrap().by, ["demand"]);
        assert!(!first.remove_annotation);
        assert_eq!(first.pending, selected);

        // a acknowledged: nothing to write, b still pending.
        let acks = BTreeMap::from([("a".to_owned(), 1)]);
        let waiting = step(input(Some(""), Some(&request), &selected, &acks));
        assert!(waiting.is_noop(), "{waiting:?}");
        assert_eq!(waiting.pending, nodes(&["b"]));

        // Both: the annotation goes and the request is done, in one step.
        let acks = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]);
        let done = step(input(Some(""), Some(&request), &selected, &acks));
        assert_eq!(done.record, Some(request.completed()));
        assert!(done.remove_annotation);
        assert!(done.new.is_none());
        assert!(done.pending.is_empty());
        let patch = done.merge_patch(Some("42"));
        assert_eq!(
            patch,
            serde_json::json!({"metadata": {
                "resourceVersion": "42",
                "annotations": {
                    REQUEST_ANNOTATION: request.completed().to_annotation(),
                    "fim.kubefim.io/re-init": null,
                }
            }})
        );

        // Afterwards, with the annotation gone: nothing to do.
        let after = step(input(None, Some(&request.completed()), &selected, &acks));
        assert!(after.is_noop(), "{after:?}");
    }

    #[test]
    fn step_reports_unknown_nodes_and_completes_empty_requests_at_once() {
        let selected = nodes(&["a"]);
        let none = BTreeMap::new();
        let s = step(input(Some("ghost"), None, &selected, &none));
        let new = s.new.unwrap();
        assert_eq!(new.unknown, nodes(&["ghost"]));
        assert_eq!(new.by, ["node"]);
        assert!(new.request.done, "nothing to wait for");
        assert!(s.remove_annotation);
        assert!(s.pending.is_empty());
    }

    #[test]
    fn a_config_change_targets_every_selected_node() {
        let selected = nodes(&["a", "b"]);
        let none = BTreeMap::new();
        // The first rules only record their digest.
        let first = step(ReinitInput {
            recorded_config_hash: None,
            ..input(None, None, &selected, &none)
        });
        assert_eq!(first.config_hash.as_deref(), Some("h1"));
        assert!(first.record.is_none() && first.new.is_none());
        // No rules yet: nothing.
        let nothing = step(ReinitInput {
            recorded_config_hash: None,
            config_hash: None,
            ..input(None, None, &selected, &none)
        });
        assert!(nothing.is_noop());

        // Changed rules: a request for all selected nodes, by config, and the new digest.
        let changed = step(ReinitInput {
            config_hash: Some("h2"),
            ..input(None, None, &selected, &none)
        });
        assert_eq!(changed.config_hash.as_deref(), Some("h2"));
        let new = changed.new.unwrap();
        assert_eq!(new.by, ["config"]);
        assert_eq!(new.request.nodes, selected);
        assert_eq!(new.request.annotation, None);
        assert!(!changed.remove_annotation);
        assert_eq!(changed.pending, selected);

        // Together with a user request for one node: the config request covers it and records
        // the user's value, so it is not made again.
        let both = step(ReinitInput {
            config_hash: Some("h2"),
            ..input(Some("a,ghost"), None, &selected, &none)
        });
        let new = both.new.unwrap();
        assert_eq!(new.by, ["config", "node"]);
        assert_eq!(new.request.nodes, selected);
        assert_eq!(new.unknown, nodes(&["ghost"]));
        let recorded = new.request;
        let again = step(input(Some("a,ghost"), Some(&recorded), &selected, &none));
        assert!(again.is_noop(), "{again:?}");
        // Completed when both acknowledged; the user annotation goes with it.
        let acks = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]);
        let done = step(input(Some("a,ghost"), Some(&recorded), &selected, &acks));
        assert!(done.remove_annotation);
        assert!(done.record.unwrap().done);
    }

    #[test]
    fn a_replacing_request_keeps_unacknowledged_nodes() {
        let selected = nodes(&["a", "b", "c"]);
        let config_request = ReinitRequest {
            id: 4,
            annotation: None,
            nodes: selected.clone(),
            done: false,
        };
        let acks = BTreeMap::from([("a".to_owned(), 4)]);
        // The user asks for c while b and c still owe the config request.
        let s = step(input(Some("c"), Some(&config_request), &selected, &acks));
        let request = s.record.unwrap();
        assert_eq!(request.id, 5);
        assert_eq!(request.nodes, nodes(&["b", "c"]));
        assert_eq!(s.pending, nodes(&["b", "c"]));

        // The request annotation was lost: a fresh id, whatever agents acknowledged.
        let acks = BTreeMap::from([("a".to_owned(), 9)]);
        let s = step(ReinitInput {
            fresh_id: 1_700_000_000_000,
            ..input(Some(""), None, &selected, &acks)
        });
        assert_eq!(s.record.unwrap().id, 1_700_000_000_000);
        assert_eq!(s.pending, selected, "an older ack answers nothing new");
    }

    #[test]
    fn nodes_that_leave_release_the_request() {
        let selected = nodes(&["a"]);
        let request = ReinitRequest {
            id: 1,
            annotation: Some("a,b".into()),
            nodes: nodes(&["a", "b"]),
            done: false,
        };
        let acks = BTreeMap::from([("a".to_owned(), 1)]);
        let s = step(input(Some("a,b"), Some(&request), &selected, &acks));
        assert!(s.remove_annotation);
        assert_eq!(s.record, Some(request.completed()));
    }

    fn on_failed<'a>(
        annotation: Option<&'a str>,
        recorded: Option<&'a ReinitRequest>,
        selected: &'a BTreeSet<String>,
        acks: &'a BTreeMap<String, u64>,
        failed: &'a BTreeSet<String>,
    ) -> ReinitInput<'a> {
        ReinitInput {
            on_failed: true,
            failed,
            ..input(annotation, recorded, selected, acks)
        }
    }

    #[test]
    fn re_init_on_failed_targets_only_the_failed_nodes_and_goes() {
        let selected = nodes(&["a", "b", "c"]);
        let failed = nodes(&["b"]);
        let none = BTreeMap::new();
        let s = step(on_failed(None, None, &selected, &none, &failed));
        let new = s.new.clone().unwrap();
        assert_eq!(new.request.nodes, failed, "only the Failed node");
        assert_eq!(new.by, ["failed"]);
        assert_eq!(new.request.annotation, None);
        assert_eq!(s.pending, failed);
        assert_eq!(s.on_failed, Some(failed.clone()));
        assert!(!s.remove_annotation, "no re-init annotation to remove");
        // One patch records the request and removes the trigger.
        let patch = s.merge_patch(Some("7"));
        let annotations = &patch["metadata"]["annotations"];
        assert_eq!(
            annotations[labels::REINIT_ON_FAILED],
            serde_json::Value::Null
        );
        assert!(
            annotations
                .as_object()
                .unwrap()
                .contains_key(labels::REINIT_ON_FAILED)
        );
        assert!(
            !annotations
                .as_object()
                .unwrap()
                .contains_key(labels::REINIT)
        );
        assert_eq!(
            annotations[REQUEST_ANNOTATION],
            new.request.to_annotation().as_str()
        );

        // Then the request runs like any other: b acknowledges, done.
        let recorded = new.request;
        let acks = BTreeMap::from([("b".to_owned(), recorded.id)]);
        let done = step(input(None, Some(&recorded), &selected, &acks));
        assert_eq!(done.record, Some(recorded.completed()));
        assert!(!done.remove_annotation);
        assert!(done.pending.is_empty());
    }

    #[test]
    fn re_init_on_failed_without_failed_nodes_only_goes() {
        let selected = nodes(&["a", "b"]);
        let none = BTreeMap::new();
        // b is Failed but not selected (left, or its taint is not tolerated): no agent would
        // acknowledge.
        let failed = nodes(&["x"]);
        let s = step(on_failed(None, None, &selected, &none, &failed));
        assert!(s.new.is_none() && s.record.is_none(), "{s:?}");
        assert_eq!(s.on_failed, Some(BTreeSet::new()));
        assert!(!s.is_noop(), "the annotation is removed");
        assert!(s.pending.is_empty());
    }

    #[test]
    fn re_init_on_failed_joins_a_running_request_and_a_new_user_request() {
        let selected = nodes(&["a", "b", "c"]);
        // The user's request for a and b is running; a acknowledged.
        let running = ReinitRequest {
            id: 10,
            annotation: Some("a,b".into()),
            nodes: nodes(&["a", "b"]),
            done: false,
        };
        let acks = BTreeMap::from([("a".to_owned(), 10)]);
        let failed = nodes(&["c"]);
        let s = step(on_failed(
            Some("a,b"),
            Some(&running),
            &selected,
            &acks,
            &failed,
        ));
        let request = s.record.unwrap();
        assert_eq!(request.id, 11);
        assert_eq!(request.nodes, nodes(&["b", "c"]), "b carried, c Failed");
        assert_eq!(
            request.annotation.as_deref(),
            Some("a,b"),
            "still covers the user's value"
        );

        // A user annotation in the same step: both, counted by both.
        let none = BTreeMap::new();
        let s = step(on_failed(Some("a"), None, &selected, &none, &failed));
        let new = s.new.unwrap();
        assert_eq!(new.request.nodes, nodes(&["a", "c"]));
        assert_eq!(new.by, ["node", "failed"]);
        assert_eq!(new.request.annotation.as_deref(), Some("a"));
    }

    #[test]
    fn a_re_init_asked_during_a_re_init_on_failed_is_not_swallowed() {
        // Failed before `annotation` was optional: the on-failed request recorded "" and a user
        // asking `re-init: ""` (every node) meanwhile matched it, so only the Failed node was
        // re-baselined and the user's annotation was then removed as done.
        let selected = nodes(&["a", "b"]);
        let none = BTreeMap::new();
        let failed = nodes(&["b"]);
        let first = step(on_failed(None, None, &selected, &none, &failed))
            .record
            .unwrap();
        let s = step(input(Some(""), Some(&first), &selected, &none));
        let second = s.record.unwrap();
        assert_eq!(second.id, first.id + 1, "a new request");
        assert_eq!(second.nodes, selected);
        assert!(!s.remove_annotation);
    }

    #[test]
    fn a_config_change_with_re_init_on_failed_covers_every_node() {
        let selected = nodes(&["a", "b"]);
        let none = BTreeMap::new();
        let failed = nodes(&["b"]);
        let s = step(ReinitInput {
            config_hash: Some("h2"),
            ..on_failed(None, None, &selected, &none, &failed)
        });
        let new = s.new.unwrap();
        assert_eq!(new.request.nodes, selected);
        assert_eq!(new.by, ["config", "failed"]);
        assert_eq!(s.on_failed, Some(failed));
    }

    #[test]
    fn an_agent_ack_does_not_choose_the_next_id() {
        // Failed before the fix: max(acks)+1 overflowed (a panic in debug builds).
        let selected = nodes(&["a", "b"]);
        let acks = BTreeMap::from([("a".to_owned(), u64::MAX), ("b".to_owned(), 41)]);
        let s = step(ReinitInput {
            fresh_id: 1_000,
            ..input(Some(""), None, &selected, &acks)
        });
        let request = s.record.unwrap();
        assert_eq!(
            request.id, 1_000,
            "the operator's fresh id, not one from an ack"
        );
        assert_eq!(s.pending, selected, "no ack answers a request in advance");
        // The next request follows the recorded one, still ignoring acks.
        let recorded = request.completed();
        let s = step(input(Some("b"), Some(&recorded), &selected, &acks));
        assert_eq!(s.record.unwrap().id, 1_001);
        // A recorded id at the top (someone wrote it) restarts instead of overflowing.
        let top = ReinitRequest {
            id: u64::MAX,
            ..recorded
        };
        assert_eq!(next_id(Some(&top), 7), 7);
    }
}
