//! `fim-agent daemon`: the node agent the operator's DaemonSet runs.
//!
//! One scanning thread ([`worker`]) owns the baseline and runs one job at a time: the first
//! baseline, periodic checks (every `--grace-period`: full, or incremental between the full
//! rehashes of `--full-scan-every` when it is set), realtime rescans of the paths the change watcher ([`crate::realtime`])
//! names, and re-init requests. Around it, async tasks watch the FileIntegrity (re-init requests,
//! holdoff) and the Node (cordon), tick the timer, publish the latest result to the API server
//! (retrying with backoff while it is unreachable, the newest result replacing older ones), and
//! serve `/metrics`.

pub mod api;
pub mod baseline;
pub mod findings;
pub mod live;
pub mod metrics;
pub mod status;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use kube_fim_crds::{
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityNodeStatusFields, RealtimeWatcher, labels,
    reinit::{ReinitRequest, acknowledged_id},
};
use tokio::sync::watch;

use crate::realtime::{Backend, supervisor::Supervisor};
use api::NodeApi;
use metrics::Metrics;
use worker::{Control, Job, Queue, Settings, Worker};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Api(#[source] kube::Error),
    #[error("cannot connect to the API server: {0}")]
    Client(#[source] kube::Error),
    #[error("rules: {0}")]
    Rules(String),
    #[error("FileIntegrity {0} has no uid (not read from the API server)")]
    Owner(String),
    #[error("metrics endpoint: {0}")]
    MetricsTls(#[from] fim_secure_metrics::TlsError),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the node name is empty: set --node or NODE_NAME")]
    NoNode,
    #[error("baseline directory: {0}")]
    Baseline(#[source] std::io::Error),
    #[error("container monitoring: {0}")]
    Containers(String),
}

/// `fim-agent daemon` options. The operator's DaemonSet passes them; `NODE_NAME` and
/// `POD_NAMESPACE` come from the downward API.
#[derive(Clone, Debug, clap::Args)]
pub struct DaemonArgs {
    /// FileIntegrity this agent works for.
    #[arg(long)]
    pub file_integrity: String,
    /// Namespace of the FileIntegrity and of what the agent writes.
    #[arg(long, env = "POD_NAMESPACE", default_value = labels::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Node this agent runs on.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// Where the node's root filesystem is mounted.
    #[arg(long, default_value = "/host")]
    pub root: PathBuf,
    /// Directory for baselines, backups and full reports (a hostPath).
    #[arg(long)]
    pub db_dir: PathBuf,
    /// Directory holding `ca.crt` of `spec.alerts.syslog.caSecret` (the operator mounts the
    /// Secret there; agents cannot read Secrets through the API).
    #[arg(long, default_value = kube_fim_crds::SYSLOG_CA_MOUNT_DIR)]
    pub syslog_ca_dir: PathBuf,
    /// ConfigMap holding the effective rules (written by the operator).
    #[arg(long)]
    pub config_map: String,
    /// Key of the rules in that ConfigMap.
    #[arg(long, default_value = "aide.conf")]
    pub config_key: String,
    /// Seconds between periodic checks until the FileIntegrity is read; then its
    /// `spec.config.gracePeriod`, followed live.
    #[arg(long, default_value_t = 900)]
    pub grace_period: u64,
    /// Seconds between full rehashes; checks in between are incremental (default: every check
    /// is full).
    #[arg(long)]
    pub full_scan_every: Option<u64>,
    /// Backups of old baselines to keep until the FileIntegrity is read; then its
    /// `spec.config.maxBackups`, followed live.
    #[arg(long, default_value_t = 5)]
    pub max_backups: usize,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub metrics_security: fim_secure_metrics::MetricsArgs,
    /// Watch the monitored trees and report changes within a second.
    #[arg(long)]
    pub realtime: bool,
    /// Change watcher backend (default: fanotify where permitted, else inotify).
    #[arg(long, value_enum)]
    pub realtime_backend: Option<RealtimeBackend>,
    /// Monitor the containers of annotated pods on this node (see docs/containers.md).
    #[arg(long)]
    pub containers: bool,
    /// Algorithm of FirstObserved container baselines (`spec.containers.algorithm`).
    #[arg(long, default_value = "SHA256")]
    pub container_algorithm: String,
    /// Allow the `kill` remediation (`spec.containers.allowKill`).
    #[arg(long)]
    pub allow_kill: bool,
    /// Remediations per workload within --remediation-window before they are suppressed.
    #[arg(long, default_value_t = 3)]
    pub max_remediations: u32,
    /// Seconds of the remediation window.
    #[arg(long, default_value_t = 600)]
    pub remediation_window: u64,
    /// The host's /proc (the agent pod shares the host PID namespace with --containers).
    #[arg(long, default_value = "/proc")]
    pub proc: PathBuf,
    /// Where Snapshots stored in S3 are read (read-only credentials).
    #[command(flatten)]
    pub s3: crate::snapshot_store::S3Args,
    /// Verbose logs until the FileIntegrity is read; then its `spec.debug`, followed live
    /// (unless `RUST_LOG` is set, which always wins).
    #[arg(long)]
    pub debug: bool,
    /// Hashing threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds a running scan may take to finish after SIGTERM before it is abandoned (a
    /// baseline being written is then simply not renamed into place).
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum RealtimeBackend {
    Fanotify,
    Inotify,
}

/// What the publisher writes: the newest wins.
#[derive(Clone, Debug)]
pub struct Publication {
    pub sequence: u64,
    pub status: FileIntegrityNodeStatus,
    pub failure: Option<ConfigMap>,
}

/// Switches debug logging on or off (`spec.debug`); `None` when the log filter is fixed
/// (`RUST_LOG`).
pub type SetDebug = Arc<dyn Fn(bool) + Send + Sync>;

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(args: DaemonArgs, set_debug: Option<SetDebug>) -> Result<(), Error> {
    if args.node.is_empty() {
        return Err(Error::NoNode);
    }
    // Before anything else: a second agent on this baseline directory stops here.
    let store = baseline::Store::new(&args.db_dir, &args.file_integrity);
    let _lock = store.lock().map_err(Error::Baseline)?;
    let client = Client::try_default().await.map_err(Error::Client)?;
    let api = NodeApi {
        client: client.clone(),
        namespace: args.namespace.clone(),
        file_integrity: args.file_integrity.clone(),
        node: args.node.clone(),
        config_map: args.config_map.clone(),
        config_key: args.config_key.clone(),
    };
    let metrics = Arc::new(Metrics::new());
    // Self-signed for the node's name (host network: the node's address) unless files are given.
    let endpoint = fim_secure_metrics::Endpoint::new(
        &args.metrics_security,
        client.clone(),
        &[args.node.clone(), "localhost".into(), "127.0.0.1".into()],
    )?;
    let health = Arc::new(crate::health::Health::new(args.grace_period));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| Error::Metrics {
            addr: args.metrics_addr,
            source,
        })?;
    // Bound here so that a bad address fails the start; served from now on.
    tokio::spawn({
        let metrics = metrics.clone();
        let probes = crate::health::routes(health.clone());
        async move { metrics::serve(listener, metrics, endpoint, probes).await }
    });

    // Without the FileIntegrity (owner of everything written) and the recorded baseline digest
    // nothing can be decided: wait for the API server.
    let fi = retry("read the FileIntegrity", || api.file_integrity()).await;
    let owner = status::Owner::of(&fi).ok_or_else(|| Error::Owner(fi.name_any()))?;
    let existing = retry("read the node status", || api.node_status()).await;
    let acknowledged = existing.as_ref().and_then(acknowledged_id);
    let fields = existing
        .map(|s| s.spec)
        .unwrap_or_else(|| FileIntegrityNodeStatusFields::new(&args.node));
    let control = Arc::new(Control::default());
    // From here on the FileIntegrity decides (the flags only covered the start).
    let start = live::Live {
        grace_period: Duration::from_secs(args.grace_period.max(1)),
        max_backups: args.max_backups,
        debug: args.debug,
    };
    let live = live::Live::of(&fi.spec);
    apply_live(&start, &live, &control, None, set_debug.as_ref());
    let (grace_period, grace_period_rx) = watch::channel(live.grace_period);
    control.holdoff.store(
        fi.annotations().contains_key(labels::HOLDOFF),
        Ordering::SeqCst,
    );
    if let Ok(cordoned) = api.node_cordoned().await {
        control.cordoned.store(cordoned, Ordering::SeqCst);
    }
    let stop_containers = Arc::new(AtomicBool::new(false));
    let syslog = start_syslog(&client, &args, &metrics);
    let container_reports = if args.containers {
        let sink = crate::syslog::containers::ContainerSink::new(syslog.syslog.clone());
        Some(start_containers(
            &client,
            &args,
            grace_period_rx.clone(),
            stop_containers.clone(),
            sink,
        )?)
    } else {
        None
    };

    let jobs = Arc::new(Queue::default());
    let (publish, publications) = watch::channel(None::<Publication>);
    let (published, mut published_rx) = watch::channel(0u64);
    tokio::spawn(publisher(
        api.clone(),
        publications,
        container_reports,
        published,
        metrics.clone(),
    ));

    // A request recorded before the start is answered by the first baseline, or re-baselines.
    let initial_request = match ReinitRequest::from_file_integrity(&fi) {
        Ok(Some(r)) if r.pending_for(&args.node, acknowledged) => Some(r.id),
        _ => None,
    };
    let mut worker = Worker::new(
        Settings {
            root: args.root.clone(),
            node: args.node.clone(),
            threads: args
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            full_scan_every: args.full_scan_every.map(Duration::from_secs),
        },
        store,
        api.clone(),
        tokio::runtime::Handle::current(),
        control.clone(),
        metrics.clone(),
        publish.clone(),
        owner,
        fields,
        acknowledged,
    );
    worker.initial_request = initial_request;
    worker.syslog = Some(syslog);
    let realtime_watcher = worker.realtime_watcher.clone();
    health.waiting_for("the first baseline or check");
    worker.health = Some(health.clone());
    let watch_roots = args.realtime.then(|| {
        let (tx, rx) = crossbeam_channel::unbounded();
        worker.watch_roots = Some(tx);
        rx
    });
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fim-worker".into())
        .spawn({
            let jobs = jobs.clone();
            // Liveness fails once this thread ends, also by a panic.
            let guard = crate::health::ExitGuard(health.clone());
            move || {
                let _guard = guard;
                worker.run(&jobs);
                let _ = done_tx.send(());
            }
        })
        .expect("spawn the scanning thread");

    if let Some(id) = initial_request {
        jobs.send(Job::Reinit { id });
    }
    metrics.paused.set(control.paused() as i64);
    tokio::spawn(watch_file_integrity(
        client.clone(),
        args.clone(),
        control.clone(),
        jobs.clone(),
        metrics.clone(),
        LiveState {
            current: live,
            grace_period,
            set_debug,
        },
    ));
    tokio::spawn(watch_node(
        client.clone(),
        args.node.clone(),
        control.clone(),
        jobs.clone(),
        metrics.clone(),
    ));
    // The worker checks at start on its own; then every gracePeriod, as it changes.
    tokio::spawn({
        let jobs = jobs.clone();
        live::tick(grace_period_rx, move || {
            jobs.send(Job::Check { full: false })
        })
    });
    if let Some(roots) = watch_roots {
        run_realtime(
            &args,
            roots,
            jobs.clone(),
            metrics.clone(),
            realtime_watcher,
        );
    }

    shutdown_signal().await;
    tracing::info!("stopping");
    stop_containers.store(true, Ordering::SeqCst);
    jobs.send(Job::Stop);
    let grace = Duration::from_secs(args.shutdown_grace);
    if tokio::time::timeout(grace, done_rx).await.is_err() {
        tracing::warn!("scan abandoned at shutdown; no baseline was replaced");
    }
    // Give the newest result a moment to reach the API server.
    let latest = publish.borrow().as_ref().map_or(0, |p| p.sequence);
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        published_rx.wait_for(|s| *s >= latest),
    )
    .await;
    Ok(())
}

/// Starts container monitoring: the pod and Snapshot watches, and the checking thread.
fn start_containers(
    client: &Client,
    args: &DaemonArgs,
    grace_period: watch::Receiver<Duration>,
    stop: Arc<AtomicBool>,
    syslog: crate::syslog::containers::ContainerSink,
) -> Result<watch::Receiver<crate::containers::ContainerReport>, Error> {
    use crate::containers::{self, Monitor, Settings};
    let algorithm: kube_fim_crds::Algorithm = args
        .container_algorithm
        .parse()
        .map_err(|e: kube_fim_crds::UnknownAlgorithm| Error::Containers(e.to_string()))?;
    // Snapshots kept in S3 need the bucket; inline ones do not.
    let s3 = match crate::snapshot_store::store(&args.s3) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::info!("Snapshots in S3 cannot be read ({e}); inline Snapshots only");
            None
        }
    };
    let sources = containers::watch_pods(client, &args.node, &args.namespace, s3);
    let (report, reports) = watch::channel(containers::ContainerReport::default());
    let mut monitor = Monitor::new(
        Settings {
            proc: args.proc.clone(),
            first_observed_dir: args.db_dir.join(&args.file_integrity).join("containers"),
            algorithm,
            grace_period,
            allow_kill: args.allow_kill,
            max_remediations: args.max_remediations.max(1),
            remediation_window: Duration::from_secs(args.remediation_window.max(1)),
            realtime: args.realtime,
        },
        sources,
        tokio::runtime::Handle::current(),
        report,
        stop,
    );
    monitor.syslog = Some(syslog);
    std::thread::Builder::new()
        .name("fim-containers".into())
        .spawn(move || monitor.run())
        .map_err(|e| Error::Containers(format!("cannot start the container thread: {e}")))?;
    tracing::info!("container monitoring on");
    Ok(reports)
}

/// Starts the syslog sender, configured from the FileIntegrity as it changes.
fn start_syslog(
    client: &Client,
    args: &DaemonArgs,
    metrics: &Metrics,
) -> crate::syslog::node::NodeSink {
    use crate::syslog::{metrics::SyslogMetrics, node, sender};
    let m = SyslogMetrics::new();
    m.register(metrics.registry()).expect("unique metric names");
    let identity = node::identity(&args.node, &args.file_integrity, &args.namespace);
    let syslog = sender::Syslog::start(identity.clone(), sender::DEFAULT_CAPACITY, m);
    tokio::spawn(node::follow(
        client.clone(),
        args.namespace.clone(),
        args.file_integrity.clone(),
        args.node.clone(),
        args.syslog_ca_dir.clone(),
        syslog.clone(),
    ));
    node::NodeSink::new(syslog, identity)
}

/// Calls `f` until it succeeds, with exponential backoff (1 s to 30 s).
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut delay = Duration::from_secs(1);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!("cannot {what} (retrying in {delay:?}): {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Writes each new publication: the failure report first (the status points at it), then the
/// status, with the latest container results merged in. While the API server fails, retries with
/// backoff, always with the newest result.
async fn publisher(
    api: NodeApi,
    mut publications: watch::Receiver<Option<Publication>>,
    mut containers: Option<watch::Receiver<crate::containers::ContainerReport>>,
    published: watch::Sender<u64>,
    metrics: Arc<Metrics>,
) {
    let mut delay = Duration::from_millis(200);
    // The failure ConfigMap of a node publication is written once, not with every container update.
    let mut written_failure = 0u64;
    loop {
        // A new node result or new container results.
        let changed = match containers.as_mut() {
            Some(c) => tokio::select! {
                r = publications.changed() => r.is_ok(),
                r = c.changed() => r.is_ok(),
            },
            None => publications.changed().await.is_ok(),
        };
        if !changed {
            return;
        }
        loop {
            let Some(mut p) = publications.borrow_and_update().clone() else {
                // Nothing of the node yet: the status is written with the first node result.
                break;
            };
            if let Some(c) = containers.as_mut() {
                let report = c.borrow_and_update().clone();
                p.status.spec.containers = report.containers;
                p.status.spec.pod_problems = report.pod_problems;
            }
            let result = async {
                if let Some(cm) = p.failure.as_ref().filter(|_| p.sequence != written_failure) {
                    api.apply_config_map(cm).await?;
                    written_failure = p.sequence;
                }
                api.apply_node_status(&p.status).await
            }
            .await;
            match result {
                Ok(()) => {
                    published.send_replace(p.sequence);
                    delay = Duration::from_millis(200);
                    break;
                }
                Err(e) => {
                    metrics.publish_errors.inc();
                    tracing::warn!("cannot publish the result (retrying in {delay:?}): {e}");
                    // A newer result cuts the wait short.
                    let _ = tokio::time::timeout(delay, publications.changed()).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// The object `name` of `api` as it changes (watch with backoff).
fn watch_named<K>(
    api: Api<K>,
    name: &str,
) -> futures::stream::BoxStream<'static, Result<K, watcher::Error>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed()
}

/// Sets one maintenance flag (`fim_agent_paused` follows). When it clears, what changed during
/// the maintenance is checked in full and reported, never laundered.
fn set_pause(flag: &AtomicBool, on: bool, control: &Control, metrics: &Metrics, jobs: &Queue) {
    let was = flag.swap(on, Ordering::SeqCst);
    metrics.paused.set(control.paused() as i64);
    if was && !on {
        jobs.send(Job::Check { full: true });
    }
}

/// The live settings as applied, and where a change goes.
struct LiveState {
    current: live::Live,
    grace_period: watch::Sender<Duration>,
    set_debug: Option<SetDebug>,
}

/// Applies the live settings that differ from `old` and says so in the log.
fn apply_live(
    old: &live::Live,
    new: &live::Live,
    control: &Control,
    grace_period: Option<&watch::Sender<Duration>>,
    set_debug: Option<&SetDebug>,
) {
    control.max_backups.store(new.max_backups, Ordering::SeqCst);
    if let Some(tx) = grace_period {
        tx.send_if_modified(|p| std::mem::replace(p, new.grace_period) != new.grace_period);
    }
    if old.debug != new.debug {
        match set_debug {
            Some(set) => set(new.debug),
            None => tracing::info!("RUST_LOG is set: spec.debug does not change the log level"),
        }
    }
    let changes = old.changes(new);
    if !changes.is_empty() {
        tracing::info!(changes = %changes.join(", "), "settings from the FileIntegrity");
    }
}

/// Follows the FileIntegrity: holdoff on and off, re-init requests, live settings.
async fn watch_file_integrity(
    client: Client,
    args: DaemonArgs,
    control: Arc<Control>,
    jobs: Arc<Queue>,
    metrics: Arc<Metrics>,
    mut live: LiveState,
) {
    let api: Api<FileIntegrity> = Api::namespaced(client, &args.namespace);
    let mut stream = watch_named(api, &args.file_integrity);
    loop {
        match stream.try_next().await {
            Ok(Some(fi)) => {
                let new = live::Live::of(&fi.spec);
                apply_live(
                    &live.current,
                    &new,
                    &control,
                    Some(&live.grace_period),
                    live.set_debug.as_ref(),
                );
                live.current = new;
                let holdoff = fi.annotations().contains_key(labels::HOLDOFF);
                set_pause(&control.holdoff, holdoff, &control, &metrics, &jobs);
                match ReinitRequest::from_file_integrity(&fi) {
                    // The worker ignores requests it already answered.
                    Ok(Some(r)) if r.pending_for(&args.node, None) => {
                        jobs.send(Job::Reinit { id: r.id });
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("unreadable re-init request: {e}"),
                }
            }
            Ok(None) => return,
            Err(e) => tracing::warn!("FileIntegrity watch: {e}"),
        }
    }
}

/// Follows the Node: cordon on and off.
async fn watch_node(
    client: Client,
    node: String,
    control: Arc<Control>,
    jobs: Arc<Queue>,
    metrics: Arc<Metrics>,
) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watch_named(api, &node);
    loop {
        match stream.try_next().await {
            Ok(Some(n)) => {
                let cordoned = n.spec.and_then(|s| s.unschedulable).unwrap_or(false);
                set_pause(&control.cordoned, cordoned, &control, &metrics, &jobs);
            }
            Ok(None) => return,
            Err(e) => tracing::warn!("Node watch: {e}"),
        }
    }
}

/// Runs the change watcher on the trees the baseline's rules select (sent by the worker whenever a
/// baseline is loaded or made, so new rules are watched at once) and feeds its batches to the
/// worker. Without a watcher the periodic checks still run.
fn run_realtime(
    args: &DaemonArgs,
    roots: crossbeam_channel::Receiver<Vec<Vec<u8>>>,
    jobs: Arc<Queue>,
    metrics: Arc<Metrics>,
    running: Arc<std::sync::Mutex<Option<RealtimeWatcher>>>,
) {
    // What the node status reports (`realtimeWatcher`).
    let report = move |w: RealtimeWatcher| {
        *running.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
    };
    // Host paths of the watched trees, and the way back from what the watcher reports. Never
    // opened: the scans resolve node paths through their own `Root`.
    let root = match fim_engine::root::Root::open(&args.root) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(root = %args.root.display(), "realtime detection off, periodic checks only: {e}");
            report(RealtimeWatcher::Off);
            return;
        }
    };
    let prefer = args.realtime_backend.map(|b| match b {
        RealtimeBackend::Fanotify => Backend::Fanotify,
        RealtimeBackend::Inotify => Backend::Inotify,
    });
    // A watcher whose thread stopped (a kernel error on its fd) is restarted on the same trees,
    // with backoff, and counted (realtime::supervisor).
    let restarts = prometheus::IntCounter::new(
        "fim_agent_realtime_restarts_total",
        "Realtime watchers that stopped and were restarted",
    )
    .expect("valid counter");
    metrics
        .registry()
        .register(Box::new(restarts.clone()))
        .expect("unique metric names");
    std::thread::Builder::new()
        .name("fim-realtime".into())
        .spawn(move || {
            let mut watcher = Supervisor::new(prefer, restarts);
            loop {
                // Without a watcher (running or to restart), wait for trees; then the newest
                // trees win. A closed channel means the worker stopped.
                let mut latest = None;
                if !watcher.active() {
                    match roots.recv() {
                        Ok(r) => latest = Some(r),
                        Err(_) => return,
                    }
                }
                loop {
                    match roots.try_recv() {
                        Ok(r) => latest = Some(r),
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                    }
                }
                if let Some(new) = latest {
                    watcher.watch(new.iter().map(|r| root.host_path(r)).collect());
                }
                // What the node status says (`realtimeWatcher`), restarts and failures included.
                report(match watcher.backend() {
                    Some(Backend::Fanotify) => RealtimeWatcher::Fanotify,
                    Some(Backend::Inotify) => RealtimeWatcher::Inotify,
                    None => RealtimeWatcher::Off,
                });
                let Some(batch) = watcher.next_batch(
                    Duration::from_secs(1),
                    Duration::from_millis(20),
                    Duration::from_millis(150),
                ) else {
                    continue;
                };
                metrics.realtime_events.inc();
                let job = if batch.overflow {
                    metrics.realtime_overflows.inc();
                    Job::Check { full: false }
                } else {
                    Job::Rescan {
                        paths: batch
                            .paths
                            .iter()
                            .filter_map(|p| root.node_path(p))
                            .collect(),
                    }
                };
                jobs.send(job);
            }
        })
        .expect("spawn the realtime thread");
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
