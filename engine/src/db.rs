//! The baseline database: versioned, checksummed, streamed, and written atomically.
//!
//! Layout: `MAGIC`, a length-prefixed postcard `Header`, length-prefixed postcard `Entry` records in
//! path order, an end marker with the entry count, and the SHA-256 of everything before it. The
//! reader checks the trailer before trusting a single byte, so a truncated or edited database is
//! refused instead of producing a silently wrong comparison.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::entry::Entry;

const MAGIC: &[u8; 8] = b"KFIMDB\0\n";
/// 2: `Stat` records `st_dev` (the incremental check compares it).
pub const FORMAT_VERSION: u32 = 2;
const END_MARKER: u32 = u32::MAX;
const TRAILER_LEN: u64 = 4 + 8 + 32;
/// No single record is larger than this; a bigger length means corruption, not a huge file.
const MAX_RECORD: u32 = 64 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format_version: u32,
    /// Seconds since the epoch.
    pub created: i64,
    pub tool_version: String,
    /// SHA-256 (hex) of the config text the baseline was made with.
    pub config_digest: String,
    /// The root the node paths were read under (informational).
    pub root: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("database {} is corrupt: {reason} (it was kept as it is for inspection)", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("database {} has format version {found}; this fim-agent reads version {FORMAT_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write database {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

impl DbError {
    fn corrupt(path: &Path, reason: impl Into<String>) -> DbError {
        DbError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// The hex SHA-256 of a whole database file: what a node status records as `baselineDigest`.
pub fn file_digest(path: &Path) -> Result<String, DbError> {
    let open_err = |source| DbError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf).map_err(open_err)? {
            0 => return Ok(hex::encode(hasher.finalize())),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// Streams entries out of a verified database.
///
/// The file is opened once: the checksum is verified and the entries are read through that same
/// descriptor, so a database swapped by rename between verification and reading cannot be read
/// unverified. The entries are hashed again as they are read and checked against the verified
/// checksum at the end, so an in-place edit of the same file during the read is refused too.
pub struct DbReader {
    path: PathBuf,
    reader: HashingReader<BufReader<File>>,
    pub header: Header,
    /// Hex SHA-256 of the whole file.
    pub digest: String,
    /// The checksum verified at open (SHA-256 of everything before it).
    checksum: [u8; 32],
    expected_count: u64,
    read_count: u64,
    done: bool,
}

/// Hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl DbReader {
    pub fn open(path: &Path) -> Result<DbReader, DbError> {
        let file = File::open(path).map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        DbReader::from_file(file, path)
    }

    /// Verifies and reads the database open as `file` (`path` names it in messages).
    pub fn from_file(mut file: File, path: &Path) -> Result<DbReader, DbError> {
        let open_err = |source| DbError::Open {
            path: path.to_path_buf(),
            source,
        };
        let len = file.metadata().map_err(open_err)?.len();
        if len < MAGIC.len() as u64 + TRAILER_LEN {
            return Err(DbError::corrupt(path, format!("only {len} bytes long")));
        }
        // First pass: the checksum over everything but the stored checksum, and the file digest.
        let mut body = Sha256::new();
        let mut limited = (&mut file).take(len - 32);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = limited.read(&mut buf).map_err(open_err)?;
            if n == 0 {
                break;
            }
            body.update(&buf[..n]);
        }
        let mut stored = [0u8; 32];
        file.read_exact(&mut stored).map_err(open_err)?;
        let mut whole = body.clone();
        whole.update(stored);
        if body.finalize()[..] != stored[..] {
            return Err(DbError::corrupt(path, "checksum mismatch"));
        }
        let digest = hex::encode(whole.finalize());

        // Second pass through the same descriptor (never the path again).
        file.seek(SeekFrom::Start(0)).map_err(open_err)?;
        let mut reader = HashingReader {
            inner: BufReader::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
        };
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic).map_err(open_err)?;
        if &magic != MAGIC {
            return Err(DbError::corrupt(
                path,
                "not a kube-fim database (bad magic)",
            ));
        }
        let header_bytes =
            read_record(&mut reader, path)?.ok_or_else(|| DbError::corrupt(path, "no header"))?;
        let header: Header = postcard::from_bytes(&header_bytes)
            .map_err(|e| DbError::corrupt(path, format!("unreadable header: {e}")))?;
        if header.format_version != FORMAT_VERSION {
            return Err(DbError::Version {
                path: path.to_path_buf(),
                found: header.format_version,
            });
        }
        Ok(DbReader {
            path: path.to_path_buf(),
            reader,
            header,
            digest,
            checksum: stored,
            expected_count: 0,
            read_count: 0,
            done: false,
        })
    }

    /// The next entry in path order, `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, DbError> {
        if self.done {
            return Ok(None);
        }
        match read_record(&mut self.reader, &self.path)? {
            Some(bytes) => {
                let entry: Entry = postcard::from_bytes(&bytes)
                    .map_err(|e| DbError::corrupt(&self.path, format!("unreadable entry: {e}")))?;
                self.read_count += 1;
                Ok(Some(entry))
            }
            None => {
                let mut count = [0u8; 8];
                self.reader
                    .read_exact(&mut count)
                    .map_err(|e| DbError::corrupt(&self.path, format!("truncated trailer: {e}")))?;
                self.expected_count = u64::from_le_bytes(count);
                if self.expected_count != self.read_count {
                    return Err(DbError::corrupt(
                        &self.path,
                        format!(
                            "trailer says {} entries, found {}",
                            self.expected_count, self.read_count
                        ),
                    ));
                }
                // What was read must be what was verified: the file may have been edited in
                // place (same inode, same descriptor) after the first pass.
                let read = std::mem::take(&mut self.reader.hasher).finalize();
                if read[..] != self.checksum[..] {
                    return Err(DbError::corrupt(
                        &self.path,
                        "changed while it was being read",
                    ));
                }
                self.done = true;
                Ok(None)
            }
        }
    }

    /// Reads every remaining entry (tests and small databases).
    pub fn read_all(mut self) -> Result<Vec<Entry>, DbError> {
        let mut out = Vec::new();
        while let Some(e) = self.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }
}

/// `Ok(None)` at the end marker.
fn read_record(reader: &mut impl Read, path: &Path) -> Result<Option<Vec<u8>>, DbError> {
    let mut len = [0u8; 4];
    reader
        .read_exact(&mut len)
        .map_err(|e| DbError::corrupt(path, format!("truncated: {e}")))?;
    let len = u32::from_le_bytes(len);
    if len == END_MARKER {
        return Ok(None);
    }
    if len > MAX_RECORD {
        return Err(DbError::corrupt(path, format!("record of {len} bytes")));
    }
    let mut bytes = vec![0u8; len as usize];
    reader
        .read_exact(&mut bytes)
        .map_err(|e| DbError::corrupt(path, format!("truncated record: {e}")))?;
    Ok(Some(bytes))
}

/// Writes a database next to its final path and renames it into place only on `finish`, so a
/// crash or an abandoned scan never leaves a partial baseline behind.
pub struct DbWriter {
    path: PathBuf,
    temp: Option<tempfile::NamedTempFile>,
    out: HashingWriter<BufWriter<File>>,
    count: u64,
    last_path: Option<Box<[u8]>>,
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl DbWriter {
    pub fn create(path: &Path, header: &Header) -> Result<DbWriter, DbError> {
        let write_err = |source| DbError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".fim-db-")
            .tempfile_in(&dir)
            .map_err(write_err)?;
        let file = temp.reopen().map_err(write_err)?;
        let mut writer = DbWriter {
            path: path.to_path_buf(),
            temp: Some(temp),
            out: HashingWriter {
                inner: BufWriter::with_capacity(256 * 1024, file),
                hasher: Sha256::new(),
            },
            count: 0,
            last_path: None,
        };
        writer.out.write_all(MAGIC).map_err(write_err)?;
        writer.write_record(
            &postcard::to_stdvec(header)
                .map_err(io::Error::other)
                .map_err(write_err)?,
        )?;
        Ok(writer)
    }

    fn write_record(&mut self, bytes: &[u8]) -> Result<(), DbError> {
        let write_err = |source| DbError::Write {
            path: self.path.clone(),
            source,
        };
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| write_err(io::Error::other("record too large")))?;
        self.out.write_all(&len.to_le_bytes()).map_err(write_err)?;
        self.out.write_all(bytes).map_err(write_err)
    }

    /// Entries must come in strictly increasing path order (the reader merges on it).
    pub fn push(&mut self, entry: &Entry) -> Result<(), DbError> {
        if self
            .last_path
            .as_deref()
            .is_some_and(|last| last >= &entry.path[..])
        {
            return Err(DbError::Write {
                path: self.path.clone(),
                source: io::Error::other("entries out of order"),
            });
        }
        let bytes = postcard::to_stdvec(entry).map_err(|e| DbError::Write {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        self.write_record(&bytes)?;
        self.count += 1;
        self.last_path = Some(entry.path.clone());
        Ok(())
    }

    /// Writes the trailer, syncs, renames into place and syncs the directory. Returns the file digest.
    pub fn finish(mut self) -> Result<String, DbError> {
        let path = self.path.clone();
        let write_err = |source| DbError::Write {
            path: path.clone(),
            source,
        };
        self.out
            .write_all(&END_MARKER.to_le_bytes())
            .map_err(write_err)?;
        self.out
            .write_all(&self.count.to_le_bytes())
            .map_err(write_err)?;
        let hasher = std::mem::take(&mut self.out.hasher);
        // The digest of the file as written (body and checksum), computed here rather than read
        // back from the path after the rename, where another file could already be.
        let mut whole = hasher.clone();
        let body = hasher.finalize();
        whole.update(body);
        self.out.inner.write_all(&body).map_err(write_err)?;
        self.out.inner.flush().map_err(write_err)?;
        self.out.inner.get_ref().sync_all().map_err(write_err)?;
        let temp = self.temp.take().expect("finish is called once");
        temp.persist(&path).map_err(|e| write_err(e.error))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(write_err)?;
        }
        Ok(hex::encode(whole.finalize()))
    }
}

/// Copies a database aside as `<db>.<suffix>` (used before `update` replaces it).
pub fn backup(path: &Path, suffix: &str) -> io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{suffix}"));
    let target = PathBuf::from(name);
    fs::copy(path, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::AttrSet;
    use crate::entry::{FileType, Stat};
    use crate::hash::Algorithm;

    fn header() -> Header {
        Header {
            format_version: FORMAT_VERSION,
            created: 1_700_000_000,
            tool_version: "test".into(),
            config_digest: "abc".into(),
            root: "/".into(),
        }
    }

    fn entry(path: &[u8]) -> Entry {
        Entry {
            path: path.into(),
            ftype: FileType::Regular,
            attrs: AttrSet::PERM.union(AttrSet::hash(Algorithm::Sha256)),
            stat: Stat {
                mode: 0o100644,
                size: 12,
                ..Stat::default()
            },
            link_target: None,
            xattrs: Some(vec![(b"user.k".as_slice().into(), b"v".as_slice().into())]),
            e2fsattrs: None,
            hashes: vec![(Algorithm::Sha256, vec![7u8; 32].into())],
            error: None,
        }
    }

    fn write(path: &Path, entries: &[Entry]) -> String {
        let mut w = DbWriter::create(path, &header()).unwrap();
        for e in entries {
            w.push(e).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_keeps_every_field_and_any_path_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("aide.db");
        let entries = vec![entry(b"/a"), entry(b"/b\nnewline"), entry(b"/c\xff\xfe")];
        let digest = write(&db, &entries);
        assert_eq!(digest, file_digest(&db).unwrap());
        let reader = DbReader::open(&db).unwrap();
        assert_eq!(reader.header, header());
        assert_eq!(reader.digest, digest);
        assert_eq!(reader.read_all().unwrap(), entries);
        // No temp files are left next to it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("aide.db");
        write(&db, &[entry(b"/a"), entry(b"/b")]);
        let good = fs::read(&db).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            fs::write(&db, &bad).unwrap();
            match DbReader::open(&db).and_then(|r| r.read_all()) {
                Err(DbError::Corrupt { .. }) => {}
                other => panic!("flip at byte {i} not detected: {other:?}"),
            }
        }
    }

    #[test]
    fn truncation_and_garbage_are_corrupt_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("aide.db");
        write(&db, &[entry(b"/a")]);
        let good = fs::read(&db).unwrap();
        for cut in [0, 5, good.len() / 2, good.len() - 1] {
            fs::write(&db, &good[..cut]).unwrap();
            let err = DbReader::open(&db)
                .err()
                .expect("truncated database accepted");
            assert!(err.to_string().contains("corrupt"), "{err}");
        }
    }

    #[test]
    fn out_of_order_entries_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("aide.db");
        let mut w = DbWriter::create(&db, &header()).unwrap();
        w.push(&entry(b"/b")).unwrap();
        assert!(w.push(&entry(b"/a")).is_err());
        drop(w);
        assert!(!db.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temp file left behind"
        );
    }

    #[test]
    fn an_edit_in_place_while_reading_is_refused() {
        // Larger than the reader's buffer, so the tail is read from the file after the edit.
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("aide.db");
        let entries: Vec<Entry> = (0..20_000)
            .map(|i| entry(format!("/f{i:06}").as_bytes()))
            .collect();
        write(&db, &entries);
        let mut reader = DbReader::open(&db).unwrap();
        assert!(reader.next_entry().unwrap().is_some());
        // Same inode, same descriptor: flip one byte of the last entry's hash (still decodable).
        let bytes = fs::read(&db).unwrap();
        let at = bytes.len() - TRAILER_LEN as usize - 5;
        assert_eq!(bytes[at], 7, "a hash byte of the last entry");
        {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(&db).unwrap();
            f.write_all_at(&[8], at as u64).unwrap();
        }
        let mut result = Ok(None);
        for _ in 0..entries.len() {
            result = reader.next_entry();
            if result.is_err() {
                break;
            }
        }
        match result {
            Err(DbError::Corrupt { reason, .. }) => {
                assert!(
                    reason.contains("changed while it was being read"),
                    "{reason}"
                )
            }
            other => panic!("edited database read without error: {other:?}"),
        }
    }

    #[test]
    fn reading_goes_through_the_descriptor_that_was_verified() {
        // A database renamed over the path after the open is not what the reader returns.
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("aide.db");
        let other = dir.path().join("other.db");
        write(&db, &[entry(b"/a")]);
        write(&other, &[entry(b"/evil")]);
        let file = File::open(&db).unwrap();
        fs::rename(&other, &db).unwrap();
        let reader = DbReader::from_file(file, &db).unwrap();
        assert_eq!(reader.read_all().unwrap(), vec![entry(b"/a")]);
    }

    #[test]
    fn the_written_digest_is_the_digest_of_the_bytes_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("aide.db");
        let digest = write(&db, &[entry(b"/a"), entry(b"/b")]);
        let bytes = fs::read(&db).unwrap();
        assert_eq!(digest, hex::encode(Sha256::digest(&bytes)));
    }

    #[test]
    fn other_format_version_is_a_version_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("aide.db");
        let mut h = header();
        h.format_version = 99;
        let w = DbWriter::create(&db, &h).unwrap();
        w.finish().unwrap();
        assert!(matches!(
            DbReader::open(&db),
            Err(DbError::Version { found: 99, .. })
        ));
    }
}
