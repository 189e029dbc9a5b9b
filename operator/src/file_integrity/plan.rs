//! Step 2 of a reconcile: from what [`super::observe`] read, everything the operator wants
//! written, as one value. Pure: no API call, no clock (the time is the observation's), so every
//! decision of the controller is unit-tested here.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Node, ObjectReference, Taint, Toleration},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Resource, ResourceExt, runtime::events::Event};
use kube_fim_crds::{
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityStatus, ScanCondition, labels,
};

use super::{OperatorConfig, observe::Observed};
use crate::{
    Error, Result, anchor,
    config::{self, ConfigError, ConfigSource},
    daemonset::{self, AgentOptions},
    events::{self, EventMessage, NodeEventKey},
    node_objects,
    phase::{self, PriorityClassCheck},
    reinit::{self, ReinitStep},
};

/// What one reconcile writes. [`super::apply`] writes it in the order of the fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Warnings to publish first (a missing PriorityClass).
    pub warnings: Vec<PlannedEvent>,
    /// Why the rules are unusable, if they are (the agents keep the last good rules).
    pub config_error: Option<ConfigError>,
    /// The rules ConfigMap `fim-config-<fi>` to apply; `None` while the rules are invalid.
    pub config_map: Option<ConfigMap>,
    /// The agent DaemonSet to apply; `None` before `initialDelay` passed or while there never
    /// were valid rules.
    pub daemonset: Option<DaemonSet>,
    /// Per-node objects to create (the agents may only update them): for every node the
    /// agents run on that has no status under its canonical name.
    pub creations: Vec<NodeObjects>,
    /// Node statuses of deleted nodes to delete (with their metric series and event memory).
    pub deletions: Vec<Deletion>,
    /// `NodeIntegrityStatus` events due (each counted in `node_status_total` once published).
    pub node_events: Vec<NodeEvent>,
    /// The `node_failed` gauge per selected node with a status.
    pub node_failed: BTreeMap<String, bool>,
    /// The `node_errored` gauge per selected node with a status.
    pub node_errored: BTreeMap<String, bool>,
    /// The `node_stale` gauge per selected node with a result.
    pub node_stale: BTreeMap<String, bool>,
    /// The `baseline_replaced` gauge per selected node with a status.
    pub baseline_replaced: BTreeMap<String, bool>,
    /// `BaselineReplaced` Warnings for nodes newly found with a replaced baseline, published
    /// once the status recording the rejection is stored.
    pub anchor_events: Vec<PlannedEvent>,
    /// The re-init step: a guarded merge patch of the FileIntegrity's annotations, and what
    /// follows once it is written.
    pub reinit: ReinitPlan,
    /// The new status, `None` when it is unchanged.
    pub status: Option<StatusUpdate>,
    /// When to look again without any change.
    pub next: Next,
}

/// A node's status and failure ConfigMap, created empty ([`crate::node_objects`]).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeObjects {
    pub node: String,
    pub status: FileIntegrityNodeStatus,
    pub failure_config_map: ConfigMap,
}

/// A node status to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    /// Name of the FileIntegrityNodeStatus.
    pub status: String,
    /// Its node, which no longer exists.
    pub node: String,
}

/// An event to publish on the FileIntegrity. The Recorder folds events with the same type,
/// reason, action and related object into one series keeping the first note: `action` tells
/// apart the occurrences that deserve their own message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub message: EventMessage,
    /// At most 128 bytes (Events API).
    pub action: String,
    /// The node the event is about (its `related` object).
    pub node: Option<String>,
}

impl PlannedEvent {
    fn new(message: EventMessage, action: String) -> Self {
        Self {
            message,
            action: truncate_action(action),
            node: None,
        }
    }

    /// The event for `Recorder::publish`.
    pub fn to_event(&self) -> Event {
        Event {
            action: self.action.clone(),
            secondary: self.node.as_ref().map(|node| ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(node.clone()),
                ..ObjectReference::default()
            }),
            ..self.message.clone().into_event()
        }
    }
}

/// A `NodeIntegrityStatus` event for a node's new result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEvent {
    pub node: String,
    /// What it says, remembered once published so it is not repeated.
    pub key: NodeEventKey,
    pub event: PlannedEvent,
}

/// The re-init step and what follows once it is written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReinitPlan {
    /// The step ([`reinit::step`]).
    pub step: ReinitStep,
    /// The JSON merge patch of the FileIntegrity, guarded by its resourceVersion; `None`
    /// when there is nothing to write.
    pub patch: Option<serde_json::Value>,
    /// Events announcing the request it makes.
    pub events: Vec<PlannedEvent>,
    /// `reinit_total` increments: the `by` values and the targeted nodes.
    pub count: Option<(Vec<&'static str>, BTreeSet<String>)>,
}

/// A status change and what follows once it is written.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    pub status: FileIntegrityStatus,
    /// Set when the phase changed.
    pub phase_change: Option<PhaseChange>,
}

/// A phase transition: its event and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseChange {
    pub event: PlannedEvent,
    /// `phase_total` label.
    pub phase: &'static str,
    /// `error_total` label, when the new phase is due to a config error.
    pub error: Option<&'static str>,
}

/// When to reconcile again if nothing changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// After this long (the periodic resync, or the end of `initialDelay`).
    After(Duration),
    /// Only on a change: the problem (invalid rules) is permanent until someone fixes it.
    AwaitChange,
}

/// The plan for `observed`.
pub fn plan(observed: &Observed, settings: &OperatorConfig) -> Result<Plan> {
    let fi = observed.fi.as_ref();
    let name = fi.name_any();
    let namespace = fi
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let now = observed.now;
    let previous_conditions = fi
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();

    // 1. Rules: validated; on error the agents keep the last good ones.
    let source = ConfigSource::of(fi);
    let rules = config::rules_text(&source, observed.user_config_map.as_ref())
        .and_then(|text| config::validate(&text, &source).map(|()| text));
    let (config_error, config_hash, config_map) = match rules {
        Ok(text) => {
            let hash = config::config_hash(&text);
            let cm = rules_config_map(fi, &name, &namespace, text, hash.clone())?;
            (None, Some(hash), Some(cm))
        }
        Err(error) => {
            let last_good = observed
                .rendered_config_map
                .as_ref()
                .and_then(|cm| cm.data.as_ref())
                .and_then(|d| d.get(daemonset::CONFIG_FILE))
                .map(|t| config::config_hash(t));
            (Some(error), last_good, None)
        }
    };

    // 2. The agent DaemonSet, once the initial delay has passed and there are rules to run;
    //    with the priority class only if it exists (and a Warning if not).
    let mut warnings = Vec::new();
    if let (true, PriorityClassCheck::Missing(class)) = (
        observed.priority_class.newly_missing(previous_conditions),
        &observed.priority_class,
    ) {
        warnings.push(PlannedEvent::new(
            events::priority_class_missing_message(class),
            format!("PriorityClassNotFound-{class}"),
        ));
    }
    let wait = daemonset::should_create_daemonset(fi, now);
    let daemonset = match (&config_hash, wait) {
        (Some(_), Ok(())) => {
            let opts = AgentOptions {
                priority_class_exists: observed.priority_class.usable(),
                api_server: settings.agent_api_server.clone(),
                s3: settings.agent_s3.clone(),
                ..AgentOptions::new(
                    settings.agent_image.clone(),
                    settings.namespace.clone(),
                    settings.agent_service_account.clone(),
                    config::config_map_name(&name),
                )
            };
            Some(daemonset::desired_daemonset(fi, &opts)?)
        }
        _ => None,
    };
    // While the initial delay runs nothing is scheduled, whatever exists.
    let ds_status = match wait {
        Ok(()) => observed.daemonset.as_ref().and_then(|ds| ds.status.clone()),
        Err(_) => None,
    };

    // 3. Node statuses of the selected nodes; those of deleted nodes go.
    let selection = Selection::of(fi, &observed.nodes);
    let mut selected = Vec::new();
    let mut deletions = Vec::new();
    // Only a status under its node's canonical name counts: one node, one status, whatever
    // else was written (nodes are counted, not status objects).
    for s in observed
        .node_statuses
        .iter()
        .filter(|s| node_objects::is_canonical(s, &name))
    {
        let node = s.spec.node_name.as_str();
        if selection.selected.contains(node) {
            selected.push((**s).clone());
        } else if !selection.existing.contains(node) && observed.gone_nodes.contains(node) {
            deletions.push(Deletion {
                status: s.name_any(),
                node: node.to_owned(),
            });
        }
    }
    let creations = if daemonset.is_some() {
        let have: BTreeSet<&str> = selected.iter().map(|s| s.spec.node_name.as_str()).collect();
        selection
            .schedulable
            .iter()
            .filter(|n| !have.contains(n.as_str()))
            .map(|node| {
                Ok(NodeObjects {
                    node: node.clone(),
                    status: node_objects::node_status(fi, node)?,
                    failure_config_map: node_objects::failure_config_map(fi, node)?,
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let node_events = selected
        .iter()
        .filter_map(|s| {
            let result = s.spec.last_result.as_ref()?;
            let node = s.spec.node_name.clone();
            let key = NodeEventKey::from(result);
            if !events::should_reemit(observed.announced.get(&node), &key) {
                return None;
            }
            let event = PlannedEvent {
                node: Some(node.clone()),
                ..PlannedEvent::new(
                    events::node_event_message(&node, result, &s.spec.changed_paths),
                    node_event_action(&key),
                )
            };
            Some(NodeEvent { node, key, event })
        })
        .collect();
    let node_is = |condition: ScanCondition| -> BTreeMap<String, bool> {
        selected
            .iter()
            .map(|s| {
                let is = s
                    .spec
                    .last_result
                    .as_ref()
                    .is_some_and(|r| r.condition == condition);
                (s.spec.node_name.clone(), is)
            })
            .collect()
    };
    let node_failed = node_is(ScanCondition::Failed);
    let mut node_errored = node_is(ScanCondition::Errored);

    // 4. Re-init: the user annotation and config changes become numbered requests that the
    //    agents acknowledge on their node statuses.
    let acks = reinit::acknowledgements(&selected);
    let recorded = reinit::recorded_request(fi)?;
    let failed_nodes: BTreeSet<String> = node_failed
        .iter()
        .filter(|(_, f)| **f)
        .map(|(n, _)| n.clone())
        .collect();
    let step = reinit::step(reinit::ReinitInput {
        annotation: reinit::reinit_annotation(fi),
        on_failed: fi.annotations().contains_key(labels::REINIT_ON_FAILED),
        failed: &failed_nodes,
        recorded: recorded.as_ref(),
        recorded_config_hash: fi
            .annotations()
            .get(reinit::CONFIG_HASH_ANNOTATION)
            .map(String::as_str),
        config_hash: config_hash.as_deref(),
        selected: &selection.schedulable,
        acks: &acks,
        // Operator-chosen (see the reinit module): the observation time, never an agent's ack.
        fresh_id: u64::try_from(now.as_millisecond()).unwrap_or(1),
    });
    let reinit = reinit_plan(step, fi.resource_version().as_deref(), &failed_nodes);

    // 5. The baseline anchors: every reported digest against the operator's record.
    let reports: BTreeMap<String, anchor::Report<'_>> = selected
        .iter()
        .map(|s| {
            let report = anchor::Report {
                digest: s.spec.baseline_digest.as_deref(),
                ack: reinit::acknowledged_id(s),
            };
            (s.spec.node_name.clone(), report)
        })
        .collect();
    let requests: Vec<&reinit::ReinitRequest> =
        recorded.iter().chain(reinit.step.record.iter()).collect();
    let anchors = anchor::judge_all(
        fi.status
            .as_ref()
            .map(|s| s.baselines.as_slice())
            .unwrap_or_default(),
        &reports,
        &creations.iter().map(|c| c.node.clone()).collect(),
        &deletions.iter().map(|d| d.node.clone()).collect(),
        &requests,
        &reinit.step.pending,
    );
    let replaced = anchors.replaced();
    let baseline_replaced: BTreeMap<String, bool> = reports
        .keys()
        .map(|n| (n.clone(), replaced.contains(n)))
        .collect();
    for node in &replaced {
        node_errored.insert(node.clone(), true);
    }
    let anchor_events = anchors
        .newly_replaced
        .iter()
        .filter_map(|node| match anchors.verdicts.get(node)? {
            anchor::Verdict::Replaced { anchored, reported } => Some(PlannedEvent {
                node: Some(node.clone()),
                ..PlannedEvent::new(
                    events::baseline_replaced_message(node, anchored.as_deref(), reported),
                    format!("BaselineReplaced-{reported}"),
                )
            }),
            _ => None,
        })
        .collect();

    // 6. Status, with the phase event and metrics when the phase changes.
    let config_message = config_error.as_ref().map(ToString::to_string);
    let mut status = phase::compute_status(
        fi,
        ds_status.as_ref(),
        &selected,
        config_message.as_deref(),
        &reinit.step.pending,
        &replaced,
        now,
    );
    status.baselines = anchors.entries;
    phase::add_priority_class_condition(&mut status, fi, &observed.priority_class, now);
    // Silence is visible: a node whose agent stopped reporting is stale.
    let staleness = phase::staleness(
        &selected,
        fi.spec.config.grace_period,
        &reinit.step.pending,
        now,
    );
    phase::add_stale_condition(&mut status, fi, &staleness.stale_nodes(), now);
    let suppression_ends =
        phase::add_suppressed_condition(&mut status, fi, &observed.suppressed, now);
    // `containerRemediations` is the containers step's (its own field manager), not compared.
    let current = fi.status.clone().map(|mut s| {
        s.container_remediations.clear();
        s
    });
    let status = (current.as_ref() != Some(&status)).then(|| {
        let old = fi.status.as_ref().map(|s| s.phase);
        let phase_change = events::phase_event(old, status.phase).map(|message| PhaseChange {
            // The action names the new phase: each phase gets its own event series, and
            // repeats of a phase count up its series.
            event: PlannedEvent::new(message, status.phase.as_str().to_owned()),
            phase: status.phase.as_str(),
            error: config_error.as_ref().map(ConfigError::reason),
        });
        StatusUpdate {
            status,
            phase_change,
        }
    });

    let next = match (wait, &config_error) {
        (Err(remaining), _) => Next::After(settings.resync.min(remaining + Duration::from_secs(1))),
        // A fix comes as a change of a watched object: the FileIntegrity or a ConfigMap of the
        // watched namespace. A ConfigMap elsewhere is not watched: look again periodically.
        (Ok(()), Some(_)) if watched_source(&source, &settings.namespace) => Next::AwaitChange,
        // Also when the next node would turn stale, so staleness shows without any change.
        // And when a suppressed remediation leaves its window.
        (Ok(()), _) => Next::After(
            [staleness.next_in, suppression_ends]
                .into_iter()
                .flatten()
                .fold(settings.resync, Duration::min),
        ),
    };

    Ok(Plan {
        warnings,
        config_error,
        config_map,
        daemonset,
        creations,
        deletions,
        node_events,
        node_failed,
        node_errored,
        node_stale: staleness.stale,
        baseline_replaced,
        anchor_events,
        reinit,
        status,
        next,
    })
}

/// Whether a change of the rules source triggers a reconcile (the default rules never change).
fn watched_source(source: &ConfigSource, watched_namespace: &str) -> bool {
    match source {
        ConfigSource::Default => true,
        ConfigSource::ConfigMap { namespace, .. } => namespace == watched_namespace,
    }
}

/// The rules ConfigMap the agents mount, owned by the FileIntegrity.
fn rules_config_map(
    fi: &FileIntegrity,
    name: &str,
    namespace: &str,
    text: String,
    hash: String,
) -> Result<ConfigMap> {
    let owner = fi
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(config::config_map_name(name)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (labels::OWNER.to_owned(), name.to_owned()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    labels::OPERATOR_MANAGER.to_owned(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                daemonset::CONFIG_HASH_ANNOTATION.to_owned(),
                hash,
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(daemonset::CONFIG_FILE.to_owned(), text)])),
        ..ConfigMap::default()
    })
}

/// The patch, events and counts of a re-init step.
fn reinit_plan(
    step: ReinitStep,
    resource_version: Option<&str>,
    failed: &BTreeSet<String>,
) -> ReinitPlan {
    if step.is_noop() {
        return ReinitPlan {
            step,
            ..ReinitPlan::default()
        };
    }
    let mut events = Vec::new();
    let mut count = None;
    if step.on_failed.as_ref().is_some_and(BTreeSet::is_empty) {
        events.push(PlannedEvent::new(
            events::reinit_no_failed_nodes_message(),
            // One series per resourceVersion: each use of the annotation is told.
            format!(
                "ReinitOnFailedNoFailedNodes-{}",
                resource_version.unwrap_or_default()
            ),
        ));
    }
    if let Some(new) = &step.new {
        let id = new.request.id;
        events.push(PlannedEvent::new(
            events::reinit_requested_message(id, &new.by, &new.request.nodes),
            format!("ReinitRequest-{id}"),
        ));
        // A re-baseline of a Failed node accepts its findings: say which, so a rule change
        // cannot launder them unnoticed.
        let accepted: BTreeSet<String> = new.request.nodes.intersection(failed).cloned().collect();
        if !accepted.is_empty() {
            events.push(PlannedEvent::new(
                events::reinit_accepts_findings_message(id, &accepted),
                format!("ReinitAcceptsFindings-{id}"),
            ));
        }
        if !new.unknown.is_empty() {
            events.push(PlannedEvent::new(
                events::reinit_unknown_nodes_message(&new.unknown),
                format!("ReinitUnknownNodes-{id}"),
            ));
        }
        count = Some((new.by.clone(), new.request.nodes.clone()));
    }
    ReinitPlan {
        patch: Some(step.merge_patch(resource_version)),
        step,
        events,
        count,
    }
}

/// The nodes as a FileIntegrity sees them.
struct Selection<'a> {
    /// Every node.
    existing: BTreeSet<&'a str>,
    /// Nodes its `nodeSelector` matches.
    selected: BTreeSet<&'a str>,
    /// Selected nodes its agents can run on: every NoSchedule/NoExecute taint tolerated (the
    /// re-init targets; a node without an agent could never acknowledge).
    schedulable: BTreeSet<String>,
}

impl<'a> Selection<'a> {
    fn of(fi: &FileIntegrity, nodes: &'a [std::sync::Arc<Node>]) -> Self {
        let selected_nodes = || {
            nodes
                .iter()
                .filter(|n| selects(&fi.spec.node_selector, n.metadata.labels.as_ref()))
        };
        Selection {
            existing: nodes
                .iter()
                .filter_map(|n| n.metadata.name.as_deref())
                .collect(),
            selected: selected_nodes()
                .filter_map(|n| n.metadata.name.as_deref())
                .collect(),
            schedulable: selected_nodes()
                .filter(|n| {
                    let taints = n.spec.as_ref().and_then(|s| s.taints.as_deref());
                    tolerates(&fi.spec.tolerations, taints.unwrap_or_default())
                })
                .filter_map(|n| n.metadata.name.clone())
                .collect(),
        }
    }
}

/// Whether `tolerations` tolerate every NoSchedule and NoExecute taint of a node (the
/// scheduler's rule; PreferNoSchedule does not keep a DaemonSet pod away).
fn tolerates(tolerations: &[Toleration], taints: &[Taint]) -> bool {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| {
            tolerations.iter().any(|t| {
                let key = t.key.as_deref().unwrap_or_default();
                let exists = t.operator.as_deref() == Some("Exists");
                let key_ok = key == taint.key || (key.is_empty() && exists);
                let value_ok = exists
                    || t.value.as_deref().unwrap_or_default()
                        == taint.value.as_deref().unwrap_or_default();
                let effect_ok = t
                    .effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == taint.effect);
                key_ok && value_ok && effect_ok
            })
        })
}

/// Whether a node with `labels` matches `selector` (every key with that value).
fn selects(selector: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The event action of a node result: its condition and counts (at most ~80 bytes, within the
/// Events API's 128).
fn node_event_action(key: &NodeEventKey) -> String {
    format!(
        "{}-a{}-c{}-r{}",
        key.condition.as_str(),
        key.added,
        key.changed,
        key.removed
    )
}

/// The Events API limits the action to 128 bytes.
fn truncate_action(mut action: String) -> String {
    if action.len() > 128 {
        let mut end = 128;
        while !action.is_char_boundary(end) {
            end -= 1;
        }
        action.truncate(end);
    }
    action
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
