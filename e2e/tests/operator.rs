//! fim-operator against the local control plane: the real binary runs as a child process
//! watching a test namespace. Build it first: `cargo build -p kube-fim-operator` (`make e2e`
//! does).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Taint};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kube_fim_crds::reinit::{ACK_ANNOTATION, ReinitRequest};
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, FileIntegrityPhase, labels};
use kube_fim_e2e::fixtures::*;
use kube_fim_e2e::{Poll, client, client_with_token, kubeconfig_path, pod_bound_token, wait_for};
use serde_json::json;

#[tokio::test]
async fn operator_runs_agents_on_selected_nodes_and_reports_phases() {
    let client = client().await.unwrap();
    let all = kube_fim_e2e::kwok_nodes(&client).await.unwrap();
    assert!(
        all.len() >= 3,
        "cluster-up starts 3 kwok nodes, found {all:?}"
    );
    let ns = namespace_with_agent_account(&client, "op-nodes").await;
    let label = format!("e2e.kubefim.io/{}", ns.name);
    let selected = all[..2].to_vec();
    label_nodes(&client, &selected, &label, Some("yes")).await;

    let operator = Operator::start(&ns.name);
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    fis.create(
        &PostParams::default(),
        &file_integrity(
            "nodes",
            json!({"nodeSelector": {label.clone(): "yes"}, "config": {"gracePeriod": 20}}),
        ),
    )
    .await
    .unwrap();

    // Agents run on exactly the two labelled nodes.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        &format!("agent pods Running on {selected:?}"),
        WAIT,
        || async {
            let list = pods
                .list(&ListParams::default().labels("fim.kubefim.io/owner=nodes"))
                .await?;
            let mut running: Vec<String> = list
                .items
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| p.spec.and_then(|s| s.node_name))
                .collect();
            running.sort();
            Ok(if running == selected {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("running on {running:?}"))
            })
        },
    )
    .await
    .unwrap();

    // No agent writes node statuses yet: both nodes stay initialising.
    let fi = wait_for_fi(&fis, "nodes", "phase Initializing with 2 nodes", |fi| {
        phase(fi) == Some(FileIntegrityPhase::Initializing)
            && fi.status.as_ref().is_some_and(|s| s.nodes == 2)
    })
    .await;
    let status = fi.status.unwrap();
    assert_eq!(status.initializing, 2, "{status:?}");
    assert_eq!(status.observed_generation, fi.metadata.generation);

    // The phase went Pending → Initializing, each announced by a FileIntegrityStatus event.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "FileIntegrityStatus events Pending and Initializing",
        WAIT,
        || async {
            let mut list: Vec<Event> = events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("FileIntegrityStatus")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("nodes")
                })
                .collect();
            list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
            let notes: Vec<String> = list.into_iter().filter_map(|e| e.note).collect();
            Ok(if notes == ["Pending", "Initializing"] {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("events: {notes:?}"))
            })
        },
    )
    .await
    .unwrap();

    // The effective rules ConfigMap holds the default rules and is owned by the FileIntegrity.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let cm = cms.get("fim-config-nodes").await.unwrap();
    assert!(
        cm.data
            .as_ref()
            .and_then(|d| d.get("aide.conf"))
            .is_some_and(|t| !t.is_empty()),
        "{cm:?}"
    );
    let owners = cm.metadata.owner_references.unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|o| o.kind == "FileIntegrity" && o.name == "nodes"),
        "{owners:?}"
    );

    // Health and metrics.
    let (code, _) = operator.get("/healthz").await.unwrap();
    assert_eq!(code, 200);
    // Ready once the controller's caches have synced (signalled asynchronously).
    wait_for(
        "the operator to report ready",
        Duration::from_secs(30),
        || async {
            let (code, body) = operator.get("/readyz").await?;
            Ok(if code == 200 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{code} {body}"))
            })
        },
    )
    .await
    .unwrap();
    let (code, metrics) = operator.get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    for want in [
        "file_integrity_operator_phase_total{phase=\"Pending\"} 1",
        "file_integrity_operator_phase_total{phase=\"Initializing\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} missing from:\n{metrics}");
    }

    drop(operator);
    label_nodes(&client, &selected, &label, None).await;
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_bad_config_line_puts_the_file_integrity_in_error_until_fixed() {
    let client = client().await.unwrap();
    let ns = namespace_with_agent_account(&client, "op-config").await;
    let _operator = Operator::start(&ns.name);

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let rules = |text: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some("rules".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "aide.conf".to_string(),
            text.to_string(),
        )])),
        ..Default::default()
    };
    let bad = "ALL = p+u+g+sha256\n/etc ALL\n/usr NOSUCHGROUP\n";
    let good = "ALL = p+u+g+sha256\n/etc ALL\n/usr ALL\n";
    cms.create(&PostParams::default(), &rules(bad))
        .await
        .unwrap();

    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    // Selects no node: this test is about the rules only.
    fis.create(
        &PostParams::default(),
        &file_integrity(
            "cfg",
            json!({
                "nodeSelector": {format!("e2e.kubefim.io/{}", ns.name): "none"},
                "config": {"name": "rules", "key": "aide.conf"},
            }),
        ),
    )
    .await
    .unwrap();

    let fi = wait_for_fi(&fis, "cfg", "phase Error", |fi| {
        phase(fi) == Some(FileIntegrityPhase::Error)
    })
    .await;
    let valid = condition(&fi, "ConfigValid").expect("ConfigValid condition");
    assert_eq!(valid.status, "False", "{valid:?}");
    assert!(
        valid.message.contains("aide.conf:3"),
        "the message names the line: {}",
        valid.message
    );
    assert!(
        valid.message.contains(&format!("{}/rules", ns.name)),
        "the message names the ConfigMap: {}",
        valid.message
    );
    // Never valid, so nothing was rendered for the agents.
    assert!(cms.get_opt("fim-config-cfg").await.unwrap().is_none());

    // Fixing the user's ConfigMap is noticed without touching the FileIntegrity.
    cms.replace("rules", &PostParams::default(), &rules(good))
        .await
        .unwrap();
    let fi = wait_for_fi(&fis, "cfg", "phase no longer Error", |fi| {
        phase(fi).is_some_and(|p| p != FileIntegrityPhase::Error)
    })
    .await;
    assert_eq!(
        condition(&fi, "ConfigValid").map(|c| c.status.as_str()),
        Some("True")
    );
    let rendered = |cm: ConfigMap| cm.data.and_then(|mut d| d.remove("aide.conf"));
    assert_eq!(
        rendered(cms.get("fim-config-cfg").await.unwrap()).as_deref(),
        Some(good)
    );

    // Breaking it again keeps the last good rules for the agents.
    cms.replace("rules", &PostParams::default(), &rules(bad))
        .await
        .unwrap();
    wait_for_fi(&fis, "cfg", "phase Error again", |fi| {
        phase(fi) == Some(FileIntegrityPhase::Error)
    })
    .await;
    assert_eq!(
        rendered(cms.get("fim-config-cfg").await.unwrap()).as_deref(),
        Some(good)
    );

    ns.delete().await.unwrap();
}

/// A node status as the agent writes it: server-side apply by the agent's field manager,
/// named `<fi>-<node>`, labelled with and owned by the FileIntegrity.
async fn apply_node_status(
    statuses: &Api<FileIntegrityNodeStatus>,
    fi: &FileIntegrity,
    node: &str,
    result: serde_json::Value,
) {
    let fi_name = fi.metadata.name.as_deref().unwrap();
    let name = FileIntegrityNodeStatus::name_for(fi_name, node);
    let body = json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrityNodeStatus",
        "metadata": {
            "name": name,
            "labels": {labels::OWNER: fi_name, labels::NODE: node},
            "ownerReferences": [{
                "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
                "name": fi_name, "uid": fi.metadata.uid.as_deref().unwrap(),
            }],
        },
        "nodeName": node,
        "results": [result.clone()],
        "lastResult": result,
    });
    statuses
        .patch(
            &name,
            &PatchParams::apply(labels::AGENT_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}

/// Waits until the operator's `/metrics` contains `want`.
#[tokio::test]
async fn node_results_become_events_and_metrics_and_leave_with_their_node() {
    let client = client().await.unwrap();
    let all = kube_fim_e2e::kwok_nodes(&client).await.unwrap();
    assert!(!all.is_empty(), "cluster-up starts kwok nodes");
    let ns = namespace_with_agent_account(&client, "op-results").await;
    let label = format!("e2e.kubefim.io/{}", ns.name);
    let node = all[0].clone();
    label_nodes(&client, std::slice::from_ref(&node), &label, Some("yes")).await;

    let mut operator = Operator::start(&ns.name);
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    let fi = fis
        .create(
            &PostParams::default(),
            &file_integrity("res", json!({"nodeSelector": {label.clone(): "yes"}})),
        )
        .await
        .unwrap();

    // A Failed result, as the agent writes it.
    let statuses: Api<FileIntegrityNodeStatus> = Api::namespaced(client.clone(), &ns.name);
    let log = format!("res-{node}-failed");
    apply_node_status(
        &statuses,
        &fi,
        &node,
        json!({
            "condition": "Failed", "lastProbeTime": "2026-01-01T00:00:00Z",
            "filesAdded": 1, "filesChanged": 1,
            "resultConfigMapName": log, "resultConfigMapNamespace": ns.name,
        }),
    )
    .await;

    // A Warning NodeIntegrityStatus event in the file-integrity-operator's wording.
    let want = format!("node {node} has changed! a:1,c:1,r:0 log:{}/{log}", ns.name);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    wait_for(&format!("event {want:?}"), WAIT, || async {
        let notes: Vec<(Option<String>, Option<String>)> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some("NodeIntegrityStatus")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("res")
            })
            .map(|e| (e.type_, e.note))
            .collect();
        Ok(
            if notes.contains(&(Some("Warning".to_owned()), Some(want.clone()))) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("NodeIntegrityStatus events: {notes:?}"))
            },
        )
    })
    .await
    .unwrap();

    // The gauge, and again after a restart of the operator (rebuilt from the node statuses).
    let gauge = format!("file_integrity_operator_node_failed{{node=\"{node}\"}} 1");
    wait_for_metric(&operator, &gauge).await;
    wait_for_metric(
        &operator,
        &format!(
            "file_integrity_operator_node_status_total{{condition=\"Failed\",node=\"{node}\"}} 1"
        ),
    )
    .await;
    drop(operator);
    operator = Operator::start(&ns.name);
    wait_for("operator ready after restart", WAIT, || async {
        let (code, _) = operator.get("/readyz").await.unwrap_or((0, String::new()));
        Ok(if code == 200 {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("/readyz: {code}"))
        })
    })
    .await
    .unwrap();
    wait_for_metric(&operator, &gauge).await;

    // The status of a node that is deleted goes with it. The node is not kwok-managed (no
    // kwok.x-k8s.io/node annotation): a plain Node object.
    let gone = format!("e2e-gone-{}", ns.name);
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &Node {
                metadata: ObjectMeta {
                    name: Some(gone.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    apply_node_status(
        &statuses,
        &fi,
        &gone,
        json!({"condition": "Succeeded", "lastProbeTime": "2026-01-01T00:00:00Z"}),
    )
    .await;
    let gone_status = FileIntegrityNodeStatus::name_for("res", &gone);
    // Kept while the node exists (give the operator a reconcile to get it wrong).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        statuses.get_opt(&gone_status).await.unwrap().is_some(),
        "the status of an existing node is kept"
    );
    nodes.delete(&gone, &DeleteParams::default()).await.unwrap();
    wait_for(
        &format!("node status {gone_status} deleted"),
        WAIT,
        || async {
            Ok(match statuses.get_opt(&gone_status).await? {
                None => Poll::Ready(()),
                Some(s) => Poll::Pending(format!("still there: {:?}", s.spec)),
            })
        },
    )
    .await
    .unwrap();
    // The selected node's status stays.
    assert!(
        statuses
            .get_opt(&FileIntegrityNodeStatus::name_for("res", &node))
            .await
            .unwrap()
            .is_some()
    );

    drop(operator);
    label_nodes(&client, std::slice::from_ref(&node), &label, None).await;
    ns.delete().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Agents as they will run: statuses written with a token bound to the agent pod on the node.

/// The RBAC the agent needs in its namespace (the deploy manifests grant the same): its node
/// status (server-side apply), its failure ConfigMap, events, and reading its FileIntegrity and
/// rules.
/// The agent on one node: a client authenticated with a token bound to its pod.
struct Agent {
    node: String,
    statuses: Api<FileIntegrityNodeStatus>,
}

impl Agent {
    async fn on(client: &Client, ns: &str, node: &str, pod: &Pod) -> Agent {
        let token = pod_bound_token(client, ns, "fim-agent", pod).await.unwrap();
        let agent = client_with_token(&token).await.unwrap();
        Agent {
            node: node.to_owned(),
            statuses: Api::namespaced(agent, ns),
        }
    }

    /// Writes the node status as the agent does: server-side apply by `fim-agent`, named
    /// `<fi>-<node>`, labelled with and owned by the FileIntegrity; `ack` is the last re-init
    /// request it completed.
    async fn report(&self, fi: &FileIntegrity, result: serde_json::Value, ack: Option<u64>) {
        let fi_name = fi.metadata.name.as_deref().unwrap();
        let name = FileIntegrityNodeStatus::name_for(fi_name, &self.node);
        let mut metadata = json!({
            "name": name,
            "labels": {labels::OWNER: fi_name, labels::NODE: self.node},
            "ownerReferences": [{
                "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
                "name": fi_name, "uid": fi.metadata.uid.as_deref().unwrap(),
            }],
        });
        if let Some(ack) = ack {
            metadata["annotations"] = json!({ACK_ANNOTATION: ack.to_string()});
        }
        let body = json!({
            "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrityNodeStatus",
            "metadata": metadata,
            "nodeName": self.node,
            "results": [result.clone()],
            "lastResult": result,
        });
        self.statuses
            .patch(
                &name,
                &PatchParams::apply(labels::AGENT_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap_or_else(|e| panic!("agent on {} cannot write its status: {e}", self.node));
    }
}

fn succeeded() -> serde_json::Value {
    json!({"condition": "Succeeded", "lastProbeTime": "2026-01-01T00:00:00Z"})
}

/// Starts the agents of `fi` on `nodes` and has each report a Succeeded scan; returns them
/// once the FileIntegrity is Active.
async fn active_agents(
    client: &Client,
    fis: &Api<FileIntegrity>,
    fi: &FileIntegrity,
    nodes: &[String],
) -> Vec<Agent> {
    let ns = fi.metadata.namespace.as_deref().unwrap();
    let name = fi.metadata.name.as_deref().unwrap();
    let pods = agent_pods(client, ns, name, nodes).await;
    let mut agents = Vec::new();
    for node in nodes {
        let agent = Agent::on(client, ns, node, &pods[node]).await;
        agent.report(fi, succeeded(), None).await;
        agents.push(agent);
    }
    let want = i32::try_from(nodes.len()).unwrap();
    wait_for_fi(fis, name, "phase Active, every node Succeeded", |fi| {
        phase(fi) == Some(FileIntegrityPhase::Active)
            && fi.status.as_ref().is_some_and(|s| s.succeeded == want)
    })
    .await;
    agents
}

/// Waits for an event on FileIntegrity `fi` with `reason`, `type_` and a note satisfying
/// `note`; returns the note.
fn recorded_request(fi: &FileIntegrity) -> Option<ReinitRequest> {
    ReinitRequest::from_file_integrity(fi).unwrap()
}

fn nodes_set(nodes: &[String]) -> std::collections::BTreeSet<String> {
    nodes.iter().cloned().collect()
}

#[tokio::test]
async fn agent_written_statuses_make_it_active_and_a_failed_node_warns() {
    let client = client().await.unwrap();
    let (ns, nodes, label) = namespace_with_nodes(&client, "op-agents", 2, &[]).await;
    let operator = Operator::start(&ns.name);
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    let fi = fis
        .create(
            &PostParams::default(),
            &file_integrity("agents", json!({"nodeSelector": {label.clone(): "yes"}})),
        )
        .await
        .unwrap();

    // The agent command line and environment of the contract; rules read through the API.
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    let ds = wait_for("the agent DaemonSet", WAIT, || async {
        Ok(match dss.get_opt("fim-agent-agents").await? {
            Some(ds) => Poll::Ready(ds),
            None => Poll::Pending("no DaemonSet".into()),
        })
    })
    .await
    .unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap().join(" ");
    assert!(
        args.starts_with(
            "daemon --file-integrity agents --root /host --db-dir /baseline \
             --config-map fim-config-agents --metrics-addr 0.0.0.0:"
        ),
        "{args}"
    );
    assert!(
        pod.volumes
            .unwrap_or_default()
            .iter()
            .all(|v| v.config_map.is_none()),
        "no rules volume"
    );

    let agents = active_agents(&client, &fis, &fi, &nodes.names).await;

    // One node finds a changed file.
    let failed = &agents[0];
    let log = format!("agents-{}-failed", failed.node);
    failed
        .report(
            &fi,
            json!({
                "condition": "Failed", "lastProbeTime": "2026-01-01T00:10:00Z",
                "filesChanged": 1,
                "resultConfigMapName": log, "resultConfigMapNamespace": ns.name,
            }),
            None,
        )
        .await;
    wait_for_metric(
        &operator,
        &format!(
            "file_integrity_operator_node_failed{{node=\"{}\"}} 1",
            failed.node
        ),
    )
    .await;
    wait_for_metric(
        &operator,
        &format!(
            "file_integrity_operator_node_failed{{node=\"{}\"}} 0",
            agents[1].node
        ),
    )
    .await;
    // The seed's wording (these statuses list no changedPaths, so no paths follow).
    let want = format!(
        "node {} has changed! a:0,c:1,r:0 log:{}/{log}",
        failed.node, ns.name
    );
    wait_for_event(
        &client,
        &ns.name,
        "agents",
        "NodeIntegrityStatus",
        "Warning",
        |n| n == want,
    )
    .await;
    // A finding, not a malfunction: still Active, the failure in the counts and condition.
    let fi = wait_for_fi(&fis, "agents", "one node failed", |fi| {
        fi.status.as_ref().is_some_and(|s| s.failed == 1)
    })
    .await;
    assert_eq!(phase(&fi), Some(FileIntegrityPhase::Active));
    assert_eq!(
        condition(&fi, "IntegrityFailed").map(|c| c.status.as_str()),
        Some("True")
    );

    drop(operator);
    ns.delete().await.unwrap();
    drop(nodes);
}

#[tokio::test]
async fn the_daemonset_waits_for_the_initial_delay() {
    let client = client().await.unwrap();
    let ns = namespace_with_agent_account(&client, "op-delay").await;
    let _operator = Operator::start(&ns.name);
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    let delay = 6;
    let fi = fis
        .create(
            &PostParams::default(),
            &file_integrity(
                "delayed",
                json!({
                    "nodeSelector": {format!("e2e.kubefim.io/{}", ns.name): "none"},
                    "config": {"initialDelay": delay},
                }),
            ),
        )
        .await
        .unwrap();
    let created = fi.metadata.creation_timestamp.clone().unwrap().0;
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);

    // Seen by the operator (status written) while the delay runs: Pending, no DaemonSet.
    let fi = wait_for_fi(&fis, "delayed", "phase Pending", |fi| {
        phase(fi) == Some(FileIntegrityPhase::Pending)
    })
    .await;
    let elapsed = k8s_openapi::jiff::Timestamp::now().as_second() - created.as_second();
    if elapsed < delay - 1 {
        assert!(
            dss.get_opt("fim-agent-delayed").await.unwrap().is_none(),
            "DaemonSet created {elapsed}s after the FileIntegrity, before its {delay}s delay"
        );
    }
    assert_eq!(
        condition(&fi, "Available").map(|c| c.reason.as_str()),
        Some("Pending")
    );

    // Then it comes, not earlier than the delay.
    let ds = wait_for("the DaemonSet after the delay", WAIT, || async {
        Ok(match dss.get_opt("fim-agent-delayed").await? {
            Some(ds) => Poll::Ready(ds),
            None => Poll::Pending("no DaemonSet".into()),
        })
    })
    .await
    .unwrap();
    let ds_created = ds.metadata.creation_timestamp.unwrap().0;
    assert!(
        ds_created.as_second() - created.as_second() >= delay,
        "DaemonSet created at {ds_created}, FileIntegrity at {created}, delay {delay}s"
    );

    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_tainted_node_runs_the_agent_only_with_a_toleration() {
    let client = client().await.unwrap();
    let taint_key = format!("e2e.kubefim.io/taint-{}", kube_fim_e2e::unique_suffix());
    let taint = Taint {
        key: taint_key.clone(),
        value: Some("only".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    let (ns, nodes, label) =
        namespace_with_nodes(&client, "op-taint", 1, std::slice::from_ref(&taint)).await;
    let _operator = Operator::start(&ns.name);
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    fis.create(
        &PostParams::default(),
        &file_integrity("tainted", json!({"nodeSelector": {label.clone(): "yes"}})),
    )
    .await
    .unwrap();

    // Without a toleration the DaemonSet schedules nothing there: nothing selected, Pending.
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the DaemonSet observed with 0 nodes", WAIT, || async {
        let status = dss
            .get_opt("fim-agent-tainted")
            .await?
            .and_then(|ds| ds.status);
        Ok(match status {
            Some(s) if s.observed_generation.is_some() && s.desired_number_scheduled == 0 => {
                Poll::Ready(())
            }
            other => Poll::Pending(format!("{other:?}")),
        })
    })
    .await
    .unwrap();
    let fi = wait_for_fi(&fis, "tainted", "Pending, no node", |fi| {
        condition(fi, "Available").is_some_and(|c| c.reason == "NoNodesSelected")
    })
    .await;
    assert_eq!(phase(&fi), Some(FileIntegrityPhase::Pending));

    // With the toleration the agent runs on it.
    fis.patch(
        "tainted",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"tolerations": [
            {"key": taint_key, "operator": "Equal", "value": "only", "effect": "NoSchedule"}
        ]}})),
    )
    .await
    .unwrap();
    agent_pods(&client, &ns.name, "tainted", &nodes.names).await;
    wait_for_fi(&fis, "tainted", "phase Initializing on the node", |fi| {
        phase(fi) == Some(FileIntegrityPhase::Initializing)
            && fi.status.as_ref().is_some_and(|s| s.nodes == 1)
    })
    .await;

    ns.delete().await.unwrap();
    drop(nodes);
}

/// Deletes a cluster-scoped PriorityClass when dropped.
struct PriorityClassGuard(String);

impl Drop for PriorityClassGuard {
    fn drop(&mut self) {
        let Ok(env) = kube_fim_e2e::cluster_env() else {
            return;
        };
        if let Some(kubectl) = env.get("KUBECTL") {
            let _ = Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig_path())
                .args(["delete", "priorityclass", "--ignore-not-found", &self.0])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[tokio::test]
async fn a_missing_priority_class_warns_and_an_existing_one_is_used() {
    let client = client().await.unwrap();
    let ns = namespace_with_agent_account(&client, "op-prio").await;
    let _operator = Operator::start(&ns.name);
    let class = format!("e2e-{}", ns.name);
    let _guard = PriorityClassGuard(class.clone());
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    fis.create(
        &PostParams::default(),
        &file_integrity(
            "prio",
            json!({
                "nodeSelector": {format!("e2e.kubefim.io/{}", ns.name): "none"},
                "priorityClassName": class,
            }),
        ),
    )
    .await
    .unwrap();

    // Missing: a Warning, a condition naming it, and the DaemonSet without it.
    let note = wait_for_event(
        &client,
        &ns.name,
        "prio",
        "PriorityClassNotFound",
        "Warning",
        |n| n.contains(&class),
    )
    .await;
    assert!(note.contains("without a priority class"), "{note}");
    let fi = wait_for_fi(&fis, "prio", "PriorityClassFound False", |fi| {
        condition(fi, "PriorityClassFound").is_some_and(|c| c.status == "False")
    })
    .await;
    let c = condition(&fi, "PriorityClassFound").unwrap();
    assert!(c.message.contains(&class), "{c:?}");
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    let template_class = |ds: DaemonSet| {
        ds.spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.priority_class_name)
    };
    assert_eq!(
        template_class(dss.get("fim-agent-prio").await.unwrap()),
        None
    );

    // Created: picked up without touching the FileIntegrity.
    Api::<PriorityClass>::all(client.clone())
        .create(
            &PostParams::default(),
            &PriorityClass {
                metadata: ObjectMeta {
                    name: Some(class.clone()),
                    ..Default::default()
                },
                value: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_for("the DaemonSet with the priority class", WAIT, || async {
        let got = template_class(dss.get("fim-agent-prio").await?);
        Ok(if got.as_deref() == Some(class.as_str()) {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("priorityClassName {got:?}"))
        })
    })
    .await
    .unwrap();
    wait_for_fi(&fis, "prio", "PriorityClassFound True", |fi| {
        condition(fi, "PriorityClassFound").is_some_and(|c| c.status == "True")
    })
    .await;

    ns.delete().await.unwrap();
}

async fn annotate(fis: &Api<FileIntegrity>, name: &str, key: &str, value: Option<&str>) {
    fis.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {key: value}}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_reinit_annotation_becomes_a_request_the_agents_acknowledge() {
    let client = client().await.unwrap();
    let (ns, nodes, label) = namespace_with_nodes(&client, "op-reinit", 2, &[]).await;
    let operator = Operator::start(&ns.name);
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    let fi = fis
        .create(
            &PostParams::default(),
            &file_integrity("re", json!({"nodeSelector": {label.clone(): "yes"}})),
        )
        .await
        .unwrap();
    let agents = active_agents(&client, &fis, &fi, &nodes.names).await;

    // All nodes: a first request, recorded and pending, the FileIntegrity Initializing. Its id
    // is the operator's (a time in milliseconds), the next ones count up from it.
    annotate(&fis, "re", labels::REINIT, Some("")).await;
    let fi = wait_for_fi(&fis, "re", "request recorded, Initializing", |fi| {
        recorded_request(fi).is_some() && phase(fi) == Some(FileIntegrityPhase::Initializing)
    })
    .await;
    let request = recorded_request(&fi).unwrap();
    let first = request.id;
    assert!(first > 1_700_000_000_000, "a fresh id: {first}");
    assert_eq!(request.nodes, nodes_set(&nodes.names));
    assert!(!request.done);
    assert_eq!(
        fi.status.as_ref().unwrap().initializing,
        2,
        "{:?}",
        fi.status
    );
    wait_for_event(&client, &ns.name, "re", "ReinitRequested", "Normal", |n| {
        n.starts_with(&format!("re-init request {first} "))
    })
    .await;
    wait_for_metric(
        &operator,
        &format!(
            "file_integrity_operator_reinit_total{{by=\"demand\",node=\"{}\"}} 1",
            agents[0].node
        ),
    )
    .await;

    // The first agent re-baselines: the other still holds the request open.
    agents[0].report(&fi, succeeded(), Some(first)).await;
    let fi = wait_for_fi(&fis, "re", "one node still initialising", |fi| {
        fi.status.as_ref().is_some_and(|s| s.initializing == 1)
    })
    .await;
    assert_eq!(phase(&fi), Some(FileIntegrityPhase::Initializing));
    assert!(
        fi.metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(labels::REINIT)
    );

    // The second: the annotation goes, the request is done, back to Active.
    agents[1].report(&fi, succeeded(), Some(first)).await;
    let fi = wait_for_fi(&fis, "re", "annotation removed, Active", |fi| {
        !fi.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(labels::REINIT))
            && phase(fi) == Some(FileIntegrityPhase::Active)
    })
    .await;
    assert!(recorded_request(&fi).unwrap().done);

    // A node list with a name the FileIntegrity does not select: request 2 for the known one,
    // a Warning naming the other.
    let ghost = format!("ghost-{}", ns.name);
    annotate(
        &fis,
        "re",
        labels::REINIT,
        Some(&format!("{}, {ghost}", agents[1].node)),
    )
    .await;
    wait_for_event(
        &client,
        &ns.name,
        "re",
        "ReinitUnknownNodes",
        "Warning",
        |n| n.contains(&ghost),
    )
    .await;
    let second = first + 1;
    let fi = wait_for_fi(&fis, "re", "request 2 recorded", |fi| {
        recorded_request(fi).is_some_and(|r| r.id == second)
    })
    .await;
    assert_eq!(
        recorded_request(&fi).unwrap().nodes,
        nodes_set(std::slice::from_ref(&agents[1].node))
    );
    agents[1].report(&fi, succeeded(), Some(second)).await;
    let fi = wait_for_fi(&fis, "re", "request 2 done", |fi| {
        recorded_request(fi).is_some_and(|r| r.id == second && r.done)
    })
    .await;
    assert!(
        !fi.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(labels::REINIT)),
        "removed in the same patch"
    );
    wait_for_metric(
        &operator,
        &format!(
            "file_integrity_operator_reinit_total{{by=\"node\",node=\"{}\"}} 1",
            agents[1].node
        ),
    )
    .await;

    drop(operator);
    ns.delete().await.unwrap();
    drop(nodes);
}

#[tokio::test]
async fn a_config_change_becomes_a_reinit_request_without_rolling_the_pods() {
    let client = client().await.unwrap();
    let (ns, nodes, label) = namespace_with_nodes(&client, "op-cfgre", 1, &[]).await;
    let operator = Operator::start(&ns.name);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let rules = |text: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some("rules".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "aide.conf".to_string(),
            text.to_string(),
        )])),
        ..Default::default()
    };
    cms.create(
        &PostParams::default(),
        &rules("ALL = p+u+g+sha256\n/etc ALL\n"),
    )
    .await
    .unwrap();
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    let fi = fis
        .create(
            &PostParams::default(),
            &file_integrity(
                "cfgre",
                json!({
                    "nodeSelector": {label.clone(): "yes"},
                    "config": {"name": "rules", "key": "aide.conf"},
                }),
            ),
        )
        .await
        .unwrap();
    let agents = active_agents(&client, &fis, &fi, &nodes.names).await;
    let fi = fis.get("cfgre").await.unwrap();
    assert_eq!(
        recorded_request(&fi),
        None,
        "the first rules need no re-init"
    );
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    let generation = dss
        .get("fim-agent-cfgre")
        .await
        .unwrap()
        .metadata
        .generation;

    // New rules: a request for every selected node.
    cms.replace(
        "rules",
        &PostParams::default(),
        &rules("ALL = p+u+g+sha256\n/etc ALL\n/usr ALL\n"),
    )
    .await
    .unwrap();
    let fi = wait_for_fi(&fis, "cfgre", "a re-init request, Initializing", |fi| {
        recorded_request(fi).is_some_and(|r| !r.done)
            && phase(fi) == Some(FileIntegrityPhase::Initializing)
    })
    .await;
    let request = recorded_request(&fi).unwrap();
    assert_eq!(request.nodes, nodes_set(&nodes.names));
    assert_eq!(
        cms.get("fim-config-cfgre").await.unwrap().data.unwrap()["aide.conf"],
        "ALL = p+u+g+sha256\n/etc ALL\n/usr ALL\n"
    );
    wait_for_metric(
        &operator,
        "file_integrity_operator_reinit_total{by=\"config\",node=\"\"} 1",
    )
    .await;
    // The agents read the rules live: the pods are not rolled.
    assert_eq!(
        dss.get("fim-agent-cfgre")
            .await
            .unwrap()
            .metadata
            .generation,
        generation
    );

    agents[0].report(&fi, succeeded(), Some(request.id)).await;
    let fi = wait_for_fi(&fis, "cfgre", "request done, Active", |fi| {
        recorded_request(fi).is_some_and(|r| r.done)
            && phase(fi) == Some(FileIntegrityPhase::Active)
    })
    .await;
    assert_eq!(recorded_request(&fi).unwrap().id, request.id);

    drop(operator);
    ns.delete().await.unwrap();
    drop(nodes);
}
