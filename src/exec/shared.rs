//! Inputs shared by several samples of a run — a table of crops names the same photo in many
//! rows — are opened, hashed and decoded once: each row still is its own sample (records,
//! errors, resume), but the rows of one file take its header, content hash and decoded voxels
//! from here. A file is released when the last row that reads it is done, and decoded files
//! are kept only within a byte budget (beyond it, rows decode for themselves), so memory stays
//! bounded however the rows are ordered. A file that fails to read fails every row that names
//! it with the same message, read once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::io::{self, Header, ReadLimits};
use crate::ops::Value;

/// What is known of one shared file.
#[derive(Default)]
struct Cell {
    header: OnceLock<Result<Header, String>>,
    hash: OnceLock<Result<String, String>>,
    /// `Ok(None)`: decoded, but not kept (over the budget).
    data: OnceLock<Result<Option<Arc<Value>>, String>>,
}

/// The run's shared inputs (see the module documentation).
pub struct SharedInputs {
    budget: u64,
    held: AtomicU64,
    /// Uses not yet done, per file that more than one row reads (by [`key`]).
    uses: Mutex<HashMap<Key, (usize, Arc<Cell>)>>,
    /// Content hashes are kept in (and taken from) this store's input-hash cache: the tasks
    /// of a split run hash a volume once, not once per block.
    hashes: Option<crate::store::Store>,
}

/// A file's path by a 128-bit hash: counting the rows of a table that names a million files
/// takes 24 bytes per file, not a copy of every path.
type Key = [u64; 2];

fn key(path: &Path) -> Key {
    crate::util::hash128(path.as_os_str().as_encoded_bytes())
}

impl SharedInputs {
    /// Nothing shared: every call reads the file itself.
    pub fn none() -> SharedInputs {
        SharedInputs { budget: 0, held: AtomicU64::new(0), uses: Mutex::new(HashMap::new()), hashes: None }
    }

    /// From every row's files (a file named twice by one row counts twice); decoded files are
    /// kept while they take at most `budget` bytes.
    pub fn new(files: impl Iterator<Item = PathBuf>, budget: u64) -> SharedInputs {
        let mut counts: HashMap<Key, usize> = HashMap::new();
        for f in files {
            *counts.entry(key(&f)).or_insert(0) += 1;
        }
        let uses = counts.into_iter().filter(|(_, n)| *n > 1).map(|(p, n)| (p, (n, Arc::new(Cell::default())))).collect();
        SharedInputs { budget, held: AtomicU64::new(0), uses: Mutex::new(uses), hashes: None }
    }

    /// Content hashes through `store`'s input-hash cache ([`crate::store::Store::input_hash`]).
    pub fn hashing_once(mut self, store: crate::store::Store) -> SharedInputs {
        self.hashes = Some(store);
        self
    }

    fn cell(&self, path: &Path) -> Option<Arc<Cell>> {
        self.uses.lock().ok()?.get(&key(path)).map(|(_, c)| Arc::clone(c))
    }

    pub fn header(&self, path: &Path) -> Result<Header, String> {
        let read = || io::read_header(path).map_err(|e| e.to_string());
        match self.cell(path) {
            Some(c) => c.header.get_or_init(read).clone(),
            None => read(),
        }
    }

    /// The input hash of SPEC §5 ([`io::hash_input`]).
    pub fn hash(&self, path: &Path) -> Result<String, String> {
        let hash = || io::hash_input(path).map_err(|e| e.to_string());
        let read = || match &self.hashes {
            Some(store) => store.input_hash(path, &hash),
            None => hash(),
        };
        match self.cell(path) {
            Some(c) => c.hash.get_or_init(read).clone(),
            None => read(),
        }
    }

    /// The decoded voxels, as an image value (the kept one when another row decoded them:
    /// stages only read their inputs, so rows share it).
    pub fn image(&self, path: &Path, limits: ReadLimits) -> Result<Arc<Value>, String> {
        let decode = || io::read_image(path, limits).map(|i| Arc::new(Value::Image(i.data))).map_err(|e| e.to_string());
        let Some(c) = self.cell(path) else { return decode() };
        let mut mine = None;
        let kept = c.data.get_or_init(|| {
            let d = decode()?;
            let bytes = value_bytes(&d);
            let fits =
                self.held.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| (h + bytes <= self.budget).then_some(h + bytes)).is_ok();
            if fits {
                Ok(Some(d))
            } else {
                mine = Some(d);
                Ok(None)
            }
        });
        match kept {
            Ok(Some(d)) => Ok(Arc::clone(d)),
            Ok(None) => mine.map_or_else(decode, Ok),
            Err(e) => Err(e.clone()),
        }
    }

    /// One row that reads `paths` is done with them: a file whose last row this was is let go.
    pub fn done(&self, paths: &[PathBuf]) {
        let Ok(mut uses) = self.uses.lock() else { return };
        for p in paths {
            let k = key(p);
            if let Some((n, c)) = uses.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    if let Some(Ok(Some(d))) = c.data.get() {
                        self.held.fetch_sub(value_bytes(d), Ordering::SeqCst);
                    }
                    uses.remove(&k);
                }
            }
        }
    }

    /// Bytes of decoded files kept now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }
}

fn value_bytes(v: &Value) -> u64 {
    match v {
        Value::Image(d) => d.shape().iter().product::<usize>() as u64 * d.dtype().bytes_per_voxel(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Data;

    fn shape(v: &Value) -> [usize; 3] {
        match v {
            Value::Image(d) => d.shape(),
            _ => [0; 3],
        }
    }
    use ndarray::Array3;

    #[test]
    fn a_file_is_decoded_once_kept_within_the_budget_and_let_go_after_its_last_row() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
        io::write_npy(&a, &Data::U8(Array3::from_elem((1, 10, 10), 7)), 2).unwrap();
        io::write_npy(&b, &Data::U8(Array3::from_elem((1, 20, 10), 9)), 2).unwrap();
        // a: three rows; b: two rows; only a fits the budget.
        let rows = [a.clone(), b.clone(), a.clone(), b.clone(), a.clone()];
        let shared = SharedInputs::new(rows.iter().cloned(), 150);
        let limits = ReadLimits { max_bytes: u64::MAX };
        assert_eq!(shape(&shared.image(&a, limits).unwrap()), [1, 10, 10]);
        assert_eq!(shared.held(), 100);
        std::fs::remove_file(&a).unwrap();
        assert_eq!(shape(&shared.image(&a, limits).unwrap()), [1, 10, 10], "the second row takes the kept copy");
        assert_eq!(shared.header(&b).unwrap().shape, [1, 20, 10]);
        assert_eq!(shape(&shared.image(&b, limits).unwrap()), [1, 20, 10], "b is decoded but not kept");
        assert_eq!(shared.held(), 100);
        shared.done(std::slice::from_ref(&a));
        shared.done(std::slice::from_ref(&a));
        assert!(shared.image(&a, limits).is_ok());
        shared.done(std::slice::from_ref(&a));
        assert_eq!(shared.held(), 0, "released after its last row");
        assert!(shared.image(&a, limits).is_err(), "no longer shared: read again, and the file is gone");
    }

    #[test]
    fn a_bad_file_fails_every_row_with_one_message() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let rows = [bad.clone(), bad.clone()];
        let shared = SharedInputs::new(rows.iter().cloned(), 1 << 20);
        let e1 = shared.image(&bad, ReadLimits { max_bytes: u64::MAX }).unwrap_err();
        std::fs::write(&bad, b"changed").unwrap();
        let e2 = shared.image(&bad, ReadLimits { max_bytes: u64::MAX }).unwrap_err();
        assert_eq!(e1, e2);
    }
}
