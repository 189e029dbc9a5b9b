//! Syslog lines, built without I/O: integrity-sum's RFC 3164 line (seed 000) and the same
//! fields as RFC 5424 structured data, plus the transport framings.
//!
//! Every value is escaped by [`escape_value`] so that nothing taken from the monitored tree (a
//! file name can hold spaces, `=`, newlines, control and bidi characters, invalid UTF-8) can end a
//! line or start a field of its own.

use std::fmt::Write as _;

use k8s_openapi::jiff::{Timestamp, Unit};

/// LOG_DAEMON (3) * 8 + LOG_WARNING (4), as integrity-sum.
pub const PRI: u8 = 28;
/// The APP-NAME / TAG of every line.
pub const APP: &str = "fim-agent";
/// SD-ID of the RFC 5424 structured data: `name@PEN`, with the documentation PEN of RFC 5612
/// (kube-fim has no enterprise number of its own).
pub const SD_ID: &str = "fim@32473";

/// `event-type=`: integrity-sum's four codes (its code writes `0001`, not the README's `00001`)
/// and two of ours for lines about the alerts themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// 0001, a file differs from the baseline.
    Mismatch,
    /// 0002, a file not in the baseline.
    New,
    /// 0003, a baseline file is gone.
    Deleted,
    /// 0004, the agent is alive.
    Heartbeat,
    /// 0005 (kube-fim): more findings than the per-scan cap; how many were not sent.
    Truncated,
    /// 0006 (kube-fim): lines dropped because the queue was full while the server was away.
    Dropped,
    /// 0007 (kube-fim): a tampered container was remediated (restart, rollback, kill), or the
    /// remediation failed, was refused or suppressed: `message=` says which.
    Remediation,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::Mismatch,
        EventType::New,
        EventType::Deleted,
        EventType::Heartbeat,
        EventType::Truncated,
        EventType::Dropped,
        EventType::Remediation,
    ];

    pub const fn code(self) -> &'static str {
        match self {
            EventType::Mismatch => "0001",
            EventType::New => "0002",
            EventType::Deleted => "0003",
            EventType::Heartbeat => "0004",
            EventType::Truncated => "0005",
            EventType::Dropped => "0006",
            EventType::Remediation => "0007",
        }
    }

    /// `reason=`, integrity-sum's words for its four types.
    pub const fn reason(self) -> &'static str {
        match self {
            EventType::Mismatch => "file content mismatch",
            EventType::New => "new file found",
            EventType::Deleted => "file deleted",
            EventType::Heartbeat => "heartbeat event",
            EventType::Truncated => "findings not sent",
            EventType::Dropped => "alerts dropped",
            EventType::Remediation => "container remediation",
        }
    }
}

/// One line's fields (the `key=value` part), values unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventType,
    pub time: Timestamp,
    pub service: String,
    pub pod: String,
    pub image: String,
    pub namespace: String,
    pub cluster: String,
    pub message: String,
    /// Node paths are bytes, not necessarily UTF-8.
    pub file: Vec<u8>,
}

/// Who sends: HOSTNAME and the pid of `TAG[pid]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub hostname: String,
    pub pid: u32,
}

/// Syslog message format (`spec.alerts.syslog.format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Rfc3164,
    Rfc5424,
}

/// How messages are delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// RFC 6587 / RFC 5425: `LEN SP MSG`.
    OctetCounting,
    /// RFC 6587 non-transparent framing: `MSG LF` (what integrity-sum's Go client sends).
    Newline,
    /// One message per datagram (UDP).
    Datagram,
}

/// `Jan _2 15:04:05` (Go layout; the day is space-padded), in UTC.
pub fn bsd_time(t: Timestamp) -> String {
    t.strftime("%b %e %H:%M:%S").to_string()
}

/// RFC 3339 in UTC with at most 6 fractional digits (RFC 5424's TIMESTAMP).
pub fn rfc3339_time(t: Timestamp) -> String {
    let rounded = t.round(Unit::Microsecond).unwrap_or(t);
    rounded.to_string()
}

/// Whether a character is a bidi control or an invisible formatting character: shown, they
/// reorder or hide what surrounds them.
fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}'
        | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Percent-encodes what could forge a field or a line: `%` itself, `=`, C0 and C1 controls
/// (newline included), DEL, bidi and invisible formatting characters, and bytes that are not
/// UTF-8. Spaces stay (integrity-sum's values contain spaces: `reason=file content mismatch`);
/// without a `=` a space cannot start a field. Decoding is plain percent-decoding to bytes.
pub fn escape_value(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' || c == '=' || c.is_control() || is_format_char(c) {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Inverse of [`escape_value`] (for tests and for documentation of the scheme).
pub fn unescape_value(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// HOSTNAME as both RFCs accept it: printable ASCII without spaces (node names already are).
fn hostname(h: &str) -> String {
    let mut s: String = h
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '-' })
        .take(255)
        .collect();
    if s.is_empty() {
        s.push('-');
    }
    s
}

/// The fields in integrity-sum's order, escaped.
fn fields(e: &Event) -> [(&'static str, String); 10] {
    let v = |s: &str| escape_value(s.as_bytes());
    [
        ("time", bsd_time(e.time)),
        ("event-type", e.kind.code().to_owned()),
        ("service", v(&e.service)),
        ("pod", v(&e.pod)),
        ("image", v(&e.image)),
        ("namespace", v(&e.namespace)),
        ("cluster", v(&e.cluster)),
        ("message", v(&e.message)),
        ("file", escape_value(&e.file)),
        ("reason", v(e.kind.reason())),
    ]
}

/// `time=... event-type=... ... reason=...`, the MSG of both formats.
pub fn content(e: &Event) -> String {
    let mut out = String::new();
    for (i, (k, v)) in fields(e).iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// `<28>Mar 31 10:46:19 HOSTNAME fim-agent[PID]: time=... reason=...` (seed 000).
pub fn rfc3164(origin: &Origin, e: &Event) -> String {
    format!(
        "<{PRI}>{} {} {APP}[{}]: {}",
        bsd_time(e.time),
        hostname(&origin.hostname),
        origin.pid,
        content(e)
    )
}

/// Escapes an SD-PARAM value (RFC 5424 section 6.3.3: `"`, `\` and `]`).
fn sd_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `<28>1 TIMESTAMP HOSTNAME fim-agent PID 000N [fim@32473 time="..." ...] time=... reason=...`:
/// the same fields as structured data (MSGID is the event type) and, as MSG, the RFC 3164
/// content so that one parser reads both.
pub fn rfc5424(origin: &Origin, e: &Event) -> String {
    let mut sd = format!("[{SD_ID}");
    for (k, v) in fields(e) {
        let _ = write!(sd, " {k}=\"{}\"", sd_escape(&v));
    }
    sd.push(']');
    format!(
        "<{PRI}>1 {} {} {APP} {} {} {sd} {}",
        rfc3339_time(e.time),
        hostname(&origin.hostname),
        origin.pid,
        e.kind.code(),
        content(e)
    )
}

/// The line of `e` in `format`.
pub fn line(format: Format, origin: &Origin, e: &Event) -> String {
    match format {
        Format::Rfc3164 => rfc3164(origin, e),
        Format::Rfc5424 => rfc5424(origin, e),
    }
}

/// The bytes sent for one message.
pub fn frame(msg: &str, framing: Framing) -> Vec<u8> {
    match framing {
        Framing::OctetCounting => {
            let mut out = format!("{} ", msg.len()).into_bytes();
            out.extend_from_slice(msg.as_bytes());
            out
        }
        Framing::Newline => {
            let mut out = Vec::with_capacity(msg.len() + 1);
            out.extend_from_slice(msg.as_bytes());
            out.push(b'\n');
            out
        }
        Framing::Datagram => msg.as_bytes().to_vec(),
    }
}

/// Splits integrity-sum's `key=value ...` content back into fields: each value runs to the next
/// ` key=` of a known key. What a SIEM parser does; used by the tests to prove no value forges one.
pub fn parse_content(s: &str) -> Vec<(String, String)> {
    const KEYS: [&str; 10] = [
        "time",
        "event-type",
        "service",
        "pod",
        "image",
        "namespace",
        "cluster",
        "message",
        "file",
        "reason",
    ];
    // Every position where ` key=` (or `key=` at the start) begins.
    let mut starts: Vec<(usize, usize, &str)> = Vec::new();
    for k in KEYS {
        let pat = format!("{k}=");
        let mut from = 0;
        while let Some(i) = s[from..].find(&pat) {
            let at = from + i;
            if at == 0 || s.as_bytes()[at - 1] == b' ' {
                starts.push((at, at + pat.len(), k));
            }
            from = at + 1;
        }
    }
    starts.sort();
    let mut out = Vec::new();
    for (n, &(_, value_start, k)) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(s.len(), |next| next.0 - 1);
        out.push((
            k.to_owned(),
            s[value_start..end.max(value_start)].to_owned(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn seed_event() -> Event {
        Event {
            kind: EventType::Mismatch,
            time: at("2026-03-31T10:46:19Z"),
            service: "nginx".into(),
            pod: "app-nginx-integrity-6bf9c6f4dd-xbvsp".into(),
            image: "nginx:stable-alpine3.17".into(),
            namespace: "default".into(),
            cluster: "local".into(),
            message: "Restart pod app-nginx-integrity-6bf9c6f4dd-xbvsp".into(),
            file: b"etc/nginx/conf.d/default.conf".to_vec(),
        }
    }

    fn origin() -> Origin {
        Origin {
            hostname: "app-nginx-integrity.default".into(),
            pid: 47,
        }
    }

    #[test]
    fn the_seed_line_is_reproduced_byte_for_byte() {
        // Seed 000's first example, with the PRI the server strips and our TAG.
        assert_eq!(
            rfc3164(&origin(), &seed_event()),
            "<28>Mar 31 10:46:19 app-nginx-integrity.default fim-agent[47]: time=Mar 31 10:46:19 \
             event-type=0001 service=nginx pod=app-nginx-integrity-6bf9c6f4dd-xbvsp \
             image=nginx:stable-alpine3.17 namespace=default cluster=local \
             message=Restart pod app-nginx-integrity-6bf9c6f4dd-xbvsp \
             file=etc/nginx/conf.d/default.conf reason=file content mismatch"
        );
        // The heartbeat example: empty image and file.
        let hb = Event {
            kind: EventType::Heartbeat,
            time: at("2026-03-31T11:25:10Z"),
            service: "integrity-monitor".into(),
            pod: "app-nginx-integrity-579665544d-sh65t".into(),
            image: String::new(),
            namespace: "default".into(),
            cluster: "local".into(),
            message: "health check".into(),
            file: Vec::new(),
        };
        assert!(rfc3164(&origin(), &hb).ends_with(
            "time=Mar 31 11:25:10 event-type=0004 service=integrity-monitor \
             pod=app-nginx-integrity-579665544d-sh65t image= namespace=default cluster=local \
             message=health check file= reason=heartbeat event"
        ));
    }

    #[test]
    fn event_types_and_reasons_are_integrity_sums() {
        let got: Vec<_> = EventType::ALL[..4]
            .iter()
            .map(|t| (t.code(), t.reason()))
            .collect();
        assert_eq!(
            got,
            [
                ("0001", "file content mismatch"),
                ("0002", "new file found"),
                ("0003", "file deleted"),
                ("0004", "heartbeat event")
            ]
        );
    }

    #[test]
    fn the_day_is_space_padded() {
        assert_eq!(bsd_time(at("2026-01-02T03:04:05Z")), "Jan  2 03:04:05");
        assert_eq!(bsd_time(at("2026-12-25T23:59:59Z")), "Dec 25 23:59:59");
        assert_eq!(
            rfc3339_time(at("2026-01-02T03:04:05.123456789Z")),
            "2026-01-02T03:04:05.123457Z"
        );
        assert_eq!(
            rfc3339_time(at("2026-01-02T03:04:05Z")),
            "2026-01-02T03:04:05Z"
        );
    }

    #[test]
    fn no_file_name_forges_a_field_or_a_line() {
        let nasty: &[&[u8]] = &[
            b"/etc/a file with spaces",
            b"/etc/x reason=forged",
            b"/etc/x\n<28>Mar 31 10:46:19 h fim-agent[1]: time=x event-type=0004",
            b"/etc/x\r reason=forged",
            b"/etc/x\treason=forged",
            b"/etc/a=b=c",
            b"/etc/100%25 reason%3Dforged",
            "/etc/\u{202E}fdp.exe".as_bytes(),
            "/etc/\u{2066}x\u{2069}\u{200B}\u{FEFF}\u{85}".as_bytes(),
            b"/etc/\xff\xfe invalid utf-8\x00nul\x7fdel\x1b[31mred",
            b"/etc/x] \"quoted\" \\back",
        ];
        for &name in nasty {
            let mut e = seed_event();
            e.file = name.to_vec();
            for format in [Format::Rfc3164, Format::Rfc5424] {
                let l = line(format, &origin(), &e);
                assert!(
                    !l.chars().any(|c| c.is_control() || is_format_char(c)),
                    "{l:?}"
                );
                // The content: the same ten fields in order, and the file decodes back.
                let msg = &l[l.find(" time=").unwrap() + 1..];
                let msg = if format == Format::Rfc5424 {
                    &msg[msg.rfind("] time=").unwrap() + 2..]
                } else {
                    msg
                };
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
                assert_eq!(unescape_value(&parsed[8].1), name, "{l:?}");
                assert_eq!(parsed[9].1, "file content mismatch");
            }
        }
        assert_eq!(
            escape_value(b"/etc/x\n reason=forged%"),
            "/etc/x%0A reason%3Dforged%25"
        );
        assert_eq!(escape_value("\u{202E}".as_bytes()), "%E2%80%AE");
        assert_eq!(escape_value(b"\xff"), "%FF");
        assert_eq!(escape_value("caf\u{e9} ok".as_bytes()), "caf\u{e9} ok");
    }

    #[test]
    fn rfc5424_carries_the_fields_as_structured_data() {
        let mut e = seed_event();
        e.file = b"/etc/x] \"q\" \\".to_vec();
        let l = rfc5424(&origin(), &e);
        assert!(
            l.starts_with(
                "<28>1 2026-03-31T10:46:19Z app-nginx-integrity.default fim-agent 47 0001 \
                 [fim@32473 time=\"Mar 31 10:46:19\" event-type=\"0001\" service=\"nginx\" "
            ),
            "{l}"
        );
        assert!(
            l.contains(r#" file="/etc/x\] \"q\" \\" reason="file content mismatch"] time="#),
            "{l}"
        );
        assert!(l.ends_with(" reason=file content mismatch"));
    }

    #[test]
    fn hostnames_never_contain_spaces() {
        let o = Origin {
            hostname: "a b\nc".into(),
            pid: 1,
        };
        assert!(rfc3164(&o, &seed_event()).contains(" a-b-c fim-agent[1]: "));
        let o = Origin {
            hostname: String::new(),
            pid: 1,
        };
        assert!(rfc3164(&o, &seed_event()).contains(" - fim-agent[1]: "));
    }

    #[test]
    fn framings() {
        assert_eq!(frame("<28>hé", Framing::OctetCounting), b"7 <28>h\xc3\xa9");
        assert_eq!(frame("<28>x", Framing::Newline), b"<28>x\n");
        assert_eq!(frame("<28>x", Framing::Datagram), b"<28>x");
    }
}
