//! The operator-held baseline anchor (issue 10, item 2).
//!
//! A node's agent records the digest of its baseline database in its own
//! FileIntegrityNodeStatus, which the agent's token may write: root on the node can replace the
//! database *and* that digest, and the agent then trusts the replacement. So the operator keeps
//! its own record, `status.baselines[]` on the FileIntegrity (agents cannot write
//! FileIntegrity status: RBAC gives them only get/list/watch on `fileintegrities`), and
//! [`judge`] compares every report with it:
//!
//! - an entry is written, empty, when the operator first sees the node without a baseline (it
//!   creates the node's objects, or sees its status without a digest): the node's *first*
//!   baseline is then recorded as it appears;
//! - a digest reported together with the acknowledgement of a re-init request that targets the
//!   node, and that the entry has not yet consumed, is recorded with that request's id;
//! - any other digest is rejected: the node counts as Errored ("baseline replaced") until a
//!   re-init request for it is acknowledged. The rejection is sticky (kept in the entry), so
//!   putting the old digest back does not erase the evidence;
//! - a node reporting a digest while the operator holds no entry for it (the anchor was lost, or
//!   the node was never seen without a baseline) is rejected too: nothing is adopted unseen.
//!
//! While a node owes the current re-init request, nothing is judged (its reports are
//! intermediate; it counts as initialising). docs/decisions.md explains the cases.

use std::collections::{BTreeMap, BTreeSet};

use kube_fim_crds::{BaselineAnchor, reinit::ReinitRequest};

/// What one node reported, as far as the anchor is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report<'a> {
    /// `baselineDigest` of its status.
    pub digest: Option<&'a str>,
    /// The re-init request id it acknowledged.
    pub ack: Option<u64>,
}

/// The operator's judgement of one node's baseline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No digest reported yet (or none right now: the node's own result says why).
    Unreported,
    /// The reported digest is the anchored one.
    Anchored,
    /// The reported digest was recorded now: a first baseline, or an acknowledged re-init.
    Recorded,
    /// The node owes the current re-init request: judged once it acknowledges it.
    Reinitialising,
    /// A digest the operator did not see created: the node is Errored until a re-init.
    Replaced {
        /// The anchored digest (`None`: the operator holds no anchor for the node).
        anchored: Option<String>,
        /// The rejected digest.
        reported: String,
    },
}

impl Verdict {
    pub fn is_replaced(&self) -> bool {
        matches!(self, Verdict::Replaced { .. })
    }
}

/// Judges `report` of `node` against its anchor `entry`, given the re-init requests recorded on
/// the FileIntegrity (before and after this reconcile's step: an ack of the request a new one
/// just replaced still counts) and whether the node owes the current one. Returns the entry to keep (`None`: no
/// entry) and the verdict.
pub fn judge(
    node: &str,
    entry: Option<&BaselineAnchor>,
    report: Report<'_>,
    requests: &[&ReinitRequest],
    owes_request: bool,
) -> (Option<BaselineAnchor>, Verdict) {
    if owes_request {
        return (entry.cloned(), Verdict::Reinitialising);
    }
    let rejected = |entry: Option<&BaselineAnchor>| {
        entry
            .and_then(|e| e.rejected_digest.clone())
            .map(|reported| Verdict::Replaced {
                anchored: entry.and_then(|e| e.digest.clone()),
                reported,
            })
    };
    let Some(digest) = report.digest else {
        // A node without a baseline reports Errored itself; an earlier rejection stands.
        let entry = entry
            .cloned()
            .unwrap_or_else(|| BaselineAnchor::awaiting(node));
        let verdict = rejected(Some(&entry)).unwrap_or(Verdict::Unreported);
        return (Some(entry), verdict);
    };
    // The acknowledgement of a request that targets the node, not yet consumed by the entry:
    // the one way to move an anchor (ids are the operator's, see `reinit`).
    let reinit = requests.iter().find(|r| {
        r.nodes.contains(node)
            && report.ack == Some(r.id)
            && entry.is_none_or(|e| e.reinit_id != i64::try_from(r.id).ok())
    });
    if let Some(r) = reinit {
        let recorded = BaselineAnchor {
            node_name: node.to_owned(),
            digest: Some(digest.to_owned()),
            // An id beyond int64 (only a hand-written request) is not stored.
            reinit_id: i64::try_from(r.id).ok(),
            rejected_digest: None,
        };
        return (Some(recorded), Verdict::Recorded);
    }
    match entry {
        None => {
            let kept = BaselineAnchor {
                rejected_digest: Some(digest.to_owned()),
                ..BaselineAnchor::awaiting(node)
            };
            let verdict = rejected(Some(&kept)).expect("just rejected");
            (Some(kept), verdict)
        }
        Some(e) if e.digest.as_deref() == Some(digest) => {
            let verdict = rejected(Some(e)).unwrap_or(Verdict::Anchored);
            (Some(e.clone()), verdict)
        }
        Some(e) if e.digest.is_none() && e.rejected_digest.is_none() => {
            // The first baseline of a node the operator saw without one.
            let recorded = BaselineAnchor {
                digest: Some(digest.to_owned()),
                ..e.clone()
            };
            (Some(recorded), Verdict::Recorded)
        }
        Some(e) => {
            let kept = BaselineAnchor {
                rejected_digest: Some(digest.to_owned()),
                ..e.clone()
            };
            let verdict = rejected(Some(&kept)).expect("just rejected");
            (Some(kept), verdict)
        }
    }
}

/// Anchors and verdicts of a whole FileIntegrity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Anchors {
    /// The new `status.baselines`, ordered by node.
    pub entries: Vec<BaselineAnchor>,
    /// Verdict per judged node.
    pub verdicts: BTreeMap<String, Verdict>,
    /// Nodes whose rejection is new in this judgement (for one event each).
    pub newly_replaced: BTreeSet<String>,
}

impl Anchors {
    /// Nodes whose baseline was replaced.
    pub fn replaced(&self) -> BTreeSet<String> {
        self.verdicts
            .iter()
            .filter(|(_, v)| v.is_replaced())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Judges every reporting node (`reports`, by node) against `previous` entries; `created` are
/// nodes whose objects the operator creates now (an empty entry awaits their first baseline),
/// `gone` nodes whose entries go. Entries of other nodes are kept as they are.
pub fn judge_all(
    previous: &[BaselineAnchor],
    reports: &BTreeMap<String, Report<'_>>,
    created: &BTreeSet<String>,
    gone: &BTreeSet<String>,
    requests: &[&ReinitRequest],
    owing: &BTreeSet<String>,
) -> Anchors {
    let mut entries: BTreeMap<String, BaselineAnchor> = previous
        .iter()
        .map(|e| (e.node_name.clone(), e.clone()))
        .collect();
    let mut out = Anchors::default();
    for (node, report) in reports {
        let old = entries.get(node).cloned();
        let (entry, verdict) = judge(node, old.as_ref(), *report, requests, owing.contains(node));
        let was = old.as_ref().and_then(|e| e.rejected_digest.as_ref());
        let now = entry.as_ref().and_then(|e| e.rejected_digest.as_ref());
        if now.is_some() && now != was {
            out.newly_replaced.insert(node.clone());
        }
        match entry {
            Some(e) => entries.insert(node.clone(), e),
            None => entries.remove(node),
        };
        out.verdicts.insert(node.clone(), verdict);
    }
    for node in created {
        // Never reset an existing entry: the node's objects may only look absent (a lagging
        // cache), and an existing anchor must stay.
        entries
            .entry(node.clone())
            .or_insert_with(|| BaselineAnchor::awaiting(node.clone()));
    }
    for node in gone {
        entries.remove(node);
    }
    out.entries = entries.into_values().collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchored(digest: &str, reinit_id: Option<i64>) -> BaselineAnchor {
        BaselineAnchor {
            digest: Some(digest.into()),
            reinit_id,
            ..BaselineAnchor::awaiting("a")
        }
    }

    fn report(digest: Option<&str>, ack: Option<u64>) -> Report<'_> {
        Report { digest, ack }
    }

    fn request(id: u64, nodes: &[&str]) -> ReinitRequest {
        ReinitRequest {
            id,
            annotation: None,
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            done: true,
        }
    }

    #[test]
    fn a_first_baseline_is_recorded_only_after_the_node_was_seen_without_one() {
        // Seen without a baseline: an empty entry.
        let (entry, verdict) = judge("a", None, report(None, None), &[], false);
        assert_eq!(entry, Some(BaselineAnchor::awaiting("a")));
        assert_eq!(verdict, Verdict::Unreported);
        // Its first digest is recorded.
        let (entry, verdict) = judge("a", entry.as_ref(), report(Some("d1"), None), &[], false);
        assert_eq!(entry, Some(anchored("d1", None)));
        assert_eq!(verdict, Verdict::Recorded);
        // And trusted from then on.
        let (again, verdict) = judge("a", entry.as_ref(), report(Some("d1"), None), &[], false);
        assert_eq!(again, entry);
        assert_eq!(verdict, Verdict::Anchored);
    }

    #[test]
    fn another_digest_without_a_matching_reinit_is_a_replaced_baseline() {
        // Failed before the fix: nothing compared the node's digest with an operator record.
        let entry = anchored("d1", Some(4));
        let (kept, verdict) = judge("a", Some(&entry), report(Some("evil"), Some(4)), &[], false);
        assert_eq!(
            verdict,
            Verdict::Replaced {
                anchored: Some("d1".into()),
                reported: "evil".into()
            }
        );
        let kept = kept.unwrap();
        assert_eq!(kept.digest.as_deref(), Some("d1"), "the anchor never moves");
        assert_eq!(kept.rejected_digest.as_deref(), Some("evil"));
        // Sticky: the old digest back does not erase the evidence.
        let (_, verdict) = judge("a", Some(&kept), report(Some("d1"), Some(4)), &[], false);
        assert!(verdict.is_replaced(), "{verdict:?}");
        // An ack of an already consumed request, of a request for other nodes, or of an id
        // that is not the recorded request's, moves nothing.
        for (req, ack) in [
            (request(4, &["a"]), 4),
            (request(5, &["b"]), 5),
            (request(5, &["a"]), 6),
        ] {
            let (_, verdict) = judge(
                "a",
                Some(&entry),
                report(Some("evil"), Some(ack)),
                &[&req],
                false,
            );
            assert!(verdict.is_replaced(), "{req:?} ack {ack}: {verdict:?}");
        }
    }

    #[test]
    fn an_acknowledged_reinit_moves_the_anchor_once_and_clears_a_rejection() {
        let rejected = BaselineAnchor {
            rejected_digest: Some("evil".into()),
            ..anchored("d1", Some(4))
        };
        let req = request(5, &["a", "b"]);
        let (entry, verdict) = judge(
            "a",
            Some(&rejected),
            report(Some("d2"), Some(5)),
            &[&req],
            false,
        );
        assert_eq!(verdict, Verdict::Recorded);
        let entry = entry.unwrap();
        assert_eq!(entry, anchored("d2", Some(5)));
        // The same ack cannot move it twice.
        let (_, verdict) = judge(
            "a",
            Some(&entry),
            report(Some("d3"), Some(5)),
            &[&req],
            false,
        );
        assert!(verdict.is_replaced());
    }

    #[test]
    fn an_ack_of_the_request_a_new_one_just_replaced_still_counts() {
        // Request 5 for a was acknowledged in the same reconcile that records request 6 for b.
        let entry = anchored("d1", Some(4));
        let (old, new) = (request(5, &["a"]), request(6, &["b"]));
        let (entry, verdict) = judge(
            "a",
            Some(&entry),
            report(Some("d2"), Some(5)),
            &[&old, &new],
            false,
        );
        assert_eq!(verdict, Verdict::Recorded);
        assert_eq!(entry, Some(anchored("d2", Some(5))));
    }

    #[test]
    fn nothing_is_judged_while_the_node_owes_a_reinit() {
        let entry = anchored("d1", None);
        let (kept, verdict) = judge("a", Some(&entry), report(Some("mid"), Some(3)), &[], true);
        assert_eq!(verdict, Verdict::Reinitialising);
        assert_eq!(kept, Some(entry));
    }

    #[test]
    fn without_an_anchor_no_digest_is_adopted() {
        // The anchor was lost, or the node had a baseline before the operator saw it.
        let (entry, verdict) = judge("a", None, report(Some("d1"), None), &[], false);
        assert_eq!(
            verdict,
            Verdict::Replaced {
                anchored: None,
                reported: "d1".into()
            }
        );
        assert_eq!(entry.unwrap().rejected_digest.as_deref(), Some("d1"));
        // A re-init for the node heals it.
        let (entry, verdict) = judge(
            "a",
            None,
            report(Some("d2"), Some(9)),
            &[&request(9, &["a"])],
            false,
        );
        assert_eq!(verdict, Verdict::Recorded);
        assert_eq!(entry, Some(anchored("d2", Some(9))));
    }

    #[test]
    fn a_node_without_a_digest_keeps_its_anchor() {
        let entry = anchored("d1", None);
        let (kept, verdict) = judge("a", Some(&entry), report(None, None), &[], false);
        assert_eq!((kept, verdict), (Some(entry), Verdict::Unreported));
    }

    #[test]
    fn judge_all_creates_keeps_and_drops_entries_and_names_new_rejections() {
        let previous = vec![
            BaselineAnchor {
                node_name: "a".into(),
                ..anchored("d1", None)
            },
            BaselineAnchor {
                node_name: "b".into(),
                ..anchored("d2", None)
            },
            BaselineAnchor {
                node_name: "gone".into(),
                ..anchored("d3", None)
            },
            BaselineAnchor {
                node_name: "quiet".into(),
                ..anchored("d4", None)
            },
        ];
        let reports = BTreeMap::from([
            ("a".to_owned(), report(Some("d1"), None)),
            ("b".to_owned(), report(Some("evil"), None)),
        ]);
        let created = BTreeSet::from(["new".to_owned(), "a".to_owned()]);
        let gone = BTreeSet::from(["gone".to_owned()]);
        let out = judge_all(&previous, &reports, &created, &gone, &[], &BTreeSet::new());
        let nodes: Vec<&str> = out.entries.iter().map(|e| e.node_name.as_str()).collect();
        assert_eq!(nodes, ["a", "b", "new", "quiet"]);
        assert_eq!(
            out.entries[0].digest.as_deref(),
            Some("d1"),
            "not reset by a creation"
        );
        assert_eq!(out.entries[2], BaselineAnchor::awaiting("new"));
        assert_eq!(out.replaced(), BTreeSet::from(["b".to_owned()]));
        assert_eq!(out.newly_replaced, out.replaced());
        // Judged again: still replaced, no longer new.
        let again = judge_all(
            &out.entries,
            &reports,
            &BTreeSet::new(),
            &BTreeSet::new(),
            &[],
            &BTreeSet::new(),
        );
        assert_eq!(again.replaced(), out.replaced());
        assert!(again.newly_replaced.is_empty());
    }
}
