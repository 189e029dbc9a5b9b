//! SIGINT/SIGTERM, listened to once for the whole process: the first signal asks every part
//! to stop gracefully (controllers stop taking new work and let running reconciles finish),
//! the second forces the stop.

use tokio::sync::watch;

/// How many stop signals arrived; cheap to clone, one per waiter.
#[derive(Clone, Debug)]
pub struct Shutdown {
    signals: watch::Receiver<u8>,
}

/// Feeds a [`Shutdown`] by hand (tests, or an embedding program with its own signals).
#[derive(Debug)]
pub struct Trigger {
    signals: watch::Sender<u8>,
}

impl Trigger {
    /// Counts one stop signal.
    pub fn signal(&self) {
        self.signals.send_modify(|n| *n = n.saturating_add(1));
    }
}

impl Shutdown {
    /// A shutdown fed by `Trigger` only.
    pub fn manual() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(0);
        (Trigger { signals: tx }, Shutdown { signals: rx })
    }

    /// A shutdown fed by SIGINT and SIGTERM of this process (a task that lives as long as the
    /// runtime). Call once: a second listener would see every signal too.
    pub fn listen() -> Shutdown {
        let (trigger, shutdown) = Shutdown::manual();
        tokio::spawn(async move {
            signal().await;
            tracing::info!("graceful shutdown requested, signal again to force shutdown");
            trigger.signal();
            signal().await;
            tracing::info!("forced shutdown requested");
            trigger.signal();
            // Keep the sender alive: a dropped sender would read as "never".
            std::future::pending::<()>().await;
        });
        shutdown
    }

    /// Resolves once a stop was asked for (the first signal).
    pub async fn requested(self) {
        self.at_least(1).await;
    }

    /// Resolves once the stop is forced (the second signal).
    pub async fn forced(self) {
        self.at_least(2).await;
    }

    async fn at_least(mut self, n: u8) {
        if self.signals.wait_for(|count| *count >= n).await.is_err() {
            // The trigger is gone: no further signal can come.
            std::future::pending::<()>().await;
        }
    }
}

/// The next SIGTERM or Ctrl-C.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        },
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn resolves(f: impl std::future::Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn the_first_signal_asks_the_second_forces() {
        let (trigger, shutdown) = Shutdown::manual();
        assert!(!resolves(shutdown.clone().requested()).await);
        trigger.signal();
        assert!(resolves(shutdown.clone().requested()).await);
        assert!(!resolves(shutdown.clone().forced()).await);
        trigger.signal();
        assert!(resolves(shutdown.clone().forced()).await);
        // A waiter created after the signals still sees them.
        assert!(resolves(shutdown.requested()).await);
    }

    #[tokio::test]
    async fn a_dropped_trigger_never_stops() {
        let (trigger, shutdown) = Shutdown::manual();
        drop(trigger);
        assert!(!resolves(shutdown.requested()).await);
    }
}
