//! `fim-operator`: reconciles FileIntegrity objects into agent DaemonSets, status, events and
//! metrics, and serves `/metrics`, `/healthz` and `/readyz`.
//!
//! Leader election, the endpoints and signals are the runtime's (see `fim_operator::runtime`):
//! only the replica holding the `fim-operator-leader` Lease runs the controllers.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::Parser;
use fim_operator::{
    file_integrity::{Context, FileIntegrityController, OperatorConfig, metrics::Metrics},
    runtime::{Runtime, RuntimeConfig},
    snapshot::{SnapshotController, SnapshotMetrics},
};
use kube::Client;
use tracing_subscriber::EnvFilter;

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
    let mut runtime = Runtime::new(
        client.clone(),
        RuntimeConfig {
            metrics_addr: args.metrics_addr,
            namespace: args.namespace.clone(),
            lease_seconds: args.lease_seconds,
        },
    );
    let metrics = Arc::new(Metrics::new(runtime.registry()));
    let snapshot_metrics = Arc::new(SnapshotMetrics::new(runtime.registry()));
    runtime.add(SnapshotController::new(
        client.clone(),
        args.namespace.clone(),
        args.snapshot.clone(),
        snapshot_metrics,
    ));
    let ctx = Arc::new(Context::new(
        client,
        metrics,
        OperatorConfig {
            namespace: args.namespace,
            agent_image: args.agent_image,
            agent_service_account: args.agent_service_account,
            resync: Duration::from_secs(args.resync_seconds),
            retry: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        },
    ));
    runtime.add(FileIntegrityController::new(ctx));
    runtime.run().await?;
    Ok(())
}
