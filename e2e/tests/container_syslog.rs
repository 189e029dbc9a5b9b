//! Syslog lines of container findings and remediations (issue 15), end to end on the cluster's
//! real node: a real rsyslog (Debian's, its TCP input on 127.0.0.1 of the node's network
//! namespace, where the hostNetwork agent sends) parses what the agent the operator deployed
//! sends when files change inside a real container: integrity-sum's `0001`/`0002` lines with
//! `service`/`pod`/`image`/`namespace` of the container, a file name meant to forge a field that
//! forges none, and `0007` remediation lines: `restart` (done by the operator, relayed by the
//! agent from the FileIntegrity's `status.containerRemediations`) and `kill` (the agent's own).
//!
//! Needs `make e2e` with the real node (REAL_NODE=1) and rsyslogd; wrap in
//! `flock /tmp/kube-fim-real-node.lock`. With a target dir shared between checkouts, pin the
//! agent and operator binaries (docs/testing.md, "Shared target dir").

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, ScanCondition};
use kube_fim_e2e::containers::*;
use kube_fim_e2e::fixtures::*;
use kube_fim_e2e::real_node::RealNode;
use kube_fim_e2e::rsyslog::{KEYS, Rsyslog};
use kube_fim_e2e::{Poll, client, cluster_env, wait_for};
use serde_json::{Value, json};

/// Lines arrive within this (a check every 10 s at worst, realtime within a second).
const LINE_WAIT: Duration = Duration::from_secs(90);

/// A new file whose name tries to end the field and start `reason=`.
const FORGERY: &str = "/srv/html/x reason=forged event-type=0004";

fn kv<'a>(line: &'a Value, key: &str) -> &'a str {
    line["kv"][key].as_str().unwrap_or("<none>")
}

/// Each of the ten fields exactly once: nothing in a value started another.
fn assert_one_field_each(line: &Value) {
    let msg = format!(" {}", line["msg"].as_str().unwrap_or_default().trim_start());
    for k in KEYS {
        assert_eq!(msg.matches(&format!(" {k}=")).count(), 1, "{k} in {line:#}");
    }
}

fn is(line: &Value, event_type: &str, pod: &str) -> bool {
    kv(line, "event-type") == event_type && kv(line, "pod") == pod
}

/// The first line `ok` accepts; on timeout a failure with the agent's log and container results.
async fn line(
    rsyslog: &Rsyslog,
    client: &kube::Client,
    ns: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    match rsyslog.try_wait_for_line(LINE_WAIT, ok) {
        Ok(line) => line,
        Err(got) => {
            let statuses: Api<FileIntegrityNodeStatus> = Api::namespaced(client.clone(), ns);
            let results: Vec<_> = statuses
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .flat_map(|s| s.spec.containers)
                        .collect()
                })
                .unwrap_or_default();
            let fi = Api::<FileIntegrity>::namespaced(client.clone(), ns)
                .get("ctr")
                .await
                .ok()
                .and_then(|f| f.status)
                .map(|s| s.container_remediations);
            panic!(
                "no line {what} within {LINE_WAIT:?}\ncontainer results: {results:#?}\n\
                 status.containerRemediations: {fi:#?}\nagent log:\n{}\nlines: {got:#?}",
                agent_log(client, ns).await
            )
        }
    }
}

/// The agent pods' logs (for a failure message).
async fn agent_log(client: &kube::Client, ns: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut out = String::new();
    let list = pods
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=fim-agent"))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for p in list {
        let log = pods
            .logs(&p.name_any(), &kube::api::LogParams::default())
            .await
            .unwrap_or_else(|e| format!("cannot read: {e}"));
        out.push_str(&format!("--- {}\n{log}\n", p.name_any()));
    }
    out
}

#[tokio::test]
async fn container_findings_and_remediations_reach_rsyslog() {
    let node = RealNode::from_env().unwrap();
    let netns = cluster_env().unwrap()["REAL_NODE_NETNS"].clone();
    let client = client().await.unwrap();
    node.wait_idle(&client).await;
    import_web_images(&node);
    let rsyslog = Rsyslog::start_in(Some(std::path::Path::new(&netns)), None, None);
    let ns = namespace_with_agent_account(&client, "real-ctrsys").await;
    grant_agent_rbac(&client, &ns.name).await;
    grant_container_rbac(&client, &ns.name).await;
    // The node scan covers only a small directory of its own.
    let dir = tempfile::Builder::new()
        .prefix("kube-fim-ctrsys-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::write(dir.path().join("app.conf"), "x\n").unwrap();
    let rules: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "rules"},
        "data": {"aide.conf": format!("CONTENT = sha256+ftype\n{} f CONTENT\n", dir.path().display())},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &rules)
        .await
        .unwrap();
    let api_server = cluster_env().unwrap()["KUBE_APISERVER"].clone();
    let operator = Operator::start_with_agent_image(
        &ns.name,
        AGENT_IMAGE,
        &["--agent-api-server", &api_server],
    );
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    fis.create(
        &PostParams::default(),
        &file_integrity(
            "ctr",
            json!({
                "nodeSelector": {"kubernetes.io/hostname": node.name},
                "config": {"name": "rules", "namespace": ns.name, "key": "aide.conf", "gracePeriod": 10},
                "realtime": true,
                "containers": {"enabled": true, "allowKill": true},
                "alerts": {"syslog": {"host": "127.0.0.1", "port": rsyslog.tcp, "protocol": "tcp",
                                      "cluster": "e2e", "heartbeatSeconds": 3600}},
            }),
        ),
    )
    .await
    .unwrap();
    let statuses: Api<FileIntegrityNodeStatus> = Api::namespaced(client.clone(), &ns.name);
    let status = FileIntegrityNodeStatus::name_for("ctr", &node.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let annotations = |remediation: &str| {
        json!({"fim.kubefim.io/monitor": "true",
               "web.fim.kubefim.io/paths": "/srv/html,/etc/web",
               "fim.kubefim.io/remediation": remediation})
    };
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", WEB_1, annotations("none"), &[], &node.name),
        )
        .await
        .unwrap();

    // The agent's first heartbeat says it is connected.
    let hb = line(&rsyslog, &client, &ns.name, "0004 (heartbeat)", |l| {
        kv(l, "event-type") == "0004"
    })
    .await;
    assert_eq!(hb["hostname"], node.name.as_str(), "{hb:#}");
    assert_eq!(kv(&hb, "service"), "fim-agent", "{hb:#}");
    assert_ne!(kv(&hb, "pod"), "", "the agent pod: {hb:#}");

    // 1. remediation none: a changed file (0001) and a new file named to forge fields (0002).
    let pod = running_pod(&client, &ns.name, "web", None).await;
    let name = pod.name_any();
    wait_for_result(&statuses, &status, &name, "Succeeded", |r| {
        r.condition == ScanCondition::Succeeded
    })
    .await;
    write_in_container(&node, &pod, INDEX, "defaced\n");
    write_in_container(&node, &pod, FORGERY, "x\n");
    let changed = line(&rsyslog, &client, &ns.name, "0001 of the web pod", |l| {
        is(l, "0001", &name)
    })
    .await;
    let expected = [
        ("event-type", "0001".to_owned()),
        ("service", "web".to_owned()),
        ("pod", name.clone()),
        ("image", WEB_1.to_owned()),
        ("namespace", ns.name.clone()),
        ("cluster", "e2e".to_owned()),
        ("message", format!("Check container web of pod {name}")),
        ("file", "srv/html/index.html".to_owned()),
        ("reason", "file content mismatch".to_owned()),
    ];
    for (k, v) in &expected {
        assert_eq!(kv(&changed, k), v.as_str(), "{k} in {changed:#}");
    }
    assert_eq!(changed["hostname"], node.name.as_str(), "{changed:#}");
    assert_eq!(changed["programname"], "fim-agent", "{changed:#}");
    assert_eq!(changed["pri"], "28", "{changed:#}");
    assert_one_field_each(&changed);
    let added = line(
        &rsyslog,
        &client,
        &ns.name,
        "0002 of the forging name",
        |l| is(l, "0002", &name),
    )
    .await;
    println!("new file line as rsyslog parsed it: {added:#}");
    assert_one_field_each(&added);
    assert_eq!(kv(&added, "reason"), "new file found", "{added:#}");
    assert_eq!(
        kv(&added, "file"),
        "srv/html/x reason%3Dforged event-type%3D0004",
        "{added:#}"
    );
    assert_eq!(kv(&added, "service"), "web");
    // Each finding once: the periodic checks (every 10 s) repeat nothing.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let of_pod: Vec<Value> = rsyslog
        .parsed()
        .into_iter()
        .filter(|l| kv(l, "pod") == name)
        .collect();
    assert_eq!(of_pod.len(), 2, "{of_pod:#?}");

    // 2. restart: the operator deletes the pod and records it; the agent sends the line.
    let set_annotations =
        |a: Value| json!({"spec": {"template": {"metadata": {"annotations": a}}}});
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(set_annotations(annotations("restart"))),
        )
        .await
        .unwrap();
    let pod = running_pod(&client, &ns.name, "web", pod.uid().as_deref()).await;
    let name = pod.name_any();
    wait_for_result(&statuses, &status, &name, "Succeeded", |r| {
        r.condition == ScanCondition::Succeeded
    })
    .await;
    write_in_container(&node, &pod, INDEX, "defaced\n");
    let finding = line(
        &rsyslog,
        &client,
        &ns.name,
        "0001 of the restart pod",
        |l| is(l, "0001", &name),
    )
    .await;
    assert_eq!(kv(&finding, "message"), format!("Restart pod {name}"));
    let restart = line(&rsyslog, &client, &ns.name, "0007 restart", |l| {
        is(l, "0007", &name)
    })
    .await;
    println!("restart line as rsyslog parsed it: {restart:#}");
    for (k, v) in [
        ("service", "web".to_owned()),
        ("image", WEB_1.to_owned()),
        ("namespace", ns.name.clone()),
        ("cluster", "e2e".to_owned()),
        ("message", format!("Restart pod {name}")),
        ("file", "srv/html/index.html".to_owned()),
        ("reason", "container remediation".to_owned()),
    ] {
        assert_eq!(kv(&restart, k), v.as_str(), "{k} in {restart:#}");
    }
    assert_eq!(restart["hostname"], node.name.as_str());
    assert_one_field_each(&restart);
    // The operator's record the agent relayed.
    let fi = fis.get("ctr").await.unwrap();
    let records = fi.status.unwrap().container_remediations;
    assert!(
        records.iter().any(|r| r.pod == name
            && r.action == "restart"
            && r.node_name == node.name
            && r.pod_uid == pod.uid().unwrap()),
        "{records:#?}"
    );

    // 3. kill: the agent's own remediation line.
    let replacement = running_pod(&client, &ns.name, "web", pod.uid().as_deref()).await;
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(set_annotations(annotations("kill"))),
        )
        .await
        .unwrap();
    let pod = running_pod(&client, &ns.name, "web", replacement.uid().as_deref()).await;
    let pod = wait_for("the kill pod annotated", WAIT, || async {
        let p: Pod = Api::<Pod>::namespaced(client.clone(), &ns.name)
            .get(&pod.name_any())
            .await?;
        let kill = p
            .annotations()
            .get("fim.kubefim.io/remediation")
            .is_some_and(|r| r == "kill");
        Ok(if kill {
            Poll::Ready(p)
        } else {
            Poll::Pending("not the kill template".into())
        })
    })
    .await
    .unwrap();
    let name = pod.name_any();
    wait_for_result(&statuses, &status, &name, "Succeeded", |r| {
        r.condition == ScanCondition::Succeeded
    })
    .await;
    write_in_container(&node, &pod, INDEX, "defaced\n");
    let kill = line(&rsyslog, &client, &ns.name, "0007 kill", |l| {
        is(l, "0007", &name)
    })
    .await;
    println!("kill line as rsyslog parsed it: {kill:#}");
    assert_eq!(
        kv(&kill, "message"),
        format!("Kill container web of pod {name}"),
        "{kill:#}"
    );
    assert_eq!(kv(&kill, "file"), "srv/html/index.html", "{kill:#}");
    assert_one_field_each(&kill);
    let finding = rsyslog
        .parsed()
        .into_iter()
        .find(|l| is(l, "0001", &name))
        .expect("the finding line before the kill line");
    assert_eq!(
        kv(&finding, "message"),
        format!("Kill container web of pod {name}")
    );

    fis.delete("ctr", &DeleteParams::default()).await.unwrap();
    drop(operator);
    let _ = std::fs::remove_dir_all(format!("/var/lib/kube-fim/{}", ns.name));
    let crname = format!("fim-agent-pods-{}", ns.name);
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&crname, &DeleteParams::default())
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete(&crname, &DeleteParams::default())
        .await;
    ns.delete().await.unwrap();
}
