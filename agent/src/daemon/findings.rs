//! The differences between the node and its baseline as the agent currently knows them: replaced
//! wholesale by a periodic scan, and in part (the rescanned scope) by a realtime rescan.

use std::collections::BTreeMap;

use fim_engine::entry::Entry;
use fim_engine::scan::{Changed, Issue, Outcome, ScanStats, Unlisted};
use fim_engine::scope::Scope;

#[derive(Clone, Debug)]
enum Finding {
    Added(Entry),
    Removed(Entry),
    Changed(Changed),
}

/// Most findings of each kind (added, removed, changed, issues) kept with their details; the
/// rest are counted. With the scan's own cap ([`fim_engine::scan::ScanOptions::max_listed`])
/// this keeps the agent's memory bounded however many files appear at once.
pub const MAX_LISTED: usize = 10_000;

/// Current findings, keyed by node path.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    by_path: BTreeMap<Box<[u8]>, Finding>,
    issues: BTreeMap<Box<[u8]>, Issue>,
    /// Findings counted but not listed (from the scans, and from merges beyond the cap). A
    /// realtime rescan cannot tell which unlisted findings it covers: they stay until the next
    /// whole-tree scan.
    unlisted: Unlisted,
}

/// (added, changed, removed).
pub type Counts = (usize, usize, usize);

/// Paths with what happened to them, and the counts of findings not listed.
pub type Fingerprint = (Vec<(Box<[u8]>, String)>, Unlisted);

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
        // What the rescan could not list is still known in full from its counts.
        self.insert(outcome);
        before != self.fingerprint()
    }

    fn insert(&mut self, outcome: &Outcome) {
        let u = &outcome.unlisted;
        self.unlisted.added += u.added;
        self.unlisted.removed += u.removed;
        self.unlisted.changed += u.changed;
        self.unlisted.issues += u.issues;
        let (mut added, mut changed, mut removed) = self.listed();
        // Changed and removed first: if anything is dropped, it is the added entries.
        for c in &outcome.changed {
            self.add(Finding::Changed(c.clone()), &mut changed);
        }
        for e in &outcome.removed {
            self.add(Finding::Removed(e.clone()), &mut removed);
        }
        for e in &outcome.added {
            self.add(Finding::Added(e.clone()), &mut added);
        }
        for i in &outcome.issues {
            if self.issues.len() < MAX_LISTED || self.issues.contains_key(&i.path) {
                self.issues.insert(i.path.clone(), i.clone());
            } else {
                self.unlisted.issues += 1;
            }
        }
    }

    /// Lists `finding` unless its kind already has [`MAX_LISTED`] entries (`listed` counts them).
    fn add(&mut self, finding: Finding, listed: &mut usize) {
        let path = match &finding {
            Finding::Added(e) | Finding::Removed(e) => e.path.clone(),
            Finding::Changed(c) => c.path.clone(),
        };
        if *listed < MAX_LISTED || self.by_path.contains_key(&path) {
            if self.by_path.insert(path, finding.clone()).is_none() {
                *listed += 1;
            }
            return;
        }
        let u = &mut self.unlisted;
        match finding {
            Finding::Added(_) => u.added += 1,
            Finding::Removed(_) => u.removed += 1,
            Finding::Changed(_) => u.changed += 1,
        }
    }

    /// Listed (added, changed, removed).
    fn listed(&self) -> Counts {
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

    /// (added, changed, removed), listed or not.
    pub fn counts(&self) -> Counts {
        let (a, c, r) = self.listed();
        let u = &self.unlisted;
        (
            a + u.added as usize,
            c + u.changed as usize,
            r + u.removed as usize,
        )
    }

    pub fn is_clean(&self) -> bool {
        self.by_path.is_empty()
            && self.unlisted.added + self.unlisted.removed + self.unlisted.changed == 0
    }

    /// Up to `n` paths as evidence: changed ones first, then removed, then added, each in path
    /// order, so that a flood of new files cannot hide a changed or removed one.
    pub fn evidence_paths(&self, n: usize) -> Vec<&[u8]> {
        let of = |kind: fn(&Finding) -> bool| {
            self.by_path
                .iter()
                .filter(move |(_, f)| kind(f))
                .map(|(p, _)| &p[..])
        };
        of(|f| matches!(f, Finding::Changed(_)))
            .chain(of(|f| matches!(f, Finding::Removed(_))))
            .chain(of(|f| matches!(f, Finding::Added(_))))
            .take(n)
            .collect()
    }

    /// What identifies a result: paths, kinds and change summaries.
    pub fn fingerprint(&self) -> Fingerprint {
        let listed = self
            .by_path
            .iter()
            .map(|(p, f)| {
                let what = match f {
                    Finding::Added(_) => "added".to_owned(),
                    Finding::Removed(_) => "removed".to_owned(),
                    Finding::Changed(c) => format!("changed {}", c.summary),
                };
                (p.clone(), what)
            })
            .collect();
        (listed, self.unlisted)
    }

    /// The findings as a scan outcome, for the report writers.
    pub fn to_outcome(&self, stats: ScanStats, baseline_digest: Option<String>) -> Outcome {
        let mut outcome = Outcome {
            stats,
            baseline_digest,
            issues: self.issues.values().cloned().collect(),
            unlisted: self.unlisted,
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
        assert_eq!(
            f.evidence_paths(10),
            [&b"/opt/c"[..], b"/etc/new", b"/usr/b"],
            "removed before added"
        );

        // The same rescan again changes nothing.
        assert!(!f.merge_scoped(&scope, &outcome(&[b"/etc/new"], &[])));
        let clean = Scope::of_changes([b"/".as_slice()]);
        assert!(f.merge_scoped(&clean, &Outcome::default()));
        assert!(f.is_clean());
    }

    fn changed(path: &[u8]) -> Changed {
        Changed {
            path: path.into(),
            ftype: fim_engine::entry::FileType::Regular,
            summary: "f   ...    . C".into(),
            changes: Vec::new(),
        }
    }

    #[test]
    fn evidence_puts_changed_and_removed_before_a_flood_of_added() {
        let added: Vec<Vec<u8>> = (0..20_000)
            .map(|i| format!("/a/{i:06}").into_bytes())
            .collect();
        let mut o = outcome(
            &added.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            &[b"/etc/shadow"],
        );
        o.changed.push(changed(b"/etc/passwd"));
        o.unlisted.added = 80_000;
        let f = Findings::from_outcome(&o);
        assert_eq!(
            f.counts(),
            (100_000, 1, 1),
            "totals count what is not listed"
        );
        let paths = f.evidence_paths(100);
        assert_eq!(
            &paths[..3],
            [&b"/etc/passwd"[..], b"/etc/shadow", b"/a/000000"]
        );
        assert_eq!(paths.len(), 100);
        // The lists are capped, the report says how many more there are.
        let back = f.to_outcome(ScanStats::default(), None);
        assert_eq!(back.added.len(), MAX_LISTED);
        assert_eq!(back.added_total(), 100_000);
        assert_eq!((back.changed.len(), back.removed.len()), (1, 1));
    }

    #[test]
    fn a_capped_list_still_takes_changes_to_listed_paths() {
        let added: Vec<Vec<u8>> = (0..MAX_LISTED + 5)
            .map(|i| format!("/a/{i:06}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = added.iter().map(Vec::as_slice).collect();
        let mut f = Findings::from_outcome(&outcome(&refs, &[]));
        assert_eq!(f.counts().0, MAX_LISTED + 5);
        assert!(!f.is_clean());
        // A rescan of a listed path replaces its finding without counting it twice.
        let scope = Scope::of_changes([b"/a/000001".as_slice()]);
        f.merge_scoped(&scope, &outcome(&[b"/a/000001"], &[]));
        assert_eq!(f.counts().0, MAX_LISTED + 5);
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
