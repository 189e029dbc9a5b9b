//! Parallel directory walk (ripgrep's `ignore` walker with every ignore-file filter off) that
//! applies the selection rules as it goes, so excluded subtrees are never entered.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ignore::{WalkBuilder, WalkState};

use crate::entry::FileType;
use crate::rules::Rules;

/// An entry the rules selected: its node path, the rule that applies, and its type as readdir saw it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub path: Box<[u8]>,
    pub rule: u32,
    pub ftype: FileType,
}

/// A directory that could not be read: reported, and the rest of the walk goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkIssue {
    pub path: Box<[u8]>,
    pub message: String,
}

/// Maps node paths (`/etc/passwd`) onto the host root the agent sees (`/host/etc/passwd`).
#[derive(Clone, Debug)]
pub struct RootMap {
    root: PathBuf,
    prefix_len: usize,
}

impl RootMap {
    pub fn new(root: &Path) -> RootMap {
        let bytes = root.as_os_str().as_bytes();
        let trimmed = bytes.strip_suffix(b"/").unwrap_or(bytes);
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(if trimmed.is_empty() {
            b"/"
        } else {
            trimmed
        }));
        RootMap {
            root,
            prefix_len: trimmed.len(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn to_fs(&self, node_path: &[u8]) -> PathBuf {
        let mut bytes = self.root.as_os_str().as_bytes().to_vec();
        if self.prefix_len == 0 {
            bytes.clear();
        }
        bytes.extend_from_slice(node_path);
        PathBuf::from(std::ffi::OsStr::from_bytes(&bytes))
    }

    fn to_node<'p>(&self, fs_path: &'p Path) -> &'p [u8] {
        let rest =
            &fs_path.as_os_str().as_bytes()[self.prefix_len.min(fs_path.as_os_str().len())..];
        if rest.is_empty() { b"/" } else { rest }
    }
}

/// Walks the tree under `map.root()`, returning the selected entries sorted by path.
pub fn walk(rules: &Rules, map: &RootMap, threads: usize) -> (Vec<Candidate>, Vec<WalkIssue>) {
    let found: Mutex<Vec<Candidate>> = Mutex::new(Vec::new());
    let issues: Mutex<Vec<WalkIssue>> = Mutex::new(Vec::new());
    let walker = WalkBuilder::new(map.root())
        .standard_filters(false)
        .follow_links(false)
        .threads(threads)
        .build_parallel();
    let (found_ref, issues_ref) = (&found, &issues);
    walker.run(|| {
        let mut local = LocalBatch {
            found: Vec::new(),
            sink: found_ref,
        };
        Box::new(move |result| {
            let entry = match result {
                Ok(e) => e,
                Err(err) => {
                    let path = error_path(&err)
                        .map(|p| map.to_node(p).into())
                        .unwrap_or_default();
                    issues_ref
                        .lock()
                        .expect("walk issues lock")
                        .push(WalkIssue {
                            path,
                            message: err.to_string(),
                        });
                    return WalkState::Continue;
                }
            };
            let Some(ft) = entry.file_type() else {
                return WalkState::Continue;
            };
            let ftype = FileType::from_std(ft);
            let node = map.to_node(entry.path());
            if rules.is_excluded(node, ftype) {
                return WalkState::Skip;
            }
            if let Some(rule) = rules.selecting_rule(node, ftype) {
                local.found.push(Candidate {
                    path: node.into(),
                    rule: rule as u32,
                    ftype,
                });
            }
            if ftype == FileType::Directory && !rules.may_descend(node) {
                return WalkState::Skip;
            }
            WalkState::Continue
        })
    });
    let mut found = found.into_inner().expect("walk results lock");
    found.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    let mut issues = issues.into_inner().expect("walk issues lock");
    issues.sort_by(|a, b| a.path.cmp(&b.path));
    (found, issues)
}

/// Collects a walker thread's finds locally and hands them over once, when the thread is done.
struct LocalBatch<'a> {
    found: Vec<Candidate>,
    sink: &'a Mutex<Vec<Candidate>>,
}

impl Drop for LocalBatch<'_> {
    fn drop(&mut self) {
        if let Ok(mut sink) = self.sink.lock() {
            sink.append(&mut self.found);
        }
    }
}

fn error_path(err: &ignore::Error) -> Option<&Path> {
    match err {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        ignore::Error::Partial(errs) => errs.first().and_then(error_path),
        _ => None,
    }
}
