//! Container monitoring (`fim-agent daemon --containers`): the files of annotated pods'
//! containers on this node, checked against their image's Snapshot (or the first observation of
//! that image on the node), every gracePeriod and as they change (inotify through the container's
//! root).
//!
//! Pieces: [`targets`] (which containers, from the pods of this node: pure), [`cgroup`] (which host
//! process is a container), [`process`] (pidfd + fd-anchored root), [`compare`] (pure diff),
//! [`Monitor`] (the thread doing the checks), [`watch_pods`] (the API side).

pub mod cgroup;
pub mod compare;
pub mod process;
pub mod watches;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use kube_fim_crds::containers::{self as selection, Remediation};
use kube_fim_crds::{
    ContainerResult, MAX_CONTAINER_CHANGED_PATHS, MAX_CONTAINERS, MAX_POD_PROBLEMS, PodProblems,
    ScanCondition, Snapshot,
};
use tokio::sync::watch;

use crate::snapshot_store;
use compare::Lines;
use process::ContainerProcess;

/// What the publisher merges into the node status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerReport {
    pub containers: Vec<ContainerResult>,
    pub pod_problems: Vec<PodProblems>,
}

/// One container to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    /// `containerd://<id>` as in the pod status.
    pub container_id: String,
    pub image: String,
    pub image_id: String,
    pub paths: Vec<String>,
    pub remediation: Remediation,
    /// For the remediation backoff ([`selection::workload_of`]).
    pub workload: String,
}

/// (namespace, pod, container).
pub type Key = (String, String, String);

impl Target {
    pub fn key(&self) -> Key {
        (
            self.namespace.clone(),
            self.pod.clone(),
            self.container.clone(),
        )
    }
}

/// The running containers the pods ask to monitor, and the problems of their annotations.
pub fn targets(pods: &[Arc<Pod>]) -> (Vec<Target>, Vec<PodProblems>) {
    let mut targets = Vec::new();
    let mut problems = Vec::new();
    for pod in pods {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let names: Vec<&str> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
            .unwrap_or_default();
        let Some(sel) = selection::select(&annotations, &names) else {
            continue;
        };
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        if !sel.problems.is_empty() {
            problems.push(PodProblems {
                namespace: namespace.clone(),
                pod: name.clone(),
                problems: sel
                    .problems
                    .iter()
                    .take(16)
                    .map(|p| truncate(p, 1024))
                    .collect(),
            });
        }
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        let workload = selection::workload_of(
            &namespace,
            &name,
            pod.metadata.owner_references.as_deref().unwrap_or_default(),
        );
        for c in &sel.containers {
            let Some(status) = statuses.iter().find(|s| s.name == c.name) else {
                continue;
            };
            let running = status.state.as_ref().is_some_and(|s| s.running.is_some());
            let Some(id) = status.container_id.clone().filter(|_| running) else {
                continue;
            };
            targets.push(Target {
                namespace: namespace.clone(),
                pod: name.clone(),
                pod_uid: pod.uid().unwrap_or_default(),
                container: c.name.clone(),
                container_id: id,
                image: status.image.clone(),
                image_id: status.image_id.clone(),
                paths: c.paths.clone(),
                remediation: sel.remediation,
                workload: workload.clone(),
            });
        }
    }
    problems.truncate(MAX_POD_PROBLEMS);
    (targets, problems)
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The digest of a pod status `imageID` (`registry/app@sha256:<hex>`, `sha256:<hex>`,
/// `docker-pullable://app@sha256:<hex>`).
pub fn image_digest(image_id: &str) -> Option<&str> {
    let at = image_id.rfind('@').map_or(0, |i| i + 1);
    let d = &image_id[at..];
    fim_engine::image::reference::is_digest(d).then_some(d)
}

/// The Snapshot for an image: one whose digest (`spec.imageDigest` or the reference's) is the
/// container's image digest; else, when either side has no digest, one whose reference names the
/// same repository and tag.
pub fn find_snapshot<'a>(
    snapshots: &'a [Arc<Snapshot>],
    image: &str,
    image_id: &str,
) -> Option<&'a Arc<Snapshot>> {
    use fim_engine::image::ImageRef;
    let digest = image_digest(image_id);
    let snapshot_digest = |s: &Snapshot| {
        s.spec.image_digest.clone().or_else(|| {
            ImageRef::parse(&s.spec.image)
                .ok()
                .and_then(|r| r.digest.clone())
        })
    };
    if let Some(d) = digest
        && let Some(s) = snapshots
            .iter()
            .find(|s| snapshot_digest(s).as_deref() == Some(d))
    {
        return Some(s);
    }
    let wanted = ImageRef::parse(image).ok()?;
    snapshots.iter().find(|s| {
        let Ok(r) = ImageRef::parse(&s.spec.image) else {
            return false;
        };
        let comparable = digest.is_none() || snapshot_digest(s).is_none();
        comparable && r.name() == wanted.name() && r.tag_or_default() == wanted.tag_or_default()
    })
}

/// Settings of the monitor.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The host's `/proc` (the agent shares the host PID namespace).
    pub proc: PathBuf,
    /// Where FirstObserved baselines are kept (`<db-dir>/containers`).
    pub first_observed_dir: PathBuf,
    /// Algorithm of FirstObserved baselines (`spec.containers.algorithm`).
    pub algorithm: kube_fim_crds::Algorithm,
    /// `spec.config.gracePeriod`, followed live (the daemon's channel).
    pub grace_period: watch::Receiver<Duration>,
    /// `spec.containers.allowKill`.
    pub allow_kill: bool,
    pub max_remediations: u32,
    pub remediation_window: Duration,
    /// Watch the monitored trees with inotify.
    pub realtime: bool,
}

/// Where the monitor reads pods and Snapshots (filled by [`watch_pods`]).
#[derive(Clone)]
pub struct Sources {
    pub pods: Store<Pod>,
    pub snapshots: Store<Snapshot>,
    /// Set when either changed.
    pub dirty: Arc<AtomicBool>,
    pub s3: Option<snapshot_store::Store>,
}

/// Watches the pods of `node` (field selector `spec.nodeName`) and the Snapshots of `namespace`.
pub fn watch_pods(
    client: &Client,
    node: &str,
    namespace: &str,
    s3: Option<snapshot_store::Store>,
) -> Sources {
    let dirty = Arc::new(AtomicBool::new(true));
    let (pods, pod_writer) = reflector::store();
    let (snapshots, snapshot_writer) = reflector::store();
    let pod_api: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    tokio::spawn({
        let dirty = dirty.clone();
        async move {
            let mut stream = watcher(pod_api, config)
                .default_backoff()
                .reflect(pod_writer)
                .boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => dirty.store(true, Ordering::SeqCst),
                    Err(e) => tracing::warn!("pod watch: {e}"),
                }
            }
        }
    });
    let snapshot_api: Api<Snapshot> = Api::namespaced(client.clone(), namespace);
    tokio::spawn({
        let dirty = dirty.clone();
        async move {
            let mut stream = watcher(snapshot_api, watcher::Config::default())
                .default_backoff()
                .reflect(snapshot_writer)
                .boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => dirty.store(true, Ordering::SeqCst),
                    Err(e) => tracing::warn!("Snapshot watch: {e}"),
                }
            }
        }
    });
    Sources {
        pods,
        snapshots,
        dirty,
        s3,
    }
}

/// What a container's files are compared with.
#[derive(Clone, Debug)]
struct Baseline {
    /// `Snapshot/<ns>/<name>` or `FirstObserved`.
    source: String,
    algorithm: kube_fim_crds::Algorithm,
    /// `None`: FirstObserved without an observation yet (this check makes it).
    lines: Option<Arc<Lines>>,
    /// FirstObserved file to write the first observation to.
    first_observed: Option<PathBuf>,
}

/// The monitoring thread's state.
pub struct Monitor {
    pub settings: Settings,
    pub sources: Sources,
    pub runtime: tokio::runtime::Handle,
    pub report: watch::Sender<ContainerReport>,
    pub stop: Arc<AtomicBool>,
    processes: HashMap<String, ContainerProcess>,
    results: BTreeMap<Key, ContainerResult>,
    /// Loaded Snapshot data by (uid, resourceVersion): verified once per version.
    loaded: HashMap<(String, String), Result<Arc<Lines>, String>>,
    /// Remediation times per workload (seconds).
    remediations: HashMap<String, Vec<i64>>,
    /// The last remediation per container, kept while its pod exists (its result goes while
    /// the killed container is not running).
    last_remediations: HashMap<Key, String>,
    watches: Option<watches::Watches>,
    /// Syslog lines for findings and the agent's `kill` (`spec.alerts.syslog`).
    pub syslog: Option<crate::syslog::containers::ContainerSink>,
}

impl Monitor {
    pub fn new(
        settings: Settings,
        sources: Sources,
        runtime: tokio::runtime::Handle,
        report: watch::Sender<ContainerReport>,
        stop: Arc<AtomicBool>,
    ) -> Monitor {
        let watches = if settings.realtime {
            match watches::Watches::new() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("container realtime detection off (inotify: {e})");
                    None
                }
            }
        } else {
            None
        };
        Monitor {
            settings,
            sources,
            runtime,
            report,
            stop,
            processes: HashMap::new(),
            results: BTreeMap::new(),
            loaded: HashMap::new(),
            remediations: HashMap::new(),
            last_remediations: HashMap::new(),
            watches,
            syslog: None,
        }
    }

    /// Checks every gracePeriod, on pod/Snapshot changes (new containers at once) and on inotify
    /// events (the changed containers), until `stop`.
    pub fn run(mut self) {
        if let Err(e) = std::fs::create_dir_all(&self.settings.first_observed_dir) {
            tracing::warn!(dir = %self.settings.first_observed_dir.display(), "FirstObserved baselines cannot be kept: {e}");
        }
        // Full rounds every gracePeriod as it is now: a live change applies from the last round.
        let mut last_full: Option<Instant> = None;
        let mut targets: Vec<Target> = Vec::new();
        let mut problems: Vec<PodProblems> = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            let mut due: BTreeSet<Key> = BTreeSet::new();
            let mut all = false;
            if self.sources.dirty.swap(false, Ordering::SeqCst) {
                let pods = self.sources.pods.state();
                let (new_targets, new_problems) = targets_of(&pods);
                // New or re-created containers are checked at once, the rest on schedule.
                for t in &new_targets {
                    if !targets.contains(t) {
                        due.insert(t.key());
                    }
                }
                let snapshots_changed = self.forget_stale_snapshots();
                all |= snapshots_changed;
                targets = new_targets;
                problems = new_problems;
                let live: BTreeSet<Key> = targets.iter().map(Target::key).collect();
                self.results.retain(|k, _| live.contains(k));
                let pods_present: BTreeSet<(String, String)> = pods
                    .iter()
                    .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
                    .collect();
                self.last_remediations
                    .retain(|k, _| pods_present.contains(&(k.0.clone(), k.1.clone())));
                let ids: BTreeSet<String> = targets
                    .iter()
                    .filter_map(|t| cgroup::parse_container_id(&t.container_id))
                    .map(str::to_owned)
                    .collect();
                self.processes.retain(|id, _| ids.contains(id));
                if let Some(w) = &mut self.watches {
                    w.retain(&live);
                }
                if let Some(s) = &mut self.syslog {
                    s.retain(&live);
                }
                self.publish(&problems);
            }
            let grace_period = *self.settings.grace_period.borrow();
            let next_full = last_full.map_or_else(Instant::now, |t| t + grace_period);
            if Instant::now() >= next_full {
                all = true;
                last_full = Some(Instant::now());
            }
            let next_full = last_full.map_or_else(Instant::now, |t| t + grace_period);
            if all {
                due.extend(targets.iter().map(Target::key));
            }
            if due.is_empty() {
                let wait = next_full
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200));
                match &mut self.watches {
                    Some(w) => due.extend(w.wait(wait)),
                    None => std::thread::sleep(wait),
                }
                if due.is_empty() {
                    continue;
                }
            }
            let mut changed = false;
            for t in targets.iter().filter(|t| due.contains(&t.key())) {
                if let Some(result) = self.check(t) {
                    changed = true;
                    self.results.insert(t.key(), result);
                }
            }
            if changed {
                self.publish(&problems);
            }
        }
    }

    fn publish(&self, problems: &[PodProblems]) {
        let report = ContainerReport {
            containers: self
                .results
                .values()
                .take(MAX_CONTAINERS)
                .cloned()
                .collect(),
            pod_problems: problems.to_vec(),
        };
        self.report.send_if_modified(|old| {
            if *old == report {
                false
            } else {
                *old = report;
                true
            }
        });
    }

    /// Drops loaded Snapshot data whose object changed or went (returns whether any did).
    fn forget_stale_snapshots(&mut self) -> bool {
        let current: BTreeSet<(String, String)> = self
            .sources
            .snapshots
            .state()
            .iter()
            .map(|s| {
                (
                    s.uid().unwrap_or_default(),
                    s.resource_version().unwrap_or_default(),
                )
            })
            .collect();
        let before = self.loaded.len();
        self.loaded.retain(|k, _| current.contains(k));
        self.loaded.len() != before
    }

    /// The baseline of `t`, or why there is none usable.
    fn baseline(&mut self, t: &Target) -> Result<Baseline, String> {
        let snapshots = self.sources.snapshots.state();
        if let Some(s) = find_snapshot(&snapshots, &t.image, &t.image_id) {
            let key = (
                s.uid().unwrap_or_default(),
                s.resource_version().unwrap_or_default(),
            );
            let name = snapshot_store::snapshot_name(s);
            let lines = match self.loaded.get(&key) {
                Some(r) => r.clone(),
                None => {
                    let fetched = self
                        .runtime
                        .block_on(snapshot_store::load(s, self.sources.s3.as_ref()));
                    // S3 unreachable (or the object not there yet) is tried again at the next
                    // check; a verdict on the data itself holds for this version of the Snapshot.
                    let transient =
                        matches!(fetched, Err(snapshot_store::LoadError::Unavailable { .. }));
                    let loaded = fetched.map_err(|e| e.to_string()).and_then(|data| {
                        let hex_len = algorithm_of(s.spec.algorithm)?.output_len() * 2;
                        let lines = fim_engine::image::lines::parse_lines(&data, hex_len)
                            .map_err(|e| format!("Snapshot {name}: {e}"))?;
                        Ok(Arc::new(
                            lines
                                .iter()
                                .map(|l| (l.path.to_owned(), l.hex.to_ascii_lowercase()))
                                .collect(),
                        ))
                    });
                    if !transient {
                        self.loaded.insert(key, loaded.clone());
                    }
                    loaded
                }
            }?;
            return Ok(Baseline {
                source: format!("Snapshot/{name}"),
                algorithm: s.spec.algorithm,
                lines: Some(lines),
                first_observed: None,
            });
        }
        let algorithm = self.settings.algorithm;
        // The digest the runtime resolved identifies the content; the reference only if none.
        let identity = image_digest(&t.image_id).unwrap_or(&t.image);
        let file = self
            .settings
            .first_observed_dir
            .join(compare::first_observed_key(
                identity,
                algorithm.as_str(),
                &t.paths,
            ));
        match std::fs::read_to_string(&file) {
            Ok(text) => Ok(Baseline {
                source: "FirstObserved".into(),
                algorithm,
                lines: Some(Arc::new(compare::parse(&text).map_err(|e| {
                    format!("FirstObserved baseline {}: {e}", file.display())
                })?)),
                first_observed: None,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Baseline {
                source: "FirstObserved".into(),
                algorithm,
                lines: None,
                first_observed: Some(file),
            }),
            Err(e) => Err(format!("FirstObserved baseline {}: {e}", file.display())),
        }
    }

    /// Checks one container; `None` when it exited meanwhile (re-resolved on the next round).
    fn check(&mut self, t: &Target) -> Option<ContainerResult> {
        let mut result = ContainerResult {
            namespace: t.namespace.clone(),
            pod: t.pod.clone(),
            container: t.container.clone(),
            pod_uid: t.pod_uid.clone(),
            container_id: t.container_id.clone(),
            image: t.image.clone(),
            image_id: t.image_id.clone(),
            baseline_source: String::new(),
            condition: ScanCondition::Errored,
            last_probe_time: Time(Timestamp::now()),
            files_added: 0,
            files_changed: 0,
            files_removed: 0,
            changed_paths: Vec::new(),
            error_message: None,
            last_remediation: self.last_remediations.get(&t.key()).cloned(),
        };
        let errored = |mut r: ContainerResult, message: String| {
            tracing::warn!(pod = %r.pod, container = %r.container, "container check errored: {message}");
            r.error_message = Some(truncate(&message, 4096));
            Some(r)
        };
        let Some(id) = cgroup::parse_container_id(&t.container_id).map(str::to_owned) else {
            return errored(
                result,
                format!(
                    "containerID {:?} is not <runtime>://<64 hex digits>",
                    t.container_id
                ),
            );
        };
        let baseline = match self.baseline(t) {
            Ok(b) => b,
            Err(e) => return errored(result, e),
        };
        result.baseline_source = baseline.source.clone();
        if !self.processes.get(&id).is_some_and(ContainerProcess::alive) {
            self.processes.remove(&id);
            match ContainerProcess::find(&self.settings.proc, &id) {
                Ok(p) => {
                    tracing::info!(pod = %t.pod, container = %t.container, pid = p.pid, "container process found");
                    self.processes.insert(id.clone(), p);
                }
                // A container seen before that has no process now just exited (killed,
                // crashed, stopping): the pod status will name its successor. Not an error.
                Err(process::ProcessError::NotFound { .. })
                    if self
                        .results
                        .get(&t.key())
                        .is_some_and(|r| r.container_id == t.container_id) =>
                {
                    return None;
                }
                Err(e) => return errored(result, e.to_string()),
            }
        }
        let process = &self.processes[&id];
        let dirs = compare::dirs(&t.paths);
        let algorithm = match algorithm_of(baseline.algorithm) {
            Ok(a) => a,
            Err(e) => return errored(result, e),
        };
        let walked = fim_engine::snapshot::snapshot_of(&process.root, &dirs, algorithm, 1, true);
        if !process.alive() {
            // Whatever was read may belong to a process that reused the pid: discard it.
            self.processes.remove(&id);
            return None;
        }
        let current = match walked
            .map_err(|e| e.to_string())
            .and_then(|text| compare::parse(&text))
        {
            Ok(c) => c,
            Err(e) => return errored(result, format!("cannot read the container's files: {e}")),
        };
        if let Some(w) = &mut self.watches {
            w.watch(t.key(), &process.root, &t.paths, &current);
        }
        let diff = match &baseline.lines {
            Some(lines) => compare::compare(&compare::restrict(lines, &dirs), &current),
            None => {
                // The first container of this image on the node defines what it should hold.
                if let Some(file) = &baseline.first_observed {
                    let text = compare::render(&current);
                    if let Err(e) = crate::daemon::baseline::write_atomically(file, text.as_bytes())
                    {
                        return errored(
                            result,
                            format!(
                                "cannot keep the FirstObserved baseline {}: {e}",
                                file.display()
                            ),
                        );
                    }
                    tracing::info!(pod = %t.pod, container = %t.container, files = current.len(), "FirstObserved baseline recorded");
                }
                compare::Diff::default()
            }
        };
        result.condition = if diff.is_clean() {
            ScanCondition::Succeeded
        } else {
            ScanCondition::Failed
        };
        result.files_added = diff.added.len() as i64;
        result.files_changed = diff.changed.len() as i64;
        result.files_removed = diff.removed.len() as i64;
        result.changed_paths = diff
            .evidence(MAX_CONTAINER_CHANGED_PATHS)
            .iter()
            .map(|p| truncate(p, 4096))
            .collect();
        let subject = crate::syslog::containers::Subject {
            namespace: t.namespace.clone(),
            pod: t.pod.clone(),
            container: t.container.clone(),
            image: t.image.clone(),
        };
        if let Some(s) = &mut self.syslog {
            s.findings(&subject, t.remediation, &diff);
        }
        if result.condition == ScanCondition::Failed && t.remediation == Remediation::Kill {
            let done = self.kill(t, &id);
            let previous = self.last_remediations.insert(t.key(), done.clone());
            // Once per outcome: a suppressed or refused kill is not repeated at every check.
            if let Some(s) = &mut self.syslog
                && previous.as_ref() != Some(&done)
            {
                let evidence = diff.evidence(1);
                let file = evidence.first().map_or("", String::as_str);
                let message = crate::syslog::containers::kill_message(&subject, &done);
                s.remediation(&subject, message, file);
            }
            result.last_remediation = Some(done);
        }
        Some(result)
    }

    /// The `kill` remediation (bounded per workload), described for `lastRemediation`.
    fn kill(&mut self, t: &Target, id: &str) -> String {
        let now = Timestamp::now();
        if !self.settings.allow_kill {
            return "kill refused: spec.containers.allowKill is false".into();
        }
        let history = self.remediations.entry(t.workload.clone()).or_default();
        let window = self.settings.remediation_window.as_secs() as i64;
        history.retain(|s| now.as_second() - s < window);
        if !selection::remediation_allowed(
            history,
            now.as_second(),
            self.settings.max_remediations,
            window,
        ) {
            // No time in the text: it stays the same while suppressed (one event, not one per check).
            return format!(
                "kill suppressed: {} remediations of {} within {window}s",
                history.len(),
                t.workload
            );
        }
        let Some(process) = self.processes.remove(id) else {
            return "kill failed: the container process is gone".into();
        };
        match process.kill() {
            Ok(()) => {
                history.push(now.as_second());
                tracing::warn!(pod = %t.pod, container = %t.container, pid = process.pid, "tampered container killed");
                format!("kill at {now}")
            }
            Err(e) => format!("kill failed at {now}: {e}"),
        }
    }
}

fn algorithm_of(a: kube_fim_crds::Algorithm) -> Result<fim_engine::hash::Algorithm, String> {
    a.as_str()
        .parse()
        .map_err(|e: fim_engine::hash::UnknownAlgorithm| e.to_string())
}

fn targets_of(pods: &[Arc<Pod>]) -> (Vec<Target>, Vec<PodProblems>) {
    targets(pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_fim_crds::SnapshotSpec;
    use serde_json::json;

    const ID: &str = "3f1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn pod(annotations: serde_json::Value, running: bool) -> Arc<Pod> {
        let state = if running {
            json!({"running": {}})
        } else {
            json!({"waiting": {"reason": "ContainerCreating"}})
        };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web-1", "namespace": "team", "uid": "u1",
                             "annotations": annotations,
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                  "name": "web-6d4f", "uid": "r1", "controller": true}]},
                "spec": {"containers": [{"name": "web", "image": "localhost/web:1"},
                                        {"name": "side", "image": "localhost/side:1"}]},
                "status": {"containerStatuses": [
                    {"name": "web", "image": "localhost/web:1", "imageID": format!("localhost/web@{DIGEST}"),
                     "containerID": format!("containerd://{ID}"), "ready": true, "restartCount": 0,
                     "state": state},
                ]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn targets_are_running_selected_containers_and_problems_are_per_pod() {
        let p = pod(
            json!({"fim.kubefim.io/monitor": "true", "web.fim.kubefim.io/paths": "/srv/html,rel",
                   "side.fim.kubefim.io/paths": "/etc", "fim.kubefim.io/remediation": "kill"}),
            true,
        );
        let (t, problems) = targets(&[p]);
        assert_eq!(t.len(), 1, "side has no status yet: not running");
        assert_eq!(t[0].container_id, format!("containerd://{ID}"));
        assert_eq!(t[0].paths, ["/srv/html"]);
        assert_eq!(t[0].remediation, Remediation::Kill);
        assert_eq!(t[0].workload, "team/ReplicaSet/web-6d4f");
        assert_eq!(t[0].image_id, format!("localhost/web@{DIGEST}"));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].problems[0].contains("\"rel\" is relative"),
            "{problems:?}"
        );

        let waiting = pod(
            json!({"fim.kubefim.io/monitor": "true", "web.fim.kubefim.io/paths": "/srv"}),
            false,
        );
        assert_eq!(targets(&[waiting]).0, []);
        let not_opted = pod(json!({"web.fim.kubefim.io/paths": "/srv"}), true);
        assert_eq!(targets(&[not_opted]), (vec![], vec![]));
    }

    fn snapshot(name: &str, image: &str, digest: Option<&str>) -> Arc<Snapshot> {
        let mut s = Snapshot::new(
            name,
            SnapshotSpec {
                image: image.into(),
                image_digest: digest.map(Into::into),
                algorithm: kube_fim_crds::Algorithm::Sha256,
                hashes: Some("eA==".into()),
                source: None,
            },
        );
        s.metadata.namespace = Some("kube-fim".into());
        Arc::new(s)
    }

    #[test]
    fn snapshots_match_by_digest_first_then_by_reference() {
        let other = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        let by_tag = snapshot("by-tag", "localhost/web:1", None);
        let by_digest = snapshot("by-digest", "localhost/web:old", Some(DIGEST));
        let stale = snapshot("stale", "localhost/web:1", Some(other));
        let id = format!("localhost/web@{DIGEST}");
        let all = [stale.clone(), by_tag.clone(), by_digest.clone()];
        assert_eq!(
            find_snapshot(&all, "localhost/web:1", &id)
                .unwrap()
                .name_any(),
            "by-digest"
        );
        let no_digest = [stale.clone(), by_tag.clone()];
        assert_eq!(
            find_snapshot(&no_digest, "localhost/web:1", &id)
                .unwrap()
                .name_any(),
            "by-tag",
            "a Snapshot without digest matches by reference"
        );
        assert!(
            find_snapshot(&[stale], "localhost/web:1", &id).is_none(),
            "another digest under the same tag is another image"
        );
        assert!(find_snapshot(std::slice::from_ref(&by_tag), "localhost/web:2", &id).is_none());
        assert_eq!(
            find_snapshot(&[by_tag], "docker.io/library/nginx:latest", "").map(|s| s.name_any()),
            None
        );
        let nginx = snapshot("nginx", "nginx", None);
        assert!(find_snapshot(&[nginx], "docker.io/library/nginx:latest", "").is_some());
        assert_eq!(
            image_digest(&format!("docker-pullable://web@{DIGEST}")),
            Some(DIGEST)
        );
        assert_eq!(image_digest(DIGEST), Some(DIGEST));
        assert_eq!(image_digest("web:1"), None);
    }
}
