//! Comparing a file's recorded state with its current one, attribute by attribute.

use serde::Serialize;

use crate::attrs::AttrSet;
use crate::display::{display_bytes, time_string};
use crate::entry::{Entry, FileType, Timestamp, xattr_family};
use crate::hash::Algorithm;

/// One attribute that differs, with both values as a report shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttrChange {
    /// AIDE's report label: `Perm`, `Size`, `SHA256`, ...
    pub attribute: String,
    pub old: String,
    pub new: String,
}

fn change(attribute: &str, old: String, new: String) -> AttrChange {
    AttrChange {
        attribute: attribute.to_string(),
        old,
        new,
    }
}

/// The attributes in which `new` differs from `old`, limited to what both records asked for.
pub fn compare(old: &Entry, new: &Entry) -> Vec<AttrChange> {
    let attrs = old.attrs.intersect(new.attrs);
    let growing = attrs.contains(AttrSet::GROWING);
    let (o, n) = (&old.stat, &new.stat);
    let mut out = Vec::new();
    if old.ftype != new.ftype {
        out.push(change(
            "File type",
            old.ftype.name().into(),
            new.ftype.name().into(),
        ));
    }
    let grew = |a: u64, b: u64| growing && b > a;
    let grew_t = |a: Timestamp, b: Timestamp| growing && b > a;
    if attrs.contains(AttrSet::PERM) && o.perm() != n.perm() {
        out.push(change(
            "Perm",
            perm_string(old.ftype, o.perm()),
            perm_string(new.ftype, n.perm()),
        ));
    }
    if attrs.contains(AttrSet::UID) && o.uid != n.uid {
        out.push(change("Uid", o.uid.to_string(), n.uid.to_string()));
    }
    if attrs.contains(AttrSet::GID) && o.gid != n.gid {
        out.push(change("Gid", o.gid.to_string(), n.gid.to_string()));
    }
    // Directory sizes depend on the filesystem's bookkeeping, not on what is in them; AIDE skips them too.
    let sized = new.ftype != FileType::Directory;
    if sized && attrs.contains(AttrSet::SIZE) && o.size != n.size && !grew(o.size, n.size) {
        out.push(change("Size", o.size.to_string(), n.size.to_string()));
    }
    if sized && attrs.contains(AttrSet::BLOCKS) && o.blocks != n.blocks && !grew(o.blocks, n.blocks)
    {
        out.push(change("Bcount", o.blocks.to_string(), n.blocks.to_string()));
    }
    if attrs.contains(AttrSet::MTIME) && o.mtime != n.mtime && !grew_t(o.mtime, n.mtime) {
        out.push(change("Mtime", time_string(o.mtime), time_string(n.mtime)));
    }
    if attrs.contains(AttrSet::ATIME) && o.atime != n.atime && !grew_t(o.atime, n.atime) {
        out.push(change("Atime", time_string(o.atime), time_string(n.atime)));
    }
    if attrs.contains(AttrSet::CTIME) && o.ctime != n.ctime && !grew_t(o.ctime, n.ctime) {
        out.push(change("Ctime", time_string(o.ctime), time_string(n.ctime)));
    }
    if attrs.contains(AttrSet::INODE) && o.ino != n.ino {
        out.push(change("Inode", o.ino.to_string(), n.ino.to_string()));
    }
    if attrs.contains(AttrSet::NLINK) && o.nlink != n.nlink {
        out.push(change(
            "Linkcount",
            o.nlink.to_string(),
            n.nlink.to_string(),
        ));
    }
    if attrs.contains(AttrSet::LINKNAME) && old.link_target != new.link_target {
        let show = |t: &Option<Box<[u8]>>| t.as_deref().map(display_bytes).unwrap_or_default();
        out.push(change(
            "Link",
            show(&old.link_target),
            show(&new.link_target),
        ));
    }
    for (family, label) in [
        (AttrSet::ACL, "ACL"),
        (AttrSet::SELINUX, "SELinux"),
        (AttrSet::XATTRS, "XAttrs"),
        (AttrSet::CAPS, "Caps"),
    ] {
        if attrs.contains(family) && !family_xattrs(old, family).eq(family_xattrs(new, family)) {
            out.push(change(
                label,
                xattrs_of(old, family),
                xattrs_of(new, family),
            ));
        }
    }
    if attrs.contains(AttrSet::E2FSATTRS) && old.e2fsattrs != new.e2fsattrs {
        let show = |f: Option<u32>| f.map(|f| format!("{f:#x}")).unwrap_or_default();
        out.push(change(
            "E2FSAttrs",
            show(old.e2fsattrs),
            show(new.e2fsattrs),
        ));
    }
    if new.ftype == FileType::Regular && old.ftype == FileType::Regular {
        // Raw bytes first: formatting every hash of every file would dominate a quiet check.
        for a in attrs.algorithms() {
            if old.hash(a).is_none() || old.hash(a) != new.hash(a) {
                let (before, after) = (hash_string(old, a), hash_string(new, a));
                if before != after {
                    out.push(change(&a.name().to_ascii_uppercase(), before, after));
                }
            }
        }
    }
    out
}

/// A hash as hex, or why the content could not be read (an unreadable file never compares equal).
fn hash_string(e: &Entry, a: Algorithm) -> String {
    match (e.hash(a), &e.error) {
        (Some(h), _) => hex::encode(h),
        (None, Some(err)) => format!("<unreadable: {err}>"),
        (None, None) => String::new(),
    }
}

fn family_xattrs(e: &Entry, family: AttrSet) -> impl Iterator<Item = &(Box<[u8]>, Box<[u8]>)> {
    e.xattrs
        .iter()
        .flatten()
        .filter(move |(name, _)| xattr_family(name) == family)
}

fn xattrs_of(e: &Entry, family: AttrSet) -> String {
    family_xattrs(e, family)
        .map(|(name, value)| format!("{}={}", display_bytes(name), base64_of(value)))
        .collect::<Vec<_>>()
        .join(",")
}

fn base64_of(v: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v)
}

/// `-rwsr-xr-x` as ls(1) and AIDE print it.
pub fn perm_string(ftype: FileType, perm: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match ftype {
        FileType::Regular => '-',
        other => other.letter(),
    });
    let bit = |mask: u32, c: char| if perm & mask != 0 { c } else { '-' };
    let special =
        |exec: u32, flag: u32, on: char, off: char| match (perm & exec != 0, perm & flag != 0) {
            (true, true) => on,
            (false, true) => off,
            (true, false) => 'x',
            (false, false) => '-',
        };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(0o100, 0o4000, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(0o010, 0o2000, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(0o001, 0o1000, 't', 'T'));
    s
}

/// AIDE's change summary `YlZbpugamcinHAXSEC` (aide.conf(5), report_summarize_changes).
pub fn summary_string(old: &Entry, new: &Entry, changes: &[AttrChange]) -> String {
    let has = |label: &str| changes.iter().any(|c| c.attribute == label);
    let checked = old.attrs.intersect(new.attrs);
    let letter = |label: &str, attr: AttrSet, c: char| {
        if has(label) {
            c
        } else if checked.contains(attr) {
            '.'
        } else {
            ' '
        }
    };
    let mut s = String::new();
    s.push(if old.ftype != new.ftype {
        '!'
    } else {
        new.ftype.letter()
    });
    s.push(letter("Link", AttrSet::LINKNAME, 'l'));
    s.push(if !checked.contains(AttrSet::SIZE) {
        ' '
    } else if new.stat.size > old.stat.size {
        '>'
    } else if new.stat.size < old.stat.size {
        '<'
    } else {
        '='
    });
    s.push(letter("Bcount", AttrSet::BLOCKS, 'b'));
    s.push(letter("Perm", AttrSet::PERM, 'p'));
    s.push(letter("Uid", AttrSet::UID, 'u'));
    s.push(letter("Gid", AttrSet::GID, 'g'));
    s.push(letter("Atime", AttrSet::ATIME, 'a'));
    s.push(letter("Mtime", AttrSet::MTIME, 'm'));
    s.push(letter("Ctime", AttrSet::CTIME, 'c'));
    s.push(letter("Inode", AttrSet::INODE, 'i'));
    s.push(letter("Linkcount", AttrSet::NLINK, 'n'));
    let hash_changed = checked
        .algorithms()
        .any(|a| has(&a.name().to_ascii_uppercase()));
    // As AIDE: '-' when the entry stopped being a regular file, '+' when it became one.
    let regular = |e: &Entry| e.ftype == FileType::Regular;
    s.push(if hash_changed {
        'H'
    } else if !checked.has_hashes() {
        ' '
    } else {
        match (regular(old), regular(new)) {
            (true, true) => '.',
            (true, false) => '-',
            (false, true) => '+',
            (false, false) => ' ',
        }
    });
    s.push(letter("ACL", AttrSet::ACL, 'A'));
    s.push(letter("XAttrs", AttrSet::XATTRS, 'X'));
    s.push(letter("SELinux", AttrSet::SELINUX, 'S'));
    s.push(letter("E2FSAttrs", AttrSet::E2FSATTRS, 'E'));
    s.push(letter("Caps", AttrSet::CAPS, 'C'));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Stat;

    fn entry(attrs: AttrSet) -> Entry {
        Entry {
            path: b"/f".as_slice().into(),
            ftype: FileType::Regular,
            attrs,
            stat: Stat {
                mode: 0o100644,
                size: 10,
                nlink: 1,
                ino: 5,
                ..Stat::default()
            },
            link_target: None,
            xattrs: Some(vec![]),
            e2fsattrs: None,
            hashes: vec![(Algorithm::Sha256, vec![1u8; 32].into())],
            error: None,
        }
    }

    const ALL: AttrSet = AttrSet::PERM
        .union(AttrSet::SIZE)
        .union(AttrSet::MTIME)
        .union(AttrSet::INODE)
        .union(AttrSet::NLINK)
        .union(AttrSet::UID)
        .union(AttrSet::XATTRS)
        .union(AttrSet::hash(Algorithm::Sha256));

    #[test]
    fn each_attribute_is_compared_only_when_asked_for() {
        let old = entry(ALL);
        let mut new = old.clone();
        new.stat.mode = 0o104755;
        new.stat.size = 11;
        new.stat.uid = 1000;
        new.stat.gid = 1000; // not in ALL: not reported
        new.stat.nlink = 2;
        new.stat.ino = 6;
        new.stat.mtime = Timestamp { sec: 1, nsec: 5 };
        new.xattrs = Some(vec![(b"user.x".as_slice().into(), b"1".as_slice().into())]);
        new.hashes = vec![(Algorithm::Sha256, vec![2u8; 32].into())];
        let labels: Vec<String> = compare(&old, &new)
            .into_iter()
            .map(|c| c.attribute)
            .collect();
        assert_eq!(
            labels,
            [
                "Perm",
                "Uid",
                "Size",
                "Mtime",
                "Inode",
                "Linkcount",
                "XAttrs",
                "SHA256"
            ]
        );
        let perm = &compare(&old, &new)[0];
        assert_eq!(
            (perm.old.as_str(), perm.new.as_str()),
            ("-rw-r--r--", "-rwsr-xr-x")
        );
        assert!(compare(&old, &old).is_empty());
    }

    #[test]
    fn growing_ignores_growth_but_not_shrinking() {
        let attrs = AttrSet::SIZE.union(AttrSet::MTIME).union(AttrSet::GROWING);
        let old = entry(attrs);
        let mut grown = old.clone();
        grown.stat.size = 20;
        grown.stat.mtime.sec = 100;
        assert!(compare(&old, &grown).is_empty());
        let mut shrunk = old.clone();
        shrunk.stat.size = 5;
        assert_eq!(compare(&old, &shrunk)[0].attribute, "Size");
    }

    #[test]
    fn unreadable_content_is_a_change() {
        let old = entry(ALL);
        let mut new = old.clone();
        new.hashes.clear();
        new.error = Some("Permission denied".into());
        let c = compare(&old, &new);
        assert_eq!(c[0].attribute, "SHA256");
        assert!(c[0].new.contains("Permission denied"));
    }

    #[test]
    fn type_change_and_summary_string() {
        let old = entry(ALL);
        let mut new = old.clone();
        new.ftype = FileType::Symlink;
        let c = compare(&old, &new);
        assert_eq!(c[0].attribute, "File type");
        assert!(summary_string(&old, &new, &c).starts_with('!'));
        let mut bigger = old.clone();
        bigger.stat.size = 99;
        bigger.hashes = vec![(Algorithm::Sha256, vec![9u8; 32].into())];
        let c = compare(&old, &bigger);
        // Y l Z b p u g a m c i n H A X S E C: size grew, content changed, the rest checked and equal.
        assert_eq!(summary_string(&old, &bigger, &c), "f > ..  . ..H .   ");
    }

    #[test]
    fn time_and_perm_formatting() {
        assert_eq!(
            time_string(Timestamp { sec: 0, nsec: 0 }),
            "1970-01-01 00:00:00.000000000 +0000"
        );
        assert_eq!(
            time_string(Timestamp {
                sec: 1_763_800_000,
                nsec: 7
            }),
            "2025-11-22 08:26:40.000000007 +0000"
        );
        assert_eq!(perm_string(FileType::Directory, 0o1777), "drwxrwxrwt");
        assert_eq!(perm_string(FileType::Regular, 0o2644), "-rw-r-Sr--");
    }
}
