//! Container files against their baseline, without I/O: snapshot lines (`<hex>  <path>`, paths
//! relative to the container root, as `fim-agent snapshot` and integrity-sum write them) parsed,
//! cut down to the monitored paths, and compared.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Path (relative, escaped as in reports) → hex digest.
pub type Lines = BTreeMap<String, String>;

/// Parses snapshot lines; an unreadable line is an error naming it (a baseline that cannot be
/// read entirely is not used at all).
pub fn parse(text: &str) -> Result<Lines, String> {
    let mut lines = Lines::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let Some((hash, path)) = line.split_once("  ") else {
            return Err(format!("line {}: expected '<hex>  <path>'", n + 1));
        };
        if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || path.is_empty() {
            return Err(format!("line {}: expected '<hex>  <path>'", n + 1));
        }
        // integrity-sum writes paths with or without a leading slash.
        let path = path.trim_start_matches('/');
        lines.insert(path.to_owned(), hash.to_ascii_lowercase());
    }
    Ok(lines)
}

/// The monitored paths (`/etc/nginx`) as snapshot directories (`etc/nginx`).
pub fn dirs(paths: &[String]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.trim_start_matches('/').to_owned())
        .collect()
}

/// The lines at or under one of `dirs`.
pub fn restrict(lines: &Lines, dirs: &[String]) -> Lines {
    lines
        .iter()
        .filter(|(path, _)| {
            dirs.iter().any(|d| {
                d.is_empty()
                    || path.as_str() == d
                    || (path.starts_with(d.as_str()) && path.as_bytes().get(d.len()) == Some(&b'/'))
            })
        })
        .map(|(p, h)| (p.clone(), h.clone()))
        .collect()
}

/// Differences of `current` against `baseline` (absolute paths, sorted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Diff {
    pub fn is_clean(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    /// The first `n` paths: changed, removed, then added (the evidence a flood of new files
    /// must not hide).
    pub fn evidence(&self, n: usize) -> Vec<String> {
        self.changed
            .iter()
            .chain(&self.removed)
            .chain(&self.added)
            .take(n)
            .cloned()
            .collect()
    }
}

pub fn compare(baseline: &Lines, current: &Lines) -> Diff {
    let abs = |p: &String| format!("/{p}");
    let mut diff = Diff::default();
    for (path, hash) in current {
        match baseline.get(path) {
            None => diff.added.push(abs(path)),
            Some(h) if h != hash => diff.changed.push(abs(path)),
            Some(_) => {}
        }
    }
    for path in baseline.keys() {
        if !current.contains_key(path) {
            diff.removed.push(abs(path));
        }
    }
    diff
}

/// File name of a FirstObserved baseline: one per image digest, algorithm and paths on the node,
/// shared by every container of that image (so a replica that starts tampered is compared with
/// the first one seen, not baselined).
pub fn first_observed_key(image_id: &str, algorithm: &str, paths: &[String]) -> String {
    let mut h = Sha256::new();
    for part in [image_id, algorithm] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for p in paths {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("{}.lines", hex::encode(h.finalize()))
}

/// Renders lines back to snapshot text (for the FirstObserved file).
pub fn render(lines: &Lines) -> String {
    lines.iter().map(|(p, h)| format!("{h}  {p}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_or_without_a_leading_slash_and_bad_lines_are_named() {
        let l = parse("ab01  usr/share/html/index.html\nCD02  /etc/web/web.conf\n\n").unwrap();
        assert_eq!(l["usr/share/html/index.html"], "ab01");
        assert_eq!(l["etc/web/web.conf"], "cd02");
        assert_eq!(
            parse("ab01 one-space").unwrap_err(),
            "line 1: expected '<hex>  <path>'"
        );
        assert!(parse("zz  x").unwrap_err().contains("line 1"));
        assert!(parse("ab  x\nab  ").unwrap_err().contains("line 2"));
    }

    #[test]
    fn restriction_keeps_whole_components_only() {
        let l = parse("01  etc/web/a\n02  etc/webx/b\n03  etc/web\n04  srv/x\n").unwrap();
        let r = restrict(&l, &dirs(&["/etc/web".into()]));
        assert_eq!(r.keys().collect::<Vec<_>>(), ["etc/web", "etc/web/a"]);
        assert_eq!(restrict(&l, &dirs(&["/".into()])).len(), 4);
    }

    #[test]
    fn changed_removed_and_added_are_told_apart_with_evidence_first() {
        let base = parse("01  a\n02  b\n03  c\n").unwrap();
        let now = parse("01  a\nff  b\n04  d\n05  e\n").unwrap();
        let d = compare(&base, &now);
        assert_eq!(d.changed, ["/b"]);
        assert_eq!(d.removed, ["/c"]);
        assert_eq!(d.added, ["/d", "/e"]);
        assert_eq!(d.evidence(3), ["/b", "/c", "/d"]);
        assert!(compare(&base, &base).is_clean());
    }

    #[test]
    fn first_observed_keys_separate_images_algorithms_and_paths() {
        let p = vec!["/etc".to_owned()];
        let k = first_observed_key("sha256:aa", "SHA256", &p);
        assert_eq!(k, first_observed_key("sha256:aa", "SHA256", &p));
        assert_ne!(k, first_observed_key("sha256:ab", "SHA256", &p));
        assert_ne!(k, first_observed_key("sha256:aa", "SHA512", &p));
        assert_ne!(
            k,
            first_observed_key("sha256:aa", "SHA256", &["/etc".into(), "/srv".into()])
        );
        // No ambiguity from concatenation.
        assert_ne!(
            first_observed_key("a", "b", &["c".into()]),
            first_observed_key("a\0b", "", &["c".into()])
        );
        let l = parse("01  a\n02  b/c\n").unwrap();
        assert_eq!(parse(&render(&l)).unwrap(), l);
    }
}
