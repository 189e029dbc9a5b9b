//! The scanning thread: runs one job at a time (initialise, check, realtime rescan, re-init),
//! keeps the baseline and the current findings, and hands each result to the publisher.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::jiff::Timestamp;
use kube_fim_crds::{FileIntegrityNodeStatusFields, RealtimeWatcher};
use tokio::sync::watch;

use super::Publication;
use super::api::NodeApi;
use super::baseline::{self, Assessment, Store, write_atomically};
use super::findings::Findings;
use super::metrics::Metrics;
use super::status::{self, BaselineRecord, Owner, Report};
use crate::failure_report::{self, Limits, failure_config_map_data};
use fim_engine::config::{Config, ParseContext};
use fim_engine::db::{DbReader, DbWriter, FORMAT_VERSION, Header};
use fim_engine::report::{self, ReportContext};
use fim_engine::scan::{Outcome, ScanOptions, ScanStats, scan};
use fim_engine::scope::Scope;

/// Rescans naming more paths than this become an incremental check of everything.
const MAX_SCOPE: usize = 2000;

/// What the worker is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// A periodic check; `full` forces a rehash of every file.
    Check {
        full: bool,
    },
    /// Rescan these node paths (from the change watcher).
    Rescan {
        paths: Vec<Vec<u8>>,
    },
    /// Back up and re-create the baseline, then acknowledge request `id`.
    Reinit {
        id: u64,
    },
    Stop,
}

/// Jobs waiting at the same time, folded into what actually has to run. However many jobs
/// arrive while a scan runs, this holds at most one re-init, one check and [`MAX_SCOPE`] rescan
/// paths: rescans beyond that coalesce into a check (which covers every path).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub reinit: Option<u64>,
    pub check: Option<bool>,
    pub rescan: BTreeSet<Vec<u8>>,
    pub stop: bool,
}

impl Pending {
    pub fn add(&mut self, job: Job) {
        match job {
            Job::Stop => self.stop = true,
            Job::Reinit { id } => self.reinit = Some(self.reinit.map_or(id, |r| r.max(id))),
            Job::Check { full } => {
                self.check = Some(self.check.unwrap_or(false) || full);
                self.rescan = BTreeSet::new();
            }
            // A pending check covers every path.
            Job::Rescan { .. } if self.check.is_some() => {}
            Job::Rescan { paths } => {
                self.rescan.extend(paths);
                if self.rescan.len() > MAX_SCOPE {
                    self.check = Some(false);
                    self.rescan = BTreeSet::new();
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Pending::default()
    }
}

/// The worker's job queue: jobs fold into one [`Pending`] as they arrive (never a list that
/// grows while a long scan runs).
#[derive(Debug, Default)]
pub struct Queue {
    pending: Mutex<Pending>,
    ready: Condvar,
}

impl Queue {
    pub fn send(&self, job: Job) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.add(job);
        self.ready.notify_one();
    }

    /// Waits until there is something to do and takes all of it.
    pub fn take(&self) -> Pending {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while pending.is_empty() {
            pending = self.ready.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        std::mem::take(&mut *pending)
    }
}

/// Pauses scanning (maintenance): the FileIntegrity's holdoff annotation, a cordoned node.
#[derive(Debug, Default)]
pub struct Control {
    pub holdoff: AtomicBool,
    pub cordoned: AtomicBool,
    /// Backups kept at the next re-init (`spec.config.maxBackups`, followed live).
    pub max_backups: std::sync::atomic::AtomicUsize,
}

impl Control {
    pub fn paused(&self) -> bool {
        self.holdoff.load(Ordering::SeqCst) || self.cordoned.load(Ordering::SeqCst)
    }
}

/// Settings of the worker.
pub struct Settings {
    pub root: PathBuf,
    pub node: String,
    pub threads: usize,
    pub full_scan_every: Option<Duration>,
}

enum State {
    /// No baseline yet (or its rules could not be read): the next check initialises.
    NoBaseline,
    Ready {
        config: Box<Config>,
        baseline: BaselineRecord,
        findings: Findings,
        stats: ScanStats,
    },
    /// The baseline cannot be trusted; only a re-init request gets out of here.
    Broken { reason: String },
}

pub struct Worker {
    pub settings: Settings,
    pub store: Store,
    pub api: NodeApi,
    pub runtime: tokio::runtime::Handle,
    pub control: Arc<Control>,
    pub metrics: Arc<Metrics>,
    pub publish: watch::Sender<Option<Publication>>,
    pub owner: Owner,
    /// The agent's copy of its node status.
    pub fields: FileIntegrityNodeStatusFields,
    pub acknowledged: Option<u64>,
    /// A re-init request pending at start: the first baseline answers it.
    pub initial_request: Option<u64>,
    /// Where to send the trees the baseline's rules select (the realtime watcher), if watching.
    pub watch_roots: Option<crossbeam_channel::Sender<Vec<Vec<u8>>>>,
    /// Syslog alerts for the findings (`spec.alerts.syslog`).
    pub syslog: Option<crate::syslog::node::NodeSink>,
    /// Which realtime watcher runs (set by the watcher thread once it has tried to start one).
    pub realtime_watcher: Arc<std::sync::Mutex<Option<RealtimeWatcher>>>,
    /// Liveness and readiness: told of every job, scan progress and result.
    pub health: Option<Arc<crate::health::Health>>,
    state: State,
    last_full: Option<Instant>,
    sequence: u64,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        store: Store,
        api: NodeApi,
        runtime: tokio::runtime::Handle,
        control: Arc<Control>,
        metrics: Arc<Metrics>,
        publish: watch::Sender<Option<Publication>>,
        owner: Owner,
        fields: FileIntegrityNodeStatusFields,
        acknowledged: Option<u64>,
    ) -> Worker {
        Worker {
            settings,
            store,
            api,
            runtime,
            control,
            metrics,
            publish,
            owner,
            fields,
            acknowledged,
            initial_request: None,
            watch_roots: None,
            syslog: None,
            realtime_watcher: Arc::default(),
            health: None,
            state: State::NoBaseline,
            last_full: None,
            sequence: 0,
        }
    }

    /// Runs until a [`Job::Stop`].
    pub fn run(mut self, jobs: &Queue) {
        self.start();
        loop {
            let pending = jobs.take();
            self.progress();
            if pending.stop {
                break;
            }
            if let Some(id) = pending.reinit.filter(|id| self.acknowledged != Some(*id)) {
                self.initialise(Some(id));
                continue;
            }
            if self.control.paused() {
                tracing::debug!("maintenance: scan skipped");
                continue;
            }
            if let Some(full) = pending.check {
                self.check(full);
            } else if !pending.rescan.is_empty() {
                self.rescan(pending.rescan.into_iter().collect());
            }
        }
        tracing::info!("scanner stopped");
    }

    /// Decides what the baseline on disk is worth, then initialises or checks.
    fn start(&mut self) {
        if let Err(e) = self
            .store
            .create_dirs()
            .and_then(|()| self.store.remove_stale_temporaries())
        {
            return self.broken(format!(
                "cannot prepare the baseline directory {}: {e}",
                self.store.database().display()
            ));
        }
        let recorded = self.fields.baseline_digest.clone();
        // Opened once: the digest assessed and the header loaded come from the same descriptor.
        let opened = self.store.open_database();
        let on_disk = opened
            .as_ref()
            .map(|r| r.as_ref().map(|db| db.digest.clone()).map_err(Clone::clone));
        match baseline::assess(&self.store.database(), on_disk, recorded.as_deref()) {
            Assessment::Initialise => self.initialise(self.initial_request),
            Assessment::SetAside { digest } => {
                // `initialise` moves it to the backups before writing the new one.
                tracing::warn!(
                    digest,
                    db = %self.store.database().display(),
                    "a baseline database without a recorded digest is not adopted: it is kept \
                     in the backups and a new baseline is created"
                );
                self.initialise(self.initial_request)
            }
            Assessment::Broken { reason } => self.broken(reason),
            Assessment::Use { digest } => match opened
                .and_then(Result::ok)
                .ok_or_else(|| "the baseline database vanished".to_string())
                .and_then(|db| self.load(digest, db.header))
            {
                Ok(()) => {
                    if !self.control.paused() {
                        self.check(false)
                    }
                }
                Err(reason) => self.broken(reason),
            },
        }
    }

    /// Loads the rules the baseline `digest` was made with, checking they are the recorded ones.
    fn load(&mut self, digest: String, header: Header) -> Result<(), String> {
        let rules_path = self.store.rules();
        let text = std::fs::read_to_string(&rules_path)
            .map_err(|e| format!("cannot read {}: {e}", rules_path.display()))?;
        let config = self.parse(&text).map_err(|e| e.to_string())?;
        if config.digest() != header.config_digest {
            return Err(format!(
                "the rules {} do not match the baseline (digest {} but the database was made \
                 with {}): they were modified outside a re-init request",
                rules_path.display(),
                config.digest(),
                header.config_digest
            ));
        }
        let created = Timestamp::from_second(header.created).unwrap_or_default();
        self.watch(&config);
        self.state = State::Ready {
            config: Box::new(config),
            baseline: BaselineRecord { digest, created },
            findings: Findings::default(),
            stats: ScanStats::default(),
        };
        Ok(())
    }

    fn parse(&self, text: &str) -> Result<Config, fim_engine::config::ConfigError> {
        let ctx = ParseContext {
            root: Some(self.settings.root.clone()),
            hostname: self.settings.node.clone(),
        };
        // Rules from the cluster: includes refused, `@@if exists` under the node root.
        Config::parse_in(text, "aide.conf", &ctx, fim_engine::config::Mode::Node)
    }

    /// Creates a new baseline with the current rules (backing up the old one) and, for a re-init
    /// request, acknowledges it.
    fn initialise(&mut self, request: Option<u64>) {
        let text = match self.runtime.block_on(self.api.rules()) {
            Ok(t) => t,
            Err(e) => {
                // Nothing is lost: the old baseline (if any) stays in place.
                return self.errored(format!("cannot create the baseline: {e}"));
            }
        };
        let config = match self.parse(&text) {
            Ok(c) => c,
            Err(e) => return self.errored(format!("cannot create the baseline: {e}")),
        };
        if self.fields.last_result.is_none() {
            // A first baseline can take minutes: the status exists meanwhile, without a result
            // (the operator counts the node as initialising).
            self.send(None);
        }
        let started = Instant::now();
        let now = SystemTime::now();
        let result = (|| -> Result<(String, Outcome), String> {
            if self.store.database().exists() {
                let removed = self
                    .store
                    .back_up(
                        &baseline::stamp(now),
                        self.control.max_backups.load(Ordering::SeqCst),
                    )
                    .map_err(|e| format!("cannot back up the baseline: {e}"))?;
                for path in removed {
                    tracing::info!(path = %path.display(), "old backup removed");
                }
            }
            let header = Header {
                format_version: FORMAT_VERSION,
                created: Timestamp::try_from(now).unwrap_or_default().as_second(),
                tool_version: env!("CARGO_PKG_VERSION").into(),
                config_digest: config.digest(),
                root: self.settings.root.display().to_string(),
            };
            let out =
                DbWriter::create(&self.store.database(), &header).map_err(|e| e.to_string())?;
            let outcome = scan(&config, &self.scan_options(false, None), None, Some(out))
                .map_err(|e| format!("the initial scan failed: {e}"))?;
            write_atomically(&self.store.rules(), text.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", self.store.rules().display()))?;
            let digest = outcome.written_digest.clone().unwrap_or_default();
            Ok((digest, outcome))
        })();
        let (digest, outcome) = match result {
            Ok(r) => r,
            Err(reason) => {
                self.metrics
                    .scans
                    .with_label_values(&["init", "errored"])
                    .inc();
                // A failed initialisation leaves no usable baseline behind.
                self.state = State::NoBaseline;
                return self.errored(reason);
            }
        };
        self.observe("init", started, &outcome.stats, "succeeded");
        tracing::info!(digest, entries = outcome.stats.entries, "baseline created");
        let record = BaselineRecord {
            digest,
            created: Timestamp::try_from(now).unwrap_or_default(),
        };
        if request.is_some() {
            self.acknowledged = request;
        }
        self.last_full = Some(started);
        self.watch(&config);
        self.state = State::Ready {
            config: Box::new(config),
            baseline: record,
            findings: Findings::default(),
            stats: outcome.stats,
        };
        self.publish_findings();
    }

    fn check(&mut self, force_full: bool) {
        tracing::debug!(force_full, "periodic check");
        match &self.state {
            State::NoBaseline => return self.initialise(self.initial_request),
            // Repeated so the record stays current (lastProbeTime) until a re-init request.
            State::Broken { reason } => return self.errored(reason.clone()),
            State::Ready { .. } => {}
        }
        let full = check_is_full(
            force_full,
            self.settings.full_scan_every,
            self.last_full.map(|t| t.elapsed()),
        );
        let kind = if full { "full" } else { "incremental" };
        let started = Instant::now();
        let Some(reader) = self.open_verified() else {
            return;
        };
        let State::Ready { config, .. } = &self.state else {
            return;
        };
        let result = scan(config, &self.scan_options(!full, None), Some(reader), None);
        match result {
            Ok(outcome) => {
                let findings = Findings::from_outcome(&outcome);
                let verdict = if findings.is_clean() {
                    "succeeded"
                } else {
                    "failed"
                };
                self.observe(kind, started, &outcome.stats, verdict);
                if full {
                    self.last_full = Some(started);
                }
                if let State::Ready {
                    findings: f, stats, ..
                } = &mut self.state
                {
                    *f = findings;
                    *stats = outcome.stats;
                }
                self.publish_findings();
            }
            Err(e) => {
                self.metrics
                    .scans
                    .with_label_values(&[kind, "errored"])
                    .inc();
                self.errored(format!("the {kind} check failed: {e}"));
            }
        }
    }

    fn rescan(&mut self, paths: Vec<Vec<u8>>) {
        let scope = Scope::of_changes(paths.iter().map(Vec::as_slice));
        if scope.len() > MAX_SCOPE || !matches!(self.state, State::Ready { .. }) {
            return self.check(false);
        }
        let started = Instant::now();
        let Some(reader) = self.open_verified() else {
            return;
        };
        let State::Ready { config, .. } = &self.state else {
            return;
        };
        let opts = self.scan_options(true, Some(scope.clone()));
        match scan(config, &opts, Some(reader), None) {
            Ok(outcome) => {
                let State::Ready { findings, .. } = &mut self.state else {
                    return;
                };
                let changed = findings.merge_scoped(&scope, &outcome);
                let verdict = if findings.is_clean() {
                    "succeeded"
                } else {
                    "failed"
                };
                self.observe("realtime", started, &outcome.stats, verdict);
                if changed {
                    self.publish_findings();
                }
            }
            Err(e) => {
                self.metrics
                    .scans
                    .with_label_values(&["realtime", "errored"])
                    .inc();
                self.errored(format!("the realtime rescan failed: {e}"));
            }
        }
    }

    /// Opens the baseline, making sure it is still the recorded one; otherwise the baseline is
    /// broken and `None` is returned.
    fn open_verified(&mut self) -> Option<DbReader> {
        let State::Ready { baseline, .. } = &self.state else {
            return None;
        };
        let expected = baseline.digest.clone();
        let db = self.store.database();
        // The reader handed to the scan is the one whose digest was just checked.
        let on_disk = match self.store.open_database() {
            Some(Ok(reader)) if reader.digest == expected => return Some(reader),
            Some(Ok(reader)) => Some(Ok(reader.digest)),
            Some(Err(e)) => Some(Err(e)),
            None => None,
        };
        match baseline::assess(&db, on_disk, Some(&expected)) {
            Assessment::Broken { reason } => self.broken(reason),
            other => self.broken(format!("unexpected baseline state {other:?}")),
        }
        None
    }

    /// Points the realtime watcher at the trees `config` selects.
    fn watch(&self, config: &Config) {
        if let Some(tx) = &self.watch_roots {
            let _ = tx.send(config.rules.watch_roots());
        }
    }

    fn scan_options(&self, incremental: bool, scope: Option<Scope>) -> ScanOptions {
        let mut opts = ScanOptions::new(&self.settings.root);
        opts.incremental = incremental;
        opts.threads = self.settings.threads;
        opts.scope = scope;
        opts.max_listed = super::findings::MAX_LISTED;
        // A long scan reports progress: it keeps the agent live.
        opts.progress = self
            .health
            .clone()
            .map(|h| h as Arc<dyn fim_engine::scan::Progress>);
        opts
    }

    fn observe(&self, kind: &str, started: Instant, stats: &ScanStats, verdict: &str) {
        let m = &self.metrics;
        m.scan_duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        m.scans.with_label_values(&[kind, verdict]).inc();
        m.files_hashed.inc_by(stats.files_hashed);
        m.bytes_hashed.inc_by(stats.bytes_hashed);
        m.last_successful_scan.set(Timestamp::now().as_second());
    }

    /// The baseline is not trustworthy: scans stop until a re-init request.
    fn broken(&mut self, reason: String) {
        tracing::error!(%reason, "baseline unusable");
        self.state = State::Broken {
            reason: reason.clone(),
        };
        self.errored(reason);
    }

    /// Publishes an Errored result (the baseline, if any, is kept).
    fn errored(&mut self, message: String) {
        tracing::warn!(%message, "errored");
        let now = Timestamp::now();
        if matches!(self.state, State::Broken { .. } | State::NoBaseline) {
            status::set_baseline(&mut self.fields, None);
        }
        status::record(
            &mut self.fields,
            &self.owner,
            Report::Errored { message: &message },
            now,
        );
        self.send(None);
    }

    /// Publishes the current findings, with the failure report when there are any.
    fn publish_findings(&mut self) {
        let State::Ready {
            baseline,
            findings,
            stats,
            ..
        } = &self.state
        else {
            return;
        };
        if let Some(sink) = &mut self.syslog {
            sink.findings(findings);
        }
        let (added, changed, removed) = findings.counts();
        for (kind, n) in [("added", added), ("changed", changed), ("removed", removed)] {
            self.metrics
                .findings
                .with_label_values(&[kind])
                .set(n as i64);
        }
        let cm_name = failure_report::config_map_name(&self.owner.name, &self.settings.node);
        let failure = (!findings.is_clean()).then(|| {
            let outcome = findings.to_outcome(stats.clone(), Some(baseline.digest.clone()));
            let root = self.settings.root.display().to_string();
            let database = self.store.database().display().to_string();
            let text = report::text(
                &outcome,
                &ReportContext {
                    command: "check",
                    root: &root,
                    database: &database,
                    started: SystemTime::now(),
                },
            );
            let kept = self.store.report();
            if let Err(e) = write_atomically(&kept, text.as_bytes()) {
                tracing::warn!(path = %kept.display(), "cannot keep the full report: {e}");
            }
            let data = failure_config_map_data(&text, &Limits::new(kept.display().to_string()));
            status::failure_config_map(&self.owner, &self.settings.node, data)
        });
        status::set_baseline(&mut self.fields, Some(baseline));
        status::record(
            &mut self.fields,
            &self.owner,
            Report::Scanned {
                findings,
                stats,
                failure_config_map: Some(&cm_name),
            },
            Timestamp::now(),
        );
        self.send(failure);
    }

    /// Liveness: the worker is moving.
    fn progress(&self) {
        if let Some(h) = &self.health {
            h.progress();
        }
    }

    fn send(&mut self, failure: Option<k8s_openapi::api::core::v1::ConfigMap>) {
        self.sequence += 1;
        self.fields.realtime_watcher = *self
            .realtime_watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(h) = &self.health {
            // Readiness: the node's state is known once a result is out (not the bare status
            // sent while a first baseline is made).
            match self.fields.last_result {
                Some(_) => h.published(),
                None => h.waiting_for("the first baseline"),
            }
        }
        let status = status::node_status(
            &self.owner,
            &self.settings.node,
            &self.fields,
            self.acknowledged,
        );
        // Only the latest publication matters: an unreachable API server gets the newest result.
        self.publish.send_replace(Some(Publication {
            sequence: self.sequence,
            status,
            failure,
        }));
    }
}

/// Whether a check rehashes every file. Without `fullScanEvery` every check is full: an
/// incremental check trusts size, times, inode and device, which root on the node can keep
/// while changing content (e.g. by editing the filesystem image underneath).
pub fn check_is_full(
    forced: bool,
    full_scan_every: Option<Duration>,
    since_last_full: Option<Duration>,
) -> bool {
    forced
        || match (full_scan_every, since_last_full) {
            (Some(every), Some(since)) => since >= every,
            (Some(_), None) | (None, _) => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_jobs_fold_into_one_run() {
        let mut p = Pending::default();
        p.add(Job::Rescan {
            paths: vec![b"/a".to_vec()],
        });
        p.add(Job::Check { full: false });
        p.add(Job::Rescan {
            paths: vec![b"/b".to_vec()],
        });
        p.add(Job::Check { full: true });
        p.add(Job::Check { full: false });
        p.add(Job::Reinit { id: 3 });
        p.add(Job::Reinit { id: 2 });
        assert_eq!(p.check, Some(true), "a full check anywhere wins");
        assert_eq!(
            p.reinit,
            Some(3),
            "the newest request answers the older ones"
        );
        assert!(p.rescan.is_empty(), "the check covers the rescans");
        assert!(!p.stop);
        p.add(Job::Stop);
        assert!(p.stop);
    }

    #[test]
    fn rescans_fold_and_coalesce_into_a_check_beyond_the_bound() {
        let mut p = Pending::default();
        p.add(Job::Rescan {
            paths: vec![b"/a".to_vec(), b"/b".to_vec()],
        });
        p.add(Job::Rescan {
            paths: vec![b"/a".to_vec()],
        });
        assert_eq!(p.rescan.len(), 2, "the same path once");
        assert_eq!(p.check, None);
        // A flood of changes while a scan runs: the queue stays bounded, nothing is lost.
        let queue = Queue::default();
        for i in 0..200_000u32 {
            queue.send(Job::Rescan {
                paths: vec![format!("/flood/{i}").into_bytes()],
            });
            let held = queue.pending.lock().unwrap().rescan.len();
            assert!(held <= MAX_SCOPE, "{held} paths held");
        }
        let taken = queue.take();
        assert_eq!(taken.check, Some(false), "coalesced into a check");
        assert!(taken.rescan.is_empty());
        assert!(queue.pending.lock().unwrap().is_empty());
    }

    #[test]
    fn the_queue_wakes_the_worker() {
        let queue = Arc::new(Queue::default());
        let worker = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.take())
        };
        std::thread::sleep(Duration::from_millis(50));
        queue.send(Job::Reinit { id: 7 });
        let taken = worker.join().unwrap();
        assert_eq!(taken.reinit, Some(7));
    }

    #[test]
    fn every_check_is_full_unless_full_scan_every_says_otherwise() {
        let min = Duration::from_secs(60);
        let hour = Duration::from_secs(3600);
        assert!(check_is_full(false, None, None));
        assert!(
            check_is_full(false, None, Some(min)),
            "no fullScanEvery: full, even right after a full check"
        );
        assert!(check_is_full(false, Some(hour), None), "no full check yet");
        assert!(!check_is_full(false, Some(hour), Some(min)));
        assert!(check_is_full(false, Some(hour), Some(hour)));
        assert!(check_is_full(true, Some(hour), Some(min)), "forced");
    }

    #[test]
    fn maintenance_pauses_on_holdoff_or_cordon() {
        let c = Control::default();
        assert!(!c.paused());
        c.cordoned.store(true, Ordering::SeqCst);
        assert!(c.paused());
        c.cordoned.store(false, Ordering::SeqCst);
        c.holdoff.store(true, Ordering::SeqCst);
        assert!(c.paused());
    }
}
