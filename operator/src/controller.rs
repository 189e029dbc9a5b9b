//! The FileIntegrity controller: reads what is in the cluster, computes what should be with the
//! pure modules, and applies it (server-side apply, field manager
//! [`labels::OPERATOR_MANAGER`]).
//!
//! Per FileIntegrity it writes the effective rules ConfigMap `fim-config-<fi>`, the agent
//! DaemonSet (after `spec.config.initialDelay`; without `spec.priorityClassName` while that
//! class does not exist), the re-init bookkeeping annotations (see [`crate::reinit`]; one JSON
//! merge patch of the FileIntegrity's annotations), the status, `FileIntegrityStatus`,
//! `NodeIntegrityStatus`, re-init and priority-class events, the `node_failed` gauge,
//! `node_status_total` and `reinit_total`, and deletes the FileIntegrityNodeStatus objects of
//! deleted nodes. It is triggered by changes of the
//! FileIntegrity, its DaemonSet, its rules ConfigMap, the user's ConfigMap it references, its
//! FileIntegrityNodeStatus objects, the PriorityClass it names, and Nodes being added, deleted
//! or relabelled.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetStatus},
        core::v1::{ConfigMap, Node, ObjectReference, Taint, Toleration},
        scheduling::v1::PriorityClass,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Recorder, Reporter},
        reflector::{ObjectRef, Store},
        watcher::{self, watcher},
    },
};
use kube_fim_crds::{
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityStatus, ScanCondition, ScanResult, labels,
};
use serde_json::json;

use crate::{
    Error, Result,
    config::{self, ConfigSource},
    daemonset::{self, AgentOptions},
    events,
    metrics::Metrics,
    metrics_labels,
    phase::{self, PriorityClassCheck},
    reinit,
};

/// Settings of the operator that are not in any FileIntegrity.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Namespace the operator watches and the agents run in.
    pub namespace: String,
    /// Agent image.
    pub agent_image: String,
    /// Service account of the agent pods.
    pub agent_service_account: String,
    /// Periodic re-check of a FileIntegrity without any change.
    pub resync: Duration,
    /// Retry delay after a failed reconcile.
    pub retry: Duration,
}

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: OperatorConfig,
    /// What the last `NodeIntegrityStatus` event said per (namespace, FileIntegrity, node).
    node_events: Mutex<HashMap<NodeEventId, events::NodeEventKey>>,
}

/// (namespace, FileIntegrity, node).
type NodeEventId = (String, String, String);

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, config: OperatorConfig) -> Self {
        let reporter = Reporter {
            controller: labels::OPERATOR_MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            config,
            node_events: Mutex::new(HashMap::new()),
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(labels::OPERATOR_MANAGER).force()
}

/// Reconciles one FileIntegrity.
pub async fn reconcile(fi: Arc<FileIntegrity>, ctx: Arc<Context>) -> Result<Action> {
    if fi.meta().deletion_timestamp.is_some() {
        // Owned objects are garbage-collected through their owner references.
        return Ok(Action::await_change());
    }
    let name = fi.name_any();
    let namespace = fi
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let now = Timestamp::now();
    let mut requeue = ctx.config.resync;

    // 1. Rules: validate, write the effective ConfigMap, or keep the last good one.
    let (config_error, config_hash) = sync_config(&fi, &ctx).await?;

    // 2. The agent DaemonSet, once the initial delay has passed and there are rules to run;
    //    with the priority class only if it exists (and a Warning if not).
    let priority_class = check_priority_class(&fi, &ctx).await?;
    let previous_conditions = fi
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if let (true, PriorityClassCheck::Missing(class)) = (
        priority_class.newly_missing(previous_conditions),
        &priority_class,
    ) {
        publish(
            &fi,
            events::priority_class_missing_message(class),
            format!("PriorityClassNotFound-{class}"),
            &ctx,
        )
        .await;
    }
    let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let ds_name = daemonset::daemonset_name(&name);
    let wait = daemonset::should_create_daemonset(&fi, now);
    let daemonset = match (&config_hash, wait) {
        (Some(_), Ok(())) => {
            let opts = AgentOptions {
                priority_class_exists: priority_class.usable(),
                ..AgentOptions::new(
                    ctx.config.agent_image.clone(),
                    ctx.config.namespace.clone(),
                    ctx.config.agent_service_account.clone(),
                    config::config_map_name(&name),
                )
            };
            let desired = daemonset::desired_daemonset(&fi, &opts)?;
            Some(
                dss.patch(&ds_name, &apply_params(), &Patch::Apply(&desired))
                    .await
                    .map_err(Error::kube(format!("applying DaemonSet {ds_name}")))?,
            )
        }
        (_, Err(remaining)) => {
            requeue = requeue.min(remaining + Duration::from_secs(1));
            None
        }
        (None, Ok(())) => dss
            .get_opt(&ds_name)
            .await
            .map_err(Error::kube(format!("reading DaemonSet {ds_name}")))?,
    };
    let ds_status: Option<DaemonSetStatus> = daemonset.and_then(|ds| ds.status);

    // 3. Node statuses of the selected nodes; those of deleted nodes are removed.
    let NodeStatuses {
        selected: node_statuses,
        orphaned,
        selected_nodes,
    } = node_statuses(&fi, &ctx).await?;
    delete_orphaned_node_statuses(&fi, &namespace, &orphaned, &ctx).await?;
    publish_node_events(&fi, &namespace, &node_statuses, &ctx).await;
    let failed: BTreeMap<String, bool> = node_statuses
        .iter()
        .map(|s| {
            let failed = s
                .spec
                .last_result
                .as_ref()
                .is_some_and(|r| r.condition == ScanCondition::Failed);
            (s.spec.node_name.clone(), failed)
        })
        .collect();
    ctx.metrics.set_node_failed(&failed);

    // 4. Re-init: the user annotation and config changes become numbered requests that the
    //    agents acknowledge on their node statuses.
    let acks = reinit::acknowledgements(&node_statuses);
    let recorded = reinit::recorded_request(&fi)?;
    let step = reinit::step(reinit::ReinitInput {
        annotation: reinit::reinit_annotation(&fi),
        recorded: recorded.as_ref(),
        recorded_config_hash: fi
            .annotations()
            .get(reinit::CONFIG_HASH_ANNOTATION)
            .map(String::as_str),
        config_hash: config_hash.as_deref(),
        selected: &selected_nodes,
        acks: &acks,
    });
    if !apply_reinit_step(&fi, &namespace, &step, &ctx).await? {
        // The FileIntegrity changed since it was read (a user annotation, or our own status
        // write not yet in the cache): decide again on the fresh object.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    // 5. Status, events, phase metrics.
    let mut status = phase::compute_status(
        &fi,
        ds_status.as_ref(),
        &node_statuses,
        config_error.as_deref(),
        &step.pending,
        now,
    );
    phase::add_priority_class_condition(&mut status, &fi, &priority_class, now);
    if fi.status.as_ref() != Some(&status) {
        patch_status(&fi, &namespace, &status, &ctx).await?;
        let old = fi.status.as_ref().map(|s| s.phase);
        if let Some(event) = events::phase_event(old, status.phase) {
            ctx.metrics
                .phase_total
                .with_label_values(&[status.phase.as_str()])
                .inc();
            if let Some(error) = &config_error {
                ctx.metrics
                    .error_total
                    .with_label_values(&[metrics_labels::error_reason(error)])
                    .inc();
            }
            // The Recorder folds events with the same type, reason and action into one
            // series (keeping the first note), so the action names the new phase: each
            // phase gets its own event, and repeats of a phase count up its series.
            let event = kube::runtime::events::Event {
                action: status.phase.as_str().to_owned(),
                ..event.into_event()
            };
            if let Err(e) = ctx.recorder.publish(&event, &fi.object_ref(&())).await {
                // An event is best effort: never fail the reconcile for it.
                tracing::warn!(fi = %name, error = %e, "cannot publish event");
            }
        }
    }
    Ok(Action::requeue(requeue))
}

/// Whether `spec.priorityClassName` (if any) names an existing PriorityClass.
async fn check_priority_class(fi: &FileIntegrity, ctx: &Context) -> Result<PriorityClassCheck> {
    let Some(class) = fi
        .spec
        .priority_class_name
        .as_deref()
        .filter(|c| !c.is_empty())
    else {
        return Ok(PriorityClassCheck::NotRequested);
    };
    let api: Api<PriorityClass> = Api::all(ctx.client.clone());
    let found = api
        .get_opt(class)
        .await
        .map_err(Error::kube(format!("reading PriorityClass {class}")))?;
    Ok(match found {
        Some(_) => PriorityClassCheck::Found(class.to_owned()),
        None => PriorityClassCheck::Missing(class.to_owned()),
    })
}

/// Writes a re-init step (one JSON merge patch of the FileIntegrity's annotations, guarded by
/// its resourceVersion), then announces and counts the request it made, if any. Returns
/// `false` when the object changed since it was read (nothing written).
async fn apply_reinit_step(
    fi: &FileIntegrity,
    namespace: &str,
    step: &reinit::ReinitStep,
    ctx: &Context,
) -> Result<bool> {
    if step.is_noop() {
        return Ok(true);
    }
    let name = fi.name_any();
    let api: Api<FileIntegrity> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = step.merge_patch(fi.resource_version().as_deref());
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(fi = %name, "FileIntegrity changed meanwhile; re-init step retried");
            return Ok(false);
        }
        Err(e) => {
            return Err(Error::kube(format!(
                "recording the re-init request on FileIntegrity {name}"
            ))(e));
        }
    }
    if let Some(record) = &step.record {
        tracing::info!(fi = %name, id = record.id, done = record.done, nodes = ?record.nodes,
            removed_annotation = step.remove_annotation, "re-init request recorded");
    }
    if let Some(new) = &step.new {
        ctx.metrics.count_reinit(&new.by, &new.request.nodes);
        publish(
            fi,
            events::reinit_requested_message(new.request.id, &new.by, &new.request.nodes),
            format!("ReinitRequest-{}", new.request.id),
            ctx,
        )
        .await;
        if !new.unknown.is_empty() {
            publish(
                fi,
                events::reinit_unknown_nodes_message(&new.unknown),
                format!("ReinitUnknownNodes-{}", new.request.id),
                ctx,
            )
            .await;
        }
    }
    Ok(true)
}

/// Publishes an event on `fi`, best effort. The Recorder folds events with the same type,
/// reason and action into one series keeping the first note: `action` must tell apart the
/// occurrences that deserve their own message.
async fn publish(fi: &FileIntegrity, message: events::EventMessage, action: String, ctx: &Context) {
    let event = kube::runtime::events::Event {
        action: truncate_action(action),
        ..message.into_event()
    };
    if let Err(e) = ctx.recorder.publish(&event, &fi.object_ref(&())).await {
        tracing::warn!(fi = %fi.name_any(), error = %e, "cannot publish event");
    }
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

/// Retries a failed reconcile after a fixed delay and counts it.
pub fn error_policy(fi: Arc<FileIntegrity>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(fi = %fi.name_any(), %error, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.metric_label()])
        .inc();
    Action::requeue(ctx.config.retry)
}

/// Resolves, validates and writes the rules. Returns the config error (if any) and the digest
/// of the rules the agents should run: the new ones, or on error the last good ones still in
/// `fim-config-<fi>` (`None` when there never were any).
async fn sync_config(
    fi: &FileIntegrity,
    ctx: &Context,
) -> Result<(Option<String>, Option<String>)> {
    let name = fi.name_any();
    let namespace = fi
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let source = ConfigSource::of(fi);
    let text = match &source {
        ConfigSource::Default => Ok(config::DEFAULT_RULES.to_owned()),
        ConfigSource::ConfigMap {
            namespace: cm_ns,
            name: cm_name,
            key,
        } => {
            let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), cm_ns);
            match cms
                .get_opt(cm_name)
                .await
                .map_err(Error::kube(format!("reading ConfigMap {cm_ns}/{cm_name}")))?
            {
                None => Err(format!("config ConfigMap {cm_ns}/{cm_name} not found")),
                Some(cm) => cm
                    .data
                    .and_then(|mut d| d.remove(key))
                    .ok_or_else(|| format!("config ConfigMap {cm_ns}/{cm_name} has no key {key}")),
            }
        }
    };
    let text = text.and_then(|t| config::validate(&t, &source).map(|()| t));

    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let cm_name = config::config_map_name(&name);
    match text {
        Ok(text) => {
            let hash = config::config_hash(&text);
            let owner = fi
                .controller_owner_ref(&())
                .ok_or(Error::MissingObjectKey("metadata.uid"))?;
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(cm_name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: Some(BTreeMap::from([
                        (labels::OWNER.to_owned(), name.clone()),
                        (
                            "app.kubernetes.io/managed-by".to_owned(),
                            labels::OPERATOR_MANAGER.to_owned(),
                        ),
                    ])),
                    annotations: Some(BTreeMap::from([(
                        daemonset::CONFIG_HASH_ANNOTATION.to_owned(),
                        hash.clone(),
                    )])),
                    owner_references: Some(vec![owner]),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([(daemonset::CONFIG_FILE.to_owned(), text)])),
                ..ConfigMap::default()
            };
            // SSA needs apiVersion/kind in the body.
            let mut body = serde_json::to_value(&cm).expect("ConfigMap serializes");
            body["apiVersion"] = json!("v1");
            body["kind"] = json!("ConfigMap");
            cms.patch(&cm_name, &apply_params(), &Patch::Apply(&body))
                .await
                .map_err(Error::kube(format!("applying ConfigMap {cm_name}")))?;
            Ok((None, Some(hash)))
        }
        Err(error) => {
            tracing::info!(fi = %name, %error, "rules invalid; keeping the last good ones");
            let previous = cms
                .get_opt(&cm_name)
                .await
                .map_err(Error::kube(format!("reading ConfigMap {cm_name}")))?;
            let hash = previous.and_then(|cm| cm.data).and_then(|d| {
                d.get(daemonset::CONFIG_FILE)
                    .map(|t| config::config_hash(t))
            });
            Ok((Some(error), hash))
        }
    }
}

/// The FileIntegrityNodeStatus objects of a FileIntegrity.
struct NodeStatuses {
    /// For nodes its `nodeSelector` currently matches.
    selected: Vec<FileIntegrityNodeStatus>,
    /// For nodes that no longer exist.
    orphaned: Vec<FileIntegrityNodeStatus>,
    /// Names of the nodes its agents can run on: matched by its `nodeSelector`, every
    /// NoSchedule/NoExecute taint tolerated (the re-init targets; a node without an agent
    /// could never acknowledge).
    selected_nodes: BTreeSet<String>,
}

/// The FileIntegrityNodeStatus objects of `fi` (label [`labels::OWNER`] or an owner
/// reference to it), split into those of selected nodes and those of deleted nodes.
async fn node_statuses(fi: &FileIntegrity, ctx: &Context) -> Result<NodeStatuses> {
    let name = fi.name_any();
    let namespace = fi
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let uid = fi.uid();
    let api: Api<FileIntegrityNodeStatus> = Api::namespaced(ctx.client.clone(), &namespace);
    let all = api
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing FileIntegrityNodeStatus"))?;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    // Full objects: the taints decide which selected nodes can run an agent.
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing nodes"))?
        .items;
    let existing: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let selected: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| selects(&fi.spec.node_selector, n.metadata.labels.as_ref()))
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let mut statuses = NodeStatuses {
        selected: Vec::new(),
        orphaned: Vec::new(),
        selected_nodes: nodes
            .iter()
            .filter(|n| selects(&fi.spec.node_selector, n.metadata.labels.as_ref()))
            .filter(|n| {
                let taints = n.spec.as_ref().and_then(|s| s.taints.as_deref());
                tolerates(&fi.spec.tolerations, taints.unwrap_or_default())
            })
            .filter_map(|n| n.metadata.name.clone())
            .collect(),
    };
    for s in all
        .items
        .into_iter()
        .filter(|s| belongs_to(s, &name, uid.as_deref()))
    {
        let node = s.spec.node_name.as_str();
        if selected.contains(node) {
            statuses.selected.push(s);
        } else if !existing.contains(node) {
            statuses.orphaned.push(s);
        }
    }
    Ok(statuses)
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

/// Deletes the node statuses of nodes that no longer exist and forgets their metrics and
/// event history.
async fn delete_orphaned_node_statuses(
    fi: &FileIntegrity,
    namespace: &str,
    orphaned: &[FileIntegrityNodeStatus],
    ctx: &Context,
) -> Result<()> {
    let api: Api<FileIntegrityNodeStatus> = Api::namespaced(ctx.client.clone(), namespace);
    for s in orphaned {
        let name = s.name_any();
        let node = &s.spec.node_name;
        tracing::info!(fi = %fi.name_any(), %node, status = %name, "node is gone; deleting its status");
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(Error::kube(format!(
                    "deleting FileIntegrityNodeStatus {name}"
                ))(e));
            }
        }
        ctx.metrics.forget_node(node);
        ctx.node_events
            .lock()
            .expect("node event map poisoned")
            .remove(&(namespace.to_owned(), fi.name_any(), node.clone()));
    }
    Ok(())
}

/// Publishes a `NodeIntegrityStatus` event for each node whose result says something new
/// (see [`events::should_reemit`]) and counts it in `node_status_total`.
async fn publish_node_events(
    fi: &FileIntegrity,
    namespace: &str,
    statuses: &[FileIntegrityNodeStatus],
    ctx: &Context,
) {
    let fi_name = fi.name_any();
    let due: Vec<(NodeEventId, events::NodeEventKey, &ScanResult)> = {
        let last = ctx.node_events.lock().expect("node event map poisoned");
        statuses
            .iter()
            .filter_map(|s| {
                let result = s.spec.last_result.as_ref()?;
                let id = (
                    namespace.to_owned(),
                    fi_name.clone(),
                    s.spec.node_name.clone(),
                );
                let key = events::NodeEventKey::from(result);
                events::should_reemit(last.get(&id), &key).then_some((id, key, result))
            })
            .collect()
    };
    for (id, key, result) in due {
        let node = id.2.as_str();
        let message = events::node_event_message(node, result);
        // The Recorder folds events with the same type, reason, action and related object into
        // one series keeping the first note: the related object is the node and the action
        // names the result, so each distinct result of each node is its own event.
        let event = kube::runtime::events::Event {
            action: node_event_action(&key),
            secondary: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(node.to_owned()),
                ..ObjectReference::default()
            }),
            ..message.into_event()
        };
        match ctx.recorder.publish(&event, &fi.object_ref(&())).await {
            Ok(()) => {
                ctx.metrics
                    .node_status_total
                    .with_label_values(&[key.condition.as_str(), node])
                    .inc();
                ctx.node_events
                    .lock()
                    .expect("node event map poisoned")
                    .insert(id, key);
            }
            // Best effort: retried on the next reconcile.
            Err(e) => tracing::warn!(fi = %fi_name, %node, error = %e, "cannot publish node event"),
        }
    }
}

/// The event action of a node result: its condition and counts (at most ~80 bytes, within the
/// Events API's 128).
fn node_event_action(key: &events::NodeEventKey) -> String {
    format!(
        "{}-a{}-c{}-r{}",
        key.condition.as_str(),
        key.added,
        key.changed,
        key.removed
    )
}

/// Whether node status `s` is one of FileIntegrity `fi_name`'s.
fn belongs_to(s: &FileIntegrityNodeStatus, fi_name: &str, fi_uid: Option<&str>) -> bool {
    s.labels().get(labels::OWNER).map(String::as_str) == Some(fi_name)
        || s.owner_references()
            .iter()
            .any(|o| o.kind == "FileIntegrity" && Some(o.uid.as_str()) == fi_uid)
}

/// The FileIntegrity a node status belongs to (label first, then owner reference).
fn owner_of_node_status(s: &FileIntegrityNodeStatus) -> Option<ObjectRef<FileIntegrity>> {
    let ns = s.namespace()?;
    let name = s.labels().get(labels::OWNER).cloned().or_else(|| {
        s.owner_references()
            .iter()
            .find(|o| o.kind == "FileIntegrity")
            .map(|o| o.name.clone())
    })?;
    Some(ObjectRef::new(&name).within(&ns))
}

async fn patch_status(
    fi: &FileIntegrity,
    namespace: &str,
    status: &FileIntegrityStatus,
    ctx: &Context,
) -> Result<()> {
    let name = fi.name_any();
    let api: Api<FileIntegrity> = Api::namespaced(ctx.client.clone(), namespace);
    let body = json!({
        "apiVersion": FileIntegrity::api_version(&()),
        "kind": FileIntegrity::kind(&()),
        "status": status,
    });
    api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(Error::kube(format!(
            "applying status of FileIntegrity {name}"
        )))?;
    Ok(())
}

/// FileIntegrities a ConfigMap change concerns: its owner (the rules ConfigMap we write) and
/// every FileIntegrity whose `spec.config` references it.
fn file_integrities_of_config_map(
    cm: &ConfigMap,
    store: &Store<FileIntegrity>,
) -> Vec<ObjectRef<FileIntegrity>> {
    let (Some(ns), name) = (cm.namespace(), cm.name_any()) else {
        return Vec::new();
    };
    let mut refs: Vec<ObjectRef<FileIntegrity>> = cm
        .owner_references()
        .iter()
        .filter(|o| o.kind == "FileIntegrity")
        .map(|o| ObjectRef::new(&o.name).within(&ns))
        .collect();
    refs.extend(
        store
            .state()
            .iter()
            .filter(|fi| ConfigSource::of(fi).is_config_map(&ns, &name))
            .map(|fi| ObjectRef::from_obj(fi.as_ref())),
    );
    refs
}

/// FileIntegrities whose `spec.priorityClassName` is `pc`.
fn file_integrities_of_priority_class(
    pc: &PriorityClass,
    store: &Store<FileIntegrity>,
) -> Vec<ObjectRef<FileIntegrity>> {
    let name = pc.name_any();
    store
        .state()
        .iter()
        .filter(|fi| fi.spec.priority_class_name.as_deref() == Some(name.as_str()))
        .map(|fi| ObjectRef::from_obj(fi.as_ref()))
        .collect()
}

/// One item per Node added, deleted or relabelled (not per status heartbeat), from a metadata
/// watch. After a re-list, one item if anything differs from before.
fn node_changes(client: Client) -> impl futures::Stream<Item = ()> + Send + 'static {
    type Labels = Option<BTreeMap<String, String>>;
    let mut seen: HashMap<String, Labels> = HashMap::new();
    let mut relist: Option<HashMap<String, Labels>> = None;
    watcher(
        Api::<PartialObjectMeta<Node>>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(move |event| {
        let changed = match event {
            Ok(watcher::Event::Init) => {
                relist = Some(HashMap::new());
                false
            }
            Ok(watcher::Event::InitApply(n)) => {
                if let (Some(list), Some(name)) = (relist.as_mut(), n.metadata.name) {
                    list.insert(name, n.metadata.labels);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                let list = relist.take().unwrap_or_default();
                let changed = list != seen;
                seen = list;
                changed
            }
            Ok(watcher::Event::Apply(n)) => n.metadata.name.is_some_and(|name| {
                let labels = n.metadata.labels;
                seen.insert(name, labels.clone()) != Some(labels)
            }),
            Ok(watcher::Event::Delete(n)) => {
                if let Some(name) = n.metadata.name {
                    seen.remove(&name);
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "node watch");
                false
            }
        };
        futures::future::ready(changed.then_some(()))
    })
}

/// Runs the controller until SIGINT/SIGTERM. `on_ready` is called once the FileIntegrity cache
/// is filled.
pub async fn run(ctx: Arc<Context>, on_ready: impl FnOnce() + Send + 'static) {
    let ns = ctx.config.namespace.clone();
    let client = ctx.client.clone();
    let client_for_nodes = client.clone();
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns);
    let controller = Controller::new(fis, watcher::Config::default());
    let store = controller.store();
    let ready_store = store.clone();
    tokio::spawn(async move {
        // The store's readiness is a oneshot that wakes only its latest poller (the
        // controller's runner also waits on it), so poll again now and then.
        loop {
            match tokio::time::timeout(Duration::from_millis(250), ready_store.wait_until_ready())
                .await
            {
                Ok(Ok(())) => return on_ready(),
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
    });
    let class_store = store.clone();
    let agent_pods = format!("app.kubernetes.io/name={}", daemonset::AGENT_APP);
    controller
        .owns(
            Api::<DaemonSet>::namespaced(client.clone(), &ns),
            watcher::Config::default().labels(&agent_pods),
        )
        // One ConfigMap watch serves both the owned rules ConfigMaps (by owner reference) and
        // the users' ConfigMaps (by reference from spec.config).
        .watches(
            Api::<ConfigMap>::namespaced(client.clone(), &ns),
            watcher::Config::default(),
            move |cm| file_integrities_of_config_map(&cm, &store),
        )
        // A PriorityClass created (or deleted) after the FileIntegrity naming it.
        .watches(
            Api::<PriorityClass>::all(client.clone()),
            watcher::Config::default(),
            move |pc| file_integrities_of_priority_class(&pc, &class_store),
        )
        .watches(
            Api::<FileIntegrityNodeStatus>::namespaced(client, &ns),
            watcher::Config::default(),
            |s| owner_of_node_status(&s),
        )
        // Nodes come and go and change labels: every FileIntegrity re-selects its nodes (and
        // drops the statuses of deleted ones).
        .reconcile_all_on(node_changes(client_for_nodes))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(fi = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube_fim_crds::FileIntegrityNodeStatusFields;

    fn status(labels: &[(&str, &str)], owner_uid: Option<&str>) -> FileIntegrityNodeStatus {
        let mut s = FileIntegrityNodeStatus::new(
            "example-node-a",
            FileIntegrityNodeStatusFields::new("node-a"),
        );
        s.metadata.namespace = Some("kube-fim".into());
        s.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        if let Some(uid) = owner_uid {
            s.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "fim.kubefim.io/v1alpha1".into(),
                kind: "FileIntegrity".into(),
                name: "example".into(),
                uid: uid.into(),
                ..OwnerReference::default()
            }]);
        }
        s
    }

    #[test]
    fn node_status_maps_to_its_file_integrity() {
        let by_label = status(&[(labels::OWNER, "example")], None);
        assert!(belongs_to(&by_label, "example", Some("u")));
        assert!(!belongs_to(&by_label, "other", Some("u")));
        assert_eq!(
            owner_of_node_status(&by_label),
            Some(ObjectRef::new("example").within("kube-fim"))
        );
        let by_owner = status(&[], Some("u"));
        assert!(belongs_to(&by_owner, "example", Some("u")));
        assert!(!belongs_to(&by_owner, "example", Some("v")));
        assert_eq!(
            owner_of_node_status(&by_owner),
            Some(ObjectRef::new("example").within("kube-fim"))
        );
        assert_eq!(owner_of_node_status(&status(&[], None)), None);
    }

    #[test]
    fn node_selector_matches_labels() {
        let sel = BTreeMap::from([("role".to_owned(), "worker".to_owned())]);
        let worker = BTreeMap::from([
            ("role".to_owned(), "worker".to_owned()),
            ("zone".to_owned(), "a".to_owned()),
        ]);
        let other = BTreeMap::from([("role".to_owned(), "infra".to_owned())]);
        assert!(selects(&sel, Some(&worker)));
        assert!(!selects(&sel, Some(&other)));
        assert!(!selects(&sel, None));
        assert!(selects(&BTreeMap::new(), None), "empty selector: all nodes");
    }

    #[test]
    fn taints_need_a_matching_toleration() {
        let taint = |key: &str, value: Option<&str>, effect: &str| Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            ..Taint::default()
        };
        let toleration =
            |key: Option<&str>, op: &str, value: Option<&str>, effect: Option<&str>| Toleration {
                key: key.map(Into::into),
                operator: Some(op.into()),
                value: value.map(Into::into),
                effect: effect.map(Into::into),
                ..Toleration::default()
            };
        let dedicated = [taint("dedicated", Some("db"), "NoSchedule")];
        assert!(tolerates(&[], &[]));
        assert!(!tolerates(&[], &dedicated));
        assert!(tolerates(&[], &[taint("soft", None, "PreferNoSchedule")]));
        assert!(tolerates(
            &[toleration(
                Some("dedicated"),
                "Equal",
                Some("db"),
                Some("NoSchedule")
            )],
            &dedicated
        ));
        assert!(!tolerates(
            &[toleration(Some("dedicated"), "Equal", Some("web"), None)],
            &dedicated
        ));
        assert!(tolerates(
            &[toleration(Some("dedicated"), "Exists", None, None)],
            &dedicated
        ));
        assert!(!tolerates(
            &[toleration(
                Some("dedicated"),
                "Exists",
                None,
                Some("NoExecute")
            )],
            &dedicated
        ));
        assert!(tolerates(
            &[toleration(None, "Exists", None, None)],
            &dedicated
        ));
    }

    #[test]
    fn node_event_actions_tell_results_apart() {
        let key = |condition, added| events::NodeEventKey {
            condition,
            added,
            changed: 1,
            removed: 0,
        };
        assert_eq!(
            node_event_action(&key(ScanCondition::Failed, 1)),
            "Failed-a1-c1-r0"
        );
        assert_ne!(
            node_event_action(&key(ScanCondition::Failed, 1)),
            node_event_action(&key(ScanCondition::Failed, 3))
        );
        let max = node_event_action(&events::NodeEventKey {
            condition: ScanCondition::Succeeded,
            added: i64::MIN,
            changed: i64::MIN,
            removed: i64::MIN,
        });
        assert!(max.len() <= 128, "{max}");
    }
}
