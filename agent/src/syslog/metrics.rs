//! `fim_agent_syslog_*` metrics, registered in the agent's registry.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::format::EventType;

#[derive(Clone)]
pub struct SyslogMetrics {
    /// Lines written to the server, by `event_type` (0001..0006).
    pub sent: IntCounterVec,
    /// Lines dropped because the queue was full.
    pub dropped: IntCounter,
    /// Connections or sends that failed (each is retried after a backoff).
    pub errors: IntCounter,
    /// Lines waiting in the queue.
    pub queued: IntGauge,
}

impl SyslogMetrics {
    pub fn new() -> SyslogMetrics {
        let sent = IntCounterVec::new(
            Opts::new(
                "fim_agent_syslog_lines_sent_total",
                "Syslog lines written to the server, by event type",
            ),
            &["event_type"],
        )
        .expect("valid counter");
        let dropped = IntCounter::new(
            "fim_agent_syslog_dropped_total",
            "Syslog lines dropped because the queue was full",
        )
        .expect("valid counter");
        let errors = IntCounter::new(
            "fim_agent_syslog_errors_total",
            "Failed connections or writes to the syslog server (retried)",
        )
        .expect("valid counter");
        let queued = IntGauge::new("fim_agent_syslog_queued", "Syslog lines waiting to be sent")
            .expect("valid gauge");
        for t in EventType::ALL {
            sent.with_label_values(&[t.code()]);
        }
        SyslogMetrics {
            sent,
            dropped,
            errors,
            queued,
        }
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.sent.clone()))?;
        registry.register(Box::new(self.dropped.clone()))?;
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(self.queued.clone()))
    }
}

impl Default for SyslogMetrics {
    fn default() -> Self {
        SyslogMetrics::new()
    }
}
