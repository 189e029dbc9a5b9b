//! [`plan`] on objects shaped as the API server returns them.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Node},
    },
    jiff::Timestamp,
};
use kube::runtime::events::EventType;
use kube_fim_crds::{
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityPhase, ScanCondition,
    reinit::{ACK_ANNOTATION, REQUEST_ANNOTATION, ReinitRequest},
};
use serde_json::{Value, json};

use super::*;
use crate::{config::DEFAULT_RULES, events::NodeEventKey, phase::PriorityClassCheck};

const NS: &str = "kube-fim";
const FI: &str = "worker-fi";
const CREATED: &str = "2026-01-01T00:00:00Z";

fn settings() -> OperatorConfig {
    OperatorConfig {
        namespace: NS.into(),
        agent_image: "ghcr.io/kube-fim/fim-agent:test".into(),
        agent_service_account: "fim-agent".into(),
        agent_api_server: None,
        agent_s3: None,
        resync: Duration::from_secs(300),
        retry: Duration::from_secs(1),
        retry_max: Duration::from_secs(300),
    }
}

/// A FileIntegrity as read back from the API server: uid, resourceVersion, generation and
/// creationTimestamp set, the spec's defaults filled in by deserialization.
fn fi(spec: Value, annotations: Value) -> FileIntegrity {
    serde_json::from_value(json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
        "metadata": {
            "name": FI, "namespace": NS, "uid": "6f1c9a52-0000-4000-8000-000000000001",
            "resourceVersion": "1001", "generation": 1, "creationTimestamp": CREATED,
            "annotations": annotations,
        },
        "spec": spec,
    }))
    .expect("valid FileIntegrity")
}

fn workers() -> Value {
    json!({"nodeSelector": {"node-role.kubernetes.io/worker": ""}})
}

fn node(name: &str, worker: bool, taints: Value) -> Arc<Node> {
    let mut labels = json!({"kubernetes.io/hostname": name, "type": "kwok"});
    if worker {
        labels["node-role.kubernetes.io/worker"] = json!("");
    }
    // As the operator caches them: no status, no managed fields, no annotations.
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name, "uid": format!("uid-{name}"), "resourceVersion": "500",
                "creationTimestamp": CREATED, "labels": labels,
            },
            "spec": {"taints": taints},
        }))
        .expect("valid Node"),
    )
}

fn result(condition: &str, added: i64, changed: i64) -> Value {
    let mut r = json!({"condition": condition, "lastProbeTime": "2026-01-01T01:00:00Z"});
    if condition == "Failed" {
        r["filesAdded"] = json!(added);
        r["filesChanged"] = json!(changed);
        r["resultConfigMapName"] = json!(format!("aide-{FI}-{condition}"));
        r["resultConfigMapNamespace"] = json!(NS);
    }
    if condition == "Errored" {
        r["errorMessage"] = json!("open /host/etc: permission denied");
    }
    r
}

/// A node status as the agent writes it (named `<fi>-<node>`, labelled and owned).
fn node_status(
    node: &str,
    result: Option<Value>,
    ack: Option<u64>,
) -> Arc<FileIntegrityNodeStatus> {
    let mut s = json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrityNodeStatus",
        "metadata": {
            "name": format!("{FI}-{node}"), "namespace": NS, "resourceVersion": "700",
            "labels": {"fim.kubefim.io/owner": FI, "fim.kubefim.io/node": node},
            "ownerReferences": [{
                "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
                "name": FI, "uid": "6f1c9a52-0000-4000-8000-000000000001",
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "nodeName": node,
    });
    if let Some(r) = result {
        s["results"] = json!([r.clone()]);
        s["lastResult"] = r;
    }
    if let Some(id) = ack {
        s["metadata"]["annotations"] = json!({ACK_ANNOTATION: id.to_string()});
    }
    Arc::new(serde_json::from_value(s).expect("valid node status"))
}

/// The agent DaemonSet once the DaemonSet controller has observed it.
fn daemonset(desired: i32, ready: i32) -> DaemonSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": format!("fim-agent-{FI}"), "namespace": NS, "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "fim-agent"}},
            "template": {"spec": {"containers": [{"name": "agent"}]}},
        },
        "status": {
            "currentNumberScheduled": desired, "desiredNumberScheduled": desired,
            "numberMisscheduled": 0, "numberReady": ready, "observedGeneration": 1,
        },
    }))
    .expect("valid DaemonSet")
}

fn config_map(name: &str, key: &str, text: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "300"},
        "data": {key: text},
    }))
    .expect("valid ConfigMap")
}

fn observed(fi: FileIntegrity) -> Observed {
    Observed {
        fi: Arc::new(fi),
        now: "2026-01-01T01:00:00Z".parse::<Timestamp>().unwrap(),
        user_config_map: None,
        rendered_config_map: None,
        priority_class: PriorityClassCheck::NotRequested,
        daemonset: None,
        node_statuses: Vec::new(),
        nodes: vec![
            node("node-a", true, json!(null)),
            node("node-b", true, json!(null)),
            node("infra-1", false, json!(null)),
        ],
        gone_nodes: BTreeSet::new(),
        announced: BTreeMap::new(),
        suppressed: BTreeMap::new(),
    }
}

/// `observed` with the status the plan wrote stored on the FileIntegrity, as the next reconcile
/// sees it.
fn after(mut observed: Observed, plan: &Plan) -> Observed {
    let mut fi = (*observed.fi).clone();
    if let Some(update) = &plan.status {
        fi.status = Some(update.status.clone());
    }
    observed.fi = Arc::new(fi);
    observed
}

fn phase_of(plan: &Plan) -> FileIntegrityPhase {
    plan.status.as_ref().expect("a status write").status.phase
}

fn condition<'a>(
    plan: &'a Plan,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let status = &plan.status.as_ref().expect("a status write").status;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", status.conditions))
}

fn nodes(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn a_new_file_integrity_gets_its_rules_and_agents_and_is_pending() {
    let plan = plan(&observed(fi(workers(), json!({}))), &settings()).unwrap();

    let cm = plan.config_map.as_ref().expect("rules ConfigMap");
    assert_eq!(cm.metadata.name.as_deref(), Some("fim-config-worker-fi"));
    assert_eq!(
        cm.data.as_ref().unwrap()["aide.conf"],
        DEFAULT_RULES,
        "no spec.config: the default rules"
    );
    assert_eq!(
        cm.metadata.annotations.as_ref().unwrap()[daemonset::CONFIG_HASH_ANNOTATION],
        config::config_hash(DEFAULT_RULES)
    );
    let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("FileIntegrity", FI, Some(true))
    );
    let ds = plan.daemonset.as_ref().expect("agent DaemonSet");
    assert_eq!(ds.metadata.name, Some(daemonset::daemonset_name(FI)));

    // No DaemonSet observed yet: Pending, announced and counted once.
    assert_eq!(phase_of(&plan), FileIntegrityPhase::Pending);
    let change = plan.status.as_ref().unwrap().phase_change.as_ref().unwrap();
    assert_eq!(change.phase, "Pending");
    assert_eq!(change.error, None);
    assert_eq!(change.event.message.reason, events::PHASE_REASON);
    assert_eq!(change.event.message.message, "Pending");
    assert_eq!(change.event.action, "Pending");
    assert_eq!(condition(&plan, phase::CONFIG_VALID).status, "True");
    assert!(
        plan.reinit.count.is_none() && plan.reinit.events.is_empty(),
        "the first rules need no re-init"
    );
    assert!(plan.deletions.is_empty() && plan.node_events.is_empty());
    assert!(plan.warnings.is_empty());
    assert_eq!(plan.next, Next::After(Duration::from_secs(300)));
}

#[test]
fn the_first_rules_are_recorded_for_later_config_changes() {
    let plan = plan(&observed(fi(workers(), json!({}))), &settings()).unwrap();
    let patch = plan.reinit.patch.as_ref();
    // The digest annotation is written without making a request.
    assert_eq!(
        plan.reinit.step.config_hash.as_deref(),
        Some(config::config_hash(DEFAULT_RULES).as_str())
    );
    assert!(patch.is_some_and(|p| p["metadata"]["resourceVersion"] == "1001"));
    assert!(plan.reinit.events.is_empty() && plan.reinit.count.is_none());
}

#[test]
fn phases_follow_the_agents_reports_and_an_unchanged_status_is_not_written() {
    let hash = config::config_hash(DEFAULT_RULES);
    let base = fi(
        workers(),
        json!({reinit::CONFIG_HASH_ANNOTATION: hash.as_str()}),
    );
    let mut o = observed(base);
    o.daemonset = Some(daemonset(2, 2));

    // One node reported, the other not yet.
    o.node_statuses = vec![node_status("node-a", Some(result("Succeeded", 0, 0)), None)];
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(phase_of(&p), FileIntegrityPhase::Initializing);
    let status = &p.status.as_ref().unwrap().status;
    assert_eq!(
        (status.nodes, status.initializing, status.succeeded),
        (2, 1, 1)
    );
    assert_eq!(
        p.status
            .as_ref()
            .unwrap()
            .phase_change
            .as_ref()
            .unwrap()
            .phase,
        "Initializing"
    );
    assert_eq!(p.reinit.patch, None);

    // Both reported: Active, one transition event.
    let mut o = after(o, &p);
    o.node_statuses
        .push(node_status("node-b", Some(result("Succeeded", 0, 0)), None));
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(phase_of(&p), FileIntegrityPhase::Active);
    let change = p.status.as_ref().unwrap().phase_change.as_ref().unwrap();
    assert_eq!(
        (change.phase, change.event.message.type_),
        ("Active", EventType::Normal)
    );
    assert_eq!(condition(&p, phase::AVAILABLE).status, "True");

    // Nothing new: no status write, no event, no count.
    let o = after(o, &p);
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.status, None);
    assert!(p.daemonset.is_some(), "the DaemonSet is applied every time");

    // `containerRemediations` is the containers step's (its own field manager): neither a
    // reason to write the status nor written with it.
    let mut fi = (*o.fi).clone();
    let record: kube_fim_crds::ContainerRemediationRecord = serde_json::from_value(json!({
        "nodeName": "node-a", "namespace": "team", "pod": "web-1", "podUid": "p1",
        "container": "web", "image": "web:1", "action": "restart",
        "message": "Restart pod web-1", "time": "2026-03-31T10:46:19Z",
    }))
    .unwrap();
    fi.status.as_mut().unwrap().container_remediations = vec![record];
    let mut o = o;
    o.fi = Arc::new(fi);
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.status, None);
    o.node_statuses[1] = node_status("node-b", Some(result("Failed", 0, 1)), None);
    let p = plan(&o, &settings()).unwrap();
    let written = serde_json::to_value(&p.status.as_ref().unwrap().status).unwrap();
    assert!(written.get("containerRemediations").is_none(), "{written}");
}

#[test]
fn a_status_of_an_unselected_node_is_ignored() {
    let mut o = observed(fi(workers(), json!({})));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![node_status("infra-1", Some(result("Failed", 3, 0)), None)];
    let p = plan(&o, &settings()).unwrap();
    assert!(p.node_events.is_empty());
    assert!(p.node_failed.is_empty());
    assert!(p.deletions.is_empty(), "infra-1 exists");
    assert_eq!(p.status.unwrap().status.failed, 0);
}

#[test]
fn a_new_result_is_announced_once_and_sets_the_failed_gauge() {
    let mut o = observed(fi(workers(), json!({})));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![
        node_status("node-a", Some(result("Failed", 1, 2)), None),
        node_status("node-b", Some(result("Succeeded", 0, 0)), None),
    ];
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(
        p.node_failed,
        BTreeMap::from([("node-a".to_owned(), true), ("node-b".to_owned(), false)])
    );
    let failed = &p.node_events[0];
    assert_eq!(failed.node, "node-a");
    assert_eq!(failed.event.message.type_, EventType::Warning);
    assert_eq!(failed.event.message.reason, events::NODE_REASON);
    assert_eq!(
        failed.event.message.message,
        "node node-a has changed! a:1,c:2,r:0 log:kube-fim/aide-worker-fi-Failed"
    );
    assert_eq!(failed.event.action, "Failed-a1-c2-r0");
    assert_eq!(failed.event.node.as_deref(), Some("node-a"));
    let related = failed.event.to_event().secondary.unwrap();
    assert_eq!(
        (related.kind.as_deref(), related.name.as_deref()),
        (Some("Node"), Some("node-a"))
    );
    assert_eq!(
        p.node_events[1].event.message.message,
        "no changes to node node-b"
    );
    // A failed node is a finding, not a malfunction: the phase stays Active.
    assert_eq!(phase_of(&p), FileIntegrityPhase::Active);
    assert_eq!(condition(&p, phase::INTEGRITY_FAILED).status, "True");

    // Once announced, the same results stay silent; a new count is news again.
    o.announced = p
        .node_events
        .iter()
        .map(|e| (e.node.clone(), e.key))
        .collect();
    assert!(plan(&o, &settings()).unwrap().node_events.is_empty());
    o.node_statuses[0] = node_status("node-a", Some(result("Failed", 1, 3)), None);
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.node_events.len(), 1);
    assert_eq!(
        p.node_events[0].key,
        NodeEventKey {
            condition: ScanCondition::Failed,
            added: 1,
            changed: 3,
            removed: 0
        }
    );
}

#[test]
fn the_status_of_a_deleted_node_is_deleted_once_the_api_confirms() {
    let mut o = observed(fi(workers(), json!({})));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![
        node_status("node-a", Some(result("Succeeded", 0, 0)), None),
        node_status("node-gone", Some(result("Failed", 1, 0)), None),
        node_status("node-new", None, None),
    ];
    // node-new is not cached yet but exists: kept.
    o.gone_nodes = nodes(&["node-gone"]);
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(
        p.deletions,
        [Deletion {
            status: "worker-fi-node-gone".into(),
            node: "node-gone".into()
        }]
    );
    assert!(!p.node_failed.contains_key("node-gone"));
    assert!(p.node_events.iter().all(|e| e.node == "node-a"));
}

#[test]
fn bad_rules_keep_the_last_good_ones_and_wait_for_a_change() {
    let good = "ALL = p+u+g+sha256\n/etc ALL\n";
    let bad = "ALL = p+u+g+sha256\n/etc ALL\n/usr NOSUCHGROUP\n";
    let spec = json!({
        "nodeSelector": {"node-role.kubernetes.io/worker": ""},
        "config": {"name": "rules", "key": "aide.conf"},
    });
    let mut o = observed(fi(
        spec,
        json!({reinit::CONFIG_HASH_ANNOTATION: config::config_hash(good)}),
    ));
    o.user_config_map = Some(config_map("rules", "aide.conf", bad));
    o.rendered_config_map = Some(config_map("fim-config-worker-fi", "aide.conf", good));
    o.daemonset = Some(daemonset(2, 2));
    let p = plan(&o, &settings()).unwrap();

    assert_eq!(p.config_map, None, "the last good rules stay");
    assert_eq!(p.config_error.as_ref().unwrap().reason(), "config_invalid");
    assert!(
        p.daemonset.is_some(),
        "agents keep running the last good rules"
    );
    assert_eq!(p.reinit.patch, None, "the effective rules did not change");
    assert_eq!(phase_of(&p), FileIntegrityPhase::Error);
    let valid = condition(&p, phase::CONFIG_VALID);
    assert_eq!(valid.status, "False");
    assert!(
        valid.message.contains("ConfigMap kube-fim/rules"),
        "{}",
        valid.message
    );
    assert!(valid.message.contains("aide.conf:3"), "{}", valid.message);
    let change = p.status.as_ref().unwrap().phase_change.as_ref().unwrap();
    assert_eq!(change.error, Some("config_invalid"));
    assert_eq!(change.event.message.type_, EventType::Warning);
    assert_eq!(p.next, Next::AwaitChange);

    // Fixed with other rules: applied, and a re-init for every selected node.
    let fixed = "ALL = p+u+g+sha256\n/etc ALL\n/usr ALL\n";
    o.user_config_map = Some(config_map("rules", "aide.conf", fixed));
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.config_error, None);
    assert_eq!(p.config_map.unwrap().data.unwrap()["aide.conf"], fixed);
    let (by, targets) = p.reinit.count.unwrap();
    assert_eq!(
        (by, targets),
        (vec!["config"], nodes(&["node-a", "node-b"]))
    );
    assert_eq!(p.next, Next::After(Duration::from_secs(300)));
}

#[test]
fn a_missing_config_map_runs_no_agents_until_it_exists() {
    let spec = json!({"config": {"name": "rules", "key": "aide.conf"}});
    let p = plan(&observed(fi(spec, json!({}))), &settings()).unwrap();
    let error = p.config_error.as_ref().unwrap();
    assert_eq!(error.reason(), "config_not_found");
    assert_eq!(
        error.to_string(),
        "config ConfigMap kube-fim/rules not found"
    );
    assert_eq!(
        (p.config_map.is_none(), p.daemonset.is_none()),
        (true, true)
    );
    assert_eq!(phase_of(&p), FileIntegrityPhase::Error);
    assert_eq!(p.next, Next::AwaitChange);

    // A key that is not there.
    let mut o = observed(fi(
        json!({"config": {"name": "rules", "key": "aide.conf"}}),
        json!({}),
    ));
    o.user_config_map = Some(config_map("rules", "other.conf", "/etc ALL\n"));
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.config_error.unwrap().reason(), "config_key_missing");

    // A ConfigMap in a namespace the operator does not watch: looked at again periodically.
    let spec = json!({"config": {"name": "rules", "namespace": "elsewhere", "key": "aide.conf"}});
    let p = plan(&observed(fi(spec, json!({}))), &settings()).unwrap();
    assert_eq!(p.next, Next::After(Duration::from_secs(300)));
}

#[test]
fn a_missing_priority_class_warns_once_and_the_agents_run_without_it() {
    let spec = json!({"priorityClassName": "fim-critical"});
    let mut o = observed(fi(spec, json!({})));
    o.priority_class = PriorityClassCheck::Missing("fim-critical".into());
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.warnings.len(), 1);
    let warning = &p.warnings[0];
    assert_eq!(warning.message.reason, events::PRIORITY_CLASS_REASON);
    assert_eq!(warning.message.type_, EventType::Warning);
    assert_eq!(warning.action, "PriorityClassNotFound-fim-critical");
    let pod = p.daemonset.as_ref().unwrap().spec.as_ref().unwrap();
    assert_eq!(
        pod.template.spec.as_ref().unwrap().priority_class_name,
        None
    );
    assert_eq!(condition(&p, phase::PRIORITY_CLASS_FOUND).status, "False");

    // Already said in the status: no second warning.
    let o = after(o, &p);
    assert!(plan(&o, &settings()).unwrap().warnings.is_empty());

    // Created: the agents get it.
    let mut o = o;
    o.priority_class = PriorityClassCheck::Found("fim-critical".into());
    let p = plan(&o, &settings()).unwrap();
    let pod = p.daemonset.as_ref().unwrap().spec.as_ref().unwrap();
    assert_eq!(
        pod.template
            .spec
            .as_ref()
            .unwrap()
            .priority_class_name
            .as_deref(),
        Some("fim-critical")
    );
    assert_eq!(condition(&p, phase::PRIORITY_CLASS_FOUND).status, "True");
}

#[test]
fn the_reinit_annotation_becomes_a_request_that_completes_when_acknowledged() {
    let hash = config::config_hash(DEFAULT_RULES);
    let annotations = json!({
        reinit::CONFIG_HASH_ANNOTATION: hash.as_str(),
        labels::REINIT: "node-a, node-b, node-x",
    });
    let mut o = observed(fi(workers(), annotations.clone()));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![
        node_status("node-a", Some(result("Succeeded", 0, 0)), None),
        node_status("node-b", Some(result("Succeeded", 0, 0)), None),
    ];
    let p = plan(&o, &settings()).unwrap();
    let patch = p.reinit.patch.as_ref().unwrap();
    assert_eq!(patch["metadata"]["resourceVersion"], "1001");
    let recorded: ReinitRequest = serde_json::from_str(
        patch["metadata"]["annotations"][REQUEST_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    // The first id is the observation time in milliseconds: the operator's, not an agent's.
    let id = u64::try_from(o.now.as_millisecond()).unwrap();
    assert_eq!(
        (recorded.id, &recorded.nodes, recorded.done),
        (id, &nodes(&["node-a", "node-b"]), false)
    );
    assert_eq!(
        p.reinit.count,
        Some((vec!["node"], nodes(&["node-a", "node-b"])))
    );
    let reasons: Vec<(&str, &str)> = p
        .reinit
        .events
        .iter()
        .map(|e| (e.message.reason, e.action.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                events::REINIT_REASON,
                format!("ReinitRequest-{id}").as_str()
            ),
            (
                events::REINIT_UNKNOWN_REASON,
                format!("ReinitUnknownNodes-{id}").as_str()
            )
        ]
    );
    // Both nodes re-create their baseline: Initializing despite their old results.
    assert_eq!(phase_of(&p), FileIntegrityPhase::Initializing);

    // Recorded; node-a acknowledged: still waiting for node-b, nothing to write.
    let mut annotations = annotations;
    annotations[REQUEST_ANNOTATION] = json!(recorded.to_annotation());
    let mut o = after(o, &p);
    let status = o.fi.status.clone();
    let mut next = fi(workers(), annotations);
    next.status = status;
    o.fi = Arc::new(next);
    o.node_statuses[0] = node_status("node-a", Some(result("Succeeded", 0, 0)), Some(id));
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.reinit.patch, None);
    assert_eq!(p.reinit.step.pending, nodes(&["node-b"]));
    assert_eq!(p.status.as_ref().unwrap().status.initializing, 1);

    // Both acknowledged: done, the user's annotation removed, Active again.
    o.node_statuses[1] = node_status("node-b", Some(result("Succeeded", 0, 0)), Some(id));
    let p = plan(&o, &settings()).unwrap();
    let patch = p.reinit.patch.as_ref().unwrap();
    assert_eq!(
        patch["metadata"]["annotations"][labels::REINIT],
        Value::Null
    );
    let done: ReinitRequest = serde_json::from_str(
        patch["metadata"]["annotations"][REQUEST_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(done.done);
    assert!(p.reinit.events.is_empty() && p.reinit.count.is_none());
    assert_eq!(phase_of(&p), FileIntegrityPhase::Active);
}

#[test]
fn re_init_on_failed_re_baselines_only_the_failed_node_and_removes_the_annotation() {
    let hash = config::config_hash(DEFAULT_RULES);
    let annotations = json!({
        reinit::CONFIG_HASH_ANNOTATION: hash.as_str(),
        labels::REINIT_ON_FAILED: "",
    });
    let mut o = observed(fi(workers(), annotations));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![
        node_status("node-a", Some(result("Succeeded", 0, 0)), None),
        node_status("node-b", Some(result("Failed", 0, 1)), None),
    ];
    let p = plan(&o, &settings()).unwrap();
    let annotations = &p.reinit.patch.as_ref().unwrap()["metadata"]["annotations"];
    assert_eq!(annotations[labels::REINIT_ON_FAILED], Value::Null);
    let recorded: ReinitRequest =
        serde_json::from_str(annotations[REQUEST_ANNOTATION].as_str().unwrap()).unwrap();
    assert_eq!(recorded.nodes, nodes(&["node-b"]));
    assert_eq!(p.reinit.count, Some((vec!["failed"], nodes(&["node-b"]))));
    let reasons: Vec<&str> = p.reinit.events.iter().map(|e| e.message.reason).collect();
    assert_eq!(
        reasons,
        [
            events::REINIT_REASON,
            events::REINIT_ACCEPTS_FINDINGS_REASON
        ]
    );
    assert!(
        p.reinit.events[0]
            .message
            .message
            .contains("re-init-on-failed"),
        "{:?}",
        p.reinit.events[0]
    );
    // Only node-b re-baselines.
    assert_eq!(p.reinit.step.pending, nodes(&["node-b"]));
    assert_eq!(p.status.as_ref().unwrap().status.initializing, 1);

    // Nothing Failed: the annotation goes with a Normal event saying so.
    let mut o = observed(fi(
        workers(),
        json!({reinit::CONFIG_HASH_ANNOTATION: hash.as_str(), labels::REINIT_ON_FAILED: ""}),
    ));
    o.node_statuses = vec![node_status("node-a", Some(result("Succeeded", 0, 0)), None)];
    let p = plan(&o, &settings()).unwrap();
    let annotations = &p.reinit.patch.as_ref().unwrap()["metadata"]["annotations"];
    assert_eq!(annotations[labels::REINIT_ON_FAILED], Value::Null);
    assert!(annotations.get(REQUEST_ANNOTATION).is_none());
    assert_eq!(p.reinit.events.len(), 1);
    assert_eq!(
        p.reinit.events[0].message.reason,
        events::REINIT_NO_FAILED_REASON
    );
    assert_eq!(p.reinit.count, None);
}

#[test]
fn a_tainted_node_without_toleration_is_no_reinit_target() {
    let hash = config::config_hash(DEFAULT_RULES);
    let mut o = observed(fi(
        workers(),
        json!({reinit::CONFIG_HASH_ANNOTATION: hash.as_str(), labels::REINIT: ""}),
    ));
    o.nodes[1] = node(
        "node-b",
        true,
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    );
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.reinit.count, Some((vec!["demand"], nodes(&["node-a"]))));
}

#[test]
fn the_initial_delay_postpones_the_daemonset() {
    let spec = json!({"config": {"initialDelay": 3700}});
    let mut o = observed(fi(spec, json!({})));
    // An agent DaemonSet that exists does not count while the delay runs.
    o.daemonset = Some(daemonset(2, 2));
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.daemonset, None);
    assert!(p.config_map.is_some(), "the rules are written at once");
    assert_eq!(phase_of(&p), FileIntegrityPhase::Pending);
    // Created an hour ago: 100 s left, woken a second after.
    assert_eq!(p.next, Next::After(Duration::from_secs(101)));

    let spec = json!({"config": {"initialDelay": 86400}});
    let p = plan(&observed(fi(spec, json!({}))), &settings()).unwrap();
    assert_eq!(
        p.next,
        Next::After(Duration::from_secs(300)),
        "at most the resync"
    );
}

#[test]
fn an_unusable_file_integrity_is_an_error() {
    let mut fi = fi(workers(), json!({}));
    fi.metadata.uid = None;
    assert!(matches!(
        plan(&observed(fi), &settings()),
        Err(Error::MissingObjectKey("metadata.uid"))
    ));
    let broken = fi_with_request("{not json");
    assert!(matches!(
        plan(&observed(broken), &settings()),
        Err(Error::InvalidReinitRequest(_))
    ));
}

fn fi_with_request(value: &str) -> FileIntegrity {
    fi(workers(), json!({REQUEST_ANNOTATION: value}))
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
    let key = |condition, added| NodeEventKey {
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
    let max = node_event_action(&NodeEventKey {
        condition: ScanCondition::Succeeded,
        added: i64::MIN,
        changed: i64::MIN,
        removed: i64::MIN,
    });
    assert!(max.len() <= 128, "{max}");
    assert_eq!(truncate_action("é".repeat(100)).len(), 128);
}

#[test]
fn nodes_are_counted_by_canonical_status_and_missing_ones_are_created() {
    // Issue 10 item 1. node-a's agent planted `<fi>-node-b` saying node-a (and something under
    // an arbitrary name): before, both counted as results, node-b looked Succeeded and the
    // FileIntegrity Active without node-b ever reporting.
    let hash = config::config_hash(DEFAULT_RULES);
    let mut o = observed(fi(
        workers(),
        json!({reinit::CONFIG_HASH_ANNOTATION: hash.as_str()}),
    ));
    o.daemonset = Some(daemonset(2, 2));
    let planted = |name: &str| {
        let mut s = (*node_status("node-a", Some(result("Succeeded", 0, 0)), None)).clone();
        s.metadata.name = Some(name.into());
        Arc::new(s)
    };
    o.node_statuses = vec![
        node_status("node-a", Some(result("Succeeded", 0, 0)), None),
        planted("worker-fi-node-b"),
        planted("junk-1"),
    ];
    let p = plan(&o, &settings()).unwrap();
    let status = &p.status.as_ref().unwrap().status;
    assert_eq!(
        (status.nodes, status.succeeded, status.initializing),
        (2, 1, 1),
        "node-b has not reported"
    );
    assert_eq!(phase_of(&p), FileIntegrityPhase::Initializing);
    // node-b's objects are the operator's to create (its agent may only update them).
    let created: Vec<&str> = p.creations.iter().map(|c| c.node.as_str()).collect();
    assert_eq!(created, ["node-b"]);
    let c = &p.creations[0];
    assert_eq!(c.status.metadata.name.as_deref(), Some("worker-fi-node-b"));
    assert_eq!(c.status.spec.node_name, "node-b");
    assert_eq!(
        c.failure_config_map.metadata.name.as_deref(),
        Some("worker-fi-node-b-failed")
    );

    // Before the DaemonSet exists nothing is created.
    let mut o = observed(fi(workers(), json!({"x": "y"})));
    o.fi = Arc::new(fi(
        json!({"nodeSelector": {"node-role.kubernetes.io/worker": ""}, "config": {"initialDelay": 3700}}),
        json!({}),
    ));
    assert!(plan(&o, &settings()).unwrap().creations.is_empty());
}

#[test]
fn a_node_silent_for_twice_the_grace_period_is_stale() {
    // Issue 10, item 4: before, a node whose agent stopped reporting kept its last result for
    // ever, with nothing to alert on.
    let hash = config::config_hash(DEFAULT_RULES);
    let spec = json!({"nodeSelector": {"node-role.kubernetes.io/worker": ""}, "config": {"gracePeriod": 60}});
    let mut o = observed(fi(
        spec,
        json!({reinit::CONFIG_HASH_ANNOTATION: hash.as_str()}),
    ));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![
        node_status("node-a", Some(result("Succeeded", 0, 0)), None),
        node_status("node-b", Some(result("Errored", 0, 0)), None),
    ];
    // Results at 01:00:00; 120 s later both are still fresh, and the plan looks again when
    // they would turn stale.
    o.now = "2026-01-01T01:02:00Z".parse().unwrap();
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(condition(&p, phase::NODES_STALE).status, "False");
    assert_eq!(
        p.node_stale,
        BTreeMap::from([("node-a".into(), false), ("node-b".into(), false)])
    );
    assert_eq!(p.next, Next::After(Duration::from_secs(1)));
    assert!(p.node_errored["node-b"]);
    assert!(!p.node_errored["node-a"]);

    // One second later both are stale: condition, gauge.
    o.now = "2026-01-01T01:02:01Z".parse().unwrap();
    let p = plan(&o, &settings()).unwrap();
    let c = condition(&p, phase::NODES_STALE);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "NoRecentResult")
    );
    assert!(c.message.contains("node-a, node-b"), "{}", c.message);
    assert_eq!(
        p.node_stale,
        BTreeMap::from([("node-a".into(), true), ("node-b".into(), true)])
    );
    assert_eq!(p.next, Next::After(settings().resync));

    // A node re-creating its baseline is initialising, not stale.
    let s = phase::staleness(
        &[(*o.node_statuses[0]).clone()],
        60,
        &nodes(&["node-a"]),
        o.now,
    );
    assert!(s.stale.is_empty());
}

#[test]
fn a_rule_change_names_the_failed_nodes_whose_findings_it_accepts() {
    // Issue 10, item 8: before, a config change re-baselined a Failed node with only a Normal
    // "re-init request" event: its findings were laundered into the new baseline unnoticed.
    let mut o = observed(fi(
        workers(),
        json!({reinit::CONFIG_HASH_ANNOTATION: "old-rules"}),
    ));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![
        node_status("node-a", Some(result("Failed", 1, 2)), None),
        node_status("node-b", Some(result("Succeeded", 0, 0)), None),
    ];
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(p.reinit.count.as_ref().unwrap().0, ["config"]);
    let accepted: Vec<&PlannedEvent> = p
        .reinit
        .events
        .iter()
        .filter(|e| e.message.reason == events::REINIT_ACCEPTS_FINDINGS_REASON)
        .collect();
    assert_eq!(accepted.len(), 1, "{:?}", p.reinit.events);
    assert_eq!(accepted[0].message.type_, EventType::Warning);
    assert!(accepted[0].message.message.contains("node-a"));
    assert!(!accepted[0].message.message.contains("node-b"));

    // No Failed node: no such warning.
    o.node_statuses[0] = node_status("node-a", Some(result("Succeeded", 0, 0)), None);
    let p = plan(&o, &settings()).unwrap();
    assert!(
        p.reinit
            .events
            .iter()
            .all(|e| e.message.reason != events::REINIT_ACCEPTS_FINDINGS_REASON)
    );
}

/// A node status carrying `digest` as its baselineDigest.
fn with_digest(status: Arc<FileIntegrityNodeStatus>, digest: &str) -> Arc<FileIntegrityNodeStatus> {
    let mut s = (*status).clone();
    s.spec.baseline_digest = Some(digest.into());
    Arc::new(s)
}

#[test]
fn a_baseline_replaced_without_a_reinit_makes_the_node_errored_with_an_event() {
    // Issue 10, item 2: before, the operator kept no record of a node's baseline, so root on
    // the node could replace the database and the digest in its status unnoticed.
    let hash = config::config_hash(DEFAULT_RULES);
    let mut o = observed(fi(
        workers(),
        json!({reinit::CONFIG_HASH_ANNOTATION: hash.as_str()}),
    ));
    o.daemonset = Some(daemonset(2, 2));
    // The operator creates the objects of nodes without a status: empty anchors await them.
    let p = plan(&o, &settings()).unwrap();
    let baselines = &p.status.as_ref().unwrap().status.baselines;
    assert_eq!(
        baselines,
        &[
            kube_fim_crds::BaselineAnchor::awaiting("node-a"),
            kube_fim_crds::BaselineAnchor::awaiting("node-b"),
        ]
    );
    // Their first baselines are recorded.
    let mut o = after(o, &p);
    o.node_statuses = vec![
        with_digest(
            node_status("node-a", Some(result("Succeeded", 0, 0)), None),
            "d-a",
        ),
        with_digest(
            node_status("node-b", Some(result("Succeeded", 0, 0)), None),
            "d-b",
        ),
    ];
    let p = plan(&o, &settings()).unwrap();
    let status = &p.status.as_ref().unwrap().status;
    assert_eq!(status.baselines[0].digest.as_deref(), Some("d-a"));
    assert_eq!((status.succeeded, status.errored), (2, 0));
    assert!(p.anchor_events.is_empty());
    assert_eq!(condition(&p, phase::BASELINE_REPLACED).status, "False");

    // Node b now reports another database, its own result still Succeeded.
    let mut o = after(o, &p);
    o.node_statuses[1] = with_digest(
        node_status("node-b", Some(result("Succeeded", 0, 0)), None),
        "forged",
    );
    let p = plan(&o, &settings()).unwrap();
    let status = &p.status.as_ref().unwrap().status;
    assert_eq!((status.succeeded, status.errored), (1, 1));
    assert_eq!(status.baselines[1].digest.as_deref(), Some("d-b"));
    assert_eq!(
        status.baselines[1].rejected_digest.as_deref(),
        Some("forged")
    );
    let c = condition(&p, phase::BASELINE_REPLACED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "BaselineReplaced")
    );
    assert!(c.message.contains("node-b"), "{}", c.message);
    assert!(p.node_errored["node-b"] && !p.node_errored["node-a"]);
    assert!(p.baseline_replaced["node-b"] && !p.baseline_replaced["node-a"]);
    assert_eq!(p.anchor_events.len(), 1);
    let e = &p.anchor_events[0];
    assert_eq!(e.message.reason, events::BASELINE_REPLACED_REASON);
    assert_eq!(e.message.type_, EventType::Warning);
    assert_eq!(e.node.as_deref(), Some("node-b"));
    assert!(
        e.message.message.contains("forged") && e.message.message.contains("d-b"),
        "{}",
        e.message.message
    );

    // Stored: still Errored, no second event.
    let o = after(o, &p);
    let p = plan(&o, &settings()).unwrap();
    assert!(p.baseline_replaced["node-b"]);
    assert!(p.anchor_events.is_empty());

    // A re-init for node b, acknowledged with a new digest, records it and clears the node.
    let request = ReinitRequest {
        id: 7,
        annotation: Some("node-b".into()),
        nodes: nodes(&["node-b"]),
        done: false,
    };
    let mut fi = (*o.fi).clone();
    fi.metadata
        .annotations
        .get_or_insert_default()
        .insert(REQUEST_ANNOTATION.into(), request.to_annotation());
    let mut o = o;
    o.fi = Arc::new(fi);
    o.node_statuses[1] = with_digest(
        node_status("node-b", Some(result("Succeeded", 0, 0)), Some(7)),
        "d-b2",
    );
    let p = plan(&o, &settings()).unwrap();
    let status = &p.status.as_ref().unwrap().status;
    assert_eq!((status.succeeded, status.errored), (2, 0));
    assert_eq!(status.baselines[1].digest.as_deref(), Some("d-b2"));
    assert_eq!(status.baselines[1].reinit_id, Some(7));
    assert_eq!(status.baselines[1].rejected_digest, None);
    assert!(!p.baseline_replaced["node-b"]);
}

#[test]
fn a_node_first_seen_with_a_baseline_is_not_adopted() {
    // No anchor (lost, or the node had a baseline before the operator saw it): nothing is
    // adopted silently.
    let hash = config::config_hash(DEFAULT_RULES);
    let mut o = observed(fi(
        workers(),
        json!({reinit::CONFIG_HASH_ANNOTATION: hash.as_str()}),
    ));
    o.daemonset = Some(daemonset(2, 2));
    o.node_statuses = vec![
        with_digest(
            node_status("node-a", Some(result("Succeeded", 0, 0)), None),
            "d-a",
        ),
        node_status("node-b", None, None),
    ];
    let p = plan(&o, &settings()).unwrap();
    assert!(p.baseline_replaced["node-a"]);
    assert!(!p.baseline_replaced["node-b"]);
    assert!(
        p.anchor_events[0]
            .message
            .message
            .contains("holds no record"),
        "{:?}",
        p.anchor_events
    );
}

#[test]
fn a_suppressed_container_remediation_is_a_condition_for_the_window() {
    // Issue 14: the backoff's RemediationSuppressed shows on the FileIntegrity, not only in an
    // event, and clears once the window has passed.
    let hash = config::config_hash(DEFAULT_RULES);
    let spec = json!({"nodeSelector": {"node-role.kubernetes.io/worker": ""},
                      "containers": {"enabled": true, "maxRemediations": 3,
                                     "remediationWindowSeconds": 600}});
    let mut o = observed(fi(
        spec,
        json!({reinit::CONFIG_HASH_ANNOTATION: hash.as_str()}),
    ));
    o.daemonset = Some(daemonset(2, 2));
    let p = plan(&o, &settings()).unwrap();
    let c = condition(&p, phase::REMEDIATION_SUPPRESSED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "WithinLimit")
    );

    let at = o.now.as_second() - 100;
    o.suppressed = BTreeMap::from([("team/ReplicaSet/web-6d4f".to_owned(), at)]);
    let p = plan(&o, &settings()).unwrap();
    let c = condition(&p, phase::REMEDIATION_SUPPRESSED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "TooManyRemediations")
    );
    assert_eq!(
        c.message,
        "remediation suppressed for team/ReplicaSet/web-6d4f: 3 remediations within 600s already"
    );
    // Looked at again when it leaves the window (500 s on), before the 300 s resync anyway.
    assert_eq!(p.next, Next::After(settings().resync));
    o.suppressed = BTreeMap::from([(
        "team/ReplicaSet/web-6d4f".to_owned(),
        o.now.as_second() - 500,
    )]);
    assert_eq!(
        plan(&o, &settings()).unwrap().next,
        Next::After(Duration::from_secs(101))
    );

    o.suppressed = BTreeMap::from([(
        "team/ReplicaSet/web-6d4f".to_owned(),
        o.now.as_second() - 600,
    )]);
    let p = plan(&o, &settings()).unwrap();
    assert_eq!(condition(&p, phase::REMEDIATION_SUPPRESSED).status, "False");

    // Without container monitoring there is no such condition.
    let mut o = observed(fi(
        workers(),
        json!({reinit::CONFIG_HASH_ANNOTATION: hash.as_str()}),
    ));
    o.daemonset = Some(daemonset(2, 2));
    o.suppressed = BTreeMap::from([("team/ReplicaSet/web-6d4f".to_owned(), 0)]);
    let p = plan(&o, &settings()).unwrap();
    assert!(
        p.status
            .as_ref()
            .unwrap()
            .status
            .conditions
            .iter()
            .all(|c| c.type_ != phase::REMEDIATION_SUPPRESSED)
    );
}
