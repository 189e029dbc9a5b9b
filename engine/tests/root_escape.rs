//! A scan never opens a file outside its root: not through absolute or relative symlinks, and not
//! when a directory is swapped for a symlink while scans run. An inotify watch on a canary tree
//! outside the root proves it (it reports every open and read of the canaries, and is checked to
//! be live at the end).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fim_engine::config::{Config, ParseContext};
use fim_engine::scan::{ScanOptions, scan};
use fim_engine::scope::Scope;

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

/// An inotify instance reporting opens and reads of the watched directories and their files.
struct OpenWatch(i32);

impl OpenWatch {
    fn new(dirs: &[&Path]) -> OpenWatch {
        // SAFETY: plain syscalls; results checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1");
        for dir in dirs {
            let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
            let mask = libc::IN_OPEN | libc::IN_ACCESS;
            // SAFETY: c is a valid C string.
            let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
            assert!(wd >= 0, "inotify_add_watch {}", dir.display());
        }
        OpenWatch(fd)
    }

    /// Names (or "." for the directory itself) of everything opened or read since the last call.
    fn drain(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return names;
            }
            let mut off = 0;
            while off < n as usize {
                // SAFETY: the kernel writes whole inotify_event records.
                let ev = unsafe {
                    std::ptr::read_unaligned(buf[off..].as_ptr().cast::<libc::inotify_event>())
                };
                let head = std::mem::size_of::<libc::inotify_event>();
                let name = &buf[off + head..off + head + ev.len as usize];
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                names.push(if name.is_empty() {
                    ".".to_string()
                } else {
                    String::from_utf8_lossy(name).into_owned()
                });
                off += head + ev.len as usize;
            }
        }
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// Atomically exchanges two names (renameat2 RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) {
    let (a, b) = (
        CString::new(a.as_os_str().as_bytes()).unwrap(),
        CString::new(b.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "renameat2: {}", std::io::Error::last_os_error());
}

#[test]
fn no_file_outside_the_root_is_ever_opened() {
    // The canary tree: same names as inside the root, so a scan led astray finds them.
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary");
    std::fs::create_dir_all(canary.join("sub")).unwrap();
    std::fs::write(canary.join("f"), b"canary file").unwrap();
    std::fs::write(canary.join("sub/g"), b"canary file below").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::create_dir_all(r.join("d/sub")).unwrap();
    std::fs::write(r.join("d/f"), b"inside").unwrap();
    std::fs::write(r.join("d/sub/g"), b"inside below").unwrap();
    symlink("/etc/passwd", r.join("etc/passwd")).unwrap();
    symlink(canary.join("f"), r.join("etc/canary")).unwrap();
    symlink("/", r.join("lib")).unwrap();
    symlink(&canary, r.join("abs")).unwrap();
    symlink("../../../../../../../..", r.join("x")).unwrap();
    symlink(&canary, r.join("d.link")).unwrap();

    let watch = OpenWatch::new(&[&canary, &canary.join("sub")]);
    let config = cfg("/ p+i+n+u+g+s+m+c+sha256+xattrs+acl\n");

    // Swap `d` (a real directory) and `d.link` (a symlink to the canaries) as fast as possible.
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (a, b) = (r.join("d"), r.join("d.link"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                exchange(&a, &b);
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let started = Instant::now();
    let mut scans = 0;
    let mut opened = Vec::new();
    while started.elapsed() < Duration::from_secs(4) && opened.is_empty() {
        let mut opts = ScanOptions::new(r);
        opts.threads = 2;
        if scans % 2 == 1 {
            // A realtime rescan of the swapped paths: single-path lookups below the root.
            opts.scope = Some(Scope::of_changes([
                b"/d/f".as_slice(),
                b"/d/sub".as_slice(),
                b"/d.link/f".as_slice(),
            ]));
        }
        scan(&config, &opts, None, None).expect("scan");
        scans += 1;
        opened = watch.drain();
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(
        opened.is_empty(),
        "after {scans} scans and {} swaps, files outside the root were opened: {opened:?}",
        swaps.load(Ordering::Relaxed)
    );
    assert!(scans >= 20, "only {scans} scans ran");
    assert!(swaps.load(Ordering::Relaxed) >= 100, "the race barely ran");

    // The watch is live: opening a canary is seen.
    std::fs::read(canary.join("f")).unwrap();
    assert!(!watch.drain().is_empty(), "the canary watch reports opens");
}
