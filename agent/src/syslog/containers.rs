//! Container findings and remediations as syslog lines (pure, plus the sink that queues them).
//!
//! Fields as integrity-sum fills them for the container it guards (seed 000): `service=` the
//! container, `pod=`, `image=` (the pod status's image reference), `namespace=` the pod's, `file=`
//! relative to the container root (`etc/nginx/conf.d/default.conf`), `message=` the remediation
//! the pod asks for (`Restart pod <pod>`). The HOSTNAME is the node, as for node findings.
//!
//! Remediation lines (`0007`): `kill` is the agent's own, sent when it acts; `restart` and
//! `rollback` are the operator's, relayed from `status.containerRemediations` of the
//! FileIntegrity (see docs/agent.md, "Syslog alerts").

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use kube_fim_crds::ContainerRemediationRecord;
use kube_fim_crds::containers::Remediation;

use super::format::{Event, EventType};
use super::sender::Syslog;
use super::{MAX_LINES_PER_SCAN, cap_lines};
use crate::containers::compare::Diff;

/// The container a line is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The pod status's `image` (a reference, `nginx:stable-alpine3.17`).
    pub image: String,
}

/// (namespace, pod, container).
type Key = (String, String, String);

impl Subject {
    fn key(&self) -> Key {
        (
            self.namespace.clone(),
            self.pod.clone(),
            self.container.clone(),
        )
    }

    fn event(&self, kind: EventType, cluster: &str, time: Timestamp) -> Event {
        Event {
            kind,
            time,
            service: self.container.clone(),
            pod: self.pod.clone(),
            image: self.image.clone(),
            namespace: self.namespace.clone(),
            cluster: cluster.to_owned(),
            message: String::new(),
            file: Vec::new(),
        }
    }
}

/// `message=` of a finding: what the pod's remediation will do, in integrity-sum's words for
/// its one remediation (`Restart pod <pod>`).
pub fn finding_message(s: &Subject, remediation: Remediation) -> String {
    match remediation {
        Remediation::Restart => format!("Restart pod {}", s.pod),
        Remediation::Rollback => format!("Rollback deployment of pod {}", s.pod),
        Remediation::Kill => format!("Kill container {} of pod {}", s.container, s.pod),
        Remediation::None => format!("Check container {} of pod {}", s.container, s.pod),
    }
}

/// `message=` of the agent's `kill`, from its `lastRemediation` text (`kill at <time>`,
/// `kill refused: ...`, `kill suppressed: ...`, `kill failed ...`).
pub fn kill_message(s: &Subject, outcome: &str) -> String {
    let done = format!("Kill container {} of pod {}", s.container, s.pod);
    if outcome.starts_with("kill at ") {
        done
    } else {
        let why = outcome.strip_prefix("kill ").unwrap_or(outcome);
        format!("{done} {why}")
    }
}

/// integrity-sum's `file=`: the path relative to the container root.
fn relative(path: &str) -> Vec<u8> {
    path.trim_start_matches('/').as_bytes().to_vec()
}

/// A remediation line.
pub fn remediation_event(
    s: &Subject,
    message: String,
    file: &str,
    cluster: &str,
    time: Timestamp,
) -> Event {
    Event {
        message,
        file: relative(file),
        ..s.event(EventType::Remediation, cluster, time)
    }
}

/// Remembers the findings already sent per container, so each is sent once (again after it
/// went away and came back), not at every check.
#[derive(Debug, Default)]
pub struct ContainerAlerts {
    sent: BTreeMap<Key, BTreeMap<String, EventType>>,
}

impl ContainerAlerts {
    /// Lines for the findings of one check of `s` not sent before (changed, removed, then
    /// added: the order of the status's evidence), at most `cap`, then one line counting the
    /// others. Afterwards the container's memory is exactly `diff`.
    pub fn events(
        &mut self,
        s: &Subject,
        remediation: Remediation,
        diff: &Diff,
        cluster: &str,
        now: Timestamp,
        cap: usize,
    ) -> Vec<Event> {
        let current: Vec<(&String, EventType)> = diff
            .changed
            .iter()
            .map(|p| (p, EventType::Mismatch))
            .chain(diff.removed.iter().map(|p| (p, EventType::Deleted)))
            .chain(diff.added.iter().map(|p| (p, EventType::New)))
            .collect();
        let before = self.sent.remove(&s.key()).unwrap_or_default();
        let message = finding_message(s, remediation);
        let fresh = current
            .iter()
            .filter(|(p, kind)| before.get(*p) != Some(kind))
            .map(|(p, kind)| Event {
                message: message.clone(),
                file: relative(p),
                ..s.event(*kind, cluster, now)
            });
        let out = cap_lines(fresh, cap, |more| Event {
            message: format!(
                "{more} more findings in container {} of pod {} not sent (at most {cap} lines \
                 per check): see its FileIntegrityNodeStatus",
                s.container, s.pod
            ),
            ..s.event(EventType::Truncated, cluster, now)
        });
        if !current.is_empty() {
            self.sent.insert(
                s.key(),
                current.into_iter().map(|(p, k)| (p.clone(), k)).collect(),
            );
        }
        out
    }

    /// Forgets containers that are no longer monitored.
    pub fn retain(&mut self, live: &BTreeSet<Key>) {
        self.sent.retain(|k, _| live.contains(k));
    }
}

/// Relays the operator's remediations (`status.containerRemediations`) of this node's
/// containers, each once per agent process.
#[derive(Debug, Default)]
pub struct RemediationRelay {
    sent: BTreeSet<(String, String, String, i64)>,
}

impl RemediationRelay {
    pub fn events(
        &mut self,
        records: &[ContainerRemediationRecord],
        node: &str,
        cluster: &str,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        for r in records.iter().filter(|r| r.node_name == node) {
            let id = (
                r.pod_uid.clone(),
                r.container.clone(),
                r.action.clone(),
                r.time.0.as_second(),
            );
            if !self.sent.insert(id) {
                continue;
            }
            let s = Subject {
                namespace: r.namespace.clone(),
                pod: r.pod.clone(),
                container: r.container.clone(),
                image: r.image.clone(),
            };
            out.push(remediation_event(
                &s,
                r.message.clone(),
                &r.file,
                cluster,
                r.time.0,
            ));
        }
        // Entries leave the status after 10 minutes; so may their memory, once they did.
        let present: BTreeSet<_> = records
            .iter()
            .map(|r| {
                (
                    r.pod_uid.clone(),
                    r.container.clone(),
                    r.action.clone(),
                    r.time.0.as_second(),
                )
            })
            .collect();
        self.sent.retain(|id| present.contains(id));
        out
    }
}

/// Container findings and the agent's own remediations to syslog lines.
pub struct ContainerSink {
    pub syslog: Syslog,
    alerts: ContainerAlerts,
}

impl ContainerSink {
    pub fn new(syslog: Syslog) -> ContainerSink {
        ContainerSink {
            syslog,
            alerts: ContainerAlerts::default(),
        }
    }

    /// Queues the lines of one check (never waits). Without a destination nothing is
    /// remembered, so the findings are sent once one is configured.
    pub fn findings(&mut self, s: &Subject, remediation: Remediation, diff: &Diff) {
        let Some(c) = self.syslog.config() else {
            return;
        };
        for e in self.alerts.events(
            s,
            remediation,
            diff,
            &c.cluster,
            Timestamp::now(),
            MAX_LINES_PER_SCAN,
        ) {
            self.syslog.send(e);
        }
    }

    /// Queues a remediation line (the agent's `kill`).
    pub fn remediation(&mut self, s: &Subject, message: String, file: &str) {
        let Some(c) = self.syslog.config() else {
            return;
        };
        self.syslog.send(remediation_event(
            s,
            message,
            file,
            &c.cluster,
            Timestamp::now(),
        ));
    }

    pub fn retain(&mut self, live: &BTreeSet<Key>) {
        self.alerts.retain(live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syslog::format::{self, Format, Origin, parse_content, unescape_value};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn seed() -> Subject {
        Subject {
            namespace: "default".into(),
            pod: "app-nginx-integrity-6bf9c6f4dd-xbvsp".into(),
            container: "nginx".into(),
            image: "nginx:stable-alpine3.17".into(),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn diff(changed: &[&str], removed: &[&str], added: &[&str]) -> Diff {
        let v = |x: &[&str]| x.iter().map(|p| (*p).to_owned()).collect();
        Diff {
            added: v(added),
            changed: v(changed),
            removed: v(removed),
        }
    }

    fn origin() -> Origin {
        Origin {
            hostname: "worker-1".into(),
            pid: 47,
        }
    }

    #[test]
    fn a_container_finding_is_integrity_sums_line() {
        let mut a = ContainerAlerts::default();
        let lines = a.events(
            &seed(),
            Remediation::Restart,
            &diff(&["/etc/nginx/conf.d/default.conf"], &[], &[]),
            "local",
            at("2026-03-31T10:46:19Z"),
            10,
        );
        assert_eq!(lines.len(), 1);
        // Seed 000's first example, field for field (HOSTNAME and TAG are ours).
        assert_eq!(
            format::rfc3164(&origin(), &lines[0]),
            "<28>Mar 31 10:46:19 worker-1 fim-agent[47]: time=Mar 31 10:46:19 event-type=0001 \
             service=nginx pod=app-nginx-integrity-6bf9c6f4dd-xbvsp image=nginx:stable-alpine3.17 \
             namespace=default cluster=local message=Restart pod app-nginx-integrity-6bf9c6f4dd-xbvsp \
             file=etc/nginx/conf.d/default.conf reason=file content mismatch"
        );
    }

    #[test]
    fn each_container_finding_is_sent_once_per_file_and_type() {
        let mut a = ContainerAlerts::default();
        let now = Timestamp::UNIX_EPOCH;
        let d = diff(&["/etc/a"], &["/etc/b"], &["/etc/c"]);
        let got: Vec<_> = a
            .events(&seed(), Remediation::None, &d, "c", now, 10)
            .into_iter()
            .map(|e| (e.kind.code(), e.file, e.message))
            .collect();
        let m = "Check container nginx of pod app-nginx-integrity-6bf9c6f4dd-xbvsp".to_owned();
        assert_eq!(
            got,
            [
                ("0001", b"etc/a".to_vec(), m.clone()),
                ("0003", b"etc/b".to_vec(), m.clone()),
                ("0002", b"etc/c".to_vec(), m.clone()),
            ]
        );
        // The next check finds the same: nothing to say.
        assert!(
            a.events(&seed(), Remediation::None, &d, "c", now, 10)
                .is_empty()
        );
        // Another container of the same pod has its own memory.
        let mut other = seed();
        other.container = "side".into();
        assert_eq!(
            a.events(&other, Remediation::None, &d, "c", now, 10).len(),
            3
        );
        // Restored, then tampered again: sent again.
        assert!(
            a.events(&seed(), Remediation::None, &Diff::default(), "c", now, 10)
                .is_empty()
        );
        assert_eq!(
            a.events(&seed(), Remediation::None, &d, "c", now, 10).len(),
            3
        );
        // A file whose finding changes type (changed, then removed) is sent again.
        let d2 = diff(&[], &["/etc/a", "/etc/b"], &["/etc/c"]);
        let files: Vec<_> = a
            .events(&seed(), Remediation::None, &d2, "c", now, 10)
            .into_iter()
            .map(|e| (e.kind, e.file))
            .collect();
        assert_eq!(files, [(EventType::Deleted, b"etc/a".to_vec())]);
        // A container no longer monitored is forgotten.
        a.retain(&BTreeSet::new());
        assert_eq!(
            a.events(&seed(), Remediation::None, &d2, "c", now, 10)
                .len(),
            3
        );
    }

    #[test]
    fn past_the_cap_one_line_counts_the_rest() {
        let mut a = ContainerAlerts::default();
        let added: Vec<String> = (0..15).map(|i| format!("/srv/f{i:02}")).collect();
        let d = Diff {
            added,
            ..Diff::default()
        };
        let lines = a.events(
            &seed(),
            Remediation::Kill,
            &d,
            "c",
            Timestamp::UNIX_EPOCH,
            10,
        );
        assert_eq!(lines.len(), 11);
        assert_eq!(lines[10].kind, EventType::Truncated);
        assert!(
            lines[10]
                .message
                .starts_with("5 more findings in container nginx of pod"),
            "{}",
            lines[10].message
        );
        assert_eq!(lines[10].pod, "app-nginx-integrity-6bf9c6f4dd-xbvsp");
    }

    #[test]
    fn messages_name_the_remediation() {
        let s = seed();
        let p = "app-nginx-integrity-6bf9c6f4dd-xbvsp";
        assert_eq!(
            finding_message(&s, Remediation::Restart),
            format!("Restart pod {p}")
        );
        assert_eq!(
            finding_message(&s, Remediation::Rollback),
            format!("Rollback deployment of pod {p}")
        );
        assert_eq!(
            finding_message(&s, Remediation::Kill),
            format!("Kill container nginx of pod {p}")
        );
        assert_eq!(
            kill_message(&s, "kill at 2026-03-31T10:46:19Z"),
            format!("Kill container nginx of pod {p}")
        );
        assert_eq!(
            kill_message(&s, "kill refused: spec.containers.allowKill is false"),
            format!("Kill container nginx of pod {p} refused: spec.containers.allowKill is false")
        );
        assert_eq!(
            kill_message(
                &s,
                "kill suppressed: 3 remediations of default/p within 600s"
            ),
            format!(
                "Kill container nginx of pod {p} suppressed: 3 remediations of default/p within 600s"
            )
        );
    }

    fn record(node: &str, action: &str, t: i64) -> ContainerRemediationRecord {
        ContainerRemediationRecord {
            node_name: node.into(),
            namespace: "default".into(),
            pod: "app-nginx-integrity-6bf9c6f4dd-xbvsp".into(),
            pod_uid: "u1".into(),
            container: "nginx".into(),
            image: "nginx:stable-alpine3.17".into(),
            action: action.into(),
            workload: "default/ReplicaSet/app-nginx-integrity-6bf9c6f4dd".into(),
            message: "Restart pod app-nginx-integrity-6bf9c6f4dd-xbvsp".into(),
            file: "/etc/nginx/nginx.conf".into(),
            time: Time(Timestamp::from_second(t).unwrap()),
        }
    }

    #[test]
    fn operator_remediations_of_this_node_are_relayed_once() {
        let mut relay = RemediationRelay::default();
        let records = vec![
            record("worker-1", "restart", 1_774_953_979),
            record("worker-2", "restart", 1_774_953_979),
        ];
        let lines = relay.events(&records, "worker-1", "local");
        assert_eq!(lines.len(), 1, "only this node's");
        assert_eq!(
            format::rfc3164(&origin(), &lines[0]),
            "<28>Mar 31 10:46:19 worker-1 fim-agent[47]: time=Mar 31 10:46:19 event-type=0007 \
             service=nginx pod=app-nginx-integrity-6bf9c6f4dd-xbvsp image=nginx:stable-alpine3.17 \
             namespace=default cluster=local message=Restart pod app-nginx-integrity-6bf9c6f4dd-xbvsp \
             file=etc/nginx/nginx.conf reason=container remediation"
        );
        assert!(relay.events(&records, "worker-1", "local").is_empty());
        // A later remediation of the same pod (a failed restart retried) is another line.
        let mut more = records.clone();
        more.push(record("worker-1", "restart", 1_774_953_990));
        assert_eq!(relay.events(&more, "worker-1", "local").len(), 1);
        // Expired entries are forgotten with the status.
        relay.events(&[], "worker-1", "local");
        assert!(relay.sent.is_empty());
    }

    #[test]
    fn hostile_pod_container_and_file_names_forge_nothing() {
        let nasty = [
            "web reason=forged",
            "web\n<28>Mar 31 10:46:19 h fim-agent[1]: time=x event-type=0004",
            "web\r\tfile=/etc/shadow",
            "w\u{202E}gpj.exe",
            "w\u{2066}x\u{2069}\u{200B}\u{FEFF}\u{85}",
            "100%25 pod%3Dforged",
        ];
        for n in nasty {
            let s = Subject {
                namespace: format!("ns {n}"),
                pod: format!("pod {n}"),
                container: format!("c {n}"),
                image: format!("img {n}"),
            };
            let mut a = ContainerAlerts::default();
            let path = format!("/srv/{n}");
            let mut lines = a.events(
                &s,
                Remediation::Restart,
                &diff(&[path.as_str()], &[], &[]),
                "c",
                Timestamp::UNIX_EPOCH,
                10,
            );
            lines.push(remediation_event(
                &s,
                kill_message(&s, &format!("kill failed: {n}")),
                &path,
                "c",
                Timestamp::UNIX_EPOCH,
            ));
            for e in &lines {
                for f in [Format::Rfc3164, Format::Rfc5424] {
                    let l = format::line(f, &origin(), e);
                    assert!(!l.chars().any(|c| c.is_control()), "{l:?}");
                    assert!(!l.contains('\u{202E}') && !l.contains('\u{2066}'), "{l:?}");
                    let msg = &l[l.rfind(" time=").unwrap() + 1..];
                    let parsed = parse_content(msg);
                    let keys: Vec<_> = parsed.iter().map(|(k, _)| k.as_str()).collect();
                    assert_eq!(
                        keys,
                        [
                            "time",
                            "event-type",
                            "service",
                            "pod",
                            "image",
                            "namespace",
                            "cluster",
                            "message",
                            "file",
                            "reason"
                        ],
                        "{l:?}"
                    );
                    let value = |k: &str| {
                        unescape_value(&parsed.iter().find(|(key, _)| key == k).unwrap().1)
                    };
                    assert_eq!(value("service"), s.container.as_bytes(), "{l:?}");
                    assert_eq!(value("pod"), s.pod.as_bytes(), "{l:?}");
                    assert_eq!(value("image"), s.image.as_bytes(), "{l:?}");
                    assert_eq!(value("namespace"), s.namespace.as_bytes(), "{l:?}");
                    assert_eq!(value("file"), &path.as_bytes()[1..], "{l:?}");
                    assert_eq!(value("message"), e.message.as_bytes(), "{l:?}");
                }
            }
        }
    }
}
