//! The Snapshot controller: validates each Snapshot's data, uploads it to S3 at
//! `<namespace>/<registry>/<path>/<tag or digest>.<algorithm>`, and writes `status.controlHash`
//! (SHA-256 of the data), the trust anchor agents check snapshot data against.
//!
//! observe (reads: data, other Snapshots' keys, storage) → [`plan`] (pure) → apply (writes).
//! - Valid: the image reference parses and every line is `<hex>  <relative path>` for the
//!   algorithm; otherwise `Valid=False` naming the field and line, and no controlHash.
//! - Uploaded: the object holds exactly the decoded bytes. Failures (S3 down) give
//!   `Uploaded=False` reason `StorageUnavailable` with the error, retried with capped exponential
//!   backoff (`fim_snapshot_storage_attempts_total{result}`); no storage configured gives reason
//!   `StorageNotConfigured` (inline data still serves); a key already claimed by an earlier
//!   Snapshot gives reason `Conflict` and nothing is written.
//! - The finalizer `fim.kubefim.io/snapshot` deletes the object before the Snapshot goes; a spec
//!   change uploads again (and deletes the object of the old key).

pub mod apply;
pub mod observe;
pub mod plan;
pub mod storage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use kube_fim_crds::Snapshot;
use prometheus::{IntCounterVec, Opts, Registry};

pub use storage::StorageArgs;

/// Metric of storage attempts (uploads and deletes) by `result` (`success`, `error`).
pub const ATTEMPTS_TOTAL: &str = "fim_snapshot_storage_attempts_total";

pub struct SnapshotMetrics {
    pub attempts: IntCounterVec,
}

impl SnapshotMetrics {
    /// Registers the Snapshot controller's metrics in the operator's registry.
    pub fn new(registry: &Registry) -> Self {
        let attempts = IntCounterVec::new(
            Opts::new(
                ATTEMPTS_TOTAL,
                "Snapshot storage attempts (uploads and deletes) by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(attempts.clone()))
            .expect("registered once");
        for result in ["success", "error"] {
            attempts.with_label_values(&[result]);
        }
        SnapshotMetrics { attempts }
    }
}

/// The Snapshot controller as the operator runtime runs it (beside the FileIntegrity one).
pub struct SnapshotController {
    client: Client,
    namespace: String,
    storage: StorageArgs,
    metrics: Arc<SnapshotMetrics>,
}

impl SnapshotController {
    pub fn new(
        client: Client,
        namespace: String,
        storage: StorageArgs,
        metrics: Arc<SnapshotMetrics>,
    ) -> Self {
        SnapshotController {
            client,
            namespace,
            storage,
            metrics,
        }
    }
}

impl crate::runtime::Controller for SnapshotController {
    fn name(&self) -> &'static str {
        "snapshot"
    }

    fn run(
        self: Box<Self>,
        ready: crate::runtime::Ready,
        stop: crate::runtime::Shutdown,
    ) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(run(
            self.client,
            self.namespace,
            self.storage,
            self.metrics,
            ready,
            stop,
        ))
    }
}

pub struct Context {
    pub client: Client,
    /// The operator's namespace (where the credentials Secret is).
    pub namespace: String,
    pub storage: StorageArgs,
    pub metrics: Arc<SnapshotMetrics>,
    /// Consecutive storage failures by Snapshot uid (the backoff's exponent).
    pub failures: Mutex<HashMap<String, u32>>,
    /// Every watched Snapshot (for key conflicts).
    pub snapshots: Store<Snapshot>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

async fn reconcile(snapshot: Arc<Snapshot>, ctx: Arc<Context>) -> Result<Action, Error> {
    let bucket = observe::bucket(&ctx).await;
    let observed = observe::observe(&snapshot, &ctx, bucket.as_ref()).await;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let max = Duration::from_secs(ctx.storage.retry_max_seconds.max(1));
    let plan = plan::plan(&snapshot, &observed, now, max);
    tracing::debug!(snapshot = %observed.name, steps = plan.steps.len(), "snapshot plan");
    Ok(apply::apply(&snapshot, &ctx, bucket.as_ref(), plan).await?)
}

fn error_policy(snapshot: Arc<Snapshot>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(snapshot = %snapshot.name_any(), %error, "snapshot reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the Snapshot controller until the stream ends (the caller drops it to stop).
pub async fn run(
    client: Client,
    namespace: String,
    storage: StorageArgs,
    metrics: Arc<SnapshotMetrics>,
    ready: crate::runtime::Ready,
    stop: crate::runtime::Shutdown,
) {
    let api: Api<Snapshot> = if storage.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &namespace)
    };
    tracing::info!(
        endpoint = storage.endpoint.as_deref().unwrap_or("(none)"),
        bucket = %storage.bucket,
        all_namespaces = storage.all_namespaces,
        "snapshot controller starting"
    );
    let controller = Controller::new(api, watcher::Config::default());
    let ctx = Arc::new(Context {
        client,
        namespace,
        storage,
        metrics,
        failures: Mutex::new(HashMap::new()),
        snapshots: controller.store(),
    });
    // Ready once started: a Snapshot list the operator may not read (no Snapshot RBAC in a
    // namespace) must not hold back the FileIntegrity controller's readiness. Its errors show in
    // the Snapshot conditions and the log.
    ready.set();
    controller
        .graceful_shutdown_on(stop.requested())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "snapshot controller");
            }
        })
        .await;
}
