//! Step 3 of a reconcile: the writes of a [`Plan`], in this order (server-side apply with the
//! field manager [`labels::OPERATOR_MANAGER`] unless said otherwise):
//!
//! 1. warnings (a missing PriorityClass), best effort;
//! 2. the rules ConfigMap `fim-config-<fi>`: before the DaemonSet whose pods mount it;
//! 3. the agent DaemonSet, once the agents' admission policies are in effect
//!    ([`crate::admission::PoliciesInEffect`]), then the per-node objects its agents update
//!    (created if absent: agents may not create them);
//! 4. deletion of the node statuses of deleted nodes, then their metric series and event memory;
//! 5. `NodeIntegrityStatus` events (best effort; each counted once published) and the
//!    `node_failed` gauge;
//! 6. the re-init step: one JSON merge patch of the FileIntegrity's annotations guarded by its
//!    resourceVersion. On a conflict nothing more is written ([`Applied::Conflict`]): the
//!    status depends on the step, so the next reconcile decides again on the fresh object.
//!    Once written: its `reinit_total` counts and events;
//! 7. the status, then the phase event and `phase_total` / `error_total`: only counted once the
//!    status that says so is stored, and a status with a phase change is written only onto the
//!    version of the FileIntegrity it was planned from (else [`Applied::Conflict`]), so a
//!    transition planned twice from a stale cache is counted once; then the `BaselineReplaced`
//!    Warnings (the status holds the rejection they announce, so they are not planned again).

use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::events::Recorder,
};
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, labels};
use serde_json::json;

use super::{
    Context,
    metrics::Metrics,
    plan::{Plan, PlannedEvent},
};
use crate::{Error, Result, events, node_objects};
use k8s_openapi::api::core::v1::ConfigMap;

/// How far [`apply`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Everything was written.
    Done,
    /// The FileIntegrity changed since it was read (a user annotation, or our own status write
    /// not yet in the cache): steps 1–5 were written, the rest was not (or, when the status with
    /// a phase change met it, steps 1–6).
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
        Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .patch(&cm_name, &apply_params(), &Patch::Apply(&body))
            .await
            .map_err(Error::kube(format!("applying ConfigMap {cm_name}")))?;
    }

    // 3.
    if let Some(ds) = &plan.daemonset {
        let ds_name = ds.name_any();
        if !ctx.policies.is_open() {
            tracing::info!(fi = %name, "waiting for the agents' admission policies to be in effect");
            ctx.policies.wait().await;
        }
        Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client.clone(), &namespace)
            .patch(&ds_name, &apply_params(), &Patch::Apply(ds))
            .await
            .map_err(Error::kube(format!("applying DaemonSet {ds_name}")))?;
    }
    let statuses: Api<FileIntegrityNodeStatus> = Api::namespaced(client.clone(), &namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    for objects in &plan.creations {
        create_for_node(
            &config_maps,
            &objects.failure_config_map,
            &objects.node,
            |cm: &ConfigMap, node| wrong_label(cm, node),
            fi,
            ctx,
        )
        .await?;
        let created = create_for_node(
            &statuses,
            &objects.status,
            &objects.node,
            |s: &FileIntegrityNodeStatus, node| {
                (s.spec.node_name != node)
                    .then(|| s.spec.node_name.clone())
                    .or_else(|| wrong_label(s, node))
            },
            fi,
            ctx,
        )
        .await?;
        if created {
            tracing::info!(fi = %name, node = %objects.node, "node status created");
        }
    }

    // 4.
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
        let cm_name = node_objects::failure_config_map_name(&name, node);
        match config_maps.delete(&cm_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::kube(format!("deleting ConfigMap {cm_name}"))(e)),
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
    Metrics::set_node_gauge(&ctx.metrics.node_errored, &plan.node_errored);
    Metrics::set_node_gauge(&ctx.metrics.baseline_replaced, &plan.baseline_replaced);
    Metrics::set_node_gauge(&ctx.metrics.node_stale, &plan.node_stale);

    // 6.
    // The FileIntegrity as this reconcile last saw it stored: a phase change is written only onto
    // that version (step 7).
    let mut resource_version = fi.resource_version();
    if let Some(patch) = &plan.reinit.patch {
        let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &namespace);
        match fis
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(patched) => resource_version = patched.resource_version(),
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
        let mut body = json!({
            "apiVersion": FileIntegrity::api_version(&()),
            "kind": FileIntegrity::kind(&()),
            "status": update.status,
        });
        // A phase change is counted and announced once: written only onto the version it was
        // planned from. A reconcile that read the object before our last status write reached
        // the cache would plan the same transition again; the API server refuses it (409).
        if update.phase_change.is_some() {
            body["metadata"] = json!({"resourceVersion": resource_version});
        }
        match Api::<FileIntegrity>::namespaced(client.clone(), &namespace)
            .patch_status(&name, &apply_params(), &Patch::Apply(&body))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 && update.phase_change.is_some() => {
                tracing::debug!(fi = %name, "FileIntegrity changed meanwhile; phase change retried");
                return Ok(Applied::Conflict);
            }
            Err(e) => {
                return Err(Error::kube(format!(
                    "applying status of FileIntegrity {name}"
                ))(e));
            }
        }
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
    // Once the status records the rejection (else the next reconcile plans them again).
    for event in &plan.anchor_events {
        tracing::warn!(fi = %name, node = ?event.node, "{}", event.message.message);
        publish(&ctx.recorder, fi, event).await;
    }
    Ok(Applied::Done)
}

/// The node label of `object` when it is not `node`.
fn wrong_label<K: Resource>(object: &K, node: &str) -> Option<String> {
    let label = object.labels().get(labels::NODE).map(String::as_str);
    (label != Some(node)).then(|| label.unwrap_or_default().to_owned())
}

/// Creates `object`, one of `node`'s objects; whether it was created. One already there is the
/// agent's to fill, unless `wrong_node` finds it says another node: written by someone other
/// than the operator (the agents' admission policies refuse such writes once in effect), it
/// would lock `node`'s agent out for ever, since an agent may write only its own node's objects.
/// That one (by uid) is deleted and the object created anew, with a Warning naming both nodes.
async fn create_for_node<K>(
    api: &Api<K>,
    object: &K,
    node: &str,
    wrong_node: impl Fn(&K, &str) -> Option<String>,
    fi: &FileIntegrity,
    ctx: &Context,
) -> Result<bool>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let (kind, name) = (K::kind(&()).into_owned(), object.name_any());
    let create = async || match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(Error::kube(format!("creating {kind} {name}"))(e)),
    };
    if create().await? {
        return Ok(true);
    }
    let existing = api
        .get_opt(&name)
        .await
        .map_err(Error::kube(format!("reading {kind} {name}")))?;
    let Some((existing, said)) = existing.and_then(|e| wrong_node(&e, node).map(|said| (e, said)))
    else {
        // Ours, or gone since (the next reconcile creates it).
        return Ok(false);
    };
    tracing::warn!(fi = %fi.name_any(), %node, %said, "{kind} {name} says another node; replacing it");
    let delete = DeleteParams {
        preconditions: Some(Preconditions {
            uid: existing.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &delete).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => return Err(Error::kube(format!("deleting {kind} {name}"))(e)),
    }
    let created = create().await?;
    let event = PlannedEvent {
        message: events::node_object_replaced_message(&kind, &name, node, &said),
        // One series per kind: the Recorder folds events of one reason, action and node.
        action: format!("{}-{kind}", events::NODE_OBJECT_REPLACED_REASON),
        node: Some(node.to_owned()),
    };
    publish(&ctx.recorder, fi, &event).await;
    Ok(created)
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
