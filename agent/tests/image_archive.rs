//! `fim-agent snapshot --image-archive` on archives built here by hand (OCI image layout and
//! `docker save`), with a whiteout, an opaque directory, a hard link, a symlink, a file replaced
//! in an upper layer and a gzip layer: the result equals `--root` on the same tree as a directory.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_fim-agent");

/// One tar entry of a layer.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Hard(&'a str, &'a str),
    Sym(&'a str, &'a str),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        match *e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data).unwrap();
            }
            E::Hard(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Sym(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const LONG: &str =
    "app/a-directory-name-long-enough-that-the-whole-path-needs-a-gnu-long-name-header/file.txt";

/// Lower layer (gzip) and upper layer (plain).
fn layers() -> (Vec<u8>, Vec<u8>) {
    let lower = layer(&[
        E::Dir("./"),
        E::Dir("./app/"),
        E::File("./app/keep", b"keep me"),
        E::File("./app/gone", b"whited out"),
        E::File("./app/changed", b"v1"),
        E::Dir("./app/old/"),
        E::File("./app/old/x", b"hidden by the opaque dir"),
        E::Dir("./app/old/sub/"),
        E::File("./app/old/sub/y", b"hidden too"),
        E::Dir("./app/becomes-link/"),
        E::File("./app/becomes-link/z", b"gone with its dir"),
        E::File("./etc/conf", b"conf"),
        E::File("./app/we ird\nname", b"escaped"),
    ]);
    let upper = layer(&[
        E::File("app/.wh.gone", b""),
        E::File("app/old/.wh..wh..opq", b""),
        E::File("app/old/new", b"after the opaque marker"),
        E::File("app/changed", b"v2"),
        E::Hard("app/hard", "app/keep"),
        E::Sym("app/link", "keep"),
        E::Sym("app/becomes-link", "keep"),
        E::File(LONG, b"long"),
    ]);
    (gzip(&lower), upper)
}

/// The same tree, exported as a directory.
fn tree(root: &Path) {
    let w = |p: &str, d: &[u8]| {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, d).unwrap();
    };
    w("app/keep", b"keep me");
    w("app/changed", b"v2");
    w("app/old/new", b"after the opaque marker");
    w("etc/conf", b"conf");
    w("app/we ird\nname", b"escaped");
    w(LONG, b"long");
    std::fs::hard_link(root.join("app/keep"), root.join("app/hard")).unwrap();
    std::os::unix::fs::symlink("keep", root.join("app/link")).unwrap();
    std::os::unix::fs::symlink("keep", root.join("app/becomes-link")).unwrap();
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn descriptor(media: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media, "digest": format!("sha256:{}", sha(data)), "size": data.len()})
}

fn append(b: &mut tar::Builder<std::fs::File>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

/// An OCI image layout tar; returns the manifest digest.
fn oci_archive(path: &Path) -> String {
    let (lower, upper) = layers();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [
            descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &lower),
            descriptor("application/vnd.oci.image.layer.v1.tar", &upper),
        ],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [descriptor("application/vnd.oci.image.manifest.v1+json", &manifest)],
    }))
    .unwrap();
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    append(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    append(&mut b, "index.json", &index);
    for blob in [&manifest[..], config, &lower, &upper] {
        append(&mut b, &format!("blobs/sha256/{}", sha(blob)), blob);
    }
    b.finish().unwrap();
    format!("sha256:{}", sha(&manifest))
}

/// A legacy `docker save` tar: manifest.json and `<id>/layer.tar`, the upper layer a symlink
/// to another member as docker writes repeated layers.
fn docker_archive(path: &Path) {
    let (lower, upper) = layers();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json",
        "RepoTags": ["app:1"],
        "Layers": ["l1/layer.tar", "l2/layer.tar"],
    }]))
    .unwrap();
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    append(&mut b, "manifest.json", &manifest);
    append(&mut b, "config.json", b"{}");
    append(&mut b, "l1/layer.tar", &lower);
    append(&mut b, "blobs/upper.tar", &upper);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "l2/layer.tar", "../blobs/upper.tar")
        .unwrap();
    b.finish().unwrap();
}

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("snapshot")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn archives_snapshot_like_the_exported_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    tree(&root);
    let oci = dir.path().join("oci.tar");
    let docker = dir.path().join("docker.tar");
    oci_archive(&oci);
    docker_archive(&docker);
    for algorithm in ["sha256", "bee2"] {
        let expected = run(&[
            "--root",
            root.to_str().unwrap(),
            "--dir",
            "app,etc",
            "--algorithm",
            algorithm,
            "--out",
            "-",
        ]);
        for archive in [&oci, &docker] {
            let got = run(&[
                "--image-archive",
                archive.to_str().unwrap(),
                "--dir",
                "app,etc",
                "--algorithm",
                algorithm,
                "--out",
                "-",
            ]);
            assert_eq!(got, expected, "{} {algorithm}", archive.display());
        }
    }
    // What the layers mean, spelled out (sha256).
    let text = run(&[
        "--image-archive",
        oci.to_str().unwrap(),
        "--dir",
        "app",
        "--out",
        "-",
    ]);
    let paths: Vec<&str> = text
        .lines()
        .map(|l| l.split_once("  ").unwrap().1)
        .collect();
    assert_eq!(
        paths,
        [
            LONG,
            "app/changed",
            "app/hard",
            "app/keep",
            "app/old/new",
            "app/we ird\\nname",
        ]
    );
    assert!(text.contains(&format!("{}  app/hard\n", sha(b"keep me"))));
    assert!(text.contains(&format!("{}  app/changed\n", sha(b"v2"))));
}

#[test]
fn output_cr_records_the_image_and_the_archive_digest() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci.tar");
    let digest = oci_archive(&oci);
    let yaml = run(&[
        "--image-archive",
        oci.to_str().unwrap(),
        "--dir",
        "app",
        "--image",
        "registry:5000/team/app:1",
        "--output-cr",
        "app-1",
        "--namespace",
        "team",
        "--out",
        "-",
    ]);
    let snap: kube_fim_crds::Snapshot = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(snap.spec.image, "registry:5000/team/app:1");
    assert_eq!(snap.spec.image_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(snap.metadata.namespace.as_deref(), Some("team"));
    let lines = run(&[
        "--image-archive",
        oci.to_str().unwrap(),
        "--dir",
        "app",
        "--out",
        "-",
    ]);
    assert_eq!(snap.inline_data().unwrap(), lines.into_bytes());
    // A reference pinning another digest is refused.
    let out = Command::new(BIN)
        .args([
            "snapshot",
            "--image-archive",
            oci.to_str().unwrap(),
            "--dir",
            "app",
            "--out",
            "-",
        ])
        .args(["--output-cr", "x", "--image"])
        .arg(format!("app@sha256:{}", "0".repeat(64)))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the archive holds"));
}
