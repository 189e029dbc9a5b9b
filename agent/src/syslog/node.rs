//! The daemon's side: the settings come from the FileIntegrity the agent works for (followed
//! here, so the operator passes nothing), node findings go through [`NodeSink`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_fim_crds::{
    FileIntegrity, SYSLOG_CA_KEY, SyslogAlert, SyslogFormat, SyslogFraming, SyslogProtocol,
};

use super::containers::RemediationRelay;
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

/// The CA bundle of `s.caSecret`, from the directory the operator mounts that Secret in
/// (`ca_dir/ca.crt`); `Ok(None)` when no CA secret is named.
pub fn read_ca(s: &SyslogAlert, ca_dir: &Path) -> Result<Option<Vec<u8>>, String> {
    let Some(secret) = &s.ca_secret else {
        return Ok(None);
    };
    let path = ca_dir.join(SYSLOG_CA_KEY);
    match std::fs::read(&path) {
        Ok(pem) if pem.is_empty() => Err(format!(
            "{} is empty: Secret {secret} has no {SYSLOG_CA_KEY}",
            path.display()
        )),
        Ok(pem) => Ok(Some(pem)),
        Err(e) => Err(format!(
            "cannot read {} (Secret {secret}, key {SYSLOG_CA_KEY}, mounted by the operator): {e}",
            path.display()
        )),
    }
}

/// Follows the FileIntegrity `name` and (re)configures `syslog` from its `spec.alerts.syslog`
/// (removed: nothing more is sent). A CA that cannot be read leaves TLS unconfigured and is
/// retried at the next change of the FileIntegrity or every minute (which also picks up a
/// rotated Secret: the kubelet updates the mounted file). Relays the operator's remediations of
/// `node`'s containers from its `status.containerRemediations`.
pub async fn follow(
    client: Client,
    namespace: String,
    name: String,
    node: String,
    ca_dir: PathBuf,
    syslog: Syslog,
) {
    let fis: Api<FileIntegrity> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = Box::pin(watcher(fis, config).default_backoff().applied_objects());
    let mut latest: Option<SyslogAlert> = None;
    let mut remediations = Vec::new();
    let mut relay = RemediationRelay::default();
    let mut refresh = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            next = stream.try_next() => match next {
                Ok(Some(fi)) => {
                    remediations = fi
                        .status
                        .map(|s| s.container_remediations)
                        .unwrap_or_default();
                    latest = fi.spec.alerts.and_then(|a| a.syslog);
                }
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
        let ca = read_ca(s, &ca_dir).unwrap_or_else(|e| {
            tracing::warn!("syslog: {e}");
            None
        });
        let config = config_of(s, ca);
        let cluster = config.cluster.clone();
        syslog.configure(Some(config));
        for e in relay.events(&remediations, &node, &cluster) {
            tracing::info!(pod = %e.pod, message = %e.message, "syslog: operator remediation relayed");
            syslog.send(e);
        }
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
    fn the_ca_is_read_from_the_mounted_secret_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let alert = |ca: Option<&str>| -> SyslogAlert {
            serde_json::from_value(
                serde_json::json!({"host": "h", "protocol": "tls", "caSecret": ca}),
            )
            .unwrap()
        };
        assert_eq!(read_ca(&alert(None), dir.path()), Ok(None));
        let err = read_ca(&alert(Some("syslog-ca")), dir.path()).unwrap_err();
        assert!(err.contains("syslog-ca") && err.contains("ca.crt"), "{err}");
        std::fs::write(dir.path().join("ca.crt"), "").unwrap();
        let err = read_ca(&alert(Some("syslog-ca")), dir.path()).unwrap_err();
        assert!(err.contains("empty"), "{err}");
        std::fs::write(dir.path().join("ca.crt"), "-----BEGIN CERTIFICATE-----").unwrap();
        assert_eq!(
            read_ca(&alert(Some("syslog-ca")), dir.path()),
            Ok(Some(b"-----BEGIN CERTIFICATE-----".to_vec()))
        );
    }

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
