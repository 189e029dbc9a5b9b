//! Step 3 of a reconcile: the writes of a [`Plan`], in this order (server-side apply with the
//! field manager [`labels::OPERATOR_MANAGER`] unless said otherwise):
//!
//! 1. warnings (a missing PriorityClass), best effort;
//! 2. the rules ConfigMap `fim-config-<fi>`: before the DaemonSet whose pods mount it;
//! 3. the agent DaemonSet;
//! 4. deletion of the node statuses of deleted nodes, then their metric series and event memory;
//! 5. `NodeIntegrityStatus` events (best effort; each counted once published) and the
//!    `node_failed` gauge;
//! 6. the re-init step: one JSON merge patch of the FileIntegrity's annotations guarded by its
//!    resourceVersion. On a conflict nothing more is written ([`Applied::Conflict`]): the
//!    status depends on the step, so the next reconcile decides again on the fresh object.
//!    Once written: its `reinit_total` counts and events;
//! 7. the status, then the phase event and `phase_total` / `error_total`: only counted once the
//!    status that says so is stored.

use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::events::Recorder,
};
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, labels};
use serde_json::json;

use super::{
    Context,
    plan::{Plan, PlannedEvent},
};
use crate::{Error, Result};

/// How far [`apply`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Everything was written.
    Done,
    /// The FileIntegrity changed since it was read (a user annotation, or our own status write
    /// not yet in the cache): steps 1–5 were written, the rest was not.
    Conflict,
}

fn apply_params() -> PatchParams {
    PatchParams::apply(labels::OPERATOR_MANAGER).force()
}

/// Writes `plan` for `fi`.
pub async fn apply(plan: &Plan, fi: &FileIntegrity, ctx: &Context) -> Result<Applied> {
    let name = fi.name_any();
    let namespace = fi
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let client = &ctx.client;

    // 1.
    for event in &plan.warnings {
        publish(&ctx.recorder, fi, event).await;
    }
    if let Some(error) = &plan.config_error {
        tracing::info!(fi = %name, %error, "rules invalid; keeping the last good ones");
    }

    // 2.
    if let Some(cm) = &plan.config_map {
        let cm_name = cm.name_any();
        // SSA needs apiVersion/kind in the body.
        let mut body = serde_json::to_value(cm).expect("ConfigMap serializes");
        body["apiVersion"] = json!("v1");
        body["kind"] = json!("ConfigMap");
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &namespace)
            .patch(&cm_name, &apply_params(), &Patch::Apply(&body))
            .await
            .map_err(Error::kube(format!("applying ConfigMap {cm_name}")))?;
    }

    // 3.
    if let Some(ds) = &plan.daemonset {
        let ds_name = ds.name_any();
        Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client.clone(), &namespace)
            .patch(&ds_name, &apply_params(), &Patch::Apply(ds))
            .await
            .map_err(Error::kube(format!("applying DaemonSet {ds_name}")))?;
    }

    // 4.
    let statuses: Api<FileIntegrityNodeStatus> = Api::namespaced(client.clone(), &namespace);
    for deletion in &plan.deletions {
        let (status, node) = (&deletion.status, &deletion.node);
        tracing::info!(fi = %name, %node, %status, "node is gone; deleting its status");
        match statuses.delete(status, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(Error::kube(format!(
                    "deleting FileIntegrityNodeStatus {status}"
                ))(e));
            }
        }
        ctx.metrics.forget_node(node);
        ctx.forget_announced(&namespace, &name, node);
    }

    // 5.
    for node_event in &plan.node_events {
        let node = node_event.node.as_str();
        match ctx
            .recorder
            .publish(&node_event.event.to_event(), &fi.object_ref(&()))
            .await
        {
            Ok(()) => {
                ctx.metrics
                    .node_status_total
                    .with_label_values(&[node_event.key.condition.as_str(), node])
                    .inc();
                ctx.remember_announced(&namespace, &name, node, node_event.key);
            }
            // Best effort: planned again on the next reconcile.
            Err(e) => tracing::warn!(fi = %name, %node, error = %e, "cannot publish node event"),
        }
    }
    ctx.metrics.set_node_failed(&plan.node_failed);

    // 6.
    if let Some(patch) = &plan.reinit.patch {
        let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &namespace);
        match fis
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(fi = %name, "FileIntegrity changed meanwhile; re-init step retried");
                return Ok(Applied::Conflict);
            }
            Err(e) => {
                return Err(Error::kube(format!(
                    "recording the re-init request on FileIntegrity {name}"
                ))(e));
            }
        }
        let step = &plan.reinit.step;
        if let Some(record) = &step.record {
            tracing::info!(fi = %name, id = record.id, done = record.done, nodes = ?record.nodes,
                removed_annotation = step.remove_annotation, "re-init request recorded");
        }
        if let Some((by, nodes)) = &plan.reinit.count {
            ctx.metrics.count_reinit(by, nodes);
        }
        for event in &plan.reinit.events {
            publish(&ctx.recorder, fi, event).await;
        }
    }

    // 7.
    if let Some(update) = &plan.status {
        let body = json!({
            "apiVersion": FileIntegrity::api_version(&()),
            "kind": FileIntegrity::kind(&()),
            "status": update.status,
        });
        Api::<FileIntegrity>::namespaced(client.clone(), &namespace)
            .patch_status(&name, &apply_params(), &Patch::Apply(&body))
            .await
            .map_err(Error::kube(format!(
                "applying status of FileIntegrity {name}"
            )))?;
        if let Some(change) = &update.phase_change {
            ctx.metrics
                .phase_total
                .with_label_values(&[change.phase])
                .inc();
            if let Some(reason) = change.error {
                ctx.metrics.error_total.with_label_values(&[reason]).inc();
            }
            publish(&ctx.recorder, fi, &change.event).await;
        }
    }
    Ok(Applied::Done)
}

/// Publishes an event on `fi`, best effort: never fails the reconcile.
async fn publish(recorder: &Recorder, fi: &FileIntegrity, event: &PlannedEvent) {
    if let Err(e) = recorder
        .publish(&event.to_event(), &fi.object_ref(&()))
        .await
    {
        tracing::warn!(fi = %fi.name_any(), error = %e, "cannot publish event");
    }
}
