//! Edge cases for the `fim-agent` binary: special files, awkward names, huge sparse files, files
//! vanishing mid-scan, snapshots, corrupt databases and config errors.
//!
//! Every run of the binary has a deadline: a hang kills the child and fails the test.

mod common;

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

use common::{DEADLINE, FIM, Finished, Running};
use fim_engine::attrs::AttrSet;

// ---------------------------------------------------------------------------------------------
// Running the binary

/// Starts `fim-agent` with `args`, named after them in failures.
fn start<S: AsRef<OsStr>>(args: &[S]) -> Running {
    let what = format!(
        "fim-agent {}",
        args.iter()
            .map(|a| a.as_ref().to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    common::spawn(Command::new(FIM).args(args), &what)
}

fn fim<S: AsRef<OsStr>>(args: &[S]) -> Finished {
    start(args).wait()
}

// ---------------------------------------------------------------------------------------------
// A tree, a config and a database in a temporary directory

struct Setup {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    config: PathBuf,
    db: PathBuf,
}

impl Setup {
    /// `rules` is the config text; the tree is empty and the database does not exist yet.
    fn new(rules: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).expect("mkdir tree");
        let config = dir.path().join("fim.conf");
        fs::write(&config, rules).expect("write config");
        let db = dir.path().join("fim.db");
        Setup {
            _dir: dir,
            tree,
            config,
            db,
        }
    }

    fn args(&self, command: &str) -> Vec<PathBuf> {
        vec![
            command.into(),
            "--root".into(),
            self.tree.clone(),
            "--config".into(),
            self.config.clone(),
            "--db".into(),
            self.db.clone(),
            "--format".into(),
            "json".into(),
        ]
    }

    fn init(&self) -> Finished {
        let r = fim(&self.args("init"));
        assert_eq!(r.code, 0, "init failed: {}", r.describe());
        r
    }

    fn check(&self) -> Finished {
        fim(&self.args("check"))
    }

    fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.tree.join(rel)
    }
}

const RULES: &str = "Rule = p+i+n+u+g+s+m+c+sha256\n/ Rule\n";

/// A report entry's exact path bytes: `path_base64` when present, else `path`.
fn entry_path(e: &Value) -> Vec<u8> {
    match e.get("path_base64") {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b.as_str().expect("path_base64 string"))
            .unwrap_or_else(|err| panic!("bad path_base64 in {e}: {err}")),
        None => e["path"].as_str().expect("path string").as_bytes().to_vec(),
    }
}

fn section<'a>(report: &'a Value, key: &str) -> &'a [Value] {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not an array in {report:#}"))
}

fn paths(report: &Value, key: &str) -> BTreeSet<Vec<u8>> {
    section(report, key).iter().map(entry_path).collect()
}

fn find<'a>(report: &'a Value, key: &str, path: &[u8]) -> &'a Value {
    section(report, key)
        .iter()
        .find(|e| entry_path(e) == path)
        .unwrap_or_else(|| {
            panic!(
                "{:?} is not in `{key}` of {report:#}",
                String::from_utf8_lossy(path)
            )
        })
}

fn attributes(changed: &Value) -> BTreeSet<String> {
    changed["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["attribute"].as_str().expect("attribute").to_string())
        .collect()
}

fn assert_no_errors(r: &Finished) {
    let report = r.json();
    assert!(
        section(&report, "errors").is_empty(),
        "unexpected errors: {}",
        r.describe()
    );
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo: {}", io::Error::last_os_error());
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn fifo_and_socket_are_recorded_without_blocking() {
    let s = Setup::new(RULES);
    fs::create_dir(s.path("run")).expect("mkdir");
    fs::write(s.path("run/plain"), "plain\n").expect("write");
    mkfifo(&s.path("run/fifo"));
    let listener =
        std::os::unix::net::UnixListener::bind(s.path("run/sock")).expect("bind unix socket");

    let init = s.init();
    // tree root, /run, plain, fifo, sock.
    assert_eq!(init.json()["summary"]["total"], 5, "{}", init.describe());
    let check = s.check();
    assert_eq!(check.code, 0, "unchanged tree: {}", check.describe());
    assert_no_errors(&check);

    // A chmod on the FIFO is reported, with its type.
    fs::set_permissions(s.path("run/fifo"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let check = s.check();
    assert_eq!(check.code, 4, "fifo chmod: {}", check.describe());
    let report = check.json();
    let fifo = find(&report, "changed", b"/run/fifo");
    assert_eq!(fifo["type"], "p", "{fifo}");
    assert!(attributes(fifo).contains("Perm"), "{fifo}");

    // A removed socket is reported, with its type.
    drop(listener);
    fs::remove_file(s.path("run/sock")).expect("remove socket");
    let check = s.check();
    assert_eq!(check.code, 2 | 4, "socket removed: {}", check.describe());
    let report = check.json();
    assert_eq!(
        paths(&report, "removed"),
        BTreeSet::from([b"/run/sock".to_vec()])
    );
    assert_eq!(find(&report, "removed", b"/run/sock")["type"], "s");
    assert_no_errors(&check);
}

#[test]
fn symlink_loop_and_dangling_link() {
    let s = Setup::new("Rule = p+i+n+u+g+s+m+c+l+sha256\n/ Rule\n");
    fs::create_dir(s.path("links")).expect("mkdir");
    symlink("b", s.path("links/a")).expect("symlink");
    symlink("a", s.path("links/b")).expect("symlink");
    symlink("nowhere", s.path("links/dangling")).expect("symlink");
    symlink("../links", s.path("links/self")).expect("symlink");

    s.init();
    let check = s.check();
    assert_eq!(check.code, 0, "unchanged tree: {}", check.describe());
    assert_no_errors(&check);

    fs::remove_file(s.path("links/dangling")).expect("remove");
    symlink("elsewhere", s.path("links/dangling")).expect("symlink");
    let check = s.check();
    assert_eq!(check.code, 4, "retargeted link: {}", check.describe());
    let report = check.json();
    let dangling = find(&report, "changed", b"/links/dangling");
    assert_eq!(dangling["type"], "l");
    let link = dangling["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["attribute"] == "Link")
        .unwrap_or_else(|| panic!("no Link change in {dangling:#}"));
    assert_eq!(
        (&link["old"], &link["new"]),
        (&Value::from("nowhere"), &Value::from("elsewhere"))
    );
    // Only the retargeted link and its directory (new entry: mtime, ctime) changed.
    assert_eq!(
        paths(&report, "changed"),
        BTreeSet::from([b"/links".to_vec(), b"/links/dangling".to_vec()])
    );
    assert_no_errors(&check);
}

#[test]
fn newline_and_non_utf8_names_are_reported_exactly() {
    let s = Setup::new(RULES);
    fs::create_dir(s.path("names")).expect("mkdir");
    let newline = s.path("names/new\nline");
    let invalid = s.path(OsStr::from_bytes(b"names/bad\xff\xfe"));
    fs::write(&newline, "one\n").expect("write");
    fs::write(&invalid, "two\n").expect("write");
    fs::write(s.path("names/plain"), "three\n").expect("write");

    s.init();
    let check = s.check();
    assert_eq!(check.code, 0, "unchanged tree: {}", check.describe());

    fs::write(&newline, "changed one\n").expect("rewrite");
    fs::write(&invalid, "changed two\n").expect("rewrite");
    let check = s.check();
    assert_eq!(check.code, 4, "{}", check.describe());
    let report = check.json();
    assert_eq!(
        paths(&report, "changed"),
        BTreeSet::from([b"/names/new\nline".to_vec(), b"/names/bad\xff\xfe".to_vec()]),
        "{report:#}"
    );
    // A UTF-8 name: the exact string in `path`, no base64.
    let nl = find(&report, "changed", b"/names/new\nline");
    assert_eq!(nl["path"], "/names/new\nline");
    assert!(nl.get("path_base64").is_none(), "{nl}");
    assert!(attributes(nl).contains("SHA256"), "{nl}");
    // Not UTF-8: a lossy `path` for people and the exact bytes in `path_base64`.
    let bad = find(&report, "changed", b"/names/bad\xff\xfe");
    assert_eq!(bad["path_base64"], "L25hbWVzL2JhZP/+");
    assert_eq!(bad["path"], "/names/bad\u{fffd}\u{fffd}");
    assert!(attributes(bad).contains("SHA256"), "{bad}");
    assert_no_errors(&check);
}

#[test]
fn sparse_2gib_file_is_hashed_in_bounded_memory() {
    const SIZE: u64 = 2 << 30;
    const MAX_RSS_KIB: i64 = 64 * 1024;
    let s = Setup::new(RULES);
    let f = fs::File::create(s.path("sparse")).expect("create");
    f.set_len(SIZE).expect("set_len");
    drop(f);

    let init = start(&s.args("init")).wait();
    assert_eq!(init.code, 0, "{}", init.describe());
    let check = start(&s.args("check")).wait();
    assert_eq!(check.code, 0, "{}", check.describe());
    let report = check.json();
    // A full (not incremental) check reads the whole file again.
    assert_eq!(report["stats"]["bytes_hashed"], SIZE, "{report:#}");
    assert_eq!(report["stats"]["files_hashed"], 1, "{report:#}");
    for (what, r) in [("init", &init), ("check", &check)] {
        assert!(
            r.max_rss_kib > 0 && r.max_rss_kib < MAX_RSS_KIB,
            "{what} peak RSS {} KiB, limit {MAX_RSS_KIB} KiB",
            r.max_rss_kib
        );
    }
    eprintln!(
        "peak RSS: init {} KiB, check {} KiB",
        init.max_rss_kib, check.max_rss_kib
    );
}

/// The child's `rchar` (bytes read through read(2) and friends), from /proc/PID/io.
fn bytes_read(pid: libc::pid_t) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))?
        .trim()
        .parse()
        .ok()
}

/// Whether the child has exited (a zombie not reaped yet) or is gone.
fn has_exited(pid: libc::pid_t) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

#[test]
fn files_deleted_while_init_runs() {
    const DIRS: usize = 40;
    const PER_DIR: usize = 500;
    /// Each file's size: hashing has started once the child has read a few hundred of them.
    const FILE_SIZE: usize = 256;
    let s = Setup::new(RULES);
    let mut all = Vec::with_capacity(DIRS * PER_DIR);
    for d in 0..DIRS {
        let dir = format!("d{d:02}");
        fs::create_dir(s.path(&dir)).expect("mkdir");
        for f in 0..PER_DIR {
            let rel = format!("{dir}/f{f:04}");
            let mut content = format!("file {rel}\n").into_bytes();
            content.resize(FILE_SIZE, b'.');
            fs::write(s.path(&rel), content).expect("write");
            all.push(rel);
        }
    }
    // Every other file. They are deleted from the end of the path order while the scan hashes
    // from its start, so some are hashed before they go (recorded, then removed in the check)
    // and some go after the walk listed them but before they are read (never recorded).
    let doomed: Vec<&String> = all.iter().step_by(2).collect();

    let init = start(&s.args("init"));
    let waiting = Instant::now();
    while bytes_read(init.pid).unwrap_or(0) < 200 * FILE_SIZE as u64
        && !has_exited(init.pid)
        && waiting.elapsed() < DEADLINE
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let exited_before_deleting = has_exited(init.pid);
    for rel in doomed.iter().rev() {
        fs::remove_file(s.path(rel)).expect("remove");
    }
    let init = init.wait();
    assert_eq!(init.code, 0, "{}", init.describe());
    assert_no_errors(&init);

    let recorded: BTreeSet<Vec<u8>> = fim_engine::db::DbReader::open(&s.db)
        .expect("open the database init wrote")
        .read_all()
        .expect("read the database")
        .into_iter()
        .map(|e| e.path.into_vec())
        .collect();
    let deleted: BTreeSet<Vec<u8>> = doomed
        .iter()
        .map(|rel| format!("/{rel}").into_bytes())
        .collect();
    let recorded_then_deleted: BTreeSet<Vec<u8>> =
        recorded.intersection(&deleted).cloned().collect();
    eprintln!(
        "init recorded {} entries; of the {} deleted files, {} were recorded before they went \
         and {} were not recorded{}",
        recorded.len(),
        deleted.len(),
        recorded_then_deleted.len(),
        deleted.len() - recorded_then_deleted.len(),
        if exited_before_deleting {
            " (init finished before the deletions started: no race this time)"
        } else {
            ""
        }
    );
    // Files that were never deleted must all be there.
    for rel in all.iter().skip(1).step_by(2) {
        assert!(
            recorded.contains(format!("/{rel}").as_bytes()),
            "/{rel} was never deleted but init did not record it"
        );
    }

    let check = s.check();
    assert!(
        matches!(check.code, 0 | 2 | 4 | 6),
        "check must report only removed (2) and changed directories (4): {}",
        check.describe()
    );
    let report = check.json();
    assert_no_errors(&check);
    assert!(section(&report, "added").is_empty(), "{}", check.describe());
    // Surviving files are untouched: only directories that lost entries may have changed.
    for c in section(&report, "changed") {
        assert_eq!(c["type"], "d", "only directories may change: {c}");
    }
    let removed = paths(&report, "removed");
    for p in &removed {
        let fs_path = s.path(OsStr::from_bytes(&p[1..]));
        assert!(
            fs::symlink_metadata(&fs_path).is_err(),
            "{} reported removed but exists",
            fs_path.display()
        );
    }
    assert_eq!(
        removed, recorded_then_deleted,
        "removed must be exactly the deleted files init had recorded"
    );
    assert_eq!(check.code & 2 != 0, !removed.is_empty());
}

#[test]
fn collect_of_a_vanished_path_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let root = fim_engine::root::Root::open(dir.path()).unwrap();
    let r = fim_engine::entry::collect(
        &root,
        b"/nonexistent/x",
        AttrSet::PERM,
        None,
        &mut Vec::new(),
    );
    assert!(
        matches!(r, Ok(None)),
        "expected Ok(None), got {:?}",
        r.map(|c| c.map(|c| c.entry))
    );
}

#[test]
fn snapshot_lists_sha256_of_every_file_sorted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("image");
    let files: &[(&str, &[u8])] = &[
        ("app/z.txt", b"last\n"),
        ("app/a.txt", b"abc"),
        ("app/B.txt", b"upper case sorts first\n"),
        ("app/empty", b""),
        ("app/sub/deeper/m.bin", &[0u8, 1, 2, 255, 254]),
        ("bin/tool", b"#!/bin/sh\nexit 0\n"),
        // Not selected: a sibling that only shares the prefix, and another directory.
        ("app2/decoy", b"not in app\n"),
        ("other/skip", b"not selected\n"),
    ];
    for (rel, content) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, content).expect("write");
    }
    // Only regular files are listed.
    symlink("a.txt", root.join("app/link")).expect("symlink");
    mkfifo(&root.join("bin/fifo"));

    let out = dir.path().join("snapshot.sha256");
    let r = fim(&[
        OsStr::new("snapshot"),
        "--root".as_ref(),
        root.as_os_str(),
        "--dir".as_ref(),
        "app,bin".as_ref(),
        "--algorithm".as_ref(),
        "sha256".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{}", r.describe());

    let mut expected: Vec<(&str, String)> = files
        .iter()
        .filter(|(rel, _)| rel.starts_with("app/") || rel.starts_with("bin/"))
        .map(|(rel, content)| (*rel, hex::encode(Sha256::digest(content))))
        .collect();
    expected.sort();
    let expected: String = expected
        .iter()
        .map(|(rel, h)| format!("{h}  {rel}\n"))
        .collect();
    let got = fs::read_to_string(&out).expect("read snapshot");
    assert_eq!(got, expected);
    // Independent of the sha2 crate: the well-known SHA-256 of "abc" and of the empty string.
    assert!(
        got.contains(
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  app/a.txt\n"
        )
    );
    assert!(
        got.contains(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  app/empty\n"
        )
    );
}

#[test]
fn snapshot_rejects_an_unknown_algorithm() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("app")).expect("mkdir");
    let out = dir.path().join("snapshot.out");
    let r = fim(&[
        OsStr::new("snapshot"),
        "--root".as_ref(),
        dir.path().as_os_str(),
        "--dir".as_ref(),
        "app".as_ref(),
        "--algorithm".as_ref(),
        "bogus".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(r.code, 15, "{}", r.describe());
    assert!(r.stderr().contains("'bogus'"), "{}", r.describe());
    assert!(!out.exists(), "no snapshot is written on error");
}

#[test]
fn corrupt_database_is_refused_and_kept() {
    let s = Setup::new(RULES);
    fs::write(s.path("file"), "content\n").expect("write");
    s.init();
    let good = fs::read(&s.db).expect("read db");
    let len = good.len();
    // The magic, a byte in the middle (header or entries), the stored checksum's last byte.
    for at in [0, len / 2, len - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x5a;
        fs::write(&s.db, &bad).expect("write corrupt db");
        let check = s.check();
        assert_eq!(check.code, 18, "byte {at} flipped: {}", check.describe());
        assert!(
            check.stderr().contains("corrupt"),
            "byte {at} flipped: {}",
            check.describe()
        );
        assert_eq!(
            fs::read(&s.db).expect("db still there"),
            bad,
            "the corrupt database must be left as it is"
        );
    }
    // Truncated.
    fs::write(&s.db, &good[..len - 10]).expect("write truncated db");
    let check = s.check();
    assert_eq!(check.code, 18, "truncated: {}", check.describe());
    assert!(check.stderr().contains("corrupt"), "{}", check.describe());
    // And the good one still works.
    fs::write(&s.db, &good).expect("restore db");
    let check = s.check();
    assert_eq!(check.code, 0, "{}", check.describe());
}

#[test]
fn config_error_names_file_and_line() {
    let s = Setup::new("# a comment\nRule = p+u+g\n\n/ Rule+bogus\n");
    fs::write(s.path("file"), "content\n").expect("write");
    let location = format!("{}:4", s.config.display());
    for command in ["init", "check"] {
        let r = fim(&s.args(command));
        assert_eq!(r.code, 17, "{command}: {}", r.describe());
        assert!(
            r.stderr().contains(&location),
            "{command}: stderr should name {location}: {}",
            r.describe()
        );
        assert!(r.stderr().contains("bogus"), "{}", r.describe());
    }
    assert!(!s.db.exists(), "a config error must not create a database");
}
