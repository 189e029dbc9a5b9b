//! Keeps a [`Watcher`] on the newest trees and restarts one whose thread stopped (issue 10,
//! item 4: a realtime watcher that dies is restarted and counted). The stopped watcher's last
//! batch is an overflow, so the caller's check covers what it missed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use super::{Backend, Batch, Watcher};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct Supervisor {
    prefer: Option<Backend>,
    watcher: Option<Watcher>,
    watched: Option<Vec<PathBuf>>,
    /// Set while a stopped watcher waits to be started again.
    restart_at: Option<Instant>,
    backoff: Duration,
    restarts: IntCounter,
}

impl Supervisor {
    /// `restarts` counts the watchers that stopped and were started again.
    pub fn new(prefer: Option<Backend>, restarts: IntCounter) -> Supervisor {
        Supervisor {
            prefer,
            watcher: None,
            watched: None,
            restart_at: None,
            backoff: FIRST_BACKOFF,
            restarts,
        }
    }

    /// Whether a watcher runs or waits to be restarted (otherwise the caller waits for trees).
    pub fn active(&self) -> bool {
        self.watcher.is_some() || self.restart_at.is_some()
    }

    /// The backend of the running watcher (none: none could start, or one waits to restart).
    pub fn backend(&self) -> Option<Backend> {
        self.watcher.as_ref().map(Watcher::backend)
    }

    /// Watches `dirs` from now on: a new watcher when they differ from the watched ones or none
    /// runs.
    pub fn watch(&mut self, dirs: Vec<PathBuf>) {
        if self.watcher.is_some() && self.watched.as_ref() == Some(&dirs) {
            return;
        }
        self.watched = Some(dirs);
        self.restart_at = None;
        self.start();
    }

    fn start(&mut self) {
        drop(self.watcher.take());
        let Some(dirs) = &self.watched else { return };
        match Watcher::start(dirs, self.prefer) {
            Ok(w) => {
                tracing::info!(backend = %w.backend(), ?dirs, "realtime detection on");
                self.watcher = Some(w);
                self.restart_at = None;
                self.backoff = FIRST_BACKOFF;
            }
            Err(e) if self.restart_at.is_some() => {
                tracing::warn!(
                    "realtime watcher restart failed (retrying in {:?}): {e}",
                    self.backoff
                );
                self.schedule_restart();
            }
            Err(e) => tracing::warn!("realtime detection off, periodic checks only: {e}"),
        }
    }

    fn schedule_restart(&mut self) {
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// The next batch of the running watcher (see [`Watcher::next_batch`]); notices a watcher
    /// that stopped (counted, restarted after a backoff) and restarts it when due.
    pub fn next_batch(
        &mut self,
        timeout: Duration,
        quiet: Duration,
        max_wait: Duration,
    ) -> Option<Batch> {
        if self.watcher.is_none() {
            let due = self.restart_at?;
            let now = Instant::now();
            if now < due {
                std::thread::sleep((due - now).min(timeout));
                return None;
            }
            self.restarts.inc();
            self.start();
            return None;
        }
        let w = self.watcher.as_ref()?;
        let batch = w.next_batch(timeout, quiet, max_wait);
        if let Some(error) = w.error() {
            tracing::warn!(%error, "realtime watcher stopped; restarting it");
            drop(self.watcher.take());
            self.schedule_restart();
        }
        batch
    }

    #[cfg(test)]
    fn watcher(&self) -> Option<&Watcher> {
        self.watcher.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);
    const QUIET: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_millis(150);

    fn batch_with(sup: &mut Supervisor, path: &std::path::Path) -> Batch {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(b) = sup.next_batch(T, QUIET, MAX)
                && (b.overflow || b.paths.iter().any(|p| p.starts_with(path)))
            {
                return b;
            }
        }
        panic!("no batch naming {}", path.display());
    }

    #[test]
    fn a_watcher_that_stops_is_restarted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let restarts = IntCounter::new("restarts", "test").unwrap();
        let mut sup = Supervisor::new(Some(Backend::Inotify), restarts.clone());
        assert!(!sup.active());
        sup.watch(vec![dir.path().to_path_buf()]);
        assert!(sup.active());
        let first = dir.path().join("first");
        std::fs::write(&first, "x").unwrap();
        assert!(!batch_with(&mut sup, &first).overflow);

        // The watcher thread stops as on a kernel error: its last batch is an overflow.
        sup.watcher().unwrap().shared.fail("injected".into());
        let b = sup.next_batch(T, QUIET, MAX).expect("the overflow batch");
        assert!(b.overflow);
        assert!(sup.watcher().is_none() && sup.active());
        // Restarted after the backoff and counted; it sees changes again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sup.watcher().is_none() && Instant::now() < deadline {
            sup.next_batch(T, QUIET, MAX);
        }
        assert!(sup.watcher().is_some(), "restarted");
        assert_eq!(restarts.get(), 1);
        let second = dir.path().join("second");
        std::fs::write(&second, "y").unwrap();
        assert!(!batch_with(&mut sup, &second).overflow);

        // The same trees again: the running watcher stays.
        sup.watch(vec![dir.path().to_path_buf()]);
        assert_eq!(restarts.get(), 1);
    }
}
