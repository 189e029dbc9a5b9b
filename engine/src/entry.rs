//! What is recorded about one file, and how it is read from the filesystem.

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::attrs::AttrSet;
use crate::hash::{Algorithm, MultiHasher};

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

/// Reads what `attrs` asks for about the file at `fs_path`. `Ok(None)` means it vanished before it
/// could be looked at. `reuse` (incremental mode) supplies hashes that are still valid.
pub fn collect(
    node_path: &[u8],
    fs_path: &Path,
    attrs: AttrSet,
    reuse: Option<&Entry>,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Collected>> {
    let meta = match fs::symlink_metadata(fs_path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    collect_with_stat(
        node_path,
        fs_path,
        Stat::from_metadata(&meta),
        attrs,
        reuse,
        buf,
    )
}

/// `collect` for an entry the walker has already stat'ed.
pub fn collect_with_stat(
    node_path: &[u8],
    fs_path: &Path,
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
    if ftype == FileType::Symlink && attrs.contains(AttrSet::LINKNAME) {
        match fs::read_link(fs_path) {
            Ok(t) => entry.link_target = Some(t.into_os_string().into_encoded_bytes().into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => entry.error = Some(format!("cannot read link: {e}")),
        }
    }
    let wants_xattrs = !attrs
        .intersect(
            AttrSet::ACL
                .union(AttrSet::SELINUX)
                .union(AttrSet::XATTRS)
                .union(AttrSet::CAPS),
        )
        .is_empty();
    if wants_xattrs {
        entry.xattrs = Some(read_xattrs(fs_path).unwrap_or_default());
    }
    if attrs.contains(AttrSet::E2FSATTRS)
        && matches!(ftype, FileType::Regular | FileType::Directory)
    {
        entry.e2fsattrs = read_e2fsattrs(fs_path);
    }
    if ftype == FileType::Regular && attrs.has_hashes() {
        let reusable = reuse.filter(|old| {
            old.ftype == FileType::Regular
                && old.error.is_none()
                && old.stat.content_unchanged(&stat)
                && attrs.algorithms().all(|a| old.hash(a).is_some())
        });
        match reusable {
            Some(old) => {
                entry.hashes = attrs
                    .algorithms()
                    .map(|a| (a, old.hash(a).unwrap_or_default().into()))
                    .collect();
            }
            None => match hash_file(fs_path, &stat, attrs, buf) {
                Ok((h, n)) => {
                    entry.hashes = h;
                    bytes_hashed = Some(n);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => entry.error = Some(e.to_string()),
            },
        }
    }
    Ok(Some(Collected {
        entry,
        bytes_hashed,
    }))
}

/// Opens without following symlinks and without blocking (a file swapped for a FIFO cannot hang
/// the scan), checks it is still the file that was stat'ed, and streams it through the hashers.
fn hash_file(
    fs_path: &Path,
    stat: &Stat,
    attrs: AttrSet,
    buf: &mut Vec<u8>,
) -> io::Result<(Hashes, u64)> {
    let mut file = open_for_read(fs_path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() || meta.ino() != stat.ino {
        return Err(io::Error::other(
            "file was replaced while it was being scanned",
        ));
    }
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

fn open_for_read(fs_path: &Path) -> io::Result<File> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // O_NOATIME keeps the scan from touching atime, but is refused for files we do not own.
    match fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_NOATIME)
        .open(fs_path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(fs_path),
        other => other,
    }
}

fn advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads the descriptor number; failure is harmless.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

fn read_xattrs(fs_path: &Path) -> io::Result<Xattrs> {
    let mut names = vec![0u8; 4096];
    let len = loop {
        match rustix::fs::llistxattr(fs_path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::lgetxattr(fs_path, cname.as_c_str(), &mut value) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break usize::MAX,
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

fn read_e2fsattrs(fs_path: &Path) -> Option<u32> {
    let file = open_for_read(fs_path).ok()?;
    rustix::fs::ioctl_getflags(&file).ok().map(|f| f.bits())
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
