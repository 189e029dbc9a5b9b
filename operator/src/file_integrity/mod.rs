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
//!
//! Node statuses and Nodes are read from reflector caches fed by the same watches that trigger
//! reconciles (node statuses indexed by their FileIntegrity), not listed per reconcile: one
//! event costs no API read that grows with the number of nodes. The controller starts once
//! every cache is synced.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{Stream, StreamExt, future::BoxFuture, stream};
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
    api::{DeleteParams, PartialObjectMeta, Patch, PatchParams},
    runtime::{
        WatchStreamExt, applier,
        controller::{
            self as kube_controller, Action, ReconcileReason, ReconcileRequest, trigger_owners,
            trigger_self, trigger_with,
        },
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, Store, store::Writer},
        utils::CancelableJoinHandle,
        watcher::{self, watcher},
    },
};
use kube_fim_crds::{
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityStatus, ScanCondition, ScanResult, labels,
};
use serde_json::json;
use tracing::Instrument;

use crate::{
    Error, Result,
    config::{self, ConfigSource},
    daemonset::{self, AgentOptions},
    events, metrics_labels,
    phase::{self, PriorityClassCheck},
    reinit,
    runtime::{self, Shutdown},
};

pub mod metrics;

use metrics::Metrics;

/// The FileIntegrity controller as the runtime runs it.
pub struct FileIntegrityController {
    ctx: Arc<Context>,
}

impl FileIntegrityController {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

impl runtime::Controller for FileIntegrityController {
    fn name(&self) -> &'static str {
        "file-integrity"
    }

    fn run(self: Box<Self>, ready: runtime::Ready, stop: Shutdown) -> BoxFuture<'static, ()> {
        Box::pin(run(self.ctx, move || ready.set(), stop))
    }
}

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
    /// Node statuses of the namespace, filled by [`run`]'s node status watch.
    statuses: Store<FileIntegrityNodeStatus>,
    /// Which node statuses belong to which FileIntegrity, from the same watch.
    status_index: Arc<StatusIndex>,
    /// Nodes (labels, taints; no status), filled by [`run`]'s node watch.
    nodes: Store<Node>,
    /// The writers of `statuses` and `nodes`, taken by [`run`].
    writers: Mutex<Option<CacheWriters>>,
}

struct CacheWriters {
    statuses: Writer<FileIntegrityNodeStatus>,
    nodes: Writer<Node>,
}

/// (namespace, FileIntegrity, node).
type NodeEventId = (String, String, String);

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, config: OperatorConfig) -> Self {
        let reporter = Reporter {
            controller: labels::OPERATOR_MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let (statuses, status_writer) = reflector::store();
        let (nodes, node_writer) = reflector::store();
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            config,
            node_events: Mutex::new(HashMap::new()),
            statuses,
            status_index: Arc::default(),
            nodes,
            writers: Mutex::new(Some(CacheWriters {
                statuses: status_writer,
                nodes: node_writer,
            })),
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
    } = node_statuses(&fi, &ctx)?;
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
/// reference to it), split into those of selected nodes and those of deleted nodes; from the
/// caches (ordered by name, as a LIST returns them).
fn node_statuses(fi: &FileIntegrity, ctx: &Context) -> Result<NodeStatuses> {
    let name = fi.name_any();
    let namespace = fi
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let uid = fi.uid();
    let mine: Vec<Arc<FileIntegrityNodeStatus>> = ctx
        .status_index
        .names_of(&name)
        .iter()
        .filter_map(|s| ctx.statuses.get(&ObjectRef::new(s).within(&namespace)))
        .filter(|s| belongs_to(s, &name, uid.as_deref()))
        .collect();
    // Taints decide which selected nodes can run an agent.
    let nodes = ctx.nodes.state();
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
    for s in mine {
        let node = s.spec.node_name.as_str();
        if selected.contains(node) {
            statuses.selected.push((*s).clone());
        } else if !existing.contains(node) {
            statuses.orphaned.push((*s).clone());
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
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    for s in orphaned {
        let name = s.name_any();
        let node = &s.spec.node_name;
        // The node cache can lag the node status cache (separate watches): only the API server
        // says a node is gone.
        if nodes
            .get_metadata_opt(node)
            .await
            .map_err(Error::kube(format!("reading node {node}")))?
            .is_some()
        {
            tracing::debug!(fi = %fi.name_any(), %node, "node not cached yet; status kept");
            continue;
        }
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

/// Names of the node statuses of each FileIntegrity, kept from the node status watch so a
/// reconcile finds one FileIntegrity's statuses without scanning all of them. A status is
/// indexed under its [`labels::OWNER`] label and the names of its FileIntegrity owner
/// references (readers still check [`belongs_to`]).
#[derive(Default)]
struct StatusIndex {
    state: Mutex<IndexState>,
}

#[derive(Default)]
struct IndexState {
    live: IndexMaps,
    /// The index being rebuilt during a re-list, swapped in when it is complete (as the
    /// reflector store does).
    relist: Option<IndexMaps>,
}

#[derive(Default)]
struct IndexMaps {
    /// FileIntegrity name → node status names.
    by_owner: HashMap<String, BTreeSet<String>>,
    /// Node status name → the FileIntegrity names it is indexed under.
    owners: HashMap<String, Vec<String>>,
}

impl IndexMaps {
    fn insert(&mut self, s: &FileIntegrityNodeStatus) {
        let name = s.name_any();
        self.remove(&name);
        let mut owners: Vec<String> = s
            .labels()
            .get(labels::OWNER)
            .cloned()
            .into_iter()
            .chain(
                s.owner_references()
                    .iter()
                    .filter(|o| o.kind == "FileIntegrity")
                    .map(|o| o.name.clone()),
            )
            .collect();
        owners.sort();
        owners.dedup();
        for owner in &owners {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert(name.clone());
        }
        self.owners.insert(name, owners);
    }

    fn remove(&mut self, name: &str) {
        for owner in self.owners.remove(name).unwrap_or_default() {
            if let Some(names) = self.by_owner.get_mut(&owner) {
                names.remove(name);
                if names.is_empty() {
                    self.by_owner.remove(&owner);
                }
            }
        }
    }
}

impl StatusIndex {
    /// Applies one watch event (before the reflector store does, so a status the store has is
    /// always indexed).
    fn apply(&self, event: &watcher::Event<FileIntegrityNodeStatus>) {
        let mut state = self.state.lock().expect("status index poisoned");
        match event {
            watcher::Event::Init => state.relist = Some(IndexMaps::default()),
            watcher::Event::InitApply(s) => {
                if let Some(relist) = state.relist.as_mut() {
                    relist.insert(s);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = state.relist.take() {
                    state.live = relist;
                }
            }
            watcher::Event::Apply(s) => state.live.insert(s),
            watcher::Event::Delete(s) => state.live.remove(&s.name_any()),
        }
    }

    /// Names of the node statuses indexed under FileIntegrity `fi_name`, sorted.
    fn names_of(&self, fi_name: &str) -> Vec<String> {
        let state = self.state.lock().expect("status index poisoned");
        state
            .live
            .by_owner
            .get(fi_name)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// One item per Node added, deleted or relabelled (not per status heartbeat), from the node
/// watch. After a re-list, one item if anything differs from before.
fn node_changes<S>(events: S) -> impl Stream<Item = ()> + Send + 'static
where
    S: Stream<Item = watcher::Result<watcher::Event<Node>>> + Send + 'static,
{
    type Labels = Option<BTreeMap<String, String>>;
    let mut seen: HashMap<String, Labels> = HashMap::new();
    let mut relist: Option<HashMap<String, Labels>> = None;
    events.filter_map(move |event| {
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

/// Reconcile requests for `refs`, caused by a change of `related`.
fn related_requests<O: Resource<DynamicType = ()>>(
    related: &O,
    refs: impl IntoIterator<Item = ObjectRef<FileIntegrity>>,
) -> Vec<ReconcileRequest<FileIntegrity>> {
    let related = ObjectRef::from_obj(related).erase();
    refs.into_iter()
        .map(|obj_ref| ReconcileRequest {
            obj_ref,
            reason: ReconcileReason::RelatedObjectUpdated {
                obj_ref: Box::new(related.clone()),
            },
        })
        .collect()
}

type Triggers = stream::BoxStream<'static, watcher::Result<ReconcileRequest<FileIntegrity>>>;

/// Runs the controller until `stop` resolves (it then takes no new work and lets running
/// reconciles finish). The watches fill the FileIntegrity, node status and node caches; once all
/// are synced `on_ready` is called and the controller starts (requests that arrived meanwhile
/// are queued).
///
/// # Panics
///
/// When called twice with the same `ctx` (its caches have one writer).
pub async fn run(ctx: Arc<Context>, on_ready: impl FnOnce() + Send + 'static, stop: Shutdown) {
    let ns = ctx.config.namespace.clone();
    let client = ctx.client.clone();
    let CacheWriters {
        statuses: status_writer,
        nodes: node_writer,
    } = ctx
        .writers
        .lock()
        .expect("cache writers poisoned")
        .take()
        .expect("file_integrity::run called twice with one Context");
    let (fi_store, fi_writer) = reflector::store::<FileIntegrity>();

    let fis = trigger_self(
        watcher(
            Api::<FileIntegrity>::namespaced(client.clone(), &ns),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(fi_writer)
        .applied_objects(),
        (),
    );
    let agent_pods = format!("app.kubernetes.io/name={}", daemonset::AGENT_APP);
    let daemonsets = trigger_owners(
        watcher(
            Api::<PartialObjectMeta<DaemonSet>>::namespaced(client.clone(), &ns),
            watcher::Config::default().labels(&agent_pods),
        )
        .default_backoff()
        .touched_objects(),
        (),
        (),
    );
    // One ConfigMap watch serves both the owned rules ConfigMaps (by owner reference) and
    // the users' ConfigMaps (by reference from spec.config).
    let store = fi_store.clone();
    let config_maps = trigger_with(
        watcher(
            Api::<ConfigMap>::namespaced(client.clone(), &ns),
            watcher::Config::default(),
        )
        .default_backoff()
        .touched_objects(),
        move |cm: ConfigMap| related_requests(&cm, file_integrities_of_config_map(&cm, &store)),
    );
    // A PriorityClass created (or deleted) after the FileIntegrity naming it.
    let store = fi_store.clone();
    let priority_classes = trigger_with(
        watcher(
            Api::<PriorityClass>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .touched_objects(),
        move |pc: PriorityClass| {
            related_requests(&pc, file_integrities_of_priority_class(&pc, &store))
        },
    );
    // Node statuses: indexed, cached, and their FileIntegrity reconciled.
    let index = ctx.status_index.clone();
    let node_statuses = trigger_with(
        watcher(
            Api::<FileIntegrityNodeStatus>::namespaced(client.clone(), &ns),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(move |event| {
            if let Ok(event) = &event {
                index.apply(event);
            }
            event
        })
        .reflect(status_writer)
        .touched_objects(),
        |s: FileIntegrityNodeStatus| related_requests(&s, owner_of_node_status(&s)),
    );
    // Nodes come and go and change labels: every FileIntegrity re-selects its nodes (and
    // drops the statuses of deleted ones). Cached without their status (heartbeats, images):
    // a reconcile reads names, labels and taints.
    let store = fi_store.clone();
    let nodes = node_changes(
        watcher(Api::<Node>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(|n: &mut Node| {
                n.status = None;
                n.metadata.managed_fields = None;
                n.metadata.annotations = None;
            })
            .reflect(node_writer),
    )
    .flat_map(move |()| {
        stream::iter(
            store
                .state()
                .iter()
                .map(|fi| {
                    Ok(ReconcileRequest {
                        obj_ref: ObjectRef::from_obj(fi.as_ref()),
                        reason: ReconcileReason::BulkReconcile,
                    })
                })
                .collect::<Vec<_>>(),
        )
    });
    let triggers: Vec<Triggers> = vec![
        fis.boxed(),
        daemonsets.boxed(),
        config_maps.boxed(),
        priority_classes.boxed(),
        node_statuses.boxed(),
        nodes.boxed(),
    ];
    // The watches run from now on (filling the caches); their requests wait in a queue until
    // the controller starts.
    let (queue_tx, queue_rx) = futures::channel::mpsc::unbounded();
    let watches = stream::select_all(triggers).for_each(move |request| {
        match request {
            Ok(request) => {
                let _ = queue_tx.unbounded_send(request);
            }
            Err(e) => tracing::debug!(error = %e, "controller event"),
        }
        futures::future::ready(())
    });

    let status_store = ctx.statuses.clone();
    let node_store = ctx.nodes.clone();
    let controller = async move {
        // The only waiter on each store (a store's readiness wakes only its latest poller);
        // the applier's own wait on the FileIntegrity store then returns at once.
        let synced = async {
            fi_store.wait_until_ready().await?;
            status_store.wait_until_ready().await?;
            node_store.wait_until_ready().await
        };
        tokio::select! {
            r = synced => if r.is_err() { return },
            () = stop.clone().requested() => return,
        }
        tracing::info!("caches synced; starting the controller");
        on_ready();
        applier(
            |fi, ctx| {
                CancelableJoinHandle::spawn(
                    reconcile(fi, ctx).in_current_span(),
                    &tokio::runtime::Handle::current(),
                )
            },
            error_policy,
            ctx,
            fi_store,
            queue_rx
                .map(Ok::<_, watcher::Error>)
                .take_until(stop.requested()),
            kube_controller::Config::default(),
        )
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(fi = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
    };
    // The controller ends once its queue closed (after `stop`) and the running reconciles
    // finished; the watches never end by themselves.
    tokio::select! {
        () = controller => {}
        () = watches => {}
    }
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
    fn status_index_finds_a_file_integritys_statuses() {
        let named = |name: &str, mut s: FileIntegrityNodeStatus| {
            s.metadata.name = Some(name.to_owned());
            s
        };
        let index = StatusIndex::default();
        let a = named("a", status(&[(labels::OWNER, "example")], None));
        let b = named("b", status(&[], Some("u")));
        let c = named("c", status(&[(labels::OWNER, "other")], None));
        index.apply(&watcher::Event::Init);
        for s in [&c, &b, &a] {
            index.apply(&watcher::Event::InitApply(s.clone()));
        }
        assert!(index.names_of("example").is_empty(), "not before InitDone");
        index.apply(&watcher::Event::InitDone);
        assert_eq!(index.names_of("example"), ["a", "b"]);
        assert_eq!(index.names_of("other"), ["c"]);
        // Relabelled to another FileIntegrity, then deleted.
        let moved = named("a", status(&[(labels::OWNER, "other")], None));
        index.apply(&watcher::Event::Apply(moved.clone()));
        assert_eq!(index.names_of("example"), ["b"]);
        assert_eq!(index.names_of("other"), ["a", "c"]);
        index.apply(&watcher::Event::Delete(moved));
        assert_eq!(index.names_of("other"), ["c"]);
        // A re-list replaces everything.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(c.clone()));
        assert_eq!(index.names_of("example"), ["b"], "old index until InitDone");
        index.apply(&watcher::Event::InitDone);
        assert!(index.names_of("example").is_empty());
        assert_eq!(index.names_of("other"), ["c"]);
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
