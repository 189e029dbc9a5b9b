//! Syslog alerts against a real rsyslog (Debian's `rsyslogd`, run in the foreground by each test
//! with its own configuration on free 127.0.0.1 ports): the agent's sender and line builder
//! deliver every event type over TCP (newline and octet-counting framing), UDP and TLS (a CA the
//! test makes), in RFC 3164 and RFC 5424, and rsyslog's own parse of each line (its properties,
//! `re_extract` of each `key=value`, and `mmpstrucdata` for the structured data) is written as
//! JSON by a template and compared field by field. A file named with a newline and
//! ` reason=forged` forges nothing; a stopped rsyslog gets the queued lines (and the dropped
//! count) after it restarts; heartbeats keep their cadence.
//!
//! Needs `rsyslogd`, `rsyslog-gnutls` and `openssl` (hack/ensure-tools.sh installs them); no
//! cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fim_agent::syslog::containers::{Subject, remediation_event};
use fim_agent::syslog::format::{self, Event, EventType, Format, Framing};
use fim_agent::syslog::metrics::SyslogMetrics;
use fim_agent::syslog::sender::{Config, Syslog, Transport};
use fim_agent::syslog::{Identity, dropped, heartbeat};
use k8s_openapi::jiff::Timestamp;
use kube_fim_e2e::rsyslog::{KEYS, Rsyslog, free_udp_port};
use serde_json::Value;

fn identity() -> Identity {
    Identity {
        node: "worker-1".into(),
        file_integrity: "worker-fileintegrity".into(),
        namespace: "kube-fim".into(),
        pod: "fim-agent-x7k2q".into(),
    }
}

fn config(port: u16, transport: Transport, framing: Framing, format: Format) -> Config {
    Config {
        host: "127.0.0.1".into(),
        port,
        transport,
        framing,
        format,
        // Long: only the first heartbeat (sent at start) arrives during the test.
        heartbeat: Duration::from_secs(3600),
        cluster: "e2e".into(),
        ca_pem: None,
    }
}

/// The file name meant to forge a field and a line.
const FORGERY: &[u8] =
    b"/etc/evil\n<28>Mar 31 10:46:19 h fim-agent[1]: x reason=forged \xe2\x80\xae=";

/// One event of each finding type (with hostile file names), the kube-fim types and a
/// container remediation.
fn events(now: Timestamp) -> Vec<Event> {
    let id = identity();
    let node = |kind, file: &[u8]| Event {
        kind,
        time: now,
        service: id.file_integrity.clone(),
        pod: String::new(),
        image: String::new(),
        namespace: id.namespace.clone(),
        cluster: "e2e".into(),
        message: "Check node worker-1".into(),
        file: file.to_vec(),
    };
    vec![
        node(EventType::Mismatch, b"/etc/passwd"),
        node(EventType::New, FORGERY),
        node(EventType::Deleted, b"/etc/a file with spaces \"quoted\" ]"),
        Event {
            message: "3 more findings not sent".into(),
            ..node(EventType::Truncated, b"")
        },
        dropped(2, &id, "e2e", now),
        // A container remediation (hostile names are unit-tested; pod names are DNS labels).
        remediation_event(
            &Subject {
                namespace: "shop".into(),
                pod: "web-6bf9c6f4dd-xbvsp".into(),
                container: "web".into(),
                image: "nginx:stable-alpine3.17".into(),
            },
            "Restart pod web-6bf9c6f4dd-xbvsp".into(),
            "/etc/nginx/nginx.conf",
            "e2e",
            now,
        ),
    ]
}

/// Every field of `line` as rsyslog parsed it is the escaped value of `e`.
fn assert_parsed(line: &Value, e: &Event, format: Format) {
    let ctx = format!("{format:?} {line:#}");
    assert_eq!(line["pri"], "28", "{ctx}");
    assert_eq!(line["hostname"], "worker-1", "{ctx}");
    assert_eq!(line["programname"], "fim-agent", "{ctx}");
    assert_eq!(line["procid"], std::process::id().to_string(), "{ctx}");
    let content = format::content(e);
    let expected = format::parse_content(&content);
    assert_eq!(expected.len(), 10);
    for (k, v) in &expected {
        assert_eq!(line["kv"][k.as_str()], v.as_str(), "{k} in {ctx}");
    }
    assert_eq!(
        format::unescape_value(line["kv"]["file"].as_str().unwrap()),
        e.file,
        "{ctx}"
    );
    assert_eq!(line["kv"]["reason"], e.kind.reason(), "{ctx}");
    assert_eq!(line["kv"]["event-type"], e.kind.code(), "{ctx}");
    // One field each: nothing in a value started another.
    let msg = format!(" {}", line["msg"].as_str().unwrap().trim_start());
    for k in KEYS {
        assert_eq!(msg.matches(&format!(" {k}=")).count(), 1, "{k} in {ctx}");
    }
    match format {
        Format::Rfc3164 => {
            assert_eq!(line["timereported"], format::bsd_time(e.time), "{ctx}");
        }
        Format::Rfc5424 => {
            assert_eq!(line["msgid"], e.kind.code(), "{ctx}");
            assert_eq!(line["app"], "fim-agent", "{ctx}");
            let sd = &line["rfc5424-sd"][format::SD_ID];
            for (k, v) in &expected {
                assert_eq!(sd[k.as_str()], v.as_str(), "SD {k} in {ctx}");
            }
        }
    }
}

async fn deliver(
    r: &Rsyslog,
    c: Config,
    format: Format,
) -> (SyslogMetrics, Vec<Event>, Vec<Value>) {
    let m = SyslogMetrics::new();
    let s = Syslog::start(identity(), 100, m.clone());
    s.configure(Some(c));
    let now = Timestamp::now();
    let evs = events(now);
    // The first heartbeat goes out at start: wait for it so the order is known.
    r.wait_for(1);
    for e in &evs {
        assert!(s.send(e.clone()));
    }
    let got = r.wait_for(1 + evs.len());
    assert_eq!(got.len(), 1 + evs.len(), "one line each: {got:#?}");
    assert_eq!(got[0]["kv"]["event-type"], "0004");
    let hb = heartbeat(&identity(), "e2e", now);
    for k in [
        "service",
        "pod",
        "image",
        "namespace",
        "cluster",
        "message",
        "file",
        "reason",
    ] {
        let want = format::parse_content(&format::content(&hb));
        let v = &want.iter().find(|(kk, _)| kk == k).unwrap().1;
        assert_eq!(got[0]["kv"][k], v.as_str(), "heartbeat {k}");
    }
    for (line, e) in got[1..].iter().zip(&evs) {
        assert_parsed(line, e, format);
    }
    (m, evs, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc3164_over_tcp_and_udp_every_field_parsed() {
    // TCP, newline framing (integrity-sum's default transport).
    let r = Rsyslog::start(None, None);
    let (m, _, _) = deliver(
        &r,
        config(r.tcp, Transport::Tcp, Framing::Newline, Format::Rfc3164),
        Format::Rfc3164,
    )
    .await;
    for t in EventType::ALL {
        assert_eq!(m.sent.with_label_values(&[t.code()]).get(), 1, "{t:?}");
    }
    assert_eq!(m.dropped.get(), 0);
    drop(r);

    // TCP, octet counting.
    let r = Rsyslog::start(None, None);
    deliver(
        &r,
        config(
            r.tcp,
            Transport::Tcp,
            Framing::OctetCounting,
            Format::Rfc3164,
        ),
        Format::Rfc3164,
    )
    .await;
    drop(r);

    // UDP.
    let udp = free_udp_port();
    let r = Rsyslog::start(None, Some(udp));
    deliver(
        &r,
        config(udp, Transport::Udp, Framing::Newline, Format::Rfc3164),
        Format::Rfc3164,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc5424_structured_data_parsed_by_mmpstrucdata() {
    let r = Rsyslog::start(None, None);
    deliver(
        &r,
        config(
            r.tcp,
            Transport::Tcp,
            Framing::OctetCounting,
            Format::Rfc5424,
        ),
        Format::Rfc5424,
    )
    .await;
}

/// A CA, and a server certificate for 127.0.0.1 it signed, made with openssl.
fn make_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=kube-fim test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_from_the_test() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_ca(pki.path());
    let r = Rsyslog::start(Some((&ca, &cert, &key)), None);
    let mut c = config(r.tcp, Transport::Tls, Framing::Newline, Format::Rfc5424);
    c.ca_pem = Some(std::fs::read(&ca).unwrap());
    deliver(&r, c.clone(), Format::Rfc5424).await;

    // Another CA is not trusted: nothing is delivered, the failures are counted.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = make_ca(other.path());
    let before = r.parsed().len();
    let m = SyslogMetrics::new();
    let s = Syslog::start(identity(), 10, m.clone());
    c.ca_pem = Some(std::fs::read(&other_ca).unwrap());
    s.configure(Some(c));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(m.errors.get() >= 2, "{}", m.errors.get());
    assert_eq!(r.parsed().len(), before);
    assert_eq!(m.sent.with_label_values(&["0004"]).get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_rsyslog_gets_the_queued_lines_and_the_dropped_count_after_restart() {
    let mut r = Rsyslog::start(None, None);
    let m = SyslogMetrics::new();
    let capacity = 5;
    let s = Syslog::start(identity(), capacity, m.clone());
    s.configure(Some(config(
        r.tcp,
        Transport::Tcp,
        Framing::OctetCounting,
        Format::Rfc3164,
    )));
    r.wait_for(1); // the heartbeat
    let now = Timestamp::now();
    let line = |i: usize| Event {
        file: format!("/etc/file-{i:02}").into_bytes(),
        ..events(now)[0].clone()
    };
    assert!(s.send(line(0)));
    r.wait_for(2);

    r.stop();
    // Sending never waits: the queue takes `capacity` (plus the one line the sender holds while
    // it reconnects) and the rest is dropped and counted.
    let started = Instant::now();
    let mut accepted = Vec::new();
    for i in 1..=12 {
        if s.send(line(i)) {
            accepted.push(i);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let refused = 12 - accepted.len();
    assert!(
        (capacity..=capacity + 1).contains(&accepted.len()),
        "{accepted:?}"
    );
    assert_eq!(m.dropped.get() as usize, refused);
    assert_eq!(r.parsed().len(), 2, "nothing arrives while rsyslog is down");

    r.run();
    let got = r.wait_for(2 + 1 + accepted.len());
    assert_eq!(got.len(), 2 + 1 + accepted.len(), "{got:#?}");
    assert_eq!(got[2]["kv"]["event-type"], "0006");
    assert_eq!(
        got[2]["kv"]["message"],
        format!("dropped {refused} lines: the syslog server was unreachable and the queue full")
    );
    let files: Vec<&str> = got[3..]
        .iter()
        .map(|l| l["kv"]["file"].as_str().unwrap())
        .collect();
    let want: Vec<String> = accepted
        .iter()
        .map(|i| format!("/etc/file-{i:02}"))
        .collect();
    assert_eq!(files, want, "queued lines, in order, none lost");
    assert_eq!(m.sent.with_label_values(&["0006"]).get(), 1);
    assert_eq!(
        m.sent.with_label_values(&["0001"]).get() as usize,
        1 + accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_their_cadence() {
    let r = Rsyslog::start(None, None);
    let s = Syslog::start(identity(), 10, SyslogMetrics::new());
    let mut c = config(r.tcp, Transport::Tcp, Framing::Newline, Format::Rfc3164);
    c.heartbeat = Duration::from_secs(1);
    s.configure(Some(c));
    let started = Instant::now();
    r.wait_for(1);
    tokio::time::sleep(Duration::from_millis(3500).saturating_sub(started.elapsed())).await;
    let got = r.parsed();
    // At 0, 1, 2 and 3 seconds.
    assert!((3..=5).contains(&got.len()), "{}", got.len());
    assert!(got.iter().all(|l| l["kv"]["event-type"] == "0004"));
    // Reported times one second apart (to the second).
    let secs: Vec<i64> = got
        .iter()
        .map(|l| {
            let t = l["kv"]["time"].as_str().unwrap();
            t[t.len() - 2..].parse::<i64>().unwrap()
        })
        .collect();
    for w in secs.windows(2) {
        let d = (w[1] - w[0]).rem_euclid(60);
        assert!((1..=2).contains(&d), "{secs:?}");
    }
}

fn entry(path: &[u8]) -> fim_engine::entry::Entry {
    use fim_engine::attrs::AttrSet;
    use fim_engine::entry::{Entry, FileType, Stat};
    Entry {
        path: path.into(),
        ftype: FileType::Regular,
        attrs: AttrSet::default(),
        stat: Stat::default(),
        link_target: None,
        xattrs: None,
        e2fsattrs: None,
        hashes: Vec::new(),
        error: None,
    }
}

/// The daemon's hook: a scan's findings become one line each, once, capped per scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_findings_are_sent_once_and_capped() {
    use fim_agent::daemon::findings::Findings;
    use fim_agent::syslog::node::NodeSink;
    use fim_engine::scan::Outcome;

    let r = Rsyslog::start(None, None);
    let m = SyslogMetrics::new();
    let s = Syslog::start(identity(), 5000, m.clone());
    let mut sink = NodeSink::new(s.clone(), identity());
    // Not configured yet: nothing queued, nothing remembered.
    let first = Findings::from_outcome(&Outcome {
        added: vec![entry(FORGERY)],
        removed: vec![entry(b"/etc/old")],
        ..Outcome::default()
    });
    sink.findings(&first);
    s.configure(Some(config(
        r.tcp,
        Transport::Tcp,
        Framing::OctetCounting,
        Format::Rfc3164,
    )));
    r.wait_for(1); // heartbeat
    sink.findings(&first);
    sink.findings(&first); // the next periodic check: nothing new
    let got = r.wait_for(3);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(got[1]["kv"]["event-type"], "0002");
    assert_eq!(
        format::unescape_value(got[1]["kv"]["file"].as_str().unwrap()),
        FORGERY
    );
    assert_eq!(got[1]["kv"]["service"], "worker-fileintegrity");
    assert_eq!(got[1]["kv"]["message"], "Check node worker-1");
    assert_eq!(got[2]["kv"]["event-type"], "0003");
    assert_eq!(got[2]["kv"]["file"], "/etc/old");

    // 1,005 new files in one scan: 1,000 lines and one counting the rest.
    let many = Findings::from_outcome(&Outcome {
        added: (0..1005)
            .map(|i| entry(format!("/usr/bin/f{i:04}").as_bytes()))
            .collect(),
        ..Outcome::default()
    });
    sink.findings(&many);
    let got = r.wait_for(3 + 1001);
    assert_eq!(got.len(), 3 + 1001);
    assert!(got[3..1003].iter().all(|l| l["kv"]["event-type"] == "0002"));
    assert_eq!(got[1003]["kv"]["event-type"], "0005");
    assert!(
        got[1003]["kv"]["message"]
            .as_str()
            .unwrap()
            .starts_with("5 more findings not sent"),
        "{:#}",
        got[1003]
    );
    assert_eq!(m.sent.with_label_values(&["0002"]).get(), 1001);
}
