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
    FileIntegrity, FileIntegrityNodeStatus, FileIntegrityNodeStatusFields, labels,
    reinit::{ReinitRequest, acknowledged_id},
};
use tokio::sync::watch;

use crate::realtime::{Backend, Watcher};
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
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the node name is empty: set --node or NODE_NAME")]
    NoNode,
    #[error("baseline directory: {0}")]
    Baseline(#[source] std::io::Error),
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
    /// ConfigMap holding the effective rules (written by the operator).
    #[arg(long)]
    pub config_map: String,
    /// Key of the rules in that ConfigMap.
    #[arg(long, default_value = "aide.conf")]
    pub config_key: String,
    /// Seconds between periodic checks.
    #[arg(long, default_value_t = 900)]
    pub grace_period: u64,
    /// Seconds between full rehashes; checks in between are incremental (default: every check
    /// is full).
    #[arg(long)]
    pub full_scan_every: Option<u64>,
    /// Backups of old baselines to keep.
    #[arg(long, default_value_t = 5)]
    pub max_backups: usize,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Watch the monitored trees and report changes within a second.
    #[arg(long)]
    pub realtime: bool,
    /// Change watcher backend (default: fanotify where permitted, else inotify).
    #[arg(long, value_enum)]
    pub realtime_backend: Option<RealtimeBackend>,
    /// Monitor annotated containers (not implemented yet: accepted and reported).
    #[arg(long)]
    pub containers: bool,
    #[arg(long)]
    pub container_algorithm: Option<String>,
    /// Verbose logs.
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

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(args: DaemonArgs) -> Result<(), Error> {
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
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| Error::Metrics {
            addr: args.metrics_addr,
            source,
        })?;
    // Bound here so that a bad address fails the start; served from now on.
    tokio::spawn({
        let metrics = metrics.clone();
        async move {
            if let Err(e) = metrics::serve(listener, metrics).await {
                tracing::error!("metrics endpoint stopped: {e}");
            }
        }
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
    control.holdoff.store(
        fi.annotations().contains_key(labels::HOLDOFF),
        Ordering::SeqCst,
    );
    if let Ok(cordoned) = api.node_cordoned().await {
        control.cordoned.store(cordoned, Ordering::SeqCst);
    }
    if args.containers {
        tracing::warn!("container monitoring is not implemented yet; only the node is scanned");
    }

    let jobs = Arc::new(Queue::default());
    let (publish, publications) = watch::channel(None::<Publication>);
    let (published, mut published_rx) = watch::channel(0u64);
    tokio::spawn(publisher(
        api.clone(),
        publications,
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
            max_backups: args.max_backups,
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
    worker.syslog = Some(start_syslog(&client, &args, &metrics));
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
            move || {
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
    ));
    tokio::spawn(watch_node(
        client.clone(),
        args.node.clone(),
        control.clone(),
        jobs.clone(),
        metrics.clone(),
    ));
    tokio::spawn(tick(
        Duration::from_secs(args.grace_period.max(1)),
        jobs.clone(),
    ));
    if let Some(roots) = watch_roots {
        run_realtime(&args, roots, jobs.clone(), metrics.clone());
    }

    shutdown_signal().await;
    tracing::info!("stopping");
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
/// status. While the API server fails, retries with backoff, always with the newest result.
async fn publisher(
    api: NodeApi,
    mut publications: watch::Receiver<Option<Publication>>,
    published: watch::Sender<u64>,
    metrics: Arc<Metrics>,
) {
    let mut delay = Duration::from_millis(200);
    while publications.changed().await.is_ok() {
        loop {
            let Some(p) = publications.borrow_and_update().clone() else {
                break;
            };
            let result = async {
                if let Some(cm) = &p.failure {
                    api.apply_config_map(cm).await?;
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

/// Follows the FileIntegrity: holdoff on and off, re-init requests.
async fn watch_file_integrity(
    client: Client,
    args: DaemonArgs,
    control: Arc<Control>,
    jobs: Arc<Queue>,
    metrics: Arc<Metrics>,
) {
    let api: Api<FileIntegrity> = Api::namespaced(client, &args.namespace);
    let mut stream = watch_named(api, &args.file_integrity);
    loop {
        match stream.try_next().await {
            Ok(Some(fi)) => {
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

async fn tick(every: Duration, jobs: Arc<Queue>) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await; // the worker checks at start on its own
    loop {
        interval.tick().await;
        jobs.send(Job::Check { full: false });
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
) {
    // Host paths of the watched trees, and the way back from what the watcher reports. Never
    // opened: the scans resolve node paths through their own `Root`.
    let root = match fim_engine::root::Root::open(&args.root) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(root = %args.root.display(), "realtime detection off, periodic checks only: {e}");
            return;
        }
    };
    let prefer = args.realtime_backend.map(|b| match b {
        RealtimeBackend::Fanotify => Backend::Fanotify,
        RealtimeBackend::Inotify => Backend::Inotify,
    });
    std::thread::Builder::new()
        .name("fim-realtime".into())
        .spawn(move || {
            let mut watcher: Option<Watcher> = None;
            let mut watched: Vec<Vec<u8>> = Vec::new();
            loop {
                // Without a watcher, wait for roots; then the newest roots win. A closed channel
                // means the worker stopped.
                let mut latest = None;
                if watcher.is_none() {
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
                if let Some(new) = latest.filter(|r| *r != watched || watcher.is_none()) {
                    drop(watcher.take());
                    let dirs: Vec<PathBuf> = new.iter().map(|r| root.host_path(r)).collect();
                    match Watcher::start(&dirs, prefer) {
                        Ok(w) => {
                            tracing::info!(backend = %w.backend(), ?dirs, "realtime detection on");
                            watcher = Some(w);
                        }
                        Err(e) => {
                            tracing::warn!("realtime detection off, periodic checks only: {e}")
                        }
                    }
                    watched = new;
                }
                let Some(w) = watcher.as_ref() else {
                    continue;
                };
                let Some(batch) = w.next_batch(
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
