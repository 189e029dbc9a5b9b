//! One scan: walk, collect attributes and hashes in parallel, merge with the baseline in path order,
//! and (for init/update) stream the new baseline to disk.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::attrs::AttrSet;
use crate::config::Config;
use crate::db::{DbError, DbReader, DbWriter};
use crate::diff::{AttrChange, compare, summary_string};
use crate::entry::{Collected, Entry, FileType, collect_with_stat};
use crate::scope::Scope;
pub use crate::walk::Issue;
use crate::walk::{Candidate, RootMap, walk};

/// Entries collected in parallel before they are merged, in order, with the baseline.
const BATCH: usize = 4096;

/// Receives a scan's progress; implemented by front ends (the engine draws nothing itself).
pub trait Progress: Send + Sync {
    /// The scan will look at `total` entries.
    fn start(&self, total: u64);
    fn advance(&self, entries: u64);
    fn finish(&self);
}

#[derive(Clone)]
pub struct ScanOptions {
    pub root: PathBuf,
    /// Trust a baseline hash while size, mtime, ctime and inode are unchanged.
    pub incremental: bool,
    /// Told how far the scan is (the CLI draws a progress bar from it).
    pub progress: Option<Arc<dyn Progress>>,
    pub threads: usize,
    /// Only these paths (a realtime rescan); such a scan never writes a baseline.
    pub scope: Option<Scope>,
}

impl std::fmt::Debug for ScanOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanOptions")
            .field("root", &self.root)
            .field("incremental", &self.incremental)
            .field("progress", &self.progress.is_some())
            .field("threads", &self.threads)
            .field("scope", &self.scope)
            .finish()
    }
}

impl ScanOptions {
    pub fn new(root: impl Into<PathBuf>) -> ScanOptions {
        ScanOptions {
            root: root.into(),
            incremental: false,
            progress: None,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            scope: None,
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
    #[error("cannot start the scan threads: {0}")]
    Threads(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("a scan limited to some paths cannot write a baseline")]
    ScopedBaseline,
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
    if opts.scope.is_some() && output.is_some() {
        return Err(ScanError::ScopedBaseline);
    }
    std::fs::read_dir(&opts.root).map_err(|source| ScanError::Root {
        root: opts.root.clone(),
        source,
    })?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .thread_name(|i| format!("fim-scan-{i}"))
        .build()
        .map_err(|e| ScanError::Threads(e.to_string()))?;
    let map = RootMap::new(&opts.root);
    let (candidates, walk_issues) = pool.install(|| walk(&config.rules, &map, opts.scope.as_ref()));
    let mut outcome = Outcome {
        issues: walk_issues,
        baseline_digest: baseline.as_ref().map(|b| b.digest.clone()),
        ..Outcome::default()
    };
    if let Some(p) = &opts.progress {
        p.start(candidates.len() as u64);
    }
    let mut merger = Merger {
        config,
        scope: opts.scope.as_ref(),
        baseline: baseline.as_mut(),
        pending: None,
        output,
        outcome: &mut outcome,
    };
    let batches: Vec<&[Candidate]> = candidates.chunks(BATCH).collect();

    // While one batch is collected on all threads, the baseline entries of the next are read.
    let mut olds = match batches.first() {
        Some(b) => merger.take_olds(b)?,
        None => Vec::new(),
    };
    for (i, batch) in batches.iter().enumerate() {
        let current = std::mem::take(&mut olds);
        let (processed, next) = pool.install(|| {
            rayon::join(
                || {
                    batch
                        .par_iter()
                        .zip(current.into_par_iter())
                        .map(|(c, old)| process(config, &map, opts.incremental, c, old))
                        .collect::<Vec<_>>()
                },
                || batches.get(i + 1).map(|b| merger.take_olds(b)).transpose(),
            )
        });
        olds = next?.unwrap_or_default();
        for p in processed {
            merger.record(p)?;
        }
        if let Some(p) = &opts.progress {
            p.advance(batch.len() as u64);
        }
    }
    merger.finish_removed()?;
    if let Some(p) = &opts.progress {
        p.finish();
    }
    if let Some(out) = merger.output.take() {
        outcome.written_digest = Some(out.finish()?);
    }
    outcome.stats.duration = started.elapsed();
    Ok(outcome)
}

/// One candidate collected and compared with its baseline entry (on a pool thread).
struct Processed {
    old: Option<Entry>,
    new: Option<Entry>,
    changed: Option<Changed>,
    issue: Option<String>,
    bytes_hashed: Option<u64>,
}

fn process(
    config: &Config,
    map: &RootMap,
    incremental: bool,
    cand: &Candidate,
    old: Option<Entry>,
) -> Processed {
    let attrs = config.rules.get(cand.rule as usize).attrs;
    let fs_path = map.to_fs(&cand.path);
    let reuse = old.as_ref().filter(|_| incremental);
    let collected = READ_BUF.with_borrow_mut(|buf| {
        collect_with_stat(&cand.path, &fs_path, cand.stat, attrs, reuse, buf)
    });
    let (new, bytes_hashed, issue) = match collected {
        Ok(Some(Collected {
            entry,
            bytes_hashed,
        })) => {
            let issue = entry.error.clone();
            (Some(entry), bytes_hashed, issue)
        }
        Ok(None) => (None, None, None),
        Err(e) => (None, None, Some(format!("cannot read: {e}"))),
    };
    let changed = match (&old, &new) {
        (Some(o), Some(n)) => {
            let changes = compare(o, n);
            (!changes.is_empty()).then(|| Changed {
                path: n.path.clone(),
                ftype: n.ftype,
                summary: summary_string(o, n, &changes),
                changes,
            })
        }
        _ => None,
    };
    Processed {
        old,
        new,
        changed,
        issue,
        bytes_hashed,
    }
}

/// Walks the baseline stream alongside the sorted scan results.
struct Merger<'a> {
    config: &'a Config,
    /// Baseline entries outside it are neither compared nor reported.
    scope: Option<&'a Scope>,
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
        let Some(baseline) = self.baseline.as_deref_mut() else {
            return Ok(None);
        };
        while let Some(old) = baseline.next_entry()? {
            if self.scope.is_none_or(|s| s.contains(&old.path)) {
                return Ok(Some(old));
            }
        }
        Ok(None)
    }

    /// The baseline entries for a batch, aligned with it.
    fn take_olds(&mut self, batch: &[Candidate]) -> Result<Vec<Option<Entry>>, DbError> {
        batch.iter().map(|c| self.take_old(&c.path)).collect()
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

    fn record(&mut self, p: Processed) -> Result<(), DbError> {
        let Processed {
            old,
            new,
            changed,
            issue,
            bytes_hashed,
        } = p;
        if let Some(message) = issue {
            let path = new
                .as_ref()
                .or(old.as_ref())
                .map(|e| e.path.clone())
                .unwrap_or_default();
            self.outcome.issues.push(Issue { path, message });
        }
        let Some(new) = new else {
            if let Some(old) = old {
                self.removed(old);
            }
            return Ok(());
        };
        self.outcome.stats.entries += 1;
        if let Some(bytes) = bytes_hashed {
            self.outcome.stats.files_hashed += 1;
            self.outcome.stats.bytes_hashed += bytes;
        }
        if let Some(out) = self.output.as_mut() {
            out.push(&new)?;
        }
        if let Some(c) = changed {
            self.outcome.changed.push(c);
        } else if old.is_none()
            && self.baseline.is_some()
            && !new.attrs.contains(AttrSet::ALLOW_NEW)
        {
            self.outcome.added.push(new);
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
