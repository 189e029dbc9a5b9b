//! Monitored containers, the operator's half (issue 14): after each FileIntegrity reconcile with
//! `spec.containers.enabled`, observe (the pods of Failed containers and, for `rollback`, their
//! Deployment and its ReplicaSets) → [`plan::plan`] (pure) → apply (events on the pods, the
//! `container_failed` gauge, pod deletion and Deployment rollback).
//!
//! Memory (what was announced, remediation times per workload, pods already remediated) is kept
//! in the operator process and seeded from `status.containerRemediations` when a process first
//! reconciles a FileIntegrity ([`Memory::seed`]): after a restart or a leader change a pod is not
//! remediated twice and the backoff continues, as far as the entries' 10-minute TTL reaches; an
//! event may be repeated once.

pub mod plan;
pub mod records;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::Event;
use kube::{Api, ResourceExt};
use kube_fim_crds::{
    CONTAINER_REMEDIATIONS_MANAGER, ContainerRemediationRecord, FileIntegrity,
    FileIntegrityNodeStatus, ScanCondition,
};

use crate::file_integrity::Context;
use plan::{Action, Announced, Key, Reported, Workload};

/// What the operator remembers about containers across reconciles.
#[derive(Default)]
pub struct Memory {
    announced: BTreeMap<Key, Announced>,
    announced_problems: BTreeMap<(String, String), Vec<String>>,
    history: BTreeMap<String, Vec<i64>>,
    remediated: BTreeSet<String>,
    gauged: BTreeSet<Key>,
    /// Per FileIntegrity (namespace, name): when each workload last had a remediation
    /// suppressed, for its `RemediationSuppressed` condition.
    suppressed: BTreeMap<(String, String), BTreeMap<String, i64>>,
    /// The FileIntegrities (namespace, name) whose `status.containerRemediations` were read in.
    seeded: BTreeSet<(String, String)>,
}

impl Memory {
    /// Takes in, once per FileIntegrity and process, what its status says an earlier leader
    /// did ([`records::remembered`]): a new leader neither remediates a pod again (a second
    /// rollback would undo the first, as a second `kubectl rollout undo` does) nor starts the
    /// `maxRemediations` count afresh.
    pub fn seed(&mut self, fi: (String, String), records: &[ContainerRemediationRecord]) {
        if !self.seeded.insert(fi) {
            return;
        }
        let (pods, history) = records::remembered(records);
        self.remediated.extend(pods);
        for (workload, times) in history {
            self.history.entry(workload).or_default().extend(times);
        }
    }

    /// Workloads of FileIntegrity `namespace/name` whose remediation was suppressed, with the
    /// time (seconds) of the last suppression.
    pub fn suppressed(&self, namespace: &str, name: &str) -> BTreeMap<String, i64> {
        self.suppressed
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

/// At most this many pods are read per reconcile for remediation.
const MAX_WORKLOAD_READS: usize = 50;

/// The containers step of a reconcile of `fi` whose node statuses are `statuses`. Best effort:
/// errors are logged, never fail the FileIntegrity's reconcile. Returns whether a remediation
/// was newly suppressed (the FileIntegrity's condition is then due).
pub async fn reconcile(
    fi: &FileIntegrity,
    statuses: &[FileIntegrityNodeStatus],
    ctx: &Context,
) -> bool {
    let Some(settings) = fi.spec.containers.as_ref().filter(|c| c.enabled) else {
        return false;
    };
    let reported = plan::reported(statuses);
    let mut problems = BTreeMap::new();
    for s in statuses {
        for p in &s.spec.pod_problems {
            problems.insert((p.namespace.clone(), p.pod.clone()), p.problems.clone());
        }
    }
    // Observe: the pods of Failed containers (their annotation says what to do), and for
    // rollback the Deployment that owns the pod's ReplicaSet.
    let mut workloads = BTreeMap::new();
    let failed: BTreeSet<(String, String)> = reported
        .iter()
        .filter(|(_, r)| r.result.condition == ScanCondition::Failed)
        .map(|(k, _)| (k.0.clone(), k.1.clone()))
        .collect();
    for (ns, pod) in failed.into_iter().take(MAX_WORKLOAD_READS) {
        match observe_workload(ctx, &ns, &pod).await {
            Ok(w) => {
                workloads.insert((ns, pod), w);
            }
            Err(e) => tracing::warn!(%ns, %pod, "cannot read the pod's workload: {e}"),
        }
    }
    let now = Timestamp::now().as_second();
    let fi_key = (fi.namespace().unwrap_or_default(), fi.name_any());
    let planned = {
        let mut memory = ctx.containers.lock().expect("container memory poisoned");
        let recorded = fi
            .status
            .as_ref()
            .map(|s| s.container_remediations.as_slice());
        memory.seed(fi_key.clone(), recorded.unwrap_or_default());
        plan::plan(&plan::Input {
            reported: &reported,
            problems,
            announced: &memory.announced,
            announced_problems: &memory.announced_problems,
            workloads: &workloads,
            history: &memory.history,
            remediated: &memory.remediated,
            max_remediations: settings.max_remediations.max(1) as u32,
            window: settings.remediation_window_seconds.max(1),
            now,
        })
    };
    let limits = (
        settings.max_remediations.max(1) as u32,
        settings.remediation_window_seconds.max(1),
    );
    let records = apply(&planned, &workloads, &reported, limits, ctx, now, fi_key).await;
    record_remediations(fi, records, ctx).await;
    !planned.suppressed.is_empty()
}

/// Adds the remediations of this reconcile to `status.containerRemediations` (expired entries
/// go), under a field manager of its own so that the FileIntegrity's status plan stays apart.
async fn record_remediations(
    fi: &FileIntegrity,
    records: Vec<ContainerRemediationRecord>,
    ctx: &Context,
) {
    let old = fi
        .status
        .as_ref()
        .map(|s| s.container_remediations.as_slice())
        .unwrap_or_default();
    let Some(list) = records::merge(old, records, Timestamp::now()) else {
        return;
    };
    let body = serde_json::json!({
        "apiVersion": <FileIntegrity as kube::Resource>::api_version(&()),
        "kind": <FileIntegrity as kube::Resource>::kind(&()),
        "status": {"containerRemediations": list},
    });
    let name = fi.name_any();
    let api: Api<FileIntegrity> =
        Api::namespaced(ctx.client.clone(), &fi.namespace().unwrap_or_default());
    let params = PatchParams::apply(CONTAINER_REMEDIATIONS_MANAGER).force();
    match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
        Ok(_) => {
            tracing::info!(fi = %name, entries = list.len(), "container remediations recorded")
        }
        Err(e) => tracing::warn!(fi = %name, "cannot record container remediations: {e}"),
    }
}

async fn observe_workload(ctx: &Context, ns: &str, pod: &str) -> Result<Workload, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let Some(p) = pods.get_opt(pod).await? else {
        return Ok(Workload::default());
    };
    let rs_owner = p
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "ReplicaSet")
        .cloned();
    let mut w = Workload {
        pod: Some(p),
        ..Workload::default()
    };
    let Some(rs_owner) = rs_owner else {
        return Ok(w);
    };
    let rss: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let Some(rs) = rss.get_opt(&rs_owner.name).await? else {
        return Ok(w);
    };
    if rs.uid().as_deref() != Some(rs_owner.uid.as_str()) {
        return Ok(w);
    }
    let Some(d_owner) = rs
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Deployment")
        .cloned()
    else {
        return Ok(w);
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let Some(d) = deployments.get_opt(&d_owner.name).await? else {
        return Ok(w);
    };
    if d.uid().as_deref() != Some(d_owner.uid.as_str()) {
        return Ok(w);
    }
    // The ReplicaSets of the Deployment: those its selector matches (the plan keeps only the
    // ones it controls).
    let selector = d
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    w.replica_sets = rss
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    w.deployment = Some(d);
    Ok(w)
}

/// Carries out `planned`; returns the remediations done, failed or suppressed, for
/// `status.containerRemediations`.
async fn apply(
    planned: &plan::Plan,
    workloads: &BTreeMap<(String, String), Workload>,
    reported: &BTreeMap<Key, Reported>,
    limits: (u32, i64),
    ctx: &Context,
    now: i64,
    fi_key: (String, String),
) -> Vec<ContainerRemediationRecord> {
    let mut records = Vec::new();
    let when = Timestamp::now();
    let of_pod = |uid: &str| reported.values().find(|r| r.result.pod_uid == uid);
    for e in &planned.events {
        let pod = workloads
            .get(&(e.namespace.clone(), e.pod.clone()))
            .and_then(|w| w.pod.as_ref());
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(e.pod.clone()),
            namespace: Some(e.namespace.clone()),
            uid: pod.and_then(|p| p.uid()),
            ..ObjectReference::default()
        };
        let event = Event {
            action: e.action.chars().take(128).collect(),
            ..e.message.clone().into_event()
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(ns = %e.namespace, pod = %e.pod, "cannot publish container event: {err}");
        }
    }
    // Gauge: set for every reported container, dropped for those no longer reported.
    let keys: BTreeSet<Key> = planned.failed.keys().cloned().collect();
    for ((ns, pod, c), failed) in &planned.failed {
        ctx.metrics
            .container_failed
            .with_label_values(&[ns.as_str(), pod.as_str(), c.as_str()])
            .set(*failed as i64);
    }
    {
        let mut memory = ctx.containers.lock().expect("container memory poisoned");
        for (ns, pod, c) in memory.gauged.difference(&keys) {
            let _ = ctx.metrics.container_failed.remove_label_values(&[
                ns.as_str(),
                pod.as_str(),
                c.as_str(),
            ]);
        }
        memory.gauged = keys;
        memory.announced.extend(planned.announce.iter().cloned());
        memory
            .announced_problems
            .extend(planned.announce_problems.iter().cloned());
        for (workload, uid) in &planned.suppressed {
            ctx.metrics
                .container_remediation_total
                .with_label_values(&["suppressed", "done"])
                .inc();
            memory.remediated.insert(uid.clone());
            memory
                .suppressed
                .entry(fi_key.clone())
                .or_default()
                .insert(workload.clone(), now);
            if let Some(rep) = of_pod(uid) {
                let message =
                    records::suppressed_message(&rep.result.pod, workload, limits.0, limits.1);
                records.push(records::record(rep, workload, "suppressed", message, when));
            }
        }
    }
    for (uid, action) in &planned.actions {
        let (kind, result) = match action {
            Action::DeletePod {
                namespace,
                pod,
                uid,
            } => {
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                tracing::warn!(%namespace, %pod, "tampered container: deleting its pod");
                ("restart", api.delete(pod, &dp).await.map(|_| ()))
            }
            Action::Rollback {
                namespace,
                deployment,
                resource_version,
                revision,
                template,
            } => {
                let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
                // As `kubectl rollout undo`: the previous template, guarded by resourceVersion.
                let patch = serde_json::json!([
                    {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
                    {"op": "replace", "path": "/spec/template", "value": template},
                ]);
                let patch: json_patch::Patch =
                    serde_json::from_value(patch).expect("a valid JSON patch");
                tracing::warn!(%namespace, %deployment, revision, "tampered container: rolling back");
                (
                    "rollback",
                    api.patch(
                        deployment,
                        &PatchParams::default(),
                        &Patch::Json::<()>(patch),
                    )
                    .await
                    .map(|_| ()),
                )
            }
        };
        let ok = match &result {
            Ok(()) => true,
            Err(kube::Error::Api(e)) if e.code == 404 => true,
            Err(e) => {
                tracing::warn!("{kind} failed: {e}");
                false
            }
        };
        let workload = workloads
            .values()
            .filter_map(|w| w.pod.as_ref())
            .find(|p| p.uid().as_deref() == Some(uid.as_str()))
            .map(|p| {
                kube_fim_crds::containers::workload_of(
                    &p.namespace().unwrap_or_default(),
                    &p.name_any(),
                    p.owner_references(),
                )
            });
        if let Some(rep) = of_pod(uid) {
            let error = result
                .as_ref()
                .err()
                .filter(|_| !ok)
                .map(ToString::to_string);
            let (action_name, message) = records::action_message(action, error.as_deref());
            records.push(records::record(
                rep,
                workload.as_deref().unwrap_or_default(),
                action_name,
                message,
                when,
            ));
        }
        ctx.metrics
            .container_remediation_total
            .with_label_values(&[kind, if ok { "done" } else { "failed" }])
            .inc();
        if ok {
            let mut memory = ctx.containers.lock().expect("container memory poisoned");
            memory.remediated.insert(uid.clone());
            if let Some(w) = workload {
                memory.history.entry(w).or_default().push(now);
            }
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn record(uid: &str, action: &str, t: i64) -> ContainerRemediationRecord {
        ContainerRemediationRecord {
            node_name: "node-a".into(),
            namespace: "team".into(),
            pod: "web-1".into(),
            pod_uid: uid.into(),
            container: "web".into(),
            image: "localhost/web:2".into(),
            action: action.into(),
            workload: "team/ReplicaSet/web-2".into(),
            message: "Rollback deployment web to revision 1".into(),
            file: "/srv/html/index.html".into(),
            time: Time(Timestamp::from_second(t).unwrap()),
        }
    }

    #[test]
    fn a_new_leader_takes_in_the_recorded_remediations_once() {
        let fi = ("team".to_owned(), "fi".to_owned());
        let records = [
            record("p1", "rollback", 9_500),
            record("p2", "restart", 9_700),
        ];
        let mut memory = Memory::default();
        memory
            .history
            .insert("team/ReplicaSet/web-2".into(), vec![9_900]);
        memory.seed(fi.clone(), &records);
        // Read once per process: the statuses written since are this process's own doing.
        memory.seed(fi, &records);
        assert_eq!(
            memory.remediated,
            BTreeSet::from(["p1".into(), "p2".into()])
        );
        assert_eq!(
            memory.history["team/ReplicaSet/web-2"],
            [9_900, 9_500, 9_700]
        );
        // So the lingering Failed result of p1 is not rolled back a second time (which would
        // restore the tampered revision), and a fourth remediation within the window of the
        // default 3 is suppressed.
        assert!(!kube_fim_crds::containers::remediation_allowed(
            &memory.history["team/ReplicaSet/web-2"],
            10_000,
            3,
            600
        ));
    }
}
