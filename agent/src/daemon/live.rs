//! Settings the agent follows live from its FileIntegrity (`spec.config.gracePeriod`,
//! `spec.config.maxBackups`, `spec.debug`): a change takes effect in the running agent, with its
//! baseline, findings and realtime watches untouched. The operator does not put them in the pod
//! template, so changing them never rolls the agent pods (file-integrity-operator restarts its
//! pods for these; see docs/decisions.md).

use std::time::Duration;

use kube_fim_crds::FileIntegritySpec;

/// The live settings at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    /// Time between periodic checks (at least one second).
    pub grace_period: Duration,
    /// Backups of old baselines kept at the next re-init.
    pub max_backups: usize,
    /// Debug logging.
    pub debug: bool,
}

impl Live {
    /// The settings `spec` asks for. Out-of-range values (the CRD refuses them; an older object
    /// could carry them) are clamped: a grace period below one second is one second, a negative
    /// backup count keeps none.
    pub fn of(spec: &FileIntegritySpec) -> Live {
        Live {
            grace_period: Duration::from_secs(
                u64::try_from(spec.config.grace_period).unwrap_or(1).max(1),
            ),
            max_backups: usize::try_from(spec.config.max_backups).unwrap_or(0),
            debug: spec.debug,
        }
    }

    /// What changed from `self` to `new`, one phrase per setting, for the log.
    pub fn changes(&self, new: &Live) -> Vec<String> {
        let mut out = Vec::new();
        if self.grace_period != new.grace_period {
            out.push(format!(
                "gracePeriod {}s -> {}s",
                self.grace_period.as_secs(),
                new.grace_period.as_secs()
            ));
        }
        if self.max_backups != new.max_backups {
            out.push(format!(
                "maxBackups {} -> {}",
                self.max_backups, new.max_backups
            ));
        }
        if self.debug != new.debug {
            out.push(format!("debug {} -> {}", self.debug, new.debug));
        }
        out
    }
}

/// The periodic check timer: a check every `grace_period`, restarted whenever it changes (the
/// first check at the new cadence comes one new period after the change).
pub async fn tick(
    mut every: tokio::sync::watch::Receiver<Duration>,
    mut on_tick: impl FnMut() + Send,
) {
    loop {
        let period = *every.borrow_and_update();
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => on_tick(),
                changed = every.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn spec(yaml: &str) -> FileIntegritySpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn settings_come_from_the_spec_with_its_defaults() {
        let live = Live::of(&spec("{}"));
        assert_eq!(
            live,
            Live {
                grace_period: Duration::from_secs(900),
                max_backups: 5,
                debug: false
            }
        );
        let live = Live::of(&spec(
            "debug: true\nconfig: {gracePeriod: 3, maxBackups: 1}\n",
        ));
        assert_eq!(
            live,
            Live {
                grace_period: Duration::from_secs(3),
                max_backups: 1,
                debug: true
            }
        );
        // Clamped, never a zero period (a busy loop) or a wrapped count.
        let live = Live::of(&spec("config: {gracePeriod: 0, maxBackups: -1}\n"));
        assert_eq!(live.grace_period, Duration::from_secs(1));
        assert_eq!(live.max_backups, 0);
    }

    #[test]
    fn changes_name_each_setting_that_moved() {
        let old = Live::of(&spec("{}"));
        assert!(old.changes(&old).is_empty());
        let new = Live::of(&spec("debug: true\nconfig: {gracePeriod: 3}\n"));
        assert_eq!(
            old.changes(&new),
            ["gracePeriod 900s -> 3s", "debug false -> true"]
        );
    }

    #[tokio::test]
    async fn the_timer_follows_a_new_period_at_once() {
        let ms = Duration::from_millis;
        let (tx, rx) = tokio::sync::watch::channel(Duration::from_secs(900));
        let ticks = Arc::new(AtomicUsize::new(0));
        let counter = ticks.clone();
        let task = tokio::spawn(tick(rx, move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        tokio::time::sleep(ms(300)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 0, "900 s: nothing yet");
        tx.send(ms(50)).unwrap();
        tokio::time::sleep(ms(1000)).await;
        let fast = ticks.load(Ordering::SeqCst);
        assert!(
            (5..=21).contains(&fast),
            "every 50 ms from the change: {fast}"
        );
        tx.send(Duration::from_secs(900)).unwrap();
        tokio::time::sleep(ms(20)).await;
        let before = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(ms(500)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), before, "slow again");
        drop(tx);
        task.await.unwrap();
    }
}
