//! The directory walk: applies the selection rules as it goes (excluded subtrees are never
//! entered) and yields the selected entries one by one in the database's order, so a scan merges
//! them against the sorted baseline batch by batch and memory does not grow with the tree.
//!
//! Every directory is opened relative to its parent's descriptor with `O_NOFOLLOW`, starting from
//! the [`Root`]'s descriptor, and its children are `fstatat`-ed relative to it: a directory swapped
//! for a symlink is never entered, and no path is ever resolved through the host's view of the
//! tree.
//!
//! The order is the byte order of full paths. That is not a depth-first walk with each directory
//! sorted by name: `/a-x` and `/a.x` sort between `/a` and `/a/b` because `-` and `.` sort before
//! `/`. So each directory's pending work is one sorted list mixing its children (key `name`) and
//! the subtrees of its subdirectories (key `name/`), and a subtree is listed only when its turn
//! comes. Memory is the open directories on the current path, each with its pending children
//! kept as bare names (about 16 bytes plus the name each): a child is `fstatat`-ed when its turn
//! comes, not when its directory is listed, so one directory of a million new files costs tens of
//! MiB, not the hundreds a stat and a full path per child would (issue 10, item 10). The file
//! type from `getdents` decides the selection at listing time; a filesystem that does not give
//! it is `fstatat`-ed then.

use std::cmp::Ordering;
use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Dir, Mode, OFlags};
use rustix::io::Errno;

use crate::entry::{FileType, Stat};
use crate::root::Root;
use crate::rules::Rules;
use crate::scope::{Relation, Scope};

/// An entry the rules selected: its node path, the rule that applies, and what lstat said.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub path: Box<[u8]>,
    pub rule: u32,
    pub ftype: FileType,
    pub stat: Stat,
}

/// Something that could not be read (a directory during the walk, a file while collecting it):
/// reported, and the scan goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub path: Box<[u8]>,
    pub message: String,
}

fn last_name(path: &[u8]) -> &[u8] {
    let cut = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    &path[cut..]
}

/// `name` vs `other`, each followed by `/` when it stands for a subtree.
fn cmp_keys(a: (&[u8], bool), b: (&[u8], bool)) -> Ordering {
    let slash: &[u8] = b"/";
    let ai = a.0.iter().chain(if a.1 { slash } else { &[] });
    let bi = b.0.iter().chain(if b.1 { slash } else { &[] });
    ai.cmp(bi)
}

/// Pending work in one directory: a child to collect (key `name`) or a subdirectory to list
/// when its turn comes (key `name/`), as a range of the frame's name buffer.
#[derive(Clone, Copy)]
struct Pending {
    start: u32,
    len: u32,
    subtree: bool,
}

/// One open directory on the current path.
struct Frame {
    dir: OwnedFd,
    /// Its node path.
    node: Box<[u8]>,
    /// The names of its pending children, back to back.
    names: Vec<u8>,
    /// Sorted so that the next item is last.
    pending: Vec<Pending>,
}

impl Frame {
    fn name(&self, p: Pending) -> &[u8] {
        &self.names[p.start as usize..(p.start + p.len) as usize]
    }

    /// The node path of a child.
    fn child_path(&self, name: &[u8]) -> Box<[u8]> {
        let mut path = Vec::with_capacity(self.node.len() + 1 + name.len());
        path.extend_from_slice(&self.node);
        if &*self.node != b"/" {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        path.into()
    }
}

/// The type `getdents` reported, if it did.
fn dirent_type(t: rustix::fs::FileType) -> Option<FileType> {
    use rustix::fs::FileType as T;
    Some(match t {
        T::RegularFile => FileType::Regular,
        T::Directory => FileType::Directory,
        T::Symlink => FileType::Symlink,
        T::CharacterDevice => FileType::CharDevice,
        T::BlockDevice => FileType::BlockDevice,
        T::Fifo => FileType::Fifo,
        T::Socket => FileType::Socket,
        _ => return None,
    })
}

/// Yields the selected entries below a [`Root`] in byte order of their node paths. With a
/// `scope`, only the scoped paths are yielded (and only the directories leading to them listed).
pub struct Walker<'a> {
    rules: &'a Rules,
    scope: Option<&'a Scope>,
    stack: Vec<Frame>,
    /// The root entry, before anything is listed.
    first: Option<Candidate>,
    issues: Vec<Issue>,
}

impl<'a> Walker<'a> {
    pub fn new(rules: &'a Rules, root: &'a Root, scope: Option<&'a Scope>) -> Walker<'a> {
        let mut w = Walker {
            rules,
            scope,
            stack: Vec::new(),
            first: None,
            issues: Vec::new(),
        };
        match rustix::fs::fstat(root.fd()) {
            Ok(st) => {
                let stat = Stat::from_rustix(&st);
                let ftype = stat.file_type();
                let (collect, descend) = w.relation(b"/");
                if let Some(rule) = rules.select(b"/", ftype).filter(|_| collect) {
                    w.first = Some(Candidate {
                        path: b"/".as_slice().into(),
                        rule: rule as u32,
                        ftype,
                        stat,
                    });
                }
                if descend && ftype == FileType::Directory && rules.may_descend(b"/") {
                    match root.open_dir() {
                        Ok(fd) => w.list(fd, b"/"),
                        Err(e) => w.issue(b"/", Errno::from_io_error(&e).unwrap_or(Errno::IO)),
                    }
                }
            }
            Err(e) => w.issue(b"/", e),
        }
        w
    }

    /// Up to `max` further entries (fewer only at the end).
    pub fn next_batch(&mut self, max: usize) -> Vec<Candidate> {
        let mut out = Vec::with_capacity(max.min(4096));
        while out.len() < max {
            match self.next() {
                Some(c) => out.push(c),
                None => break,
            }
        }
        out
    }

    /// The directories that could not be read, by path.
    pub fn into_issues(mut self) -> Vec<Issue> {
        self.issues.sort_by(|a, b| a.path.cmp(&b.path));
        self.issues
    }

    /// Whether to collect `path`, and whether to descend into it (if it is a directory).
    fn relation(&self, path: &[u8]) -> (bool, bool) {
        match self
            .scope
            .map_or(Relation::Inside { descend: true }, |s| s.relation(path))
        {
            Relation::Inside { descend } => (true, descend),
            Relation::Ancestor => (false, true),
            Relation::Outside => (false, false),
        }
    }

    fn issue(&mut self, path: &[u8], e: Errno) {
        let message = std::io::Error::from(e).to_string();
        self.issues.push(Issue {
            path: path.into(),
            message,
        });
    }

    /// Opens the subdirectory `path` relative to the directory on top of the stack and lists it.
    fn enter(&mut self, path: Box<[u8]>) {
        let parent = &self.stack.last().expect("a subtree has a parent").dir;
        let Ok(name) = std::ffi::CString::new(last_name(&path)) else {
            return;
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(parent, name.as_c_str(), flags, Mode::empty()) {
            Ok(fd) => self.list(fd, &path),
            // Gone or replaced by something else (a symlink) since its parent was listed.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
            Err(e) => self.issue(&path, e),
        }
    }

    /// The child `path` (named `name` in the directory on top of the stack), `fstatat`-ed now
    /// that its turn has come, if the rules still select it.
    fn stat_child(&mut self, name: &[u8], path: Box<[u8]>) -> Option<Candidate> {
        let dir = &self.stack.last().expect("a child has a parent").dir;
        let cname = std::ffi::CString::new(name).ok()?;
        let stat = match rustix::fs::statat(dir, cname.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Stat::from_rustix(&st),
            Err(Errno::NOENT) => return None, // gone since its directory was listed
            Err(e) => {
                self.issue(&path, e);
                return None;
            }
        };
        // The type decides again: it may have changed since the listing.
        let ftype = stat.file_type();
        if self.rules.is_excluded(&path, ftype) {
            return None;
        }
        let rule = self.rules.selecting_rule(&path, ftype)?;
        Some(Candidate {
            path,
            rule: rule as u32,
            ftype,
            stat,
        })
    }

    /// Reads the directory `fd` (node path `node`) and pushes its sorted pending work: the names
    /// of the children the rules select and of the subdirectories to list.
    fn list(&mut self, fd: OwnedFd, node: &[u8]) {
        let mut dir = match Dir::read_from(&fd) {
            Ok(d) => d,
            Err(e) => return self.issue(node, e),
        };
        let mut names = Vec::new();
        let mut pending = Vec::new();
        let mut child = node.to_vec();
        if child != b"/" {
            child.push(b'/');
        }
        let base_len = child.len();
        for item in dir.by_ref() {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    self.issue(node, e);
                    break;
                }
            };
            let name: &CStr = item.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            child.truncate(base_len);
            child.extend_from_slice(name.to_bytes());
            let (collect, descend) = self.relation(&child);
            if !collect && !descend {
                continue;
            }
            let ftype = match dirent_type(item.file_type()) {
                Some(t) => t,
                None => match rustix::fs::statat(fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => Stat::from_rustix(&st).file_type(),
                    Err(Errno::NOENT) => continue, // vanished while listing
                    Err(e) => {
                        self.issue(&child, e);
                        continue;
                    }
                },
            };
            if self.rules.is_excluded(&child, ftype) {
                continue;
            }
            let selected = collect && self.rules.selecting_rule(&child, ftype).is_some();
            let subtree = descend && ftype == FileType::Directory && self.rules.may_descend(&child);
            if !selected && !subtree {
                continue;
            }
            let (Ok(start), Ok(len)) = (
                u32::try_from(names.len()),
                u32::try_from(name.to_bytes().len()),
            ) else {
                self.issue(node, Errno::NOMEM); // over 4 GiB of names in one directory
                break;
            };
            names.extend_from_slice(name.to_bytes());
            for (wanted, subtree) in [(selected, false), (subtree, true)] {
                if wanted {
                    pending.push(Pending {
                        start,
                        len,
                        subtree,
                    });
                }
            }
        }
        drop(dir);
        if pending.is_empty() {
            return;
        }
        names.shrink_to_fit();
        pending.shrink_to_fit();
        let mut frame = Frame {
            dir: fd,
            node: node.into(),
            names,
            pending: Vec::new(),
        };
        // Descending, so the smallest is popped first.
        pending.sort_unstable_by(|a, b| {
            cmp_keys((frame.name(*b), b.subtree), (frame.name(*a), a.subtree))
        });
        frame.pending = pending;
        self.stack.push(frame);
    }
}

impl Iterator for Walker<'_> {
    type Item = Candidate;

    fn next(&mut self) -> Option<Candidate> {
        if let Some(c) = self.first.take() {
            return Some(c);
        }
        loop {
            let top = self.stack.last_mut()?;
            let Some(p) = top.pending.pop() else {
                self.stack.pop();
                continue;
            };
            let name = top.name(p).to_vec();
            let path = top.child_path(&name);
            if p.subtree {
                self.enter(path);
            } else if let Some(c) = self.stat_child(&name, path) {
                return Some(c);
            }
        }
    }
}

/// Every selected entry below `root`, sorted by path, and the walk's issues (small trees: tests,
/// snapshots).
pub fn walk(rules: &Rules, root: &Root, scope: Option<&Scope>) -> (Vec<Candidate>, Vec<Issue>) {
    let mut w = Walker::new(rules, root, scope);
    let found: Vec<Candidate> = w.by_ref().collect();
    (found, w.into_issues())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtrees_sort_after_names_with_lower_bytes() {
        let mut keys = vec![
            (b"a".as_slice(), true),
            (b"a".as_slice(), false),
            (b"a-x".as_slice(), false),
            (b"a.x".as_slice(), true),
            (b"a.x".as_slice(), false),
            (b"a0".as_slice(), false),
            (b"b".as_slice(), false),
        ];
        keys.sort_by(|a, b| cmp_keys(*a, *b));
        assert_eq!(
            keys,
            vec![
                (b"a".as_slice(), false),
                (b"a-x".as_slice(), false),
                (b"a.x".as_slice(), false),
                (b"a.x".as_slice(), true),
                (b"a".as_slice(), true),
                (b"a0".as_slice(), false),
                (b"b".as_slice(), false),
            ]
        );
    }
}
