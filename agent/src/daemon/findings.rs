//! The differences between the node and its baseline as the agent currently knows them: replaced
//! wholesale by a periodic scan, and in part (the rescanned scope) by a realtime rescan.

use std::collections::BTreeMap;

use fim_engine::entry::Entry;
use fim_engine::scan::{Changed, Issue, Outcome, ScanStats};
use fim_engine::scope::Scope;

#[derive(Clone, Debug)]
enum Finding {
    Added(Entry),
    Removed(Entry),
    Changed(Changed),
}

/// Current findings, keyed by node path.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    by_path: BTreeMap<Box<[u8]>, Finding>,
    issues: BTreeMap<Box<[u8]>, Issue>,
}

/// (added, changed, removed).
pub type Counts = (usize, usize, usize);

impl Findings {
    /// Findings of a whole-tree scan.
    pub fn from_outcome(outcome: &Outcome) -> Findings {
        let mut f = Findings::default();
        f.insert(outcome);
        f
    }

    /// Replaces what is known about `scope` with a rescan of it. Returns whether anything changed.
    pub fn merge_scoped(&mut self, scope: &Scope, outcome: &Outcome) -> bool {
        let before = self.fingerprint();
        self.by_path.retain(|p, _| !scope.contains(p));
        self.issues.retain(|p, _| !scope.contains(p));
        self.insert(outcome);
        before != self.fingerprint()
    }

    fn insert(&mut self, outcome: &Outcome) {
        for e in &outcome.added {
            self.by_path
                .insert(e.path.clone(), Finding::Added(e.clone()));
        }
        for e in &outcome.removed {
            self.by_path
                .insert(e.path.clone(), Finding::Removed(e.clone()));
        }
        for c in &outcome.changed {
            self.by_path
                .insert(c.path.clone(), Finding::Changed(c.clone()));
        }
        for i in &outcome.issues {
            self.issues.insert(i.path.clone(), i.clone());
        }
    }

    pub fn counts(&self) -> Counts {
        let mut counts = (0, 0, 0);
        for f in self.by_path.values() {
            match f {
                Finding::Added(_) => counts.0 += 1,
                Finding::Changed(_) => counts.1 += 1,
                Finding::Removed(_) => counts.2 += 1,
            }
        }
        counts
    }

    pub fn is_clean(&self) -> bool {
        self.by_path.is_empty()
    }

    /// The first `n` changed paths, in path order.
    pub fn first_paths(&self, n: usize) -> Vec<&[u8]> {
        self.by_path.keys().take(n).map(|p| &p[..]).collect()
    }

    /// What identifies a result: paths, kinds and change summaries.
    pub fn fingerprint(&self) -> Vec<(Box<[u8]>, String)> {
        self.by_path
            .iter()
            .map(|(p, f)| {
                let what = match f {
                    Finding::Added(_) => "added".to_owned(),
                    Finding::Removed(_) => "removed".to_owned(),
                    Finding::Changed(c) => format!("changed {}", c.summary),
                };
                (p.clone(), what)
            })
            .collect()
    }

    /// The findings as a scan outcome, for the report writers.
    pub fn to_outcome(&self, stats: ScanStats, baseline_digest: Option<String>) -> Outcome {
        let mut outcome = Outcome {
            stats,
            baseline_digest,
            issues: self.issues.values().cloned().collect(),
            ..Outcome::default()
        };
        for f in self.by_path.values() {
            match f {
                Finding::Added(e) => outcome.added.push(e.clone()),
                Finding::Removed(e) => outcome.removed.push(e.clone()),
                Finding::Changed(c) => outcome.changed.push(c.clone()),
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fim_engine::attrs::AttrSet;
    use fim_engine::entry::{FileType, Stat};

    fn entry(path: &[u8]) -> Entry {
        Entry {
            path: path.into(),
            ftype: FileType::Regular,
            attrs: AttrSet::default(),
            stat: Stat::default(),
            link_target: None,
            xattrs: None,
            e2fsattrs: None,
            hashes: Vec::new(),
            error: None,
        }
    }

    fn outcome(added: &[&[u8]], removed: &[&[u8]]) -> Outcome {
        Outcome {
            added: added.iter().map(|p| entry(p)).collect(),
            removed: removed.iter().map(|p| entry(p)).collect(),
            ..Outcome::default()
        }
    }

    #[test]
    fn a_scoped_rescan_replaces_only_its_scope() {
        let mut f = Findings::from_outcome(&outcome(&[b"/etc/a", b"/usr/b"], &[b"/opt/c"]));
        assert_eq!(f.counts(), (2, 0, 1));

        // /etc/a was removed again (no longer a finding); /etc/new appeared.
        let scope = Scope::of_changes([b"/etc/a".as_slice(), b"/etc/new"]);
        assert!(f.merge_scoped(&scope, &outcome(&[b"/etc/new"], &[])));
        assert_eq!(f.counts(), (2, 0, 1));
        assert_eq!(f.first_paths(10), [&b"/etc/new"[..], b"/opt/c", b"/usr/b"]);

        // The same rescan again changes nothing.
        assert!(!f.merge_scoped(&scope, &outcome(&[b"/etc/new"], &[])));
        let clean = Scope::of_changes([b"/".as_slice()]);
        assert!(f.merge_scoped(&clean, &Outcome::default()));
        assert!(f.is_clean());
    }

    #[test]
    fn the_outcome_lists_every_finding() {
        let f = Findings::from_outcome(&outcome(&[b"/a"], &[b"/b", b"/c"]));
        let o = f.to_outcome(ScanStats::default(), Some("d".into()));
        assert_eq!(o.added.len(), 1);
        assert_eq!(o.removed.len(), 2);
        assert_eq!(o.exit_bits(), 3);
    }
}
