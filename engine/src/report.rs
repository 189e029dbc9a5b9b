//! Reports in AIDE's plain-text shape and as JSON.
//!
//! Paths are bytes. Text reports escape them (`\n`, `\\`, `\xNN` for bytes that are not UTF-8 or
//! not printable). JSON reports carry the exact string in `path` when the name is valid UTF-8;
//! otherwise `path` is a lossy rendering for people and `path_base64` holds the exact bytes.

use std::fmt::Write as _;

use base64::Engine;
use serde_json::{Value, json};

use crate::display::display_bytes;
use crate::scan::Outcome;

const RULER: &str = "---------------------------------------------------";

/// What the report is about, besides the outcome.
pub struct ReportContext<'a> {
    pub command: &'a str,
    pub root: &'a str,
    pub database: &'a str,
    pub started: std::time::SystemTime,
}

/// The JSON fields naming a path (see the module docs).
fn json_path(bytes: &[u8]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            m.insert("path".into(), json!(s));
        }
        Err(_) => {
            m.insert("path".into(), json!(String::from_utf8_lossy(bytes)));
            m.insert(
                "path_base64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
        }
    }
    m
}

fn timestamp(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = crate::display::time_string(crate::entry::Timestamp {
        sec: since.as_secs() as i64,
        nsec: 0,
    });
    // Second precision reads better at the top of a report.
    format!("{} +0000", &s[..19])
}

pub fn text(outcome: &Outcome, ctx: &ReportContext) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "Start timestamp: {} (fim-agent {})",
        timestamp(ctx.started),
        env!("CARGO_PKG_VERSION")
    );
    let s = &outcome.stats;
    if ctx.command == "init" {
        let _ = writeln!(r, "kube-fim initialized database at {}\n", ctx.database);
        let _ = writeln!(r, "Number of entries:\t{}", s.entries);
    } else if outcome.has_differences() {
        let _ = writeln!(
            r,
            "kube-fim found differences between database and filesystem!!"
        );
        if ctx.command == "update" {
            let _ = writeln!(r, "New database written to {}", ctx.database);
        }
    } else {
        let _ = writeln!(
            r,
            "kube-fim found NO differences between database and filesystem. Looks okay!!"
        );
    }
    let _ = writeln!(r, "Root: {}", ctx.root);
    if ctx.command != "init" {
        let _ = writeln!(r, "\nSummary:");
        let _ = writeln!(r, "  Total number of entries:\t{}", s.entries);
        let _ = writeln!(r, "  Added entries:\t\t{}", outcome.added.len());
        let _ = writeln!(r, "  Removed entries:\t\t{}", outcome.removed.len());
        let _ = writeln!(r, "  Changed entries:\t\t{}", outcome.changed.len());
    }
    let section = |r: &mut String, title: &str| {
        let _ = writeln!(r, "\n{RULER}\n{title}:\n{RULER}\n");
    };
    if !outcome.added.is_empty() {
        section(&mut r, "Added entries");
        for e in &outcome.added {
            let _ = writeln!(
                r,
                "{}{}: {}",
                e.ftype.letter(),
                "+".repeat(17),
                display_bytes(&e.path)
            );
        }
    }
    if !outcome.removed.is_empty() {
        section(&mut r, "Removed entries");
        for e in &outcome.removed {
            let _ = writeln!(
                r,
                "{}{}: {}",
                e.ftype.letter(),
                "-".repeat(17),
                display_bytes(&e.path)
            );
        }
    }
    if !outcome.changed.is_empty() {
        section(&mut r, "Changed entries");
        for c in &outcome.changed {
            let _ = writeln!(r, "{}: {}", c.summary, display_bytes(&c.path));
        }
        section(&mut r, "Detailed information about changes");
        for c in &outcome.changed {
            let _ = writeln!(r, "{}: {}", c.ftype.name(), display_bytes(&c.path));
            for a in &c.changes {
                if a.old.len() + a.new.len() <= 64 {
                    let _ = writeln!(r, "  {:<10}: {:<32} | {}", a.attribute, a.old, a.new);
                } else {
                    let _ = writeln!(
                        r,
                        "  {:<10}: {}\n  {:<10}| {}",
                        a.attribute, a.old, "", a.new
                    );
                }
            }
            r.push('\n');
        }
    }
    if !outcome.issues.is_empty() {
        section(&mut r, "Errors (entries that could not be read completely)");
        for i in &outcome.issues {
            let _ = writeln!(r, "{}: {}", display_bytes(&i.path), i.message);
        }
    }
    let digests: Vec<(&str, &String)> = [
        ("baseline", &outcome.baseline_digest),
        ("written", &outcome.written_digest),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    if !digests.is_empty() {
        section(&mut r, "The attributes of the database(s)");
        let _ = writeln!(r, "{}", ctx.database);
        for (kind, d) in digests {
            let _ = writeln!(r, "  SHA256 ({kind}) : {d}");
        }
    }
    let _ = writeln!(
        r,
        "\nEnd timestamp: {} (run time: {:.3} s, {} files hashed, {} bytes)",
        timestamp(std::time::SystemTime::now()),
        s.duration.as_secs_f64(),
        s.files_hashed,
        s.bytes_hashed
    );
    r
}

pub fn json(outcome: &Outcome, ctx: &ReportContext) -> Value {
    let entry = |e: &crate::entry::Entry| {
        let mut m = json_path(&e.path);
        m.insert("type".into(), json!(e.ftype.letter().to_string()));
        Value::Object(m)
    };
    let changed: Vec<Value> = outcome
        .changed
        .iter()
        .map(|c| {
            let mut m = json_path(&c.path);
            m.insert("type".into(), json!(c.ftype.letter().to_string()));
            m.insert("summary".into(), json!(c.summary));
            m.insert("changes".into(), json!(c.changes));
            Value::Object(m)
        })
        .collect();
    let issues: Vec<Value> = outcome
        .issues
        .iter()
        .map(|i| {
            let mut m = json_path(&i.path);
            m.insert("message".into(), json!(i.message));
            Value::Object(m)
        })
        .collect();
    json!({
        "command": ctx.command,
        "start_time": timestamp(ctx.started),
        "root": ctx.root,
        "database": ctx.database,
        "baseline_digest": outcome.baseline_digest,
        "written_digest": outcome.written_digest,
        "summary": {
            "total": outcome.stats.entries,
            "added": outcome.added.len(),
            "removed": outcome.removed.len(),
            "changed": outcome.changed.len(),
        },
        "added": outcome.added.iter().map(entry).collect::<Vec<_>>(),
        "removed": outcome.removed.iter().map(entry).collect::<Vec<_>>(),
        "changed": changed,
        "errors": issues,
        "stats": {
            "entries": outcome.stats.entries,
            "files_hashed": outcome.stats.files_hashed,
            "bytes_hashed": outcome.stats.bytes_hashed,
            "duration_seconds": outcome.stats.duration.as_secs_f64(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_paths_escape_newlines_backslashes_and_invalid_bytes() {
        assert_eq!(display_bytes(b"/etc/passwd"), "/etc/passwd");
        assert_eq!(display_bytes(b"/a\nb"), "/a\\nb");
        assert_eq!(display_bytes(b"/a\\b"), "/a\\\\b");
        assert_eq!(display_bytes(b"/caf\xc3\xa9"), "/caf\u{e9}");
        assert_eq!(display_bytes(b"/x\xff\xfe"), "/x\\xff\\xfe");
        assert_eq!(display_bytes(b"/bell\x07"), "/bell\\x07");
    }

    #[test]
    fn json_paths_are_exact_or_carry_base64() {
        let m = json_path(b"/a\nb");
        assert_eq!(m["path"], "/a\nb");
        assert!(!m.contains_key("path_base64"));
        let m = json_path(b"/x\xff");
        assert_eq!(m["path_base64"], "L3j/");
        assert_eq!(m["path"], "/x\u{fffd}");
    }
}
