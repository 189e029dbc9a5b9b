//! The agent's own metrics (`fim_agent_*`), served on `--metrics-addr` with `/healthz` (HTTPS,
//! `/metrics` for authorized tokens only: `fim_secure_metrics`).

use std::sync::Arc;

use axum::{Router, extract::State, response::IntoResponse, routing::get};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Kinds of scan, the `kind` label.
pub const SCAN_KINDS: [&str; 4] = ["init", "full", "incremental", "realtime"];

pub struct Metrics {
    registry: Registry,
    /// Wall-clock duration per scan kind.
    pub scan_duration: HistogramVec,
    /// Scans per kind and outcome (`succeeded`, `failed`, `errored`).
    pub scans: IntCounterVec,
    pub files_hashed: IntCounter,
    pub bytes_hashed: IntCounter,
    /// Change batches delivered by the watcher.
    pub realtime_events: IntCounter,
    /// Event queue overflows (each one turns into a full check).
    pub realtime_overflows: IntCounter,
    /// Unix time of the last scan that completed.
    pub last_successful_scan: IntGauge,
    /// Current findings per kind (`added`, `changed`, `removed`).
    pub findings: IntGaugeVec,
    /// 1 while scanning is paused (holdoff annotation, cordoned node).
    pub paused: IntGauge,
    /// Node status writes that failed (the API server was unreachable or refused).
    pub publish_errors: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let scan_duration = HistogramVec::new(
            HistogramOpts::new(
                "fim_agent_scan_duration_seconds",
                "Duration of the agent's scans, per kind",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                900.0,
            ]),
            &["kind"],
        )
        .expect("valid histogram");
        let scans = IntCounterVec::new(
            Opts::new("fim_agent_scans_total", "Scans per kind and result"),
            &["kind", "result"],
        )
        .expect("valid counter");
        let files_hashed = IntCounter::new(
            "fim_agent_files_hashed_total",
            "Files whose content was hashed",
        )
        .expect("valid counter");
        let bytes_hashed =
            IntCounter::new("fim_agent_bytes_hashed_total", "Bytes hashed").expect("valid counter");
        let realtime_events = IntCounter::new(
            "fim_agent_realtime_events_total",
            "Batches of filesystem change events handled",
        )
        .expect("valid counter");
        let realtime_overflows = IntCounter::new(
            "fim_agent_realtime_overflows_total",
            "Lost change events (each one triggers a full check)",
        )
        .expect("valid counter");
        let last_successful_scan = IntGauge::new(
            "fim_agent_last_successful_scan_timestamp_seconds",
            "Unix time of the last completed scan",
        )
        .expect("valid gauge");
        let findings = IntGaugeVec::new(
            Opts::new(
                "fim_agent_findings",
                "Files currently added, changed or removed against the baseline",
            ),
            &["kind"],
        )
        .expect("valid gauge");
        let paused = IntGauge::new(
            "fim_agent_paused",
            "1 while scans are paused by the holdoff annotation or a cordoned node",
        )
        .expect("valid gauge");
        let publish_errors = IntCounter::new(
            "fim_agent_publish_errors_total",
            "Failed writes of the node status or failure report (retried)",
        )
        .expect("valid counter");
        for c in [
            Box::new(scan_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(scans.clone()),
            Box::new(files_hashed.clone()),
            Box::new(bytes_hashed.clone()),
            Box::new(realtime_events.clone()),
            Box::new(realtime_overflows.clone()),
            Box::new(last_successful_scan.clone()),
            Box::new(findings.clone()),
            Box::new(paused.clone()),
            Box::new(publish_errors.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        for kind in SCAN_KINDS {
            scan_duration.with_label_values(&[kind]);
        }
        for kind in ["added", "changed", "removed"] {
            findings.with_label_values(&[kind]).set(0);
        }
        Metrics {
            registry,
            scan_duration,
            scans,
            files_hashed,
            bytes_hashed,
            realtime_events,
            realtime_overflows,
            last_successful_scan,
            findings,
            paused,
            publish_errors,
        }
    }

    /// Where other parts of the agent (syslog) register their metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        metrics.render(),
    )
}

/// Serves `/metrics` (protected as `endpoint` says: a bearer token allowed to `get /metrics`),
/// `/healthz` and the routes of `probes` (`/livez`, `/readyz`: see `crate::health`; open: the
/// kubelet's probes carry no token) on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    endpoint: fim_secure_metrics::Endpoint,
    probes: Router,
) {
    let app = endpoint
        .protect(Router::new().route("/metrics", get(metrics_handler)))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics)
        .merge(probes);
    endpoint.serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_the_agent_prefix() {
        let m = Metrics::new();
        m.scans.with_label_values(&["full", "succeeded"]).inc();
        let text = m.render();
        for name in [
            "fim_agent_scan_duration_seconds_bucket{kind=\"realtime\"",
            "fim_agent_scans_total{kind=\"full\",result=\"succeeded\"} 1",
            "fim_agent_files_hashed_total 0",
            "fim_agent_bytes_hashed_total 0",
            "fim_agent_realtime_events_total 0",
            "fim_agent_last_successful_scan_timestamp_seconds 0",
            "fim_agent_findings{kind=\"added\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("fim_agent_"), "{line}");
        }
    }
}
