//! Carries out a [`Plan`]: finalizers, S3 writes and deletes, status. A failed storage step stops
//! the plan, records `Uploaded=False` with the error and schedules a retry with backoff.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use kube_fim_crds::labels::SNAPSHOT_FINALIZER;
use kube_fim_crds::{Snapshot, SnapshotStatus};
use serde_json::{Value, json};

use super::Context;
use super::plan::{Plan, Step, backoff, failed};
use super::storage::Bucket;

const MANAGER: &str = "fim-operator-snapshot";

/// A status as a merge patch: absent optional fields become `null`, so they are removed.
pub fn status_patch(status: &SnapshotStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for key in [
            "controlHash",
            "objectKey",
            "files",
            "observedGeneration",
            "conditions",
        ] {
            map.entry(key).or_insert(Value::Null);
        }
    }
    json!({ "status": value })
}

async fn set_finalizers(api: &Api<Snapshot>, s: &Snapshot, add: bool) -> kube::Result<()> {
    let mut finalizers: Vec<String> = s
        .finalizers()
        .iter()
        .filter(|f| *f != SNAPSHOT_FINALIZER)
        .cloned()
        .collect();
    if add {
        finalizers.push(SNAPSHOT_FINALIZER.to_string());
    }
    // resourceVersion makes it a compare-and-swap: no other finalizer is lost.
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": s.resource_version()}});
    api.patch(
        &s.name_any(),
        &PatchParams::apply(MANAGER),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

pub async fn apply(
    snapshot: &Arc<Snapshot>,
    ctx: &Context,
    bucket: Option<&Result<Bucket, String>>,
    plan: Plan,
) -> kube::Result<Action> {
    let ns = snapshot.namespace().unwrap_or_default();
    let api: Api<Snapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = snapshot.uid().unwrap_or_default();
    let max = Duration::from_secs(ctx.storage.retry_max_seconds.max(1));
    let desired = plan.steps.iter().find_map(|s| match s {
        Step::Status(s) => Some((**s).clone()),
        _ => None,
    });
    for step in plan.steps {
        let storage_result = match step {
            Step::AddFinalizer => {
                set_finalizers(&api, snapshot, true).await?;
                continue;
            }
            Step::RemoveFinalizer => {
                set_finalizers(&api, snapshot, false).await?;
                continue;
            }
            Step::Status(status) => {
                if snapshot.status.as_ref() != Some(&*status) {
                    api.patch_status(
                        &snapshot.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(status_patch(&status)),
                    )
                    .await?;
                }
                continue;
            }
            Step::Upload { key, data } => match bucket {
                Some(Ok(b)) => match b.ensure().await {
                    Ok(()) => b.put(&key, data).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Some(Err(e)) => Err(e.clone()),
                None => Err("no S3 storage configured".into()),
            },
            Step::Delete { key } => match bucket {
                Some(Ok(b)) => b.delete(&key).await.map_err(|e| e.to_string()),
                Some(Err(e)) => Err(e.clone()),
                None => Ok(()),
            },
        };
        match storage_result {
            Ok(()) => {
                ctx.metrics.attempts.with_label_values(&["success"]).inc();
                if let Ok(mut f) = ctx.failures.lock() {
                    f.remove(&uid);
                }
            }
            Err(error) => {
                ctx.metrics.attempts.with_label_values(&["error"]).inc();
                let failures = ctx
                    .failures
                    .lock()
                    .map(|mut f| {
                        let n = f.entry(uid.clone()).or_insert(0);
                        *n += 1;
                        *n
                    })
                    .unwrap_or(1);
                tracing::warn!(snapshot = %format!("{ns}/{}", snapshot.name_any()), %error, failures, "snapshot storage step failed; retrying");
                let now = Time(k8s_openapi::jiff::Timestamp::now());
                let base = desired
                    .clone()
                    .unwrap_or_else(|| snapshot.status.clone().unwrap_or_default());
                let status = failed(
                    base,
                    "StorageUnavailable",
                    error,
                    now,
                    snapshot.metadata.generation,
                );
                if snapshot.metadata.deletion_timestamp.is_none()
                    && snapshot.status.as_ref() != Some(&status)
                {
                    api.patch_status(
                        &snapshot.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(status_patch(&status)),
                    )
                    .await?;
                }
                return Ok(Action::requeue(backoff(failures - 1, max)));
            }
        }
    }
    Ok(match plan.requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patch_clears_what_the_status_no_longer_has() {
        let patch = status_patch(&SnapshotStatus::default());
        assert_eq!(patch["status"]["controlHash"], Value::Null);
        assert_eq!(patch["status"]["objectKey"], Value::Null);
        assert_eq!(patch["status"]["uploaded"], false);
        assert!(patch["status"].as_object().unwrap().contains_key("files"));
    }
}
