//! The daemon's side: the settings come from the FileIntegrity the agent works for (followed
//! here, so the operator passes nothing), node findings go through [`NodeSink`].

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_fim_crds::{
    FileIntegrity, SYSLOG_CA_KEY, SyslogAlert, SyslogFormat, SyslogFraming, SyslogProtocol,
};

use super::format::{Format, Framing};
use super::sender::{Config, Syslog, Transport};
use super::{Identity, MAX_LINES_PER_SCAN, NodeAlerts};

/// The sender's settings for `spec.alerts.syslog`, with the CA bundle read from its secret.
pub fn config_of(s: &SyslogAlert, ca_pem: Option<Vec<u8>>) -> Config {
    Config {
        host: s.host.clone(),
        port: u16::try_from(s.port).unwrap_or(514),
        transport: match s.protocol {
            SyslogProtocol::Tcp => Transport::Tcp,
            SyslogProtocol::Udp => Transport::Udp,
            SyslogProtocol::Tls => Transport::Tls,
        },
        framing: match s.framing {
            SyslogFraming::Newline => Framing::Newline,
            SyslogFraming::OctetCounting => Framing::OctetCounting,
        },
        format: match s.format {
            SyslogFormat::Rfc3164 => Format::Rfc3164,
            SyslogFormat::Rfc5424 => Format::Rfc5424,
        },
        heartbeat: Duration::from_secs(s.heartbeat_seconds.max(1) as u64),
        cluster: s.cluster.clone(),
        ca_pem,
    }
}

/// Follows the FileIntegrity `name` and (re)configures `syslog` from its `spec.alerts.syslog`
/// (removed: nothing more is sent). A CA secret that cannot be read leaves TLS unconfigured and
/// is retried at the next change of the FileIntegrity or every minute.
pub async fn follow(client: Client, namespace: String, name: String, syslog: Syslog) {
    let fis: Api<FileIntegrity> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = Box::pin(watcher(fis, config).default_backoff().applied_objects());
    let mut latest: Option<SyslogAlert> = None;
    let mut refresh = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            next = stream.try_next() => match next {
                Ok(Some(fi)) => latest = fi.spec.alerts.and_then(|a| a.syslog),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("FileIntegrity watch (syslog): {e}");
                    continue;
                }
            },
            // Picks up a rotated CA.
            _ = refresh.tick() => {}
        }
        let Some(s) = &latest else {
            syslog.configure(None);
            continue;
        };
        let ca = match &s.ca_secret {
            None => None,
            Some(secret) => match secrets.get(secret).await {
                Ok(sec) => sec
                    .data
                    .and_then(|mut d| d.remove(SYSLOG_CA_KEY))
                    .map(|b| b.0),
                Err(e) => {
                    tracing::warn!("syslog: cannot read the CA secret {secret}: {e}");
                    None
                }
            },
        };
        syslog.configure(Some(config_of(s, ca)));
    }
}

/// Node findings to syslog lines, each finding once (see [`NodeAlerts`]).
pub struct NodeSink {
    pub syslog: Syslog,
    pub identity: Identity,
    alerts: NodeAlerts,
}

impl NodeSink {
    pub fn new(syslog: Syslog, identity: Identity) -> NodeSink {
        NodeSink {
            syslog,
            identity,
            alerts: NodeAlerts::default(),
        }
    }

    /// Queues the lines for the current findings (never waits). Without a destination nothing
    /// is remembered, so the findings are sent once one is configured.
    pub fn findings(&mut self, findings: &crate::daemon::findings::Findings) {
        let Some(c) = self.syslog.config() else {
            return;
        };
        let events = self.alerts.events(
            &findings.fingerprint().0,
            &self.identity,
            &c.cluster,
            Timestamp::now(),
            MAX_LINES_PER_SCAN,
        );
        for e in events {
            self.syslog.send(e);
        }
    }
}

/// Who the agent is, for the lines' fields (`POD_NAME` from the downward API, else the pod's
/// host name, which Kubernetes sets to the pod name).
pub fn identity(node: &str, file_integrity: &str, namespace: &str) -> Identity {
    let pod = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    Identity {
        node: node.to_owned(),
        file_integrity: file_integrity.to_owned(),
        namespace: namespace.to_owned(),
        pod,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_maps_to_the_sender_settings() {
        let s: SyslogAlert = serde_json::from_value(serde_json::json!({"host": "h"})).unwrap();
        let c = config_of(&s, None);
        assert_eq!(
            (c.port, c.transport, c.framing, c.format, c.heartbeat),
            (
                514,
                Transport::Tcp,
                Framing::Newline,
                Format::Rfc3164,
                Duration::from_secs(1200)
            )
        );
        let s: SyslogAlert = serde_json::from_value(serde_json::json!({
            "host": "h", "port": 6514, "protocol": "tls", "format": "rfc5424",
            "framing": "octetCounting", "heartbeatSeconds": 5, "cluster": "prod", "caSecret": "ca"
        }))
        .unwrap();
        let c = config_of(&s, Some(b"pem".to_vec()));
        assert_eq!(
            (
                c.port,
                c.transport,
                c.format,
                c.heartbeat,
                c.cluster.as_str()
            ),
            (
                6514,
                Transport::Tls,
                Format::Rfc5424,
                Duration::from_secs(5),
                "prod"
            )
        );
        assert_eq!(c.ca_pem.as_deref(), Some(&b"pem"[..]));
    }
}
