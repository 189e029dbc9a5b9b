//! Realtime detection in containers: one inotify instance, a watch on each monitored directory
//! (and each directory holding a monitored file) of each container. A watch is added on
//! `/proc/self/fd/<n>` of a directory opened through the container's fd-anchored root, so a
//! symlink inside the container never places a watch outside it. An event only says "check this
//! container now": the check itself reads through the root as always. Directories created later
//! are watched after the check that finds files in them; the periodic check covers the rest.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use fim_engine::root::Root;
use rustix::fs::OFlags;

use super::Key;
use super::compare::Lines;

/// At most this many directories are watched per container.
const MAX_WATCHES_PER_CONTAINER: usize = 1000;

const MASK: u32 = libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

pub struct Watches {
    fd: OwnedFd,
    by_wd: HashMap<i32, Key>,
    by_key: HashMap<Key, BTreeSet<i32>>,
}

impl Watches {
    pub fn new() -> std::io::Result<Watches> {
        // SAFETY: no preconditions; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Watches {
            // SAFETY: a new descriptor nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            by_wd: HashMap::new(),
            by_key: HashMap::new(),
        })
    }

    /// Watches `paths` and the directories of `files` (relative paths) of container `key`.
    pub fn watch(&mut self, key: Key, root: &Root, paths: &[String], files: &Lines) {
        let mut dirs: BTreeSet<String> = paths.iter().cloned().collect();
        for f in files.keys() {
            if let Some((dir, _)) = f.rsplit_once('/') {
                dirs.insert(format!("/{dir}"));
            }
        }
        let wds = self.by_key.entry(key.clone()).or_default();
        for dir in dirs.into_iter().take(MAX_WATCHES_PER_CONTAINER) {
            let Ok(fd) = root.open_node(
                dir.as_bytes(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            ) else {
                continue;
            };
            let Ok(path) = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
                continue;
            };
            // SAFETY: valid inotify fd and NUL-terminated path.
            let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), MASK) };
            if wd >= 0 {
                wds.insert(wd);
                self.by_wd.insert(wd, key.clone());
            }
        }
    }

    /// Drops the watches of containers not in `live`.
    pub fn retain(&mut self, live: &BTreeSet<Key>) {
        let gone: Vec<Key> = self
            .by_key
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            for wd in self.by_key.remove(&key).unwrap_or_default() {
                self.by_wd.remove(&wd);
                // SAFETY: valid fd; a stale wd just fails.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
            }
        }
    }

    /// Waits up to `timeout` for events, then 20 ms more for the rest of a burst; the containers
    /// they concern.
    pub fn wait(&mut self, timeout: Duration) -> BTreeSet<Key> {
        let mut due = BTreeSet::new();
        if self.poll(timeout) {
            self.drain(&mut due);
            while self.poll(Duration::from_millis(20)) {
                self.drain(&mut due);
            }
        }
        due
    }

    fn poll(&self, timeout: Duration) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) > 0 }
    }

    fn drain(&mut self, due: &mut BTreeSet<Key>) {
        let mut buf = [0u8; 16384];
        loop {
            // SAFETY: reads into a live buffer of that size.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote a whole event header at `at` (unaligned read).
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
                if event.mask & libc::IN_Q_OVERFLOW != 0 {
                    // Events were lost: every watched container is checked.
                    due.extend(self.by_key.keys().cloned());
                } else if let Some(key) = self.by_wd.get(&event.wd) {
                    due.insert(key.clone());
                }
                at += header + event.len as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_under_a_watched_directory_names_its_container_and_symlinks_are_not_watched() {
        // Only directories and a symlink exist before the watch: no file is written before it.
        // A file written then can still raise an event after the watch is added, when a process
        // another test spawns at that moment inherits the open descriptor and closes it at exec
        // (IN_CLOSE_WRITE; seen in CI alongside process.rs's test).
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("srv/html")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        let key: Key = ("team".into(), "web-1".into(), "web".into());
        let mut w = Watches::new().unwrap();
        let files = Lines::from([("srv/html/index.html".into(), "00".into())]);
        w.watch(
            key.clone(),
            &root,
            &["/srv".into(), "/escape".into()],
            &files,
        );
        assert_eq!(w.by_wd.len(), 2, "/srv and /srv/html; not the symlink");
        assert!(w.wait(Duration::from_millis(10)).is_empty());

        std::fs::write(outside.path().join("x"), "outside").unwrap();
        assert!(
            w.wait(Duration::from_millis(100)).is_empty(),
            "outside is not watched"
        );
        std::fs::write(dir.path().join("srv/html/index.html"), "tampered").unwrap();
        assert_eq!(
            w.wait(Duration::from_secs(1)),
            BTreeSet::from([key.clone()])
        );

        w.retain(&BTreeSet::new());
        std::fs::write(dir.path().join("srv/html/index.html"), "again").unwrap();
        assert!(w.wait(Duration::from_millis(100)).is_empty(), "dropped");
    }
}
