//! The fanotify backend: `FAN_MARK_FILESYSTEM` marks in FID mode (`FAN_REPORT_DFID_NAME`); each
//! event names its parent directory by file handle plus the entry's name.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Backend, Batch, Engine, Roots, WatchError, cstring, existing_dir, join_name};

// linux/fanotify.h (spelled out: not every libc release carries the FID-mode ones)
const FAN_CLOEXEC: u32 = 0x1;
const FAN_NONBLOCK: u32 = 0x2;
const FAN_CLASS_NOTIF: u32 = 0x0;
const FAN_REPORT_DIR_FID: u32 = 0x400;
const FAN_REPORT_NAME: u32 = 0x800;
const FAN_REPORT_DFID_NAME: u32 = FAN_REPORT_DIR_FID | FAN_REPORT_NAME;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_FILESYSTEM: u32 = 0x100;

pub(crate) const FAN_MODIFY: u64 = 0x2;
pub(crate) const FAN_ATTRIB: u64 = 0x4;
pub(crate) const FAN_CLOSE_WRITE: u64 = 0x8;
pub(crate) const FAN_MOVED_FROM: u64 = 0x40;
pub(crate) const FAN_MOVED_TO: u64 = 0x80;
pub(crate) const FAN_CREATE: u64 = 0x100;
pub(crate) const FAN_DELETE: u64 = 0x200;
pub(crate) const FAN_Q_OVERFLOW: u64 = 0x4000;
pub(crate) const FAN_ONDIR: u64 = 0x4000_0000;

const MASK: u64 = FAN_CREATE
    | FAN_DELETE
    | FAN_MOVED_FROM
    | FAN_MOVED_TO
    | FAN_MODIFY
    | FAN_CLOSE_WRITE
    | FAN_ATTRIB
    | FAN_ONDIR;

pub(crate) const INFO_FID: u8 = 1;
pub(crate) const INFO_DFID_NAME: u8 = 2;
pub(crate) const INFO_DFID: u8 = 3;
pub(crate) const INFO_OLD_DFID_NAME: u8 = 10;
pub(crate) const INFO_NEW_DFID_NAME: u8 = 12;
const METADATA_VERSION: u8 = 3;
const METADATA_LEN: usize = 24;

/// At most this many directory handles are cached (then the cache starts over).
const CACHE_MAX: usize = 64 * 1024;

pub(crate) struct Fanotify {
    fd: OwnedFd,
    roots: Roots,
    /// fsid → an open directory on that filesystem, for open_by_handle_at.
    mounts: HashMap<[i32; 2], OwnedFd>,
    /// fsid + file handle → the directory's real path (None: it no longer exists).
    cache: HashMap<Vec<u8>, Option<PathBuf>>,
}

impl Fanotify {
    pub fn new(roots: Roots) -> Result<Fanotify, WatchError> {
        let err = |what: String, e: io::Error| WatchError::io(Backend::Fanotify, what, e);
        // SAFETY: no preconditions; the result is checked.
        let fd = unsafe {
            libc::fanotify_init(
                FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME,
                (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_LARGEFILE) as u32,
            )
        };
        if fd < 0 {
            return Err(err(
                "fanotify_init(FAN_REPORT_DFID_NAME)".into(),
                io::Error::last_os_error(),
            ));
        }
        let mut engine = Fanotify {
            // SAFETY: a fresh fd that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            roots,
            mounts: HashMap::new(),
            cache: HashMap::new(),
        };
        let points: Vec<PathBuf> = engine
            .roots
            .0
            .iter()
            .filter_map(|r| existing_dir(&r.real))
            .collect();
        for point in points {
            engine
                .mark(&point)
                .map_err(|e| err(format!("mark the filesystem of {}", point.display()), e))?;
        }
        let reals: Vec<PathBuf> = engine.roots.0.iter().map(|r| r.real.clone()).collect();
        for mount in submounts(&reals) {
            if let Err(e) = engine.mark(&mount) {
                tracing::warn!(mount = %mount.display(), error = %e,
                    "cannot watch a filesystem mounted in a monitored tree; periodic scans cover it");
            }
        }
        Ok(engine)
    }

    /// Marks the filesystem `dir` is on (once per filesystem).
    fn mark(&mut self, dir: &Path) -> io::Result<()> {
        let c = cstring(dir)?;
        // SAFETY: c is a valid NUL-terminated string; the result is checked.
        let raw = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let dirfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let fsid = fsid(&dirfd)?;
        if self.mounts.contains_key(&fsid) {
            return Ok(());
        }
        // SAFETY: dirfd is open; a null path marks the object dirfd refers to.
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                FAN_MARK_ADD | FAN_MARK_FILESYSTEM,
                MASK,
                dirfd.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.mounts.insert(fsid, dirfd);
        Ok(())
    }

    /// The real path of the directory a handle names; None when it is gone or unknown. An
    /// unexpected failure (out of fds...) sets `overflow`: the event is lost.
    fn resolve(&mut self, fsid: [i32; 2], handle: &[u8], overflow: &mut bool) -> Option<PathBuf> {
        let mut key = Vec::with_capacity(8 + handle.len());
        key.extend_from_slice(&fsid[0].to_ne_bytes());
        key.extend_from_slice(&fsid[1].to_ne_bytes());
        key.extend_from_slice(handle);
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let mount = self.mounts.get(&fsid)?;
        // struct file_handle needs 4-byte alignment
        let mut aligned = vec![0u32; handle.len().div_ceil(4)];
        // SAFETY: aligned holds at least handle.len() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                handle.as_ptr(),
                aligned.as_mut_ptr().cast::<u8>(),
                handle.len(),
            )
        };
        // SAFETY: aligned holds a complete struct file_handle (header + handle_bytes, checked by
        // the parser); the result is checked.
        let raw = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                aligned.as_mut_ptr().cast(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        let resolved = if raw < 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)) {
                tracing::warn!(error = %e, "open_by_handle_at");
                *overflow = true;
                return None;
            }
            None
        } else {
            // SAFETY: a fresh fd that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            path_of(&fd)
        };
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(key, resolved.clone());
        resolved
    }
}

impl Engine for Fanotify {
    fn backend(&self) -> Backend {
        Backend::Fanotify
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn process(&mut self, buf: &[u8], out: &mut Batch) {
        for ev in parse(buf) {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable fanotify event");
                    out.overflow = true;
                    break;
                }
            };
            if ev.fd >= 0 {
                // SAFETY: the kernel opened this fd for us (not in FID mode, but be safe).
                drop(unsafe { OwnedFd::from_raw_fd(ev.fd) });
            }
            if ev.mask & FAN_Q_OVERFLOW != 0 {
                out.overflow = true;
                continue;
            }
            for rec in records(ev.info) {
                if !matches!(
                    rec.info_type,
                    INFO_FID | INFO_DFID | INFO_DFID_NAME | INFO_OLD_DFID_NAME | INFO_NEW_DFID_NAME
                ) {
                    continue;
                }
                let Some(dir) = self.resolve(rec.fsid, rec.handle, &mut out.overflow) else {
                    // Gone: it was removed, and so was its entry in a surviving ancestor, which
                    // has an event of its own.
                    continue;
                };
                if let Some(path) = self.roots.map_real(&join_name(&dir, rec.name)) {
                    out.paths.insert(path);
                }
            }
            if ev.mask & FAN_ONDIR != 0
                && ev.mask & (FAN_MOVED_FROM | FAN_MOVED_TO | FAN_DELETE) != 0
            {
                // a directory moved or went: cached paths below it are wrong now
                self.cache.clear();
            }
        }
    }
}

fn fsid(fd: &OwnedFd) -> io::Result<[i32; 2]> {
    // SAFETY: statfs is plain old data; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open and st is a valid out pointer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsid_t is two ints (its field is private in libc).
    Ok(unsafe { std::mem::transmute::<libc::fsid_t, [i32; 2]>(st.f_fsid) })
}

/// The path of an open directory, None when it has been removed.
fn path_of(fd: &OwnedFd) -> Option<PathBuf> {
    // SAFETY: stat is plain old data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open (O_PATH fds allow fstat) and st is a valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 || st.st_nlink == 0 {
        return None;
    }
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

/// Mount points strictly inside the trees, from /proc/self/mountinfo.
fn submounts(trees: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|p| PathBuf::from(OsStr::from_bytes(&unescape(p))))
        .filter(|p| trees.iter().any(|t| p.starts_with(t) && p != t))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// One event: its metadata and the bytes of its info records.
#[derive(Debug)]
pub(crate) struct Event<'a> {
    pub mask: u64,
    pub fd: i32,
    pub info: &'a [u8],
}

/// A file-handle info record: `handle` is the whole `struct file_handle`.
#[derive(Debug)]
pub(crate) struct FidRecord<'a> {
    pub info_type: u8,
    pub fsid: [i32; 2],
    pub handle: &'a [u8],
    pub name: &'a [u8],
}

fn u16_at(b: &[u8], i: usize) -> usize {
    u16::from_ne_bytes([b[i], b[i + 1]]) as usize
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

/// The events in what one `read` returned.
pub(crate) fn parse(buf: &[u8]) -> impl Iterator<Item = Result<Event<'_>, String>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let rest = buf.get(off..)?;
        if rest.len() < METADATA_LEN {
            return None;
        }
        let event_len = u32_at(rest, 0) as usize;
        let vers = rest[4];
        let metadata_len = u16_at(rest, 6);
        if vers != METADATA_VERSION {
            off = buf.len();
            return Some(Err(format!(
                "fanotify metadata version {vers}, expected {METADATA_VERSION}"
            )));
        }
        if metadata_len < METADATA_LEN || event_len < metadata_len || event_len > rest.len() {
            off = buf.len();
            return Some(Err(format!(
                "bad fanotify event length {event_len}/{metadata_len}"
            )));
        }
        off += event_len;
        Some(Ok(Event {
            mask: u64::from_ne_bytes(rest[8..16].try_into().expect("8 bytes")),
            fd: u32_at(rest, 16) as i32,
            info: &rest[metadata_len..event_len],
        }))
    })
}

/// The FID records among an event's info records (other types are skipped).
pub(crate) fn records(info: &[u8]) -> impl Iterator<Item = FidRecord<'_>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        loop {
            let rest = info.get(off..)?;
            if rest.len() < 4 {
                return None;
            }
            let info_type = rest[0];
            let len = u16_at(rest, 2);
            if len < 4 || len > rest.len() {
                return None;
            }
            off += len;
            let rec = &rest[..len];
            // header 4, fsid 8, file_handle: handle_bytes 4, handle_type 4, f_handle
            if !matches!(
                info_type,
                INFO_FID | INFO_DFID | INFO_DFID_NAME | INFO_OLD_DFID_NAME | INFO_NEW_DFID_NAME
            ) || rec.len() < 20
            {
                continue;
            }
            let handle_end = 20 + u32_at(rec, 12) as usize;
            if handle_end > rec.len() {
                continue;
            }
            let name = if matches!(
                info_type,
                INFO_DFID_NAME | INFO_OLD_DFID_NAME | INFO_NEW_DFID_NAME
            ) {
                let tail = &rec[handle_end..];
                &tail[..tail.iter().position(|&b| b == 0).unwrap_or(tail.len())]
            } else {
                &[]
            };
            return Some(FidRecord {
                info_type,
                fsid: [u32_at(rec, 4) as i32, u32_at(rec, 8) as i32],
                handle: &rec[12..handle_end],
                name,
            });
        }
    })
}

/// A test record: info type, fsid, f_handle bytes, name.
#[cfg(test)]
type TestRecord<'a> = (u8, [i32; 2], &'a [u8], &'a [u8]);

#[cfg(test)]
pub(crate) fn encode(mask: u64, records: &[TestRecord]) -> Vec<u8> {
    let mut info = Vec::new();
    for (info_type, fsid, f_handle, name) in records {
        let mut rec = vec![*info_type, 0, 0, 0];
        rec.extend_from_slice(&fsid[0].to_ne_bytes());
        rec.extend_from_slice(&fsid[1].to_ne_bytes());
        rec.extend_from_slice(&(f_handle.len() as u32).to_ne_bytes());
        rec.extend_from_slice(&1i32.to_ne_bytes());
        rec.extend_from_slice(f_handle);
        rec.extend_from_slice(name);
        rec.push(0);
        rec.resize(rec.len().next_multiple_of(4), 0);
        let len = rec.len() as u16;
        rec[2..4].copy_from_slice(&len.to_ne_bytes());
        info.extend(rec);
    }
    let mut v = Vec::new();
    v.extend_from_slice(&((METADATA_LEN + info.len()) as u32).to_ne_bytes());
    v.push(METADATA_VERSION);
    v.push(0);
    v.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
    v.extend_from_slice(&mask.to_ne_bytes());
    v.extend_from_slice(&(-1i32).to_ne_bytes());
    v.extend_from_slice(&0i32.to_ne_bytes());
    v.extend(info);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn available(dir: &Path) -> Option<Fanotify> {
        match Fanotify::new(Roots::new(&[dir.to_path_buf()])) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("fanotify not usable here, skipped: {e}");
                None
            }
        }
    }

    #[test]
    fn parses_events_and_records() {
        let mut buf = encode(
            FAN_CREATE,
            &[(INFO_DFID_NAME, [7, 8], b"\x01\x02\x03\x04\x05", b"n\xff")],
        );
        buf.extend(encode(FAN_Q_OVERFLOW, &[]));
        let events: Vec<Event> = parse(&buf).map(Result::unwrap).collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].mask, FAN_CREATE);
        assert_eq!(events[0].fd, -1);
        let recs: Vec<FidRecord> = records(events[0].info).collect();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].fsid, [7, 8]);
        assert_eq!(recs[0].name, b"n\xff");
        assert_eq!(u32_at(recs[0].handle, 0), 5);
        assert_eq!(&recs[0].handle[8..], b"\x01\x02\x03\x04\x05");
        assert_eq!(events[1].mask, FAN_Q_OVERFLOW);
        assert_eq!(records(events[1].info).count(), 0);
        // a bad version stops parsing with an error
        let mut bad = encode(FAN_CREATE, &[]);
        bad[4] = 2;
        assert!(parse(&bad).next().unwrap().is_err());
    }

    #[test]
    fn overflow_event_sets_overflow() {
        let tmp = tempfile::tempdir().unwrap();
        let Some(mut engine) = available(tmp.path()) else {
            return;
        };
        let mut out = Batch::default();
        engine.process(&encode(FAN_Q_OVERFLOW, &[]), &mut out);
        assert!(out.overflow);
    }

    #[test]
    fn kernel_queue_overflow_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let Some(mut engine) = available(tmp.path()) else {
            return;
        };
        // the default queue holds 16384 events; nothing reads while these are created
        for i in 0..17_000 {
            std::fs::File::create(tmp.path().join(format!("f{i}"))).unwrap();
        }
        let mut out = Batch::default();
        let mut buf = vec![0u64; 32 * 1024];
        loop {
            // SAFETY: reads into our own buffer.
            let n = unsafe { libc::read(engine.fd(), buf.as_mut_ptr().cast(), buf.len() * 8) };
            if n <= 0 {
                break;
            }
            // SAFETY: n bytes were written by the kernel.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            engine.process(bytes, &mut out);
        }
        assert!(out.overflow);
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape(br"/a\04"), br"/a\04");
    }
}
