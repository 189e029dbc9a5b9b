//! The operator process around its controllers: signals, the HTTP endpoints, leader election
//! and the metrics registry. A controller plugs in through [`Controller`] (a name, and a future
//! to run while this replica leads, which reports its readiness through [`Ready`]), so several
//! controllers run side by side under one Lease.
//!
//! Replicas elect a leader over the `fim-operator-leader` Lease in the operator namespace
//! (identity `POD_NAME`, else `<hostname>-<pid>`): only the leader runs the controllers; the
//! others are standbys that write nothing but their attempts on the Lease. A leader that loses
//! the Lease, or cannot confirm it before it expires, stops the controllers and [`Runtime::run`]
//! returns an error (the process exits non-zero and its pod restarts as a standby); on SIGTERM
//! it stops them and releases the Lease so a standby takes over at once.
//!
//! `/healthz`: the process serves. `/readyz` (200 or 503, the body says which role): see
//! [`http::readiness`]. Which replica leads: the Lease's holder, and
//! `file_integrity_operator_leader` (1 on the leader) on `/metrics`.

pub mod http;
pub mod leader;
pub mod signals;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use futures::{FutureExt, future::BoxFuture};
use kube::Client;
use prometheus::{IntGauge, Registry};

pub use signals::Shutdown;

/// Name of the leader gauge.
pub const LEADER_GAUGE: &str = "file_integrity_operator_leader";

/// A controller the runtime runs while this replica leads.
pub trait Controller: Send + 'static {
    /// Short name, shown by `/readyz` while its caches are not synced.
    fn name(&self) -> &'static str;

    /// Runs the controller: fills its caches, calls [`Ready::set`] once they are synced, then
    /// reconciles until `stop` resolves, after which it takes no new work and returns once the
    /// running work finished. The future is dropped (nothing more is written) when leadership
    /// is lost or the stop is forced.
    fn run(self: Box<Self>, ready: Ready, stop: Shutdown) -> BoxFuture<'static, ()>;
}

/// A controller's readiness flag, read by `/readyz`.
#[derive(Clone, Debug, Default)]
pub struct Ready(Arc<AtomicBool>);

impl Ready {
    /// The controller's caches are synced.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn clear(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Settings of the runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub metrics_addr: SocketAddr,
    /// TLS and authorization of that endpoint.
    pub metrics: fim_secure_metrics::MetricsArgs,
    /// Namespace of the leader Lease.
    pub namespace: String,
    /// Seconds a leader's Lease stays valid without renewal (at least 2).
    pub lease_seconds: u64,
}

/// Why [`Runtime::run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("metrics endpoint: {0}")]
    MetricsTls(#[from] fim_secure_metrics::TlsError),
    #[error("cannot serve on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the leader Lease: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("the lease manager stopped before this replica became leader")]
    LeaseManagerStopped,
    #[error("lost leadership: {0}")]
    LostLeadership(String),
}

/// The process: HTTP endpoints, metrics registry, leader election, and the controllers.
pub struct Runtime {
    client: Client,
    config: RuntimeConfig,
    registry: Registry,
    leader: IntGauge,
    controllers: Vec<(Box<dyn Controller>, Ready)>,
}

impl Runtime {
    pub fn new(client: Client, config: RuntimeConfig) -> Self {
        let registry = Registry::new();
        let leader = IntGauge::new(
            LEADER_GAUGE,
            "1 if this replica holds the leader Lease and runs the controller.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(leader.clone()))
            .expect("metric registered once");
        Self {
            client,
            config,
            registry,
            leader,
            controllers: Vec::new(),
        }
    }

    /// The registry served on `/metrics`: controllers register their metrics here.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Adds a controller, run while this replica leads.
    pub fn add(&mut self, controller: impl Controller) {
        self.controllers
            .push((Box::new(controller), Ready::default()));
    }

    /// Serves the endpoints, waits for leadership, runs the controllers while leading and
    /// returns after a signal (`Ok`) or when leadership is lost (`Err`).
    pub async fn run(self) -> Result<(), RuntimeError> {
        let Runtime {
            client,
            config,
            registry,
            leader,
            controllers,
        } = self;
        let shutdown = Shutdown::listen();
        let health = Arc::new(http::Health {
            controllers: controllers
                .iter()
                .map(|(c, ready)| (c.name(), ready.0.clone()))
                .collect(),
            ..http::Health::default()
        });
        let endpoint = fim_secure_metrics::Endpoint::new(
            &config.metrics,
            client.clone(),
            &self_signed_names(&config.namespace),
        )?;
        let listener = tokio::net::TcpListener::bind(config.metrics_addr)
            .await
            .map_err(|source| RuntimeError::Bind {
                addr: config.metrics_addr,
                source,
            })?;
        let addr = listener.local_addr().unwrap_or(config.metrics_addr);
        tracing::info!(%addr, namespace = %config.namespace, "fim-operator starting");
        let app = http::router(registry, health.clone(), &endpoint);
        let server = tokio::spawn(endpoint.serve(listener, app));
        let result = lead(client, &config, &health, &leader, controllers, shutdown).await;
        server.abort();
        result
    }
}

/// Names in the self-signed certificate: the metrics Service (config/manager/service.yaml) and
/// loopback.
fn self_signed_names(namespace: &str) -> Vec<String> {
    vec![
        format!("fim-operator-metrics.{namespace}.svc"),
        format!("fim-operator-metrics.{namespace}.svc.cluster.local"),
        "localhost".into(),
        "127.0.0.1".into(),
    ]
}

/// Stands by for the Lease, then runs the controllers while leading.
async fn lead(
    client: Client,
    config: &RuntimeConfig,
    health: &http::Health,
    leader_gauge: &IntGauge,
    controllers: Vec<(Box<dyn Controller>, Ready)>,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    let namespace = config.namespace.as_str();
    let identity = leader::identity();
    let manager =
        leader::lease_manager(client.clone(), namespace, &identity, config.lease_seconds).await?;
    health.lease.store(true, Ordering::Relaxed);
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(%identity, lease = leader::LEASE_NAME, "standing by for leadership");
    // Some(true): leader; Some(false): the lease task ended; None: signal.
    let became_leader = tokio::select! {
        r = leading.wait_for(|l| *l) => Some(r.is_ok()),
        () = shutdown.clone().requested() => None,
    };
    match became_leader {
        Some(true) => {}
        Some(false) => return Err(RuntimeError::LeaseManagerStopped),
        None => {
            tracing::info!("signal received while standing by; stopping");
            drop(leading);
            let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
            return Ok(());
        }
    }
    // The lease manager has just written renewTime: valid for a full lease from about now.
    let first_deadline = SystemTime::now() + Duration::from_secs(config.lease_seconds);
    tracing::info!(%identity, "acquired leadership; starting the controllers");
    health.leader.store(true, Ordering::Relaxed);
    leader_gauge.set(1);

    let flags: Vec<Ready> = controllers.iter().map(|(_, r)| r.clone()).collect();
    let running = futures::future::join_all(controllers.into_iter().map(|(c, ready)| {
        let name = c.name();
        c.run(ready, shutdown.clone())
            .map(move |()| tracing::info!(controller = name, "controller stopped"))
    }));
    // Whatever ends first, the controllers' futures are dropped with it: nothing more is
    // written.
    let lost = tokio::select! {
        _ = running => None,
        () = shutdown.clone().forced() => None,
        _ = leading.wait_for(|l| !*l) => Some("the lease manager lost the Lease".to_string()),
        why = leader::fence(client.clone(), namespace, &identity, config.lease_seconds, first_deadline) => {
            Some(format!("cannot confirm the Lease ({why:?})"))
        }
    };
    for ready in &flags {
        ready.clear();
    }
    health.leader.store(false, Ordering::Relaxed);
    leader_gauge.set(0);
    // Release the Lease only when a fresh read shows it is still ours (see
    // `leader::still_held`); otherwise stop the lease task without touching the Lease.
    if lost.is_none() && leader::still_held(client, namespace, &identity).await {
        // Closing the channel makes the lease task release the Lease and end.
        drop(leading);
        match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
            Ok(Ok(Ok(_))) => tracing::info!("lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "cannot release the lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "lease task failed"),
            Err(_) => tracing::warn!("timed out releasing the lease"),
        }
    } else {
        lease_task.abort();
        drop(leading);
    }
    match lost {
        Some(why) => {
            tracing::error!(%identity, %why, "lost leadership; exiting");
            Err(RuntimeError::LostLeadership(why))
        }
        None => {
            tracing::info!("fim-operator stopped");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_leader_gauge_is_registered_in_the_served_registry() {
        // Nothing is sent before `run`: the address is never contacted.
        let client = Client::try_from(kube::Config::new(
            "http://127.0.0.1:9".parse().expect("valid URL"),
        ))
        .unwrap();
        let runtime = Runtime::new(
            client,
            RuntimeConfig {
                metrics_addr: "127.0.0.1:0".parse().unwrap(),
                metrics: Default::default(),
                namespace: "kube-fim".into(),
                lease_seconds: 15,
            },
        );
        let text = http::render(runtime.registry());
        assert!(
            text.contains("# TYPE file_integrity_operator_leader gauge"),
            "{text}"
        );
        assert!(text.contains("file_integrity_operator_leader 0"), "{text}");
        runtime.leader.set(1);
        let text = http::render(runtime.registry());
        assert!(text.contains("file_integrity_operator_leader 1"), "{text}");
    }
}
