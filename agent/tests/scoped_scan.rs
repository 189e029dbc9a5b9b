//! A realtime rescan limited to the changed paths must report exactly what a full check reports,
//! for every kind of change, and nothing about the rest of the tree.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use fim_engine::config::{Config, ParseContext};
use fim_engine::db::{DbReader, DbWriter, FORMAT_VERSION, Header};
use fim_engine::scan::{Outcome, ScanError, ScanOptions, scan};
use fim_engine::scope::Scope;

const CONFIG: &str = "ALL = p+i+n+u+g+s+m+c+sha256\n/ ALL\n!/var/log\n";

fn config() -> Config {
    let ctx = ParseContext {
        root: None,
        hostname: "n".into(),
    };
    Config::parse(CONFIG, "test.conf", &ctx).unwrap()
}

fn init(c: &Config, root: &Path, db: &Path) {
    let header = Header {
        format_version: FORMAT_VERSION,
        created: 0,
        tool_version: "test".into(),
        config_digest: c.digest(),
        root: String::new(),
    };
    let out = DbWriter::create(db, &header).unwrap();
    scan(c, &ScanOptions::new(root), None, Some(out)).unwrap();
}

fn check(c: &Config, root: &Path, db: &Path, scope: Option<Scope>) -> Outcome {
    let mut opts = ScanOptions::new(root);
    opts.scope = scope;
    scan(c, &opts, Some(DbReader::open(db).unwrap()), None).unwrap()
}

/// (added, removed, changed) as sorted strings.
fn findings(o: &Outcome) -> (Vec<String>, Vec<String>, Vec<String>) {
    let s = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    let mut added: Vec<_> = o.added.iter().map(|e| s(&e.path)).collect();
    let mut removed: Vec<_> = o.removed.iter().map(|e| s(&e.path)).collect();
    let mut changed: Vec<_> = o
        .changed
        .iter()
        .map(|c| format!("{} {}", s(&c.path), c.summary))
        .collect();
    added.sort();
    removed.sort();
    changed.sort();
    (added, removed, changed)
}

fn tree(root: &Path) {
    for d in ["etc/app", "usr/bin", "opt/old/sub", "var/log"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("etc/app/conf"), "a=1\n").unwrap();
    fs::write(root.join("etc/app/keep"), "keep\n").unwrap();
    fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    fs::write(root.join("opt/old/sub/f"), "f\n").unwrap();
    fs::write(root.join("var/log/syslog"), "log\n").unwrap();
}

/// Applies one change to `root` and returns the node paths a change watcher would name.
type Change = fn(&Path) -> Vec<&'static [u8]>;

const CHANGES: &[(&str, Change)] = &[
    ("content", |r| {
        fs::write(r.join("etc/app/conf"), "a=2\n").unwrap();
        vec![&b"/etc/app/conf"[..]]
    }),
    ("mode", |r| {
        fs::set_permissions(r.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        vec![&b"/usr/bin/tool"[..]]
    }),
    ("added file", |r| {
        fs::write(r.join("etc/app/new"), "new\n").unwrap();
        vec![&b"/etc/app/new"[..]]
    }),
    ("removed file", |r| {
        fs::remove_file(r.join("etc/hosts")).unwrap();
        vec![&b"/etc/hosts"[..]]
    }),
    ("new directory tree", |r| {
        fs::create_dir_all(r.join("opt/new/a/b")).unwrap();
        fs::write(r.join("opt/new/a/b/f"), "x").unwrap();
        vec![&b"/opt/new"[..]]
    }),
    ("removed directory tree", |r| {
        fs::remove_dir_all(r.join("opt/old")).unwrap();
        vec![&b"/opt/old"[..]]
    }),
    ("renamed directory", |r| {
        fs::rename(r.join("opt/old"), r.join("opt/moved")).unwrap();
        vec![&b"/opt/old"[..], &b"/opt/moved"[..]]
    }),
    ("file replaced by a symlink", |r| {
        fs::remove_file(r.join("etc/app/keep")).unwrap();
        symlink("/etc/shadow", r.join("etc/app/keep")).unwrap();
        vec![&b"/etc/app/keep"[..]]
    }),
    ("newline and non-UTF-8 names", |r| {
        use std::os::unix::ffi::OsStrExt;
        fs::write(r.join("etc/app/x\ny"), "n").unwrap();
        fs::write(
            r.join(std::ffi::OsStr::from_bytes(b"etc/app/\xff\xfe")),
            "b",
        )
        .unwrap();
        vec![&b"/etc/app/x\ny"[..], &b"/etc/app/\xff\xfe"[..]]
    }),
];

#[test]
fn a_scoped_rescan_reports_what_a_full_check_reports() {
    let c = config();
    for (name, change) in CHANGES {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let db = dir.path().join("baseline.db");
        tree(&root);
        init(&c, &root, &db);
        let named = change(&root);
        let full = findings(&check(&c, &root, &db, None));
        assert!(full != Default::default(), "{name}: the change is visible");
        let scope = Scope::of_changes(named.iter().copied());
        let scoped = findings(&check(&c, &root, &db, Some(scope)));
        assert_eq!(scoped, full, "{name}");
    }
}

#[test]
fn a_scoped_rescan_ignores_changes_outside_its_scope() {
    let c = config();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let db = dir.path().join("baseline.db");
    tree(&root);
    init(&c, &root, &db);
    fs::write(root.join("usr/bin/tool"), "changed").unwrap();
    fs::remove_file(root.join("etc/hosts")).unwrap();
    fs::write(root.join("etc/app/conf"), "a=3\n").unwrap();

    let scope = Scope::of_changes([b"/etc/app/conf".as_slice()]);
    let (added, removed, changed) = findings(&check(&c, &root, &db, Some(scope)));
    assert!(
        added.is_empty() && removed.is_empty(),
        "{added:?} {removed:?}"
    );
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].starts_with("/etc/app/conf "), "{changed:?}");
}

#[test]
fn a_scoped_scan_never_writes_a_baseline() {
    let c = config();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root);
    let header = Header {
        format_version: FORMAT_VERSION,
        created: 0,
        tool_version: "test".into(),
        config_digest: c.digest(),
        root: String::new(),
    };
    let out = DbWriter::create(&dir.path().join("db"), &header).unwrap();
    let mut opts = ScanOptions::new(&root);
    opts.scope = Some(Scope::of_changes([b"/etc".as_slice()]));
    assert!(matches!(
        scan(&c, &opts, None, Some(out)),
        Err(ScanError::ScopedBaseline)
    ));
    assert!(!dir.path().join("db").exists());
}
