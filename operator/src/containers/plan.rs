//! What the operator does about monitored containers, from what it observed (pure): events on
//! the pods, the `container_failed` gauge, and the `restart`/`rollback` remediations with their
//! backoff. Agents report; only the operator writes events and touches workloads.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube_fim_crds::containers::{self as selection, Remediation};
use kube_fim_crds::{ContainerResult, FileIntegrityNodeStatus, ScanCondition};

use crate::events::EventMessage;

/// Reason of the per-container result event on the Pod.
pub const CONTAINER_REASON: &str = "ContainerIntegrityStatus";
/// Reason of the event naming bad monitoring annotations of a Pod.
pub const CONFIG_REASON: &str = "ContainerMonitoringConfig";
/// Reason of remediation events (restart, rollback, kill, fallbacks).
pub const REMEDIATION_REASON: &str = "ContainerRemediation";
/// Reason when the backoff stops a remediation.
pub const SUPPRESSED_REASON: &str = "RemediationSuppressed";
/// Annotation of the revision of a Deployment and its ReplicaSets.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// (namespace, pod, container).
pub type Key = (String, String, String);

/// A container result with the node that reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reported {
    pub node: String,
    pub result: ContainerResult,
}

/// The container results of the FileIntegrity's node statuses (one per container: the newest).
pub fn reported(statuses: &[FileIntegrityNodeStatus]) -> BTreeMap<Key, Reported> {
    let mut out: BTreeMap<Key, Reported> = BTreeMap::new();
    for s in statuses {
        for r in &s.spec.containers {
            let key = (r.namespace.clone(), r.pod.clone(), r.container.clone());
            let newer = out
                .get(&key)
                .is_none_or(|o| o.result.last_probe_time.0 < r.last_probe_time.0);
            if newer {
                out.insert(
                    key,
                    Reported {
                        node: s.spec.node_name.clone(),
                        result: r.clone(),
                    },
                );
            }
        }
    }
    out
}

/// What an event about a container said last (to say it once).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Announced {
    pub container_id: String,
    pub condition: ScanCondition,
    pub counts: (i64, i64, i64),
    pub last_remediation: Option<String>,
}

impl Announced {
    pub fn of(r: &ContainerResult) -> Self {
        Self {
            container_id: r.container_id.clone(),
            condition: r.condition,
            counts: (r.files_added, r.files_changed, r.files_removed),
            last_remediation: r.last_remediation.clone(),
        }
    }
}

/// The `ContainerIntegrityStatus` event text, like the node one.
pub fn container_message(r: &ContainerResult) -> EventMessage {
    let who = format!("container {} of pod {}/{}", r.container, r.namespace, r.pod);
    let (type_, message) = match r.condition {
        ScanCondition::Succeeded => (
            EventType::Normal,
            format!("no changes to {who} (baseline {})", r.baseline_source),
        ),
        ScanCondition::Failed => (
            EventType::Warning,
            format!(
                "{who} has changed! a:{},c:{},r:{} baseline:{} paths:{}",
                r.files_added,
                r.files_changed,
                r.files_removed,
                r.baseline_source,
                r.changed_paths.join(",")
            ),
        ),
        ScanCondition::Errored => (
            EventType::Warning,
            format!(
                "{who} has an error! {}",
                r.error_message.as_deref().unwrap_or("unknown error")
            ),
        ),
    };
    EventMessage {
        type_,
        reason: CONTAINER_REASON,
        message: truncate(message),
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > 1024 {
        let mut end = 1024;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// An event on a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEvent {
    pub namespace: String,
    pub pod: String,
    pub message: EventMessage,
    /// Distinguishes series (the Recorder folds same reason+action).
    pub action: String,
}

/// A remediation to carry out.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Delete the pod (only this uid).
    DeletePod {
        namespace: String,
        pod: String,
        uid: String,
    },
    /// Replace the Deployment's template with the previous revision's (guarded by resourceVersion).
    Rollback {
        namespace: String,
        deployment: String,
        resource_version: String,
        revision: i64,
        template: Box<PodTemplateSpec>,
    },
}

/// What a Failed container's pod is, for remediation.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    /// The pod as it is now (`None`: gone).
    pub pod: Option<Pod>,
    /// Its Deployment, when a ReplicaSet owned by a Deployment owns it.
    pub deployment: Option<Deployment>,
    /// The ReplicaSets of that Deployment.
    pub replica_sets: Vec<ReplicaSet>,
}

/// Everything [`plan`] looks at.
pub struct Input<'a> {
    pub reported: &'a BTreeMap<Key, Reported>,
    /// Pod problems from the node statuses: (namespace, pod) → problems, with the reporting node.
    pub problems: BTreeMap<(String, String), Vec<String>>,
    /// What was announced last per container and per pod's problems.
    pub announced: &'a BTreeMap<Key, Announced>,
    pub announced_problems: &'a BTreeMap<(String, String), Vec<String>>,
    /// Pods (and their workloads) of Failed containers, by (namespace, pod).
    pub workloads: &'a BTreeMap<(String, String), Workload>,
    /// Remediation times per workload (seconds).
    pub history: &'a BTreeMap<String, Vec<i64>>,
    /// Pod uids already remediated (a deleted pod's result lingers until its agent drops it).
    pub remediated: &'a BTreeSet<String>,
    pub max_remediations: u32,
    pub window: i64,
    pub now: i64,
}

/// What [`plan`] decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub events: Vec<PodEvent>,
    /// Remembered once published.
    pub announce: Vec<(Key, Announced)>,
    pub announce_problems: Vec<((String, String), Vec<String>)>,
    /// The `container_failed` gauge, per container reported.
    pub failed: BTreeMap<Key, bool>,
    pub actions: Vec<(String, Action)>,
    /// (workload, pod uid) whose remediation the backoff suppressed: said once per pod (the pod
    /// is not remediated later either; a new pod of the workload is judged afresh).
    pub suppressed: Vec<(String, String)>,
}

pub fn plan(input: &Input<'_>) -> Plan {
    let mut out = Plan::default();
    for (key, rep) in input.reported {
        let r = &rep.result;
        out.failed
            .insert(key.clone(), r.condition == ScanCondition::Failed);
        let now = Announced::of(r);
        if input.announced.get(key) != Some(&now) {
            let message = container_message(r);
            out.events.push(PodEvent {
                namespace: r.namespace.clone(),
                pod: r.pod.clone(),
                action: format!(
                    "{}-{}-a{}-c{}-r{}",
                    r.container, r.condition, r.files_added, r.files_changed, r.files_removed
                ),
                message,
            });
            if now.last_remediation
                != input
                    .announced
                    .get(key)
                    .and_then(|a| a.last_remediation.clone())
                && let Some(text) = &now.last_remediation
            {
                let suppressed = text.starts_with("kill suppressed");
                if suppressed {
                    // The agent's backoff stopped a kill: counted like the operator's own.
                    let workload = input
                        .workloads
                        .get(&(key.0.clone(), key.1.clone()))
                        .and_then(|w| w.pod.as_ref())
                        .map_or_else(
                            || format!("{}/{}", key.0, key.1),
                            |p| {
                                selection::workload_of(
                                    &key.0,
                                    &key.1,
                                    p.metadata.owner_references.as_deref().unwrap_or_default(),
                                )
                            },
                        );
                    out.suppressed.push((workload, r.pod_uid.clone()));
                }
                out.events.push(PodEvent {
                    namespace: r.namespace.clone(),
                    pod: r.pod.clone(),
                    action: format!("{}-kill", r.container),
                    message: EventMessage {
                        type_: EventType::Warning,
                        reason: if suppressed {
                            SUPPRESSED_REASON
                        } else {
                            REMEDIATION_REASON
                        },
                        message: format!(
                            "container {} of pod {}/{}: {text} (by the agent on node {})",
                            r.container, r.namespace, r.pod, rep.node
                        ),
                    },
                });
            }
            out.announce.push((key.clone(), now));
        }
        if r.condition == ScanCondition::Failed {
            remediate(input, key, rep, &mut out);
        }
    }
    for ((ns, pod), problems) in &input.problems {
        let id = (ns.clone(), pod.clone());
        if input.announced_problems.get(&id) == Some(problems) {
            continue;
        }
        out.events.push(PodEvent {
            namespace: ns.clone(),
            pod: pod.clone(),
            action: "annotations".into(),
            message: EventMessage {
                type_: EventType::Warning,
                reason: CONFIG_REASON,
                message: truncate(format!(
                    "monitoring annotations of pod {ns}/{pod}: {}",
                    problems.join("; ")
                )),
            },
        });
        out.announce_problems.push((id, problems.clone()));
    }
    out
}

fn event(r: &ContainerResult, type_: EventType, reason: &'static str, text: String) -> PodEvent {
    PodEvent {
        namespace: r.namespace.clone(),
        pod: r.pod.clone(),
        action: format!("{}-{reason}", r.container),
        message: EventMessage {
            type_,
            reason,
            message: truncate(text),
        },
    }
}

/// `restart` and `rollback` of a Failed container (kill is the agent's).
fn remediate(input: &Input<'_>, key: &Key, rep: &Reported, out: &mut Plan) {
    let r = &rep.result;
    let Some(w) = input.workloads.get(&(key.0.clone(), key.1.clone())) else {
        return;
    };
    let Some(pod) = &w.pod else {
        return;
    };
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let names: Vec<&str> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    let Some(sel) = selection::select(&annotations, &names) else {
        return;
    };
    if !matches!(
        sel.remediation,
        Remediation::Restart | Remediation::Rollback
    ) {
        return;
    }
    let uid = pod.uid().unwrap_or_default();
    // Only for the very pod the finding is about, reported by the node it runs on: an agent
    // (or a stolen agent token) elsewhere cannot get pods deleted or Deployments rolled back.
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if uid != r.pod_uid || node.as_deref() != Some(rep.node.as_str()) {
        return;
    }
    if input.remediated.contains(&uid) || out.actions.iter().any(|(u, _)| *u == uid) {
        return;
    }
    let workload = selection::workload_of(
        &key.0,
        &key.1,
        pod.metadata.owner_references.as_deref().unwrap_or_default(),
    );
    let history = input.history.get(&workload).cloned().unwrap_or_default();
    if !selection::remediation_allowed(&history, input.now, input.max_remediations, input.window) {
        if !out.suppressed.iter().any(|(w, _)| *w == workload) {
            out.suppressed.push((workload.clone(), uid.clone()));
            out.events.push(event(
                r,
                EventType::Warning,
                SUPPRESSED_REASON,
                format!(
                    "{} of {workload} suppressed: {} remediations within {}s already",
                    sel.remediation, input.max_remediations, input.window
                ),
            ));
        }
        return;
    }
    let restart = |why: String, out: &mut Plan| {
        out.events.push(event(
            r,
            EventType::Warning,
            REMEDIATION_REASON,
            format!(
                "{why}deleting pod {}/{} (container {} tampered: {})",
                r.namespace,
                r.pod,
                r.container,
                r.changed_paths.join(",")
            ),
        ));
        out.actions.push((
            uid.clone(),
            Action::DeletePod {
                namespace: r.namespace.clone(),
                pod: r.pod.clone(),
                uid: uid.clone(),
            },
        ));
    };
    if sel.remediation == Remediation::Restart {
        return restart(String::new(), out);
    }
    let Some(deployment) = &w.deployment else {
        return restart(
            format!("rollback needs a Deployment-owned pod ({workload}): restarting instead; "),
            out,
        );
    };
    match rollback(deployment, &w.replica_sets) {
        Rollback::Patch { revision, template } => {
            out.events.push(event(
                r,
                EventType::Warning,
                REMEDIATION_REASON,
                format!(
                    "rolling back Deployment {}/{} to revision {revision} (container {} tampered: {})",
                    r.namespace,
                    deployment.name_any(),
                    r.container,
                    r.changed_paths.join(",")
                ),
            ));
            out.actions.push((
                uid.clone(),
                Action::Rollback {
                    namespace: r.namespace.clone(),
                    deployment: deployment.name_any(),
                    resource_version: deployment.resource_version().unwrap_or_default(),
                    revision,
                    template,
                },
            ));
        }
        Rollback::Refused(why) => restart(
            format!(
                "Deployment {}/{}: {why}: restarting instead; ",
                r.namespace,
                deployment.name_any()
            ),
            out,
        ),
    }
}

/// What `kubectl rollout undo` would do.
#[derive(Clone, Debug, PartialEq)]
pub enum Rollback {
    Patch {
        revision: i64,
        template: Box<PodTemplateSpec>,
    },
    /// Why not (paused, no previous revision, identical template).
    Refused(String),
}

fn revision(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<i64> {
    meta.annotations
        .as_ref()?
        .get(REVISION_ANNOTATION)?
        .parse()
        .ok()
}

/// The previous revision's template (`deployment.kubernetes.io/revision` of the Deployment's
/// ReplicaSets, found through their controller owner reference), without `pod-template-hash`.
pub fn rollback(deployment: &Deployment, replica_sets: &[ReplicaSet]) -> Rollback {
    let spec = deployment.spec.clone().unwrap_or_default();
    if spec.paused == Some(true) {
        return Rollback::Refused(
            "the Deployment is paused (kubectl rollout undo refuses it too)".into(),
        );
    }
    let uid = deployment.uid().unwrap_or_default();
    let current = revision(&deployment.metadata).unwrap_or(0);
    let owned = replica_sets.iter().filter(|rs| {
        rs.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid)
    });
    let Some((rev, rs)) = owned
        .filter_map(|rs| revision(&rs.metadata).map(|r| (r, rs)))
        .filter(|(r, _)| *r < current)
        .max_by_key(|(r, _)| *r)
    else {
        return Rollback::Refused(format!("no revision before {current}"));
    };
    let Some(mut template) = rs.spec.as_ref().and_then(|s| s.template.clone()) else {
        return Rollback::Refused(format!("revision {rev} has no template"));
    };
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove("pod-template-hash");
    }
    if template == spec.template {
        return Rollback::Refused(format!(
            "revision {rev} has the same template as the current one (skipped)"
        ));
    }
    Rollback::Patch {
        revision: rev,
        template: Box::new(template),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn result(condition: ScanCondition, uid: &str) -> ContainerResult {
        ContainerResult {
            namespace: "team".into(),
            pod: "web-1".into(),
            container: "web".into(),
            pod_uid: uid.into(),
            container_id: "containerd://abc".into(),
            image: "localhost/web:2".into(),
            image_id: String::new(),
            baseline_source: "FirstObserved".into(),
            condition,
            last_probe_time: Time(Timestamp::from_second(1000).unwrap()),
            files_added: 0,
            files_changed: (condition == ScanCondition::Failed) as i64,
            files_removed: 0,
            changed_paths: vec!["/srv/html/index.html".into()],
            error_message: None,
            last_remediation: None,
        }
    }

    fn pod(remediation: &str, node: &str, owner: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "team", "uid": "p1",
                         "annotations": {"fim.kubefim.io/monitor": "true",
                                         "web.fim.kubefim.io/paths": "/srv",
                                         "fim.kubefim.io/remediation": remediation},
                         "ownerReferences": owner},
            "spec": {"nodeName": node, "containers": [{"name": "web", "image": "localhost/web:2"}]},
        }))
        .unwrap()
    }

    fn rs_owner() -> serde_json::Value {
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-2", "uid": "rs2", "controller": true}])
    }

    fn deployment(paused: bool, image: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "team", "uid": "d1", "resourceVersion": "42",
                         "annotations": {REVISION_ANNOTATION: "2"}},
            "spec": {"paused": paused, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": image}]}}},
        }))
        .unwrap()
    }

    fn replica_set(rev: i64, image: &str, owner: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{rev}"), "namespace": "team",
                         "annotations": {REVISION_ANNOTATION: rev.to_string()},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                              "uid": owner, "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": format!("h{rev}")}},
                                  "spec": {"containers": [{"name": "web", "image": image}]}}},
        }))
        .unwrap()
    }

    struct Fixture {
        reported: BTreeMap<Key, Reported>,
        workloads: BTreeMap<(String, String), Workload>,
        history: BTreeMap<String, Vec<i64>>,
        remediated: BTreeSet<String>,
        announced: BTreeMap<Key, Announced>,
    }

    impl Fixture {
        fn new(r: ContainerResult, node: &str, w: Workload) -> Self {
            let key = (r.namespace.clone(), r.pod.clone(), r.container.clone());
            Fixture {
                reported: BTreeMap::from([(
                    key,
                    Reported {
                        node: node.into(),
                        result: r,
                    },
                )]),
                workloads: BTreeMap::from([(("team".into(), "web-1".into()), w)]),
                history: BTreeMap::new(),
                remediated: BTreeSet::new(),
                announced: BTreeMap::new(),
            }
        }

        fn plan(&self) -> Plan {
            let none = BTreeMap::new();
            plan(&Input {
                reported: &self.reported,
                problems: BTreeMap::new(),
                announced: &self.announced,
                announced_problems: &none,
                workloads: &self.workloads,
                history: &self.history,
                remediated: &self.remediated,
                max_remediations: 3,
                window: 600,
                now: 10_000,
            })
        }
    }

    #[test]
    fn a_failed_container_gets_an_event_the_gauge_and_once_only() {
        let mut f = Fixture::new(
            result(ScanCondition::Failed, "p1"),
            "node-a",
            Workload::default(),
        );
        let p = f.plan();
        assert_eq!(p.failed.values().collect::<Vec<_>>(), [&true]);
        assert_eq!(p.events.len(), 1);
        let e = &p.events[0];
        assert_eq!((e.namespace.as_str(), e.pod.as_str()), ("team", "web-1"));
        assert_eq!(e.message.reason, CONTAINER_REASON);
        assert_eq!(e.message.type_, EventType::Warning);
        assert_eq!(
            e.message.message,
            "container web of pod team/web-1 has changed! a:0,c:1,r:0 baseline:FirstObserved paths:/srv/html/index.html"
        );
        f.announced = p.announce.into_iter().collect();
        assert!(f.plan().events.is_empty(), "said once");
    }

    #[test]
    fn restart_deletes_only_the_pod_on_the_reporting_node() {
        let w = Workload {
            pod: Some(pod("restart", "node-a", rs_owner())),
            ..Workload::default()
        };
        let f = Fixture::new(result(ScanCondition::Failed, "p1"), "node-a", w.clone());
        let p = f.plan();
        assert_eq!(
            p.actions,
            [(
                "p1".to_owned(),
                Action::DeletePod {
                    namespace: "team".into(),
                    pod: "web-1".into(),
                    uid: "p1".into()
                }
            )]
        );
        assert!(
            p.events
                .iter()
                .any(|e| e.message.reason == REMEDIATION_REASON)
        );

        // Reported by another node: nothing.
        let other = Fixture::new(result(ScanCondition::Failed, "p1"), "node-b", w.clone());
        assert!(other.plan().actions.is_empty());
        // Another pod under the same name (new uid): nothing.
        let stale = Fixture::new(result(ScanCondition::Failed, "old"), "node-a", w.clone());
        assert!(stale.plan().actions.is_empty());
        // Already done.
        let mut done = Fixture::new(result(ScanCondition::Failed, "p1"), "node-a", w.clone());
        done.remediated.insert("p1".into());
        assert!(done.plan().actions.is_empty());
        // Not failed, or remediation none/kill: nothing.
        assert!(
            Fixture::new(result(ScanCondition::Succeeded, "p1"), "node-a", w)
                .plan()
                .actions
                .is_empty()
        );
        for r in ["none", "kill"] {
            let w = Workload {
                pod: Some(pod(r, "node-a", rs_owner())),
                ..Workload::default()
            };
            assert!(
                Fixture::new(result(ScanCondition::Failed, "p1"), "node-a", w)
                    .plan()
                    .actions
                    .is_empty(),
                "{r}"
            );
        }
    }

    #[test]
    fn the_fourth_remediation_in_ten_minutes_is_suppressed() {
        let w = Workload {
            pod: Some(pod("restart", "node-a", rs_owner())),
            ..Workload::default()
        };
        let mut f = Fixture::new(result(ScanCondition::Failed, "p1"), "node-a", w);
        f.history
            .insert("team/ReplicaSet/web-2".into(), vec![9_500, 9_800, 9_900]);
        let p = f.plan();
        assert!(p.actions.is_empty());
        assert_eq!(
            p.suppressed,
            [("team/ReplicaSet/web-2".to_owned(), "p1".to_owned())]
        );
        let e = p
            .events
            .iter()
            .find(|e| e.message.reason == SUPPRESSED_REASON)
            .unwrap();
        assert!(
            e.message.message.contains("3 remediations within 600s"),
            "{}",
            e.message.message
        );
        f.history
            .insert("team/ReplicaSet/web-2".into(), vec![9_000, 9_800, 9_900]);
        assert_eq!(f.plan().actions.len(), 1, "the oldest left the window");
    }

    #[test]
    fn rollback_takes_the_previous_revisions_template_as_kubectl_does() {
        let d = deployment(false, "localhost/web:2");
        let rss = [
            replica_set(1, "localhost/web:1", "d1"),
            replica_set(2, "localhost/web:2", "d1"),
            replica_set(5, "localhost/other:9", "someone-else"),
        ];
        let Rollback::Patch { revision, template } = rollback(&d, &rss) else {
            panic!("{:?}", rollback(&d, &rss));
        };
        assert_eq!(revision, 1);
        let c = &template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("localhost/web:1"));
        let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert!(!labels.contains_key("pod-template-hash"));

        assert!(
            matches!(rollback(&deployment(true, "localhost/web:2"), &rss), Rollback::Refused(w) if w.contains("paused"))
        );
        assert!(
            matches!(rollback(&d, &rss[1..]), Rollback::Refused(w) if w.contains("no revision before 2"))
        );
        let same = [replica_set(1, "localhost/web:2", "d1")];
        assert!(matches!(rollback(&d, &same), Rollback::Refused(w) if w.contains("skipped")));

        // Through the plan: a Deployment-owned pod rolls back; a paused one restarts with an event.
        let mut w = Workload {
            pod: Some(pod("rollback", "node-a", rs_owner())),
            deployment: Some(d.clone()),
            replica_sets: rss.to_vec(),
        };
        let p = Fixture::new(result(ScanCondition::Failed, "p1"), "node-a", w.clone()).plan();
        assert!(
            matches!(&p.actions[0].1, Action::Rollback { deployment, revision: 1, resource_version, .. }
            if deployment == "web" && resource_version == "42")
        );
        w.deployment = Some(deployment(true, "localhost/web:2"));
        let p = Fixture::new(result(ScanCondition::Failed, "p1"), "node-a", w.clone()).plan();
        assert!(matches!(&p.actions[0].1, Action::DeletePod { .. }));
        assert!(p.events.iter().any(|e| e.message.message.contains("paused")
            && e.message.message.contains("restarting instead")));
        w.deployment = None;
        let p = Fixture::new(result(ScanCondition::Failed, "p1"), "node-a", w).plan();
        assert!(p.events.iter().any(|e| {
            e.message
                .message
                .contains("rollback needs a Deployment-owned pod")
        }));
    }

    #[test]
    fn kill_results_and_annotation_problems_become_events() {
        let mut r = result(ScanCondition::Failed, "p1");
        r.last_remediation = Some("kill at 2026-12-02T09:00:00Z".into());
        let f = Fixture::new(r, "node-a", Workload::default());
        let p = f.plan();
        let e = p.events.iter().find(|e| e.action == "web-kill").unwrap();
        assert_eq!(e.message.reason, REMEDIATION_REASON);
        assert!(e.message.message.contains("by the agent on node node-a"));
        assert!(p.suppressed.is_empty());

        // The agent's backoff stopped a kill: a RemediationSuppressed event, counted for the
        // workload of the pod.
        let mut r = result(ScanCondition::Failed, "p1");
        r.last_remediation =
            Some("kill suppressed: 3 remediations of team/ReplicaSet/web-2 within 600s".into());
        let w = Workload {
            pod: Some(pod("kill", "node-a", rs_owner())),
            ..Workload::default()
        };
        let p = Fixture::new(r, "node-a", w).plan();
        let e = p.events.iter().find(|e| e.action == "web-kill").unwrap();
        assert_eq!(e.message.reason, SUPPRESSED_REASON);
        assert_eq!(
            p.suppressed,
            [("team/ReplicaSet/web-2".to_owned(), "p1".to_owned())]
        );

        let none = BTreeMap::new();
        let empty = BTreeMap::new();
        let p = plan(&Input {
            reported: &empty,
            problems: BTreeMap::from([(
                ("team".into(), "web-1".into()),
                vec!["path \"x\" is relative".into()],
            )]),
            announced: &BTreeMap::new(),
            announced_problems: &none,
            workloads: &BTreeMap::new(),
            history: &BTreeMap::new(),
            remediated: &BTreeSet::new(),
            max_remediations: 3,
            window: 600,
            now: 0,
        });
        assert_eq!(p.events[0].message.reason, CONFIG_REASON);
        assert!(p.events[0].message.message.contains("is relative"));
    }
}
