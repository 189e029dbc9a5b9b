//! The baseline of one FileIntegrity on this node, kept under `--db-dir/<fileintegrity>/`:
//!
//! ```text
//! baseline.db             the database checks compare against
//! baseline.conf           the rules it was made with (their digest is in the database header)
//! backups/<time>.db       earlier baselines, kept at most `maxBackups` (with their .conf and
//!                         the .report.txt of their last failure)
//! reports/latest.txt      the full text of the latest failure report
//! .lock                   flock(2)ed by the agent using this directory
//! ```
//!
//! Every rename or removal here is followed by an fsync of the directories involved, so that a
//! crash cannot leave a directory whose entries disagree with what the node status records.
//!
//! The database's digest is recorded in the node status. Whether the file on disk may be used is
//! decided by [`assess`] from that record alone: a baseline that changed or vanished without a
//! re-init request is an error, never silently replaced.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use fim_engine::db::DbReader;

/// What to do with the baseline on disk, given the digest recorded in the node status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assessment {
    /// Neither a database nor a record: create the first baseline.
    Initialise,
    /// A database but no record (issue 10, item 2): it is never adopted. It goes to the backups
    /// (kept for inspection) and a new baseline is made from the node as it is; the operator
    /// records it only if it awaited this node's first baseline, and otherwise reports the node
    /// as "baseline replaced".
    SetAside { digest: String },
    /// The database is the recorded one.
    Use { digest: String },
    /// Something is wrong; scans stop until a re-init request.
    Broken { reason: String },
}

/// Decides whether the baseline on disk can be used. `on_disk` is the digest of the database
/// file (or the error reading it), `recorded` the digest in the node status.
pub fn assess(
    db: &Path,
    on_disk: Option<Result<String, String>>,
    recorded: Option<&str>,
) -> Assessment {
    match (on_disk, recorded) {
        (None, None) => Assessment::Initialise,
        (None, Some(recorded)) => Assessment::Broken {
            reason: format!(
                "the baseline database {} is missing, but the node status records baseline \
                 {recorded}; it was removed outside a re-init request. Annotate the \
                 FileIntegrity with fim.kubefim.io/re-init to create a new baseline",
                db.display()
            ),
        },
        (Some(Err(e)), _) => Assessment::Broken {
            reason: format!(
                "the baseline database {} cannot be used: {e}; it is kept for inspection. \
                 Annotate the FileIntegrity with fim.kubefim.io/re-init to create a new baseline",
                db.display()
            ),
        },
        (Some(Ok(digest)), Some(recorded)) if digest != recorded => Assessment::Broken {
            reason: format!(
                "the baseline database {} has digest {digest} but the node status records \
                 {recorded}: it was replaced or modified outside a re-init request. It is kept \
                 for inspection; annotate the FileIntegrity with fim.kubefim.io/re-init to \
                 create a new baseline",
                db.display()
            ),
        },
        (Some(Ok(digest)), Some(_)) => Assessment::Use { digest },
        // No record: whoever wrote this file (this agent before a crash, an earlier
        // FileIntegrity of the same name, or root on the node), its content is not trusted.
        (Some(Ok(digest)), None) => Assessment::SetAside { digest },
    }
}

/// One of a store's file paths.
type StorePath = fn(&Store) -> PathBuf;

/// What a re-init backs up, and the extension each gets in `backups/`.
const BACKED_UP: [(StorePath, &str); 3] = [
    (Store::database, "db"),
    (Store::rules, "conf"),
    (Store::report, "report.txt"),
];

/// The baseline files of one FileIntegrity.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(db_dir: &Path, file_integrity: &str) -> Store {
        Store {
            dir: db_dir.join(file_integrity),
        }
    }

    pub fn create_dirs(&self) -> io::Result<()> {
        fs::create_dir_all(self.dir.join("backups"))?;
        fs::create_dir_all(self.dir.join("reports"))
    }

    pub fn database(&self) -> PathBuf {
        self.dir.join("baseline.db")
    }

    pub fn rules(&self) -> PathBuf {
        self.dir.join("baseline.conf")
    }

    pub fn report(&self) -> PathBuf {
        self.dir.join("reports").join("latest.txt")
    }

    fn backups(&self) -> PathBuf {
        self.dir.join("backups")
    }

    /// The database, verified, `None` when there is none, or why it cannot be read. What is
    /// later read from it comes through the descriptor that was verified.
    pub fn open_database(&self) -> Option<Result<DbReader, String>> {
        let db = self.database();
        match fs::File::open(&db) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(format!("cannot open it: {e}"))),
            Ok(file) => Some(DbReader::from_file(file, &db).map_err(|e| e.to_string())),
        }
    }

    /// The database's digest, `None` when there is none, or why it cannot be read.
    pub fn digest_on_disk(&self) -> Option<Result<String, String>> {
        self.open_database().map(|r| r.map(|reader| reader.digest))
    }

    /// Takes the directory for this process: a second agent on the same baseline directory
    /// (two DaemonSets, a pod not yet gone) would overwrite the first one's baseline. The lock
    /// is held until the returned value is dropped (or the process ends).
    pub fn lock(&self) -> io::Result<DirLock> {
        fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another fim-agent is using the baseline directory {} (it holds {}); \
                     two agents must never share one baseline",
                    self.dir.display(),
                    path.display()
                ),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves the current database, rules and latest failure report (if any) into `backups/`
    /// under `stamp`, then keeps only the newest `keep` backups. Returns the files removed.
    pub fn back_up(&self, stamp: &str, keep: usize) -> io::Result<Vec<PathBuf>> {
        for (file, ext) in BACKED_UP.iter().map(|(f, ext)| (f(self), *ext)) {
            if file.exists() {
                fs::rename(&file, self.backups().join(format!("{stamp}.{ext}")))?;
            }
        }
        // The renames are durable before a new baseline is written in their place.
        sync_dir(&self.backups())?;
        sync_dir(&self.dir)?;
        sync_dir(&self.dir.join("reports"))?;
        self.prune(keep)
    }

    /// Backup stamps, oldest first.
    pub fn backup_stamps(&self) -> io::Result<Vec<String>> {
        let mut stamps: Vec<String> = match fs::read_dir(self.backups()) {
            Ok(dir) => dir
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.strip_suffix(".db").map(str::to_owned)
                })
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        stamps.sort();
        Ok(stamps)
    }

    fn prune(&self, keep: usize) -> io::Result<Vec<PathBuf>> {
        let stamps = self.backup_stamps()?;
        let excess = stamps.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for stamp in &stamps[..excess] {
            for (_, ext) in BACKED_UP {
                let path = self.backups().join(format!("{stamp}.{ext}"));
                match fs::remove_file(&path) {
                    Ok(()) => removed.push(path),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !removed.is_empty() {
            sync_dir(&self.backups())?;
        }
        Ok(removed)
    }

    /// Removes temporary files of database writes that never finished (the agent was killed).
    pub fn remove_stale_temporaries(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(b".fim-db-")
            {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

/// Held while this process uses a baseline directory ([`Store::lock`]).
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

/// fsync(2) of a directory: makes the renames and removals in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    match fs::File::open(dir) {
        Ok(d) => d.sync_all(),
        // A directory that does not exist has nothing to make durable.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, then
/// syncs the directory so the rename survives a crash.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// A sortable, filesystem-safe timestamp for backup names (`20261122T101502.123Z`).
pub fn stamp(now: std::time::SystemTime) -> String {
    let t = k8s_openapi::jiff::Timestamp::try_from(now).unwrap_or_default();
    t.strftime("%Y%m%dT%H%M%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = "/var/lib/kube-fim/fi/baseline.db";

    #[test]
    fn no_database_and_no_record_initialises() {
        assert_eq!(assess(Path::new(DB), None, None), Assessment::Initialise);
    }

    #[test]
    fn the_recorded_database_is_used() {
        let a = assess(Path::new(DB), Some(Ok("abc".into())), Some("abc"));
        assert_eq!(
            a,
            Assessment::Use {
                digest: "abc".into()
            }
        );
    }

    #[test]
    fn a_database_without_record_is_never_adopted() {
        // Before: adopted and recorded as the node's baseline, whoever put it there.
        let a = assess(Path::new(DB), Some(Ok("abc".into())), None);
        assert_eq!(
            a,
            Assessment::SetAside {
                digest: "abc".into()
            }
        );
    }

    #[test]
    fn a_replaced_database_is_broken_and_says_why() {
        let Assessment::Broken { reason } =
            assess(Path::new(DB), Some(Ok("evil".into())), Some("abc"))
        else {
            panic!("not broken")
        };
        assert!(
            reason.contains("has digest evil but the node status records abc"),
            "{reason}"
        );
        assert!(
            reason.contains(DB) && reason.contains("fim.kubefim.io/re-init"),
            "{reason}"
        );
    }

    #[test]
    fn a_missing_database_with_a_record_is_broken() {
        let Assessment::Broken { reason } = assess(Path::new(DB), None, Some("abc")) else {
            panic!("not broken")
        };
        assert!(
            reason.contains("is missing") && reason.contains("abc"),
            "{reason}"
        );
    }

    #[test]
    fn an_unreadable_database_is_broken_even_without_record() {
        let a = assess(Path::new(DB), Some(Err("checksum mismatch".into())), None);
        assert!(matches!(a, Assessment::Broken { reason } if reason.contains("checksum mismatch")));
    }

    #[test]
    fn backups_are_pruned_to_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "fi");
        store.create_dirs().unwrap();
        for i in 0..4 {
            fs::write(store.database(), format!("db {i}")).unwrap();
            fs::write(store.rules(), format!("conf {i}")).unwrap();
            fs::write(store.report(), format!("report {i}")).unwrap();
            store
                .back_up(&format!("2026010{i}T000000.000Z"), 2)
                .unwrap();
        }
        assert_eq!(
            store.backup_stamps().unwrap(),
            ["20260102T000000.000Z", "20260103T000000.000Z"]
        );
        let kept = dir.path().join("fi/backups/20260103T000000.000Z.conf");
        assert_eq!(fs::read_to_string(kept).unwrap(), "conf 3");
        let report = dir
            .path()
            .join("fi/backups/20260103T000000.000Z.report.txt");
        assert_eq!(fs::read_to_string(report).unwrap(), "report 3");
        let files = fs::read_dir(dir.path().join("fi/backups")).unwrap().count();
        assert_eq!(files, 6, "2 backups of 3 files each");
        assert!(!store.database().exists(), "moved into backups/");
        assert_eq!(store.digest_on_disk(), None);
    }

    #[test]
    fn a_second_agent_cannot_take_the_same_baseline_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "fi");
        let first = store.lock().unwrap();
        // flock(2) locks belong to the open file: a second open conflicts even in this process,
        // exactly as a second agent process would.
        let err = Store::new(dir.path(), "fi").lock().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(err.to_string().contains("another fim-agent"), "{err}");
        assert!(
            err.to_string()
                .contains(&dir.path().join("fi").display().to_string())
        );
        // Another FileIntegrity's directory is independent.
        let _other = Store::new(dir.path(), "other").lock().unwrap();
        drop(first);
        let _again = store.lock().expect("released with the first agent");
    }

    #[test]
    fn writes_replace_atomically_and_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baseline.conf");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp left");
        sync_dir(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn stamps_sort_in_time_order() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123);
        let later = t + std::time::Duration::from_secs(1);
        assert!(stamp(t) < stamp(later));
        assert_eq!(stamp(t).len(), "20261122T101502.123Z".len());
    }
}
