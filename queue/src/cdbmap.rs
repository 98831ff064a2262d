//! Read-only cdb files (`morercpthosts.cdb`, `users/cdb`, recipient cdbs)
//! as a policy [`Lookup`].
//!
//! A small reader of djb's format rather than the `cdb` crate's: that one
//! rejects the 2048-byte empty cdb `cdbmake` writes for an empty list,
//! overflows (a panic in debug builds) on corrupt offsets, allocates a
//! corrupt record's length (up to 4 GiB) before checking it, and maps the
//! file, so a truncation in place would be a SIGBUS. Here every offset is
//! checked against the file and reads are `pread`s, so a bad file is an
//! error, never a crash. (The crate is used in the tests to write cdbs.)

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sqmail_core::policy::{Lookup, LookupError};

/// The 256 (position, slots) pairs at the start of every cdb.
const HEADER: u64 = 2048;

/// A cdb up to this size is read into memory by [`CdbMap::load`]; a
/// larger one is read from the file as it is looked up.
const IN_MEMORY: u64 = 16 << 20;

/// An open cdb file. Keeps the file it opened: a cdb replaced by rename
/// (as cdbmake does) is seen only when the map is opened again.
#[derive(Debug)]
pub struct CdbMap {
    bytes: Source,
    len: u64,
    path: PathBuf,
}

#[derive(Debug)]
enum Source {
    File(File),
    Memory(Vec<u8>),
}

impl CdbMap {
    /// Open `path`. A missing file is an `io::ErrorKind::NotFound` error
    /// that callers may treat as "no such list"; a file too short or too
    /// long to be a cdb is `InvalidData`.
    pub fn open(path: &Path) -> io::Result<CdbMap> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Self::new(Source::File(file), len, path)
    }

    /// [`CdbMap::open`], reading a cdb of up to 16 MiB into memory so that
    /// lookups make no system calls; with the metadata of what it read.
    pub fn load(path: &Path) -> io::Result<(CdbMap, Metadata)> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if meta.len() > IN_MEMORY {
            return Ok((Self::new(Source::File(file), meta.len(), path)?, meta));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // No more than was measured, should the file grow meanwhile: the
        // checks against `len` make a cut-off cdb an error, not a guess.
        file.take(meta.len()).read_to_end(&mut bytes)?;
        let len = bytes.len() as u64;
        Ok((Self::new(Source::Memory(bytes), len, path)?, meta))
    }

    fn new(bytes: Source, len: u64, path: &Path) -> io::Result<CdbMap> {
        if !(HEADER..=u64::from(u32::MAX)).contains(&len) {
            return Err(invalid());
        }
        Ok(CdbMap {
            bytes,
            len,
            path: path.to_owned(),
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data of the first record with `key`.
    pub fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let Some((pos, dlen)) = self.find(key)? else {
            return Ok(None);
        };
        let mut data = vec![0; dlen as usize];
        self.read(&mut data, pos)?;
        Ok(Some(data))
    }

    /// Is there a record with `key`?
    pub fn contains_key(&self, key: &[u8]) -> io::Result<bool> {
        Ok(self.find(key)?.is_some())
    }

    /// djb's `cdb_find`: the position and length of the first matching
    /// record's data, every offset checked against the file.
    fn find(&self, key: &[u8]) -> io::Result<Option<(u64, u64)>> {
        let h = hash(key);
        let (hpos, hslots) = self.pair(u64::from(h & 255) * 8)?;
        if hslots == 0 {
            return Ok(None);
        }
        let table_end = hpos + hslots * 8;
        if table_end > self.len {
            return Err(invalid());
        }
        let mut kpos = hpos + (u64::from(h >> 8) % hslots) * 8;
        let mut record_key = vec![0; key.len()];
        for _ in 0..hslots {
            let (slot_hash, pos) = self.pair(kpos)?;
            if pos == 0 {
                return Ok(None);
            }
            kpos += 8;
            if kpos == table_end {
                kpos = hpos;
            }
            if slot_hash != u64::from(h) {
                continue;
            }
            let (klen, dlen) = self.pair(pos)?;
            if klen != key.len() as u64 {
                continue;
            }
            let data = pos + 8 + klen;
            if data + dlen > self.len {
                return Err(invalid());
            }
            self.read(&mut record_key, pos + 8)?;
            if record_key == key {
                return Ok(Some((data, dlen)));
            }
        }
        Ok(None)
    }

    /// Two little-endian u32s at `pos`.
    fn pair(&self, pos: u64) -> io::Result<(u64, u64)> {
        let mut buf = [0; 8];
        self.read(&mut buf, pos)?;
        let a = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let b = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        Ok((u64::from(a), u64::from(b)))
    }

    fn read(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        if pos + buf.len() as u64 > self.len {
            return Err(invalid());
        }
        match &self.bytes {
            Source::File(file) => file.read_exact_at(buf, pos).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    invalid()
                } else {
                    e
                }
            }),
            Source::Memory(bytes) => {
                // In bounds: pos + buf.len() <= len == bytes.len().
                let start = pos as usize;
                buf.copy_from_slice(&bytes[start..start + buf.len()]);
                Ok(())
            }
        }
    }
}

/// A cdb named by its path and looked up as if opened anew each time, so
/// that one replaced by rename (as cdbmake does) applies at once, as when
/// qmail-lspawn or qmail-smtpd open it for every lookup; but for the price
/// of one `stat`: the file is read again only when the path names another
/// file, or the file changed.
#[derive(Debug)]
pub struct FreshCdb {
    path: PathBuf,
    held: Mutex<Option<(Identity, Arc<CdbMap>)>>,
}

/// What tells one version of a file from another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(meta: &Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl FreshCdb {
    pub fn new(path: PathBuf) -> FreshCdb {
        FreshCdb {
            path,
            held: Mutex::new(None),
        }
    }

    /// The cdb as the path names it now; errors as [`CdbMap::open`]'s.
    pub fn get(&self) -> io::Result<Arc<CdbMap>> {
        let now = Identity::of(&std::fs::metadata(&self.path)?);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((identity, map)) = held.as_ref() {
            if *identity == now {
                return Ok(Arc::clone(map));
            }
        }
        let (map, meta) = CdbMap::load(&self.path)?;
        let map = Arc::new(map);
        // Kept under the identity of what was read, so a change between
        // the stat and the read is seen at the next lookup.
        *held = Some((Identity::of(&meta), Arc::clone(&map)));
        Ok(map)
    }
}

impl Lookup for FreshCdb {
    fn contains(&self, key: &[u8]) -> Result<bool, LookupError> {
        self.get()
            .and_then(|map| map.contains_key(key))
            .map_err(|e| LookupError(format!("{}: {e}", self.path.display())))
    }
}

impl Lookup for CdbMap {
    fn contains(&self, key: &[u8]) -> Result<bool, LookupError> {
        self.contains_key(key)
            .map_err(|e| LookupError(format!("{}: {e}", self.path.display())))
    }
}

fn invalid() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "not a valid cdb file")
}

/// cdb's hash: h = 5381; h = (h * 33) ^ c.
fn hash(key: &[u8]) -> u32 {
    key.iter()
        .fold(5381u32, |h, &c| (h << 5).wrapping_add(h) ^ u32::from(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(dir: &Path, records: &[(&[u8], &[u8])]) -> PathBuf {
        let path = dir.join("t.cdb");
        let mut w = cdb::CDBWriter::create(path.display().to_string()).unwrap();
        for (k, v) in records {
            w.add(k, v).unwrap();
        }
        w.finish().unwrap();
        path
    }

    #[test]
    fn finds_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let path = build(
            tmp.path(),
            &[
                (b"example.com", b""),
                (b"!joe", b"data"),
                (b"example.com", b"second"),
            ],
        );
        let m = CdbMap::open(&path).unwrap();
        assert!(m.contains(b"example.com").unwrap());
        assert_eq!(m.get(b"example.com").unwrap(), Some(Vec::new()));
        assert_eq!(m.get(b"!joe").unwrap(), Some(b"data".to_vec()));
        assert!(!m.contains(b"example.org").unwrap());
        assert!(!m.contains(b"").unwrap());
    }

    #[test]
    fn empty_cdb_is_empty_not_invalid() {
        // What cdbmake writes for no records: 256 pairs (2048, 0).
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("empty.cdb");
        let header: Vec<u8> = (0..256)
            .flat_map(|_| [2048u32.to_le_bytes(), 0u32.to_le_bytes()].concat())
            .collect();
        std::fs::write(&path, header).unwrap();
        let m = CdbMap::open(&path).unwrap();
        assert!(!m.contains(b"anything").unwrap());
    }

    #[test]
    fn errors() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = CdbMap::open(&tmp.path().join("none.cdb")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let short = tmp.path().join("short.cdb");
        std::fs::write(&short, b"abc").unwrap();
        assert_eq!(
            CdbMap::open(&short).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A table that points past the end of the file.
        let bad = tmp.path().join("bad.cdb");
        let mut bytes = vec![0xff; 2048];
        bytes.extend_from_slice(&[0; 16]);
        std::fs::write(&bad, bytes).unwrap();
        let m = CdbMap::open(&bad).unwrap();
        let err = m.contains(b"x").unwrap_err();
        assert!(err.0.contains("bad.cdb"), "{}", err.0);
    }

    #[test]
    fn a_fresh_cdb_sees_a_replacement_and_reads_a_kept_one_from_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let path = build(tmp.path(), &[(b"a", b"1")]);
        let fresh = FreshCdb::new(path.clone());
        let first = fresh.get().unwrap();
        assert_eq!(first.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert!(
            Arc::ptr_eq(&first, &fresh.get().unwrap()),
            "unchanged: kept"
        );
        // Replaced by rename, as cdbmake does.
        let next = tmp.path().join("next");
        std::fs::create_dir(&next).unwrap();
        let built = build(&next, &[(b"a", b"2")]);
        std::fs::rename(built, &path).unwrap();
        assert_eq!(fresh.get().unwrap().get(b"a").unwrap(), Some(b"2".to_vec()));
        assert!(fresh.contains(b"a").unwrap());
        // The kept map answers from memory: the file may go meanwhile.
        let kept = fresh.get().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(kept.get(b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(fresh.get().unwrap_err().kind(), io::ErrorKind::NotFound);
        let err = fresh.contains(b"a").unwrap_err();
        assert!(err.0.contains("t.cdb"), "{}", err.0);
    }

    proptest! {
        #[test]
        fn agrees_with_cdb_writer(
            keys in proptest::collection::hash_set(proptest::collection::vec(any::<u8>(), 0..12), 0..60),
            probe in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let keys: Vec<Vec<u8>> = keys.into_iter().collect();
            let records: Vec<(&[u8], &[u8])> =
                keys.iter().map(|k| (k.as_slice(), k.as_slice())).collect();
            let path = build(tmp.path(), &records);
            let (loaded, _) = CdbMap::load(&path).unwrap();
            for m in [CdbMap::open(&path).unwrap(), loaded] {
                for k in &keys {
                    prop_assert_eq!(m.get(k).unwrap(), Some(k.clone()));
                }
                prop_assert_eq!(m.contains_key(&probe).unwrap(), keys.contains(&probe));
            }
        }

        #[test]
        fn garbage_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 2048..2300),
            key in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("g.cdb");
            std::fs::write(&path, &bytes).unwrap();
            let m = CdbMap::open(&path).unwrap();
            let (loaded, _) = CdbMap::load(&path).unwrap();
            prop_assert_eq!(m.get(&key).ok(), loaded.get(&key).ok());
        }
    }
}
