//! Realtime change watcher: tells the daemon, within milliseconds, which paths under the monitored
//! trees changed, so it can rescan just those and report within a second.
//!
//! ```no_run
//! use std::path::PathBuf;
//! use std::time::Duration;
//! use fim_agent::realtime::Watcher;
//!
//! let dirs = [PathBuf::from("/host/etc"), PathBuf::from("/host/usr/bin")];
//! let watcher = Watcher::start(&dirs, None)?; // fanotify if permitted, else inotify
//! loop {
//!     // first event within 1 s, then until 20 ms pass quietly (at most 200 ms in all)
//!     let Some(batch) = watcher.next_batch(
//!         Duration::from_secs(1), Duration::from_millis(20), Duration::from_millis(200),
//!     ) else { continue };
//!     if batch.overflow { /* events were lost: full scan */ } else { /* rescan batch.paths */ }
//! }
//! # Ok::<(), fim_agent::realtime::WatchError>(())
//! ```
//!
//! # What a batch holds
//! [`Batch::paths`] are filesystem paths (as given to [`Watcher::start`], made absolute) at or under
//! the watched trees: the changed entry itself, whatever it is (a file that was created, written,
//! chmod-ed, chown-ed, touched or removed, a new, removed or renamed directory, a symlink, a new hard
//! link; both names of a rename). A new or moved-in directory is reported as itself and its contents
//! may not be listed one by one: the caller rescans its subtree (this closes the race between
//! `mkdir -p a/b/c && touch a/b/c/f` and inotify adding watches). A path in a batch may no longer
//! exist (removed, renamed away): rescanning it tells the caller it is gone. Anything outside the
//! trees is filtered out. [`Batch::overflow`] means events were lost (kernel queue overflow, a watch
//! that could not be added, too many pending paths, the watcher failing): the caller must do a full
//! scan; `paths` is then incomplete, possibly empty.
//!
//! A watched path need not be a directory or even exist: a file is watched through its parent, and
//! a missing tree is reported when it appears (its nearest existing ancestor is watched for it).
//! Symlinks are never followed, the watched path itself included.
//!
//! # Threading
//! [`Watcher::start`] sets up every watch before it returns (a change made after it is never
//! missed), then one thread per watcher drains the kernel queue continuously (so the kernel queue
//! rarely overflows while the caller is busy rescanning) into a set of pending paths.
//! [`Watcher::next_batch`] blocks (call it from a plain or `spawn_blocking` thread) and may be called
//! from several threads; dropping the watcher stops the thread.
//!
//! # Backends
//! - **fanotify** (preferred): one `FAN_MARK_FILESYSTEM` mark per filesystem the trees live on
//!   (submounts under a tree included, best effort), in FID mode with `FAN_REPORT_DFID_NAME`, so
//!   creates, deletes and renames carry the parent directory's file handle and the entry's name.
//!   The handle is resolved with `open_by_handle_at` on a directory of that filesystem and
//!   `readlink /proc/self/fd/N` (directory paths are cached; the cache is dropped whenever a
//!   directory is renamed or removed). There is nothing to add when directories appear, so there is
//!   no race with new trees. A filesystem mark sees the whole filesystem: events outside the trees
//!   cost a cached lookup and are dropped. Needs `CAP_SYS_ADMIN` (fanotify_init) and
//!   `CAP_DAC_READ_SEARCH` (open_by_handle_at), and a filesystem with file handles and a non-zero
//!   fsid (ext4, xfs, btrfs, tmpfs on 5.13+, overlayfs on 6.6+...). `FAN_MARK_MOUNT` is not an
//!   option: the kernel refuses directory-entry events (create, delete, move) on mount marks
//!   (EINVAL, checked here on 6.18). Filesystems mounted under a tree after the start are not seen.
//!   Tested here (root in the sandbox, kernel 6.18, ext4).
//! - **inotify** (fallback, or when asked for): one watch per directory of the trees plus the
//!   ancestors needed to see a tree (re)appear; watches are added for new and moved-in directories
//!   and dropped for removed and moved-out ones; after a queue overflow every tree is walked again to
//!   add missing watches. Limited by `fs.inotify.max_user_watches` (a start that hits it fails; a
//!   new directory that hits it later yields an overflow batch).
//!
//! `prefer`: `None` tries fanotify and falls back to inotify when fanotify cannot be used (not
//! permitted, unsupported filesystem); `Some(backend)` uses that backend only, and fails if it
//! cannot be used.
//!
//! Latency is not a test (timing targets are benchmarks). To measure it: change a file, time until
//! `next_batch` returns it; the delay is the `quiet` period plus the event handling (well under a
//! millisecond per event on either backend; fanotify pays one `open_by_handle_at` per directory not
//! yet cached).

mod fanotify;
mod inotify;
pub mod supervisor;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The kernel interface a [`Watcher`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Fanotify,
    Inotify,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Fanotify => "fanotify",
            Backend::Inotify => "inotify",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The backend could not be set up: `what` says which step, on which path.
    #[error("{backend}: {what}: {source}")]
    Io {
        backend: Backend,
        what: String,
        #[source]
        source: io::Error,
    },
    /// Without a preference, fanotify failed and so did the inotify fallback.
    #[error("fanotify failed ({fanotify}), and so did the inotify fallback ({inotify})")]
    Both {
        fanotify: Box<WatchError>,
        inotify: Box<WatchError>,
    },
    #[error("cannot start the watcher thread: {0}")]
    Thread(#[source] io::Error),
}

impl WatchError {
    pub(crate) fn io(backend: Backend, what: impl Into<String>, source: io::Error) -> Self {
        WatchError::Io {
            backend,
            what: what.into(),
            source,
        }
    }
}

/// The changes collected by one [`Watcher::next_batch`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Changed entries at or under the watched trees (see the module docs).
    pub paths: BTreeSet<PathBuf>,
    /// Events were lost: the caller must do a full scan (`paths` is then incomplete).
    pub overflow: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.overflow
    }
}

/// At most this many distinct paths wait for the caller; beyond it the batch becomes an overflow
/// (a full scan is cheaper than that many single rescans, and memory stays bounded).
const MAX_PENDING_PATHS: usize = 100_000;

/// Watches trees for changes; see the module docs.
pub struct Watcher {
    backend: Backend,
    shared: Arc<Shared>,
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// Watches the trees `dirs` (filesystem paths, already mapped under the host root). Every watch
    /// is in place when this returns. See the module docs for `prefer`.
    pub fn start(dirs: &[PathBuf], prefer: Option<Backend>) -> Result<Watcher, WatchError> {
        let roots = Roots::new(dirs);
        let engine: Box<dyn Engine> = match prefer {
            Some(Backend::Fanotify) => Box::new(fanotify::Fanotify::new(roots)?),
            Some(Backend::Inotify) => Box::new(inotify::Inotify::new(roots)?),
            None => match fanotify::Fanotify::new(roots.clone()) {
                Ok(engine) => Box::new(engine),
                Err(fan) => {
                    tracing::info!(error = %fan, "fanotify not usable, watching with inotify");
                    match inotify::Inotify::new(roots) {
                        Ok(engine) => Box::new(engine),
                        Err(ino) => {
                            return Err(WatchError::Both {
                                fanotify: Box::new(fan),
                                inotify: Box::new(ino),
                            });
                        }
                    }
                }
            },
        };
        let backend = engine.backend();
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(WatchError::io(
                backend,
                "eventfd",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: a freshly created fd that nothing else owns.
        let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(stop) });
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name(format!("fim-{backend}"))
            .spawn({
                let shared = shared.clone();
                let stop = stop.clone();
                move || run(engine, &stop, &shared)
            })
            .map_err(WatchError::Thread)?;
        Ok(Watcher {
            backend,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Blocks up to `timeout` for the first event, then keeps collecting until `quiet` passes
    /// without a new event (or `max_wait` passes since the first), and returns the batch; `None`
    /// when nothing happened within `timeout`. Events that arrived while nobody was waiting count
    /// from their arrival, so a late call returns at once.
    pub fn next_batch(
        &self,
        timeout: Duration,
        quiet: Duration,
        max_wait: Duration,
    ) -> Option<Batch> {
        self.shared.next_batch(timeout, quiet, max_wait)
    }

    /// Why the watcher thread stopped, if it did (it then delivered an overflow batch, and no events
    /// follow: the caller should fall back to periodic scans or start a new watcher).
    pub fn error(&self) -> Option<String> {
        self.shared.lock().error.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Default)]
struct Pending {
    batch: Batch,
    /// When the first and the latest undelivered event arrived.
    first: Option<Instant>,
    last: Option<Instant>,
    error: Option<String>,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(
        &self,
        guard: MutexGuard<'a, Pending>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, Pending> {
        match timeout {
            None => self.cond.wait(guard).unwrap_or_else(|e| e.into_inner()),
            Some(t) => {
                self.cond
                    .wait_timeout(guard, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        }
    }

    fn next_batch(&self, timeout: Duration, quiet: Duration, max_wait: Duration) -> Option<Batch> {
        let deadline = Instant::now().checked_add(timeout);
        let mut pending = self.lock();
        while pending.first.is_none() {
            pending = match deadline {
                None => self.wait(pending, None),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    self.wait(pending, Some(deadline - now))
                }
            };
        }
        loop {
            let (Some(first), Some(last)) = (pending.first, pending.last) else {
                unreachable!("first and last are set together")
            };
            let until = match (last.checked_add(quiet), first.checked_add(max_wait)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let now = Instant::now();
            match until {
                Some(until) if now >= until => break,
                Some(until) => pending = self.wait(pending, Some(until - now)),
                None => pending = self.wait(pending, None),
            }
        }
        pending.first = None;
        pending.last = None;
        Some(std::mem::take(&mut pending.batch))
    }

    /// Hands what `out` collected to the waiting caller and empties it.
    fn deliver(&self, out: &mut Batch) {
        if out.is_empty() {
            return;
        }
        let mut pending = self.lock();
        let p = &mut *pending;
        p.batch.overflow |= out.overflow;
        if !p.batch.overflow {
            p.batch.paths.append(&mut out.paths);
            if p.batch.paths.len() > MAX_PENDING_PATHS {
                p.batch.overflow = true;
            }
        }
        if p.batch.overflow {
            p.batch.paths.clear();
        }
        out.paths.clear();
        out.overflow = false;
        let now = Instant::now();
        p.first.get_or_insert(now);
        p.last = Some(now);
        drop(pending);
        self.cond.notify_all();
    }

    fn fail(&self, error: String) {
        tracing::error!(%error, "realtime watcher stopped");
        self.lock().error = Some(error);
        self.deliver(&mut Batch {
            overflow: true,
            ..Batch::default()
        });
    }
}

/// A backend: owns its kernel fd and turns what `read` returns into paths.
pub(crate) trait Engine: Send {
    fn backend(&self) -> Backend;
    fn fd(&self) -> RawFd;
    /// Handles the events in `buf` (one `read`), adding changed paths (or an overflow) to `out`.
    fn process(&mut self, buf: &[u8], out: &mut Batch);
}

/// The watcher thread: drains the engine's fd until `stop` is readable.
fn run(mut engine: Box<dyn Engine>, stop: &OwnedFd, shared: &Shared) {
    // 256 KiB, 8-byte aligned; both kernels return whole events only.
    let mut buf = vec![0u64; 32 * 1024];
    let mut out = Batch::default();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: engine.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a live array of two pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return shared.fail(format!("poll: {err}"));
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return shared.fail(format!("{} fd reported an error", engine.backend()));
        }
        loop {
            // SAFETY: reads into our own buffer of the given length.
            let n = unsafe {
                libc::read(
                    engine.fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len() * std::mem::size_of::<u64>(),
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return shared.fail(format!("read: {err}")),
                }
            }
            if n == 0 {
                break;
            }
            // SAFETY: the kernel initialised the first n bytes of buf.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            engine.process(bytes, &mut out);
            shared.deliver(&mut out);
        }
    }
}

/// One watched tree: the path as given (made absolute, lexically cleaned), and where it really is
/// (its parent canonicalized, the last component kept: the tree itself is never followed).
#[derive(Clone, Debug)]
pub(crate) struct Root {
    pub given: PathBuf,
    pub real: PathBuf,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Roots(pub Vec<Root>);

impl Roots {
    pub fn new(dirs: &[PathBuf]) -> Roots {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let mut roots: Vec<Root> = Vec::new();
        for dir in dirs {
            let given = clean(&cwd.join(dir));
            if roots.iter().any(|r| r.given == given) {
                continue;
            }
            let real = real_path(&given);
            roots.push(Root { given, real });
        }
        Roots(roots)
    }

    /// `path` is one of the trees or inside one.
    pub fn contains(&self, path: &Path) -> bool {
        self.0.iter().any(|r| path.starts_with(&r.given))
    }

    /// `path` is above a tree (and not inside another one).
    pub fn leads_to(&self, path: &Path) -> bool {
        self.0
            .iter()
            .any(|r| r.given.starts_with(path) && r.given != path)
    }

    /// Maps a real path (as the kernel names it) to the given path of the tree it is in.
    pub fn map_real(&self, real: &Path) -> Option<PathBuf> {
        self.0.iter().find_map(|r| {
            real.strip_prefix(&r.real).ok().map(|rest| {
                if rest.as_os_str().is_empty() {
                    r.given.clone()
                } else {
                    r.given.join(rest)
                }
            })
        })
    }
}

/// Removes `.` components and repeated or trailing slashes (not `..`: that needs the filesystem).
fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The parent canonicalized (as far up as it exists), the rest appended as is.
fn real_path(path: &Path) -> PathBuf {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_path_buf();
    };
    match std::fs::canonicalize(parent) {
        Ok(parent) => parent.join(name),
        Err(_) => real_path(parent).join(name),
    }
}

/// The nearest existing directory at or above `path` (not following a final symlink).
pub(crate) fn existing_dir(path: &Path) -> Option<PathBuf> {
    let mut p = Some(path);
    while let Some(dir) = p {
        if std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
            return Some(dir.to_path_buf());
        }
        p = dir.parent();
    }
    None
}

/// `dir/name`, or `dir` for an empty name or `.` (an event on the directory itself).
pub(crate) fn join_name(dir: &Path, name: &[u8]) -> PathBuf {
    if name.is_empty() || name == b"." {
        dir.to_path_buf()
    } else {
        dir.join(OsStr::from_bytes(name))
    }
}

pub(crate) fn cstring(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_contain_lead_to_and_map() {
        let roots = Roots(vec![
            Root {
                given: PathBuf::from("/host/etc"),
                real: PathBuf::from("/real/host/etc"),
            },
            Root {
                given: PathBuf::from("/host/usr/bin"),
                real: PathBuf::from("/real/host/usr/bin"),
            },
        ]);
        assert!(roots.contains(Path::new("/host/etc")));
        assert!(roots.contains(Path::new("/host/etc/passwd")));
        assert!(!roots.contains(Path::new("/host/etcetera")));
        assert!(!roots.contains(Path::new("/host")));
        assert!(roots.leads_to(Path::new("/host")));
        assert!(roots.leads_to(Path::new("/host/usr")));
        assert!(!roots.leads_to(Path::new("/host/etc")));
        assert!(!roots.leads_to(Path::new("/host/var")));
        assert_eq!(
            roots.map_real(Path::new("/real/host/usr/bin/ls")),
            Some(PathBuf::from("/host/usr/bin/ls"))
        );
        assert_eq!(
            roots.map_real(Path::new("/real/host/etc")),
            Some(PathBuf::from("/host/etc"))
        );
        assert_eq!(roots.map_real(Path::new("/host/etc/passwd")), None);
        assert_eq!(roots.map_real(Path::new("/real/host/etc2")), None);
    }

    #[test]
    fn clean_and_join() {
        assert_eq!(clean(Path::new("/a/./b//c/")), PathBuf::from("/a/b/c"));
        assert_eq!(join_name(Path::new("/a"), b"."), PathBuf::from("/a"));
        assert_eq!(join_name(Path::new("/a"), b""), PathBuf::from("/a"));
        assert_eq!(
            join_name(Path::new("/a"), b"\xff\n"),
            Path::new("/a").join(OsStr::from_bytes(b"\xff\n"))
        );
    }

    #[test]
    fn batches_wait_for_quiet_and_overflow_drops_paths() {
        let shared = Shared::default();
        let mut out = Batch::default();
        out.paths.insert(PathBuf::from("/a"));
        shared.deliver(&mut out);
        assert!(out.paths.is_empty());
        out.overflow = true;
        out.paths.insert(PathBuf::from("/b"));
        shared.deliver(&mut out);
        let p = shared.lock();
        assert!(p.batch.overflow);
        assert!(p.batch.paths.is_empty());
    }
}
