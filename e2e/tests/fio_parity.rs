//! file-integrity-operator's end-to-end scenarios (`tests/e2e/e2e_test.go` in
//! openshift/file-integrity-operator) that no other suite proves, each test named after its
//! scenario. The full mapping, including the scenarios proven elsewhere and the one that does
//! not apply, is the table in docs/testing.md.
//!
//! Every test runs the operator and one real `fim-agent daemon` per node (with a token bound to
//! the agent pod kwok runs there), in a namespace with kwok nodes of its own.
//!
//! Build first: `cargo build -p kube-fim-operator -p kube-fim-agent` (`make e2e` does).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Taint};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kube_fim_crds::{
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityPhase, ScanCondition, labels,
    reinit::{ReinitRequest, acknowledged_id},
};
use kube_fim_e2e::agents::{AgentProcess, AgentSpec};
use kube_fim_e2e::fixtures::*;
use kube_fim_e2e::{KwokNodes, Poll, TestNamespace, client, wait_for};
use serde_json::json;

/// The FileIntegrity of every test.
const FI: &str = "fio";

/// Rules for the test trees (as in agent.rs): files by content, directories by ownership and
/// mode.
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
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
}

struct Options {
    nodes: usize,
    grace_period: i64,
    max_backups: i32,
    /// The FileIntegrity uses the ConfigMap `rules` holding [`RULES`] (else the default rules).
    user_rules: bool,
    /// Agents without `RUST_LOG`: `spec.debug` decides their log level.
    no_rust_log: bool,
    /// The nodes carry this NoSchedule taint and the FileIntegrity tolerates it.
    taint: Option<Taint>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 1,
            grace_period: 10,
            max_backups: 3,
            user_rules: true,
            no_rust_log: false,
            taint: None,
        }
    }
}

/// A namespace with its own kwok nodes, the operator, FileIntegrity [`FI`] selecting those nodes
/// (realtime off: every result comes from a periodic check) and an agent per node; Active when
/// returned.
struct Setup {
    client: Client,
    ns: TestNamespace,
    /// The nodes of the namespace's label (more can be added).
    kwok: Vec<KwokNodes>,
    label: String,
    operator: Operator,
    agents: BTreeMap<String, AgentProcess>,
    no_rust_log: bool,
    grace_period: u64,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(prefix: &str, opts: Options) -> Setup {
        let client = client().await.unwrap();
        let taints: Vec<Taint> = opts.taint.iter().cloned().collect();
        let (ns, kwok, label) = namespace_with_nodes(&client, prefix, opts.nodes, &taints).await;
        let tolerations: Vec<serde_json::Value> = taints
            .iter()
            .map(|t| json!({"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect}))
            .collect();
        let mut config = json!({"gracePeriod": opts.grace_period, "maxBackups": opts.max_backups});
        if opts.user_rules {
            config_maps(&client, &ns.name)
                .create(
                    &PostParams::default(),
                    &config_map("rules", "aide.conf", RULES),
                )
                .await
                .unwrap();
            config["name"] = json!("rules");
            config["key"] = json!("aide.conf");
        }
        let operator = Operator::start(&ns.name);
        Api::<FileIntegrity>::namespaced(client.clone(), &ns.name)
            .create(
                &PostParams::default(),
                &file_integrity(
                    FI,
                    json!({"nodeSelector": {label.clone(): "yes"}, "config": config,
                           "realtime": false, "tolerations": tolerations}),
                ),
            )
            .await
            .unwrap();
        let mut setup = Setup {
            client,
            ns,
            kwok: Vec::new(),
            label,
            operator,
            agents: BTreeMap::new(),
            no_rust_log: opts.no_rust_log,
            grace_period: u64::try_from(opts.grace_period).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        };
        for node in kwok.names.clone() {
            setup.start_agent(&node).await;
        }
        setup.kwok.push(kwok);
        setup.wait_for_active(opts.nodes).await;
        setup
    }

    /// Starts the agent of `node` once its pod runs (as the DaemonSet would).
    async fn start_agent(&mut self, node: &str) {
        let pods = agent_pods(&self.client, &self.ns.name, FI, &[node.to_owned()]).await;
        let spec = AgentSpec {
            file_integrity: FI.into(),
            namespace: self.ns.name.clone(),
            node: node.to_owned(),
            grace_period: self.grace_period,
            max_backups: 3,
            realtime: false,
            realtime_backend: None,
        };
        let pod = &pods[node];
        let agent = if self.no_rust_log {
            AgentProcess::start_without_rust_log(
                &self.client,
                spec,
                pod,
                self.dir.path(),
                node_tree,
            )
            .await
        } else {
            AgentProcess::start(&self.client, spec, pod, self.dir.path(), None, node_tree).await
        }
        .unwrap();
        self.agents.insert(node.to_owned(), agent);
    }

    fn nodes(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }

    fn node(&self, i: usize) -> String {
        self.nodes()[i].clone()
    }

    fn agent(&self, node: &str) -> &AgentProcess {
        &self.agents[node]
    }

    fn fis(&self) -> Api<FileIntegrity> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn statuses(&self) -> Api<FileIntegrityNodeStatus> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|(node, a)| format!("--- {node}\n{}", a.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the FileIntegrity is Active over `nodes` nodes, all with a result.
    async fn wait_for_active(&self, nodes: usize) -> FileIntegrity {
        let n = i32::try_from(nodes).unwrap();
        self.wait_for_fi(&format!("Active over {nodes} nodes"), |fi| {
            fi.status.as_ref().is_some_and(|s| {
                s.phase == FileIntegrityPhase::Active && s.nodes == n && s.initializing == 0
            })
        })
        .await
    }

    async fn wait_for_fi(
        &self,
        what: &str,
        check: impl Fn(&FileIntegrity) -> bool,
    ) -> FileIntegrity {
        let result = wait_for(what, WAIT, || async {
            let fi = self.fis().get(FI).await?;
            Ok(if check(&fi) {
                Poll::Ready(fi)
            } else {
                Poll::Pending(format!(
                    "annotations {:?}, status {:?}",
                    fi.metadata.annotations, fi.status
                ))
            })
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\nagent logs:\n{}", self.logs()))
    }

    /// Waits until `node`'s status satisfies `check`.
    async fn wait_for_status(
        &self,
        node: &str,
        what: &str,
        check: impl Fn(&FileIntegrityNodeStatus) -> bool,
    ) -> FileIntegrityNodeStatus {
        let name = FileIntegrityNodeStatus::name_for(FI, node);
        let result = wait_for(&format!("{node}: {what}"), WAIT, || async {
            let status = self.statuses().get_opt(&name).await?;
            Ok(match status {
                Some(s) if check(&s) => Poll::Ready(s),
                other => Poll::Pending(format!(
                    "{:?} {:?}",
                    other.as_ref().map(|s| s.annotations()),
                    other.as_ref().map(|s| &s.spec)
                )),
            })
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.agent(node).log_tail()))
    }

    async fn status(&self, node: &str) -> FileIntegrityNodeStatus {
        self.statuses()
            .get(&FileIntegrityNodeStatus::name_for(FI, node))
            .await
            .unwrap()
    }

    async fn patch_fi(&self, patch: serde_json::Value) {
        self.fis()
            .patch(FI, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    async fn annotate(&self, key: &str, value: Option<&str>) {
        self.patch_fi(json!({"metadata": {"annotations": {key: value}}}))
            .await;
    }

    /// The DaemonSet's generation: unchanged means the pods were not rolled.
    async fn daemonset_generation(&self) -> Option<i64> {
        Api::<DaemonSet>::namespaced(self.client.clone(), &self.ns.name)
            .get(&format!("fim-agent-{FI}"))
            .await
            .unwrap()
            .metadata
            .generation
    }

    async fn wait_for_metric(&self, want: &str) {
        wait_for_metric(&self.operator, want).await;
    }

    async fn operator_metrics(&self) -> String {
        self.operator.get("/metrics").await.unwrap().1
    }

    fn request(fi: &FileIntegrity) -> Option<ReinitRequest> {
        ReinitRequest::from_file_integrity(fi).unwrap()
    }
}

fn config_maps(client: &Client, ns: &str) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), ns)
}

fn config_map(name: &str, key: &str, text: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(key.to_owned(), text.to_owned())])),
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

fn digest(s: &FileIntegrityNodeStatus) -> String {
    s.spec.baseline_digest.clone().unwrap_or_default()
}

fn probe_time(s: &FileIntegrityNodeStatus) -> Option<Timestamp> {
    s.spec.last_result.as_ref().map(|r| r.last_probe_time.0)
}

fn rendered_rules(cm: &ConfigMap) -> Option<String> {
    cm.data.as_ref()?.get("aide.conf").cloned()
}

/// FIO ReinitOnFailed (and the re-init half of LogAndReinitDatabase): with one node Failed and
/// one Succeeded, `re-init-on-failed` re-baselines only the Failed one, then goes; used again
/// with nothing Failed, it only goes.
#[tokio::test]
async fn reinit_on_failed() {
    let s = Setup::new(
        "fio-reinit-failed",
        Options {
            nodes: 2,
            ..Options::default()
        },
    )
    .await;
    let (bad, good) = (s.node(0), s.node(1));
    let before_bad = s.wait_for_status(&bad, "Succeeded", succeeded()).await;
    let before_good = s.wait_for_status(&good, "Succeeded", succeeded()).await;
    for node in [&bad, &good] {
        s.wait_for_metric(&format!(
            "file_integrity_operator_node_failed{{node=\"{node}\"}} 0"
        ))
        .await;
    }

    fs::write(
        s.agent(&bad).root.join("etc/app/app.conf"),
        "listen 31337\n",
    )
    .unwrap();
    s.wait_for_status(&bad, "Failed", is(ScanCondition::Failed, 0, 1, 0))
        .await;
    s.wait_for_metric(&format!(
        "file_integrity_operator_node_failed{{node=\"{bad}\"}} 1"
    ))
    .await;

    s.annotate(labels::REINIT_ON_FAILED, Some("")).await;
    let fi = s
        .wait_for_fi("a request for the Failed node, the annotation gone", |fi| {
            !fi.annotations().contains_key(labels::REINIT_ON_FAILED) && Setup::request(fi).is_some()
        })
        .await;
    let request = Setup::request(&fi).unwrap();
    assert_eq!(request.nodes, BTreeSet::from([bad.clone()]), "{request:?}");
    wait_for_event(
        &s.client,
        &s.ns.name,
        FI,
        "ReinitRequested",
        "Normal",
        |n| {
            n.contains(&format!("re-init request {}", request.id))
                && n.contains("re-init-on-failed")
        },
    )
    .await;
    wait_for_event(
        &s.client,
        &s.ns.name,
        FI,
        "ReinitAcceptsFindings",
        "Warning",
        |n| n.contains(&bad),
    )
    .await;

    let after_bad = s
        .wait_for_status(&bad, "re-baselined for the request", |st| {
            acknowledged_id(st) == Some(request.id) && succeeded()(st)
        })
        .await;
    assert_ne!(digest(&after_bad), digest(&before_bad), "a new baseline");
    let fi = s.wait_for_active(2).await;
    assert!(Setup::request(&fi).unwrap().done);
    // The Succeeded node kept its baseline and never answered.
    let good_now = s.status(&good).await;
    assert_eq!(digest(&good_now), digest(&before_good));
    assert_ne!(acknowledged_id(&good_now), Some(request.id));
    assert!(succeeded()(&good_now));
    s.wait_for_metric(&format!(
        "file_integrity_operator_node_failed{{node=\"{bad}\"}} 0"
    ))
    .await;
    let metrics = s.operator_metrics().await;
    for want in [
        format!("file_integrity_operator_reinit_total{{by=\"failed\",node=\"{bad}\"}} 1"),
        format!(
            "file_integrity_operator_node_status_total{{condition=\"Failed\",node=\"{bad}\"}} 1"
        ),
    ] {
        assert!(metrics.contains(&want), "{want} missing:\n{metrics}");
    }
    assert!(
        !metrics.contains(&format!("by=\"failed\",node=\"{good}\"")),
        "{metrics}"
    );

    // Nothing Failed now: the annotation only goes, with a Normal event saying so.
    s.annotate(labels::REINIT_ON_FAILED, Some("")).await;
    let fi = s
        .wait_for_fi("the annotation gone again", |fi| {
            !fi.annotations().contains_key(labels::REINIT_ON_FAILED)
        })
        .await;
    assert_eq!(
        Setup::request(&fi).unwrap().id,
        request.id,
        "no new request"
    );
    wait_for_event(
        &s.client,
        &s.ns.name,
        FI,
        "ReinitOnFailedNoFailedNodes",
        "Normal",
        |_| true,
    )
    .await;
}

/// FIO AcceptsExpectedChange: the nodes change during planned maintenance (FIO: a
/// MachineConfig rollout, after which it re-initialises the nodes by itself). Here the holdoff
/// annotation pauses the checks, the change is reported when it ends (never accepted silently),
/// and `re-init-on-failed` accepts it: the node is clean against a new baseline.
#[tokio::test]
async fn accepts_expected_change() {
    let s = Setup::new("fio-expected", Options::default()).await;
    let node = s.node(0);
    let before = s.wait_for_status(&node, "Succeeded", succeeded()).await;

    s.annotate(labels::HOLDOFF, Some("")).await;
    let port = s.agent(&node).metrics_port;
    wait_for("the agent paused", WAIT, || async {
        // HTTPS with the scraper's token (the metrics endpoints are secure by default).
        let (_, body) = kube_fim_e2e::metrics::scrape(port, "/metrics").await?;
        Ok(if body.contains("fim_agent_paused 1") {
            Poll::Ready(())
        } else {
            Poll::Pending(body)
        })
    })
    .await
    .unwrap();
    // The maintenance: a package update.
    fs::write(
        s.agent(&node).root.join("usr/bin/tool"),
        "#!/bin/sh\necho v2\n",
    )
    .unwrap();
    s.annotate(labels::HOLDOFF, None).await;
    s.wait_for_status(
        &node,
        "the update reported",
        is(ScanCondition::Failed, 0, 1, 0),
    )
    .await;

    s.annotate(labels::REINIT_ON_FAILED, Some("")).await;
    let after = s
        .wait_for_status(&node, "accepted into a new baseline", |st| {
            succeeded()(st) && digest(st) != digest(&before)
        })
        .await;
    s.wait_for_active(1).await;
    // Later checks compare against the accepted state: still clean.
    let accepted = probe_time(&after).unwrap();
    s.wait_for_status(&node, "a later check, clean", |st| {
        probe_time(st).is_some_and(|t| t > accepted) && succeeded()(st)
    })
    .await;
}

/// FIO ChangeGracePeriod: a new `gracePeriod` reaches the running agent (the cadence of its
/// checks, measured from `lastProbeTime`), without a re-init, with the same baseline, and
/// without rolling the pods (FIO restarts them; here the agent follows the spec live).
#[tokio::test]
async fn change_grace_period() {
    let s = Setup::new(
        "fio-grace",
        Options {
            grace_period: 600,
            ..Options::default()
        },
    )
    .await;
    let node = s.node(0);
    let first = s.wait_for_status(&node, "Succeeded", succeeded()).await;
    let t0 = probe_time(&first).unwrap();
    let generation = s.daemonset_generation().await;

    // 600 s: no further check for a while (more than the new period).
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        probe_time(&s.status(&node).await),
        Some(t0),
        "a check within 15 s at gracePeriod 600"
    );

    s.patch_fi(json!({"spec": {"config": {"gracePeriod": 10}}}))
        .await;
    let changed = Timestamp::now();
    // The next three checks, each as its result arrives.
    let mut probes: Vec<Timestamp> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while probes.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "only {probes:?} after the change at {changed}\n{}",
            s.agent(&node).log_tail()
        );
        let st = s.status(&node).await;
        let t = probe_time(&st).unwrap();
        if t > *probes.last().unwrap_or(&t0) {
            assert!(succeeded()(&st), "{:?}", st.spec);
            probes.push(t);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first_after = probes[0].as_second() - changed.as_second();
    assert!(
        (5..=14).contains(&first_after),
        "first check {first_after} s after the change to 10 s ({probes:?})"
    );
    for pair in probes.windows(2) {
        let gap = pair[1].as_second() - pair[0].as_second();
        assert!((8..=13).contains(&gap), "checks {gap} s apart: {probes:?}");
    }

    let st = s.status(&node).await;
    assert_eq!(digest(&st), digest(&first), "the same baseline");
    assert_eq!(acknowledged_id(&st), acknowledged_id(&first));
    assert_eq!(
        Setup::request(&s.fis().get(FI).await.unwrap()),
        None,
        "no re-init"
    );
    assert_eq!(
        s.daemonset_generation().await,
        generation,
        "pods not rolled"
    );
    let log = s.agent(&node).log();
    assert!(log.contains("gracePeriod 600s -> 10s"), "{log}");
}

/// FIO ChangeDebug: `spec.debug` switches the running agent's debug logging on and off, without
/// a re-init, with the same baseline, and without rolling the pods.
#[tokio::test]
async fn change_debug() {
    let s = Setup::new(
        "fio-debug",
        Options {
            no_rust_log: true,
            ..Options::default()
        },
    )
    .await;
    let node = s.node(0);
    let first = s.wait_for_status(&node, "Succeeded", succeeded()).await;
    let generation = s.daemonset_generation().await;
    let debug_line = "periodic check";
    let after =
        |t: Timestamp| move |st: &FileIntegrityNodeStatus| probe_time(st).is_some_and(|p| p > t);

    // debug false: a periodic check logs nothing at debug level.
    let st = s
        .wait_for_status(
            &node,
            "a periodic check",
            after(probe_time(&first).unwrap()),
        )
        .await;
    let log = s.agent(&node).log();
    assert!(!log.contains(debug_line) && !log.contains("DEBUG"), "{log}");

    s.patch_fi(json!({"spec": {"debug": true}})).await;
    wait_for("debug lines in the agent's log", WAIT, || async {
        let log = s.agent(&node).log();
        Ok(if log.contains(debug_line) && log.contains("DEBUG") {
            Poll::Ready(())
        } else {
            Poll::Pending(log)
        })
    })
    .await
    .unwrap();
    assert!(s.agent(&node).log().contains("debug false -> true"));

    // Off again: the next two checks add no debug line.
    s.patch_fi(json!({"spec": {"debug": false}})).await;
    wait_for("debug switched off", WAIT, || async {
        let log = s.agent(&node).log();
        Ok(if log.contains("debug true -> false") {
            Poll::Ready(())
        } else {
            Poll::Pending(log)
        })
    })
    .await
    .unwrap();
    let mark = s.agent(&node).log().len();
    let st1 = s
        .wait_for_status(
            &node,
            "a check after",
            after(probe_time(&st).unwrap().max(Timestamp::now())),
        )
        .await;
    s.wait_for_status(&node, "another check", after(probe_time(&st1).unwrap()))
        .await;
    let log = s.agent(&node).log();
    assert!(!log[mark..].contains("DEBUG"), "{}", &log[mark..]);

    let now = s.status(&node).await;
    assert_eq!(digest(&now), digest(&first), "the same baseline");
    assert_eq!(
        Setup::request(&s.fis().get(FI).await.unwrap()),
        None,
        "no re-init"
    );
    assert_eq!(
        s.daemonset_generation().await,
        generation,
        "pods not rolled"
    );
}

/// FIO PruneBackup: `maxBackups` lowered on a running FileIntegrity applies at the next re-init
/// (the agent follows it live; FIO restarts its pods).
#[tokio::test]
async fn prune_backup() {
    let s = Setup::new("fio-prune", Options::default()).await;
    let node = s.node(0);
    s.wait_for_status(&node, "Succeeded", succeeded()).await;
    let generation = s.daemonset_generation().await;
    let backups = || -> Vec<String> {
        fs::read_dir(s.agent(&node).db_dir.join(format!("{FI}/backups")))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".db"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let reinit = |round: u64| {
        let s = &s;
        let node = node.clone();
        async move {
            let before = s.fis().get(FI).await.unwrap();
            let previous = Setup::request(&before).map(|r| r.id);
            // A different tree each round, so each baseline differs.
            fs::write(s.agent(&node).root.join("etc/round"), round.to_string()).unwrap();
            s.annotate(labels::REINIT, Some("")).await;
            let fi = s
                .wait_for_fi("a new request", |fi| {
                    Setup::request(fi).is_some_and(|r| Some(r.id) != previous)
                })
                .await;
            let id = Setup::request(&fi).unwrap().id;
            s.wait_for_status(&node, &format!("re-init {round} acknowledged"), |st| {
                acknowledged_id(st) == Some(id) && succeeded()(st)
            })
            .await;
            s.wait_for_fi("annotation removed", |fi| {
                !fi.annotations().contains_key(labels::REINIT)
            })
            .await;
        }
    };
    reinit(1).await;
    reinit(2).await;
    assert_eq!(backups().len(), 2, "maxBackups 3: {:?}", backups());

    s.patch_fi(json!({"spec": {"config": {"maxBackups": 1}}}))
        .await;
    wait_for("the agent to take maxBackups 1", WAIT, || async {
        let log = s.agent(&node).log();
        Ok(if log.contains("maxBackups 3 -> 1") {
            Poll::Ready(())
        } else {
            Poll::Pending(s.agent(&node).log_tail())
        })
    })
    .await
    .unwrap();
    reinit(3).await;
    assert_eq!(backups().len(), 1, "maxBackups 1: {:?}", backups());
    assert_eq!(
        s.daemonset_generation().await,
        generation,
        "pods not rolled"
    );
}

/// FIO ConfigurationIgnoreMissing: a FileIntegrity pointed at a ConfigMap that does not exist.
/// FIO ignores it (a warning in its log) and stays Active; here it is an Error naming the
/// ConfigMap, without a re-init: the agents keep checking with their baseline and the last good
/// rules. Creating the ConfigMap recovers (its new rules re-baseline the nodes).
#[tokio::test]
async fn configuration_ignore_missing() {
    let s = Setup::new(
        "fio-missing",
        Options {
            user_rules: false,
            ..Options::default()
        },
    )
    .await;
    let node = s.node(0);
    let before = s.wait_for_status(&node, "Succeeded", succeeded()).await;
    let rendered = config_maps(&s.client, &s.ns.name);
    let default_rules = rendered_rules(&rendered.get(&format!("fim-config-{FI}")).await.unwrap());

    s.patch_fi(json!({"spec": {"config": {"name": "fooconf", "key": "fookey"}}}))
        .await;
    let fi = s
        .wait_for_fi("Error", |fi| {
            fi.status
                .as_ref()
                .is_some_and(|st| st.phase == FileIntegrityPhase::Error)
        })
        .await;
    let valid = condition(&fi, "ConfigValid").unwrap();
    assert_eq!(valid.status, "False");
    let want = format!("config ConfigMap {}/fooconf not found", s.ns.name);
    assert!(valid.message.contains(&want), "{valid:?}");
    assert_eq!(Setup::request(&fi), None, "no re-init");
    // The agent goes on with its baseline and the last good rules.
    let errored_at = Timestamp::now();
    let st = s
        .wait_for_status(&node, "a check during the Error", |st| {
            probe_time(st).is_some_and(|t| t > errored_at) && succeeded()(st)
        })
        .await;
    assert_eq!(digest(&st), digest(&before));
    assert_eq!(
        rendered_rules(&rendered.get(&format!("fim-config-{FI}")).await.unwrap()),
        default_rules,
        "the last good rules stay"
    );

    // It appears: Active again, re-baselined with its rules.
    rendered
        .create(
            &PostParams::default(),
            &config_map("fooconf", "fookey", RULES),
        )
        .await
        .unwrap();
    let st = s
        .wait_for_status(&node, "re-baselined with the new rules", |st| {
            succeeded()(st) && digest(st) != digest(&before) && acknowledged_id(st).is_some()
        })
        .await;
    let fi = s.wait_for_active(1).await;
    assert_eq!(
        condition(&fi, "ConfigValid").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(
        Setup::request(&fi).map(|r| r.id),
        acknowledged_id(&st),
        "one request, from the rules change"
    );
    assert_eq!(
        rendered_rules(&rendered.get(&format!("fim-config-{FI}")).await.unwrap()).as_deref(),
        Some(RULES)
    );
}

/// FIO ConfigurationRevert: with user rules and a Failed node, removing the config section
/// brings back the default rules with a re-init (announced as accepting the node's findings),
/// and the node is clean again.
#[tokio::test]
async fn configuration_revert() {
    let s = Setup::new("fio-revert", Options::default()).await;
    let node = s.node(0);
    let before = s.wait_for_status(&node, "Succeeded", succeeded()).await;
    fs::write(s.agent(&node).root.join("etc/hosts"), "10.0.0.1 evil\n").unwrap();
    s.wait_for_status(&node, "Failed", is(ScanCondition::Failed, 0, 1, 0))
        .await;

    s.patch_fi(json!({"spec": {"config": {"name": null, "namespace": null, "key": null}}}))
        .await;
    let cms = config_maps(&s.client, &s.ns.name);
    wait_for("the default rules rendered", WAIT, || async {
        let text = rendered_rules(&cms.get(&format!("fim-config-{FI}")).await?);
        Ok(
            if text.as_deref() == Some(fim_engine::config::DEFAULT_CONFIG) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{text:?}"))
            },
        )
    })
    .await
    .unwrap();
    let fi = s
        .wait_for_fi("a re-init request", |fi| Setup::request(fi).is_some())
        .await;
    let id = Setup::request(&fi).unwrap().id;
    wait_for_event(
        &s.client,
        &s.ns.name,
        FI,
        "ReinitAcceptsFindings",
        "Warning",
        |n| n.contains(&node),
    )
    .await;
    let st = s
        .wait_for_status(&node, "re-baselined with the default rules", |st| {
            acknowledged_id(st) == Some(id) && succeeded()(st)
        })
        .await;
    assert_ne!(digest(&st), digest(&before));
    s.wait_for_active(1).await;
    s.wait_for_metric("file_integrity_operator_reinit_total{by=\"config\",node=\"\"} 1")
        .await;
    // The default rules watch /etc/app recursively with sha512: a change there is found.
    fs::write(s.agent(&node).root.join("etc/app/app.conf"), "listen 1\n").unwrap();
    let st = s
        .wait_for_status(&node, "a change under the default rules", |st| {
            last(st).is_some_and(|(c, _, changed, _)| c == ScanCondition::Failed && changed >= 1)
        })
        .await;
    assert!(
        st.spec
            .changed_paths
            .iter()
            .any(|p| p == "/etc/app/app.conf"),
        "{:?}",
        st.spec.changed_paths
    );
}

/// FIO ConfigurationStatus: pointing an Active FileIntegrity at new rules goes Initializing →
/// Active (each announced by a FileIntegrityStatus event), the rendered rules are the user's,
/// and the metrics count it (FIO's expected values: phase Active 2, Initializing 2).
#[tokio::test]
async fn configuration_status() {
    let s = Setup::new(
        "fio-cfgstatus",
        Options {
            user_rules: false,
            ..Options::default()
        },
    )
    .await;
    let node = s.node(0);
    s.wait_for_status(&node, "Succeeded", succeeded()).await;
    wait_for_event(
        &s.client,
        &s.ns.name,
        FI,
        "FileIntegrityStatus",
        "Normal",
        |n| n == "Active",
    )
    .await;
    let cms = config_maps(&s.client, &s.ns.name);
    cms.create(
        &PostParams::default(),
        &config_map("mine", "aide.conf", RULES),
    )
    .await
    .unwrap();
    s.patch_fi(json!({"spec": {"config": {"name": "mine", "key": "aide.conf"}}}))
        .await;
    wait_for("the user's rules rendered", WAIT, || async {
        let text = rendered_rules(&cms.get(&format!("fim-config-{FI}")).await?);
        Ok(if text.as_deref() == Some(RULES) {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{text:?}"))
        })
    })
    .await
    .unwrap();
    s.wait_for_fi("a re-init request done", |fi| {
        Setup::request(fi).is_some_and(|r| r.done)
    })
    .await;
    s.wait_for_active(1).await;
    for phase in ["Initializing", "Active"] {
        s.wait_for_metric(&format!(
            "file_integrity_operator_phase_total{{phase=\"{phase}\"}} 2"
        ))
        .await;
    }
    s.wait_for_metric("file_integrity_operator_reinit_total{by=\"config\",node=\"\"} 1")
        .await;
    // Both transitions were announced (the Recorder counts repeats of one series).
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(s.client.clone(), &s.ns.name);
    let count = |phase: &str| {
        let events = events.clone();
        let phase = phase.to_owned();
        async move {
            events
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("FileIntegrityStatus")
                        && e.note.as_deref() == Some(phase.as_str())
                })
                .map(|e| e.series.as_ref().map_or(1, |s| s.count))
                .sum::<i32>()
        }
    };
    wait_for("two Initializing and two Active events", WAIT, || async {
        let (i, a) = (count("Initializing").await, count("Active").await);
        Ok(if i == 2 && a == 2 {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("Initializing {i}, Active {a}"))
        })
    })
    .await
    .unwrap();
}

/// FIO ConfigMapOwnerUpdate: FIO restores the owner label on the ConfigMap it renders the
/// rules into when someone removes it. Here `fim-config-<fi>` stripped of its labels and owner
/// reference gets them back; the user's ConfigMap is never owned or labelled (whether referenced
/// or released), so deleting the FileIntegrity deletes the rendered rules and never the user's.
#[tokio::test]
async fn config_map_owner_update() {
    let client = client().await.unwrap();
    let ns = namespace_with_agent_account(&client, "fio-owner").await;
    let _operator = Operator::start(&ns.name);
    let cms = config_maps(&client, &ns.name);
    cms.create(
        &PostParams::default(),
        &config_map("rules", "aide.conf", RULES),
    )
    .await
    .unwrap();
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &ns.name);
    let fi = fis
        .create(
            &PostParams::default(),
            &file_integrity(
                FI,
                json!({
                    // Selects no node: this test is about the ConfigMaps.
                    "nodeSelector": {format!("e2e.kubefim.io/{}", ns.name): "none"},
                    "config": {"name": "rules", "key": "aide.conf"},
                }),
            ),
        )
        .await
        .unwrap();
    let rendered = format!("fim-config-{FI}");
    let owned = |cm: &ConfigMap| {
        cm.labels().get(labels::OWNER).map(String::as_str) == Some(FI)
            && cm
                .owner_references()
                .iter()
                .any(|o| o.kind == "FileIntegrity" && o.uid == fi.uid().unwrap_or_default())
    };
    let wait_owned = |what: &'static str| {
        let cms = cms.clone();
        let rendered = rendered.clone();
        async move {
            wait_for(what, WAIT, || async {
                Ok(match cms.get_opt(&rendered).await? {
                    Some(cm) if owned(&cm) => Poll::Ready(cm),
                    other => Poll::Pending(format!("{:?}", other.map(|c| c.metadata))),
                })
            })
            .await
            .unwrap()
        }
    };
    let user_untouched = || async {
        let cm = cms.get("rules").await.unwrap();
        assert!(cm.owner_references().is_empty(), "{:?}", cm.metadata);
        assert!(
            !cm.labels().keys().any(|k| k.starts_with(labels::PREFIX)),
            "{:?}",
            cm.metadata
        );
    };
    let cm = wait_owned("the rendered rules, owned").await;
    assert_eq!(rendered_rules(&cm).as_deref(), Some(RULES));
    user_untouched().await;

    // Someone strips the rendered ConfigMap of its labels and owner reference.
    let stripped = cms
        .patch(
            &rendered,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": null, "ownerReferences": null}})),
        )
        .await
        .unwrap();
    assert!(!owned(&stripped), "{:?}", stripped.metadata);
    wait_owned("labels and owner reference restored").await;

    // Released: the default rules, the user's ConfigMap as it was.
    fis.patch(
        FI,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"config": {"name": null, "key": null}}})),
    )
    .await
    .unwrap();
    wait_for("the default rules rendered", WAIT, || async {
        let text = rendered_rules(&cms.get(&rendered).await?);
        Ok(
            if text.as_deref() == Some(fim_engine::config::DEFAULT_CONFIG) {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("{text:?}"))
            },
        )
    })
    .await
    .unwrap();
    user_untouched().await;
    assert_eq!(
        rendered_rules(&cms.get("rules").await.unwrap()).as_deref(),
        Some(RULES)
    );

    // Deleted: the rendered rules are garbage-collected, the user's stay.
    fis.delete(FI, &DeleteParams::default()).await.unwrap();
    wait_for("the rendered rules garbage-collected", WAIT, || async {
        Ok(match cms.get_opt(&rendered).await? {
            None => Poll::Ready(()),
            Some(cm) => Poll::Pending(format!("{:?}", cm.metadata)),
        })
    })
    .await
    .unwrap();
    user_untouched().await;
    ns.delete().await.unwrap();
}

/// FIO NodeScaling: a node added to the selection gets an agent, a status, a result and is
/// counted; a node deleted from the cluster leaves nothing behind (its status, its failure
/// ConfigMap, its `node_failed` series), and the counts and phase follow.
#[tokio::test]
async fn node_scaling() {
    let mut s = Setup::new(
        "fio-scale",
        Options {
            user_rules: false,
            ..Options::default()
        },
    )
    .await;
    let first = s.node(0);
    s.wait_for_status(&first, "Succeeded", succeeded()).await;

    // Scale up: a new kwok node, then labelled into the selection.
    let added = KwokNodes::create(
        &s.client,
        &format!("{}-up", s.ns.name),
        1,
        &BTreeMap::new(),
        &[],
    )
    .await
    .unwrap();
    let new = added.names[0].clone();
    s.kwok.push(added);
    s.wait_for_active(1).await;
    label_nodes(&s.client, std::slice::from_ref(&new), &s.label, Some("yes")).await;
    s.start_agent(&new).await;
    s.wait_for_status(&new, "Succeeded", succeeded()).await;
    let fi = s.wait_for_active(2).await;
    assert_eq!(fi.status.unwrap().succeeded, 2);
    s.wait_for_metric(&format!(
        "file_integrity_operator_node_failed{{node=\"{new}\"}} 0"
    ))
    .await;
    // A finding on the new node, so that it has a failure report to leave behind.
    fs::write(s.agent(&new).root.join("etc/hosts"), "10.0.0.1 evil\n").unwrap();
    s.wait_for_status(&new, "Failed", |st| {
        last(st).is_some_and(|(c, ..)| c == ScanCondition::Failed)
    })
    .await;
    s.wait_for_metric(&format!(
        "file_integrity_operator_node_failed{{node=\"{new}\"}} 1"
    ))
    .await;
    let cms = config_maps(&s.client, &s.ns.name);
    let report = format!("{FI}-{new}-failed");
    assert!(cms.get_opt(&report).await.unwrap().is_some());
    let fi = s
        .wait_for_fi("one of two failed", |fi| {
            fi.status
                .as_ref()
                .is_some_and(|st| st.failed == 1 && st.nodes == 2)
        })
        .await;
    assert_eq!(fi.status.unwrap().phase, FileIntegrityPhase::Active);

    // Scale down: the node goes (and its pod, so its agent).
    s.agents.remove(&new).unwrap().stop();
    Api::<Node>::all(s.client.clone())
        .delete(&new, &DeleteParams::default())
        .await
        .unwrap();
    let status = FileIntegrityNodeStatus::name_for(FI, &new);
    wait_for(
        "the removed node's status and report deleted",
        WAIT,
        || async {
            let st = s.statuses().get_opt(&status).await?;
            let cm = cms.get_opt(&report).await?;
            Ok(if st.is_none() && cm.is_none() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("status {}, report {}", st.is_some(), cm.is_some()))
            })
        },
    )
    .await
    .unwrap();
    let fi = s.wait_for_active(1).await;
    let st = fi.status.unwrap();
    assert_eq!((st.succeeded, st.failed), (1, 0), "{st:?}");
    let series = format!("file_integrity_operator_node_failed{{node=\"{new}\"}}");
    wait_for("the removed node's metric series gone", WAIT, || async {
        let body = s.operator_metrics().await;
        Ok(if body.contains(&series) {
            Poll::Pending(body)
        } else {
            Poll::Ready(())
        })
    })
    .await
    .unwrap();
    // The remaining node is untouched.
    assert!(succeeded()(&s.status(&first).await));
}

/// FIO Tolerations: a FileIntegrity tolerating its nodes' taint gets a result from each of them
/// (FIO: the tainted node ends Succeeded).
#[tokio::test]
async fn tolerations() {
    let taint = Taint {
        key: format!("e2e.kubefim.io/taint-{}", kube_fim_e2e::unique_suffix()),
        value: Some("only".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    let s = Setup::new(
        "fio-tolerate",
        Options {
            taint: Some(taint),
            user_rules: false,
            ..Options::default()
        },
    )
    .await;
    let node = s.node(0);
    s.wait_for_status(&node, "Succeeded on the tainted node", succeeded())
        .await;
    let fi = s.wait_for_active(1).await;
    assert_eq!(fi.status.unwrap().succeeded, 1);
}
