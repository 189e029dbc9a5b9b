//! The FileIntegrity status: phase, per-node counts and conditions, computed from what the
//! operator observed.
//!
//! Phase rules, first match wins:
//! 1. the config is invalid → `Error`;
//! 2. no agent DaemonSet yet (including while `initialDelay` runs), or no node selected →
//!    `Pending`;
//! 3. a node has a re-init pending, has not reported yet, or reported without a result →
//!    `Initializing`;
//! 4. otherwise `Active`. As in the file-integrity-operator, a Failed node does not change the
//!    phase (scans are active; the failure is a finding, not a malfunction), and neither does an
//!    Errored one: both show in the counts and in the `IntegrityFailed` / `ScanErrored`
//!    conditions.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::apps::v1::DaemonSetStatus,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube_fim_crds::{
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityPhase, FileIntegrityStatus, ScanCondition,
};

/// Condition: the rules ConfigMap exists and parses.
pub const CONFIG_VALID: &str = "ConfigValid";
/// Condition: scans are active on every selected node (phase `Active`).
pub const AVAILABLE: &str = "Available";
/// Condition: every agent pod is ready.
pub const AGENTS_READY: &str = "AgentsReady";
/// Condition: a node's latest scan found changes.
pub const INTEGRITY_FAILED: &str = "IntegrityFailed";
/// Condition: a node's latest scan could not complete.
pub const SCAN_ERRORED: &str = "ScanErrored";
/// Condition: a node reports a baseline the operator did not see it create (issue 10, item 2).
pub const BASELINE_REPLACED: &str = "BaselineReplaced";

/// Condition: `spec.priorityClassName` names an existing PriorityClass (only present when the
/// spec names one).
pub const PRIORITY_CLASS_FOUND: &str = "PriorityClassFound";

/// What the operator found about `spec.priorityClassName`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PriorityClassCheck {
    /// The spec names no class.
    NotRequested,
    /// The named class exists: the agent pods get it.
    Found(String),
    /// The named class does not exist: the agent pods run without one.
    Missing(String),
}

impl PriorityClassCheck {
    /// Whether the agent pods may carry the class the spec names.
    pub fn usable(&self) -> bool {
        !matches!(self, PriorityClassCheck::Missing(_))
    }

    /// The `PriorityClassFound` condition, `None` when the spec names no class.
    /// `lastTransitionTime` only moves when the status flips (from `previous` conditions).
    pub fn condition(
        &self,
        previous: &[Condition],
        generation: Option<i64>,
        now: Timestamp,
    ) -> Option<Condition> {
        let (status, reason, message) = match self {
            PriorityClassCheck::NotRequested => return None,
            PriorityClassCheck::Found(class) => (
                "True",
                "Found",
                format!("the agent pods run with PriorityClass {class}"),
            ),
            PriorityClassCheck::Missing(class) => (
                "False",
                "NotFound",
                format!(
                    "PriorityClass {class} not found: the agent pods run without a priority class \
                     until it is created"
                ),
            ),
        };
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == PRIORITY_CLASS_FOUND && c.status == status)
            .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
        Some(Condition {
            type_: PRIORITY_CLASS_FOUND.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time,
            observed_generation: generation,
        })
    }

    /// Whether this check is news compared with the conditions already published: a Warning
    /// is due when the class is missing and the status did not already say so for that class.
    pub fn newly_missing(&self, previous: &[Condition]) -> bool {
        let PriorityClassCheck::Missing(_) = self else {
            return false;
        };
        let now = self.condition(&[], None, Timestamp::UNIX_EPOCH);
        let message = now.map(|c| c.message);
        !previous.iter().any(|c| {
            c.type_ == PRIORITY_CLASS_FOUND
                && c.status == "False"
                && Some(&c.message) == message.as_ref()
        })
    }
}

/// Adds the `PriorityClassFound` condition of `check` to `status` (see
/// [`PriorityClassCheck::condition`]).
pub fn add_priority_class_condition(
    status: &mut FileIntegrityStatus,
    fi: &FileIntegrity,
    check: &PriorityClassCheck,
    now: Timestamp,
) {
    let previous = fi
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if let Some(c) = check.condition(previous, fi.metadata.generation, now) {
        status.conditions.push(c);
    }
}

/// Condition type: whether some node's latest result is older than twice `gracePeriod` (its
/// agent stopped reporting: dead, wedged or cut off). Issue 10, item 4.
pub const NODES_STALE: &str = "NodesStale";

/// Which nodes are stale at `now`, and when the next one will be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Staleness {
    /// Every node with a result: `true` when stale.
    pub stale: BTreeMap<String, bool>,
    /// How long until a node that is fresh now turns stale (to look again then).
    pub next_in: Option<std::time::Duration>,
}

impl Staleness {
    pub fn stale_nodes(&self) -> Vec<String> {
        self.stale
            .iter()
            .filter(|(_, s)| **s)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// A node is stale when its latest result (`lastProbeTime`, refreshed by every periodic check)
/// is older than `2 × grace_period` seconds. Nodes without a result or re-creating their
/// baseline are initialising, not stale.
pub fn staleness(
    node_statuses: &[FileIntegrityNodeStatus],
    grace_period: i64,
    pending_reinit: &BTreeSet<String>,
    now: Timestamp,
) -> Staleness {
    let limit = grace_period.max(1).saturating_mul(2);
    let mut out = Staleness::default();
    for s in node_statuses {
        let node = &s.spec.node_name;
        let Some(result) = s.spec.last_result.as_ref() else {
            continue;
        };
        if pending_reinit.contains(node) {
            continue;
        }
        let age = now
            .as_second()
            .saturating_sub(result.last_probe_time.0.as_second());
        let stale = age > limit;
        if !stale {
            let left = std::time::Duration::from_secs(u64::try_from(limit - age).unwrap_or(0) + 1);
            out.next_in = Some(out.next_in.map_or(left, |n| n.min(left)));
        }
        out.stale.insert(node.clone(), stale);
    }
    out
}

/// Adds the [`NODES_STALE`] condition for `stale` nodes.
pub fn add_stale_condition(
    status: &mut FileIntegrityStatus,
    fi: &FileIntegrity,
    stale: &[String],
    now: Timestamp,
) {
    let previous = fi
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let value = if stale.is_empty() { "False" } else { "True" };
    let (reason, message) = if stale.is_empty() {
        (
            "Recent",
            "every node reported within twice gracePeriod".to_owned(),
        )
    } else {
        (
            "NoRecentResult",
            format!(
                "no result for more than twice gracePeriod from: {}",
                list_nodes(stale)
            ),
        )
    };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == NODES_STALE && c.status == value)
        .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
    status.conditions.push(Condition {
        type_: NODES_STALE.to_owned(),
        status: value.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: fi.metadata.generation,
    });
}

/// Condition type: the backoff stopped a container remediation (issue 14): some workload was
/// remediated `maxRemediations` times within `remediationWindowSeconds` and is tampered again.
pub const REMEDIATION_SUPPRESSED: &str = "RemediationSuppressed";

/// Adds the [`REMEDIATION_SUPPRESSED`] condition when `spec.containers.enabled`: True while a
/// suppression (`suppressed`: workload → seconds) is younger than the remediation window.
/// Returns how long until it turns False, to look again then.
pub fn add_suppressed_condition(
    status: &mut FileIntegrityStatus,
    fi: &FileIntegrity,
    suppressed: &BTreeMap<String, i64>,
    now: Timestamp,
) -> Option<std::time::Duration> {
    let settings = fi.spec.containers.as_ref().filter(|c| c.enabled)?;
    let window = settings.remediation_window_seconds.max(1);
    let recent: Vec<(&String, i64)> = suppressed
        .iter()
        .map(|(w, at)| (w, *at))
        .filter(|(_, at)| now.as_second() - at < window)
        .collect();
    let previous = fi
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let value = if recent.is_empty() { "False" } else { "True" };
    let (reason, message) = if recent.is_empty() {
        (
            "WithinLimit",
            format!("no container remediation suppressed within the last {window}s"),
        )
    } else {
        let names: Vec<String> = recent.iter().map(|(w, _)| (*w).clone()).collect();
        (
            "TooManyRemediations",
            format!(
                "remediation suppressed for {}: {} remediations within {window}s already",
                list_nodes(&names),
                settings.max_remediations.max(1)
            ),
        )
    };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == REMEDIATION_SUPPRESSED && c.status == value)
        .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
    status.conditions.push(Condition {
        type_: REMEDIATION_SUPPRESSED.to_owned(),
        status: value.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: fi.metadata.generation,
    });
    let until = recent.iter().map(|(_, at)| at + window).max()?;
    Some(std::time::Duration::from_secs(
        u64::try_from(until - now.as_second()).unwrap_or(0) + 1,
    ))
}

/// Node names listed in a condition message before `and N more`.
const MAX_LISTED_NODES: usize = 5;
/// Longest config error kept in a condition message (the API allows 32768 bytes).
const MAX_MESSAGE_CHARS: usize = 1024;

/// The status of `fi` given:
/// - `daemonset`: status of its agent DaemonSet, `None` when not created yet (a status the
///   DaemonSet controller has not observed yet counts as not created: its zero counts would
///   otherwise read as "no nodes, all done" and flash `Active`);
/// - `node_statuses`: its FileIntegrityNodeStatus objects for the currently selected nodes;
/// - `config_error`: why the rules are unusable, if they are;
/// - `pending_reinit`: nodes that have not acknowledged the current re-init request;
/// - `replaced`: nodes whose baseline was replaced without a re-init ([`crate::anchor`]):
///   Errored whatever their own result says;
/// - `now`: transition time of conditions whose status changes.
///
/// `baselines` is left empty: the caller sets it from [`crate::anchor::judge_all`].
pub fn compute_status(
    fi: &FileIntegrity,
    daemonset: Option<&DaemonSetStatus>,
    node_statuses: &[FileIntegrityNodeStatus],
    config_error: Option<&str>,
    pending_reinit: &BTreeSet<String>,
    replaced: &BTreeSet<String>,
    now: Timestamp,
) -> FileIntegrityStatus {
    let counts = NodeCounts::new(daemonset, node_statuses, pending_reinit, replaced);
    let phase = if config_error.is_some() {
        FileIntegrityPhase::Error
    } else if daemonset.is_none_or(|ds| ds.observed_generation.is_none()) {
        FileIntegrityPhase::Pending
    } else if counts.nodes == 0 {
        // Nothing is monitored: not "Active", and it moves on as soon as a node matches.
        FileIntegrityPhase::Pending
    } else if counts.initializing > 0 {
        FileIntegrityPhase::Initializing
    } else {
        FileIntegrityPhase::Active
    };

    let generation = fi.metadata.generation;
    let previous = fi
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        // lastTransitionTime only moves when the status flips.
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time,
            observed_generation: generation,
        }
    };

    let mut conditions = vec![match config_error {
        None => condition(CONFIG_VALID, true, "Valid", "rules loaded".to_owned()),
        Some(error) => condition(
            CONFIG_VALID,
            false,
            "InvalidConfig",
            truncate_chars(error, MAX_MESSAGE_CHARS),
        ),
    }];

    let (available_reason, available_message) = match phase {
        FileIntegrityPhase::Error => (
            "Error",
            "the rules are invalid; agents keep the last good rules",
        ),
        FileIntegrityPhase::Pending
            if daemonset.is_some_and(|ds| ds.observed_generation.is_some()) =>
        {
            (
                "NoNodesSelected",
                "no node matches spec.nodeSelector and spec.tolerations",
            )
        }
        FileIntegrityPhase::Pending => ("Pending", "the agent DaemonSet is not created yet"),
        FileIntegrityPhase::Initializing => ("Initializing", "nodes are creating their baseline"),
        FileIntegrityPhase::Active => ("Active", "scans are active on every selected node"),
    };
    conditions.push(condition(
        AVAILABLE,
        phase == FileIntegrityPhase::Active,
        available_reason,
        format!("{available_message} ({})", counts.summary()),
    ));

    if let Some(ds) = daemonset {
        let ready = ds.number_ready >= ds.desired_number_scheduled;
        conditions.push(condition(
            AGENTS_READY,
            ready,
            if ready {
                "AgentsReady"
            } else {
                "AgentsNotReady"
            },
            format!(
                "{} of {} agent pods ready",
                ds.number_ready, ds.desired_number_scheduled
            ),
        ));
    }

    conditions.push(if counts.failed_nodes.is_empty() {
        condition(
            INTEGRITY_FAILED,
            false,
            "NoChanges",
            "no node reports changes".into(),
        )
    } else {
        condition(
            INTEGRITY_FAILED,
            true,
            "FilesChanged",
            format!("files changed on {}", list_nodes(&counts.failed_nodes)),
        )
    });
    conditions.push(if replaced.is_empty() {
        condition(
            BASELINE_REPLACED,
            false,
            "BaselinesAnchored",
            "every node reports the baseline the operator saw it create".into(),
        )
    } else {
        let nodes: Vec<String> = replaced.iter().cloned().collect();
        condition(
            BASELINE_REPLACED,
            true,
            "BaselineReplaced",
            format!(
                "baseline replaced without a re-init request on {}; re-init these nodes after \
                 inspecting them",
                list_nodes(&nodes)
            ),
        )
    });
    conditions.push(if counts.errored_nodes.is_empty() {
        condition(
            SCAN_ERRORED,
            false,
            "NoErrors",
            "no node reports errors".into(),
        )
    } else {
        condition(
            SCAN_ERRORED,
            true,
            "ScanError",
            format!("scans failed on {}", list_nodes(&counts.errored_nodes)),
        )
    });

    FileIntegrityStatus {
        phase,
        conditions,
        observed_generation: generation,
        nodes: counts.nodes,
        initializing: counts.initializing,
        succeeded: counts.succeeded,
        failed: to_i32(counts.failed_nodes.len()),
        errored: to_i32(counts.errored_nodes.len()),
        baselines: Vec::new(),
        // Written apart, under its own field manager (operator/src/containers).
        container_remediations: Vec::new(),
    }
}

/// How the selected nodes stand.
#[derive(Debug, Default)]
struct NodeCounts {
    nodes: i32,
    initializing: i32,
    succeeded: i32,
    failed_nodes: Vec<String>,
    errored_nodes: Vec<String>,
}

impl NodeCounts {
    fn new(
        daemonset: Option<&DaemonSetStatus>,
        node_statuses: &[FileIntegrityNodeStatus],
        pending_reinit: &BTreeSet<String>,
        replaced: &BTreeSet<String>,
    ) -> Self {
        let mut counts = NodeCounts::default();
        for status in node_statuses {
            let node = &status.spec.node_name;
            if replaced.contains(node) {
                counts.errored_nodes.push(node.clone());
                continue;
            }
            // A node re-creating its baseline reports its old result meanwhile: it is
            // initialising, whatever that result says.
            let condition = match &status.spec.last_result {
                Some(result) if !pending_reinit.contains(node) => result.condition,
                _ => {
                    counts.initializing += 1;
                    continue;
                }
            };
            match condition {
                ScanCondition::Succeeded => counts.succeeded += 1,
                ScanCondition::Failed => counts.failed_nodes.push(node.clone()),
                ScanCondition::Errored => counts.errored_nodes.push(node.clone()),
            }
        }
        let reported = to_i32(node_statuses.len());
        let desired = daemonset.map_or(0, |ds| ds.desired_number_scheduled);
        // Agents scheduled but not reported yet are still initialising.
        counts.initializing += (desired - reported).max(0);
        counts.nodes = desired.max(reported);
        counts
    }

    fn summary(&self) -> String {
        format!(
            "nodes: {}, initializing: {}, succeeded: {}, failed: {}, errored: {}",
            self.nodes,
            self.initializing,
            self.succeeded,
            self.failed_nodes.len(),
            self.errored_nodes.len()
        )
    }
}

fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// `a, b and 3 more`: bounded, so a large cluster cannot blow up the message.
fn list_nodes(nodes: &[String]) -> String {
    let mut sorted = nodes.to_vec();
    sorted.sort();
    let shown = sorted
        .iter()
        .take(MAX_LISTED_NODES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match sorted.len().saturating_sub(MAX_LISTED_NODES) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FI: &str = "
apiVersion: fim.kubefim.io/v1alpha1
kind: FileIntegrity
metadata:
  name: example
  namespace: kube-fim
  generation: 3
spec: {}
";

    fn fi() -> FileIntegrity {
        serde_saphyr::from_str(FI).unwrap()
    }

    fn now() -> Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn ds(desired: i32, ready: i32) -> DaemonSetStatus {
        DaemonSetStatus {
            desired_number_scheduled: desired,
            current_number_scheduled: desired,
            number_ready: ready,
            observed_generation: Some(1),
            ..DaemonSetStatus::default()
        }
    }

    /// A node status; `condition` is the last result's, `None` for no result yet.
    fn node(name: &str, condition: Option<&str>) -> FileIntegrityNodeStatus {
        let last = condition
            .map(|c| {
                format!("lastResult:\n  condition: {c}\n  lastProbeTime: '2026-03-01T11:59:00Z'\n")
            })
            .unwrap_or_default();
        serde_saphyr::from_str(&format!(
            "
apiVersion: fim.kubefim.io/v1alpha1
kind: FileIntegrityNodeStatus
metadata:
  name: example-{name}
  namespace: kube-fim
nodeName: {name}
{last}"
        ))
        .unwrap()
    }

    fn cond<'a>(status: &'a FileIntegrityStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"))
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn config_error_wins() {
        let nodes = [node("a", Some("Succeeded"))];
        let s = compute_status(
            &fi(),
            Some(&ds(1, 1)),
            &nodes,
            Some("configmap kube-fim/myconf not found"),
            &none(),
            &none(),
            now(),
        );
        assert_eq!(s.phase, FileIntegrityPhase::Error);
        let c = cond(&s, CONFIG_VALID);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidConfig")
        );
        assert_eq!(c.message, "configmap kube-fim/myconf not found");
        assert_eq!(cond(&s, AVAILABLE).status, "False");
        assert_eq!(cond(&s, AVAILABLE).reason, "Error");
    }

    #[test]
    fn pending_until_the_daemonset_is_observed() {
        let s = compute_status(&fi(), None, &[], None, &none(), &none(), now());
        assert_eq!(s.phase, FileIntegrityPhase::Pending);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(cond(&s, CONFIG_VALID).status, "True");

        let unobserved = DaemonSetStatus::default();
        let s = compute_status(&fi(), Some(&unobserved), &[], None, &none(), &none(), now());
        assert_eq!(s.phase, FileIntegrityPhase::Pending);
        assert_eq!(cond(&s, AVAILABLE).reason, "Pending");
    }

    #[test]
    fn no_selected_node_is_not_active() {
        let s = compute_status(&fi(), Some(&ds(0, 0)), &[], None, &none(), &none(), now());
        assert_eq!(s.phase, FileIntegrityPhase::Pending);
        assert_eq!(s.nodes, 0);
        let available = cond(&s, AVAILABLE);
        assert_eq!(
            (available.status.as_str(), available.reason.as_str()),
            ("False", "NoNodesSelected")
        );
    }

    #[test]
    fn initializing_while_nodes_have_not_reported() {
        // Three agents scheduled, one reported a result, one a status without result.
        let nodes = [node("a", Some("Succeeded")), node("b", None)];
        let s = compute_status(
            &fi(),
            Some(&ds(3, 3)),
            &nodes,
            None,
            &none(),
            &none(),
            now(),
        );
        assert_eq!(s.phase, FileIntegrityPhase::Initializing);
        assert_eq!((s.nodes, s.initializing, s.succeeded), (3, 2, 1));
        assert_eq!(cond(&s, AVAILABLE).reason, "Initializing");
    }

    #[test]
    fn pending_reinit_makes_a_node_initializing() {
        let nodes = [node("a", Some("Succeeded")), node("b", Some("Failed"))];
        let pending = BTreeSet::from(["b".to_owned()]);
        let s = compute_status(
            &fi(),
            Some(&ds(2, 2)),
            &nodes,
            None,
            &pending,
            &none(),
            now(),
        );
        assert_eq!(s.phase, FileIntegrityPhase::Initializing);
        assert_eq!((s.initializing, s.succeeded, s.failed), (1, 1, 0));
    }

    #[test]
    fn failed_and_errored_nodes_keep_the_phase_active() {
        let nodes = [
            node("a", Some("Succeeded")),
            node("b", Some("Failed")),
            node("c", Some("Errored")),
        ];
        let s = compute_status(
            &fi(),
            Some(&ds(3, 2)),
            &nodes,
            None,
            &none(),
            &none(),
            now(),
        );
        assert_eq!(s.phase, FileIntegrityPhase::Active);
        assert_eq!(
            (s.nodes, s.initializing, s.succeeded, s.failed, s.errored),
            (3, 0, 1, 1, 1)
        );
        assert_eq!(cond(&s, AVAILABLE).status, "True");
        let failed = cond(&s, INTEGRITY_FAILED);
        assert_eq!(
            (failed.status.as_str(), failed.message.as_str()),
            ("True", "files changed on b")
        );
        let errored = cond(&s, SCAN_ERRORED);
        assert_eq!(
            (errored.status.as_str(), errored.message.as_str()),
            ("True", "scans failed on c")
        );
        let agents = cond(&s, AGENTS_READY);
        assert_eq!(
            (agents.status.as_str(), agents.message.as_str()),
            ("False", "2 of 3 agent pods ready")
        );
        for c in &s.conditions {
            assert_eq!(c.observed_generation, Some(3), "{}", c.type_);
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let healthy = [node("a", Some("Succeeded"))];
        let first = compute_status(
            &fi(),
            Some(&ds(1, 1)),
            &healthy,
            None,
            &none(),
            &none(),
            now(),
        );
        let mut object = fi();
        object.status = Some(first);

        let later: Timestamp = "2026-03-01T13:00:00Z".parse().unwrap();
        let failing = [node("a", Some("Failed"))];
        let second = compute_status(
            &object,
            Some(&ds(1, 1)),
            &failing,
            None,
            &none(),
            &none(),
            later,
        );
        assert_eq!(cond(&second, AVAILABLE).last_transition_time, Time(now()));
        assert_eq!(
            cond(&second, CONFIG_VALID).last_transition_time,
            Time(now())
        );
        assert_eq!(
            cond(&second, INTEGRITY_FAILED).last_transition_time,
            Time(later)
        );
        assert_eq!(cond(&second, INTEGRITY_FAILED).status, "True");
    }

    #[test]
    fn messages_stay_bounded() {
        let nodes: Vec<String> = (0..8).map(|i| format!("node-{i}")).collect();
        assert_eq!(
            list_nodes(&nodes),
            "node-0, node-1, node-2, node-3, node-4 and 3 more"
        );
        let long = "x".repeat(5000);
        let s = compute_status(&fi(), None, &[], Some(&long), &none(), &none(), now());
        assert_eq!(
            cond(&s, CONFIG_VALID).message.chars().count(),
            MAX_MESSAGE_CHARS + 3
        );
    }

    #[test]
    fn priority_class_condition_says_what_happened() {
        let mut s = compute_status(&fi(), None, &[], None, &none(), &none(), now());
        let before = s.conditions.len();
        add_priority_class_condition(&mut s, &fi(), &PriorityClassCheck::NotRequested, now());
        assert_eq!(s.conditions.len(), before, "no class asked, no condition");

        let missing = PriorityClassCheck::Missing("agents".into());
        assert!(!missing.usable());
        add_priority_class_condition(&mut s, &fi(), &missing, now());
        let c = cond(&s, PRIORITY_CLASS_FOUND);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NotFound")
        );
        assert!(
            c.message.contains("PriorityClass agents not found"),
            "{}",
            c.message
        );
        assert_eq!(c.observed_generation, Some(3));

        // A Warning is due once per missing class, not on every reconcile.
        assert!(missing.newly_missing(&[]));
        assert!(!missing.newly_missing(&s.conditions));
        assert!(PriorityClassCheck::Missing("other".into()).newly_missing(&s.conditions));

        let found = PriorityClassCheck::Found("agents".into());
        assert!(found.usable());
        assert!(!found.newly_missing(&[]));
        let later: Timestamp = "2026-03-01T13:00:00Z".parse().unwrap();
        let c = found.condition(&s.conditions, Some(3), later).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Found"));
        assert_eq!(c.last_transition_time, Time(later), "flipped");
    }
}
