//! `fim-operator`: reconciles FileIntegrity objects into agent DaemonSets, status, events and
//! metrics, and serves `/metrics`, `/healthz` and `/readyz`.
//!
//! Replicas elect a leader over the `fim-operator-leader` Lease in the operator namespace
//! (identity `POD_NAME`, else `<hostname>-<pid>`): only the leader runs the controller; the
//! others are standbys that write nothing but their attempts on the Lease. A leader that loses
//! the Lease, or cannot confirm it before it expires, stops the controller and exits non-zero
//! (its pod restarts as a standby); on SIGTERM it stops and releases the Lease so a standby
//! takes over at once.
//!
//! `/healthz`: the process serves. `/readyz` (200 or 503, the body says which role):
//! - leader: ready once the controller's caches (FileIntegrities, node statuses, nodes) are
//!   synced, just before it starts reconciling;
//! - standby: ready once it has read (or created) the Lease, i.e. it reached the API server with
//!   the rights it needs and can take over. A standby that is never ready would block a rolling
//!   update of a two-replica Deployment (the new pod cannot lead while the old one holds the
//!   Lease), so readiness means "healthy in its role", not "leading". Which replica leads:
//!   the Lease's holder, and `file_integrity_operator_leader` (1 on the leader) on `/metrics`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use clap::Parser;
use fim_operator::{
    controller::{self, Context, OperatorConfig},
    metrics::Metrics,
};
use kube::Client;
use tracing_subscriber::EnvFilter;

mod leader;

#[derive(Debug, Parser)]
#[command(name = "fim-operator", version, about)]
struct Args {
    /// Address of the metrics and health endpoints.
    #[arg(long, default_value = "0.0.0.0:8585")]
    metrics_addr: SocketAddr,
    /// Namespace to watch; the agents run there too.
    #[arg(long, default_value = kube_fim_crds::labels::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Image of the agent DaemonSet.
    #[arg(long, default_value = "ghcr.io/kube-fim/fim-agent:latest")]
    agent_image: String,
    /// Service account of the agent pods.
    #[arg(long, default_value = "fim-agent")]
    agent_service_account: String,
    /// Seconds between periodic re-checks of an unchanged FileIntegrity.
    #[arg(long, default_value_t = 300)]
    resync_seconds: u64,
    /// Seconds a leader's Lease stays valid without renewal; a standby takes over within this
    /// time (plus up to a second) after the leader dies. The leader renews a third of it
    /// before expiry.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
    lease_seconds: u64,
    #[command(flatten)]
    snapshot: fim_operator::snapshot::StorageArgs,
}

/// What `/readyz` and the leader gauge report.
#[derive(Default)]
struct Health {
    /// The Lease was read or created: this replica can lead or stand by.
    lease: AtomicBool,
    /// This replica holds the Lease and runs the controller.
    leader: AtomicBool,
    /// The controller's caches are synced (leader only).
    synced: AtomicBool,
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    snapshot_metrics: Arc<fim_operator::snapshot::SnapshotMetrics>,
    health: Arc<Health>,
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    text.push_str(&state.snapshot_metrics.render());
    let leader = u8::from(state.health.leader.load(Ordering::Relaxed));
    text.push_str(&format!(
        "# HELP file_integrity_operator_leader 1 if this replica holds the leader Lease and runs the controller.\n\
         # TYPE file_integrity_operator_leader gauge\n\
         file_integrity_operator_leader {leader}\n"
    ));
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    let h = &state.health;
    match (
        h.lease.load(Ordering::Relaxed),
        h.leader.load(Ordering::Relaxed),
        h.synced.load(Ordering::Relaxed),
    ) {
        (_, true, true) => (StatusCode::OK, "ok: leader"),
        (_, true, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "leader: controller cache not synced yet",
        ),
        (true, false, _) => (StatusCode::OK, "ok: standby"),
        (false, false, _) => (StatusCode::SERVICE_UNAVAILABLE, "leader Lease not read yet"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    // kube's rustls needs a process-wide crypto provider (aws-lc-rs, as everywhere in kube-fim).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();

    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let snapshot_metrics = Arc::new(fim_operator::snapshot::SnapshotMetrics::default());
    let state = AppState {
        metrics: metrics.clone(),
        snapshot_metrics: snapshot_metrics.clone(),
        health: health.clone(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, namespace = %args.namespace, "fim-operator starting");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let identity = leader::identity();
    let manager = leader::lease_manager(
        client.clone(),
        &args.namespace,
        &identity,
        args.lease_seconds,
    )
    .await?;
    health.lease.store(true, Ordering::Relaxed);
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(%identity, lease = leader::LEASE_NAME, "standing by for leadership");
    // Some(true): leader; Some(false): the lease task ended; None: signal.
    let became_leader = tokio::select! {
        r = leading.wait_for(|l| *l) => Some(r.is_ok()),
        _ = shutdown_signal() => None,
    };
    match became_leader {
        Some(true) => {}
        Some(false) => {
            server.abort();
            return Err("the lease manager stopped before this replica became leader".into());
        }
        None => {
            tracing::info!("signal received while standing by; stopping");
            drop(leading);
            let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
            server.abort();
            return Ok(());
        }
    }
    // The lease manager has just written renewTime: valid for a full lease from about now.
    let first_deadline = SystemTime::now() + Duration::from_secs(args.lease_seconds);
    tracing::info!(%identity, "acquired leadership; starting the controller");
    health.leader.store(true, Ordering::Relaxed);

    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics,
        OperatorConfig {
            namespace: args.namespace.clone(),
            agent_image: args.agent_image,
            agent_service_account: args.agent_service_account,
            resync: Duration::from_secs(args.resync_seconds),
            retry: Duration::from_secs(15),
        },
    ));
    let synced = health.clone();
    // Whatever ends first, the controller future is dropped with it: nothing more is written.
    let lost = tokio::select! {
        _ = futures::future::join(
            controller::run(ctx, move || synced.synced.store(true, Ordering::Relaxed)),
            fim_operator::snapshot::run(client.clone(), args.namespace.clone(), args.snapshot.clone(), snapshot_metrics),
        ) => None,
        _ = leading.wait_for(|l| !*l) => Some("the lease manager lost the Lease".to_string()),
        why = leader::fence(client.clone(), &args.namespace, &identity, args.lease_seconds, first_deadline) => {
            Some(format!("cannot confirm the Lease ({why:?})"))
        }
    };
    health.synced.store(false, Ordering::Relaxed);
    health.leader.store(false, Ordering::Relaxed);
    // Release the Lease only when a fresh read shows it is still ours (see
    // `leader::still_held`); otherwise stop the lease task without touching the Lease.
    if lost.is_none() && leader::still_held(client, &args.namespace, &identity).await {
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
    server.abort();
    if let Some(why) = lost {
        tracing::error!(%identity, %why, "lost leadership; exiting");
        return Err(format!("lost leadership: {why}").into());
    }
    tracing::info!("fim-operator stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C (the controller watches the same signals itself once running).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
