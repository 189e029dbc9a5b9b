//! fim-operator against the local control plane: the real binary runs as a child process
//! watching a test namespace. Build it first: `cargo build -p kube-fim-operator` (`make e2e`
//! does).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, FileIntegrityPhase, labels};
use kube_fim_e2e::{
    Poll, TestNamespace, apply_crds, client, free_port, kubeconfig_path, repo_root, state_dir,
    wait_for,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// `<target dir>/debug/fim-operator`; the target dir is `CARGO_TARGET_DIR` (relative to the
/// repository root when relative) or `<repo>/target`.
fn operator_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                repo_root().join(p)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join("fim-operator");
    assert!(
        path.is_file(),
        "the operator binary {} is missing: build it with `cargo build -p kube-fim-operator` \
         (make e2e does)",
        path.display()
    );
    path
}

/// The operator as a child process; killed when dropped. Its log is
/// `e2e/.cluster/logs/operator-<namespace>.log`.
struct Operator {
    child: Child,
    metrics_port: u16,
}

impl Operator {
    fn start(namespace: &str) -> Operator {
        let metrics_port = free_port().unwrap();
        let logs = state_dir().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log_path = logs.join(format!("operator-{namespace}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(operator_binary())
            .args([
                "--namespace",
                namespace,
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--agent-image",
                "kube-fim/agent:e2e",
            ])
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "info,fim_operator=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", operator_binary().display()));
        Operator {
            child,
            metrics_port,
        }
    }

    async fn get(&self, path: &str) -> kube_fim_e2e::Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut resp = agent
                .get(&url)
                .call()
                .map_err(|e| kube_fim_e2e::E2eError::Other(format!("GET {url}: {e}")))?;
            let status = resp.status().as_u16();
            let body = resp
                .body_mut()
                .read_to_string()
                .map_err(|e| kube_fim_e2e::E2eError::Other(format!("GET {url}: {e}")))?;
            Ok((status, body))
        })
        .await
        .map_err(|e| kube_fim_e2e::E2eError::Other(e.to_string()))?
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace with the agents' service account (pods are refused without it).
async fn namespace_with_agent_account(client: &Client, prefix: &str) -> TestNamespace {
    apply_crds(client).await.unwrap();
    let ns = TestNamespace::create(client, prefix).await.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some("fim-agent".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    ns
}

fn file_integrity(name: &str, spec: serde_json::Value) -> FileIntegrity {
    serde_json::from_value(json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

async fn label_nodes(client: &Client, nodes: &[String], label: &str, value: Option<&str>) {
    let api: Api<Node> = Api::all(client.clone());
    for n in nodes {
        let patch = json!({"metadata": {"labels": {label: value}}});
        api.patch(n, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
}

/// Waits until `fi` satisfies `check`, describing its status meanwhile.
async fn wait_for_fi(
    fis: &Api<FileIntegrity>,
    name: &str,
    what: &str,
    check: impl Fn(&FileIntegrity) -> bool,
) -> FileIntegrity {
    wait_for(what, WAIT, || async {
        let fi = fis.get(name).await?;
        Ok(if check(&fi) {
            Poll::Ready(fi)
        } else {
            Poll::Pending(format!("status: {:?}", fi.status))
        })
    })
    .await
    .unwrap()
}

fn phase(fi: &FileIntegrity) -> Option<FileIntegrityPhase> {
    fi.status.as_ref().map(|s| s.phase)
}

fn condition<'a>(
    fi: &'a FileIntegrity,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    fi.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

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
async fn wait_for_metric(operator: &Operator, want: &str) {
    wait_for(&format!("metric {want}"), WAIT, || async {
        let (code, body) = operator.get("/metrics").await?;
        Ok(if code == 200 && body.contains(want) {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("HTTP {code}:\n{body}"))
        })
    })
    .await
    .unwrap();
}

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

    // A Warning NodeIntegrityStatus event in the seed-001 wording.
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
