//! File attributes and attribute expressions (`p+u+g+sha512`, `R-m-c`), as in aide.conf(5).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::Algorithm;

/// A set of attributes to record and compare for a file.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttrSet(u32);

/// One attribute name, with the bit it sets.
struct AttrName {
    name: &'static str,
    bits: u32,
}

impl AttrSet {
    pub const EMPTY: AttrSet = AttrSet(0);
    pub const PERM: AttrSet = AttrSet(1 << 0);
    pub const FTYPE: AttrSet = AttrSet(1 << 1);
    pub const INODE: AttrSet = AttrSet(1 << 2);
    pub const LINKNAME: AttrSet = AttrSet(1 << 3);
    pub const NLINK: AttrSet = AttrSet(1 << 4);
    pub const UID: AttrSet = AttrSet(1 << 5);
    pub const GID: AttrSet = AttrSet(1 << 6);
    pub const SIZE: AttrSet = AttrSet(1 << 7);
    pub const BLOCKS: AttrSet = AttrSet(1 << 8);
    pub const MTIME: AttrSet = AttrSet(1 << 9);
    pub const ATIME: AttrSet = AttrSet(1 << 10);
    pub const CTIME: AttrSet = AttrSet(1 << 11);
    pub const ACL: AttrSet = AttrSet(1 << 12);
    pub const SELINUX: AttrSet = AttrSet(1 << 13);
    pub const XATTRS: AttrSet = AttrSet(1 << 14);
    pub const E2FSATTRS: AttrSet = AttrSet(1 << 15);
    pub const CAPS: AttrSet = AttrSet(1 << 16);
    /// Changes that only grow the file (size, blocks, times) are not reported.
    pub const GROWING: AttrSet = AttrSet(1 << 17);
    /// ANF: new files are recorded but not reported.
    pub const ALLOW_NEW: AttrSet = AttrSet(1 << 18);
    /// ARF: removed files are not reported.
    pub const ALLOW_REMOVED: AttrSet = AttrSet(1 << 19);
    /// I: accepted for compatibility; a rename is reported as removed + added.
    pub const IGNORE_RENAME: AttrSet = AttrSet(1 << 20);
    /// compressed: accepted for compatibility; content is compared as stored.
    pub const COMPRESSED: AttrSet = AttrSet(1 << 21);
    const HASH_SHIFT: u32 = 24;

    pub const fn hash(a: Algorithm) -> AttrSet {
        AttrSet(1 << (Self::HASH_SHIFT + a as u32))
    }

    pub const fn union(self, other: AttrSet) -> AttrSet {
        AttrSet(self.0 | other.0)
    }

    pub const fn minus(self, other: AttrSet) -> AttrSet {
        AttrSet(self.0 & !other.0)
    }

    pub const fn intersect(self, other: AttrSet) -> AttrSet {
        AttrSet(self.0 & other.0)
    }

    pub const fn contains(self, other: AttrSet) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    /// The hash algorithms in this set, in report order.
    pub fn algorithms(self) -> impl Iterator<Item = Algorithm> {
        Algorithm::ALL
            .into_iter()
            .filter(move |a| self.contains(AttrSet::hash(*a)))
    }

    pub fn has_hashes(self) -> bool {
        self.algorithms().next().is_some()
    }

    /// AIDE's `H`: every hash this build computes.
    pub fn all_hashes() -> AttrSet {
        Algorithm::ALL
            .into_iter()
            .fold(AttrSet::EMPTY, |s, a| s.union(AttrSet::hash(a)))
    }

    /// AIDE's `X`: the extended attribute families.
    pub const EXTENDED: AttrSet =
        AttrSet(Self::ACL.0 | Self::SELINUX.0 | Self::XATTRS.0 | Self::E2FSATTRS.0 | Self::CAPS.0);

    /// Looks up a single attribute or predefined group name (`p`, `sha256`, `R`, `H`, ...).
    pub fn builtin(name: &str) -> Option<AttrSet> {
        if let Some(a) = Algorithm::ALL.into_iter().find(|a| a.name() == name) {
            return Some(AttrSet::hash(a));
        }
        if let Some(a) = NAMES.iter().find(|a| a.name == name) {
            return Some(AttrSet(a.bits));
        }
        let group = match name {
            // aide --version "Default compound groups" (AIDE 0.18), with our md5 and X.
            "R" => parse_builtin_expr("p+ftype+i+l+n+u+g+s+m+c+md5+X"),
            "L" => parse_builtin_expr("p+ftype+i+l+n+u+g+X"),
            ">" => parse_builtin_expr("p+ftype+l+u+g+i+n+s+growing+X"),
            "H" => AttrSet::all_hashes(),
            "X" => AttrSet::EXTENDED,
            "E" => AttrSet::EMPTY,
            // Deprecated in AIDE 0.18: "check for growing size", i.e. s+growing.
            "S" => AttrSet::SIZE.union(AttrSet::GROWING),
            _ => return None,
        };
        Some(group)
    }

    /// Names of the individual attributes in this set, for reports and debugging.
    pub fn names(self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = NAMES
            .iter()
            .filter(|a| self.contains(AttrSet(a.bits)))
            .map(|a| a.name)
            .collect();
        out.extend(self.algorithms().map(Algorithm::name));
        out
    }
}

fn parse_builtin_expr(expr: &str) -> AttrSet {
    expr.split('+')
        .map(|n| AttrSet::builtin(n).expect("builtin group uses known names"))
        .fold(AttrSet::EMPTY, AttrSet::union)
}

const NAMES: &[AttrName] = &[
    AttrName {
        name: "p",
        bits: AttrSet::PERM.0,
    },
    AttrName {
        name: "ftype",
        bits: AttrSet::FTYPE.0,
    },
    AttrName {
        name: "i",
        bits: AttrSet::INODE.0,
    },
    AttrName {
        name: "l",
        bits: AttrSet::LINKNAME.0,
    },
    AttrName {
        name: "n",
        bits: AttrSet::NLINK.0,
    },
    AttrName {
        name: "u",
        bits: AttrSet::UID.0,
    },
    AttrName {
        name: "g",
        bits: AttrSet::GID.0,
    },
    AttrName {
        name: "s",
        bits: AttrSet::SIZE.0,
    },
    AttrName {
        name: "b",
        bits: AttrSet::BLOCKS.0,
    },
    AttrName {
        name: "m",
        bits: AttrSet::MTIME.0,
    },
    AttrName {
        name: "a",
        bits: AttrSet::ATIME.0,
    },
    AttrName {
        name: "c",
        bits: AttrSet::CTIME.0,
    },
    AttrName {
        name: "acl",
        bits: AttrSet::ACL.0,
    },
    AttrName {
        name: "selinux",
        bits: AttrSet::SELINUX.0,
    },
    AttrName {
        name: "xattrs",
        bits: AttrSet::XATTRS.0,
    },
    AttrName {
        name: "e2fsattrs",
        bits: AttrSet::E2FSATTRS.0,
    },
    AttrName {
        name: "caps",
        bits: AttrSet::CAPS.0,
    },
    AttrName {
        name: "growing",
        bits: AttrSet::GROWING.0,
    },
    AttrName {
        name: "ANF",
        bits: AttrSet::ALLOW_NEW.0,
    },
    AttrName {
        name: "ARF",
        bits: AttrSet::ALLOW_REMOVED.0,
    },
    AttrName {
        name: "I",
        bits: AttrSet::IGNORE_RENAME.0,
    },
    AttrName {
        name: "compressed",
        bits: AttrSet::COMPRESSED.0,
    },
];

/// Hashes AIDE knows that kube-fim deliberately does not compute: named so the error can say so.
pub const UNSUPPORTED_HASHES: &[&str] = &[
    "rmd160",
    "tiger",
    "haval",
    "crc32",
    "crc32b",
    "gost",
    "whirlpool",
    "stribog256",
    "stribog512",
];

impl fmt::Debug for AttrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttrSet({})", self.names().join("+"))
    }
}

impl fmt::Display for AttrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join("+"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predefined_groups_expand_like_aide_0_18() {
        let r = AttrSet::builtin("R").unwrap();
        for n in [
            "p", "ftype", "i", "l", "n", "u", "g", "s", "m", "c", "md5", "xattrs", "acl",
        ] {
            assert!(r.contains(AttrSet::builtin(n).unwrap()), "R lacks {n}");
        }
        assert!(!r.contains(AttrSet::ATIME));
        assert!(!r.contains(AttrSet::hash(Algorithm::Sha256)));
        let h = AttrSet::builtin("H").unwrap();
        assert_eq!(h.algorithms().count(), Algorithm::ALL.len());
        assert!(AttrSet::builtin("E").unwrap().is_empty());
        assert!(AttrSet::builtin(">").unwrap().contains(AttrSet::GROWING));
    }

    #[test]
    fn set_algebra() {
        let s = AttrSet::PERM.union(AttrSet::hash(Algorithm::Sha512));
        assert!(s.contains(AttrSet::PERM));
        assert!(!s.minus(AttrSet::PERM).contains(AttrSet::PERM));
        assert_eq!(s.algorithms().collect::<Vec<_>>(), vec![Algorithm::Sha512]);
        assert_eq!(s.to_string(), "p+sha512");
        assert!(!AttrSet::EMPTY.contains(AttrSet::EMPTY));
    }
}
