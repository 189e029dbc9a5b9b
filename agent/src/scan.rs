//! One scan: walk, collect attributes and hashes in parallel, merge with the baseline in path order,
//! and (for init/update) stream the new baseline to disk.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::attrs::AttrSet;
use crate::config::Config;
use crate::db::{DbError, DbReader, DbWriter};
use crate::diff::{AttrChange, compare, summary_string};
use crate::entry::{Collected, Entry, FileType, collect};
use crate::walk::{Candidate, RootMap, WalkIssue, walk};

/// Entries collected in parallel before they are merged, in order, with the baseline.
const BATCH: usize = 4096;

#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub root: PathBuf,
    /// Trust a baseline hash while size, mtime, ctime and inode are unchanged.
    pub incremental: bool,
    pub progress: bool,
    pub threads: usize,
}

impl ScanOptions {
    pub fn new(root: impl Into<PathBuf>) -> ScanOptions {
        ScanOptions {
            root: root.into(),
            incremental: false,
            progress: false,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Changed {
    #[serde(skip)]
    pub path: Box<[u8]>,
    pub ftype: FileType,
    pub summary: String,
    pub changes: Vec<AttrChange>,
}

#[derive(Clone, Debug)]
pub struct Issue {
    pub path: Box<[u8]>,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScanStats {
    pub entries: u64,
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    #[serde(skip)]
    pub duration: Duration,
}

/// Everything a scan found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub added: Vec<Entry>,
    pub removed: Vec<Entry>,
    pub changed: Vec<Changed>,
    /// Unreadable directories and files: reported, never fatal.
    pub issues: Vec<Issue>,
    pub stats: ScanStats,
    /// Digest of the baseline compared against.
    pub baseline_digest: Option<String>,
    /// Digest of the baseline written by this scan.
    pub written_digest: Option<String>,
}

impl Outcome {
    pub fn has_differences(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }

    /// AIDE's exit status: 1 added + 2 removed + 4 changed.
    pub fn exit_bits(&self) -> i32 {
        (!self.added.is_empty()) as i32
            | ((!self.removed.is_empty()) as i32) << 1
            | ((!self.changed.is_empty()) as i32) << 2
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("root {} is not a readable directory: {source}", root.display())]
    Root {
        root: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs a scan. With a `baseline` it compares; with an `output` it writes the new baseline, which
/// is only renamed into place after the whole scan succeeded.
pub fn scan(
    config: &Config,
    opts: &ScanOptions,
    mut baseline: Option<DbReader>,
    output: Option<DbWriter>,
) -> Result<Outcome, ScanError> {
    let started = Instant::now();
    std::fs::read_dir(&opts.root).map_err(|source| ScanError::Root {
        root: opts.root.clone(),
        source,
    })?;
    let map = RootMap::new(&opts.root);
    let (candidates, walk_issues) = walk(&config.rules, &map, opts.threads);
    let mut outcome = Outcome {
        issues: walk_issues
            .into_iter()
            .map(|WalkIssue { path, message }| Issue { path, message })
            .collect(),
        baseline_digest: baseline.as_ref().map(|b| b.digest.clone()),
        ..Outcome::default()
    };
    let progress = progress_bar(opts.progress, candidates.len() as u64);
    let mut merger = Merger {
        config,
        baseline: baseline.as_mut(),
        pending: None,
        output,
        outcome: &mut outcome,
    };

    for batch in candidates.chunks(BATCH) {
        let olds: Vec<Option<Entry>> = batch
            .iter()
            .map(|c| merger.take_old(&c.path))
            .collect::<Result<_, _>>()?;
        let news: Vec<(Option<Collected>, Option<String>)> = batch
            .par_iter()
            .zip(olds.par_iter())
            .map(|(c, old)| collect_one(config, &map, c, old.as_ref().filter(|_| opts.incremental)))
            .collect();
        for ((new, issue), (old, cand)) in news.into_iter().zip(olds.into_iter().zip(batch)) {
            if let Some(message) = issue {
                merger.outcome.issues.push(Issue {
                    path: cand.path.clone(),
                    message,
                });
            }
            merger.record(old, new)?;
        }
        progress.inc(batch.len() as u64);
    }
    merger.finish_removed()?;
    progress.finish_and_clear();
    if let Some(out) = merger.output.take() {
        outcome.written_digest = Some(out.finish()?);
    }
    outcome.stats.duration = started.elapsed();
    Ok(outcome)
}

fn collect_one(
    config: &Config,
    map: &RootMap,
    cand: &Candidate,
    reuse: Option<&Entry>,
) -> (Option<Collected>, Option<String>) {
    let attrs = config.rules.get(cand.rule as usize).attrs;
    let fs_path = map.to_fs(&cand.path);
    READ_BUF.with_borrow_mut(
        |buf| match collect(&cand.path, &fs_path, attrs, reuse, buf) {
            Ok(Some(collected)) => {
                let issue = collected.entry.error.clone();
                (Some(collected), issue)
            }
            Ok(None) => (None, None),
            Err(e) => (None, Some(format!("cannot stat: {e}"))),
        },
    )
}

/// Walks the baseline stream alongside the sorted scan results.
struct Merger<'a> {
    config: &'a Config,
    baseline: Option<&'a mut DbReader>,
    pending: Option<Entry>,
    output: Option<DbWriter>,
    outcome: &'a mut Outcome,
}

impl Merger<'_> {
    fn next_old(&mut self) -> Result<Option<Entry>, DbError> {
        if let Some(e) = self.pending.take() {
            return Ok(Some(e));
        }
        match self.baseline.as_deref_mut() {
            Some(b) => b.next_entry(),
            None => Ok(None),
        }
    }

    /// The baseline entry for `path`, if any; baseline entries before it were removed.
    fn take_old(&mut self, path: &[u8]) -> Result<Option<Entry>, DbError> {
        while let Some(old) = self.next_old()? {
            match old.path[..].cmp(path) {
                std::cmp::Ordering::Less => self.removed(old),
                std::cmp::Ordering::Equal => return Ok(Some(old)),
                std::cmp::Ordering::Greater => {
                    self.pending = Some(old);
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    fn removed(&mut self, old: Entry) {
        // Entries the current rules no longer select are out of scope, not removed.
        let Some(rule) = self.config.rules.select_with_parents(&old.path, old.ftype) else {
            return;
        };
        if !self
            .config
            .rules
            .get(rule)
            .attrs
            .contains(AttrSet::ALLOW_REMOVED)
        {
            self.outcome.removed.push(old);
        }
    }

    fn record(&mut self, old: Option<Entry>, new: Option<Collected>) -> Result<(), DbError> {
        match (old, new) {
            (Some(old), None) => self.removed(old),
            (None, None) => {}
            (
                old,
                Some(Collected {
                    entry: new,
                    bytes_hashed,
                }),
            ) => {
                self.outcome.stats.entries += 1;
                if let Some(bytes) = bytes_hashed {
                    self.outcome.stats.files_hashed += 1;
                    self.outcome.stats.bytes_hashed += bytes;
                }
                if let Some(out) = self.output.as_mut() {
                    out.push(&new)?;
                }
                match old {
                    Some(old) => {
                        let changes = compare(&old, &new);
                        if !changes.is_empty() {
                            let summary = summary_string(&old, &new, &changes);
                            self.outcome.changed.push(Changed {
                                path: new.path.clone(),
                                ftype: new.ftype,
                                summary,
                                changes,
                            });
                        }
                    }
                    None if self.baseline.is_some() && !new.attrs.contains(AttrSet::ALLOW_NEW) => {
                        self.outcome.added.push(new)
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    fn finish_removed(&mut self) -> Result<(), DbError> {
        while let Some(old) = self.next_old()? {
            self.removed(old);
        }
        Ok(())
    }
}

fn progress_bar(enabled: bool, len: u64) -> indicatif::ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} files ({eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
