//! The FileIntegrity controller, a pipeline per reconcile:
//! [`observe`] (every read) → [`plan`] (pure: one [`plan::Plan`] value) → [`apply`] (the
//! writes, in a documented order; server-side apply with the field manager
//! [`labels::OPERATOR_MANAGER`]).
//!
//! Per FileIntegrity it writes the effective rules ConfigMap `fim-config-<fi>`, the agent
//! DaemonSet (after `spec.config.initialDelay`; without `spec.priorityClassName` while that
//! class does not exist), the re-init bookkeeping annotations (see [`crate::reinit`]; one JSON
//! merge patch of the FileIntegrity's annotations), the status, `FileIntegrityStatus`,
//! `NodeIntegrityStatus`, re-init and priority-class events, the `node_failed` gauge,
//! `node_status_total` and `reinit_total`, and deletes the FileIntegrityNodeStatus objects of
//! deleted nodes. It is triggered by changes of the FileIntegrity, its DaemonSet, its rules
//! ConfigMap, the user's ConfigMap it references, its FileIntegrityNodeStatus objects, the
//! PriorityClass it names, and Nodes being added, deleted or relabelled.
//!
//! Node statuses and Nodes are read from reflector caches fed by the same watches that trigger
//! reconciles (node statuses indexed by their FileIntegrity, see [`index`]), not listed per
//! reconcile: one event costs no API read that grows with the number of nodes. The controller
//! starts once every cache is synced.
//!
//! Errors: a permanent problem waits for a change instead of retrying on a timer (invalid
//! rules are a status, [`plan::Next::AwaitChange`]; an [`Error`] that retrying cannot fix is
//! [`Error::is_permanent`]); API errors are retried with an exponential [`backoff`].

pub mod apply;
pub mod index;
pub mod metrics;
pub mod observe;
pub mod plan;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{Stream, StreamExt, future::BoxFuture, stream};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Node},
    scheduling::v1::PriorityClass,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PartialObjectMeta,
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
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, labels};
use tracing::Instrument;

use crate::{
    Error, Result,
    admission::PoliciesInEffect,
    config::ConfigSource,
    daemonset,
    events::NodeEventKey,
    runtime::{self, Shutdown},
};
use apply::Applied;
use index::{StatusIndex, owner_of_node_status};
use metrics::Metrics;
use plan::Next;

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
    /// Where agents reach the API server instead of the in-cluster Service address.
    pub agent_api_server: Option<crate::daemonset::ApiServer>,
    /// Where agents read Snapshots kept in S3 (container monitoring).
    pub agent_s3: Option<crate::daemonset::AgentS3>,
    /// Periodic re-check of a FileIntegrity without any change.
    pub resync: Duration,
    /// Retry delay after the first failed reconcile; doubled after each further failure.
    pub retry: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: OperatorConfig,
    /// What the last `NodeIntegrityStatus` event said per (namespace, FileIntegrity, node).
    node_events: Mutex<HashMap<NodeEventId, NodeEventKey>>,
    /// Consecutive failed reconciles per FileIntegrity, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<FileIntegrity>, u32>>,
    /// Node statuses of the namespace, filled by [`run`]'s node status watch.
    statuses: Store<FileIntegrityNodeStatus>,
    /// Which node statuses belong to which FileIntegrity, from the same watch.
    status_index: Arc<StatusIndex>,
    /// Nodes (labels, taints; no status), filled by [`run`]'s node watch.
    nodes: Store<Node>,
    /// The writers of `statuses` and `nodes`, taken by [`run`].
    writers: Mutex<Option<CacheWriters>>,
    /// What the container step remembers ([`crate::containers`]).
    pub containers: Mutex<crate::containers::Memory>,
    /// Opens once the agents' admission policies are in effect: no agent runs before.
    pub policies: PoliciesInEffect,
}

struct CacheWriters {
    statuses: Writer<FileIntegrityNodeStatus>,
    nodes: Writer<Node>,
}

/// (namespace, FileIntegrity, node).
type NodeEventId = (String, String, String);

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        policies: PoliciesInEffect,
        config: OperatorConfig,
    ) -> Self {
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
            failures: Mutex::new(HashMap::new()),
            statuses,
            status_index: Arc::default(),
            nodes,
            writers: Mutex::new(Some(CacheWriters {
                statuses: status_writer,
                nodes: node_writer,
            })),
            containers: Mutex::default(),
            policies,
        }
    }

    /// What the last node event of FileIntegrity `namespace/name` said, per node.
    fn announced(&self, namespace: &str, name: &str) -> BTreeMap<String, NodeEventKey> {
        self.node_events
            .lock()
            .expect("node event map poisoned")
            .iter()
            .filter(|((ns, fi, _), _)| ns == namespace && fi == name)
            .map(|((_, _, node), key)| (node.clone(), *key))
            .collect()
    }

    fn remember_announced(&self, namespace: &str, name: &str, node: &str, key: NodeEventKey) {
        self.node_events
            .lock()
            .expect("node event map poisoned")
            .insert(
                (namespace.to_owned(), name.to_owned(), node.to_owned()),
                key,
            );
    }

    fn forget_announced(&self, namespace: &str, name: &str, node: &str) {
        self.node_events
            .lock()
            .expect("node event map poisoned")
            .remove(&(namespace.to_owned(), name.to_owned(), node.to_owned()));
    }

    /// Counts a failed reconcile of `fi`; returns how many failed in a row.
    fn failed(&self, fi: &FileIntegrity) -> u32 {
        let mut failures = self.failures.lock().expect("failure map poisoned");
        let n = failures.entry(ObjectRef::from_obj(fi)).or_default();
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, fi: &FileIntegrity) {
        self.failures
            .lock()
            .expect("failure map poisoned")
            .remove(&ObjectRef::from_obj(fi));
    }
}

/// Reconciles one FileIntegrity: observe → plan → apply.
pub async fn reconcile(fi: Arc<FileIntegrity>, ctx: Arc<Context>) -> Result<Action> {
    if fi.meta().deletion_timestamp.is_some() {
        // Owned objects are garbage-collected through their owner references.
        return Ok(Action::await_change());
    }
    let observed = observe::observe(fi.clone(), &ctx).await?;
    let plan = plan::plan(&observed, &ctx.config)?;
    let applied = apply::apply(&plan, &fi, &ctx).await?;
    // Monitored containers: events on their pods, gauge, remediation (best effort).
    let statuses: Vec<FileIntegrityNodeStatus> = observed
        .node_statuses
        .iter()
        .map(|s| (**s).clone())
        .collect();
    let suppressed = crate::containers::reconcile(&fi, &statuses, &ctx).await;
    let action = match applied {
        // A remediation was just suppressed: its condition goes into the status at once.
        _ if suppressed => Action::requeue(Duration::from_secs(1)),
        // The FileIntegrity changed since it was read: decide again on the fresh object.
        Applied::Conflict => Action::requeue(Duration::from_secs(1)),
        Applied::Done => match plan.next {
            Next::After(delay) => Action::requeue(delay),
            Next::AwaitChange => Action::await_change(),
        },
    };
    ctx.succeeded(&fi);
    Ok(action)
}

/// Counts a failed reconcile; a permanent error waits for a change of the FileIntegrity (or of
/// an object it depends on), anything else is retried with [`backoff`].
pub fn error_policy(fi: Arc<FileIntegrity>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.metric_label()])
        .inc();
    if error.is_permanent() {
        tracing::warn!(fi = %fi.name_any(), %error, "reconcile failed; waiting for a change");
        return Action::await_change();
    }
    let delay = backoff(ctx.failed(&fi), ctx.config.retry, ctx.config.retry_max);
    tracing::warn!(fi = %fi.name_any(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Delay before retry number `failures` (1 for the first): `base` doubled per further failure,
/// at most `max`.
pub fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    base.saturating_mul(1 << doublings).min(max)
}

/// FileIntegrities a ConfigMap change concerns: its owner (the rules ConfigMap we write, found by
/// owner reference or by name, so that one stripped of both is restored) and every
/// FileIntegrity whose `spec.config` references it.
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
    if let Some(fi) = crate::config::file_integrity_of_config_map_name(&name) {
        refs.push(ObjectRef::new(fi).within(&ns));
    }
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

    #[test]
    fn retries_back_off_exponentially_up_to_a_maximum() {
        let s = Duration::from_secs;
        let delays: Vec<Duration> = (1..=8).map(|n| backoff(n, s(1), s(60))).collect();
        assert_eq!(delays, [s(1), s(2), s(4), s(8), s(16), s(32), s(60), s(60)]);
        assert_eq!(backoff(0, s(1), s(60)), s(1));
        assert_eq!(backoff(u32::MAX, s(1), s(60)), s(60));
    }
}
