//! Tamper to alert, end to end: the operator and one real `fim-agent daemon` per node (each with
//! its own root tree and a token bound to the agent pod kwok runs on that node). A file changed
//! on a node shows up in its FileIntegrityNodeStatus, the failure ConfigMap, the Warning event,
//! the operator's `node_failed` metric and a firing Prometheus alert.
//!
//! Build first: `cargo build -p kube-fim-operator -p kube-fim-agent` (`make e2e` does).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kube_fim_crds::{
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityPhase, ScanCondition, labels,
    reinit::{ReinitRequest, acknowledged_id},
};
use kube_fim_e2e::agents::{AgentProcess, AgentSpec};
use kube_fim_e2e::fixtures::*;
use kube_fim_e2e::prometheus::Prometheus;
use kube_fim_e2e::proxy::Relay;
use kube_fim_e2e::{KwokNodes, Poll, TestNamespace, client, repo_root, wait_for};
use serde_json::json;

/// Rules for the test trees: files by content and metadata, directories by ownership and mode
/// (so adding a file counts as one added file, not also a changed directory).
const RULES: &str = "\
CONTENT = sha256+ftype+p+u+g+n+s+m+c
DIRS = ftype+p+u+g
/etc d DIRS
/etc f,l CONTENT
/usr/bin d DIRS
/usr/bin f,l CONTENT
";

fn node_tree(root: &Path) {
    for d in ["etc/app", "usr/bin", "var/log"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    fs::write(root.join("etc/app/app.conf"), "listen 8080\n").unwrap();
    fs::write(root.join("etc/app/secret"), "s3cr3t\n").unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    fs::write(root.join("var/log/messages"), "not monitored\n").unwrap();
}

/// A namespace with its own nodes, the operator, a FileIntegrity over those nodes, and an agent
/// process per node; Active when returned.
struct Setup {
    client: Client,
    ns: TestNamespace,
    _nodes: KwokNodes,
    nodes: Vec<String>,
    operator: Operator,
    fi: String,
    agents: Vec<AgentProcess>,
    _dir: tempfile::TempDir,
}

struct Options {
    nodes: usize,
    max_backups: u32,
    realtime: bool,
    /// Connect the agents through this relay instead of directly.
    relay: Option<String>,
    realtime_backend: Option<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 1,
            max_backups: 2,
            realtime: true,
            relay: None,
            realtime_backend: None,
        }
    }
}

impl Setup {
    async fn new(prefix: &str, opts: Options) -> Setup {
        let client = client().await.unwrap();
        let (ns, kwok, label) = namespace_with_nodes(&client, prefix, opts.nodes, &[]).await;
        let nodes = kwok.names.clone();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
        cms.create(&PostParams::default(), &rules_config_map(RULES))
            .await
            .unwrap();
        let operator = Operator::start(&ns.name);
        let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
        let fi = file_integrity(
            "nodes",
            json!({
                "nodeSelector": {label: "yes"},
                "config": {"name": "rules", "namespace": ns.name, "key": "aide.conf",
                           "gracePeriod": 10, "maxBackups": opts.max_backups},
                "realtime": opts.realtime,
            }),
        );
        fis.create(&PostParams::default(), &fi).await.unwrap();
        let pods = agent_pods(&client, &ns.name, "nodes", &nodes).await;
        let dir = tempfile::tempdir().unwrap();
        let mut agents = Vec::new();
        for node in &nodes {
            let spec = AgentSpec {
                file_integrity: "nodes".into(),
                namespace: ns.name.clone(),
                node: node.clone(),
                grace_period: 10,
                max_backups: opts.max_backups,
                realtime: opts.realtime,
                realtime_backend: opts.realtime_backend.map(str::to_owned),
            };
            let agent = AgentProcess::start(
                &client,
                spec,
                &pods[node],
                dir.path(),
                opts.relay.as_deref(),
                node_tree,
            )
            .await
            .unwrap();
            agents.push(agent);
        }
        let setup = Setup {
            client,
            ns,
            _nodes: kwok,
            nodes,
            operator,
            fi: "nodes".into(),
            agents,
            _dir: dir,
        };
        setup.wait_for_phase(FileIntegrityPhase::Active).await;
        setup
    }

    fn fis(&self) -> Api<FileIntegrity> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn statuses(&self) -> Api<FileIntegrityNodeStatus> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn wait_for_phase(&self, phase: FileIntegrityPhase) -> FileIntegrity {
        let n = i32::try_from(self.nodes.len()).unwrap();
        let logs = self.logs();
        let result = wait_for(&format!("phase {phase:?}"), WAIT, || async {
            let fi = self.fis().get(&self.fi).await?;
            let ready = fi.status.as_ref().is_some_and(|s| {
                s.phase == phase && (phase != FileIntegrityPhase::Active || s.nodes == n)
            });
            Ok(if ready {
                Poll::Ready(fi)
            } else {
                Poll::Pending(format!("status: {:?}", fi.status))
            })
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\nagent logs:\n{logs}"))
    }

    /// Node `i`'s status as it is now.
    async fn status(&self, i: usize) -> FileIntegrityNodeStatus {
        let name = FileIntegrityNodeStatus::name_for(&self.fi, &self.nodes[i]);
        self.statuses().get(&name).await.unwrap()
    }

    /// Agent `i`'s `/metrics` text (HTTPS, with the scraper's token); empty when unreachable.
    async fn agent_metrics(&self, i: usize) -> String {
        match kube_fim_e2e::metrics::scrape(self.agents[i].metrics_port, "/metrics").await {
            Ok((200, body)) => body,
            _ => String::new(),
        }
    }

    /// Waits until agent `i`'s metrics satisfy `check`.
    async fn wait_for_agent_metrics(&self, i: usize, what: &str, check: impl Fn(&str) -> bool) {
        wait_for(what, WAIT, || async {
            let body = self.agent_metrics(i).await;
            Ok(if check(&body) {
                Poll::Ready(())
            } else {
                Poll::Pending(body)
            })
        })
        .await
        .unwrap();
    }

    /// Waits until node `i`'s status satisfies `check`.
    async fn wait_for_status(
        &self,
        i: usize,
        what: &str,
        check: impl Fn(&FileIntegrityNodeStatus) -> bool,
    ) -> FileIntegrityNodeStatus {
        let name = FileIntegrityNodeStatus::name_for(&self.fi, &self.nodes[i]);
        let result = wait_for(what, WAIT, || async {
            let status = self.statuses().get_opt(&name).await?;
            Ok(match status {
                Some(s) if check(&s) => Poll::Ready(s),
                other => Poll::Pending(format!("{:?}", other.map(|s| s.spec))),
            })
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.agents[i].log_tail()))
    }

    async fn failure_report(&self, i: usize) -> String {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns.name);
        let cm = cms
            .get(&format!("{}-{}-failed", self.fi, self.nodes[i]))
            .await
            .unwrap();
        let compressed = cm.annotations().contains_key(labels::COMPRESSED);
        let data = cm.data.unwrap_or_default();
        fim_agent::failure_report::decode_failure_log(&data["integritylog"], compressed).unwrap()
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("--- {}\n{}", a.spec.node, a.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn annotate(&self, key: &str, value: Option<&str>) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.fis()
            .patch(&self.fi, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    async fn set_rules(&self, text: &str) {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns.name);
        let patch = json!({"data": {"aide.conf": text}});
        cms.patch("rules", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
}

fn rules_config_map(text: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("rules".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("aide.conf".to_owned(), text.to_owned())])),
        ..Default::default()
    }
}

fn last(s: &FileIntegrityNodeStatus) -> Option<(ScanCondition, i64, i64, i64)> {
    s.spec
        .last_result
        .as_ref()
        .map(|r| (r.condition, r.files_added, r.files_changed, r.files_removed))
}

fn is(
    condition: ScanCondition,
    a: i64,
    c: i64,
    r: i64,
) -> impl Fn(&FileIntegrityNodeStatus) -> bool {
    move |s| last(s) == Some((condition, a, c, r))
}

fn succeeded() -> impl Fn(&FileIntegrityNodeStatus) -> bool {
    is(ScanCondition::Succeeded, 0, 0, 0)
}

#[tokio::test]
async fn a_changed_added_or_removed_file_reaches_status_report_event_metric_and_alert() {
    let s = Setup::new(
        "agent-tamper",
        Options {
            nodes: 3,
            ..Options::default()
        },
    )
    .await;
    for (i, node) in s.nodes.iter().enumerate() {
        let st = s.wait_for_status(i, "Succeeded", succeeded()).await;
        assert!(
            st.spec
                .baseline_digest
                .as_ref()
                .is_some_and(|d| d.len() == 64)
        );
        assert!(st.spec.baseline_created.is_some());
        wait_for_metric(
            &s.operator,
            &format!("file_integrity_operator_node_failed{{node=\"{node}\"}} 0"),
        )
        .await;
    }
    let prometheus = Prometheus::start(
        &[format!("127.0.0.1:{}", s.operator.metrics_port)],
        &[repo_root().join("config/prometheus/rules.yaml")],
    )
    .await
    .unwrap();

    // Changed on node 0, added on node 1, removed on node 2.
    let root = |i: usize| s.agents[i].root.clone();
    fs::write(root(0).join("etc/app/app.conf"), "listen 31337\n").unwrap();
    fs::write(root(1).join("usr/bin/backdoor"), "#!/bin/sh\nnc -l 4444\n").unwrap();
    fs::remove_file(root(2).join("etc/app/secret")).unwrap();
    let expected = [
        ((0, 1, 0), "/etc/app/app.conf"),
        ((1, 0, 0), "/usr/bin/backdoor"),
        ((0, 0, 1), "/etc/app/secret"),
    ];
    for (i, ((a, c, r), path)) in expected.iter().enumerate() {
        let node = &s.nodes[i];
        let st = s
            .wait_for_status(
                i,
                &format!("{node}: {path}"),
                is(ScanCondition::Failed, *a, *c, *r),
            )
            .await;
        assert_eq!(st.spec.changed_paths, [*path]);
        let result = st.spec.last_result.as_ref().unwrap();
        let cm_name = format!("{}-{node}-failed", s.fi);
        assert_eq!(
            result.result_config_map_name.as_deref(),
            Some(cm_name.as_str())
        );
        let report = s.failure_report(i).await;
        assert!(report.contains(path), "{report}");

        // The seed's text, then the paths (changed and removed before added: issue 10, item 7).
        let kind = match (a, c) {
            (_, 1) => "changed",
            (1, _) => "added",
            _ => "removed",
        };
        let message = format!(
            "node {node} has changed! a:{a},c:{c},r:{r} log:{}/{cm_name}; {kind}: {path}",
            s.ns.name
        );
        wait_for_event(
            &s.client,
            &s.ns.name,
            &s.fi,
            "NodeIntegrityStatus",
            "Warning",
            |n| n == message,
        )
        .await;
        wait_for_metric(
            &s.operator,
            &format!("file_integrity_operator_node_failed{{node=\"{node}\"}} 1"),
        )
        .await;
        let alert = format!(
            "ALERTS{{alertname=\"NodeHasIntegrityFailure\",alertstate=\"firing\",node=\"{node}\"}}"
        );
        assert_eq!(
            prometheus.wait_for_value(&alert, WAIT).await.unwrap(),
            1.0,
            "{alert}"
        );
    }
    let fi = s.fis().get(&s.fi).await.unwrap();
    assert_eq!(
        fi.status.unwrap().phase,
        FileIntegrityPhase::Active,
        "failures do not change the phase"
    );
}

#[tokio::test]
async fn reinit_rebaselines_acknowledges_and_prunes_backups() {
    let s = Setup::new(
        "agent-reinit",
        Options {
            max_backups: 1,
            ..Options::default()
        },
    )
    .await;
    let first = s.wait_for_status(0, "Succeeded", succeeded()).await;
    fs::write(s.agents[0].root.join("etc/hosts"), "10.0.0.1 evil\n").unwrap();
    s.wait_for_status(0, "Failed", is(ScanCondition::Failed, 0, 1, 0))
        .await;

    let mut digests = vec![first.spec.baseline_digest.clone().unwrap()];
    let mut acked = Vec::new();
    for round in 1..=3u64 {
        // A different tree each round, so each baseline differs.
        fs::write(s.agents[0].root.join("etc/app/round"), round.to_string()).unwrap();
        s.annotate(labels::REINIT, Some("")).await;
        // Ids are the operator's: wait for this round's request and its exact id (a tiny tree
        // re-baselines in well under a poll interval: the request may already be done).
        let fi = wait_for_fi(&s.fis(), &s.fi, "request recorded", |fi| {
            ReinitRequest::from_file_integrity(fi)
                .ok()
                .flatten()
                .is_some_and(|r| !acked.contains(&r.id))
        })
        .await;
        let id = ReinitRequest::from_file_integrity(&fi).unwrap().unwrap().id;
        acked.push(id);
        let st = s
            .wait_for_status(0, &format!("re-init {round} acknowledged"), |st| {
                acknowledged_id(st) == Some(id)
                    && last(st) == Some((ScanCondition::Succeeded, 0, 0, 0))
            })
            .await;
        let digest = st.spec.baseline_digest.clone().unwrap();
        assert!(!digests.contains(&digest), "a new baseline each time");
        digests.push(digest);
        wait_for_fi(&s.fis(), &s.fi, "annotation removed, Active", |fi| {
            !fi.annotations().contains_key(labels::REINIT)
                && fi
                    .status
                    .as_ref()
                    .is_some_and(|st| st.phase == FileIntegrityPhase::Active)
        })
        .await;
    }
    let backups: Vec<String> = fs::read_dir(s.agents[0].db_dir.join("nodes/backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".db"))
        .collect();
    assert_eq!(backups.len(), 1, "maxBackups 1: {backups:?}");

    // The re-baselined state is clean: a change after it is reported against it.
    fs::write(s.agents[0].root.join("etc/hosts"), "10.0.0.2 evil\n").unwrap();
    s.wait_for_status(0, "Failed again", is(ScanCondition::Failed, 0, 1, 0))
        .await;
}

#[tokio::test]
async fn a_bad_config_never_costs_the_agents_their_baseline() {
    // inotify watches directories one by one: the new rule's tree must be watched after the
    // re-baseline (fanotify would see it anyway).
    let s = Setup::new(
        "agent-config",
        Options {
            realtime_backend: Some("inotify"),
            ..Options::default()
        },
    )
    .await;
    let before = s.wait_for_status(0, "Succeeded", succeeded()).await;
    // The status says which watcher runs (the one asked for).
    s.wait_for_status(0, "realtimeWatcher: inotify", |st| {
        st.spec.realtime_watcher == Some(kube_fim_crds::RealtimeWatcher::Inotify)
    })
    .await;
    s.set_rules("/etc BOGUS_GROUP\n").await;
    let fi = s.wait_for_phase(FileIntegrityPhase::Error).await;
    let cond = fi.status.unwrap().conditions;
    assert!(
        cond.iter().any(|c| c.message.contains("aide.conf:1")),
        "{cond:?}"
    );

    // The agent still checks against its baseline with the last good rules.
    fs::write(s.agents[0].root.join("etc/app/app.conf"), "changed\n").unwrap();
    let st = s
        .wait_for_status(0, "still detecting", is(ScanCondition::Failed, 0, 1, 0))
        .await;
    assert_eq!(st.spec.baseline_digest, before.spec.baseline_digest);

    // Fixed (and different): a re-init request re-baselines with the new rules.
    s.set_rules(&format!("{RULES}/var/log f CONTENT\n")).await;
    let st = s
        .wait_for_status(0, "re-baselined with the new rules", |st| {
            st.spec.baseline_digest != before.spec.baseline_digest && succeeded()(st)
        })
        .await;
    assert!(acknowledged_id(&st).is_some());
    s.wait_for_phase(FileIntegrityPhase::Active).await;
    fs::write(s.agents[0].root.join("var/log/messages"), "now monitored\n").unwrap();
    s.wait_for_status(0, "new rule applies", is(ScanCondition::Failed, 0, 1, 0))
        .await;
}

#[tokio::test]
async fn ten_thousand_added_files_give_a_compressed_report_with_the_right_counts() {
    let s = Setup::new("agent-bulk", Options::default()).await;
    s.wait_for_status(0, "Succeeded", succeeded()).await;
    let bulk = s.agents[0].root.join("etc/bulk");
    fs::create_dir(&bulk).unwrap();
    // Names like a deep vendor tree's: the report (one line per file) passes 1 MiB.
    let name = |i: usize| format!("{}-generated-config-file-{i:05}.conf", "x".repeat(80));
    for i in 0..10_000 {
        fs::write(bulk.join(name(i)), i.to_string()).unwrap();
    }
    // 10,000 files plus their new directory.
    let st = s
        .wait_for_status(0, "10,001 added", is(ScanCondition::Failed, 10_001, 0, 0))
        .await;
    assert_eq!(st.spec.changed_paths.len(), 100, "the first 100 paths");
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let cm = cms
        .get(&format!("nodes-{}-failed", s.nodes[0]))
        .await
        .unwrap();
    assert_eq!(
        cm.annotations().get(labels::COMPRESSED).map(String::as_str),
        Some("true")
    );
    let report = s.failure_report(0).await;
    assert!(report.len() > 1024 * 1024, "{} bytes", report.len());
    assert!(report.contains(&format!("/etc/bulk/{}", name(0))));
    // The agent lists at most 10,000 findings of a kind (here the directory and 9,999 files)
    // and counts the rest, so that memory stays bounded however many files appear.
    assert!(
        report.contains("Added entries:\t\t10001"),
        "{}",
        &report[..500]
    );
    assert!(report.contains("... and 1 more added entries, counted but not listed"));
}

#[tokio::test]
async fn a_replaced_baseline_is_an_error_never_a_silent_rebaseline() {
    let mut s = Setup::new(
        "agent-swap",
        Options {
            realtime: false,
            ..Options::default()
        },
    )
    .await;
    let good = s.wait_for_status(0, "Succeeded", succeeded()).await;
    let recorded = good.spec.baseline_digest.clone().unwrap();
    let _ = s.agents[0].stop();

    // An attacker baselines the tampered tree with the same tool and swaps the file in.
    let root = s.agents[0].root.clone();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\nevil\n").unwrap();
    let db = s.agents[0].db_dir.join("nodes/baseline.db");
    let rules = s.agents[0].db_dir.join("nodes/baseline.conf");
    let forged = s.agents[0].db_dir.join("forged.db");
    let out = std::process::Command::new(agent_binary())
        .args(["init", "--root"])
        .arg(&root)
        .arg("--config")
        .arg(&rules)
        .arg("--db")
        .arg(&forged)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(&forged, &db).unwrap();
    let forged_bytes = fs::read(&db).unwrap();

    s.agents[0].restart().unwrap();
    let st = s
        .wait_for_status(0, "Errored", |st| {
            st.spec
                .last_result
                .as_ref()
                .is_some_and(|r| r.condition == ScanCondition::Errored)
        })
        .await;
    let message = st.spec.last_result.unwrap().error_message.unwrap();
    assert!(
        message.contains("replaced or modified outside a re-init request"),
        "{message}"
    );
    assert!(message.contains(&recorded), "{message}");
    assert_eq!(fs::read(&db).unwrap(), forged_bytes, "kept for inspection");

    // Only a re-init request gets out of it; the forged file goes to the backups.
    s.annotate(labels::REINIT, Some("")).await;
    s.wait_for_status(0, "re-baselined", |st| {
        succeeded()(st) && st.spec.baseline_digest.as_ref() != Some(&recorded)
    })
    .await;
}

#[tokio::test]
async fn a_restarted_agent_keeps_its_baseline_and_reports_no_false_changes() {
    let mut s = Setup::new("agent-restart", Options::default()).await;
    let before = s.wait_for_status(0, "Succeeded", succeeded()).await;
    let probe = before.spec.last_result.clone().unwrap().last_probe_time;
    // SIGTERM (a pod's termination): a clean exit.
    let status = s.agents[0].stop();
    assert!(
        status.is_some_and(|st| st.success()),
        "{status:?}\n{}",
        s.agents[0].log_tail()
    );
    s.agents[0].restart().unwrap();
    s.wait_for_status(0, "Succeeded after SIGTERM and restart", succeeded())
        .await;
    // SIGKILL: nothing is cleaned up, and still nothing is lost.
    s.agents[0].kill();
    s.agents[0].restart().unwrap();
    let after = s
        .wait_for_status(0, "a new check after the restart", |st| {
            st.spec
                .last_result
                .as_ref()
                .is_some_and(|r| r.last_probe_time != probe)
        })
        .await;
    assert_eq!(last(&after), Some((ScanCondition::Succeeded, 0, 0, 0)));
    assert_eq!(after.spec.baseline_digest, before.spec.baseline_digest);
    assert_eq!(after.spec.baseline_created, before.spec.baseline_created);
}

#[tokio::test]
async fn results_found_while_the_api_server_is_unreachable_arrive_afterwards() {
    let kubeconfig = kube::config::Kubeconfig::read_from(kube_fim_e2e::kubeconfig_path()).unwrap();
    let server = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .server
        .clone()
        .unwrap();
    let upstream = server.trim_start_matches("https://").to_owned();
    let mut relay = Relay::start(&upstream).await.unwrap();
    let mut s = Setup::new(
        "agent-offline",
        Options {
            relay: Some(relay.url.clone()),
            ..Options::default()
        },
    )
    .await;
    s.wait_for_status(0, "Succeeded", succeeded()).await;
    // Scraped before the cut, as Prometheus does all along: the agent, unable to review tokens
    // during the outage, lets in a reader it allowed recently.
    s.wait_for_agent_metrics(0, "metrics before the cut", |body| {
        body.contains("fim_agent_publish_errors_total")
    })
    .await;

    relay.cut();
    fs::write(
        s.agents[0].root.join("etc/hosts"),
        "10.9.9.9 offline-change\n",
    )
    .unwrap();
    // The agent detects it and fails to publish (its own metrics say so) ...
    s.wait_for_agent_metrics(0, "a failed publish", |body| {
        metric(body, "fim_agent_publish_errors_total").unwrap_or(0.0) >= 1.0
            && body.contains("fim_agent_findings{kind=\"changed\"} 1")
    })
    .await;
    let status = s.status(0).await;
    assert_eq!(
        last(&status),
        Some((ScanCondition::Succeeded, 0, 0, 0)),
        "nothing got through"
    );
    assert!(s.agents[0].running());

    // ... and the result arrives once the API server is reachable again.
    relay.restore().await.unwrap();
    s.wait_for_status(0, "the offline finding", is(ScanCondition::Failed, 0, 1, 0))
        .await;
}

#[tokio::test]
async fn newline_and_non_utf8_names_are_reported_exactly() {
    let s = Setup::new("agent-names", Options::default()).await;
    s.wait_for_status(0, "Succeeded", succeeded()).await;
    let etc = s.agents[0].root.join("etc");
    fs::write(etc.join("line\nbreak"), "x").unwrap();
    fs::write(
        etc.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9")),
        "y",
    )
    .unwrap();
    let st = s
        .wait_for_status(0, "2 added", is(ScanCondition::Failed, 2, 0, 0))
        .await;
    assert_eq!(
        st.spec.changed_paths,
        ["/etc/latin1-\\xe9t\\xe9", "/etc/line\\nbreak"]
    );
    let report = s.failure_report(0).await;
    assert!(report.contains("/etc/line\\nbreak"), "{report}");
    assert!(report.contains("/etc/latin1-\\xe9t\\xe9"), "{report}");
}

#[tokio::test]
async fn changes_during_holdoff_are_reported_when_it_ends() {
    let s = Setup::new("agent-holdoff", Options::default()).await;
    s.wait_for_status(0, "Succeeded", succeeded()).await;
    s.annotate(labels::HOLDOFF, Some("node upgrade")).await;
    s.wait_for_agent_metrics(0, "holdoff in effect", |body| {
        metric(body, "fim_agent_paused") == Some(1.0)
    })
    .await;
    let events = metric(&s.agent_metrics(0).await, "fim_agent_realtime_events_total").unwrap();
    fs::write(s.agents[0].root.join("etc/maintenance"), "upgrade").unwrap();
    fs::remove_file(s.agents[0].root.join("etc/hosts")).unwrap();
    s.wait_for_agent_metrics(0, "the change events seen", |body| {
        metric(body, "fim_agent_realtime_events_total").unwrap_or(0.0) > events
    })
    .await;
    let status = s.status(0).await;
    assert_eq!(
        last(&status),
        Some((ScanCondition::Succeeded, 0, 0, 0)),
        "no scan during holdoff"
    );

    s.annotate(labels::HOLDOFF, None).await;
    // What changed during the holdoff is reported when it ends, not laundered into the baseline.
    s.wait_for_status(
        0,
        "reported after holdoff",
        is(ScanCondition::Failed, 1, 0, 1),
    )
    .await;
}

/// Detection latency: 100 successive changes, each one timed from the write to its node status
/// (polled every 5 ms). Prints p50/p99 and writes them to `e2e/.cluster/latency.txt` (the
/// numbers in docs/performance.md); every change must be detected, the timing itself is not
/// asserted.
#[tokio::test]
async fn detection_latency_over_a_hundred_changes() {
    let s = Setup::new("agent-latency", Options::default()).await;
    s.wait_for_status(0, "Succeeded", succeeded()).await;
    let name = FileIntegrityNodeStatus::name_for(&s.fi, &s.nodes[0]);
    let dir = s.agents[0].root.join("etc/app");
    let mut latencies = Vec::new();
    for i in 1..=100i64 {
        let started = Instant::now();
        fs::write(dir.join(format!("drop-{i:03}")), i.to_string()).unwrap();
        loop {
            let st = s.statuses().get(&name).await.unwrap();
            if last(&st).is_some_and(|(_, added, _, _)| added == i) {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "change {i} not detected: {:?}",
                last(&st)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let line = format!(
        "detection latency over {} changes: p50 {} ms, p99 {} ms, max {} ms\n",
        latencies.len(),
        p(0.50).as_millis(),
        p(0.99).as_millis(),
        latencies.last().unwrap().as_millis()
    );
    println!("{line}");
    fs::write(kube_fim_e2e::state_dir().join("latency.txt"), line).unwrap();
}

/// Issue 10, item 4 (agent half): the kubelet's probes. A working agent is live and ready, and
/// its liveness reports the worker's progress, renewed at least every gracePeriod (10 s) by the
/// periodic checks; an agent whose worker cannot start (its FileIntegrity does not exist) stays
/// live (a restart would not help) but not ready, saying what it waits for. (A worker that stops
/// progressing fails `/livez`: `fim_agent::health` unit tests, since no real input wedges it.)
#[tokio::test]
async fn the_agent_probes_follow_the_workers_progress() {
    let s = Setup::new(
        "agent-probes",
        Options {
            realtime: false,
            ..Options::default()
        },
    )
    .await;
    s.wait_for_status(0, "Succeeded", succeeded()).await;
    let port = s.agents[0].metrics_port;
    let (code, body) = probe(port, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("first result is published"), "{body}");
    // Over three gracePeriods the last progress is never older than one gracePeriod.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut oldest = 0;
    while Instant::now() < deadline {
        let (code, body) = probe(port, "/livez").await;
        assert_eq!(code, 200, "{body}");
        let age: u64 = body
            .trim()
            .strip_prefix("ok: last progress ")
            .and_then(|r| r.strip_suffix("s ago"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected /livez answer {body:?}"));
        oldest = oldest.max(age);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        oldest <= 11,
        "no progress for {oldest}s with a 10 s gracePeriod"
    );

    // A second agent process on the same node for a FileIntegrity that does not exist: its
    // worker never starts.
    let pods = agent_pods(&s.client, &s.ns.name, "nodes", &s.nodes[..1]).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = AgentSpec {
        file_integrity: "absent".into(),
        ..s.agents[0].spec.clone()
    };
    let waiting = AgentProcess::start(
        &s.client,
        spec,
        &pods[&s.nodes[0]],
        dir.path(),
        None,
        node_tree,
    )
    .await
    .unwrap();
    let port = waiting.metrics_port;
    let (code, body) = wait_for("the waiting agent's /readyz", WAIT, || async {
        let (code, body) = probe(port, "/readyz").await;
        Ok(if code == 0 {
            Poll::Pending("not listening yet".to_owned())
        } else {
            Poll::Ready((code, body))
        })
    })
    .await
    .unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not ready: the FileIntegrity"), "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, body) = probe(port, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    let (code, body) = probe(port, "/livez").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("the worker has not started"), "{body}");
}

/// Status code and body of a probe GET over HTTPS without a token, as the kubelet sends it
/// (`(0, error)` when nothing answers).
async fn probe(port: u16, path: &str) -> (u16, String) {
    match kube_fim_e2e::metrics::https_get(port, path, None).await {
        Ok(r) => (r.status, r.body),
        Err(e) => (0, e.to_string()),
    }
}

/// The value of the sample `name` (with its labels, exactly) in a Prometheus text exposition.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
