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
use crate::root::Root;
use crate::scope::Scope;
pub use crate::walk::Issue;
use crate::walk::{Candidate, Walker};

/// Entries collected in parallel before they are merged, in order, with the baseline. The walk
/// runs ahead by at most a batch or two, so memory does not grow with the tree.
const BATCH: usize = 4096;

/// Receives a scan's progress; implemented by front ends (the engine draws nothing itself).
pub trait Progress: Send + Sync {
    /// The scan starts; `total` is how many entries it will look at, when known (the walk streams,
    /// so a scan does not know it in advance).
    fn start(&self, total: Option<u64>);
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
    /// Longest list of added, removed, changed entries and issues an outcome keeps; the rest
    /// are only counted (`Outcome::unlisted`), so a million new files cannot exhaust memory.
    pub max_listed: usize,
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
            max_listed: usize::MAX,
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
    /// Findings beyond `ScanOptions::max_listed`: counted, not listed.
    pub unlisted: Unlisted,
}

/// Counts of findings that were not kept in an outcome's lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Unlisted {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    pub issues: u64,
}

impl Outcome {
    pub fn has_differences(&self) -> bool {
        self.added_total() + self.removed_total() + self.changed_total() > 0
    }

    /// AIDE's exit status: 1 added + 2 removed + 4 changed.
    pub fn exit_bits(&self) -> i32 {
        (self.added_total() > 0) as i32
            | ((self.removed_total() > 0) as i32) << 1
            | ((self.changed_total() > 0) as i32) << 2
    }

    /// Added entries, listed or not.
    pub fn added_total(&self) -> u64 {
        self.added.len() as u64 + self.unlisted.added
    }

    pub fn removed_total(&self) -> u64 {
        self.removed.len() as u64 + self.unlisted.removed
    }

    pub fn changed_total(&self) -> u64 {
        self.changed.len() as u64 + self.unlisted.changed
    }

    pub fn issues_total(&self) -> u64 {
        self.issues.len() as u64 + self.unlisted.issues
    }
}

/// Pushes `item` while `list` is shorter than `max`; counts it in `unlisted` otherwise.
pub fn keep<T>(list: &mut Vec<T>, item: T, max: usize, unlisted: &mut u64) {
    if list.len() < max {
        list.push(item);
    } else {
        *unlisted += 1;
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
    let root_err = |source| ScanError::Root {
        root: opts.root.clone(),
        source,
    };
    let root = Root::open(&opts.root).map_err(root_err)?;
    root.open_dir().map_err(root_err)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .thread_name(|i| format!("fim-scan-{i}"))
        .build()
        .map_err(|e| ScanError::Threads(e.to_string()))?;
    let mut outcome = Outcome {
        baseline_digest: baseline.as_ref().map(|b| b.digest.clone()),
        ..Outcome::default()
    };
    if let Some(p) = &opts.progress {
        p.start(None);
    }
    let mut merger = Merger {
        config,
        scope: opts.scope.as_ref(),
        baseline: baseline.as_mut(),
        pending: None,
        output,
        max_listed: opts.max_listed,
        outcome: &mut outcome,
    };
    // The walk runs on its own thread, a batch ahead of the collection.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Candidate>>(1);
    let (rules, root_ref, scope) = (&config.rules, &root, opts.scope.as_ref());
    let walk_issues = std::thread::scope(|s| -> Result<Vec<Issue>, ScanError> {
        let walker = std::thread::Builder::new()
            .name("fim-walk".into())
            .spawn_scoped(s, move || {
                let mut w = Walker::new(rules, root_ref, scope);
                loop {
                    let batch = w.next_batch(BATCH);
                    if batch.is_empty() || tx.send(batch).is_err() {
                        break;
                    }
                }
                w.into_issues()
            })
            .map_err(|e| ScanError::Threads(e.to_string()))?;
        let mut rx = rx;
        let merged = merge_batches(config, opts, &root, &pool, &mut rx, &mut merger);
        // On an error the walk stops at its next send.
        drop(rx);
        let issues = walker.join().expect("the walk thread does not panic");
        merged.map(|()| issues)
    })?;
    merger.finish_removed()?;
    if let Some(p) = &opts.progress {
        p.finish();
    }
    if let Some(out) = merger.output.take() {
        outcome.written_digest = Some(out.finish()?);
    }
    // Directories the walk could not read come first, then entries that could not be read.
    // Both within the listing cap: issues past it are counted, not listed.
    let collect_issues = std::mem::take(&mut outcome.issues);
    for issue in walk_issues.into_iter().chain(collect_issues) {
        keep(
            &mut outcome.issues,
            issue,
            opts.max_listed,
            &mut outcome.unlisted.issues,
        );
    }
    outcome.stats.duration = started.elapsed();
    Ok(outcome)
}

/// Collects each batch the walk sends on all threads and merges it, in order, with the baseline.
/// While one batch is collected, the previous one is merged and the baseline entries of the next
/// are read, so the serial merge never leaves the hashing threads idle.
fn merge_batches(
    config: &Config,
    opts: &ScanOptions,
    root: &Root,
    pool: &rayon::ThreadPool,
    batches: &mut std::sync::mpsc::Receiver<Vec<Candidate>>,
    merger: &mut Merger<'_>,
) -> Result<(), ScanError> {
    let mut current = batches.recv().ok();
    let mut olds = match &current {
        Some(b) => merger.take_olds(b)?,
        None => Vec::new(),
    };
    // Collected, not merged yet. Merge order equals the walk's order: batch i is merged after the
    // baseline entries of batch i + 1 were taken, exactly as when merging right after collecting.
    let mut collected: Vec<Processed> = Vec::new();
    while let Some(batch) = current.take() {
        let this_olds = std::mem::take(&mut olds);
        let previous = std::mem::take(&mut collected);
        // Moved into the merging closure: a receiver is not shared between threads, only handed over.
        let (rx, m) = (&mut *batches, &mut *merger);
        let (processed, next) = pool.install(|| {
            rayon::join(
                || {
                    batch
                        .par_iter()
                        .zip(this_olds.into_par_iter())
                        .map(|(c, old)| process(config, root, opts.incremental, c, old))
                        .collect::<Vec<_>>()
                },
                move || -> Result<_, DbError> {
                    for p in previous {
                        m.record(p)?;
                    }
                    let next = rx.recv().ok();
                    let olds = match &next {
                        Some(b) => m.take_olds(b)?,
                        None => Vec::new(),
                    };
                    Ok((next, olds))
                },
            )
        });
        (current, olds) = next?;
        collected = processed;
        if let Some(p) = &opts.progress {
            p.advance(batch.len() as u64);
        }
    }
    for p in collected {
        merger.record(p)?;
    }
    Ok(())
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
    root: &Root,
    incremental: bool,
    cand: &Candidate,
    old: Option<Entry>,
) -> Processed {
    let attrs = config.rules.get(cand.rule as usize).attrs;
    let reuse = old.as_ref().filter(|_| incremental);
    let collected = READ_BUF
        .with_borrow_mut(|buf| collect_with_stat(root, &cand.path, cand.stat, attrs, reuse, buf));
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
    max_listed: usize,
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
            let o = &mut *self.outcome;
            keep(
                &mut o.removed,
                old,
                self.max_listed,
                &mut o.unlisted.removed,
            );
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
            let o = &mut *self.outcome;
            keep(
                &mut o.issues,
                Issue { path, message },
                self.max_listed,
                &mut o.unlisted.issues,
            );
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
        let o = &mut *self.outcome;
        if let Some(c) = changed {
            keep(&mut o.changed, c, self.max_listed, &mut o.unlisted.changed);
        } else if old.is_none()
            && self.baseline.is_some()
            && !new.attrs.contains(AttrSet::ALLOW_NEW)
        {
            keep(&mut o.added, new, self.max_listed, &mut o.unlisted.added);
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
