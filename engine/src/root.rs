//! The one notion of a root: the tree a scan looks at, held as a directory file descriptor.
//!
//! Node paths (`/etc/passwd`) are what rules, databases and reports use. On the filesystem they
//! live below a root the agent sees at some host path (`/host`, or `/proc/<pid>/root` for a
//! container). The root directory is opened once; every node path is then resolved *relative to
//! that descriptor* and never through the host path, so a directory swapped for a symlink (to `/`,
//! say) cannot lead a scan out of the tree: with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` the kernel refuses any symlink on the way and clamps `..` at the root;
//! where the kernel lacks `openat2` the same is done one component at a time with
//! `openat(O_NOFOLLOW)` from the root descriptor.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::entry::Stat;

/// Set once `openat2` answered ENOSYS (kernels before 5.6, or a seccomp filter that hides it).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// A directory opened once; node paths below it resolve relative to it and never leave it.
#[derive(Debug)]
pub struct Root {
    /// Where the agent sees the root (for messages, watches and mapping host paths back).
    path: PathBuf,
    /// `path` without a trailing slash; empty for `/`.
    prefix: Vec<u8>,
    fd: OwnedFd,
}

impl Root {
    /// Opens `path` (following it if it is a symlink: the root is what the caller named).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let bytes = path.as_os_str().as_bytes();
        let mut prefix = bytes.to_vec();
        while prefix.last() == Some(&b'/') {
            prefix.pop();
        }
        Ok(Root {
            path: path.to_path_buf(),
            prefix,
            fd,
        })
    }

    /// The host path the root was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The host path of a node path, for watches and messages only: never open it (that would
    /// follow whatever symlinks lie on the way).
    pub fn host_path(&self, node_path: &[u8]) -> PathBuf {
        let mut bytes = self.prefix.clone();
        // The root itself is the prefix, except for `/` where the prefix is empty.
        if node_path != b"/" || bytes.is_empty() {
            bytes.extend_from_slice(node_path);
        }
        PathBuf::from(OsStr::from_bytes(&bytes))
    }

    /// The node path of a host path below the root (what a change watcher reports), `None` for a
    /// path outside it.
    pub fn node_path(&self, host_path: &Path) -> Option<Vec<u8>> {
        node_path_under(&self.prefix, host_path.as_os_str().as_bytes())
    }

    /// Opens a node path below the root without following any symlink on the way (a symlink as
    /// the last component is opened itself with `O_PATH | O_NOFOLLOW`, else refused with ELOOP).
    pub fn open_node(&self, node_path: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        let rel = relative(node_path);
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let resolve =
                ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match openat2_retrying(&self.fd, &rel, flags | OFlags::CLOEXEC, resolve) {
                Err(Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                other => return other.map_err(io::Error::from),
            }
        }
        open_componentwise(self.fd.as_fd(), &rel, flags | OFlags::CLOEXEC).map_err(io::Error::from)
    }

    /// lstat(2) of a node path, resolved as [`Root::open_node`] does.
    pub fn lstat(&self, node_path: &[u8]) -> io::Result<Stat> {
        let fd = self.open_node(node_path, OFlags::PATH | OFlags::NOFOLLOW)?;
        Ok(Stat::from_rustix(&rustix::fs::fstat(&fd)?))
    }

    /// Opens the root directory itself for listing.
    pub fn open_dir(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }
}

/// `openat2` returns EAGAIN when a rename raced with the lookup; such a retry is what the kernel
/// documentation asks for.
fn openat2_retrying(
    dir: &OwnedFd,
    rel: &CStr,
    flags: OFlags,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            other => return other,
        }
    }
}

/// The node path relative to the root (`.` for the root itself), as openat wants it.
fn relative(node_path: &[u8]) -> CString {
    let trimmed: &[u8] = {
        let mut p = node_path;
        while let [b'/', rest @ ..] = p {
            p = rest;
        }
        p
    };
    let bytes: Vec<u8> = if trimmed.is_empty() {
        b".".to_vec()
    } else {
        trimmed.iter().copied().filter(|&b| b != 0).collect()
    };
    CString::new(bytes).expect("NUL bytes removed")
}

/// The fallback without openat2: each directory on the way is opened relative to the previous one
/// with `O_NOFOLLOW` (a symlink there fails with ENOTDIR or ELOOP); `..` never climbs above the
/// root; the last component is opened with `O_NOFOLLOW` too.
fn open_componentwise(root: BorrowedFd<'_>, rel: &CStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    let components: Vec<&[u8]> = rel
        .to_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    // Fold `..` lexically: with no symlinks followed this is what the kernel would do, and it
    // stops at the root as RESOLVE_IN_ROOT does.
    let mut clean: Vec<&[u8]> = Vec::new();
    for c in components {
        if c == b".." {
            clean.pop();
        } else {
            clean.push(c);
        }
    }
    let Some((last, dirs)) = clean.split_last() else {
        return rustix::fs::openat(root, c".", flags | OFlags::NOFOLLOW, Mode::empty());
    };
    let mut current: Option<OwnedFd> = None;
    for dir in dirs {
        let at = current.as_ref().map_or(root, |fd| fd.as_fd());
        let name = CString::new(*dir).map_err(|_| Errno::INVAL)?;
        current = Some(rustix::fs::openat(
            at,
            name.as_c_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
    }
    let at = current.as_ref().map_or(root, |fd| fd.as_fd());
    let name = CString::new(*last).map_err(|_| Errno::INVAL)?;
    rustix::fs::openat(at, name.as_c_str(), flags | OFlags::NOFOLLOW, Mode::empty())
}

/// The node path of `host` below `prefix` (a root path without trailing slash, empty for `/`).
fn node_path_under(prefix: &[u8], host: &[u8]) -> Option<Vec<u8>> {
    let rest = host.strip_prefix(prefix)?;
    if !(rest.is_empty() || rest.starts_with(b"/")) {
        return None; // `/tmp/node-b` is not under `/tmp/node`
    }
    let mut rest = rest;
    while rest.len() > 1 && rest.ends_with(b"/") {
        rest = &rest[..rest.len() - 1];
    }
    Some(if rest.is_empty() {
        b"/".to_vec()
    } else {
        rest.to_vec()
    })
}

/// Forces the component-wise fallback (tests of kernels without openat2).
#[doc(hidden)]
pub fn force_componentwise(on: bool) {
    NO_OPENAT2.store(on, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_map_back_to_node_paths() {
        assert_eq!(
            node_path_under(b"/tmp/node-a", b"/tmp/node-a/etc/hosts"),
            Some(b"/etc/hosts".to_vec())
        );
        assert_eq!(
            node_path_under(b"/tmp/node-a", b"/tmp/node-a"),
            Some(b"/".to_vec())
        );
        assert_eq!(
            node_path_under(b"/tmp/node-a", b"/tmp/node-a/etc/"),
            Some(b"/etc".to_vec())
        );
        assert_eq!(node_path_under(b"/tmp/node-a", b"/tmp/node-b/etc"), None);
        assert_eq!(node_path_under(b"/tmp/node", b"/tmp/node-a/etc"), None);
        assert_eq!(node_path_under(b"", b"/etc/x"), Some(b"/etc/x".to_vec()));
        assert_eq!(node_path_under(b"", b"/"), Some(b"/".to_vec()));
    }

    #[test]
    fn relative_paths_for_openat() {
        assert_eq!(relative(b"/").to_bytes(), b".");
        assert_eq!(relative(b"/etc/passwd").to_bytes(), b"etc/passwd");
        assert_eq!(relative(b"//etc").to_bytes(), b"etc");
    }

    #[test]
    fn host_path_of_node_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        assert_eq!(root.host_path(b"/"), dir.path());
        assert_eq!(root.host_path(b"/etc/x"), dir.path().join("etc/x"));
        let slash = Root::open(Path::new("/")).unwrap();
        assert_eq!(slash.host_path(b"/"), Path::new("/"));
        assert_eq!(slash.host_path(b"/etc"), Path::new("/etc"));
        assert_eq!(
            root.node_path(&dir.path().join("a/b")),
            Some(b"/a/b".to_vec())
        );
    }

    /// Both resolvers refuse every way out: absolute and relative symlinks, `..` past the root.
    #[test]
    fn lookups_never_leave_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("canary"), b"secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/real"), b"inside").unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("out")).unwrap();
        std::os::unix::fs::symlink("/", r.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../../../../..", r.join("up")).unwrap();
        let root = Root::open(r).unwrap();
        for componentwise in [false, true] {
            force_componentwise(componentwise);
            let read = |p: &[u8]| root.open_node(p, OFlags::RDONLY | OFlags::NOFOLLOW);
            assert!(read(b"/etc/real").is_ok(), "componentwise={componentwise}");
            assert!(read(b"/../etc/real").is_ok(), ".. stops at the root");
            let canary = outside.path().join("canary");
            for escape in [
                b"/out/canary".to_vec(),
                [b"/lib".as_slice(), canary.as_os_str().as_bytes()].concat(),
                [b"/up".as_slice(), canary.as_os_str().as_bytes()].concat(),
                [b"/../../../..".as_slice(), canary.as_os_str().as_bytes()].concat(),
            ] {
                let err = read(&escape).expect_err("escape refused");
                assert!(
                    matches!(
                        err.raw_os_error(),
                        Some(libc::ELOOP | libc::ENOTDIR | libc::ENOENT | libc::EXDEV)
                    ),
                    "{}: {err}",
                    String::from_utf8_lossy(&escape)
                );
            }
            // A symlink itself can be looked at, never through.
            let st = root.lstat(b"/lib").unwrap();
            assert_eq!(st.file_type(), crate::entry::FileType::Symlink);
        }
        force_componentwise(false);
    }
}
