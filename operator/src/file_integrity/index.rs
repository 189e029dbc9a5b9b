//! Which node statuses belong to which FileIntegrity: by the [`labels::OWNER`] label or a
//! FileIntegrity owner reference. [`StatusIndex`] keeps that mapping from the node status watch
//! so a reconcile finds one FileIntegrity's statuses without scanning all of them.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use kube::{
    ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};
use kube_fim_crds::{FileIntegrity, FileIntegrityNodeStatus, labels};

/// Whether node status `s` is one of FileIntegrity `fi_name`'s.
pub fn belongs_to(s: &FileIntegrityNodeStatus, fi_name: &str, fi_uid: Option<&str>) -> bool {
    s.labels().get(labels::OWNER).map(String::as_str) == Some(fi_name)
        || s.owner_references()
            .iter()
            .any(|o| o.kind == "FileIntegrity" && Some(o.uid.as_str()) == fi_uid)
}

/// The FileIntegrity a node status belongs to (label first, then owner reference).
pub fn owner_of_node_status(s: &FileIntegrityNodeStatus) -> Option<ObjectRef<FileIntegrity>> {
    let ns = s.namespace()?;
    let name = s.labels().get(labels::OWNER).cloned().or_else(|| {
        s.owner_references()
            .iter()
            .find(|o| o.kind == "FileIntegrity")
            .map(|o| o.name.clone())
    })?;
    Some(ObjectRef::new(&name).within(&ns))
}

/// Names of the node statuses of each FileIntegrity, kept from the node status watch so a
/// reconcile finds one FileIntegrity's statuses without scanning all of them. A status is
/// indexed under its [`labels::OWNER`] label and the names of its FileIntegrity owner
/// references (readers still check [`belongs_to`]).
#[derive(Default)]
pub struct StatusIndex {
    state: Mutex<IndexState>,
}

#[derive(Default)]
struct IndexState {
    live: IndexMaps,
    /// The index being rebuilt during a re-list, swapped in when it is complete (as the
    /// reflector store does).
    relist: Option<IndexMaps>,
}

#[derive(Default)]
struct IndexMaps {
    /// FileIntegrity name → node status names.
    by_owner: HashMap<String, BTreeSet<String>>,
    /// Node status name → the FileIntegrity names it is indexed under.
    owners: HashMap<String, Vec<String>>,
}

impl IndexMaps {
    fn insert(&mut self, s: &FileIntegrityNodeStatus) {
        let name = s.name_any();
        self.remove(&name);
        let mut owners: Vec<String> = s
            .labels()
            .get(labels::OWNER)
            .cloned()
            .into_iter()
            .chain(
                s.owner_references()
                    .iter()
                    .filter(|o| o.kind == "FileIntegrity")
                    .map(|o| o.name.clone()),
            )
            .collect();
        owners.sort();
        owners.dedup();
        for owner in &owners {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert(name.clone());
        }
        self.owners.insert(name, owners);
    }

    fn remove(&mut self, name: &str) {
        for owner in self.owners.remove(name).unwrap_or_default() {
            if let Some(names) = self.by_owner.get_mut(&owner) {
                names.remove(name);
                if names.is_empty() {
                    self.by_owner.remove(&owner);
                }
            }
        }
    }
}

impl StatusIndex {
    /// Applies one watch event (before the reflector store does, so a status the store has is
    /// always indexed).
    pub fn apply(&self, event: &watcher::Event<FileIntegrityNodeStatus>) {
        let mut state = self.state.lock().expect("status index poisoned");
        match event {
            watcher::Event::Init => state.relist = Some(IndexMaps::default()),
            watcher::Event::InitApply(s) => {
                if let Some(relist) = state.relist.as_mut() {
                    relist.insert(s);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = state.relist.take() {
                    state.live = relist;
                }
            }
            watcher::Event::Apply(s) => state.live.insert(s),
            watcher::Event::Delete(s) => state.live.remove(&s.name_any()),
        }
    }

    /// Names of the node statuses indexed under FileIntegrity `fi_name`, sorted.
    pub fn names_of(&self, fi_name: &str) -> Vec<String> {
        let state = self.state.lock().expect("status index poisoned");
        state
            .live
            .by_owner
            .get(fi_name)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube_fim_crds::FileIntegrityNodeStatusFields;

    fn status(labels: &[(&str, &str)], owner_uid: Option<&str>) -> FileIntegrityNodeStatus {
        let mut s = FileIntegrityNodeStatus::new(
            "example-node-a",
            FileIntegrityNodeStatusFields::new("node-a"),
        );
        s.metadata.namespace = Some("kube-fim".into());
        s.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        if let Some(uid) = owner_uid {
            s.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "fim.kubefim.io/v1alpha1".into(),
                kind: "FileIntegrity".into(),
                name: "example".into(),
                uid: uid.into(),
                ..OwnerReference::default()
            }]);
        }
        s
    }

    #[test]
    fn node_status_maps_to_its_file_integrity() {
        let by_label = status(&[(labels::OWNER, "example")], None);
        assert!(belongs_to(&by_label, "example", Some("u")));
        assert!(!belongs_to(&by_label, "other", Some("u")));
        assert_eq!(
            owner_of_node_status(&by_label),
            Some(ObjectRef::new("example").within("kube-fim"))
        );
        let by_owner = status(&[], Some("u"));
        assert!(belongs_to(&by_owner, "example", Some("u")));
        assert!(!belongs_to(&by_owner, "example", Some("v")));
        assert_eq!(
            owner_of_node_status(&by_owner),
            Some(ObjectRef::new("example").within("kube-fim"))
        );
        assert_eq!(owner_of_node_status(&status(&[], None)), None);
    }

    #[test]
    fn status_index_finds_a_file_integritys_statuses() {
        let named = |name: &str, mut s: FileIntegrityNodeStatus| {
            s.metadata.name = Some(name.to_owned());
            s
        };
        let index = StatusIndex::default();
        let a = named("a", status(&[(labels::OWNER, "example")], None));
        let b = named("b", status(&[], Some("u")));
        let c = named("c", status(&[(labels::OWNER, "other")], None));
        index.apply(&watcher::Event::Init);
        for s in [&c, &b, &a] {
            index.apply(&watcher::Event::InitApply(s.clone()));
        }
        assert!(index.names_of("example").is_empty(), "not before InitDone");
        index.apply(&watcher::Event::InitDone);
        assert_eq!(index.names_of("example"), ["a", "b"]);
        assert_eq!(index.names_of("other"), ["c"]);
        // Relabelled to another FileIntegrity, then deleted.
        let moved = named("a", status(&[(labels::OWNER, "other")], None));
        index.apply(&watcher::Event::Apply(moved.clone()));
        assert_eq!(index.names_of("example"), ["b"]);
        assert_eq!(index.names_of("other"), ["a", "c"]);
        index.apply(&watcher::Event::Delete(moved));
        assert_eq!(index.names_of("other"), ["c"]);
        // A re-list replaces everything.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(c.clone()));
        assert_eq!(index.names_of("example"), ["b"], "old index until InitDone");
        index.apply(&watcher::Event::InitDone);
        assert!(index.names_of("example").is_empty());
        assert_eq!(index.names_of("other"), ["c"]);
    }
}
