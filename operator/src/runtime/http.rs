//! The HTTP endpoints: `/metrics` (the runtime's registry), `/healthz` (the process serves) and
//! `/readyz` (healthy in its role, across every registered controller). `/metrics` needs a
//! bearer token allowed to `get` it (see `fim_secure_metrics`); the health endpoints answer the
//! kubelet's probes, which carry no token.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use fim_secure_metrics::Endpoint;
use prometheus::{Encoder, Registry, TextEncoder};

/// What `/readyz` reports; written by the runtime and the controllers.
#[derive(Debug, Default)]
pub struct Health {
    /// The Lease was read or created: this replica can lead or stand by.
    pub lease: AtomicBool,
    /// This replica holds the Lease and runs the controllers.
    pub leader: AtomicBool,
    /// Per controller (by name): its caches are synced (leader only).
    pub controllers: Vec<(&'static str, Arc<AtomicBool>)>,
}

impl Health {
    /// The `/readyz` answer for the current flags.
    pub fn readiness(&self) -> (StatusCode, String) {
        let unsynced: Vec<&str> = self
            .controllers
            .iter()
            .filter(|(_, synced)| !synced.load(Ordering::Relaxed))
            .map(|(name, _)| *name)
            .collect();
        readiness(
            self.lease.load(Ordering::Relaxed),
            self.leader.load(Ordering::Relaxed),
            &unsynced,
        )
    }
}

/// `/readyz`: a leader is ready once every controller's caches are synced; a standby once it
/// has read the Lease (it reached the API server with the rights it needs and can take over).
/// A standby that is never ready would block a rolling update of a two-replica Deployment, so
/// readiness means "healthy in its role", not "leading".
pub fn readiness(lease_read: bool, leader: bool, unsynced: &[&str]) -> (StatusCode, String) {
    match (lease_read, leader, unsynced) {
        (_, true, []) => (StatusCode::OK, "ok: leader".to_owned()),
        (_, true, names) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("leader: caches not synced yet: {}", names.join(", ")),
        ),
        (true, false, _) => (StatusCode::OK, "ok: standby".to_owned()),
        (false, false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "leader Lease not read yet".to_owned(),
        ),
    }
}

/// The text exposition of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("text format is UTF-8")
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    health: Arc<Health>,
}

/// The router of the three endpoints; `/metrics` protected as `endpoint` says.
pub fn router(registry: Registry, health: Arc<Health>, endpoint: &Endpoint) -> Router {
    endpoint
        .protect(Router::new().route("/metrics", get(metrics)))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health })
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        render(&state.registry),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    state.health.readiness()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_is_ready_when_every_controller_is_synced() {
        assert_eq!(readiness(true, true, &[]).1, "ok: leader");
        assert_eq!(readiness(true, true, &[]).0, StatusCode::OK);
        let (code, body) = readiness(true, true, &["file-integrity", "snapshot"]);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "leader: caches not synced yet: file-integrity, snapshot"
        );
    }

    #[test]
    fn a_standby_is_ready_once_it_read_the_lease() {
        assert_eq!(
            readiness(true, false, &["file-integrity"]),
            (StatusCode::OK, "ok: standby".to_owned())
        );
        assert_eq!(
            readiness(false, false, &[]).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn health_aggregates_the_controllers_flags() {
        let a = Arc::new(AtomicBool::new(true));
        let b = Arc::new(AtomicBool::new(false));
        let health = Health {
            controllers: vec![("a", a), ("b", b.clone())],
            ..Health::default()
        };
        health.lease.store(true, Ordering::Relaxed);
        health.leader.store(true, Ordering::Relaxed);
        assert_eq!(health.readiness().1, "leader: caches not synced yet: b");
        b.store(true, Ordering::Relaxed);
        assert_eq!(health.readiness().1, "ok: leader");
    }
}
