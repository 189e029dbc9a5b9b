//! The realtime watcher against real filesystem changes, for each backend usable here (fanotify
//! needs CAP_SYS_ADMIN: where it is refused, its tests say so and pass without checking anything).
//! No fixed sleeps: every wait polls `next_batch` up to a deadline.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use fim_agent::realtime::{Backend, Watcher};

const DEADLINE: Duration = Duration::from_secs(10);

fn start(dirs: &[PathBuf], backend: Backend) -> Option<Watcher> {
    match Watcher::start(dirs, Some(backend)) {
        Ok(w) => {
            assert_eq!(w.backend(), backend);
            Some(w)
        }
        Err(e) if backend == Backend::Fanotify => {
            eprintln!("fanotify not usable here, test skipped: {e}");
            None
        }
        Err(e) => panic!("{backend}: {e}"),
    }
}

/// Collects batches until `done` holds for everything seen so far; returns it. Fails with what was
/// seen after the deadline.
fn collect_until(w: &Watcher, done: impl Fn(&BTreeSet<PathBuf>) -> bool) -> BTreeSet<PathBuf> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = BTreeSet::new();
    while !done(&seen) {
        assert!(
            Instant::now() < deadline,
            "{}: not seen within {DEADLINE:?}; seen: {seen:#?}",
            w.backend()
        );
        if let Some(batch) = w.next_batch(
            Duration::from_millis(200),
            Duration::from_millis(10),
            Duration::from_millis(200),
        ) {
            assert!(!batch.overflow, "unexpected overflow");
            seen.extend(batch.paths);
        }
    }
    seen
}

fn expect(w: &Watcher, paths: &[PathBuf]) -> BTreeSet<PathBuf> {
    collect_until(w, |seen| paths.iter().all(|p| seen.contains(p)))
}

struct Tree {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

/// A temp dir with `root` (watched) and `outside` (a sibling, not watched).
fn tree() -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    Tree {
        _tmp: tmp,
        root,
        outside,
    }
}

fn each_event_kind(backend: Backend) {
    let t = tree();
    let r = &t.root;
    for name in ["m", "w", "c", "o", "t", "d", "ren", "h"] {
        fs::write(r.join(name), name).unwrap();
    }
    fs::create_dir_all(r.join("dir/sub")).unwrap();
    fs::write(r.join("dir/sub/f"), b"f").unwrap();
    fs::create_dir(r.join("rmdir")).unwrap();
    fs::create_dir_all(r.join("rmtree/a/b")).unwrap();
    fs::write(r.join("rmtree/a/b/f"), b"f").unwrap();
    fs::create_dir(r.join("chdir")).unwrap();
    let Some(w) = start(std::slice::from_ref(r), backend) else {
        return;
    };

    fs::write(r.join("new"), b"new").unwrap();
    expect(&w, &[r.join("new")]);

    // a write without close (modify), then a write with close (close_write)
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(r.join("m"))
            .unwrap();
        f.write_all(b"more").unwrap();
        expect(&w, &[r.join("m")]);
    }
    fs::write(r.join("w"), b"rewritten").unwrap();
    expect(&w, &[r.join("w")]);

    fs::set_permissions(r.join("c"), fs::Permissions::from_mode(0o600)).unwrap();
    expect(&w, &[r.join("c")]);
    std::os::unix::fs::chown(r.join("o"), Some(4242), Some(4242)).unwrap();
    expect(&w, &[r.join("o")]);
    fs::File::options()
        .write(true)
        .open(r.join("t"))
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH)
        .unwrap();
    expect(&w, &[r.join("t")]);
    fs::set_permissions(r.join("chdir"), fs::Permissions::from_mode(0o700)).unwrap();
    expect(&w, &[r.join("chdir")]);

    fs::remove_file(r.join("d")).unwrap();
    expect(&w, &[r.join("d")]);
    fs::remove_dir(r.join("rmdir")).unwrap();
    expect(&w, &[r.join("rmdir")]);
    // rm -rf: the top of the removed tree is reported (its contents may be, too)
    fs::remove_dir_all(r.join("rmtree")).unwrap();
    expect(&w, &[r.join("rmtree")]);

    fs::rename(r.join("ren"), r.join("renamed")).unwrap();
    expect(&w, &[r.join("ren"), r.join("renamed")]);

    // a directory renamed: both names, and the watch follows it
    fs::rename(r.join("dir"), r.join("moved")).unwrap();
    expect(&w, &[r.join("dir"), r.join("moved")]);
    fs::write(r.join("moved/sub/g"), b"g").unwrap();
    expect(&w, &[r.join("moved/sub/g")]);

    std::os::unix::fs::symlink("m", r.join("link")).unwrap();
    expect(&w, &[r.join("link")]);
    fs::hard_link(r.join("h"), r.join("hard")).unwrap();
    expect(&w, &[r.join("hard")]);

    // odd names are paths like any other
    let odd = r.join(<std::ffi::OsStr as OsStrExt>::from_bytes(b"a\nb\xff"));
    fs::write(&odd, b"x").unwrap();
    expect(&w, &[odd]);
}

fn new_tree_is_covered(backend: Backend) {
    let t = tree();
    let r = &t.root;
    let Some(w) = start(std::slice::from_ref(r), backend) else {
        return;
    };
    // mkdir -p a/b/c && touch a/b/c/f
    fs::create_dir_all(r.join("a/b/c")).unwrap();
    fs::write(r.join("a/b/c/f"), b"").unwrap();
    let covering = [
        r.join("a"),
        r.join("a/b"),
        r.join("a/b/c"),
        r.join("a/b/c/f"),
    ];
    collect_until(&w, |seen| covering.iter().any(|p| seen.contains(p)));
    // and from then on, changes deep in the new tree are seen one by one
    fs::write(r.join("a/b/c/g"), b"").unwrap();
    expect(&w, &[r.join("a/b/c/g")]);

    // a tree moved in from outside the watched one
    fs::create_dir_all(t.outside.join("x/y")).unwrap();
    fs::rename(t.outside.join("x"), r.join("x")).unwrap();
    expect(&w, &[r.join("x")]);
    fs::write(r.join("x/y/z"), b"").unwrap();
    expect(&w, &[r.join("x/y/z")]);
}

fn outside_is_filtered(backend: Backend) {
    let t = tree();
    let r = &t.root;
    let Some(w) = start(std::slice::from_ref(r), backend) else {
        return;
    };
    // a second watcher on the same filesystem, with its own tree (another agent's root)
    let Some(other) = start(std::slice::from_ref(&t.outside), backend) else {
        return;
    };
    fs::write(t.outside.join("o"), b"o").unwrap();
    fs::create_dir(t.outside.join("od")).unwrap();
    fs::write(t.root.parent().unwrap().join("beside"), b"b").unwrap();
    // root's prefix without a separator is not inside it
    fs::write(t.root.parent().unwrap().join("rootx"), b"b").unwrap();
    expect(&other, &[t.outside.join("o"), t.outside.join("od")]);
    // a marker inside, after all the outside changes: once it is seen, so would they have been
    fs::write(r.join("marker"), b"m").unwrap();
    let seen = expect(&w, &[r.join("marker")]);
    assert!(seen.iter().all(|p| p.starts_with(r)), "{seen:#?}");
    // moving out of the tree reports the old name only
    fs::rename(r.join("marker"), t.outside.join("moved-out")).unwrap();
    let seen = expect(&w, &[r.join("marker")]);
    assert!(seen.iter().all(|p| p.starts_with(r)), "{seen:#?}");
}

fn files_and_missing_trees(backend: Backend) {
    let t = tree();
    let r = &t.root;
    fs::write(r.join("single"), b"1").unwrap();
    fs::write(r.join("sibling"), b"1").unwrap();
    // a single file, and a tree that does not exist yet
    let dirs = [r.join("single"), r.join("later/tree")];
    let Some(w) = start(&dirs, backend) else {
        return;
    };
    fs::write(r.join("sibling"), b"2").unwrap();
    fs::write(r.join("single"), b"2").unwrap();
    let seen = expect(&w, &[r.join("single")]);
    assert!(!seen.contains(&r.join("sibling")), "{seen:#?}");
    fs::create_dir_all(r.join("later/tree/deep")).unwrap();
    expect(&w, &[r.join("later/tree")]);
    fs::write(r.join("later/tree/deep/f"), b"").unwrap();
    let seen = expect(&w, &[r.join("later/tree/deep/f")]);
    assert!(!seen.contains(&r.join("later")), "{seen:#?}");
}

fn batches_wait_for_quiet(backend: Backend) {
    let t = tree();
    let r = &t.root;
    let Some(w) = start(std::slice::from_ref(r), backend) else {
        return;
    };
    assert!(
        w.next_batch(
            Duration::from_millis(50),
            Duration::from_millis(10),
            Duration::from_secs(1)
        )
        .is_none()
    );
    for i in 0..20 {
        fs::write(r.join(format!("f{i}")), b"x").unwrap();
    }
    // A long quiet period gathers the burst into one batch. A writer descheduled for longer
    // than the quiet period (a loaded CI machine) splits it, but never into one batch per file.
    let want: BTreeSet<PathBuf> = (0..20).map(|i| r.join(format!("f{i}"))).collect();
    let (mut seen, mut batches) = (BTreeSet::new(), 0);
    while seen != want {
        let batch = w
            .next_batch(DEADLINE, Duration::from_millis(300), DEADLINE)
            .unwrap_or_else(|| panic!("no batch; seen {} of 20", seen.len()));
        assert!(!batch.overflow);
        assert!(batch.paths.is_subset(&want), "{:?}", batch.paths);
        seen.extend(batch.paths);
        batches += 1;
    }
    assert!(batches <= 3, "20 writes in {batches} batches");
}

macro_rules! per_backend {
    ($($name:ident),*) => {
        mod inotify {
            $( #[test] fn $name() { super::$name(super::Backend::Inotify) } )*
        }
        mod fanotify {
            $( #[test] fn $name() { super::$name(super::Backend::Fanotify) } )*
        }
    };
}

per_backend!(
    each_event_kind,
    new_tree_is_covered,
    outside_is_filtered,
    files_and_missing_trees,
    batches_wait_for_quiet
);

#[test]
fn without_preference_a_backend_is_chosen() {
    let t = tree();
    let w = Watcher::start(std::slice::from_ref(&t.root), None).unwrap();
    eprintln!("backend chosen: {}", w.backend());
    fs::write(t.root.join("f"), b"").unwrap();
    expect(&w, &[t.root.join("f")]);
    drop(w); // stops its thread
}

#[test]
fn unclean_paths_are_reported_clean() {
    let t = tree();
    let unclean = t.root.join(".").join("sub/");
    fs::create_dir(t.root.join("sub")).unwrap();
    let w = Watcher::start(&[unclean], Some(Backend::Inotify)).unwrap();
    fs::write(t.root.join("sub/f"), b"").unwrap();
    expect(&w, &[t.root.join("sub/f")]);
}
