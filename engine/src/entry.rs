//! What is recorded about one file, and how it is read from the filesystem.

use std::ffi::CStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;

use rustix::fs::OFlags;
use rustix::io::Errno;

use serde::{Deserialize, Serialize};

use crate::attrs::AttrSet;
use crate::hash::{Algorithm, MultiHasher};
use crate::root::Root;

/// File types, with the letters aide.conf uses for restricted rules and reports use for entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    Unknown,
}

impl FileType {
    /// The restriction letter of aide.conf(5) ("f", "d", "l", ...), also the report's type column.
    pub fn letter(self) -> char {
        match self {
            FileType::Regular => 'f',
            FileType::Directory => 'd',
            FileType::Symlink => 'l',
            FileType::CharDevice => 'c',
            FileType::BlockDevice => 'b',
            FileType::Fifo => 'p',
            FileType::Socket => 's',
            FileType::Unknown => '?',
        }
    }

    pub fn from_letter(c: char) -> Option<FileType> {
        [
            FileType::Regular,
            FileType::Directory,
            FileType::Symlink,
            FileType::CharDevice,
            FileType::BlockDevice,
            FileType::Fifo,
            FileType::Socket,
        ]
        .into_iter()
        .find(|t| t.letter() == c)
    }

    pub fn name(self) -> &'static str {
        match self {
            FileType::Regular => "File",
            FileType::Directory => "Directory",
            FileType::Symlink => "Link",
            FileType::CharDevice => "Character device",
            FileType::BlockDevice => "Block device",
            FileType::Fifo => "FIFO",
            FileType::Socket => "Socket",
            FileType::Unknown => "Unknown",
        }
    }
}

/// A timestamp with nanoseconds, as stat(2) reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// The stat(2) fields, always recorded: they are cheap and the incremental check needs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub mode: u32,
    pub ino: u64,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub blocks: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub atime: Timestamp,
    /// The device the file lives on: the same inode number on another filesystem (a bind mount
    /// or a filesystem swapped in) is another file.
    pub dev: u64,
}

impl Stat {
    pub fn from_metadata(m: &Metadata) -> Stat {
        Stat {
            mode: m.mode(),
            ino: m.ino(),
            nlink: m.nlink(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            blocks: m.blocks(),
            mtime: Timestamp {
                sec: m.mtime(),
                nsec: m.mtime_nsec() as u32,
            },
            ctime: Timestamp {
                sec: m.ctime(),
                nsec: m.ctime_nsec() as u32,
            },
            atime: Timestamp {
                sec: m.atime(),
                nsec: m.atime_nsec() as u32,
            },
            dev: m.dev(),
        }
    }

    pub fn from_rustix(st: &rustix::fs::Stat) -> Stat {
        Stat {
            mode: st.st_mode,
            ino: st.st_ino,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            mtime: Timestamp {
                sec: st.st_mtime,
                nsec: st.st_mtime_nsec as u32,
            },
            ctime: Timestamp {
                sec: st.st_ctime,
                nsec: st.st_ctime_nsec as u32,
            },
            atime: Timestamp {
                sec: st.st_atime,
                nsec: st.st_atime_nsec as u32,
            },
            dev: st.st_dev,
        }
    }

    pub fn file_type(&self) -> FileType {
        match self.mode & libc::S_IFMT {
            libc::S_IFREG => FileType::Regular,
            libc::S_IFDIR => FileType::Directory,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFCHR => FileType::CharDevice,
            libc::S_IFBLK => FileType::BlockDevice,
            libc::S_IFIFO => FileType::Fifo,
            libc::S_IFSOCK => FileType::Socket,
            _ => FileType::Unknown,
        }
    }

    /// Permission bits including setuid/setgid/sticky.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// The incremental check trusts an old hash only while these are all unchanged.
    pub fn content_unchanged(&self, other: &Stat) -> bool {
        self.size == other.size
            && self.mtime == other.mtime
            && self.ctime == other.ctime
            && self.ino == other.ino
            && self.dev == other.dev
    }
}

/// Extended attributes as (name, value) pairs.
pub type Xattrs = Vec<(Box<[u8]>, Box<[u8]>)>;
/// Hash values per algorithm.
pub type Hashes = Vec<(Algorithm, Box<[u8]>)>;

/// One file as recorded in the baseline. Paths are node paths (`/etc/passwd`), raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: Box<[u8]>,
    pub ftype: FileType,
    /// The attributes the selecting rule asked for: what is compared.
    pub attrs: AttrSet,
    pub stat: Stat,
    pub link_target: Option<Box<[u8]>>,
    /// All extended attributes (name, value), sorted by name; split into acl/selinux/caps/xattrs when compared.
    pub xattrs: Option<Xattrs>,
    pub e2fsattrs: Option<u32>,
    pub hashes: Hashes,
    /// Why the content could not be read (permission denied, replaced during the scan, ...).
    pub error: Option<String>,
}

impl Entry {
    pub fn hash(&self, a: Algorithm) -> Option<&[u8]> {
        self.hashes
            .iter()
            .find(|(x, _)| *x == a)
            .map(|(_, h)| &h[..])
    }
}

/// A collected entry and how many bytes were read to hash it (`None`: nothing was hashed).
pub struct Collected {
    pub entry: Entry,
    pub bytes_hashed: Option<u64>,
}

/// Reads what `attrs` asks for about the file at `node_path` below `root`. `Ok(None)` means it
/// vanished before it could be looked at. `reuse` (incremental mode) supplies hashes that are
/// still valid.
pub fn collect(
    root: &Root,
    node_path: &[u8],
    attrs: AttrSet,
    reuse: Option<&Entry>,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Collected>> {
    let stat = match root.lstat(node_path) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    collect_with_stat(root, node_path, stat, attrs, reuse, buf)
}

/// `collect` for an entry the walker has already stat'ed. Everything is read through one
/// descriptor opened below `root` without following symlinks: a regular file or directory is
/// opened for reading (non-blocking: a file swapped for a FIFO cannot hang the scan), anything
/// else only as `O_PATH` (opening a device could have side effects).
pub fn collect_with_stat(
    root: &Root,
    node_path: &[u8],
    stat: Stat,
    attrs: AttrSet,
    reuse: Option<&Entry>,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Collected>> {
    let ftype = stat.file_type();
    let mut bytes_hashed = None;
    let mut entry = Entry {
        path: node_path.into(),
        ftype,
        attrs,
        stat,
        link_target: None,
        xattrs: None,
        e2fsattrs: None,
        hashes: Vec::new(),
        error: None,
    };
    let wants_link = ftype == FileType::Symlink && attrs.contains(AttrSet::LINKNAME);
    let wants_xattrs = !attrs
        .intersect(
            AttrSet::ACL
                .union(AttrSet::SELINUX)
                .union(AttrSet::XATTRS)
                .union(AttrSet::CAPS),
        )
        .is_empty();
    let wants_e2fs = attrs.contains(AttrSet::E2FSATTRS)
        && matches!(ftype, FileType::Regular | FileType::Directory);
    let reusable = (ftype == FileType::Regular && attrs.has_hashes())
        .then(|| {
            reuse.filter(|old| {
                old.ftype == FileType::Regular
                    && old.error.is_none()
                    && old.stat.content_unchanged(&stat)
                    && attrs.algorithms().all(|a| old.hash(a).is_some())
            })
        })
        .flatten();
    let wants_hash = ftype == FileType::Regular && attrs.has_hashes() && reusable.is_none();
    if let Some(old) = reusable {
        entry.hashes = attrs
            .algorithms()
            .map(|a| (a, old.hash(a).unwrap_or_default().into()))
            .collect();
    }
    if !(wants_link || wants_xattrs || wants_e2fs || wants_hash) {
        return Ok(Some(Collected {
            entry,
            bytes_hashed,
        }));
    }
    // Regular files and directories are read through a readable descriptor; when that is refused
    // (no read permission) the attributes that need none still come through an O_PATH one.
    let (file, readable, open_err) = if matches!(ftype, FileType::Regular | FileType::Directory) {
        match open_for_read(root, node_path) {
            Ok(f) => (Some(f), true, None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => (open_path(root, node_path).ok(), false, Some(e)),
        }
    } else {
        match open_path(root, node_path) {
            Ok(f) => (Some(f), false, None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => (None, false, Some(e)),
        }
    };
    // The descriptor must be the entry that was stat'ed, not something renamed into its place.
    if let Some(f) = &file {
        let now = Stat::from_rustix(&rustix::fs::fstat(f)?);
        if now.ino != stat.ino || now.file_type() != ftype {
            entry.error = Some("file was replaced while it was being scanned".into());
            return Ok(Some(Collected {
                entry,
                bytes_hashed,
            }));
        }
    }
    let open_error = || {
        open_err
            .as_ref()
            .map_or_else(|| "cannot open".to_string(), |e| e.to_string())
    };
    if wants_link {
        match &file {
            Some(f) => match rustix::fs::readlinkat(f, c"", Vec::new()) {
                Ok(t) => entry.link_target = Some(t.into_bytes().into()),
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => entry.error = Some(format!("cannot read link: {}", io::Error::from(e))),
            },
            None => entry.error = Some(format!("cannot read link: {}", open_error())),
        }
    }
    if wants_xattrs {
        entry.xattrs = Some(
            file.as_ref()
                .and_then(|f| read_xattrs(f, readable).ok())
                .unwrap_or_default(),
        );
    }
    if wants_e2fs && readable {
        entry.e2fsattrs = file
            .as_ref()
            .and_then(|f| rustix::fs::ioctl_getflags(f).ok())
            .map(|f| f.bits());
    }
    if wants_hash {
        match file.filter(|_| readable) {
            Some(f) => match hash_file(f, attrs, buf) {
                Ok((h, n)) => {
                    entry.hashes = h;
                    bytes_hashed = Some(n);
                }
                Err(e) => entry.error = Some(e.to_string()),
            },
            None => entry.error = Some(open_error()),
        }
    }
    Ok(Some(Collected {
        entry,
        bytes_hashed,
    }))
}

fn open_path(root: &Root, node_path: &[u8]) -> io::Result<File> {
    root.open_node(node_path, OFlags::PATH | OFlags::NOFOLLOW)
        .map(File::from)
}

/// Streams an open regular file through the hashers.
fn hash_file(mut file: File, attrs: AttrSet, buf: &mut Vec<u8>) -> io::Result<(Hashes, u64)> {
    advise_sequential(&file);
    if buf.len() < crate::hash::READ_BUFFER {
        buf.resize(crate::hash::READ_BUFFER, 0);
    }
    let mut hasher = MultiHasher::new(attrs.algorithms());
    let bytes = hasher.consume(&mut file, buf)?;
    let hashes = hasher
        .finalize()
        .into_iter()
        .map(|(a, h)| (a, h.into_boxed_slice()))
        .collect();
    Ok((hashes, bytes))
}

fn open_for_read(root: &Root, node_path: &[u8]) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    // O_NOATIME keeps the scan from touching atime, but is refused for files we do not own.
    match root.open_node(node_path, flags | OFlags::NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => root.open_node(node_path, flags),
        other => other,
    }
    .map(File::from)
}

fn advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads the descriptor number; failure is harmless.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

/// The extended attributes of an open file. An `O_PATH` descriptor (symlinks, devices) has no
/// f*xattr calls; `/proc/self/fd/N` names exactly the file it refers to, never following further.
fn read_xattrs(file: &File, readable: bool) -> io::Result<Xattrs> {
    use std::os::fd::AsRawFd;
    let proc_path = (!readable).then(|| format!("/proc/self/fd/{}", file.as_raw_fd()));
    let list = |names: &mut Vec<u8>| match &proc_path {
        None => rustix::fs::flistxattr(file, names.as_mut_slice()),
        Some(p) => rustix::fs::listxattr(p.as_str(), names.as_mut_slice()),
    };
    let get = |name: &CStr, value: &mut Vec<u8>| match &proc_path {
        None => rustix::fs::fgetxattr(file, name, value.as_mut_slice()),
        Some(p) => rustix::fs::getxattr(p.as_str(), name, value.as_mut_slice()),
    };
    let mut names = vec![0u8; 4096];
    let len = loop {
        match list(&mut names) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let n = names.len() * 4;
                names.resize(n, 0)
            }
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
        let mut value = vec![0u8; 256];
        let n = loop {
            match get(cname.as_c_str(), &mut value) {
                Ok(n) => break n,
                Err(Errno::RANGE) => {
                    let n = value.len() * 4;
                    value.resize(n, 0)
                }
                Err(Errno::NODATA) => break usize::MAX,
                Err(e) => return Err(e.into()),
            }
        };
        if n != usize::MAX {
            value.truncate(n);
            out.push((name.into(), value.into()));
        }
    }
    out.sort();
    Ok(out)
}

/// The family an extended attribute belongs to, so `acl`, `selinux`, `caps` and `xattrs` compare
/// separately, as in AIDE.
pub fn xattr_family(name: &[u8]) -> AttrSet {
    match name {
        b"system.posix_acl_access" | b"system.posix_acl_default" => AttrSet::ACL,
        b"security.selinux" => AttrSet::SELINUX,
        b"security.capability" => AttrSet::CAPS,
        _ => AttrSet::XATTRS,
    }
}

#[cfg(test)]
mod stat_tests {
    use super::*;

    #[test]
    fn another_device_is_another_file_for_the_incremental_check() {
        let a = Stat {
            size: 32,
            ino: 12,
            dev: 0x700,
            ..Stat::default()
        };
        assert!(a.content_unchanged(&a));
        let elsewhere = Stat { dev: 0x701, ..a };
        assert!(!a.content_unchanged(&elsewhere));
        let meta = std::fs::metadata("/").unwrap();
        assert_eq!(Stat::from_metadata(&meta).dev, meta.dev());
    }
}
