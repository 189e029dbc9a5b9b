//! The inotify backend: a watch per directory of the trees (and on the ancestors needed to see a
//! tree appear), kept in step with creates, removals and moves of directories.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::{Backend, Batch, Engine, Roots, WatchError, cstring, existing_dir, join_name};

const MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_ATTRIB
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DONT_FOLLOW
    | libc::IN_EXCL_UNLINK
    | libc::IN_ONLYDIR;

pub(crate) struct Inotify {
    fd: OwnedFd,
    roots: Roots,
    /// Watch descriptor → directory path, and back.
    wds: HashMap<i32, PathBuf>,
    dirs: HashMap<PathBuf, i32>,
}

impl Inotify {
    pub fn new(roots: Roots) -> Result<Inotify, WatchError> {
        // SAFETY: no preconditions; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(WatchError::io(
                Backend::Inotify,
                "inotify_init1",
                io::Error::last_os_error(),
            ));
        }
        let mut engine = Inotify {
            // SAFETY: a fresh fd that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            roots,
            wds: HashMap::new(),
            dirs: HashMap::new(),
        };
        engine.watch_roots().map_err(|(path, e)| {
            WatchError::io(Backend::Inotify, format!("watch {}", path.display()), e)
        })?;
        Ok(engine)
    }

    /// Watches every tree and what leads to it (idempotent: existing watches stay).
    fn watch_roots(&mut self) -> Result<(), (PathBuf, io::Error)> {
        let mut found = Vec::new();
        let starts: Vec<PathBuf> = self
            .roots
            .0
            .iter()
            .filter_map(|r| existing_dir(r.given.parent().unwrap_or(&r.given)))
            .collect();
        for start in starts {
            self.watch_tree(start, &mut found)?;
        }
        Ok(())
    }

    /// Watches `start` if it is in or above a tree, and below it every directory in a tree or on the
    /// way to one. Vanished directories and permission errors are skipped (a vanished directory
    /// has an event of its own); running out of watches is an error. Trees found on the way down
    /// from above them are added to `found`: their creation may have happened before the watch on
    /// their parent, so no event of their own may come.
    fn watch_tree(
        &mut self,
        start: PathBuf,
        found: &mut Vec<PathBuf>,
    ) -> Result<(), (PathBuf, io::Error)> {
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let inside = self.roots.contains(&dir);
            if !inside && !self.roots.leads_to(&dir) {
                continue;
            }
            match self.add_watch(&dir) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::EACCES | libc::ELOOP)
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err((dir, e)),
            }
            if inside {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(entry.path());
                    }
                }
            } else {
                for root in &self.roots.0 {
                    if let Ok(rest) = root.given.strip_prefix(&dir)
                        && let Some(next) = rest.components().next()
                    {
                        let next = dir.join(next);
                        if next == root.given && std::fs::symlink_metadata(&next).is_ok() {
                            found.push(next.clone());
                        }
                        stack.push(next);
                    }
                }
            }
        }
        Ok(())
    }

    fn add_watch(&mut self, dir: &Path) -> io::Result<()> {
        let c = cstring(dir)?;
        // SAFETY: c is a valid NUL-terminated string for the duration of the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(old) = self.dirs.insert(dir.to_path_buf(), wd)
            && old != wd
            && self.wds.get(&old).is_some_and(|p| p == dir)
        {
            self.wds.remove(&old);
        }
        if let Some(old) = self.wds.insert(wd, dir.to_path_buf())
            && old != dir
            && self.dirs.get(&old) == Some(&wd)
        {
            self.dirs.remove(&old);
        }
        Ok(())
    }

    /// Forgets (and removes) the watches at and under `dir`.
    fn unwatch_tree(&mut self, dir: &Path) {
        let gone: Vec<PathBuf> = self
            .dirs
            .keys()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect();
        for path in gone {
            if let Some(wd) = self.dirs.remove(&path) {
                self.wds.remove(&wd);
                // SAFETY: plain syscall on our fd; an already removed watch just fails (EINVAL).
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
            }
        }
    }

    #[cfg(test)]
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.dirs.keys().cloned().collect();
        v.sort();
        v
    }
}

impl Engine for Inotify {
    fn backend(&self) -> Backend {
        Backend::Inotify
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn process(&mut self, buf: &[u8], out: &mut Batch) {
        let mut overflowed = false;
        for ev in parse(buf) {
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                overflowed = true;
                continue;
            }
            if ev.mask & libc::IN_IGNORED != 0 {
                if let Some(path) = self.wds.remove(&ev.wd)
                    && self.dirs.get(&path) == Some(&ev.wd)
                {
                    self.dirs.remove(&path);
                }
                continue;
            }
            let Some(dir) = self.wds.get(&ev.wd) else {
                continue;
            };
            let path = join_name(dir, ev.name);
            if ev.mask & libc::IN_ISDIR != 0 && !ev.name.is_empty() {
                if ev.mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0 {
                    self.unwatch_tree(&path);
                }
                if ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                    let mut found = Vec::new();
                    if let Err((p, e)) = self.watch_tree(path.clone(), &mut found) {
                        tracing::warn!(path = %p.display(), error = %e, "cannot watch a new directory");
                        out.overflow = true;
                    }
                    out.paths.extend(found);
                }
            }
            if self.roots.contains(&path) {
                out.paths.insert(path);
            }
        }
        if overflowed {
            out.overflow = true;
            // Creates of directories may be among the lost events: add what is missing.
            if let Err((p, e)) = self.watch_roots() {
                tracing::warn!(path = %p.display(), error = %e, "cannot watch a directory");
            }
        }
    }
}

/// One `struct inotify_event`, the name without its NUL padding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Event<'a> {
    pub wd: i32,
    pub mask: u32,
    pub cookie: u32,
    pub name: &'a [u8],
}

const HEADER: usize = 16;

/// The events in what one `read` returned; a truncated tail is ignored.
pub(crate) fn parse(buf: &[u8]) -> impl Iterator<Item = Event<'_>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let head = buf.get(off..off + HEADER)?;
        let u32_at = |i: usize| u32::from_ne_bytes(head[i..i + 4].try_into().expect("4 bytes"));
        let len = u32_at(12) as usize;
        let name = buf.get(off + HEADER..off + HEADER + len)?;
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        off += HEADER + len;
        Some(Event {
            wd: u32_at(0) as i32,
            mask: u32_at(4),
            cookie: u32_at(8),
            name,
        })
    })
}

#[cfg(test)]
pub(crate) fn encode(wd: i32, mask: u32, name: &[u8]) -> Vec<u8> {
    let len = if name.is_empty() {
        0
    } else {
        (name.len() + 1).next_multiple_of(16)
    };
    let mut v = Vec::new();
    v.extend_from_slice(&wd.to_ne_bytes());
    v.extend_from_slice(&mask.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(&(len as u32).to_ne_bytes());
    v.extend_from_slice(name);
    v.resize(HEADER + len, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::Roots;

    fn engine(dir: &Path) -> Inotify {
        Inotify::new(Roots::new(&[dir.join("root")])).expect("inotify")
    }

    fn read_all(engine: &mut Inotify, out: &mut Batch) {
        let mut buf = vec![0u64; 8192];
        loop {
            // SAFETY: reads into our own buffer.
            let n = unsafe { libc::read(engine.fd(), buf.as_mut_ptr().cast(), buf.len() * 8) };
            if n <= 0 {
                break;
            }
            // SAFETY: n bytes were written by the kernel.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            engine.process(bytes, out);
        }
    }

    #[test]
    fn parses_events_and_names() {
        let mut buf = encode(3, libc::IN_CREATE, b"a\xffb");
        buf.extend(encode(-1, libc::IN_Q_OVERFLOW, b""));
        buf.extend(&[1, 2, 3]); // truncated
        let events: Vec<Event> = parse(&buf).collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].wd, 3);
        assert_eq!(events[0].mask, libc::IN_CREATE);
        assert_eq!(events[0].name, b"a\xffb");
        assert_eq!(events[1].mask, libc::IN_Q_OVERFLOW);
        assert_eq!(events[1].name, b"");
    }

    #[test]
    fn overflow_event_sets_overflow_and_rewatches() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut engine = engine(tmp.path());
        // a directory created while events were lost
        std::fs::create_dir_all(root.join("x/y")).unwrap();
        let mut out = Batch::default();
        engine.process(&encode(-1, libc::IN_Q_OVERFLOW, b""), &mut out);
        assert!(out.overflow);
        assert!(
            engine.watched().contains(&root.join("x/y")),
            "{:?}",
            engine.watched()
        );
    }

    #[test]
    fn kernel_queue_overflow_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut engine = engine(tmp.path());
        let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(16384);
        // nothing reads while these are created: each create is an event of its own
        for i in 0..max + 64 {
            std::fs::File::create(root.join(format!("f{i}"))).unwrap();
        }
        let mut out = Batch::default();
        read_all(&mut engine, &mut out);
        assert!(out.overflow);
    }

    #[test]
    fn events_outside_the_tree_and_on_the_way_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        // the tree does not exist yet: its parent (base) is watched for it
        let mut engine = Inotify::new(Roots::new(&[base.join("a/root")])).unwrap();
        assert_eq!(engine.watched(), vec![base.clone()]);
        std::fs::write(base.join("outside"), b"x").unwrap();
        std::fs::create_dir_all(base.join("a/root/sub")).unwrap();
        let mut out = Batch::default();
        read_all(&mut engine, &mut out);
        assert!(!out.overflow);
        // "a" is not in the tree; "a/root" is reported (its subtree gets rescanned)
        assert_eq!(
            out.paths.iter().collect::<Vec<_>>(),
            vec![&base.join("a/root")]
        );
        assert_eq!(
            engine.watched(),
            vec![
                base.clone(),
                base.join("a"),
                base.join("a/root"),
                base.join("a/root/sub")
            ]
        );
    }
}
