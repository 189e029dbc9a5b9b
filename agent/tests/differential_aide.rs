//! Differential test against AIDE itself: the same tree, the same rule, the same mutations; the
//! sets of added, removed and changed paths that `fim-agent check` reports must be AIDE's.
//!
//! Needs `aide` (0.18) on PATH; `make test` installs it. Without it the test fails, it does not skip.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::{FIM, Finished, run};

/// The rule both tools use, in both configs.
const RULE: &str = "p+i+n+u+g+s+m+c+sha256";

fn fim(args: &[&OsStr], what: &str) -> Finished {
    run(Command::new(FIM).args(args), what)
}

fn aide(config: &Path, mode: &str) -> Finished {
    run(
        Command::new("aide").arg("--config").arg(config).arg(mode),
        &format!("aide {mode}"),
    )
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Sets {
    added: BTreeSet<String>,
    removed: BTreeSet<String>,
    changed: BTreeSet<String>,
}

/// AIDE's JSON report: `"added": {"/path": "f+++..."}`, keys absent when a section is empty.
fn aide_sets(report: &Value) -> Sets {
    let keys = |k: &str| -> BTreeSet<String> {
        match report.get(k) {
            None => BTreeSet::new(),
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            Some(other) => panic!("AIDE's `{k}` is not an object: {other}"),
        }
    };
    Sets {
        added: keys("added"),
        removed: keys("removed"),
        changed: keys("changed"),
    }
}

/// fim-agent's JSON report: `"added": [{"path": "/path", "type": "f"}]`.
fn fim_sets(report: &Value) -> Sets {
    let paths = |k: &str| -> BTreeSet<String> {
        report[k]
            .as_array()
            .unwrap_or_else(|| panic!("fim-agent's `{k}` is not an array: {report}"))
            .iter()
            .map(|e| {
                assert!(
                    e.get("path_base64").is_none(),
                    "this tree has UTF-8 names only: {e}"
                );
                e["path"].as_str().expect("path string").to_string()
            })
            .collect()
    };
    Sets {
        added: paths("added"),
        removed: paths("removed"),
        changed: paths("changed"),
    }
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(&p, content).expect("write");
}

#[test]
fn fim_agent_reports_the_same_paths_as_aide() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let tree = w.join("tree");
    for (rel, content) in [
        ("etc/content", "original content\n"),
        ("etc/mode", "mode\n"),
        ("etc/untouched.conf", "untouched\n"),
        ("usr/owner", "owner\n"),
        ("usr/replaced", "will become a symlink\n"),
        ("usr/linked", "gains a hard link\n"),
        ("usr/bin/tool", "#!/bin/sh\necho tool\n"),
        ("usr/lib/libx.so", "\x7fELF not really\n"),
        ("var/removed", "removed\n"),
        ("var/rename-src", "renamed\n"),
        ("srv/deep/nested/file", "deep\n"),
    ] {
        write(&tree, rel, content);
    }
    symlink("libx.so", tree.join("usr/lib/libx.so.1")).expect("symlink");

    let aide_conf = w.join("aide.conf");
    fs::write(
        &aide_conf,
        format!(
            "database_in=file:{db}\n\
             database_out=file:{db}.new\n\
             root_prefix={root}\n\
             report_format=json\n\
             report_level=list_entries\n\
             Rule = {RULE}\n\
             / Rule\n",
            db = w.join("aide.db").display(),
            root = tree.display(),
        ),
    )
    .expect("write aide.conf");
    let fim_conf = w.join("fim.conf");
    fs::write(&fim_conf, format!("Rule = {RULE}\n/ Rule\n")).expect("write fim.conf");
    let fim_db = w.join("fim.db");
    let fim_common: Vec<&OsStr> = vec![
        "--root".as_ref(),
        tree.as_os_str(),
        "--config".as_ref(),
        fim_conf.as_os_str(),
        "--db".as_ref(),
        fim_db.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ];

    // Baselines.
    let init = aide(&aide_conf, "--init");
    assert_eq!(init.code, 0, "aide --init failed: {}", init.describe());
    fs::rename(w.join("aide.db.new"), w.join("aide.db")).expect("move aide.db.new into place");
    let init = fim(
        &[&["init".as_ref()], &fim_common[..]].concat(),
        "fim-agent init",
    );
    assert_eq!(init.code, 0, "fim-agent init failed: {}", init.describe());

    // AIDE records times in whole seconds: a mutation in the same second as the baseline would
    // leave ctime/mtime looking unchanged to AIDE (not to fim-agent, which keeps nanoseconds).
    std::thread::sleep(Duration::from_millis(1100));

    // 1. Content changed, size and mtime restored: only ctime and the hash can tell.
    let content = tree.join("etc/content");
    let before = fs::metadata(&content).expect("stat");
    let mtime = before.modified().expect("mtime");
    fs::write(&content, "tampered content\n").expect("rewrite");
    let f = fs::File::options()
        .write(true)
        .open(&content)
        .expect("open");
    f.set_modified(mtime).expect("restore mtime");
    drop(f);
    let after = fs::metadata(&content).expect("stat");
    assert_eq!(
        (after.len(), after.mtime(), after.mtime_nsec()),
        (before.len(), before.mtime(), before.mtime_nsec()),
        "the test failed to restore size and mtime"
    );
    // 2. chmod.
    fs::set_permissions(tree.join("etc/mode"), fs::Permissions::from_mode(0o600)).expect("chmod");
    // 3. chown (the tests run as root).
    std::os::unix::fs::chown(tree.join("usr/owner"), Some(4321), Some(8765))
        .expect("chown (run the tests as root)");
    // 4. Added file.
    write(&tree, "etc/added", "added\n");
    // 5. Removed file.
    fs::remove_file(tree.join("var/removed")).expect("remove");
    // 6. Renamed file.
    fs::rename(tree.join("var/rename-src"), tree.join("var/rename-dst")).expect("rename");
    // 7. Regular file replaced by a symlink.
    fs::remove_file(tree.join("usr/replaced")).expect("remove");
    symlink("bin/tool", tree.join("usr/replaced")).expect("symlink");
    // 8. New hard link to an existing file.
    fs::hard_link(tree.join("usr/linked"), tree.join("etc/hardlink")).expect("hard link");
    // 9. New directory with a file in it.
    write(&tree, "newdir/file", "in a new dir\n");

    let aide_check = aide(&aide_conf, "--check");
    let aide_report: Value = serde_json::from_slice(&aide_check.stdout)
        .unwrap_or_else(|e| panic!("AIDE's report is not JSON ({e}): {}", aide_check.describe()));
    let aide_found = aide_sets(&aide_report);

    let fim_check = fim(
        &[&["check".as_ref()], &fim_common[..]].concat(),
        "fim-agent check",
    );
    let fim_report: Value = serde_json::from_slice(&fim_check.stdout).unwrap_or_else(|e| {
        panic!(
            "fim-agent's report is not JSON ({e}): {}",
            fim_check.describe()
        )
    });
    assert_eq!(
        fim_report["errors"],
        Value::Array(vec![]),
        "fim-agent check reported errors"
    );
    let fim_found = fim_sets(&fim_report);

    // The same rerun in incremental mode: ctime changed on every touched file, so the shortcut
    // must not hide the content change of etc/content.
    let incremental = fim(
        &[
            &["check".as_ref(), "--incremental".as_ref()],
            &fim_common[..],
        ]
        .concat(),
        "fim-agent check --incremental",
    );
    let incremental_report: Value =
        serde_json::from_slice(&incremental.stdout).unwrap_or_else(|e| {
            panic!(
                "fim-agent's incremental report is not JSON ({e}): {}",
                incremental.describe()
            )
        });
    let fim_incremental = fim_sets(&incremental_report);

    // The differential claim: the same paths in each section.
    assert_eq!(
        fim_found,
        aide_found,
        "fim-agent (left) and AIDE (right) disagree\n--- AIDE report ---\n{}\n--- fim-agent report ---\n{}",
        String::from_utf8_lossy(&aide_check.stdout),
        String::from_utf8_lossy(&fim_check.stdout)
    );
    assert_eq!(
        fim_incremental, fim_found,
        "check --incremental (left) differs from a full check (right)"
    );
    assert_eq!(
        (fim_check.code, incremental.code, aide_check.code),
        (7, 7, 7),
        "exit codes (fim-agent, fim-agent --incremental, AIDE): added + removed + changed = 7"
    );

    // And every mutation is actually in there, so two empty or equally broken reports cannot pass.
    let expected = Sets {
        added: set(&[
            "/etc/added",      // 4
            "/etc/hardlink",   // 8
            "/newdir",         // 9
            "/newdir/file",    // 9
            "/var/rename-dst", // 6
        ]),
        removed: set(&[
            "/var/removed",    // 5
            "/var/rename-src", // 6
        ]),
        changed: set(&[
            "/",             // 9: mtime, ctime, link count (new subdirectory)
            "/etc",          // 4, 8: entries added
            "/etc/content",  // 1: ctime and sha256
            "/etc/mode",     // 2: perm, ctime
            "/usr",          // 7: entry replaced
            "/usr/linked",   // 8: link count, ctime
            "/usr/owner",    // 3: uid, gid, ctime
            "/usr/replaced", // 7: type, perm, size, inode, ...
            "/var",          // 5, 6: entries removed / renamed
        ]),
    };
    assert_eq!(
        fim_found,
        expected,
        "fim-agent's sets (left) are not the expected ones (right)\n{}",
        String::from_utf8_lossy(&fim_check.stdout)
    );
    assert_eq!(
        aide_found,
        expected,
        "AIDE's sets (left) are not the expected ones (right)\n{}",
        String::from_utf8_lossy(&aide_check.stdout)
    );

    // The per-attribute detail for the two subtle cases.
    let fim_changes = |path: &str| -> BTreeSet<String> {
        fim_report["changed"]
            .as_array()
            .expect("changed")
            .iter()
            .find(|c| c["path"] == path)
            .unwrap_or_else(|| panic!("{path} not in changed"))["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .map(|c| c["attribute"].as_str().expect("attribute").to_string())
            .collect()
    };
    assert_eq!(
        fim_changes("/etc/content"),
        set(&["Ctime", "SHA256"]),
        "content change with size and mtime restored"
    );
    assert_eq!(
        fim_changes("/usr/owner"),
        set(&["Uid", "Gid", "Ctime"]),
        "chown"
    );
    assert_eq!(fim_changes("/etc/mode"), set(&["Perm", "Ctime"]), "chmod");
    assert_eq!(
        fim_changes("/usr/linked"),
        set(&["Linkcount", "Ctime"]),
        "new hard link"
    );
}
