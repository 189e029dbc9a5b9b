//! `fim-operator`: reconciles FileIntegrity objects into agent DaemonSets, status, events and
//! metrics, and serves `/metrics`, `/healthz` and `/readyz`.
//!
//! Leader election is not implemented yet: run a single replica.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use clap::Parser;
use fim_operator::{
    controller::{self, Context, OperatorConfig},
    metrics::Metrics,
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
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "cache not synced")
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
    let ready = Arc::new(AtomicBool::new(false));
    let state = AppState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, namespace = %args.namespace, "fim-operator starting");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let ctx = Arc::new(Context::new(
        client,
        metrics,
        OperatorConfig {
            namespace: args.namespace,
            agent_image: args.agent_image,
            agent_service_account: args.agent_service_account,
            resync: Duration::from_secs(args.resync_seconds),
            retry: Duration::from_secs(15),
        },
    ));
    controller::run(ctx, move || ready.store(true, Ordering::Relaxed)).await;
    server.abort();
    tracing::info!("fim-operator stopped");
    Ok(())
}
