//! Container monitoring on the cluster's real node (issue 14): real pods of a small web-server-like
//! image (hack/build-test-images.sh web-1 web-2 web-escape, built and imported by the tests)
//! watched by the agent the operator deploys there. A file changed inside a container (written
//! through /proc/<pid>/root from this machine, as an intruder in the container would) turns its
//! result Failed. One test per property:
//! - detection (time measured), event, metric and firing alert; restart, kill (the restarted
//!   container is followed to its new process), rollback; a replica that starts tampered, with
//!   integrity-sum's annotations;
//! - the backoff: the fourth remediation of a workload within the window is suppressed (event,
//!   FileIntegrity condition, metric);
//! - symlinks in a monitored directory (`etc -> /`, `x -> /proc/1/root`, to a host directory)
//!   never lead the agent to host files;
//! - a Snapshot whose S3 object was replaced behind the operator is refused: Errored, naming it;
//! - bad annotations are named in an event on the pod, the rest of it is still monitored.
//!
//! The real node is one: the tests take [`REAL_NODE`] in turn, each in its own namespace (with its
//! own operator and FirstObserved baselines), removed at its end.
//! Needs `make e2e` with the real node (REAL_NODE=1); wrap in `flock /tmp/kube-fim-real-node.lock`.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kube_fim_crds::{
    ContainerResult, FileIntegrity, FileIntegrityNodeStatus, ScanCondition, Snapshot,
};
use kube_fim_e2e::containers::*;
use kube_fim_e2e::fixtures::*;
use kube_fim_e2e::prometheus::Prometheus;
use kube_fim_e2e::real_node::RealNode;
use kube_fim_e2e::{Poll, TestNamespace, client, cluster_env, repo_root, unique_suffix, wait_for};
use serde_json::json;
use tokio::sync::MutexGuard;

const FI: &str = "ctr";

/// The real node's tests one at a time: one kubelet, and the host-network agents of two
/// FileIntegrities would hold the same metrics port on it.
static REAL_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// One test's world on the real node: its turn, its namespace (agent account and RBAC, a node
/// rule set over a tiny directory of its own), its operator and the FileIntegrity `ctr` with
/// container monitoring. [`Setup::finish`] removes it all.
/// The result says exactly one file changed, the served page, and nothing added or removed.
fn assert_only_index_changed(failed: &ContainerResult) {
    assert_eq!(failed.changed_paths, [INDEX]);
    assert_eq!(
        (
            failed.files_added,
            failed.files_changed,
            failed.files_removed
        ),
        (0, 1, 0)
    );
}

struct Setup {
    _turn: MutexGuard<'static, ()>,
    node: RealNode,
    client: Client,
    ns: TestNamespace,
    operator: Operator,
    _dir: tempfile::TempDir,
    statuses: Api<FileIntegrityNodeStatus>,
    status: String,
    deployments: Api<Deployment>,
}

impl Setup {
    /// `containers`: the FileIntegrity's `spec.containers`; `operator_args` beyond the agent's
    /// image and API server.
    async fn new(prefix: &str, containers: serde_json::Value, operator_args: &[&str]) -> Setup {
        Setup::with_secret(prefix, containers, operator_args, None).await
    }

    /// [`Setup::new`], with `secret` created in the namespace before the FileIntegrity (its
    /// agents read it at start).
    async fn with_secret(
        prefix: &str,
        containers: serde_json::Value,
        operator_args: &[&str],
        secret: Option<Secret>,
    ) -> Setup {
        let turn = REAL_NODE.lock().await;
        let node = RealNode::from_env().unwrap();
        let client = client().await.unwrap();
        node.wait_idle(&client).await;
        import_web_images(&node);
        let ns = namespace_with_agent_account(&client, prefix).await;
        grant_agent_rbac(&client, &ns.name).await;
        grant_container_rbac(&client, &ns.name).await;
        if let Some(secret) = secret {
            Api::<Secret>::namespaced(client.clone(), &ns.name)
                .create(&PostParams::default(), &secret)
                .await
                .unwrap();
        }
        // The node scan covers only a small directory of its own.
        let dir = tempfile::Builder::new()
            .prefix("kube-fim-ctr-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::write(dir.path().join("app.conf"), "x\n").unwrap();
        let d = dir.path().display();
        let rules: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "rules"},
            "data": {"aide.conf": format!("CONTENT = sha256+ftype\n{d} f CONTENT\n")},
        }))
        .unwrap();
        Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &rules)
            .await
            .unwrap();
        let api_server = cluster_env().unwrap()["KUBE_APISERVER"].clone();
        let mut args = vec!["--agent-api-server", api_server.as_str()];
        args.extend_from_slice(operator_args);
        let operator = Operator::start_with_agent_image(&ns.name, AGENT_IMAGE, &args);
        Api::<FileIntegrity>::namespaced(client.clone(), &ns.name)
            .create(
                &PostParams::default(),
                &file_integrity(
                    FI,
                    json!({
                        "nodeSelector": {"kubernetes.io/hostname": node.name},
                        "config": {"name": "rules", "namespace": ns.name, "key": "aide.conf",
                                   "gracePeriod": 10},
                        "realtime": true,
                        "containers": containers,
                    }),
                ),
            )
            .await
            .unwrap();
        let status = FileIntegrityNodeStatus::name_for(FI, &node.name);
        Setup {
            _turn: turn,
            statuses: Api::namespaced(client.clone(), &ns.name),
            deployments: Api::namespaced(client.clone(), &ns.name),
            node,
            client,
            ns,
            operator,
            _dir: dir,
            status,
        }
    }

    /// Creates Deployment `name` on the real node and returns its running pod.
    async fn deploy(
        &self,
        name: &str,
        image: &str,
        annotations: serde_json::Value,
        args: &[&str],
    ) -> Pod {
        self.deployments
            .create(
                &PostParams::default(),
                &deployment(name, image, annotations, args, &self.node.name),
            )
            .await
            .unwrap();
        running_pod(&self.client, &self.ns.name, name, None).await
    }

    async fn result(
        &self,
        pod: &Pod,
        what: &str,
        ok: impl Fn(&ContainerResult) -> bool,
    ) -> ContainerResult {
        wait_for_result(&self.statuses, &self.status, &pod.name_any(), what, ok).await
    }

    async fn succeeded(&self, pod: &Pod) -> ContainerResult {
        self.result(pod, "Succeeded", |r| {
            r.condition == ScanCondition::Succeeded
        })
        .await
    }

    async fn failed(&self, pod: &Pod) -> ContainerResult {
        self.result(pod, "Failed", |r| r.condition == ScanCondition::Failed)
            .await
    }

    fn write(&self, pod: &Pod, path: &str, text: &str) {
        write_in_container(&self.node, pod, path, text);
    }

    /// Removes the FileIntegrity (its agents go), the operator, the node's FirstObserved
    /// baselines of this namespace, the cluster-wide RBAC and the namespace.
    async fn finish(self) {
        // Snapshots carry the operator's finalizer: deleted while it runs.
        let snapshots: Api<Snapshot> = Api::namespaced(self.client.clone(), &self.ns.name);
        snapshots
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .unwrap();
        wait_for("the Snapshots gone", WAIT, || async {
            let left = snapshots.list(&ListParams::default()).await?.items.len();
            Ok(if left == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{left} left"))
            })
        })
        .await
        .unwrap();
        Api::<FileIntegrity>::namespaced(self.client.clone(), &self.ns.name)
            .delete(FI, &DeleteParams::default())
            .await
            .unwrap();
        drop(self.operator);
        let _ = std::fs::remove_dir_all(format!("/var/lib/kube-fim/{}", self.ns.name));
        let name = format!("fim-agent-pods-{}", self.ns.name);
        let _ = Api::<ClusterRoleBinding>::all(self.client.clone())
            .delete(&name, &DeleteParams::default())
            .await;
        let _ = Api::<ClusterRole>::all(self.client.clone())
            .delete(&name, &DeleteParams::default())
            .await;
        self.ns.delete().await.unwrap();
    }
}

fn containers_spec() -> serde_json::Value {
    json!({"enabled": true, "allowKill": true, "maxRemediations": 3,
           "remediationWindowSeconds": 600})
}

fn monitored(remediation: &str) -> serde_json::Value {
    json!({"fim.kubefim.io/monitor": "true",
           "web.fim.kubefim.io/paths": "/srv/html,/etc/web",
           "fim.kubefim.io/remediation": remediation})
}

fn sha256_hex(text: &str) -> String {
    fim_agent::snapshot_store::sha256_hex(text.as_bytes())
}

/// Snapshot lines (`<sha256>  <path>`) of `files`.
fn snapshot_lines(files: &[(&str, &str)]) -> String {
    files
        .iter()
        .map(|(path, text)| format!("{}  {path}\n", sha256_hex(text)))
        .collect()
}

/// The files of web version 2, as the image holds them.
const WEB_2_FILES: [(&str, &str); 3] = [
    ("etc/web/web.conf", "listen 8080\nroot /srv/html\n"),
    ("srv/html/about.html", "about\n"),
    ("srv/html/index.html", "<h1>kube-fim web, version 2</h1>\n"),
];

async fn wait_vouched(snapshots: &Api<Snapshot>, name: &str) -> String {
    wait_for(
        &format!("Snapshot {name} vouched for (controlHash)"),
        WAIT,
        || async {
            let s = snapshots.get(name).await?;
            Ok(match s.status.and_then(|st| st.control_hash) {
                Some(h) => Poll::Ready(h),
                None => Poll::Pending("no controlHash".into()),
            })
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_changed_file_is_reported_alerted_and_remediated_by_restart_kill_and_rollback() {
    let s = Setup::new("real-ctr", containers_spec(), &[]).await;
    let ns = s.ns.name.clone();
    let prometheus = Prometheus::start(
        &[format!("127.0.0.1:{}", s.operator.metrics_port)],
        &[repo_root().join("config/prometheus/rules.yaml")],
    )
    .await
    .unwrap();

    // 1. No Snapshot: the first observation of the image on the node is the baseline.
    let pod = s.deploy("web", WEB_1, monitored("none"), &[]).await;
    let first = s.succeeded(&pod).await;
    assert_eq!(first.baseline_source, "FirstObserved");
    assert_eq!(first.container_id, container_id(&pod));
    assert_eq!(first.pod_uid, pod.uid().unwrap());
    assert_eq!(first.image, WEB_1);
    assert!(first.image_id.contains("sha256:"), "{}", first.image_id);

    // 2. A file changed inside the container: Failed with the path; back to Succeeded once
    //    restored. Time from the write to the status, 10 times.
    let original = "<h1>kube-fim web, version 1</h1>\n";
    let mut times = Vec::new();
    for round in 0..10 {
        let start = Instant::now();
        s.write(&pod, INDEX, &format!("defaced {round}\n"));
        // Polled every 20 ms (wait_for's interval would blur the measurement).
        let mut failed = None;
        while failed.is_none() && start.elapsed() < Duration::from_secs(30) {
            let st = s.statuses.get(&s.status).await.unwrap();
            failed = st
                .spec
                .containers
                .into_iter()
                .find(|r| r.pod == pod.name_any() && r.condition == ScanCondition::Failed);
            if failed.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        times.push(start.elapsed());
        let failed = failed.expect("no Failed result 30 s after the change");
        assert_only_index_changed(&failed);
        s.write(&pod, INDEX, original);
        s.result(&pod, "Succeeded again", |r| {
            r.condition == ScanCondition::Succeeded
        })
        .await;
    }
    times.sort();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    println!("container change -> Failed status: p50 {p50:?}, p99 {p99:?} (all: {times:?})");
    assert!(p50 < Duration::from_secs(1), "p50 {p50:?}");

    // Left tampered: event on the pod, the metric, and the alert firing in Prometheus.
    s.write(&pod, INDEX, "defaced\n");
    wait_for_event(
        &s.client,
        &ns,
        &pod.name_any(),
        "ContainerIntegrityStatus",
        "Warning",
        |n| {
            n.starts_with(&format!(
                "container web of pod {ns}/{} has changed! a:0,c:1,r:0",
                pod.name_any()
            )) && n.contains(INDEX)
        },
    )
    .await;
    wait_for_metric(
        &s.operator,
        &format!(
            "file_integrity_operator_container_failed{{container=\"web\",namespace=\"{ns}\",pod=\"{}\"}} 1",
            pod.name_any()
        ),
    )
    .await;
    let alert = format!(
        "ALERTS{{alertname=\"ContainerHasIntegrityFailure\",alertstate=\"firing\",container=\"web\",namespace=\"{ns}\",pod=\"{}\"}}",
        pod.name_any()
    );
    assert_eq!(
        prometheus.wait_for_value(&alert, WAIT).await.unwrap(),
        1.0,
        "{alert}"
    );
    drop(prometheus);

    // 3. restart: the operator deletes the tampered pod; its replacement is clean.
    let set_template = |annotations: serde_json::Value, image: &str| {
        json!({"spec": {"template": {"metadata": {"annotations": annotations},
                                     "spec": {"containers": [{"name": "web", "image": image}]}}}})
    };
    s.deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(set_template(monitored("restart"), WEB_1)),
        )
        .await
        .unwrap();
    let pod = running_pod(&s.client, &ns, "web", pod.uid().as_deref()).await;
    s.succeeded(&pod).await;
    s.write(&pod, INDEX, "defaced\n");
    let replacement = running_pod(&s.client, &ns, "web", pod.uid().as_deref()).await;
    wait_for_event(
        &s.client,
        &ns,
        &pod.name_any(),
        "ContainerRemediation",
        "Warning",
        |n| n.contains(&format!("deleting pod {ns}/{}", pod.name_any())),
    )
    .await;
    let clean = s.succeeded(&replacement).await;
    assert_eq!(
        clean.baseline_source, "FirstObserved",
        "the replacement shares the image's baseline"
    );

    // 4. kill: the agent SIGKILLs the container through its pidfd; the kubelet restarts it in
    //    place and the agent follows it to its new process (new containerID, clean).
    s.deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(set_template(monitored("kill"), WEB_1)),
        )
        .await
        .unwrap();
    let pod = running_pod(&s.client, &ns, "web", replacement.uid().as_deref()).await;
    // The previous pods are gone before the next one is tampered with.
    s.succeeded(&pod).await;
    let before = container_id(&pod);
    let old_pid = s.node.container_pid(&pod, "web").unwrap();
    s.write(&pod, INDEX, "defaced\n");
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &ns);
    let restarted = wait_for(
        "the killed container restarted in place",
        WAIT * 2,
        || async {
            let p = pods.get(&pod.name_any()).await?;
            let cs = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            let done = cs.first().is_some_and(|c| {
                c.restart_count == 1
                    && c.container_id.as_deref().is_some_and(|id| id != before)
                    && c.state.as_ref().is_some_and(|s| s.running.is_some())
            });
            Ok(if done {
                Poll::Ready(p)
            } else {
                Poll::Pending(format!("{cs:?}"))
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(restarted.uid(), pod.uid(), "the same pod");
    let new_id = container_id(&restarted);
    let followed = s
        .result(&pod, "Succeeded at the new containerID", |r| {
            r.condition == ScanCondition::Succeeded && r.container_id == new_id
        })
        .await;
    assert!(
        followed
            .last_remediation
            .as_deref()
            .is_some_and(|t| t.starts_with("kill at")),
        "{followed:?}"
    );
    assert_ne!(s.node.container_pid(&restarted, "web").unwrap(), old_pid);
    wait_for_event(
        &s.client,
        &ns,
        &pod.name_any(),
        "ContainerRemediation",
        "Warning",
        |n| n.contains("kill at") && n.contains(&format!("by the agent on node {}", s.node.name)),
    )
    .await;

    // 5. A Snapshot of version 2 (inline lines, vouched for by the operator's controlHash) is
    //    its baseline; a new rollout of version 2 that gets tampered with is rolled back to the
    //    previous template (version 1).
    let snapshot: Snapshot = serde_json::from_value(json!({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "Snapshot",
        "metadata": {"name": "web-2"},
        "spec": {"image": WEB_2, "algorithm": "SHA256",
                 "hashes": base64::engine::general_purpose::STANDARD
                     .encode(snapshot_lines(&WEB_2_FILES))},
    }))
    .unwrap();
    let snapshots: Api<Snapshot> = Api::namespaced(s.client.clone(), &ns);
    snapshots
        .create(&PostParams::default(), &snapshot)
        .await
        .unwrap();
    wait_vouched(&snapshots, "web-2").await;
    s.deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(set_template(monitored("rollback"), WEB_2)),
        )
        .await
        .unwrap();
    let v2 = running_pod(&s.client, &ns, "web", restarted.uid().as_deref()).await;
    assert_eq!(
        v2.spec.as_ref().unwrap().containers[0].image.as_deref(),
        Some(WEB_2)
    );
    let checked = s.succeeded(&v2).await;
    assert_eq!(checked.baseline_source, format!("Snapshot/{ns}/web-2"));
    s.write(&v2, INDEX, "defaced\n");
    wait_for(
        "the Deployment rolled back to version 1",
        WAIT * 2,
        || async {
            let d = s.deployments.get("web").await?;
            let t = d.spec.as_ref().unwrap().template.clone();
            let image = t.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap_or_default();
            let remediation = t
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get("fim.kubefim.io/remediation").cloned());
            Ok(
                if image == WEB_1 && remediation.as_deref() == Some("kill") {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("{image} {remediation:?}"))
                },
            )
        },
    )
    .await
    .unwrap();
    wait_for_event(
        &s.client,
        &ns,
        &v2.name_any(),
        "ContainerRemediation",
        "Warning",
        |n| n.contains(&format!("rolling back Deployment {ns}/web to revision")),
    )
    .await;

    // 6. integrity-sum's annotations, unchanged, on a replica of version 1 that starts tampered:
    //    compared with the first observation of that image, it is Failed at once (not baselined).
    let integrity_sum = json!({"integrity-monitor.scnsoft.com/inject": "true",
                               "web.integrity-monitor.scnsoft.com/monitoring-paths": "/srv/html,/etc/web",
                               "fim.kubefim.io/remediation": "none"});
    let tampered = s
        .deploy("tampered", WEB_1, integrity_sum, &["tamper", INDEX])
        .await;
    let caught = s
        .result(&tampered, "Failed", |r| {
            r.condition == ScanCondition::Failed
        })
        .await;
    assert_eq!(caught.baseline_source, "FirstObserved");
    assert_eq!(caught.changed_paths, [INDEX]);
    s.finish().await;
}

#[tokio::test]
async fn the_fourth_remediation_of_a_workload_within_the_window_is_suppressed() {
    let s = Setup::new("real-ctr-backoff", containers_spec(), &[]).await;
    let ns = s.ns.name.clone();
    // Three restarts of one workload (the ReplicaSet of Deployment loop) within the window, then
    // the fourth tampering is not remediated but reported: event, condition, metric.
    s.deployments
        .create(
            &PostParams::default(),
            &deployment("loop", WEB_1, monitored("restart"), &[], &s.node.name),
        )
        .await
        .unwrap();
    let mut previous: Option<String> = None;
    let mut pod = None;
    for round in 1..=4 {
        let p = running_pod(&s.client, &ns, "loop", previous.as_deref()).await;
        s.succeeded(&p).await;
        s.write(&p, INDEX, &format!("defaced {round}\n"));
        if round < 4 {
            wait_for_event(
                &s.client,
                &ns,
                &p.name_any(),
                "ContainerRemediation",
                "Warning",
                |n| n.contains("deleting pod"),
            )
            .await;
            previous = p.uid();
        }
        pod = Some(p);
    }
    let pod = pod.unwrap();
    let rs = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet")
        .map(|o| o.name.clone())
        .unwrap();
    let workload = format!("{ns}/ReplicaSet/{rs}");
    let note = wait_for_event(
        &s.client,
        &ns,
        &pod.name_any(),
        "RemediationSuppressed",
        "Warning",
        |n| {
            n.contains(&format!(
                "restart of {workload} suppressed: 3 remediations within 600s"
            ))
        },
    )
    .await;
    println!("suppressed: {note}");
    let fis: Api<FileIntegrity> = Api::namespaced(s.client.clone(), &ns);
    let fi = wait_for_fi(&fis, FI, "condition RemediationSuppressed True", |fi| {
        condition(fi, "RemediationSuppressed").is_some_and(|c| c.status == "True")
    })
    .await;
    let c = condition(&fi, "RemediationSuppressed").unwrap();
    assert_eq!(c.reason, "TooManyRemediations");
    assert!(c.message.contains(&workload), "{}", c.message);
    wait_for_metric(
        &s.operator,
        "file_integrity_operator_container_remediation_total{action=\"suppressed\",result=\"done\"} 1",
    )
    .await;
    wait_for_metric(
        &s.operator,
        "file_integrity_operator_container_remediation_total{action=\"restart\",result=\"done\"} 3",
    )
    .await;
    // The fourth pod stays, still reported Failed: the finding is not hidden by the backoff.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = Api::<Pod>::namespaced(s.client.clone(), &ns)
        .get(&pod.name_any())
        .await
        .unwrap();
    assert_eq!(still.uid(), pod.uid());
    assert!(
        still.metadata.deletion_timestamp.is_none(),
        "the fourth was not remediated"
    );
    let failed = s
        .result(&pod, "still Failed", |r| {
            r.condition == ScanCondition::Failed
        })
        .await;
    assert_eq!(failed.changed_paths, [INDEX]);
    s.finish().await;
}

/// The host directory the escape image's symlinks point at (hack/build-test-images.sh).
const HOST_TARGET: &str = "/var/tmp/kube-fim-escape";

/// The FirstObserved baselines the agent keeps on the node for this namespace
/// (`<db-dir>/<fi>/containers/*.lines`, the db-dir being `/var/lib/kube-fim/<ns>/<fi>`).
fn first_observed_lines(ns: &str) -> Vec<(std::path::PathBuf, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, String)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "lines") {
                out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(
        std::path::Path::new(&format!("/var/lib/kube-fim/{ns}")),
        &mut out,
    );
    out
}

#[tokio::test]
async fn symlinks_in_a_monitored_directory_never_lead_the_agent_to_host_files() {
    // What the image's links point at, on this machine: a scanner that followed `host`,
    // `up` or `secret.html` (or `x` -> /proc/1/root from the host PID namespace) would hash it.
    let _ = std::fs::remove_dir_all(HOST_TARGET);
    std::fs::create_dir_all(HOST_TARGET).unwrap();
    std::fs::write(format!("{HOST_TARGET}/secret"), "host secret 1\n").unwrap();
    let s = Setup::new("real-ctr-escape", containers_spec(), &[]).await;
    let ns = s.ns.name.clone();
    let pod = s.deploy("escape", WEB_ESCAPE, monitored("none"), &[]).await;
    let pid = s.node.container_pid(&pod, "web").unwrap();
    let link = std::fs::read_link(format!("/proc/{pid}/root/srv/html/x")).unwrap();
    assert_eq!(
        link,
        std::path::Path::new("/proc/1/root"),
        "the image has its links"
    );

    let first = s.succeeded(&pod).await;
    assert_eq!(first.baseline_source, "FirstObserved");
    // What the agent recorded is exactly the container's two regular files, with their hashes:
    // nothing through the links (`etc/passwd`, `x/...`, `host/secret`, `secret.html`).
    let baselines = first_observed_lines(&ns);
    assert_eq!(baselines.len(), 1, "{baselines:?}");
    let recorded: BTreeMap<String, String> = baselines[0]
        .1
        .lines()
        .map(|l| {
            let (hash, path) = l.split_once("  ").unwrap();
            (path.trim_start_matches('/').to_owned(), hash.to_owned())
        })
        .collect();
    let expected: BTreeMap<String, String> = [
        ("etc/web/web.conf", "listen 8080\nroot /srv/html\n"),
        ("srv/html/index.html", "<h1>kube-fim web, escape</h1>\n"),
    ]
    .iter()
    .map(|(p, t)| ((*p).to_owned(), sha256_hex(t)))
    .collect();
    assert_eq!(recorded, expected, "{}", baselines[0].0.display());

    // The host file behind the links changes: checks after that (realtime and periodic) stay
    // clean.
    let changed_at = Timestamp::now();
    std::fs::write(format!("{HOST_TARGET}/secret"), "host secret 2\n").unwrap();
    std::fs::write(format!("{HOST_TARGET}/new"), "added on the host\n").unwrap();
    let later = s
        .result(&pod, "a check after the host change", |r| {
            r.last_probe_time.0 > changed_at
        })
        .await;
    assert_eq!(later.condition, ScanCondition::Succeeded, "{later:?}");
    assert!(later.changed_paths.is_empty(), "{later:?}");

    // The container's own file still counts, alone.
    s.write(&pod, INDEX, "defaced\n");
    let failed = s.failed(&pod).await;
    assert_only_index_changed(&failed);

    // Monitored paths through the links are refused outright (never resolved outside the
    // container): Errored, naming the path.
    let through = json!({"fim.kubefim.io/monitor": "true",
                         "web.fim.kubefim.io/paths": "/srv/html/x/var/tmp,/srv/html/etc/etc"});
    let through = s.deploy("through", WEB_ESCAPE, through, &[]).await;
    let refused = s
        .result(&through, "Errored", |r| {
            r.condition == ScanCondition::Errored
        })
        .await;
    let message = refused.error_message.clone().unwrap_or_default();
    assert!(
        message.contains("/srv/html/") && message.contains("symbolic links"),
        "{message}"
    );
    assert!(refused.changed_paths.is_empty());
    s.finish().await;
    std::fs::remove_dir_all(HOST_TARGET).unwrap();
}

/// A relay from 127.0.0.1:`port` inside the real node's network namespace to this machine's
/// 127.0.0.1:`port` (e2e/scripts/netns-proxy.py, as the node reaches the API server): the
/// host-network agents reach the cluster's MinIO at the same address as this test.
struct Relay(Child);

impl Relay {
    fn start(port: u16) -> Relay {
        let netns = cluster_env().unwrap()["REAL_NODE_NETNS"].clone();
        let addr = format!("127.0.0.1:{port}");
        // Owned at once: dropped (killed and waited for) on every way out.
        let relay = Relay(
            Command::new("python3")
                .arg(repo_root().join("e2e/scripts/netns-proxy.py"))
                .args([&netns, &addr, &addr])
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + WAIT;
        loop {
            let ok = Command::new("nsenter")
                .arg(format!("--net={netns}"))
                .args(["bash", "-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return relay;
            }
            assert!(Instant::now() < deadline, "no relay to {addr} in {netns}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_snapshot_whose_s3_object_was_replaced_is_refused_and_its_container_errored() {
    let env = cluster_env().unwrap();
    let endpoint = env["S3_ENDPOINT"].clone();
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let bucket = format!("ctr-{}", unique_suffix());
    let secret = "fim-s3";
    // One Secret for operator and agents in this test; in a cluster the agents' keys only read.
    let keys = Secret {
        metadata: ObjectMeta {
            name: Some(secret.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "accessKey".to_owned(),
                ByteString(env["AWS_ACCESS_KEY_ID"].clone().into_bytes()),
            ),
            (
                "secretKey".to_owned(),
                ByteString(env["AWS_SECRET_ACCESS_KEY"].clone().into_bytes()),
            ),
        ])),
        ..Default::default()
    };
    let s = Setup::with_secret(
        "real-ctr-s3",
        containers_spec(),
        &[
            "--s3-endpoint",
            &endpoint,
            "--s3-bucket",
            &bucket,
            "--s3-credentials-secret",
            secret,
            "--agent-s3-endpoint",
            &endpoint,
            "--agent-s3-credentials-secret",
            secret,
        ],
        Some(keys),
    )
    .await;
    let ns = s.ns.name.clone();
    let _relay = Relay::start(port);
    let store = kube_fim_e2e::s3(Some(&bucket)).unwrap();
    store.ensure().await.unwrap();
    let snapshots: Api<Snapshot> = Api::namespaced(s.client.clone(), &ns);
    let from_s3 = |name: &str, image: &str, key: &str, data: &str| -> Snapshot {
        serde_json::from_value(json!({
            "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "Snapshot",
            "metadata": {"name": name},
            "spec": {"image": image, "algorithm": "SHA256",
                     "source": {"key": key, "sha256": sha256_hex(data)}},
        }))
        .unwrap()
    };

    // Version 1's lines in S3, untouched: the agent reads them (through its read-only access
    // the operator configured) and they are the baseline.
    let v1 = snapshot_lines(&[
        ("etc/web/web.conf", "listen 8080\nroot /srv/html\n"),
        ("srv/html/about.html", "about\n"),
        ("srv/html/index.html", "<h1>kube-fim web, version 1</h1>\n"),
    ]);
    let v1_key = format!("{ns}/web-1.sha256");
    store.put(&v1_key, v1.clone().into_bytes()).await.unwrap();
    snapshots
        .create(
            &PostParams::default(),
            &from_s3("web-1", WEB_1, &v1_key, &v1),
        )
        .await
        .unwrap();
    wait_vouched(&snapshots, "web-1").await;
    let good = s.deploy("good", WEB_1, monitored("none"), &[]).await;
    let checked = s.succeeded(&good).await;
    assert_eq!(checked.baseline_source, format!("Snapshot/{ns}/web-1"));

    // Version 2's lines, vouched for by the operator, then replaced in the bucket behind its
    // back by lines that would accept a defaced index.html: refused by the loader.
    let v2 = snapshot_lines(&WEB_2_FILES);
    let v2_key = format!("{ns}/web-2.sha256");
    store.put(&v2_key, v2.clone().into_bytes()).await.unwrap();
    snapshots
        .create(
            &PostParams::default(),
            &from_s3("web-2", WEB_2, &v2_key, &v2),
        )
        .await
        .unwrap();
    let control = wait_vouched(&snapshots, "web-2").await;
    assert_eq!(control, sha256_hex(&v2));
    let forged = v2.replace(
        &sha256_hex("<h1>kube-fim web, version 2</h1>\n"),
        &sha256_hex("defaced\n"),
    );
    assert_ne!(forged, v2);
    store.put(&v2_key, forged.into_bytes()).await.unwrap();
    let pod = s.deploy("web", WEB_2, monitored("restart"), &[]).await;
    let refused = s
        .result(&pod, "Errored", |r| r.condition == ScanCondition::Errored)
        .await;
    let message = refused.error_message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!("Snapshot {ns}/web-2"))
            && message.contains("does not match status.controlHash"),
        "{message}"
    );
    wait_for_event(
        &s.client,
        &ns,
        &pod.name_any(),
        "ContainerIntegrityStatus",
        "Warning",
        |n| n.contains("has an error!") && n.contains(&format!("Snapshot {ns}/web-2")),
    )
    .await;
    // Errored is not Failed: nothing is remediated on data nobody vouches for.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = Api::<Pod>::namespaced(s.client.clone(), &ns)
        .get(&pod.name_any())
        .await
        .unwrap();
    assert_eq!(still.uid(), pod.uid());
    s.finish().await;
}

#[tokio::test]
async fn bad_annotations_are_named_in_an_event_and_the_rest_of_the_pod_is_still_monitored() {
    let s = Setup::new("real-ctr-annot", containers_spec(), &[]).await;
    let ns = s.ns.name.clone();
    // A relative path, a `..` path and a container the pod does not have, beside a good path.
    let annotations = json!({"fim.kubefim.io/monitor": "true",
                             "web.fim.kubefim.io/paths": "/srv/html,etc/web,/srv/../etc/web",
                             "ghost.fim.kubefim.io/paths": "/etc"});
    let pod = s.deploy("annot", WEB_1, annotations, &[]).await;
    let note = wait_for_event(
        &s.client,
        &ns,
        &pod.name_any(),
        "ContainerMonitoringConfig",
        "Warning",
        |n| {
            n.contains("path \"etc/web\" is relative")
                && n.contains("path \"/srv/../etc/web\" contains a . or .. component")
                && n.contains("names container \"ghost\", which the pod does not have")
        },
    )
    .await;
    println!("annotation problems: {note}");
    let st = s.statuses.get(&s.status).await.unwrap();
    let problems = st
        .spec
        .pod_problems
        .iter()
        .find(|p| p.pod == pod.name_any())
        .expect("podProblems of the pod");
    assert_eq!(problems.problems.len(), 3, "{problems:?}");

    // The good path is monitored all the same: clean, then a change there is found; the
    // refused ones are not (a change under /etc/web goes unreported).
    let clean = s.succeeded(&pod).await;
    assert_eq!(clean.baseline_source, "FirstObserved");
    s.write(&pod, "/etc/web/web.conf", "listen 31337\n");
    s.write(&pod, INDEX, "defaced\n");
    let failed = s.failed(&pod).await;
    assert_only_index_changed(&failed);
    s.finish().await;
}
