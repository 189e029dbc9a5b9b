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
/// Reason of the Warning about a `spec.priorityClassName` that does not exist.
pub const PRIORITY_CLASS_REASON: &str = "PriorityClassNotFound";

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
/// - `node X has changed! a:1,c:1,r:0 log:ns/name` (Warning),
/// - `node X has an error! message` (Warning).
pub fn node_event_message(node: &str, result: &ScanResult) -> EventMessage {
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

/// The Normal event announcing re-init request `id` (`by`: `demand`, `node`, `config`).
pub fn reinit_requested_message(
    id: u64,
    by: &[&str],
    nodes: &std::collections::BTreeSet<String>,
) -> EventMessage {
    let why = if by.contains(&"config") {
        "the rules changed"
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
        let e = node_event_message("ip-10-0-134-173.ec2.internal", &ok);
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
        let e = node_event_message("ip-10-0-152-92.ec2.internal", &failed);
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(
            e.message,
            "node ip-10-0-152-92.ec2.internal has changed! a:1,c:1,r:0 \
             log:openshift-file-integrity/aide-ds-example-fileintegrity-ip-10-0-152-92.ec2.internal-failed"
        );

        let no_log =
            result("condition: Failed\nlastProbeTime: '2020-06-18T01:28:57Z'\nfilesRemoved: 2\n");
        assert_eq!(
            node_event_message("n1", &no_log).message,
            "node n1 has changed! a:0,c:0,r:2"
        );

        let errored = result(
            "condition: Errored\nlastProbeTime: '2020-06-18T01:28:57Z'\nerrorMessage: baseline is corrupt\n",
        );
        let e = node_event_message("n1", &errored);
        assert_eq!(e.type_, EventType::Warning);
        assert_eq!(e.message, "node n1 has an error! baseline is corrupt");
    }

    #[test]
    fn long_error_messages_fit_the_events_api() {
        let mut r = result("condition: Errored\nlastProbeTime: '2020-06-18T01:28:57Z'\n");
        r.error_message = Some("é".repeat(2000));
        let e = node_event_message("n1", &r);
        assert!(e.message.len() <= MAX_NOTE_BYTES);
        assert!(e.message.starts_with("node n1 has an error! éé"));
        assert!(e.message.ends_with("..."));
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
