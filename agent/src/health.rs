//! The agent's liveness and readiness (issue 10, item 4: silence is visible on the node too),
//! backed by the scanning worker's real progress:
//!
//! - `/livez` fails when the worker has shown no progress for longer than [`liveness_bound`]
//!   (twice `gracePeriod` plus a minute: the periodic tick alone wakes a healthy idle worker once
//!   per `gracePeriod`, and every scan reports progress as it goes), or when its thread is gone
//!   (it panicked). Before the worker starts (the agent waits for the API server) it is live:
//!   restarting would not bring the API server back.
//! - `/readyz` succeeds once the worker has published its first result (the first baseline or
//!   check, Errored included: the node's state is known); before that it says what it waits for.
//!
//! The handlers are plain HTTP on the agent's existing server ([`routes`] is merged into its
//! router), so the kubelet's `httpGet` probes reach them without credentials.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use fim_engine::scan::Progress;

/// How long the worker may show no progress before the agent counts as wedged.
pub fn liveness_bound(grace_period_seconds: u64) -> Duration {
    Duration::from_secs(
        grace_period_seconds
            .max(1)
            .saturating_mul(2)
            .saturating_add(60),
    )
}

/// The liveness decision: `Ok(why)` when live, `Err(why)` when the kubelet should restart the
/// agent. `since_progress` is `None` while the worker has not started.
pub fn liveness(
    since_progress: Option<Duration>,
    bound: Duration,
    worker_exited: bool,
) -> Result<String, String> {
    if worker_exited {
        return Err("the scanning worker stopped".into());
    }
    match since_progress {
        None => Ok("waiting for the API server; the worker has not started".into()),
        Some(age) if age > bound => Err(format!(
            "the scanning worker has shown no progress for {}s (limit {}s)",
            age.as_secs(),
            bound.as_secs()
        )),
        Some(age) => Ok(format!("last progress {}s ago", age.as_secs())),
    }
}

/// The readiness decision: ready once a first result was published.
pub fn readiness(first_result: bool, waiting_for: &str) -> Result<String, String> {
    if first_result {
        Ok("the node's first result is published".into())
    } else {
        Err(format!("not ready: {waiting_for}"))
    }
}

/// Shared between the worker (which reports) and the HTTP handlers (which decide).
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last progress + 1; 0 while the worker has not started.
    last_progress: AtomicU64,
    worker_exited: AtomicBool,
    first_result: AtomicBool,
    waiting_for: Mutex<String>,
    bound: Duration,
}

impl Health {
    pub fn new(grace_period_seconds: u64) -> Health {
        Health {
            epoch: Instant::now(),
            last_progress: AtomicU64::new(0),
            worker_exited: AtomicBool::new(false),
            first_result: AtomicBool::new(false),
            waiting_for: Mutex::new("the FileIntegrity and the node status".into()),
            bound: liveness_bound(grace_period_seconds),
        }
    }

    /// The worker is alive and moving (a job taken, scan progress, a result).
    pub fn progress(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_progress.store(ms + 1, Ordering::Relaxed);
    }

    /// What readiness waits for, until the first result.
    pub fn waiting_for(&self, what: impl Into<String>) {
        *self.waiting_for.lock().unwrap_or_else(|e| e.into_inner()) = what.into();
    }

    /// The worker published a result.
    pub fn published(&self) {
        self.progress();
        self.first_result.store(true, Ordering::Relaxed);
    }

    /// The worker thread ended (also by a panic: see [`ExitGuard`]).
    pub fn worker_exited(&self) {
        self.worker_exited.store(true, Ordering::Relaxed);
    }

    pub fn live(&self) -> Result<String, String> {
        let since = match self.last_progress.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        };
        liveness(
            since,
            self.bound,
            self.worker_exited.load(Ordering::Relaxed),
        )
    }

    pub fn ready(&self) -> Result<String, String> {
        let waiting = self
            .waiting_for
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        readiness(self.first_result.load(Ordering::Relaxed), &waiting)
    }
}

/// Scan progress is worker progress: a long scan keeps the agent live.
impl Progress for Health {
    fn start(&self, _total: Option<u64>) {
        self.progress();
    }
    fn advance(&self, _entries: u64) {
        self.progress();
    }
    fn finish(&self) {
        self.progress();
    }
}

/// Marks the worker exited when dropped: held by the worker thread, so a panic counts too.
pub struct ExitGuard(pub Arc<Health>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.worker_exited();
    }
}

fn answer(result: Result<String, String>) -> (StatusCode, String) {
    match result {
        Ok(why) => (StatusCode::OK, format!("ok: {why}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// `/livez` and `/readyz`, to merge into the agent's HTTP router.
pub fn routes(health: Arc<Health>) -> Router {
    Router::new()
        .route(
            "/livez",
            get(|State(h): State<Arc<Health>>| async move { answer(h.live()) }),
        )
        .route(
            "/readyz",
            get(|State(h): State<Arc<Health>>| async move { answer(h.ready()) }),
        )
        .with_state(health)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_bound_follows_the_grace_period() {
        assert_eq!(liveness_bound(900), S(1860));
        assert_eq!(liveness_bound(10), S(80));
        assert_eq!(liveness_bound(0), S(62));
    }

    #[test]
    fn a_worker_without_progress_beyond_the_bound_is_not_live() {
        let bound = liveness_bound(10);
        assert!(liveness(Some(S(0)), bound, false).is_ok());
        assert!(liveness(Some(S(80)), bound, false).is_ok());
        let e = liveness(Some(S(81)), bound, false).unwrap_err();
        assert!(e.contains("no progress for 81s (limit 80s)"), "{e}");
    }

    #[test]
    fn a_worker_that_stopped_is_not_live_and_one_not_started_is() {
        assert!(
            liveness(Some(S(1)), S(80), true)
                .unwrap_err()
                .contains("stopped")
        );
        assert!(liveness(None, S(80), true).is_err());
        assert!(liveness(None, S(80), false).is_ok());
    }

    #[test]
    fn ready_after_the_first_result_only() {
        let e = readiness(false, "the first baseline").unwrap_err();
        assert_eq!(e, "not ready: the first baseline");
        assert!(readiness(true, "anything").is_ok());
    }

    #[test]
    fn health_tracks_progress_results_and_exit() {
        let h = Arc::new(Health::new(10));
        assert!(h.live().unwrap().contains("not started"));
        assert!(h.ready().is_err());
        h.progress();
        assert!(h.live().unwrap().contains("last progress 0s ago"));
        h.published();
        assert!(h.ready().is_ok());
        // The guard marks the worker gone, also when its thread panics.
        let guard = ExitGuard(h.clone());
        let panicked = std::thread::spawn(move || {
            let _guard = guard;
            panic!("worker bug");
        })
        .join();
        assert!(panicked.is_err());
        assert!(h.live().unwrap_err().contains("stopped"));
    }
}
