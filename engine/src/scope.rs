//! The part of the tree a realtime rescan looks at.
//!
//! A change event names paths; rescanning just those must give the same answer a full scan would
//! for them. So a scope holds whole *trees* (the changed entry and, when it is a directory that was
//! created or moved in, everything under it) and single *entries* (the parent directory of a
//! changed entry, whose mtime and link count change with it).

use std::collections::BTreeSet;

/// Node paths to rescan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    trees: BTreeSet<Box<[u8]>>,
    entries: BTreeSet<Box<[u8]>>,
}

/// Where a path stands relative to a scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// In the scope: collect and compare it; descend if it is in a scoped tree.
    Inside { descend: bool },
    /// Not in the scope, but something under it is: descend without collecting it.
    Ancestor,
    /// Neither: skip it and everything under it.
    Outside,
}

impl Scope {
    /// A scope of the changed node paths: each one as a tree, and its parent as a single entry.
    pub fn of_changes<'a>(paths: impl IntoIterator<Item = &'a [u8]>) -> Scope {
        let mut scope = Scope::default();
        for path in paths {
            let path = normalize(path);
            if let Some(parent) = parent(&path) {
                scope.entries.insert(parent.into());
            }
            scope.trees.insert(path.into());
        }
        scope
    }

    pub fn is_empty(&self) -> bool {
        self.trees.is_empty() && self.entries.is_empty()
    }

    /// Number of paths in the scope.
    pub fn len(&self) -> usize {
        self.trees.len() + self.entries.len()
    }

    /// The scoped trees.
    pub fn trees(&self) -> impl Iterator<Item = &[u8]> {
        self.trees.iter().map(|p| &p[..])
    }

    pub fn relation(&self, path: &[u8]) -> Relation {
        if self.in_tree(path) {
            return Relation::Inside { descend: true };
        }
        let has_below = self.has_below(&self.trees, path) || self.has_below(&self.entries, path);
        if self.entries.contains(path) {
            return Relation::Inside { descend: has_below };
        }
        if has_below {
            Relation::Ancestor
        } else {
            Relation::Outside
        }
    }

    /// Whether `path` is to be collected and compared.
    pub fn contains(&self, path: &[u8]) -> bool {
        matches!(self.relation(path), Relation::Inside { .. })
    }

    /// Whether `path` or one of its ancestors is a scoped tree.
    fn in_tree(&self, path: &[u8]) -> bool {
        if self.trees.contains(path) || self.trees.contains(b"/".as_slice()) {
            return true;
        }
        path.iter()
            .enumerate()
            .filter(|&(i, &b)| b == b'/' && i > 0)
            .any(|(i, _)| self.trees.contains(&path[..i]))
    }

    /// Whether `set` holds a path strictly below `path`.
    fn has_below(&self, set: &BTreeSet<Box<[u8]>>, path: &[u8]) -> bool {
        let mut prefix = path.to_vec();
        if prefix != b"/" {
            prefix.push(b'/');
        }
        set.range::<[u8], _>((
            std::ops::Bound::Included(&prefix[..]),
            std::ops::Bound::Unbounded,
        ))
        .next()
        .is_some_and(|p| p.starts_with(&prefix) && p.len() > prefix.len())
    }
}

/// `path` without trailing slashes (`/` stays `/`).
fn normalize(path: &[u8]) -> Vec<u8> {
    let mut p = path.to_vec();
    while p.len() > 1 && p.ends_with(b"/") {
        p.pop();
    }
    p
}

/// The parent of a normalized node path; `None` for `/`.
fn parent(path: &[u8]) -> Option<&[u8]> {
    if path == b"/" {
        return None;
    }
    let cut = path.iter().rposition(|&b| b == b'/')?;
    Some(if cut == 0 { b"/" } else { &path[..cut] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(paths: &[&str]) -> Scope {
        Scope::of_changes(paths.iter().map(|p| p.as_bytes()))
    }

    #[test]
    fn a_changed_file_scopes_itself_and_its_parent_entry() {
        let s = scope(&["/etc/app/conf"]);
        assert_eq!(
            s.relation(b"/etc/app/conf"),
            Relation::Inside { descend: true }
        );
        assert_eq!(
            s.relation(b"/etc/app"),
            Relation::Inside { descend: true },
            "parent entry, with the changed path below it"
        );
        assert_eq!(s.relation(b"/etc"), Relation::Ancestor);
        assert_eq!(s.relation(b"/"), Relation::Ancestor);
        assert_eq!(s.relation(b"/etc/app/other"), Relation::Outside);
        assert_eq!(s.relation(b"/etc/application"), Relation::Outside);
        assert_eq!(s.relation(b"/usr"), Relation::Outside);
    }

    #[test]
    fn a_new_directory_scopes_its_whole_tree() {
        let s = scope(&["/opt/new/"]);
        assert!(s.contains(b"/opt/new"));
        assert!(s.contains(b"/opt/new/a/b/c"));
        assert!(s.contains(b"/opt"), "parent entry");
        assert!(!s.contains(b"/opt/newer"));
        assert!(!s.contains(b"/"));
    }

    #[test]
    fn a_parent_entry_alone_is_not_descended() {
        let s = scope(&["/a/b"]);
        assert_eq!(s.relation(b"/a"), Relation::Inside { descend: true });
        let only_parent = Scope {
            trees: BTreeSet::new(),
            entries: [b"/a".to_vec().into_boxed_slice()].into(),
        };
        assert_eq!(
            only_parent.relation(b"/a"),
            Relation::Inside { descend: false }
        );
        assert_eq!(only_parent.relation(b"/a/x"), Relation::Outside);
    }

    #[test]
    fn the_root_tree_covers_everything() {
        let s = scope(&["/"]);
        assert!(s.contains(b"/"));
        assert!(s.contains(b"/any/thing"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn byte_paths_are_compared_as_bytes() {
        let s = scope(&["/d/x\nnewline"]);
        assert!(s.contains(b"/d/x\nnewline"));
        assert!(!s.contains(b"/d/x"));
        let s = Scope::of_changes([b"/d/\xff\xfe".as_slice()]);
        assert!(s.contains(b"/d/\xff\xfe/inner"));
        assert!(s.contains(b"/d"));
    }
}
