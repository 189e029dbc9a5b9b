//! kube-fim on the cluster's real node (`real-node-0`: a real kubelet, containerd and runc; see
//! e2e/scripts/real-node-up.sh), with the test images hack/build-test-images.sh builds: the
//! DaemonSet the operator builds really runs, with exactly its security context, and detects a
//! change on this machine; without realtime the pod lacks SYS_ADMIN and fanotify is refused; the
//! operator's own Deployment from config/manager runs under the `restricted` Pod Security level.
//!
//! Needs `make e2e` (binaries, test images, cluster with the real node). Network: the agents
//! reach the API server on 127.0.0.1 of the node's own network namespace (host network), the
//! operator pod through the node's bridge; nothing leaves the namespaces the cluster scripts made.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, ScanCondition, labels};
use kube_fim_e2e::fixtures::*;
use kube_fim_e2e::real_node::{
    RealNode, capability_names, dockerfile_runtime, oci_archive_runtime, proc_status,
    test_image_archive,
};
use kube_fim_e2e::{
    Poll, TestNamespace, apply_crds, client, cluster_env, must_run, repo_root, wait_for,
};
use serde_json::{Value, json};

const AGENT_IMAGE: &str = "localhost/fim-agent:test";
const OPERATOR_IMAGE: &str = "localhost/fim-operator:test";

/// The test images and the release Dockerfiles start the same program as the same user.
#[test]
fn the_test_images_agree_with_the_release_dockerfiles() {
    for (image, dockerfile) in [
        ("fim-agent", "Dockerfile.agent"),
        ("fim-operator", "Dockerfile.operator"),
    ] {
        let release =
            dockerfile_runtime(&std::fs::read_to_string(repo_root().join(dockerfile)).unwrap())
                .unwrap();
        let archive = test_image_archive(image);
        assert!(
            archive.is_file(),
            "{} missing: hack/build-test-images.sh builds it (make e2e does)",
            archive.display()
        );
        let test = oci_archive_runtime(&archive).unwrap();
        assert_eq!(test, release, "{image} test image vs {dockerfile}");
    }
}

/// The operator on this machine, its agents on the real node reaching the API server through
/// 127.0.0.1 of the node's network namespace.
fn operator_for_real_node(ns: &str) -> Operator {
    let env = cluster_env().unwrap();
    let api = env["KUBE_APISERVER"].clone();
    Operator::start_with_agent_image(ns, AGENT_IMAGE, &["--agent-api-server", &api])
}

/// Rules that cover only `dir` (a directory made for the test; never the machine's own /etc).
fn rules_for(dir: &Path) -> ConfigMap {
    let d = dir.display();
    serde_json::from_value(json!({
        "metadata": {"name": "rules"},
        "data": {"aide.conf": format!(
            "CONTENT = sha256+ftype+p+u+g+n+s+m+c\nDIRS = ftype+p+u+g\n{d} d DIRS\n{d} f CONTENT\n"
        )},
    }))
    .unwrap()
}

/// A directory on this machine for the agent on the real node to watch (same mount namespace:
/// the pod sees it under /host).
fn test_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("kube-fim-{prefix}-"))
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::write(dir.path().join("app.conf"), "listen 80\n").unwrap();
    std::fs::write(dir.path().join("secret"), "s3cr3t\n").unwrap();
    dir
}

async fn agent_pod_on(client: &Client, ns: &str, fi: &str, node: &RealNode) -> Pod {
    let pods = agent_pods(client, ns, fi, std::slice::from_ref(&node.name)).await;
    pods[&node.name].clone()
}

/// The pod's log without terminal colour codes (the agent's tracing output has them).
async fn pod_log(client: &Client, ns: &str, pod: &str) -> String {
    let raw = Api::<Pod>::namespaced(client.clone(), ns)
        .logs(pod, &LogParams::default())
        .await
        .unwrap_or_else(|e| format!("(no log: {e})"));
    strip_ansi(&raw)
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn colour_codes_are_stripped() {
    assert_eq!(
        strip_ansi("\u{1b}[3mbackend\u{1b}[0m\u{1b}[2m=\u{1b}[0mfanotify"),
        "backend=fanotify"
    );
}

/// The real node's tests one at a time (host-network agents hold the metrics port on the node),
/// each starting on an idle node: namespaces a failed earlier test left behind are removed.
static REAL_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until the pod's log (read through the API server and the real kubelet) contains `want`.
async fn wait_for_log(client: &Client, ns: &str, pod: &str, want: &str) -> String {
    wait_for(&format!("{pod} to log {want:?}"), WAIT, || async {
        let log = pod_log(client, ns, pod).await;
        Ok(if log.contains(want) {
            Poll::Ready(log)
        } else {
            Poll::Pending(log)
        })
    })
    .await
    .unwrap()
}

/// The pod's container process as the kernel sees it: effective capabilities, no_new_privs,
/// seccomp mode, uid, and whether its root filesystem is mounted read-only.
struct Process {
    caps: Vec<String>,
    no_new_privs: String,
    seccomp: String,
    uid: String,
    root_read_only: bool,
}

fn process_of(node: &RealNode, pod: &Pod) -> Process {
    let pid = node.container_pid(pod, "fim-agent").unwrap();
    let status = proc_status(pid).unwrap();
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_read_only = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .rfind(|f| f.len() > 5 && f[4] == "/")
        .is_some_and(|f| f[5].split(',').any(|o| o == "ro"));
    Process {
        caps: capability_names(&status["CapEff"]),
        no_new_privs: status["NoNewPrivs"].clone(),
        seccomp: status["Seccomp"].clone(),
        uid: status["Uid"]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned(),
        root_read_only,
    }
}

fn failed_with_one_change(s: &FileIntegrityNodeStatus) -> bool {
    s.spec.last_result.as_ref().is_some_and(|r| {
        r.condition == ScanCondition::Failed && r.files_changed == 1 && r.files_added == 0
    })
}

#[tokio::test]
async fn the_operator_built_agent_pod_runs_on_the_real_node_and_detects_a_change_within_a_second() {
    let node = RealNode::from_env().unwrap();
    let client = client().await.unwrap();
    let _one_at_a_time = REAL_NODE.lock().await;
    node.wait_idle(&client).await;
    let ns = namespace_with_agent_account(&client, "real").await;
    grant_agent_rbac(&client, &ns.name).await;
    let dir = test_dir("real");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    cms.create(&PostParams::default(), &rules_for(dir.path()))
        .await
        .unwrap();
    let operator = operator_for_real_node(&ns.name);
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    fis.create(
        &PostParams::default(),
        &file_integrity(
            "real",
            json!({
                "nodeSelector": {"kubernetes.io/hostname": node.name},
                "config": {"name": "rules", "namespace": ns.name, "key": "aide.conf",
                           "gracePeriod": 10, "maxBackups": 2},
                "realtime": true,
            }),
        ),
    )
    .await
    .unwrap();

    // The pod runs with exactly the security context the operator put in the DaemonSet.
    let pod = agent_pod_on(&client, &ns.name, "real", &node).await;
    let ds = Api::<DaemonSet>::namespaced(client.clone(), &ns.name)
        .get("fim-agent-real")
        .await
        .unwrap();
    let template = ds.spec.unwrap().template.spec.unwrap();
    let spec = pod.spec.clone().unwrap();
    assert_eq!(
        spec.containers[0].security_context, template.containers[0].security_context,
        "pod vs DaemonSet security context"
    );
    assert_eq!(spec.security_context, template.security_context);
    assert_eq!(
        spec.host_network,
        Some(true),
        "loopback API address: host network"
    );
    assert_eq!(spec.containers[0].image.as_deref(), Some(AGENT_IMAGE));

    // And the kernel agrees: only DAC_READ_SEARCH and (realtime) SYS_ADMIN, no_new_privs,
    // seccomp filter, root, read-only root filesystem.
    let p = process_of(&node, &pod);
    assert_eq!(p.caps, ["DAC_READ_SEARCH", "SYS_ADMIN"]);
    assert_eq!(p.no_new_privs, "1");
    assert_eq!(p.seccomp, "2", "RuntimeDefault seccomp filter");
    assert_eq!(p.uid, "0");
    assert!(p.root_read_only, "read-only root filesystem");

    // Baseline of the test directory, then realtime detection with fanotify (SYS_ADMIN).
    let statuses: Api<FileIntegrityNodeStatus> = Api::namespaced(client.clone(), &ns.name);
    let status_name = FileIntegrityNodeStatus::name_for("real", &node.name);
    let pod_name = pod.name_any();
    wait_for("the baseline on the real node", WAIT, || async {
        let st = statuses.get_opt(&status_name).await?;
        Ok(
            match st.filter(|s| {
                s.spec
                    .last_result
                    .as_ref()
                    .is_some_and(|r| r.condition == ScanCondition::Succeeded)
            }) {
                Some(s) => Poll::Ready(s),
                None => Poll::Pending(pod_log(&client, &ns.name, &pod_name).await),
            },
        )
    })
    .await
    .unwrap();
    let log = wait_for_log(&client, &ns.name, &pod_name, "realtime detection on").await;
    assert!(log.contains("backend=fanotify"), "{log}");

    // A change on this machine: Failed through the real pod in under a second.
    let changed = dir.path().join("app.conf");
    let start = Instant::now();
    std::fs::write(&changed, "listen 31337\n").unwrap();
    let mut detected = None;
    while start.elapsed() < Duration::from_secs(5) {
        if let Some(st) = statuses.get_opt(&status_name).await.unwrap()
            && failed_with_one_change(&st)
        {
            detected = Some((start.elapsed(), st));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (elapsed, st) = detected.unwrap_or_else(|| {
        panic!(
            "no Failed status 5 s after the change; agent log:\n{}",
            std::fs::read_to_string(operator.log_path.clone()).unwrap_or_default()
        )
    });
    println!("real node: change to Failed status in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(st.spec.changed_paths, [changed.display().to_string()]);
    // The status says which watcher found it.
    assert_eq!(
        st.spec.realtime_watcher,
        Some(kube_fim_crds::RealtimeWatcher::Fanotify)
    );

    // The failure ConfigMap, the event and the metric.
    let cm_name = format!("real-{}-failed", node.name);
    let cm = cms.get(&cm_name).await.unwrap();
    let compressed = cm.annotations().contains_key(labels::COMPRESSED);
    let report = fim_agent::failure_report::decode_failure_log(
        &cm.data.unwrap_or_default()["integritylog"],
        compressed,
    )
    .unwrap();
    assert!(report.contains(&changed.display().to_string()), "{report}");
    // The seed's wording, then the changed path (issue 10, item 7).
    let message = format!(
        "node {} has changed! a:0,c:1,r:0 log:{}/{cm_name}; changed: {}",
        node.name,
        ns.name,
        changed.display()
    );
    wait_for_event(
        &client,
        &ns.name,
        "real",
        "NodeIntegrityStatus",
        "Warning",
        |n| n == message,
    )
    .await;
    wait_for_metric(
        &operator,
        &format!(
            "file_integrity_operator_node_failed{{node=\"{}\"}} 1",
            node.name
        ),
    )
    .await;

    fis.delete("real", &DeleteParams::default()).await.unwrap();
    wait_for_no_pods(&client, &ns.name).await;
    drop(operator);
    // The agents' baseline hostPath (the operator's default root) is on this machine.
    let _ = std::fs::remove_dir_all(format!("/var/lib/kube-fim/{}", ns.name));
    ns.delete().await.unwrap();
}

/// Without realtime the operator grants no SYS_ADMIN, and the privilege is really needed: the
/// agent in a pod with that security context but asked for realtime finds fanotify refused and
/// watches with inotify.
#[tokio::test]
async fn without_realtime_the_pod_has_no_sys_admin_and_fanotify_is_refused() {
    let node = RealNode::from_env().unwrap();
    let client = client().await.unwrap();
    let _one_at_a_time = REAL_NODE.lock().await;
    node.wait_idle(&client).await;
    let ns = namespace_with_agent_account(&client, "real-nort").await;
    grant_agent_rbac(&client, &ns.name).await;
    let dir = test_dir("nort");
    let baseline = tempfile::Builder::new()
        .prefix("kube-fim-probe-db-")
        .tempdir_in("/var/tmp")
        .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &rules_for(dir.path()))
        .await
        .unwrap();
    let operator = operator_for_real_node(&ns.name);
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    fis.create(
        &PostParams::default(),
        &file_integrity(
            "nort",
            json!({
                "nodeSelector": {"kubernetes.io/hostname": node.name},
                "config": {"name": "rules", "namespace": ns.name, "key": "aide.conf",
                           "gracePeriod": 10, "maxBackups": 2},
                "realtime": false,
            }),
        ),
    )
    .await
    .unwrap();
    let pod = agent_pod_on(&client, &ns.name, "nort", &node).await;
    let p = process_of(&node, &pod);
    assert_eq!(p.caps, ["DAC_READ_SEARCH"], "no SYS_ADMIN without realtime");
    assert!(
        !pod.spec.as_ref().unwrap().containers[0]
            .args
            .clone()
            .unwrap_or_default()
            .contains(&"--realtime".to_owned())
    );

    // The same pod (the DaemonSet's template) asked for realtime, on its own baseline directory
    // and under another node name, so it does not interfere with the DaemonSet's agent.
    let ds = Api::<DaemonSet>::namespaced(client.clone(), &ns.name)
        .get("fim-agent-nort")
        .await
        .unwrap();
    let mut spec = ds.spec.unwrap().template.spec.unwrap();
    spec.node_name = Some(node.name.clone());
    let c = &mut spec.containers[0];
    // Another metrics port: both pods use the node's network.
    let args = c.args.as_mut().unwrap();
    let at = args.iter().position(|a| a == "--metrics-addr").unwrap();
    args[at + 1] = "0.0.0.0:18080".into();
    args.push("--realtime".into());
    c.ports = None;
    for e in c.env.as_mut().unwrap() {
        if e.name == "NODE_NAME" {
            e.value_from = None;
            e.value = Some("realtime-probe".into());
        }
    }
    for v in spec.volumes.as_mut().unwrap() {
        if v.name == "baseline" {
            v.host_path.as_mut().unwrap().path = baseline.path().display().to_string();
        }
    }
    let probe = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("realtime-probe".into()),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &probe).await.unwrap();
    let log = wait_for_log(&client, &ns.name, "realtime-probe", "realtime detection on").await;
    assert!(
        log.contains("fanotify not usable, watching with inotify"),
        "{log}"
    );
    assert!(log.contains("backend=inotify"), "{log}");
    let probe = pods.get("realtime-probe").await.unwrap();
    assert_eq!(process_of(&node, &probe).caps, ["DAC_READ_SEARCH"]);

    pods.delete("realtime-probe", &DeleteParams::default())
        .await
        .unwrap();
    fis.delete("nort", &DeleteParams::default()).await.unwrap();
    wait_for_no_pods(&client, &ns.name).await;
    drop(operator);
    // The agents' baseline hostPath (the operator's default root) is on this machine.
    let _ = std::fs::remove_dir_all(format!("/var/lib/kube-fim/{}", ns.name));
    ns.delete().await.unwrap();
}

/// The operator Deployment of config/manager (its pod spec as is, with the test image) runs on
/// the real node in a namespace enforcing the `restricted` Pod Security level, and becomes Ready
/// (its readiness probe needs the Lease and synced caches: it reaches the API server).
#[tokio::test]
async fn the_operator_deployment_runs_on_the_real_node_under_restricted_pod_security() {
    let node = RealNode::from_env().unwrap();
    let client = client().await.unwrap();
    let _one_at_a_time = REAL_NODE.lock().await;
    node.wait_idle(&client).await;
    apply_crds(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "real-psa").await.unwrap();
    let labels = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();

    // The operator's identity and rights from config/rbac, moved to the test namespace; the
    // cluster-wide objects renamed `<name>-<namespace>` and labelled, to be deleted at the end.
    let suffix = ns.name.clone();
    let test_label = format!("kube-fim-e2e/real-node={suffix}");
    let objects = kustomize("rbac");
    let moved = |o: &Value, cluster: bool| {
        let mut o = o.clone();
        if cluster {
            let name = o["metadata"]["name"].as_str().unwrap().to_owned();
            o["metadata"]["name"] = json!(format!("{name}-{suffix}"));
            o["metadata"]["labels"]["kube-fim-e2e/real-node"] = json!(suffix);
        } else {
            o["metadata"]["namespace"] = json!(ns.name);
        }
        o
    };
    for o in &objects {
        let pp = PostParams::default();
        match o["kind"].as_str().unwrap() {
            "ServiceAccount" => {
                Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
                    .create(&pp, &serde_json::from_value(moved(o, false)).unwrap())
                    .await
                    .unwrap();
            }
            "Role" => {
                Api::<Role>::namespaced(client.clone(), &ns.name)
                    .create(&pp, &serde_json::from_value(moved(o, false)).unwrap())
                    .await
                    .unwrap();
            }
            "RoleBinding" => {
                let mut rb = moved(o, false);
                rb["subjects"][0]["namespace"] = json!(ns.name);
                Api::<RoleBinding>::namespaced(client.clone(), &ns.name)
                    .create(&pp, &serde_json::from_value(rb).unwrap())
                    .await
                    .unwrap();
            }
            "ClusterRole" => {
                Api::<ClusterRole>::all(client.clone())
                    .create(&pp, &serde_json::from_value(moved(o, true)).unwrap())
                    .await
                    .unwrap();
            }
            "ClusterRoleBinding" => {
                let mut crb = moved(o, true);
                let role = crb["roleRef"]["name"].as_str().unwrap().to_owned();
                crb["roleRef"]["name"] = json!(format!("{role}-{suffix}"));
                for subject in crb["subjects"].as_array_mut().unwrap() {
                    subject["namespace"] = json!(ns.name);
                }
                Api::<ClusterRoleBinding>::all(client.clone())
                    .create(&pp, &serde_json::from_value(crb).unwrap())
                    .await
                    .unwrap();
            }
            other => panic!("unexpected {other} in config/rbac"),
        }
    }

    let mut deployment = kustomize("manager")
        .into_iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    deployment["metadata"]["namespace"] = json!(ns.name);
    let pod_spec = &mut deployment["spec"]["template"]["spec"];
    pod_spec["containers"][0]["image"] = json!(OPERATOR_IMAGE);
    pod_spec["nodeSelector"] = json!({"kubernetes.io/hostname": node.name});
    let deployment: Deployment = serde_json::from_value(deployment).unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("the operator Deployment");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = wait_for(
        "the operator pod Ready on the real node",
        WAIT * 2,
        || async {
            let list = pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=fim-operator"))
                .await?;
            let ready = list.items.into_iter().find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            Ok(match ready {
                Some(p) => Poll::Ready(p),
                None => Poll::Pending(format!(
                    "deployment status: {:?}",
                    deployments.get(&deployment.name_any()).await?.status
                )),
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(node.name.as_str())
    );
    let log = pod_log(&client, &ns.name, &pod.name_any()).await;
    assert!(log.contains("acquired leadership"), "{log}");
    let p = {
        let pid = node.container_pid(&pod, "operator").unwrap();
        proc_status(pid).unwrap()
    };
    assert_eq!(capability_names(&p["CapEff"]), Vec::<String>::new());
    assert!(p["Uid"].starts_with("65532"), "{}", p["Uid"]);

    // The level is enforced here: a host-network pod (what the agents need) is refused.
    let mut host = pod.clone();
    host.metadata = kube::api::ObjectMeta {
        name: Some("host-network".into()),
        ..Default::default()
    };
    host.status = None;
    host.spec.as_mut().unwrap().host_network = Some(true);
    let err = pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &host,
        )
        .await
        .expect_err("a host-network pod passed the restricted level");
    assert!(err.to_string().contains("restricted"), "{err}");

    deployments
        .delete(&deployment.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    let _ = Command::new(kubectl())
        .args([
            "delete",
            "clusterrolebinding,clusterrole",
            "-l",
            &test_label,
        ])
        .env("KUBECONFIG", kube_fim_e2e::kubeconfig_path())
        .status();
    wait_for_no_pods(&client, &ns.name).await;
    ns.delete().await.unwrap();
}

/// Waits until the namespace has no pods left (so the real node is idle for the next test).
async fn wait_for_no_pods(client: &Client, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for("the test's pods to go", WAIT, || async {
        let left: Vec<String> = pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        Ok(if left.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{left:?}"))
        })
    })
    .await
    .unwrap();
}

fn kubectl() -> std::path::PathBuf {
    std::path::PathBuf::from(&cluster_env().unwrap()["KUBECTL"])
}

/// `kubectl kustomize config/<dir>`, parsed.
fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new(kubectl())
        .args([
            "kustomize",
            repo_root().join("config").join(dir).to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<Value>(&String::from_utf8_lossy(&out.stdout))
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect::<Vec<_>>()
}

/// A namespace for an OLM install: the privileged Pod Security level its agents need and, with
/// `pin_to`, every pod of the namespace held to that node.
async fn olm_namespace(client: &Client, prefix: &str, pin_to: Option<&RealNode>) -> TestNamespace {
    let ns = TestNamespace::create(client, prefix).await.unwrap();
    let mut patch = json!({"metadata": {
        "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
    }});
    if let Some(node) = pin_to {
        patch["metadata"]["annotations"] = json!({
            "scheduler.alpha.kubernetes.io/node-selector": format!("kubernetes.io/hostname={}", node.name),
        });
    }
    Api::<Namespace>::all(client.clone())
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    ns
}

/// The OLM bundle of this tree with the test images, written to `dir`.
fn write_test_bundle(dir: &Path) {
    must_run(
        &binary("bundlegen", "kube-fim-crds"),
        &[
            "--out",
            dir.to_str().unwrap(),
            "--operator-image",
            OPERATOR_IMAGE,
            "--agent-image",
            AGENT_IMAGE,
        ],
        &[],
    );
}

/// Issue 16: kube-fim installed by a real OLM (hack/catalog-deploy.sh: olm-operator and
/// catalog-operator of the pinned module, a catalog of a bundle generated with the test images)
/// runs on the real node and reconciles a FileIntegrity end to end. The CSV succeeds only once
/// the operator pod is Ready, which needs its Lease, synced caches and the agents' admission
/// policies applied with the RBAC OLM granted; the agents, running with OLM's fim-agent service
/// account and confined by those policies, write the baseline and then the change.
#[tokio::test]
async fn the_olm_installed_operator_reconciles_a_file_integrity_on_the_real_node() {
    let node = RealNode::from_env().unwrap();
    let client = client().await.unwrap();
    let _one_at_a_time = REAL_NODE.lock().await;
    node.wait_idle(&client).await;
    // Every pod of the namespace on the real node (PodNodeSelector): the Subscription's
    // nodeSelector alone does not hold the first Deployment OLM writes (olm.rs says why).
    let ns = olm_namespace(&client, "real-olm", Some(&node)).await;

    // A bundle of this tree with the test images, and its catalog.
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let catalog = tmp.path().join("catalog");
    write_test_bundle(&bundle);
    must_run(
        Path::new("hack/catalog.sh"),
        &[catalog.to_str().unwrap(), bundle.to_str().unwrap()],
        &[],
    );
    let env = cluster_env().unwrap();
    let kubeconfig = kube_fim_e2e::kubeconfig_path();
    let selector = format!("kubernetes.io/hostname={}", node.name);
    let csv = must_run(
        Path::new("hack/catalog-deploy.sh"),
        &[],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("KUBECTL", &env["KUBECTL"]),
            ("NAMESPACE", &ns.name),
            ("CATALOG_DIR", catalog.to_str().unwrap()),
            ("NODE_SELECTOR", &selector),
            ("WAIT", "300"),
        ],
    );
    assert!(csv.trim().starts_with("kube-fim.v"), "{csv}");

    // The operator pod OLM created runs on the real node, and applied the agents' policies for
    // its namespace.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let operator_pod = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=fim-operator"))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("the operator pod");
    assert_eq!(
        operator_pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(node.name.as_str())
    );
    let vap = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
        ),
        "validatingadmissionpolicies",
    );
    let policy = Api::<kube::api::DynamicObject>::all_with(client.clone(), &vap)
        .get(&format!("fim-agent-own-node-status-{}", ns.name))
        .await
        .expect("the operator applied the agents' policy");
    assert!(
        policy.data["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .unwrap()
            .contains(&format!("system:serviceaccount:{}:fim-agent", ns.name))
    );
    assert!(
        policy
            .metadata
            .managed_fields
            .unwrap_or_default()
            .iter()
            .any(|m| m.manager.as_deref() == Some(labels::OPERATOR_MANAGER))
    );

    // A FileIntegrity on the real node: baseline, then a change found.
    let dir = test_dir("real-olm");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    cms.create(&PostParams::default(), &rules_for(dir.path()))
        .await
        .unwrap();
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    fis.create(
        &PostParams::default(),
        &file_integrity(
            "olm",
            json!({
                "nodeSelector": {"kubernetes.io/hostname": node.name},
                "config": {"name": "rules", "namespace": ns.name, "key": "aide.conf",
                           "gracePeriod": 10, "maxBackups": 2},
                "realtime": true,
            }),
        ),
    )
    .await
    .unwrap();
    let statuses: Api<FileIntegrityNodeStatus> = Api::namespaced(client.clone(), &ns.name);
    let status_name = FileIntegrityNodeStatus::name_for("olm", &node.name);
    let operator_name = operator_pod.name_any();
    wait_for("the baseline on the real node", WAIT * 3, || async {
        let st = statuses.get_opt(&status_name).await?;
        Ok(
            match st.filter(|s| {
                s.spec
                    .last_result
                    .as_ref()
                    .is_some_and(|r| r.condition == ScanCondition::Succeeded)
            }) {
                Some(s) => Poll::Ready(s),
                None => Poll::Pending(pod_log(&client, &ns.name, &operator_name).await),
            },
        )
    })
    .await
    .unwrap();
    let changed = dir.path().join("app.conf");
    std::fs::write(&changed, "listen 31337\n").unwrap();
    let st = wait_for("the change reported", WAIT, || async {
        Ok(match statuses.get_opt(&status_name).await? {
            Some(st) if failed_with_one_change(&st) => Poll::Ready(st),
            other => Poll::Pending(format!("{:?}", other.map(|s| s.spec.last_result))),
        })
    })
    .await
    .unwrap();
    assert_eq!(st.spec.changed_paths, [changed.display().to_string()]);
    wait_for_fi(
        &fis,
        "olm",
        "the FileIntegrity to count the failed node",
        |fi| fi.status.as_ref().is_some_and(|s| s.failed == 1),
    )
    .await;

    fis.delete("olm", &DeleteParams::default()).await.unwrap();
    let _ = std::fs::remove_dir_all(format!("/var/lib/kube-fim/{}", ns.name));
    let ns_name = ns.name.clone();
    ns.delete().await.unwrap();
    wait_for_no_pods(&client, &ns_name).await;
}

/// Issue 16: OLM's own bundle unpacking, with no registry. The bundle image (bundle.Dockerfile,
/// buildah) and the unpack tooling image (cp, OLM's cpb, opm) are imported into the real node's
/// containerd (hack/olm-images.sh); the catalog names the bundle by digest, so OLM runs its
/// unpack Job (bundle image -> cpb -> `opm alpha bundle extract` -> ConfigMap) on the real node
/// and installs from that ConfigMap. kwok nodes are cordoned meanwhile: a Job pod there would
/// "complete" without running anything.
#[tokio::test]
async fn olm_unpacks_the_bundle_image_on_the_real_node_and_installs_from_it() {
    let node = RealNode::from_env().unwrap();
    let client = client().await.unwrap();
    let _one_at_a_time = REAL_NODE.lock().await;
    node.wait_idle(&client).await;
    let ns = olm_namespace(&client, "real-unpack", None).await;
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let catalog = tmp.path().join("catalog");
    write_test_bundle(&bundle);
    let env = cluster_env().unwrap();
    let image = must_run(
        Path::new("hack/olm-images.sh"),
        &[
            "--import",
            &env["REAL_NODE_CONTAINERD"],
            bundle.to_str().unwrap(),
        ],
        &[],
    )
    .trim()
    .to_owned();
    assert!(
        image.starts_with("localhost/kube-fim-bundle@sha256:"),
        "{image}"
    );
    must_run(
        Path::new("hack/catalog.sh"),
        &[catalog.to_str().unwrap(), bundle.to_str().unwrap()],
        &[("IMAGES", &image)],
    );

    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let kwok: Vec<String> = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    let cordon = |on: bool| {
        let nodes = nodes.clone();
        let kwok = kwok.clone();
        async move {
            for n in &kwok {
                nodes
                    .patch(
                        n,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"unschedulable": on}})),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    cordon(true).await;
    let kubeconfig = kube_fim_e2e::kubeconfig_path();
    let selector = format!("kubernetes.io/hostname={}", node.name);
    let result = Command::new("hack/catalog-deploy.sh")
        .envs([
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("KUBECTL", &env["KUBECTL"]),
            ("NAMESPACE", &ns.name),
            ("CATALOG_DIR", catalog.to_str().unwrap()),
            ("NODE_SELECTOR", &selector),
            ("WAIT", "300"),
        ])
        .current_dir(repo_root())
        .output()
        .unwrap();
    cordon(false).await;
    assert!(
        result.status.success(),
        "catalog-deploy:\n{}\n{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );

    // The unpack Job ran on the real node and left the bundle in a ConfigMap, and the operator
    // OLM installed from it runs there.
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns.name);
    let job = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("OLM's bundle unpack Job");
    assert_eq!(job.status.as_ref().and_then(|s| s.succeeded), Some(1));
    let unpacked = Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .get(&job.name_any())
        .await
        .expect("the unpacked bundle's ConfigMap");
    // `opm alpha bundle extract -z` stores the manifests gzipped, as binaryData.
    let keys: Vec<String> = unpacked
        .data
        .unwrap_or_default()
        .into_keys()
        .chain(unpacked.binary_data.unwrap_or_default().into_keys())
        .collect();
    assert!(
        keys.iter().any(|k| k.contains("clusterserviceversion")),
        "{keys:?}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let on_node: Vec<Pod> = pods.list(&ListParams::default()).await.unwrap().items;
    assert!(
        on_node
            .iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(node.name.as_str())),
        "every pod (unpack Job, operator) on the real node"
    );
    let operator = on_node
        .iter()
        .find(|p| p.name_any().starts_with("fim-operator-"))
        .expect("the operator pod");
    assert_eq!(
        operator.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some(OPERATOR_IMAGE)
    );

    let ns_name = ns.name.clone();
    ns.delete().await.unwrap();
    wait_for_no_pods(&client, &ns_name).await;
}
