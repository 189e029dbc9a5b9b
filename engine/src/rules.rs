//! Selection rules and AIDE's matching algorithm: deepest tree node first, first match inside a
//! node, negative rules win, children of excluded directories are never visited.

use regex::bytes::Regex;
use rustc_hash::FxHashMap as HashMap;

use crate::attrs::AttrSet;
use crate::entry::FileType;

/// Compiled size of one rule's regex (`regex::RegexBuilder::size_limit`): a hostile rule cannot
/// make the operator or an agent compile a huge automaton.
pub const MAX_REGEX_BYTES: usize = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// `/regex attrs`: the path and everything below it that the regex matches.
    Regular,
    /// `=/regex attrs`: matches, but not children of sub-directories.
    Equals,
    /// `!/regex`: never recorded, and matching directories are not descended.
    Negative,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub kind: RuleKind,
    /// The regex as written (after macro expansion), for messages.
    pub source: String,
    /// Where it was written: `file:line`.
    pub origin: String,
    pub attrs: AttrSet,
    /// Restriction to file types (`f`, `d,l`, ...); `None` matches every type.
    pub types: Option<Vec<FileType>>,
    matcher: Regex,
    /// Literal start of the regex: directories off this prefix cannot hold a match.
    literal: Vec<u8>,
    /// The tree node the rule lives in: its literal prefix up to the last `/`.
    node: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid regular expression '{regex}': {reason}")]
pub struct RuleError {
    pub regex: String,
    pub reason: String,
}

impl Rule {
    /// `pattern` is the regex with AIDE's `%XX` escapes already turned into regex syntax.
    pub fn new(
        kind: RuleKind,
        pattern: &str,
        attrs: AttrSet,
        types: Option<Vec<FileType>>,
        origin: String,
    ) -> Result<Rule, RuleError> {
        // Rules match from the first byte (an implicit ^); an equals rule additionally may not
        // reach into a sub-directory: the rest of the path after its match holds no '/'.
        let anchored = match kind {
            RuleKind::Equals => format!("^(?:{pattern})[^/]*$"),
            _ => format!("^(?:{pattern})"),
        };
        let matcher = regex::bytes::RegexBuilder::new(&anchored)
            .unicode(false)
            .size_limit(MAX_REGEX_BYTES)
            .build()
            .map_err(|e| RuleError {
                regex: pattern.to_string(),
                reason: e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            })?;
        let literal = literal_prefix(pattern);
        let node = match literal.iter().rposition(|b| *b == b'/') {
            Some(i) => literal[..i].to_vec(),
            None => Vec::new(),
        };
        Ok(Rule {
            kind,
            source: pattern.to_string(),
            origin,
            attrs,
            types,
            matcher,
            literal,
            node,
        })
    }

    pub fn matches(&self, path: &[u8], ftype: FileType) -> bool {
        if self
            .types
            .as_ref()
            .is_some_and(|types| !types.contains(&ftype))
        {
            return false;
        }
        if self.matcher.is_match(path) {
            return true;
        }
        // `=/foo/ R` also selects /foo itself (aide.conf(5), EXAMPLES).
        self.kind == RuleKind::Equals && ftype == FileType::Directory && {
            let mut with_slash = path.to_vec();
            with_slash.push(b'/');
            self.matcher.is_match(&with_slash)
        }
    }
}

/// The bytes of a regex up to its first metacharacter.
fn literal_prefix(pattern: &str) -> Vec<u8> {
    pattern
        .bytes()
        .take_while(|b| !b"\\.^$*+?()[]{}|".contains(b))
        .collect()
}

/// All rules of a config, indexed by tree node.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    selecting: HashMap<Vec<u8>, Vec<usize>>,
    negative: HashMap<Vec<u8>, Vec<usize>>,
}

impl Rules {
    pub fn new(rules: Vec<Rule>) -> Rules {
        let mut selecting: HashMap<Vec<u8>, Vec<usize>> = HashMap::default();
        let mut negative: HashMap<Vec<u8>, Vec<usize>> = HashMap::default();
        for (i, r) in rules.iter().enumerate() {
            let index = if r.kind == RuleKind::Negative {
                &mut negative
            } else {
                &mut selecting
            };
            index.entry(r.node.clone()).or_default().push(i);
        }
        Rules {
            rules,
            selecting,
            negative,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn get(&self, index: usize) -> &Rule {
        &self.rules[index]
    }

    /// The tree nodes that can hold a rule matching `path`, deepest first. The path itself is a
    /// candidate because `=/foo/` (node `/foo`) also selects the directory `/foo`.
    fn nodes_of(path: &[u8]) -> impl Iterator<Item = &[u8]> {
        let parents = path
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, b)| **b == b'/')
            .map(move |(i, _)| &path[..i]);
        std::iter::once(path).chain(parents)
    }

    /// The rule whose attributes apply to `path`, ignoring negative rules.
    pub fn selecting_rule(&self, path: &[u8], ftype: FileType) -> Option<usize> {
        Self::nodes_of(path).find_map(|node| {
            self.selecting
                .get(node)?
                .iter()
                .copied()
                .find(|i| self.rules[*i].matches(path, ftype))
        })
    }

    pub fn is_excluded(&self, path: &[u8], ftype: FileType) -> bool {
        Self::nodes_of(path).any(|node| {
            self.negative
                .get(node)
                .is_some_and(|ids| ids.iter().any(|i| self.rules[*i].matches(path, ftype)))
        })
    }

    /// What the walker asks for each entry it sees (its parents were already checked).
    pub fn select(&self, path: &[u8], ftype: FileType) -> Option<usize> {
        if self.is_excluded(path, ftype) {
            return None;
        }
        self.selecting_rule(path, ftype)
    }

    /// Whether a path read back from a database is still in scope: it and no parent directory
    /// is excluded (a negative rule on a directory hides its whole subtree).
    pub fn select_with_parents(&self, path: &[u8], ftype: FileType) -> Option<usize> {
        let mut parent = path;
        while let Some(i) = parent.iter().rposition(|b| *b == b'/') {
            parent = &path[..i];
            if !parent.is_empty() && self.is_excluded(parent, FileType::Directory) {
                return None;
            }
        }
        self.select(path, ftype)
    }

    /// The directories a change watcher must cover: the tree node of every selecting rule (its
    /// literal prefix up to the last `/`), without those inside another. Node paths.
    pub fn watch_roots(&self) -> Vec<Vec<u8>> {
        let mut nodes: Vec<Vec<u8>> = self
            .rules
            .iter()
            .filter(|r| r.kind != RuleKind::Negative)
            .map(|r| {
                if r.node.is_empty() {
                    b"/".to_vec()
                } else {
                    r.node.clone()
                }
            })
            .collect();
        nodes.sort();
        nodes.dedup();
        let mut roots: Vec<Vec<u8>> = Vec::new();
        for node in nodes {
            let inside = roots.iter().any(|r| {
                r == b"/"
                    || node
                        .strip_prefix(r.as_slice())
                        .is_some_and(|rest| rest.starts_with(b"/"))
            });
            if !inside {
                roots.push(node);
            }
        }
        roots
    }

    /// Whether a directory may contain selected entries: some selecting rule's literal prefix lies
    /// on the same branch of the tree as the directory.
    pub fn may_descend(&self, dir: &[u8]) -> bool {
        let mut with_slash = dir.to_vec();
        if with_slash.last() != Some(&b'/') {
            with_slash.push(b'/');
        }
        self.rules
            .iter()
            .filter(|r| r.kind != RuleKind::Negative)
            .any(|r| with_slash.starts_with(&r.literal) || r.literal.starts_with(&with_slash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleKind, re: &str, attrs: AttrSet) -> Rule {
        Rule::new(kind, re, attrs, None, "test".into()).unwrap()
    }

    fn rules(list: Vec<Rule>) -> Rules {
        Rules::new(list)
    }

    const F: FileType = FileType::Regular;
    const D: FileType = FileType::Directory;

    #[test]
    fn watch_roots_are_the_outermost_rule_directories() {
        let a = AttrSet::default();
        let r = rules(vec![
            rule(RuleKind::Regular, "/etc/", a),
            rule(RuleKind::Regular, "/etc/ssh/sshd_config$", a),
            rule(RuleKind::Equals, "/usr/bin/.*", a),
            rule(RuleKind::Negative, "/var/log", a),
            rule(RuleKind::Regular, "/etcetera/x", a),
        ]);
        assert_eq!(
            r.watch_roots(),
            [
                b"/etc".to_vec(),
                b"/etcetera".to_vec(),
                b"/usr/bin".to_vec()
            ]
        );
        let all = rules(vec![
            rule(RuleKind::Regular, "/", a),
            rule(RuleKind::Regular, "/boot/", a),
        ]);
        assert_eq!(all.watch_roots(), [b"/".to_vec()]);
    }

    #[test]
    fn regular_rule_matches_prefix_and_children() {
        let r = rules(vec![rule(RuleKind::Regular, "/etc", AttrSet::PERM)]);
        assert!(r.select(b"/etc", D).is_some());
        assert!(r.select(b"/etc/passwd", F).is_some());
        assert!(r.select(b"/usr/bin/ls", F).is_none());
        assert!(r.may_descend(b"/"));
        assert!(r.may_descend(b"/etc"));
        assert!(!r.may_descend(b"/usr"));
    }

    #[test]
    fn negative_rule_wins_and_is_checked_on_parents() {
        let r = rules(vec![
            rule(RuleKind::Regular, "/", AttrSet::PERM),
            rule(RuleKind::Negative, "/proc$", AttrSet::EMPTY),
            rule(RuleKind::Negative, "/var/log/.*\\.log$", AttrSet::EMPTY),
        ]);
        assert!(r.select(b"/proc", D).is_none());
        assert!(
            r.select(b"/proc/1/status", F).is_some(),
            "walker never gets here"
        );
        assert!(r.select_with_parents(b"/proc/1/status", F).is_none());
        assert!(r.select(b"/var/log/syslog", F).is_some());
        assert!(r.select(b"/var/log/kern.log", F).is_none());
    }

    #[test]
    fn deepest_node_wins_then_first_match_in_node() {
        let r = rules(vec![
            rule(RuleKind::Regular, "/", AttrSet::PERM),
            rule(RuleKind::Regular, "/etc/", AttrSet::SIZE),
            rule(RuleKind::Regular, "/etc/ssh/", AttrSet::UID),
            rule(RuleKind::Regular, "/etc/", AttrSet::GID),
        ]);
        let attrs_of = |p: &[u8]| r.get(r.select(p, F).unwrap()).attrs;
        assert_eq!(attrs_of(b"/etc/ssh/sshd_config"), AttrSet::UID);
        assert_eq!(attrs_of(b"/etc/passwd"), AttrSet::SIZE);
        assert_eq!(attrs_of(b"/usr/bin/ls"), AttrSet::PERM);
    }

    #[test]
    fn equals_rule_does_not_reach_into_subdirectories() {
        let r = rules(vec![rule(RuleKind::Equals, "/foo/", AttrSet::PERM)]);
        assert!(r.select(b"/foo", D).is_some());
        assert!(r.select(b"/foo/file", F).is_some());
        assert!(r.select(b"/foo/dir/bar", F).is_none());
        let r = rules(vec![rule(RuleKind::Equals, "/foo", AttrSet::PERM)]);
        assert!(r.select(b"/foo", D).is_some());
        assert!(r.select(b"/foobar", F).is_some());
        assert!(r.select(b"/foo/x", F).is_none());
    }

    #[test]
    fn restricted_rules_only_match_their_types() {
        let r = rules(vec![
            Rule::new(
                RuleKind::Negative,
                "/run",
                AttrSet::EMPTY,
                Some(vec![D]),
                "t".into(),
            )
            .unwrap(),
            rule(RuleKind::Regular, "/run", AttrSet::PERM),
        ]);
        assert!(r.select(b"/run/x", D).is_none());
        assert!(r.select(b"/run/x", F).is_some());
    }

    #[test]
    fn non_utf8_paths_and_byte_regexes() {
        let r = rules(vec![
            rule(RuleKind::Regular, "/", AttrSet::PERM),
            rule(RuleKind::Negative, "/tmp/\\xff", AttrSet::EMPTY),
        ]);
        assert!(r.select(b"/data/\xff\xfe\n", F).is_some());
        assert!(r.select(b"/tmp/\xffx", F).is_none());
    }

    #[test]
    fn bad_regex_names_the_regex() {
        let e =
            Rule::new(RuleKind::Regular, "/etc/(", AttrSet::PERM, None, "t".into()).unwrap_err();
        assert!(e.to_string().contains("/etc/("), "{e}");
    }
}
