//! `fim-agent snapshot`: integrity-sum's image snapshot format, `<hex>  <relative path>` per file.

use std::fmt::Write as _;
use std::path::Path;

use rayon::prelude::*;

use crate::attrs::AttrSet;
use crate::display::display_bytes;
use crate::entry::{FileType, collect_with_stat};
use crate::hash::Algorithm;
use crate::root::Root;
use crate::rules::{Rule, Rules};
use crate::walk::Walker;

/// Files hashed in parallel at a time.
const BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("--dir '{0}' must be a path relative to --root (like app or usr/bin)")]
    BadDir(String),
    #[error("--dir '{dir}' does not exist under {root}")]
    Missing { dir: String, root: String },
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
}

/// Hashes every regular file under `root/<dir>` for each dir, sorted by path. Symlinks, devices,
/// FIFOs and sockets are skipped: an image snapshot is about file content. Names are escaped as in
/// text reports (`\n`, `\\`, `\xNN`) so each file stays on one line.
pub fn snapshot(
    root: &Path,
    dirs: &[String],
    algorithm: Algorithm,
    threads: usize,
) -> Result<String, SnapshotError> {
    let root_path = root;
    let root = Root::open(root_path).map_err(|e| SnapshotError::Read {
        path: root_path.display().to_string(),
        message: e.to_string(),
    })?;
    snapshot_of(&root, dirs, algorithm, threads, false)
}

/// [`snapshot`] of an opened root (a container's `/proc/<pid>/root`, held by the caller). With
/// `skip_missing`, a directory that does not exist contributes no lines (its files count as
/// removed against a baseline) instead of failing; a symlink on the way is never followed and
/// fails with the kernel's ELOOP.
pub fn snapshot_of(
    root: &Root,
    dirs: &[String],
    algorithm: Algorithm,
    threads: usize,
    skip_missing: bool,
) -> Result<String, SnapshotError> {
    let root_path = root.path();
    let mut rules = Vec::new();
    for dir in dirs {
        let clean = dir.trim_matches('/');
        if clean.is_empty() || dir.starts_with('/') || clean.split('/').any(|c| c == "..") {
            return Err(SnapshotError::BadDir(dir.clone()));
        }
        let node = format!("/{clean}");
        match root.lstat(node.as_bytes()) {
            Ok(_) => {}
            Err(e) if skip_missing && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if skip_missing => {
                return Err(SnapshotError::Read {
                    path: node,
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(SnapshotError::Missing {
                    dir: dir.clone(),
                    root: root_path.display().to_string(),
                });
            }
        }
        let pattern = format!("{}(/|$)", regex::escape(&node));
        let rule = Rule::new(
            crate::rules::RuleKind::Regular,
            &pattern,
            AttrSet::hash(algorithm),
            Some(vec![FileType::Regular]),
            "--dir".into(),
        )
        .map_err(|e| SnapshotError::BadDir(e.to_string()))?;
        rules.push(rule);
    }
    if rules.is_empty() {
        return Ok(String::new());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| SnapshotError::Read {
            path: root_path.display().to_string(),
            message: e.to_string(),
        })?;
    pool.install(|| snapshot_in_pool(root, &Rules::new(rules), algorithm))
}

fn snapshot_in_pool(
    root: &Root,
    rules: &Rules,
    algorithm: Algorithm,
) -> Result<String, SnapshotError> {
    let mut walker = Walker::new(rules, root, None);
    let mut out = String::new();
    // A directory the walk could not read wins over a file that could not be hashed, as both
    // are known only at the end of the walk.
    let mut first_error = None;
    loop {
        let files = walker.next_batch(BATCH);
        if files.is_empty() {
            break;
        }
        let lines: Vec<Result<Option<String>, SnapshotError>> = files
            .par_iter()
            .map_init(Vec::new, |buf, f| {
                let read_err = |message: String| SnapshotError::Read {
                    path: display_bytes(&f.path),
                    message,
                };
                let Some(c) =
                    collect_with_stat(root, &f.path, f.stat, AttrSet::hash(algorithm), None, buf)
                        .map_err(|e| read_err(e.to_string()))?
                else {
                    return Ok(None);
                };
                if let Some(err) = c.entry.error {
                    return Err(read_err(err));
                }
                let hash = c.entry.hash(algorithm).map(hex::encode).unwrap_or_default();
                Ok(Some(format!("{hash}  {}", display_bytes(&f.path[1..]))))
            })
            .collect();
        for line in lines {
            match line {
                Ok(Some(line)) => {
                    let _ = writeln!(out, "{line}");
                }
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if first_error.is_some() {
            walker.by_ref().for_each(drop);
            break;
        }
    }
    let issues = walker.into_issues();
    if let Some(issue) = issues.first() {
        return Err(SnapshotError::Read {
            path: display_bytes(&issue.path),
            message: issue.message.clone(),
        });
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
