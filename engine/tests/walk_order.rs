//! The walk yields entries in the database's order (byte order of the full path), which is not a
//! per-directory sorted depth-first order: `-` and `.` sort before `/`.

use std::path::Path;

use fim_engine::config::{Config, ParseContext};
use fim_engine::root::Root;
use fim_engine::scope::Scope;
use fim_engine::walk::{Walker, walk};

fn cfg(text: &str) -> Config {
    Config::parse(
        text,
        "test.conf",
        &ParseContext {
            root: None,
            hostname: "n".into(),
        },
    )
    .unwrap()
}

fn tree(r: &Path) {
    for d in ["a/b/c", "a-x/y", "a.x", "a0", "b", "a/b-c", "a/b.c/d"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    for f in [
        "a/b/c/f", "a/b-", "a/b.", "a/b0", "a-", "a.", "a/-", "a/.z", "b/\u{e9}", "a.x/k",
    ] {
        std::fs::write(r.join(f), f).unwrap();
    }
    std::os::unix::fs::symlink("/", r.join("a/b.l")).unwrap();
}

fn paths(c: &[fim_engine::walk::Candidate]) -> Vec<Vec<u8>> {
    c.iter().map(|c| c.path.to_vec()).collect()
}

#[test]
fn entries_come_in_full_path_byte_order() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let root = Root::open(dir.path()).unwrap();
    let config = cfg("/ p\n");
    let (found, issues) = walk(&config.rules, &root, None);
    assert!(issues.is_empty(), "{issues:?}");
    let got = paths(&found);
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(got, sorted, "yielded in byte order, each once");
    // The root, 11 directories, 10 files and a symlink.
    assert_eq!(got.len(), 23, "every entry: {got:?}");
    assert!(got.contains(&b"/a/b.l".to_vec()), "symlinks are entries");
    // Batches continue exactly where the previous one stopped.
    let mut w = Walker::new(&config.rules, &root, None);
    let mut batched = Vec::new();
    loop {
        let b = w.next_batch(3);
        if b.is_empty() {
            break;
        }
        assert!(b.len() <= 3);
        batched.extend(paths(&b));
    }
    assert_eq!(batched, got);
}

#[test]
fn a_scoped_walk_yields_only_the_scope_in_order() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let root = Root::open(dir.path()).unwrap();
    let config = cfg("/ p\n");
    let scope = Scope::of_changes([b"/a/b".as_slice(), b"/a-x".as_slice()]);
    let (found, _) = walk(&config.rules, &root, Some(&scope));
    let got: Vec<String> = found
        .iter()
        .map(|c| String::from_utf8_lossy(&c.path).into_owned())
        .collect();
    assert_eq!(
        got,
        ["/", "/a", "/a-x", "/a-x/y", "/a/b", "/a/b/c", "/a/b/c/f"],
        "parents as entries, changed paths as trees"
    );
}
