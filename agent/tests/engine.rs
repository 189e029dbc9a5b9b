//! The scan engine on real temporary trees: every attribute is read from the filesystem and a change
//! to it is detected; init/check/update/incremental behave as the CLI documents.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, SystemTime};

use fim_engine::attrs::AttrSet;
use fim_engine::config::{Config, ParseContext};
use fim_engine::db::{DbReader, DbWriter, FORMAT_VERSION, Header};
use fim_engine::entry::{Entry, FileType, collect};
use fim_engine::scan::{Outcome, ScanOptions, scan};

fn cfg(text: &str) -> Config {
    Config::parse(
        text,
        "test.conf",
        &ParseContext {
            root: None,
            hostname: "n".into(),
        },
    )
    .unwrap()
}

fn header(c: &Config) -> Header {
    Header {
        format_version: FORMAT_VERSION,
        created: 0,
        tool_version: "test".into(),
        config_digest: c.digest(),
        root: String::new(),
    }
}

fn init(c: &Config, root: &Path, db: &Path) -> Outcome {
    let out = DbWriter::create(db, &header(c)).unwrap();
    scan(c, &ScanOptions::new(root), None, Some(out)).unwrap()
}

fn check(c: &Config, root: &Path, db: &Path, incremental: bool) -> Outcome {
    let mut opts = ScanOptions::new(root);
    opts.incremental = incremental;
    scan(c, &opts, Some(DbReader::open(db).unwrap()), None).unwrap()
}

fn changed_attrs(o: &Outcome, path: &str) -> Vec<String> {
    o.changed
        .iter()
        .find(|c| &c.path[..] == path.as_bytes())
        .map(|c| c.changes.iter().map(|a| a.attribute.clone()).collect())
        .unwrap_or_default()
}

fn paths(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect()
}

fn collect_one(path: &Path, attrs: AttrSet) -> Entry {
    let root = fim_engine::root::Root::open(path.parent().unwrap()).unwrap();
    let mut node = b"/".to_vec();
    node.extend_from_slice(path.file_name().unwrap().as_encoded_bytes());
    collect(&root, &node, attrs, None, &mut Vec::new())
        .unwrap()
        .unwrap()
        .entry
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let name = CString::new(name).unwrap();
    rustix::fs::lsetxattr(
        path,
        name.as_c_str(),
        value,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

#[test]
fn every_stat_attribute_is_read_and_a_change_detected() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for name in [
        "p", "u", "g", "s", "b", "m", "a", "c", "i", "n", "l", "ftype",
    ] {
        fs::create_dir(root.join(name)).unwrap();
        fs::write(root.join(name).join("f"), b"content").unwrap();
    }
    symlink("target-one", root.join("l/link")).unwrap();
    let c = cfg("/ p+ftype+i+l+n+u+g+s+b+m+a+c+sha256\n");
    let dbdir = tempfile::tempdir().unwrap();
    let db = dbdir.path().join("fim.db");
    let base = init(&c, root, &db);
    assert!(base.stats.entries >= 25, "{} entries", base.stats.entries);

    let f = |n: &str| root.join(n).join("f");
    fs::set_permissions(f("p"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(f("u"), Some(4242), None).unwrap();
    std::os::unix::fs::chown(f("g"), None, Some(4242)).unwrap();
    fs::write(f("s"), b"longer content").unwrap();
    fs::write(f("b"), vec![1u8; 64 * 1024]).unwrap();
    let file = fs::File::options().write(true).open(f("m")).unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    let file = fs::File::options().write(true).open(f("a")).unwrap();
    file.set_times(
        fs::FileTimes::new().set_accessed(SystemTime::UNIX_EPOCH + Duration::from_secs(5)),
    )
    .unwrap();
    // Same mode again: only the ctime moves.
    fs::set_permissions(f("c"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::copy(f("i"), root.join("i/tmp")).unwrap();
    fs::rename(root.join("i/tmp"), f("i")).unwrap();
    fs::hard_link(f("n"), root.join("n/second")).unwrap();
    fs::remove_file(root.join("l/link")).unwrap();
    symlink("target-two", root.join("l/link")).unwrap();
    fs::remove_file(f("ftype")).unwrap();
    fs::create_dir(f("ftype")).unwrap();

    let o = check(&c, root, &db, false);
    let has = |path: &str, attr: &str| changed_attrs(&o, path).iter().any(|a| a == attr);
    assert!(has("/p/f", "Perm"), "{:?}", changed_attrs(&o, "/p/f"));
    assert!(has("/u/f", "Uid"));
    assert!(has("/g/f", "Gid"));
    assert!(has("/s/f", "Size") && has("/s/f", "SHA256"));
    assert!(has("/b/f", "Bcount"));
    assert!(has("/m/f", "Mtime"));
    assert!(has("/a/f", "Atime"));
    assert_eq!(changed_attrs(&o, "/c/f"), ["Ctime"], "only ctime changed");
    assert!(has("/i/f", "Inode"));
    assert!(has("/n/f", "Linkcount"));
    assert!(has("/l/link", "Link"));
    assert!(has("/ftype/f", "File type"));
    assert_eq!(paths(&o.added), ["/n/second"]);
    assert_eq!(o.exit_bits(), 1 | 4);
}

#[test]
fn extended_attributes_are_read_per_family() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, b"x").unwrap();
    let all = AttrSet::builtin("X").unwrap();
    let before = collect_one(&file, all);

    set_xattr(&file, "user.origin", b"kube-fim");
    // Version-2 file capability: CAP_NET_BIND_SERVICE permitted, effective bit set.
    let mut caps = 0x0200_0001u32.to_le_bytes().to_vec();
    caps.extend_from_slice(&(1u32 << 10).to_le_bytes());
    caps.extend_from_slice(&[0u8; 12]);
    set_xattr(&file, "security.capability", &caps);
    // POSIX ACL (version 2): user::rw- user:1000:r-- group::r-- mask::r-- other::r--.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    set_xattr(&file, "system.posix_acl_access", &acl);
    let status = std::process::Command::new("chattr")
        .arg("+d")
        .arg(&file)
        .status()
        .expect("chattr (e2fsprogs)");
    assert!(status.success());

    let after = collect_one(&file, all);
    let changes: Vec<String> = fim_engine::diff::compare(&before, &after)
        .into_iter()
        .map(|c| c.attribute)
        .collect();
    for family in ["ACL", "XAttrs", "Caps", "E2FSAttrs"] {
        assert!(
            changes.iter().any(|c| c == family),
            "{family} not detected: {changes:?}"
        );
    }
    // Only the families asked for are compared.
    let mut old = before.clone();
    old.attrs = AttrSet::XATTRS;
    let mut new = after.clone();
    new.attrs = AttrSet::XATTRS;
    let only: Vec<String> = fim_engine::diff::compare(&old, &new)
        .into_iter()
        .map(|c| c.attribute)
        .collect();
    assert_eq!(only, ["XAttrs"]);
}

#[test]
fn incremental_check_rehashes_only_what_changed_and_still_catches_restored_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("bin")).unwrap();
    for i in 0..50 {
        fs::write(root.join(format!("bin/tool{i}")), format!("binary {i:04}")).unwrap();
    }
    let c = cfg("/ p+i+n+u+g+s+m+c+sha256\n");
    let db = dir.path().join("fim.db");
    init(&c, &root, &db);

    let quiet = check(&c, &root, &db, true);
    assert!(!quiet.has_differences());
    assert_eq!(
        quiet.stats.files_hashed, 0,
        "nothing changed, nothing rehashed"
    );
    assert_eq!(check(&c, &root, &db, false).stats.files_hashed, 50);

    // Same size, mtime restored: only ctime betrays it, and the incremental check must rehash.
    let victim = root.join("bin/tool7");
    let mtime = fs::metadata(&victim).unwrap().modified().unwrap();
    fs::write(&victim, b"TROJAN 0007").unwrap();
    fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let o = check(&c, &root, &db, true);
    assert_eq!(o.stats.files_hashed, 1);
    let attrs = changed_attrs(&o, "/bin/tool7");
    assert!(
        attrs.contains(&"SHA256".to_string()) && attrs.contains(&"Ctime".to_string()),
        "{attrs:?}"
    );
    assert!(!attrs.contains(&"Mtime".to_string()) && !attrs.contains(&"Size".to_string()));
}

#[test]
fn update_accepts_the_current_state_and_keeps_the_digest_honest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/a"), b"1").unwrap();
    let c = cfg("/etc p+sha512\n");
    let db = dir.path().join("fim.db");
    let first = init(&c, &root, &db);
    fs::write(root.join("etc/b"), b"2").unwrap();

    let out = DbWriter::create(&db, &header(&c)).unwrap();
    let upd = scan(
        &c,
        &ScanOptions::new(&root),
        Some(DbReader::open(&db).unwrap()),
        Some(out),
    )
    .unwrap();
    assert_eq!(paths(&upd.added), ["/etc/b"]);
    assert_eq!(upd.baseline_digest, first.written_digest);
    assert_ne!(upd.written_digest, first.written_digest);
    assert_eq!(
        upd.written_digest.as_deref(),
        Some(fim_engine::db::file_digest(&db).unwrap().as_str())
    );
    assert!(!check(&c, &root, &db, false).has_differences());
}

#[test]
fn narrowed_config_is_not_removal_and_anf_arf_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("log")).unwrap();
    fs::write(root.join("etc/a"), b"1").unwrap();
    fs::write(root.join("log/old"), b"1").unwrap();
    let db = dir.path().join("fim.db");
    init(&cfg("/ p+sha256\n"), &root, &db);

    let narrowed = check(&cfg("/ p+sha256\n!/log$\n"), &root, &db, false);
    assert!(
        !narrowed.has_differences(),
        "excluded subtree reported: {:?}",
        paths(&narrowed.removed)
    );

    fs::remove_file(root.join("log/old")).unwrap();
    fs::write(root.join("log/new"), b"2").unwrap();
    fs::write(root.join("etc/new"), b"2").unwrap();
    let tolerant = check(
        &cfg("/ p+sha256\n/log/ p+sha256+ANF+ARF\n"),
        &root,
        &db,
        false,
    );
    assert!(
        tolerant.removed.is_empty(),
        "{:?}",
        paths(&tolerant.removed)
    );
    assert_eq!(paths(&tolerant.added), ["/etc/new"]);
}

#[test]
fn excluded_directories_are_not_entered() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("proc/1")).unwrap();
    fs::write(root.join("proc/1/status"), b"x").unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/a"), b"x").unwrap();
    let c = cfg("/ p\n!/proc$ d\n");
    let db = dir.path().join("fim.db");
    init(&c, &root, &db);
    let recorded = paths(&DbReader::open(&db).unwrap().read_all().unwrap());
    assert!(
        recorded.iter().all(|p| !p.starts_with("/proc")),
        "{recorded:?}"
    );
    assert!(recorded.contains(&"/etc/a".to_string()) && recorded.contains(&"/".to_string()));
}

#[test]
fn collect_never_opens_special_files_and_reports_ftype() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let e = collect_one(
        &fifo,
        AttrSet::builtin("R").unwrap().union(AttrSet::all_hashes()),
    );
    assert_eq!(e.ftype, FileType::Fifo);
    assert!(e.hashes.is_empty() && e.error.is_none());
    let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
    let s = collect_one(&dir.path().join("sock"), AttrSet::all_hashes());
    assert_eq!(s.ftype, FileType::Socket);
    assert!(s.hashes.is_empty());
}
