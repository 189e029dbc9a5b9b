//! Snapshots of image archives (`docker save` tars and OCI image layout tars) read in place: no
//! container runtime, no root, nothing unpacked to disk.
//!
//! The archive is indexed once (name → offset and size of each member); the layers are then read
//! straight from the file in order, gzip ones decompressed on the fly, and applied to an in-memory
//! tree of path → node, where a regular file is represented by its digest (computed while the layer
//! streams past). Layer semantics follow the OCI image spec ("Applying changesets"):
//! - `dir/.wh.name` deletes `dir/name` (and everything below it) from the lower layers;
//! - `dir/.wh..wh..opq` deletes every child of `dir` from the lower layers;
//! - whiteouts never hide entries of their own layer, so a layer's whiteouts apply before its
//!   entries;
//! - a non-directory replaces whatever was at its path, directory included; a directory over a
//!   directory merges;
//! - a hard link gets the content its target has at that moment (later changes to the target in
//!   upper layers copy it up, as overlayfs does, and leave the link alone);
//! - symlinks, devices and FIFOs are nodes (they replace what was there) but, like in the
//!   directory snapshot, are not listed.
//!
//! Entry paths are applied literally: a layer is a diff of a root filesystem, so its paths never
//! go through symlinks of lower layers (an entry below a non-directory replaces it with a directory).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Deserialize;

use crate::display::display_bytes;
use crate::hash::{Algorithm, MultiHasher, READ_BUFFER};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("--dir '{0}' must be a path relative to the image root (like app or usr/bin)")]
    BadDir(String),
    #[error("--dir '{dir}' does not exist in the image {path}")]
    Missing { dir: String, path: String },
}

/// The snapshot of an image archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSnapshot {
    /// `<hex>  <path>` lines, as [`crate::snapshot::snapshot`] writes them for a directory.
    pub text: String,
    /// Number of lines.
    pub files: usize,
    /// Manifest digest from the OCI index (what `image@sha256:…` names); `None` for the legacy
    /// `docker save` layout, which does not record it.
    pub digest: Option<String>,
}

/// A node of the image's root filesystem after the layers applied so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir,
    /// A regular file, by the digest of its content.
    File(Vec<u8>),
    /// Symlinks, devices, FIFOs: present, not hashed.
    Other,
}

/// What one layer entry does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(Node),
    /// A hard link to this (normalised) path.
    Link(Vec<u8>),
}

/// One layer, read: its whiteouts and opaque directories (which apply to the lower layers only)
/// and its entries in archive order.
#[derive(Debug, Default)]
pub struct Layer {
    pub whiteouts: Vec<Vec<u8>>,
    pub opaque: Vec<Vec<u8>>,
    pub changes: Vec<(Vec<u8>, Change)>,
}

/// The image's root filesystem: normalised path (no leading or trailing `/`) → node, in byte
/// order, which is the order of the directory snapshot.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<Vec<u8>, Node>,
}

impl Tree {
    pub fn get(&self, path: &[u8]) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Removes everything strictly below `dir`.
    fn remove_below(&mut self, dir: &[u8]) {
        let mut lo = dir.to_vec();
        if !lo.is_empty() {
            lo.push(b'/');
        }
        let keys: Vec<Vec<u8>> = self
            .nodes
            .range(lo.clone()..)
            .take_while(|(k, _)| k.starts_with(&lo))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.nodes.remove(&k);
        }
    }

    fn remove(&mut self, path: &[u8]) {
        self.remove_below(path);
        self.nodes.remove(path);
    }

    fn put(&mut self, path: &[u8], node: Node) {
        // Parents become directories (a layer lists them, but need not).
        for (i, _) in path.iter().enumerate().filter(|(_, b)| **b == b'/') {
            let parent = &path[..i];
            if self.nodes.get(parent) != Some(&Node::Dir) {
                self.nodes.insert(parent.to_vec(), Node::Dir);
            }
        }
        if node == Node::Dir {
            if self.nodes.get(path) == Some(&Node::Dir) {
                return;
            }
        } else {
            self.remove_below(path);
        }
        self.nodes.insert(path.to_vec(), node);
    }

    /// Applies a layer on top: whiteouts and opaque directories first (they hide lower content
    /// only), then the entries in order.
    pub fn apply(&mut self, layer: Layer) -> Result<(), String> {
        for dir in &layer.opaque {
            self.remove_below(dir);
        }
        for path in &layer.whiteouts {
            self.remove(path);
        }
        for (path, change) in layer.changes {
            let node = match change {
                Change::Put(node) => node,
                Change::Link(target) => match self.nodes.get(&target) {
                    Some(node) => node.clone(),
                    None => {
                        return Err(format!(
                            "hard link {} points to {}, which is not in the image",
                            display_bytes(&path),
                            display_bytes(&target)
                        ));
                    }
                },
            };
            self.put(&path, node);
        }
        Ok(())
    }

    /// The snapshot text of the regular files below `dirs` (each relative to the image root).
    pub fn snapshot(
        &self,
        dirs: &[String],
        archive: &str,
    ) -> Result<(String, usize), ArchiveError> {
        let mut prefixes = Vec::new();
        for dir in dirs {
            let clean = dir.trim_matches('/');
            if clean.is_empty() || dir.starts_with('/') || clean.split('/').any(|c| c == "..") {
                return Err(ArchiveError::BadDir(dir.clone()));
            }
            if !self.nodes.contains_key(clean.as_bytes()) {
                return Err(ArchiveError::Missing {
                    dir: dir.clone(),
                    path: archive.to_string(),
                });
            }
            prefixes.push(clean.as_bytes().to_vec());
        }
        let under = |p: &[u8]| {
            prefixes
                .iter()
                .any(|d| p.starts_with(d) && (p.len() == d.len() || p[d.len()] == b'/'))
        };
        let mut text = String::new();
        let mut files = 0;
        for (path, node) in &self.nodes {
            if let Node::File(hash) = node
                && under(path)
            {
                let _ = writeln!(text, "{}  {}", hex::encode(hash), display_bytes(path));
                files += 1;
            }
        }
        Ok((text, files))
    }
}

/// `./usr//bin/` → `usr/bin`; `None` for the root itself; `Err` for `..` components.
pub fn normalize(path: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(format!(
                    "entry {} leaves the image root",
                    display_bytes(path)
                ));
            }
            part => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Reads one layer tar, hashing its regular files with `algorithm`.
pub fn read_layer(reader: impl Read, algorithm: Algorithm) -> Result<Layer, String> {
    let mut archive = tar::Archive::new(reader);
    let mut layer = Layer::default();
    let mut buf = vec![0u8; READ_BUFFER];
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let Some(path) = normalize(&entry.path_bytes())? else {
            continue;
        };
        let (parent, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], &path[..]),
        };
        if name == OPAQUE {
            layer.opaque.push(parent.to_vec());
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let mut target = parent.to_vec();
            if !target.is_empty() {
                target.push(b'/');
            }
            target.extend_from_slice(hidden);
            layer.whiteouts.push(target);
            continue;
        }
        use tar::EntryType as T;
        let change = match entry.header().entry_type() {
            T::Regular | T::Continuous | T::GNUSparse => {
                let mut hasher = MultiHasher::new([algorithm]);
                hasher
                    .consume(&mut entry, &mut buf)
                    .map_err(|e| format!("{}: {e}", display_bytes(&path)))?;
                let digest = hasher.finalize().pop().map(|(_, d)| d).unwrap_or_default();
                Change::Put(Node::File(digest))
            }
            T::Directory => Change::Put(Node::Dir),
            T::Symlink | T::Char | T::Block | T::Fifo => Change::Put(Node::Other),
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| format!("hard link {} has no target", display_bytes(&path)))?;
                let target = normalize(&target)?.ok_or_else(|| {
                    format!("hard link {} points to the root", display_bytes(&path))
                })?;
                Change::Link(target)
            }
            // PAX and GNU long-name headers are folded into the next entry by the tar crate;
            // anything else carries no file.
            _ => continue,
        };
        layer.changes.push((path, change));
    }
    Ok(layer)
}

/// Where a member of the outer archive is.
#[derive(Clone, Debug)]
enum Member {
    File { offset: u64, size: u64 },
    Symlink(Vec<u8>),
}

struct Outer {
    file: File,
    name: String,
    members: BTreeMap<Vec<u8>, Member>,
}

impl Outer {
    fn open(path: &Path) -> Result<Outer, ArchiveError> {
        let name = path.display().to_string();
        let io_err = |source| ArchiveError::Io {
            path: name.clone(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let mut members = BTreeMap::new();
        let mut archive = tar::Archive::new(BufReader::new(&file));
        for entry in archive.entries().map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let Ok(Some(member_path)) = normalize(&entry.path_bytes()) else {
                continue;
            };
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink | tar::EntryType::Link => match entry.link_name_bytes() {
                    Some(target) => Member::Symlink(target.into_owned()),
                    None => continue,
                },
                _ => continue,
            };
            members.insert(member_path, member);
        }
        if members.is_empty() {
            return Err(ArchiveError::Format {
                path: name,
                message: "not a tar archive (or an empty one); compressed archives must be decompressed first".into(),
            });
        }
        Ok(Outer {
            file,
            name,
            members,
        })
    }

    fn format_err(&self, message: impl Into<String>) -> ArchiveError {
        ArchiveError::Format {
            path: self.name.clone(),
            message: message.into(),
        }
    }

    /// Offset and size of a member, following symlinks (legacy `docker save` links repeated layers).
    fn locate(&self, member: &str) -> Result<(u64, u64), ArchiveError> {
        let mut path = normalize(member.as_bytes())
            .ok()
            .flatten()
            .unwrap_or_default();
        for _ in 0..8 {
            match self.members.get(&path) {
                Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Symlink(target)) => {
                    // Relative to the link's directory; `..` stays inside the archive.
                    let mut parts: Vec<&[u8]> = Vec::new();
                    if !target.starts_with(b"/") {
                        parts.extend(path.split(|b| *b == b'/'));
                        parts.pop();
                    }
                    for part in target.split(|b| *b == b'/') {
                        match part {
                            b"" | b"." => {}
                            b".." => {
                                parts.pop();
                            }
                            part => parts.push(part),
                        }
                    }
                    path = parts.join(&b'/');
                }
                None => break,
            }
        }
        Err(self.format_err(format!("member {member} is missing")))
    }

    fn reader(&self, member: &str) -> Result<impl Read + '_, ArchiveError> {
        let (offset, size) = self.locate(member)?;
        Ok(Section {
            file: &self.file,
            pos: offset,
            end: offset + size,
        })
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, member: &str) -> Result<T, ArchiveError> {
        let mut data = Vec::new();
        self.reader(member)?
            .take(16 << 20)
            .read_to_end(&mut data)
            .map_err(|source| ArchiveError::Io {
                path: format!("{}:{member}", self.name),
                source,
            })?;
        serde_json::from_slice(&data).map_err(|e| self.format_err(format!("{member}: {e}")))
    }
}

/// A byte range of the archive file, read with positioned reads.
struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciManifest {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    layers: Vec<String>,
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn is_index(media_type: &str) -> bool {
    media_type.ends_with("image.index.v1+json") || media_type.ends_with("manifest.list.v2+json")
}

/// Layer members in order, and the image digest when the layout records one.
fn layers(outer: &Outer) -> Result<(Vec<String>, Option<String>), ArchiveError> {
    if outer.members.contains_key(b"index.json".as_slice()) {
        let index: OciIndex = outer.read_json("index.json")?;
        let top = index
            .manifests
            .first()
            .ok_or_else(|| outer.format_err("index.json lists no manifest"))?;
        let mut manifest: OciManifest = outer.read_json(&blob_path(&top.digest))?;
        // A multi-platform image: the linux/amd64 manifest, else the first.
        if is_index(&top.media_type) || is_index(&manifest.media_type) {
            let pick = manifest
                .manifests
                .iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .or(manifest.manifests.first())
                .ok_or_else(|| outer.format_err("the image index lists no manifest"))?;
            manifest = outer.read_json(&blob_path(&pick.digest))?;
        }
        let layers = manifest
            .layers
            .iter()
            .map(|l| blob_path(&l.digest))
            .collect();
        return Ok((layers, Some(top.digest.clone())));
    }
    if outer.members.contains_key(b"manifest.json".as_slice()) {
        let manifests: Vec<DockerManifest> = outer.read_json("manifest.json")?;
        let first = manifests
            .into_iter()
            .next()
            .ok_or_else(|| outer.format_err("manifest.json lists no image"))?;
        return Ok((first.layers, None));
    }
    Err(outer.format_err(
        "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
    ))
}

/// Opens a layer, gzip-compressed or not (zstd is refused by name).
fn layer_reader<'a>(outer: &'a Outer, member: &str) -> Result<Box<dyn Read + 'a>, ArchiveError> {
    let mut magic = [0u8; 4];
    let n = outer
        .reader(member)?
        .read(&mut magic)
        .map_err(|source| ArchiveError::Io {
            path: format!("{}:{member}", outer.name),
            source,
        })?;
    let reader = BufReader::with_capacity(READ_BUFFER, outer.reader(member)?);
    match &magic[..n] {
        [0x1f, 0x8b, ..] => Ok(Box::new(flate2::read::MultiGzDecoder::new(reader))),
        [0x28, 0xb5, 0x2f, 0xfd] => Err(outer.format_err(format!(
            "layer {member} is zstd-compressed, which is not supported yet"
        ))),
        _ => Ok(Box::new(reader)),
    }
}

/// Snapshot of the regular files below `dirs` in the image archive at `path` (OCI image layout
/// tar or `docker save` tar): the same text as snapshotting the image's exported root filesystem.
pub fn snapshot_archive(
    path: &Path,
    dirs: &[String],
    algorithm: Algorithm,
) -> Result<ImageSnapshot, ArchiveError> {
    let outer = Outer::open(path)?;
    let (members, digest) = layers(&outer)?;
    let mut tree = Tree::default();
    for member in &members {
        let layer = read_layer(layer_reader(&outer, member)?, algorithm)
            .map_err(|m| outer.format_err(format!("layer {member}: {m}")))?;
        tree.apply(layer)
            .map_err(|m| outer.format_err(format!("layer {member}: {m}")))?;
    }
    let (text, files) = tree.snapshot(dirs, &outer.name)?;
    Ok(ImageSnapshot {
        text,
        files,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::digest_bytes;

    fn file(data: &[u8]) -> Change {
        Change::Put(Node::File(digest_bytes(Algorithm::Sha256, data)))
    }

    fn layer(changes: &[(&str, Change)], whiteouts: &[&str], opaque: &[&str]) -> Layer {
        Layer {
            whiteouts: whiteouts.iter().map(|p| p.as_bytes().to_vec()).collect(),
            opaque: opaque.iter().map(|p| p.as_bytes().to_vec()).collect(),
            changes: changes
                .iter()
                .map(|(p, c)| (p.as_bytes().to_vec(), c.clone()))
                .collect(),
        }
    }

    fn paths(tree: &Tree) -> Vec<String> {
        tree.nodes
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[test]
    fn normalize_strips_dots_and_slashes_and_refuses_dotdot() {
        assert_eq!(
            normalize(b"./usr//bin/").unwrap(),
            Some(b"usr/bin".to_vec())
        );
        assert_eq!(normalize(b"/etc/x").unwrap(), Some(b"etc/x".to_vec()));
        assert_eq!(normalize(b"./").unwrap(), None);
        assert!(normalize(b"a/../../etc").is_err());
    }

    #[test]
    fn whiteouts_hide_lower_layers_but_not_their_own() {
        let mut t = Tree::default();
        t.apply(layer(
            &[
                ("a/x", file(b"1")),
                ("a/y", file(b"2")),
                ("b/z", file(b"3")),
            ],
            &[],
            &[],
        ))
        .unwrap();
        // Same layer: a whiteout of a/x and a re-created a/x; b is opaque and gets a new file.
        t.apply(layer(
            &[("a/x", file(b"new")), ("b/w", file(b"4"))],
            &["a/x", "a/y"],
            &["b"],
        ))
        .unwrap();
        assert_eq!(paths(&t), ["a", "a/x", "b", "b/w"]);
        assert_eq!(
            t.get(b"a/x"),
            Some(&Node::File(digest_bytes(Algorithm::Sha256, b"new")))
        );
    }

    #[test]
    fn non_directories_replace_directories_and_hard_links_copy_content() {
        let mut t = Tree::default();
        t.apply(layer(
            &[
                ("d", Change::Put(Node::Dir)),
                ("d/f", file(b"f")),
                ("t", file(b"target")),
                ("h", Change::Link(b"t".to_vec())),
            ],
            &[],
            &[],
        ))
        .unwrap();
        assert_eq!(t.get(b"h"), t.get(b"t"));
        // A symlink over the directory drops its contents; the target changes, the link keeps
        // its content (copy-up).
        t.apply(layer(
            &[("d", Change::Put(Node::Other)), ("t", file(b"changed"))],
            &[],
            &[],
        ))
        .unwrap();
        assert_eq!(paths(&t), ["d", "h", "t"]);
        assert_eq!(
            t.get(b"h"),
            Some(&Node::File(digest_bytes(Algorithm::Sha256, b"target")))
        );
        // A directory over a directory merges.
        t.apply(layer(&[("e/x", file(b"x"))], &[], &[])).unwrap();
        t.apply(layer(
            &[("e", Change::Put(Node::Dir)), ("e/y", file(b"y"))],
            &[],
            &[],
        ))
        .unwrap();
        assert_eq!(paths(&t), ["d", "e", "e/x", "e/y", "h", "t"]);
        let err = t
            .apply(layer(&[("l", Change::Link(b"nope".to_vec()))], &[], &[]))
            .unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn snapshot_lists_regular_files_below_the_dirs_in_byte_order() {
        let mut t = Tree::default();
        t.apply(layer(
            &[
                ("app/b", file(b"b")),
                ("app/a.txt", file(b"a")),
                ("app/a/c", file(b"c")),
                ("app/link", Change::Put(Node::Other)),
                ("apps/x", file(b"x")),
                ("etc/y", file(b"y")),
            ],
            &[],
            &[],
        ))
        .unwrap();
        let (text, files) = t.snapshot(&["app".into()], "img").unwrap();
        let h = |d: &[u8]| hex::encode(digest_bytes(Algorithm::Sha256, d));
        assert_eq!(
            text,
            format!(
                "{}  app/a.txt\n{}  app/a/c\n{}  app/b\n",
                h(b"a"),
                h(b"c"),
                h(b"b")
            )
        );
        assert_eq!(files, 3);
        assert!(matches!(
            t.snapshot(&["nope".into()], "img"),
            Err(ArchiveError::Missing { .. })
        ));
        assert!(matches!(
            t.snapshot(&["../x".into()], "img"),
            Err(ArchiveError::BadDir(_))
        ));
    }
}
