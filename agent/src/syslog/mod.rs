//! Syslog alerts (`spec.alerts.syslog`): integrity-sum's lines (seed 000) for each finding, and
//! heartbeats, sent by a background task through a bounded queue that never blocks scanning.
//!
//! [`format`] builds lines (pure), [`NodeAlerts`] and [`containers`] decide which findings of a
//! scan or a container check become lines (pure), [`sender`] delivers them.

pub mod containers;
pub mod format;
pub mod metrics;
pub mod node;
pub mod sender;

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use format::{Event, EventType};

/// At most this many finding lines per scan; then one [`EventType::Truncated`] line.
pub const MAX_LINES_PER_SCAN: usize = 1000;

/// What node findings and heartbeats put in their fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The node (HOSTNAME of every line).
    pub node: String,
    /// The FileIntegrity (`service=` of node findings).
    pub file_integrity: String,
    /// Its namespace, the agent's (`namespace=`).
    pub namespace: String,
    /// The agent pod (`pod=` of heartbeats).
    pub pod: String,
}

/// Remembers which findings were already sent, so each one is sent once (again after it went away
/// and came back, or changed differently), not at every periodic check.
#[derive(Debug, Default)]
pub struct NodeAlerts {
    sent: BTreeMap<Box<[u8]>, String>,
}

/// integrity-sum's type of a finding as [`crate::daemon::findings::Findings::fingerprint`]
/// describes it (`added`, `removed`, `changed <summary>`).
fn kind_of(what: &str) -> EventType {
    match what {
        "added" => EventType::New,
        "removed" => EventType::Deleted,
        _ => EventType::Mismatch,
    }
}

impl NodeAlerts {
    /// Lines for the findings of a scan (`fingerprint`, in path order) not sent before: at most
    /// `cap`, then one line counting the others. Every finding counts as sent afterwards.
    pub fn events(
        &mut self,
        fingerprint: &[(Box<[u8]>, String)],
        id: &Identity,
        cluster: &str,
        now: Timestamp,
        cap: usize,
    ) -> Vec<Event> {
        let fresh = fingerprint
            .iter()
            .filter(|(path, what)| self.sent.get(path) != Some(what))
            .map(|(path, what)| node_event(kind_of(what), path, id, cluster, now));
        let out = cap_lines(fresh, cap, |more| {
            let mut e = node_event(EventType::Truncated, b"", id, cluster, now);
            e.message = format!(
                "{more} more findings not sent (at most {cap} lines per scan): see \
                 FileIntegrityNodeStatus {}-{}",
                id.file_integrity, id.node
            );
            e
        });
        self.sent = fingerprint.iter().cloned().collect();
        out
    }
}

/// The first `cap` lines of `lines`, then, when there were more, the line `more` makes of
/// their number.
pub fn cap_lines(
    lines: impl Iterator<Item = Event>,
    cap: usize,
    more: impl FnOnce(usize) -> Event,
) -> Vec<Event> {
    let mut out = Vec::new();
    let mut left = 0usize;
    for e in lines {
        if out.len() < cap {
            out.push(e);
        } else {
            left += 1;
        }
    }
    if left > 0 {
        out.push(more(left));
    }
    out
}

/// A node finding: `service=<FileIntegrity> pod= image= namespace=<its namespace>`; the node is
/// the HOSTNAME and is named in `message=`.
fn node_event(kind: EventType, path: &[u8], id: &Identity, cluster: &str, now: Timestamp) -> Event {
    Event {
        kind,
        time: now,
        service: id.file_integrity.clone(),
        pod: String::new(),
        image: String::new(),
        namespace: id.namespace.clone(),
        cluster: cluster.to_owned(),
        message: format!("Check node {}", id.node),
        file: path.to_vec(),
    }
}

/// integrity-sum's heartbeat: `service=fim-agent pod=<agent pod> message=health check`.
pub fn heartbeat(id: &Identity, cluster: &str, now: Timestamp) -> Event {
    Event {
        kind: EventType::Heartbeat,
        time: now,
        service: format::APP.to_owned(),
        pod: id.pod.clone(),
        image: String::new(),
        namespace: id.namespace.clone(),
        cluster: cluster.to_owned(),
        message: "health check".to_owned(),
        file: Vec::new(),
    }
}

/// Says that `n` lines were dropped while the server was unreachable and the queue full.
pub fn dropped(n: u64, id: &Identity, cluster: &str, now: Timestamp) -> Event {
    Event {
        kind: EventType::Dropped,
        message: format!("dropped {n} lines: the syslog server was unreachable and the queue full"),
        ..heartbeat(id, cluster, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            node: "worker-1".into(),
            file_integrity: "worker-fileintegrity".into(),
            namespace: "kube-fim".into(),
            pod: "fim-agent-abcde".into(),
        }
    }

    fn fp(items: &[(&str, &str)]) -> Vec<(Box<[u8]>, String)> {
        items
            .iter()
            .map(|(p, w)| (p.as_bytes().into(), (*w).to_owned()))
            .collect()
    }

    #[test]
    fn each_finding_is_sent_once_and_again_when_it_changes() {
        let mut a = NodeAlerts::default();
        let now = Timestamp::UNIX_EPOCH;
        let first = fp(&[
            ("/etc/a", "added"),
            ("/etc/b", "changed sha256"),
            ("/etc/c", "removed"),
        ]);
        let lines = a.events(&first, &id(), "prod", now, 10);
        let got: Vec<_> = lines.iter().map(|e| (e.kind, e.file.clone())).collect();
        assert_eq!(
            got,
            [
                (EventType::New, b"/etc/a".to_vec()),
                (EventType::Mismatch, b"/etc/b".to_vec()),
                (EventType::Deleted, b"/etc/c".to_vec())
            ]
        );
        let e = &lines[0];
        assert_eq!(
            (
                e.service.as_str(),
                e.pod.as_str(),
                e.image.as_str(),
                e.namespace.as_str(),
                e.cluster.as_str(),
                e.message.as_str()
            ),
            (
                "worker-fileintegrity",
                "",
                "",
                "kube-fim",
                "prod",
                "Check node worker-1"
            )
        );
        // The next periodic check finds the same: nothing new to say.
        assert!(a.events(&first, &id(), "prod", now, 10).is_empty());
        // /etc/b changed further, /etc/a went away, /etc/d appeared.
        let second = fp(&[
            ("/etc/b", "changed sha256 perm"),
            ("/etc/c", "removed"),
            ("/etc/d", "added"),
        ]);
        let files: Vec<_> = a
            .events(&second, &id(), "prod", now, 10)
            .into_iter()
            .map(|e| e.file)
            .collect();
        assert_eq!(files, [b"/etc/b".to_vec(), b"/etc/d".to_vec()]);
        // /etc/a reappears: sent again.
        let third = fp(&[("/etc/a", "added")]);
        assert_eq!(a.events(&third, &id(), "prod", now, 10).len(), 1);
    }

    #[test]
    fn past_the_cap_one_line_counts_the_rest() {
        let mut a = NodeAlerts::default();
        let items: Vec<(String, &str)> =
            (0..1005).map(|i| (format!("/f{i:05}"), "added")).collect();
        let refs: Vec<(&str, &str)> = items.iter().map(|(p, w)| (p.as_str(), *w)).collect();
        let lines = a.events(
            &fp(&refs),
            &id(),
            "c",
            Timestamp::UNIX_EPOCH,
            MAX_LINES_PER_SCAN,
        );
        assert_eq!(lines.len(), 1001);
        assert!(lines[..1000].iter().all(|e| e.kind == EventType::New));
        let last = &lines[1000];
        assert_eq!(last.kind, EventType::Truncated);
        assert!(
            last.message
                .starts_with("5 more findings not sent (at most 1000 lines per scan)"),
            "{}",
            last.message
        );
        // They count as sent: the next scan does not flood either.
        assert!(
            a.events(&fp(&refs), &id(), "c", Timestamp::UNIX_EPOCH, 1000)
                .is_empty()
        );
    }

    #[test]
    fn heartbeat_and_dropped_lines() {
        let hb = heartbeat(&id(), "prod", Timestamp::UNIX_EPOCH);
        let o = format::Origin {
            hostname: "worker-1".into(),
            pid: 7,
        };
        assert_eq!(
            format::rfc3164(&o, &hb),
            "<28>Jan  1 00:00:00 worker-1 fim-agent[7]: time=Jan  1 00:00:00 event-type=0004 \
             service=fim-agent pod=fim-agent-abcde image= namespace=kube-fim cluster=prod \
             message=health check file= reason=heartbeat event"
        );
        let d = dropped(12, &id(), "prod", Timestamp::UNIX_EPOCH);
        assert_eq!(d.kind.code(), "0006");
        assert!(d.message.starts_with("dropped 12 lines"));
    }
}
