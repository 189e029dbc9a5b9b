//! Events on the FileIntegrity, worded exactly as the file-integrity-operator's, so
//! that existing `--field-selector reason=...` queries and habits keep working.

use kube::runtime::events::{Event, EventType};
use kube_fim_crds::{FileIntegrityPhase, ScanCondition, ScanResult};

/// Reason of phase transition events.
pub const PHASE_REASON: &str = "FileIntegrityStatus";
/// Reason of per-node result events.
pub const NODE_REASON: &str = "NodeIntegrityStatus";

/// Reason of the event announcing a new re-init request.
pub const REINIT_REASON: &str = "ReinitRequested";
/// Reason of the Warning naming re-init targets that are not selected nodes.
pub const REINIT_UNKNOWN_REASON: &str = "ReinitUnknownNodes";
/// Warning: a re-init re-baselines nodes whose latest result is Failed, accepting their
/// findings into the new baseline (issue 10, item 8: a rule change must not launder them).
pub const REINIT_ACCEPTS_FINDINGS_REASON: &str = "ReinitAcceptsFindings";
/// Reason of the Normal event saying `re-init-on-failed` found no Failed node to re-initialise.
pub const REINIT_NO_FAILED_REASON: &str = "ReinitOnFailedNoFailedNodes";
/// Warning: a node reports a baseline database the operator did not see it create (issue 10,
/// item 2); the node counts as Errored until a re-init.
pub const BASELINE_REPLACED_REASON: &str = "BaselineReplaced";
/// Reason of the Warning about a `spec.priorityClassName` that does not exist.
pub const PRIORITY_CLASS_REASON: &str = "PriorityClassNotFound";
/// A node's status or failure ConfigMap was found under its name saying another node, and
/// replaced.
pub const NODE_OBJECT_REPLACED_REASON: &str = "NodeObjectReplaced";

/// Node names listed in an event before `and N more`.
const MAX_LISTED_NODES: usize = 10;

/// Events API limit on the note (message), in bytes.
const MAX_NOTE_BYTES: usize = 1024;

/// One event to publish on the FileIntegrity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMessage {
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
}

impl EventMessage {
    /// The event for `kube::runtime::events::Recorder::publish`; the action is the reason,
    /// since each reason comes from exactly one operator action.
    pub fn into_event(self) -> Event {
        Event {
            type_: self.type_,
            reason: self.reason.to_owned(),
            note: Some(self.message),
            action: self.reason.to_owned(),
            secondary: None,
        }
    }
}

/// The `NodeIntegrityStatus` event for `node`'s current result:
/// - `no changes to node X` (Normal),
/// - `node X has changed! a:1,c:1,r:0 log:ns/name` (Warning), followed by the first paths of
///   `changed_paths` (see [`listed_paths`]),
/// - `node X has an error! message` (Warning).
pub fn node_event_message(
    node: &str,
    result: &ScanResult,
    changed_paths: &[String],
) -> EventMessage {
    let (type_, message) = match result.condition {
        ScanCondition::Succeeded => (EventType::Normal, format!("no changes to node {node}")),
        ScanCondition::Failed => {
            let mut message = format!(
                "node {node} has changed! a:{},c:{},r:{}",
                result.files_added, result.files_changed, result.files_removed
            );
            if let Some(name) = &result.result_config_map_name {
                match &result.result_config_map_namespace {
                    Some(ns) => message.push_str(&format!(" log:{ns}/{name}")),
                    None => message.push_str(&format!(" log:{name}")),
                }
            }
            let budget = MAX_NOTE_BYTES.saturating_sub(message.len());
            message.push_str(&listed_paths(result, changed_paths, budget));
            (EventType::Warning, message)
        }
        ScanCondition::Errored => {
            let error = result.error_message.as_deref().unwrap_or("unknown error");
            (
                EventType::Warning,
                format!("node {node} has an error! {error}"),
            )
        }
    };
    EventMessage {
        type_,
        reason: NODE_REASON,
        message: truncate(message, MAX_NOTE_BYTES),
    }
}

/// The `FileIntegrityStatus` event for a phase transition; `None` when the phase did not
/// change. The message is the new phase alone, as in file-integrity-operator (`Pending`,
/// `Initializing`, `Active`); `Error` is a Warning.
pub fn phase_event(
    old: Option<FileIntegrityPhase>,
    new: FileIntegrityPhase,
) -> Option<EventMessage> {
    if old == Some(new) {
        return None;
    }
    let type_ = match new {
        FileIntegrityPhase::Error => EventType::Warning,
        _ => EventType::Normal,
    };
    Some(EventMessage {
        type_,
        reason: PHASE_REASON,
        message: new.as_str().to_owned(),
    })
}

/// The Normal event announcing re-init request `id` (`by`: `demand`, `node`, `config`,
/// `failed`).
pub fn reinit_requested_message(
    id: u64,
    by: &[&str],
    nodes: &std::collections::BTreeSet<String>,
) -> EventMessage {
    let why = if by.contains(&"config") {
        "the rules changed"
    } else if by == ["failed"] {
        "re-init-on-failed: the Failed nodes"
    } else {
        "requested by annotation"
    };
    let message = if nodes.is_empty() {
        format!("re-init request {id} ({why}) targets no selected node")
    } else {
        format!(
            "re-init request {id} ({why}) for {}",
            list_nodes(nodes.iter().map(String::as_str))
        )
    };
    EventMessage {
        type_: EventType::Normal,
        reason: REINIT_REASON,
        message: truncate(message, MAX_NOTE_BYTES),
    }
}

/// The Normal event when `re-init-on-failed` finds no Failed node with an agent to re-initialise
/// (the annotation is removed all the same).
pub fn reinit_no_failed_nodes_message() -> EventMessage {
    EventMessage {
        type_: EventType::Normal,
        reason: REINIT_NO_FAILED_REASON,
        message: "re-init-on-failed: no selected node's latest result is Failed; nothing to \
                  re-initialise"
            .to_owned(),
    }
}

/// The Warning naming the Failed nodes whose findings re-init request `id` accepts into their
/// new baselines.
pub fn reinit_accepts_findings_message(
    id: u64,
    nodes: &std::collections::BTreeSet<String>,
) -> EventMessage {
    EventMessage {
        type_: EventType::Warning,
        reason: REINIT_ACCEPTS_FINDINGS_REASON,
        message: truncate(
            format!(
                "re-init request {id} re-baselines nodes with unresolved integrity failures, \
                 accepting their findings (their reports stay as a record): {}",
                list_nodes(nodes.iter().map(String::as_str))
            ),
            MAX_NOTE_BYTES,
        ),
    }
}

/// The Warning naming re-init targets that the FileIntegrity does not select (unknown or
/// unselected nodes); they are not re-initialised.
pub fn reinit_unknown_nodes_message(unknown: &std::collections::BTreeSet<String>) -> EventMessage {
    EventMessage {
        type_: EventType::Warning,
        reason: REINIT_UNKNOWN_REASON,
        message: truncate(
            format!(
                "re-init names nodes this FileIntegrity does not select, ignored: {}",
                list_nodes(unknown.iter().map(String::as_str))
            ),
            MAX_NOTE_BYTES,
        ),
    }
}

/// The `BaselineReplaced` Warning for `node`: it reports baseline `reported` where the
/// operator recorded `anchored` (`None`: no record at all).
pub fn baseline_replaced_message(
    node: &str,
    anchored: Option<&str>,
    reported: &str,
) -> EventMessage {
    let recorded = match anchored {
        Some(a) => format!("the operator recorded {a} when the node created its baseline"),
        None => "the operator holds no record of this node's baseline".to_owned(),
    };
    EventMessage {
        type_: EventType::Warning,
        reason: BASELINE_REPLACED_REASON,
        message: truncate(
            format!(
                "baseline replaced: node {node} reports baseline database {reported} without a                  matching re-init request, but {recorded}. The node counts as Errored until                  fim.kubefim.io/re-init re-baselines it"
            ),
            MAX_NOTE_BYTES,
        ),
    }
}

/// The Warning about a PriorityClass that does not exist.
pub fn priority_class_missing_message(class: &str) -> EventMessage {
    EventMessage {
        type_: EventType::Warning,
        reason: PRIORITY_CLASS_REASON,
        message: truncate(
            format!(
                "PriorityClass {class} not found: the agent DaemonSet is created without a \
                 priority class until it exists"
            ),
            MAX_NOTE_BYTES,
        ),
    }
}

/// `kind` `name`, which the operator creates for `node`, said node `said`: it was replaced.
pub fn node_object_replaced_message(
    kind: &str,
    name: &str,
    node: &str,
    said: &str,
) -> EventMessage {
    EventMessage {
        type_: EventType::Warning,
        reason: NODE_OBJECT_REPLACED_REASON,
        message: truncate(
            format!(
                "{kind} {name} is node {node}'s but said node {said:?} (written by someone other \
                 than the operator): replaced with an empty one for node {node}"
            ),
            MAX_NOTE_BYTES,
        ),
    }
}

/// `a, b and 3 more`, bounded.
fn list_nodes<'a>(nodes: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = nodes.len();
    let shown: Vec<&str> = nodes.take(MAX_LISTED_NODES).collect();
    let shown = shown.join(", ");
    match total.saturating_sub(MAX_LISTED_NODES) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// What a node event says: a new event is due when any of it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeEventKey {
    pub condition: ScanCondition,
    pub added: i64,
    pub changed: i64,
    pub removed: i64,
}

impl From<&ScanResult> for NodeEventKey {
    fn from(result: &ScanResult) -> Self {
        Self {
            condition: result.condition,
            added: result.files_added,
            changed: result.files_changed,
            removed: result.files_removed,
        }
    }
}

/// Whether to emit a node event: on the first result seen, on a condition transition, and —
/// as in file-integrity-operator — when the added/changed/removed counts change without a
/// transition.
/// Repeated identical results (every `gracePeriod`) stay silent.
pub fn should_reemit(previous: Option<&NodeEventKey>, new: &NodeEventKey) -> bool {
    previous != Some(new)
}

/// Longest path quoted in an event, in bytes.
const MAX_EVENT_PATH_BYTES: usize = 256;

/// The paths part of a Failed node event (issue 10, item 7: evidence cannot be flooded away):
/// `; changed: /etc/passwd; removed: /x; added: /a, /b; 99998 more in the log`, at most `budget`
/// bytes. `changed_paths` is the node status's list, which the agent orders changed, removed,
/// then added; the counts of `result` say where each kind ends, so a changed or removed file is
/// named before any added one, whatever the number of added files. Control characters are
/// escaped (a file name cannot add lines to the event).
pub fn listed_paths(result: &ScanResult, changed_paths: &[String], budget: usize) -> String {
    const TAIL_RESERVE: usize = 40;
    if changed_paths.is_empty() || budget <= TAIL_RESERVE {
        return String::new();
    }
    let count = |n: i64| usize::try_from(n).unwrap_or(0);
    let changed = count(result.files_changed);
    let removed = count(result.files_removed);
    let total = changed + removed + count(result.files_added);
    let kind_of = |i: usize| {
        if i < changed {
            "changed"
        } else if i < changed + removed {
            "removed"
        } else {
            "added"
        }
    };
    let mut out = String::new();
    let mut listed = 0;
    let mut kind = "";
    for (i, path) in changed_paths.iter().enumerate() {
        let path = truncate(escape_controls(path), MAX_EVENT_PATH_BYTES);
        let piece = if kind_of(i) == kind {
            format!(", {path}")
        } else {
            format!("; {}: {path}", kind_of(i))
        };
        if out.len() + piece.len() > budget - TAIL_RESERVE {
            break;
        }
        kind = kind_of(i);
        out.push_str(&piece);
        listed += 1;
    }
    let more = total.max(changed_paths.len()) - listed;
    if more > 0 {
        out.push_str(&format!("; {more} more in the log"));
    }
    out
}

fn escape_controls(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(mut s: String, max: usize) -> String {
    const MARK: &str = "...";
    if s.len() <= max {
        return s;
    }
    let mut end = max - MARK.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(MARK);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(yaml: &str) -> ScanResult {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn node_messages_match_seed_001() {
        let ok = result("condition: Succeeded\nlastProbeTime: '2020-06-18T01:17:14Z'\n");
        let e = node_event_message("ip-10-0-134-173.ec2.internal", &ok, &[]);
        assert_eq!(e.type_, EventType::Normal);
        assert_eq!(e.reason, "NodeIntegrityStatus");
        assert_eq!(e.message, "no changes to node ip-10-0-134-173.ec2.internal");

        let failed = result(
            "condition: Failed
lastProbeTime: '2020-06-18T01:28:57Z'
filesAdded: 1
filesChanged: 1
resultConfigMapName: aide-ds-example-fileintegrity-ip-10-0-152-92.ec2.internal-failed
resultConfigMapNamespace: openshift-file-integrity
",
        );
        let e = node_event_message("ip-10-0-152-92.ec2.internal", &failed, &[]);
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(
            e.message,
            "node ip-10-0-152-92.ec2.internal has changed! a:1,c:1,r:0 \
             log:openshift-file-integrity/aide-ds-example-fileintegrity-ip-10-0-152-92.ec2.internal-failed"
        );

        let no_log =
            result("condition: Failed\nlastProbeTime: '2020-06-18T01:28:57Z'\nfilesRemoved: 2\n");
        assert_eq!(
            node_event_message("n1", &no_log, &[]).message,
            "node n1 has changed! a:0,c:0,r:2"
        );

        let errored = result(
            "condition: Errored\nlastProbeTime: '2020-06-18T01:28:57Z'\nerrorMessage: baseline is corrupt\n",
        );
        let e = node_event_message("n1", &errored, &[]);
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.message, "node n1 has an error! baseline is corrupt");
    }

    #[test]
    fn long_error_messages_fit_the_events_api() {
        let mut r = result("condition: Errored\nlastProbeTime: '2020-06-18T01:28:57Z'\n");
        r.error_message = Some("é".repeat(2000));
        let e = node_event_message("n1", &r, &[]);
        assert!(e.message.len() <= MAX_NOTE_BYTES);
        assert!(e.message.starts_with("node n1 has an error! éé"));
        assert!(e.message.ends_with("..."));
    }

    #[test]
    fn a_flood_of_added_files_does_not_hide_a_changed_one_in_the_event() {
        // Issue 10, item 7: 100,000 added files and one changed /etc/passwd. The agent's
        // changedPaths (at most 100) leads with the changed file; the event names it, then as
        // many added files as fit, then how many more there are. Before, the event carried the
        // counts only.
        let mut flood = result(
            "condition: Failed
lastProbeTime: '2026-01-01T00:00:00Z'
filesAdded: 100000
filesChanged: 1
resultConfigMapName: nodes-worker-1-failed
resultConfigMapNamespace: kube-fim
",
        );
        let mut paths = vec!["/etc/passwd".to_owned()];
        paths.extend((0..99).map(|i| format!("/var/tmp/flood/{i:06}")));
        let e = node_event_message("worker-1", &flood, &paths);
        assert!(e.message.len() <= MAX_NOTE_BYTES, "{}", e.message.len());
        assert!(
            e.message.starts_with(
                "node worker-1 has changed! a:100000,c:1,r:0 log:kube-fim/nodes-worker-1-failed; \
                 changed: /etc/passwd; added: /var/tmp/flood/000000, /var/tmp/flood/000001"
            ),
            "{}",
            e.message
        );
        let listed = e.message.matches("/var/tmp/flood/").count();
        assert!(listed > 10, "{}", e.message);
        assert!(
            e.message
                .ends_with(&format!("; {} more in the log", 100_001 - 1 - listed)),
            "{}",
            e.message
        );

        // Removed files come between, labelled; long and hostile names stay bounded and on
        // one line.
        flood.files_removed = 1;
        let evil = format!("/etc/x\nnode worker-2 has changed!{}", "y".repeat(5000));
        let paths = vec![
            "/etc/passwd".to_owned(),
            evil,
            "/var/tmp/flood/000000".to_owned(),
        ];
        let e = node_event_message("worker-1", &flood, &paths);
        assert!(e.message.len() <= MAX_NOTE_BYTES);
        assert!(!e.message.contains('\n'), "{}", e.message);
        assert!(
            e.message
                .contains("; changed: /etc/passwd; removed: /etc/x\\nnode worker-2"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("; added: /var/tmp/flood/000000"),
            "{}",
            e.message
        );
        assert!(
            e.message.ends_with("; 99999 more in the log"),
            "{}",
            e.message
        );
    }

    #[test]
    fn phase_events_only_on_change() {
        use FileIntegrityPhase::*;
        let e = phase_event(None, Pending).unwrap();
        assert_eq!(
            (e.type_, e.reason, e.message.as_str()),
            (EventType::Normal, "FileIntegrityStatus", "Pending")
        );
        assert_eq!(
            phase_event(Some(Pending), Initializing).unwrap().message,
            "Initializing"
        );
        assert_eq!(
            phase_event(Some(Initializing), Active).unwrap().message,
            "Active"
        );
        assert_eq!(phase_event(Some(Active), Active), None);
        assert_eq!(
            phase_event(Some(Active), Error).unwrap().type_,
            EventType::Warning
        );

        let event = phase_event(Some(Pending), Active).unwrap().into_event();
        assert_eq!(event.reason, "FileIntegrityStatus");
        assert_eq!(event.note.as_deref(), Some("Active"));
    }

    #[test]
    fn reemit_on_transition_or_new_counts() {
        let key = |yaml: &str| NodeEventKey::from(&result(yaml));
        let ok = key("condition: Succeeded\nlastProbeTime: '2020-06-18T01:17:14Z'\n");
        let ok_later = key("condition: Succeeded\nlastProbeTime: '2020-06-18T02:17:14Z'\n");
        let changed = key(
            "condition: Failed\nlastProbeTime: '2020-06-18T01:28:57Z'\nfilesAdded: 1\nfilesChanged: 1\n",
        );
        let more = key(
            "condition: Failed\nlastProbeTime: '2020-06-18T02:28:57Z'\nfilesAdded: 3\nfilesChanged: 1\n",
        );

        assert!(should_reemit(None, &ok));
        assert!(
            !should_reemit(Some(&ok), &ok_later),
            "same result, new probe time"
        );
        assert!(should_reemit(Some(&ok), &changed));
        assert!(
            should_reemit(Some(&changed), &more),
            "a:1 -> a:3 without a transition"
        );
        assert!(!should_reemit(Some(&more), &more));
        assert!(should_reemit(Some(&more), &ok));
    }

    #[test]
    fn reinit_and_priority_class_messages() {
        let nodes: std::collections::BTreeSet<String> = ["b".to_owned(), "a".to_owned()].into();
        let m = reinit_requested_message(3, &["demand"], &nodes);
        assert_eq!(m.type_, EventType::Normal);
        assert_eq!(m.reason, REINIT_REASON);
        assert_eq!(
            m.message,
            "re-init request 3 (requested by annotation) for a, b"
        );
        let m = reinit_requested_message(4, &["config"], &Default::default());
        assert_eq!(
            m.message,
            "re-init request 4 (the rules changed) targets no selected node"
        );

        let unknown: std::collections::BTreeSet<String> =
            (0..12).map(|i| format!("ghost-{i:02}")).collect();
        let m = reinit_unknown_nodes_message(&unknown);
        assert_eq!(m.type_, EventType::Warning);
        assert_eq!(m.reason, REINIT_UNKNOWN_REASON);
        assert!(m.message.contains("ghost-00, ghost-01"), "{}", m.message);
        assert!(m.message.ends_with("ghost-09 and 2 more"), "{}", m.message);

        let m = priority_class_missing_message("agents");
        assert_eq!(m.type_, EventType::Warning);
        assert_eq!(m.reason, PRIORITY_CLASS_REASON);
        assert!(
            m.message.starts_with("PriorityClass agents not found"),
            "{}",
            m.message
        );
    }
}
