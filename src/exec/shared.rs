//! Inputs shared by several samples of a run — a table of crops names the same photo in many
//! rows — are opened, hashed and decoded once: each row still is its own sample (records,
//! errors, resume), but the rows of one file take its header, content hash and decoded voxels
//! from here. A file is released when the last row that reads it is done, and decoded files
//! are kept only within a byte budget (beyond it, rows decode for themselves), so memory stays
//! bounded however the rows are ordered. A file that fails to read fails every row that names
//! it with the same message, read once.
//!
//! No row ever waits for another here. Rows run on the rayon pool, and a pool thread that waits
//! for a parallel loop runs other queued work meanwhile — another row, say. So the row reading a
//! file may be beneath the row that asks for it on one thread's stack, or be waiting for a piece
//! of work that is: a wait would never end (a study of two crops of one scan hung in about one
//! run in fifteen). A row that finds the file still being read reads it for itself instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::io::{self, Header, ReadLimits};
use crate::ops::Value;

/// What is known of one shared file.
#[derive(Default)]
struct Cell {
    header: Once<Result<Header, String>>,
    hash: Once<Result<String, String>>,
    /// `Ok(None)`: decoded, but not kept (over the budget).
    data: Once<Result<Option<Arc<Value>>, String>>,
}

/// A value the first row that needs it works out for every row; a row that comes while it is
/// being worked out works out its own (see the module documentation for why it must not wait).
struct Once<T>(Mutex<State<T>>);

enum State<T> {
    Empty,
    Working,
    Done(T),
}

/// Whether the value being worked out is the one kept for every row, or a row's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum For {
    Everyone,
    ThisRow,
}

impl<T> Default for Once<T> {
    fn default() -> Self {
        Once(Mutex::new(State::Empty))
    }
}

impl<T: Clone> Once<T> {
    fn get(&self, work: impl FnOnce(For) -> T) -> T {
        let lock = || self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        {
            let mut s = lock();
            match &*s {
                State::Done(v) => return v.clone(),
                State::Working => {
                    drop(s);
                    return work(For::ThisRow);
                }
                State::Empty => *s = State::Working,
            }
        }
        // Back to empty if `work` panics, so a later row tries again.
        struct Reset<'a, T>(&'a Once<T>);
        impl<T> Drop for Reset<'_, T> {
            fn drop(&mut self) {
                let mut s = self.0.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if matches!(*s, State::Working) {
                    *s = State::Empty;
                }
            }
        }
        let reset = Reset(self);
        let v = work(For::Everyone);
        *lock() = State::Done(v.clone());
        drop(reset);
        v
    }

    /// `f` of the value, once it is worked out.
    fn done<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        match &*self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            State::Done(v) => Some(f(v)),
            _ => None,
        }
    }
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
            Some(c) => c.header.get(|_| read()),
            None => read(),
        }
    }

    /// The input hash of SPEC §5 ([`io::hash_input`]).
    pub fn hash(&self, path: &Path) -> Result<String, String> {
        let read = || match &self.hashes {
            // Other rows and tasks wait on the store's lock while this hashes: on this thread.
            Some(store) => store.input_hash(path, &|| io::hash_input(path, io::Hashing::ThisThread).map_err(|e| e.to_string())),
            None => io::hash_input(path, io::Hashing::Parallel).map_err(|e| e.to_string()),
        };
        match self.cell(path) {
            Some(c) => c.hash.get(|_| read()),
            None => read(),
        }
    }

    /// The decoded voxels, as an image value (the kept one when another row decoded them:
    /// stages only read their inputs, so rows share it).
    pub fn image(&self, path: &Path, limits: ReadLimits) -> Result<Arc<Value>, String> {
        let decode = || io::read_image(path, limits).map(|i| Arc::new(Value::Image(i.data))).map_err(|e| e.to_string());
        let Some(c) = self.cell(path) else { return decode() };
        let mut mine = None;
        let kept = c.data.get(|whose| {
            let d = decode()?;
            let bytes = value_bytes(&d);
            let fits = whose == For::Everyone
                && self.held.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| (h + bytes <= self.budget).then_some(h + bytes)).is_ok();
            if fits {
                Ok(Some(d))
            } else {
                mine = Some(d);
                Ok(None)
            }
        });
        match kept {
            Ok(Some(d)) => Ok(d),
            Ok(None) => mine.map_or_else(decode, Ok),
            Err(e) => Err(e),
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
                    if let Some(bytes) = c.data.done(|d| match d {
                        Ok(Some(d)) => value_bytes(d),
                        _ => 0,
                    }) {
                        self.held.fetch_sub(bytes, Ordering::SeqCst);
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
    fn a_row_that_asks_while_the_value_is_worked_out_works_out_its_own() {
        // The row working it out is beneath the asking one on this thread's stack, as when a
        // pool thread waiting inside the first row runs the second: a wait would never end.
        let once: Once<u32> = Once::default();
        let v = once.get(|whose| {
            assert_eq!(whose, For::Everyone);
            let inner = once.get(|whose| {
                assert_eq!(whose, For::ThisRow);
                7
            });
            assert_eq!(once.done(|&v| v), None, "not yet worked out");
            inner + 1
        });
        assert_eq!(v, 8);
        assert_eq!(once.get(|_| unreachable!("kept")), 8);
        assert_eq!(once.done(|&v| v), Some(8));
        // A row whose work panics leaves it for the next row to try.
        let once: Once<u32> = Once::default();
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| once.get(|_| panic!("unreadable")))).is_err());
        assert_eq!(once.get(|whose| if whose == For::Everyone { 3 } else { 0 }), 3);
    }

    #[test]
    fn a_row_that_decodes_for_itself_holds_nothing_of_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.npy");
        io::write_npy(&a, &Data::U8(Array3::from_elem((1, 10, 10), 7)), 2).unwrap();
        let shared = SharedInputs::new([a.clone(), a.clone()].into_iter(), 1000);
        let limits = ReadLimits { max_bytes: u64::MAX };
        let cell = shared.cell(&a).unwrap();
        // While the first row decodes (beneath), the second decodes its own copy, not kept.
        let first = cell.data.get(|_| {
            let own = shared.image(&a, limits).unwrap();
            assert_eq!(shape(&own), [1, 10, 10]);
            assert_eq!(shared.held(), 0, "a row's own copy is not counted as kept");
            Ok(None)
        });
        assert!(first.is_ok());
        shared.done(std::slice::from_ref(&a));
        shared.done(std::slice::from_ref(&a));
        assert_eq!(shared.held(), 0);
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
