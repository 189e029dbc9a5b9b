//! `fim-operator`: reconciles FileIntegrity objects into agent DaemonSets, status, events and
//! metrics, and serves `/metrics`, `/healthz` and `/readyz`.
//!
//! Leader election, the endpoints and signals are the runtime's (see `fim_operator::runtime`):
//! only the replica holding the `fim-operator-leader` Lease runs the controllers.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::Parser;
use fim_operator::{
    admission::{AdmissionPolicyController, PoliciesInEffect},
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
    /// API server address for the agents (`https://HOST:PORT`) instead of the in-cluster
    /// `kubernetes` Service, e.g. a node-local API proxy; a loopback host puts the agent pods on
    /// the host network.
    #[arg(long)]
    agent_api_server: Option<fim_operator::daemonset::ApiServer>,
    /// S3 endpoint of the snapshot bucket as the agents on the nodes reach it (container
    /// monitoring loads Snapshots kept in S3 from there); bucket and region are the operator's
    /// (`--s3-bucket`, `--s3-region`). Needs `--agent-s3-credentials-secret`.
    #[arg(
        long,
        env = "AGENT_S3_ENDPOINT",
        requires = "agent_s3_credentials_secret"
    )]
    agent_s3_endpoint: Option<String>,
    /// Secret in the agents' namespace with read-only S3 keys (`accessKey`, `secretKey`), handed
    /// to the agent pods by the kubelet.
    #[arg(
        long,
        env = "AGENT_S3_CREDENTIALS_SECRET",
        requires = "agent_s3_endpoint"
    )]
    agent_s3_credentials_secret: Option<String>,
    /// Seconds between periodic re-checks of an unchanged FileIntegrity.
    #[arg(long, default_value_t = 300)]
    resync_seconds: u64,
    /// Seconds a leader's Lease stays valid without renewal; a standby takes over within this
    /// time (plus up to a second) after the leader dies. The leader renews a third of it
    /// before expiry.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
    lease_seconds: u64,
    #[command(flatten)]
    metrics: fim_secure_metrics::MetricsArgs,
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
    let agent_s3 = args
        .agent_s3_endpoint
        .clone()
        .zip(args.agent_s3_credentials_secret.clone())
        .map(
            |(endpoint, credentials_secret)| fim_operator::daemonset::AgentS3 {
                endpoint,
                bucket: args.snapshot.bucket.clone(),
                region: args.snapshot.region.clone(),
                credentials_secret,
            },
        );

    let client = Client::try_default().await?;
    let mut runtime = Runtime::new(
        client.clone(),
        RuntimeConfig {
            metrics_addr: args.metrics_addr,
            metrics: args.metrics.clone(),
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
    let (in_effect, policies) = PoliciesInEffect::channel();
    runtime.add(AdmissionPolicyController {
        client: client.clone(),
        namespace: args.namespace.clone(),
        agent_service_account: args.agent_service_account.clone(),
        in_effect,
    });
    let ctx = Arc::new(Context::new(
        client,
        metrics,
        policies,
        OperatorConfig {
            namespace: args.namespace,
            agent_image: args.agent_image,
            agent_service_account: args.agent_service_account,
            agent_api_server: args.agent_api_server,
            agent_s3,
            resync: Duration::from_secs(args.resync_seconds),
            retry: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        },
    ));
    runtime.add(FileIntegrityController::new(ctx));
    runtime.run().await?;
    Ok(())
}
