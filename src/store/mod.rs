//! Checkpoints: content-keyed stage values and per-sample completion records, under the output
//! folder's `.tessera/` (SPEC §4: never needed by users, safe to delete).
//!
//! A stage value's key is a blake3 hash of everything that can change it ([`stage_key`]): the
//! tessera version, the op's name and version, its parameters as bound to the sample, the keys
//! of its inputs (for source images, the file's content hash), and the sample's spacing. A
//! checkpoint file holds a header (magic, kind, shape, payload length) and the payload's blake3;
//! it is written to a temporary file and renamed into place, and verified in full before use —
//! a truncated or altered checkpoint is deleted and recomputed, never trusted. Checkpoints are
//! never fsynced (a power cut can lose them, and verification then catches the torn file);
//! outputs and records are with `--durable` ([`crate::util::set_durable`]).
//!
//! A sample's record (`samples/<sample>.json`) is written after all its outputs, atomically, and
//! lists the stage keys and the fingerprint (size, modification time) of every output file: a re-run skips a sample whose record
//! matches and whose outputs verify. Per-sample locks (`locks/<sample>.lock`, holding the pid and
//! host) keep two runs on one folder from working on one sample at once; a lock whose process is
//! gone is taken over.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4};

use crate::io::Data;
use crate::ops::{Labels, Value};
use crate::table::{Column, Table};

const MAGIC: &[u8; 8] = b"TSRACK01";

/// The `.tessera/` folder of an output folder.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What a stage's key is made of (serialised to JSON, then hashed).
#[derive(serde::Serialize)]
pub struct KeyParts<'a> {
    pub tessera: &'a str,
    pub op: &'a str,
    pub op_version: u32,
    pub params: serde_json::Value,
    /// Input keys: `file:<blake3>` for sources, the stage key for stages.
    pub inputs: Vec<String>,
    pub spacing: [f64; 3],
    pub unit: &'a str,
    pub ndim: u8,
}

/// A stage value's key.
pub fn stage_key(parts: &KeyParts) -> String {
    let json = serde_json::to_vec(parts).unwrap_or_default();
    blake3::hash(&json).to_hex().to_string()
}

/// What a finished sample left behind.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SampleRecord {
    pub sample: String,
    /// Stage id → key.
    pub stages: BTreeMap<String, String>,
    /// Output file (relative to the output folder) → its [`file_fingerprint`].
    pub outputs: BTreeMap<String, String>,
    /// Labels stage → object count.
    pub objects: BTreeMap<String, u64>,
    pub streamed: bool,
    /// When the sample failed: the stage and the error (the record then only says how far it got).
    #[serde(default)]
    pub failed: Option<(String, String)>,
    /// Every output was written. A record written while the sample runs lists the outputs
    /// finished so far (they count as checkpoints after a crash) and is not complete.
    #[serde(default)]
    pub complete: bool,
    /// How its output files are laid out ([`OUTPUT_LAYOUT`]). Outputs listed by a record of an
    /// older layout are rewritten, never trusted: 0 (records without the field) is the layout
    /// whose uncompressed TIFF stacks ImageJ misread.
    #[serde(default)]
    pub layout: u32,
}

/// The current layout of output files ([`SampleRecord::layout`]). 1: uncompressed TIFF stacks
/// hold their pixels contiguously, as ImageJ reads them.
pub const OUTPUT_LAYOUT: u32 = 1;

/// What a raw checkpoint file holds (kept beside it as `<key>.rawmeta`): streamed stage values
/// are too large to copy into the checkpoint format, so their spill files are adopted as they are.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RawMeta {
    /// `mask`, `labels`, `u8`, `u16`, `u32` or `f32`.
    pub elem: String,
    /// The file's layout (`exec::spill::FORMAT`); checkpoints of another layout are not taken.
    #[serde(default)]
    pub format: String,
    pub bytes: u64,
    pub blake3: String,
}

/// Why a lock could not be taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub pid: u32,
    pub host: String,
}

/// A held per-sample lock; released when dropped (or when its process ends, however it ends).
#[derive(Debug)]
pub struct Lock {
    file: std::fs::File,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Emptied, then unlocked as the file closes. The file stays: creating and deleting a
        // file per sample made the file system's inode allocation the cost of small samples.
        let _ = self.file.set_len(0);
    }
}

/// An output file's fingerprint for the sample record: its size and modification time in
/// nanoseconds (what make and cargo trust). Any rewrite, truncation or in-place edit changes it;
/// hashing every output on every run would cost more than the checkpoints themselves.
///
/// A folder output (an OME-Zarr store) is fingerprinted by the path, size and modification time
/// of every file and link in it (links are not followed): a deleted, added or rewritten chunk
/// changes it.
pub fn file_fingerprint(path: &Path) -> std::io::Result<String> {
    let md = std::fs::symlink_metadata(path)?;
    let mtime = |md: &std::fs::Metadata| md.modified().map(|t| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    if md.is_dir() {
        let mut h = blake3::Hasher::new();
        let files = crate::util::files_under(path)?;
        for f in &files {
            let md = std::fs::symlink_metadata(f)?;
            let rel = f.strip_prefix(path).map(|r| r.to_string_lossy().into_owned()).unwrap_or_default();
            h.update(format!("{rel}\t{}\t{}\n", md.len(), mtime(&md)?).as_bytes());
        }
        return Ok(format!("tree:{}:{}", files.len(), h.finalize().to_hex()));
    }
    Ok(format!("{}:{}", md.len(), mtime(&md)?))
}

/// The sizes and modification times of a file, or of every file under a folder (a slice
/// folder, an OME-Zarr image), in name order: what [`Store::input_hash`] keys its cache by.
fn tree_fingerprint(path: &Path) -> std::io::Result<String> {
    if !path.is_dir() {
        return file_fingerprint(path);
    }
    let mut out = String::new();
    let mut stack = vec![path.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() { stack.push(p) } else { files.push(p) }
        }
    }
    files.sort();
    for f in files {
        out += &format!("{}={};", f.strip_prefix(path).unwrap_or(&f).display(), file_fingerprint(&f)?);
    }
    Ok(out)
}

/// blake3 of a file's bytes.
pub fn file_hash(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().to_hex().to_string())
}

impl Store {
    pub fn new(out: &Path) -> Store {
        Store { root: out.join(".tessera") }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ckpt_path(&self, key: &str) -> PathBuf {
        self.root.join("ckpt").join(&key[..2.min(key.len())]).join(format!("{key}.ckpt"))
    }

    fn record_path(&self, sample: &str) -> PathBuf {
        self.root.join("samples").join(format!("{sample}.json"))
    }

    /// Whether a checkpoint file exists for `key` (not verified).
    pub fn has(&self, key: &str) -> bool {
        self.ckpt_path(key).is_file() || self.has_raw(key)
    }

    /// Whether `key` has a raw checkpoint (a streamed stage's spill; not verified here).
    pub fn has_raw(&self, key: &str) -> bool {
        self.ckpt_path(key).with_extension("raw").is_file()
    }

    /// Moves a finished raw value file (a streamed stage's spill) into the store as the checkpoint
    /// of `key`; returns its new path.
    pub fn adopt_raw(&self, key: &str, file: &Path, meta: &RawMeta) -> Result<PathBuf, String> {
        let raw = self.ckpt_path(key).with_extension("raw");
        if let Some(dir) = raw.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::rename(file, &raw).map_err(|e| format!("checkpoint {}: {e}", raw.display()))?;
        let text = serde_json::to_string(meta).map_err(|e| e.to_string())?;
        let m = raw.with_extension("rawmeta");
        crate::util::write_atomic(&m, text.as_bytes()).map_err(|e| format!("checkpoint {}: {e}", m.display()))?;
        Ok(raw)
    }

    /// The raw checkpoint of `key`, verified (size and blake3 of the whole file); a bad one is
    /// removed and `None` returned.
    pub fn raw(&self, key: &str) -> Option<(PathBuf, RawMeta)> {
        let raw = self.ckpt_path(key).with_extension("raw");
        let m = raw.with_extension("rawmeta");
        let meta: Option<RawMeta> = std::fs::read_to_string(&m).ok().and_then(|t| serde_json::from_str(&t).ok());
        let ok = meta.filter(|meta| {
            std::fs::metadata(&raw).is_ok_and(|md| md.len() == meta.bytes) && file_hash(&raw).is_ok_and(|h| h == meta.blake3)
        });
        match ok {
            Some(meta) => Some((raw, meta)),
            None => {
                let _ = std::fs::remove_file(&raw);
                let _ = std::fs::remove_file(&m);
                None
            }
        }
    }

    /// Saves a stage value under `key` (temporary file, then rename). Arrays are hashed and
    /// written straight from their memory, without an encoded copy.
    pub fn save(&self, key: &str, v: &Value) -> Result<(), String> {
        self.save_parts(key, &payload_parts(v))
    }

    /// A job that saves `v` under `key` (for a background thread). A mask is packed to bits
    /// here, and the job holds only the bits: the value itself is free again when this
    /// returns (a later stage may then write over it). Other values are held by the job.
    pub fn saver(&self, key: &str, v: &std::sync::Arc<Value>) -> impl FnOnce() -> Result<(), String> + Send + 'static {
        enum Held {
            Packed(Vec<Vec<u8>>),
            Value(std::sync::Arc<Value>),
        }
        let held = match &**v {
            Value::Mask(_) => Held::Packed(payload_parts(v).into_iter().map(|p| p.into_owned()).collect()),
            _ => Held::Value(std::sync::Arc::clone(v)),
        };
        let (store, key) = (self.clone(), key.to_string());
        move || match held {
            Held::Packed(parts) => store.save_parts(&key, &parts.iter().map(|p| std::borrow::Cow::Borrowed(&p[..])).collect::<Vec<_>>()),
            Held::Value(v) => store.save(&key, &v),
        }
    }

    fn save_parts(&self, key: &str, parts: &[std::borrow::Cow<'_, [u8]>]) -> Result<(), String> {
        let path = self.ckpt_path(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut h = blake3::Hasher::new();
        let mut len = 0u64;
        for p in parts {
            h.update(p);
            len += p.len() as u64;
        }
        let tmp = crate::util::tmp_sibling(&path);
        let r = (|| -> std::io::Result<()> {
            let mut f = crate::io::OutFile::create(&tmp, 48 + len)?;
            f.write_all(MAGIC)?;
            f.write_all(&len.to_le_bytes())?;
            f.write_all(h.finalize().as_bytes())?;
            for p in parts {
                f.write_all(p)?;
            }
            f.finish().map(drop)
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("checkpoint {}: {e}", path.display()));
        }
        std::fs::rename(&tmp, &path).map_err(|e| format!("checkpoint {}: {e}", path.display()))
    }

    /// Loads and verifies the checkpoint for `key`: `None` when there is none or it fails
    /// verification (it is then removed, so it will be recomputed).
    pub fn load(&self, key: &str) -> Option<Value> {
        let path = self.ckpt_path(key);
        let bytes = std::fs::read(&path).ok()?;
        let ok = (|| {
            if bytes.len() < 48 || &bytes[..8] != MAGIC {
                return None;
            }
            let len = u64::from_le_bytes(bytes[8..16].try_into().ok()?) as usize;
            let payload = bytes.get(48..)?;
            if payload.len() != len || blake3::hash(payload).as_bytes() != &bytes[16..48] {
                return None;
            }
            decode(payload)
        })();
        if ok.is_none() {
            let _ = std::fs::remove_file(&path);
        }
        ok
    }

    /// The record of a finished sample, if there is one and it parses.
    pub fn record(&self, sample: &str) -> Option<SampleRecord> {
        let text = std::fs::read_to_string(self.record_path(sample)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write_record(&self, r: &SampleRecord) -> Result<(), String> {
        let path = self.record_path(&r.sample);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
        crate::util::write_atomic(&path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn remove_record(&self, sample: &str) {
        let _ = std::fs::remove_file(self.record_path(sample));
    }

    /// Every sample record in the store.
    pub fn records(&self) -> Vec<SampleRecord> {
        let mut v: Vec<SampleRecord> = std::fs::read_dir(self.root.join("samples"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect();
        v.sort_by(|a, b| a.sample.cmp(&b.sample));
        v
    }

    /// Every checkpoint key present.
    pub fn keys(&self) -> Vec<String> {
        let mut v = Vec::new();
        for d in std::fs::read_dir(self.root.join("ckpt")).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if let Some(k) = name.strip_suffix(".ckpt").or_else(|| name.strip_suffix(".raw")) {
                    v.push(k.to_string());
                }
            }
        }
        v.sort();
        v
    }

    /// Removes the checkpoints of `keys` and leftover temporary files; returns (files, bytes).
    pub fn remove(&self, keys: &[String]) -> (usize, u64) {
        let (mut n, mut bytes) = (0, 0);
        for k in keys {
            let p = self.ckpt_path(k);
            for p in [p.clone(), p.with_extension("raw"), p.with_extension("rawmeta")] {
                let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                if std::fs::remove_file(&p).is_ok() {
                    bytes += len;
                    n += p.extension().is_some_and(|e| e != "rawmeta") as usize;
                }
            }
        }
        for d in std::fs::read_dir(self.root.join("ckpt")).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                if f.file_name().to_string_lossy().contains(".tmp") {
                    bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
                    if std::fs::remove_file(f.path()).is_ok() {
                        n += 1;
                    }
                }
            }
            let _ = std::fs::remove_dir(d.path());
        }
        (n, bytes)
    }

    /// The content hash of an input (file, slice folder or OME-Zarr image), from the cache
    /// under `.tessera/inputs/` while the input's files have the sizes and modification times
    /// they had when it was computed; else computed by `hash` and kept. Processes that want it
    /// at once (the block tasks of a split run) take turns: one computes, the others read it.
    pub fn input_hash(&self, path: &Path, hash: &dyn Fn() -> Result<String, String>) -> Result<String, String> {
        let id = crate::util::hash128(path.as_os_str().as_encoded_bytes());
        let name = format!("{:016x}{:016x}", id[0], id[1]);
        let file = self.root.join("inputs").join(format!("{name}.json"));
        let fingerprint = || tree_fingerprint(path).map_err(|e| format!("{}: {e}", path.display()));
        let cached = |fp: &str| -> Option<String> {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
            (v["path"] == path.to_string_lossy().as_ref() && v["fingerprint"] == fp).then(|| v["hash"].as_str().map(String::from)).flatten()
        };
        let fp = fingerprint()?;
        if let Some(h) = cached(&fp) {
            return Ok(h);
        }
        let _lock = self.lock_waiting(&format!("input-{name}"));
        if let Some(h) = cached(&fp) {
            return Ok(h);
        }
        let h = hash()?;
        // Kept only if the input did not change while it was read.
        if fingerprint()? == fp {
            let v = serde_json::json!({"path": path.to_string_lossy(), "fingerprint": fp, "hash": h});
            let _ = crate::util::write_atomic(&file, v.to_string().as_bytes());
        }
        Ok(h)
    }

    /// Takes the lock `name`, waiting while a live process (here or on another host) holds it;
    /// `None` when the lock file cannot be opened (then the caller goes on unlocked).
    pub fn lock_waiting(&self, name: &str) -> Option<Lock> {
        loop {
            match self.lock(name) {
                Ok(l) => return Some(l),
                Err(h) if h.pid == 0 => return None,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }

    /// Takes the lock of `sample`, taking over a lock whose process is gone. `Err` names the
    /// live process that holds it.
    pub fn lock(&self, sample: &str) -> Result<Lock, Held> {
        use std::io::{Read, Seek};
        use std::os::fd::AsRawFd;
        let dir = self.root.join("locks");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{sample}.lock"));
        let unknown = Held { pid: 0, host: String::new() };
        let Ok(mut f) = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path) else {
            return Err(unknown);
        };
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let me = format!("{} {}\n", std::process::id(), crate::util::hostname());
            let _ = f.set_len(0).and_then(|_| f.write_all(me.as_bytes()));
            return Ok(Lock { file: f });
        }
        // Held by a live process (the kernel drops the locks of ended ones). Its content says
        // which, once the holder has written it; until then it is an unknown process here.
        let mut text = String::new();
        let _ = f.rewind().and_then(|_| f.read_to_string(&mut text));
        let mut it = text.split_whitespace();
        match (it.next().and_then(|p| p.parse().ok()), it.next()) {
            (Some(pid), Some(host)) => Err(Held { pid, host: host.to_string() }),
            _ => Err(Held { pid: u32::MAX, host: String::new() }),
        }
    }
}

// ---- the value codec: little-endian, self-describing, exact (floats by their bits) ----

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

/// The checkpoint payload of a value as pieces: a small header, then the array's bytes
/// (borrowed from the array when it is contiguous; see [`crate::io::le_bytes`]).
fn payload_parts(v: &Value) -> Vec<std::borrow::Cow<'_, [u8]>> {
    use crate::io::le_bytes;
    use std::borrow::Cow;
    let head = |tag: u8, shape: &[usize]| {
        let mut b = vec![tag];
        for &d in shape {
            put_u64(&mut b, d as u64);
        }
        Cow::Owned(b)
    };
    match v {
        // Masks of 0/1 (all that ops make) are stored 8 voxels a byte, low bit first: an eighth
        // of the bytes to write and hash. Anything else is stored as bytes.
        Value::Mask(a) => match pack_bits(a) {
            Some(bits) => vec![head(10, a.shape()), Cow::Owned(bits)],
            None => vec![head(1, a.shape()), le_bytes(a)],
        },
        Value::Labels(Labels::U32(a)) => vec![head(2, a.shape()), le_bytes(a)],
        Value::Labels(Labels::U16(a)) => vec![head(11, a.shape()), le_bytes(a)],
        Value::Image(Data::U8(a)) => vec![head(3, a.shape()), le_bytes(a)],
        Value::Image(Data::U16(a)) => vec![head(4, a.shape()), le_bytes(a)],
        Value::Image(Data::U32(a)) => vec![head(5, a.shape()), le_bytes(a)],
        Value::Image(Data::F32(a)) => vec![head(6, a.shape()), le_bytes(a)],
        Value::Image(Data::Rgb8(a)) => vec![head(7, a.shape()), le_bytes(a)],
        Value::Image(Data::Rgb16(a)) => vec![head(8, a.shape()), le_bytes(a)],
        Value::Table(t) => vec![Cow::Owned(encode_table(t))],
    }
}

/// The whole payload in one buffer.
#[cfg(test)]
fn encode(v: &Value) -> Vec<u8> {
    payload_parts(v).concat()
}

/// A table in the checkpoint payload format (exact: every value, type and unit).
pub fn encode_table(t: &Table) -> Vec<u8> {
    let mut b = Vec::new();
    b.push(9);
    put_u64(&mut b, t.columns.len() as u64);
    for (name, col, unit) in &t.columns {
        put_str(&mut b, name);
        match unit {
            Some(u) => {
                b.push(1);
                put_str(&mut b, u);
            }
            None => b.push(0),
        }
        put_u64(&mut b, col.len() as u64);
        match col {
            Column::U32(v) => {
                b.push(1);
                v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            }
            Column::U64(v) => {
                b.push(2);
                v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            }
            Column::F64(v) => {
                b.push(3);
                v.iter().for_each(|x| b.extend_from_slice(&x.to_bits().to_le_bytes()));
            }
            Column::Bool(v) => {
                b.push(4);
                b.extend(v.iter().map(|&x| x as u8));
            }
            Column::Str(v) => {
                b.push(5);
                v.iter().for_each(|s| put_str(&mut b, s));
            }
            Column::I64(v) => {
                b.push(6);
                v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            }
        }
    }
    b
}

/// A 0/1 array packed 8 values a byte (low bit first, raster order); `None` if any value is
/// neither 0 nor 1.
fn pack_bits(a: &Array3<u8>) -> Option<Vec<u8>> {
    use rayon::prelude::*;
    let std = a.as_standard_layout();
    let v = std.as_slice().expect("standard layout");
    let mut out = vec![0u8; v.len().div_ceil(8)];
    // Chunks of 8 Ki voxels → 1 KiB of bits each, in parallel; each chunk reports stray values.
    let ok = out.par_chunks_mut(1024).zip(v.par_chunks(8192)).all(|(o, c)| {
        let mut stray = 0u64;
        for (byte, eight) in o.iter_mut().zip(c.chunks(8)) {
            let mut word = [0u8; 8];
            word[..eight.len()].copy_from_slice(eight);
            let x = u64::from_le_bytes(word);
            stray |= x & 0xfefe_fefe_fefe_fefe;
            // Where every byte is 0 or 1 (else `stray` voids the packing), nonzero is the value.
            *byte = crate::util::nonzero_bits8(x);
        }
        stray == 0
    });
    ok.then_some(out)
}

fn unpack_bits(bits: &[u8], n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    for (eight, &b) in out.chunks_mut(8).zip(bits) {
        let bytes = crate::util::bits8_to_bytes(b).to_le_bytes();
        eight.copy_from_slice(&bytes[..eight.len()]);
    }
    out
}

/// A table from [`encode_table`]'s bytes; `None` if they are not exactly one table.
pub fn decode_table(payload: &[u8]) -> Option<Table> {
    match decode(payload)? {
        Value::Table(t) => Some(t),
        _ => None,
    }
}

fn decode(payload: &[u8]) -> Option<Value> {
    let mut r = crate::util::ByteReader::new(payload);
    let tag = r.u8()?;
    let v = match tag {
        11 => {
            let s = r.shape(3)?;
            let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
            Value::Labels(Array3::from_shape_vec((s[0], s[1], s[2]), r.les(n, u16::from_le_bytes)?).ok()?.into())
        }
        10 => {
            let s = r.shape(3)?;
            let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
            let bits = r.take(n.div_ceil(8))?;
            Value::Mask(Array3::from_shape_vec((s[0], s[1], s[2]), unpack_bits(bits, n)).ok()?)
        }
        1..=6 => {
            let s = r.shape(3)?;
            let sh = (s[0], s[1], s[2]);
            let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
            match tag {
                1 => Value::Mask(Array3::from_shape_vec(sh, r.take(n)?.to_vec()).ok()?),
                2 => Value::Labels(Array3::from_shape_vec(sh, r.les(n, u32::from_le_bytes)?).ok()?.into()),
                3 => Value::Image(Data::U8(Array3::from_shape_vec(sh, r.take(n)?.to_vec()).ok()?)),
                4 => Value::Image(Data::U16(Array3::from_shape_vec(sh, r.les(n, u16::from_le_bytes)?).ok()?)),
                5 => Value::Image(Data::U32(Array3::from_shape_vec(sh, r.les(n, u32::from_le_bytes)?).ok()?)),
                _ => Value::Image(Data::F32(Array3::from_shape_vec(sh, r.les(n, f32::from_le_bytes)?).ok()?)),
            }
        }
        7 | 8 => {
            let s = r.shape(4)?;
            let sh = (s[0], s[1], s[2], s[3]);
            let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
            if tag == 7 {
                Value::Image(Data::Rgb8(Array4::from_shape_vec(sh, r.take(n)?.to_vec()).ok()?))
            } else {
                Value::Image(Data::Rgb16(Array4::from_shape_vec(sh, r.les(n, u16::from_le_bytes)?).ok()?))
            }
        }
        9 => {
            let ncol = r.u64()? as usize;
            let mut t = Table::default();
            for _ in 0..ncol {
                let name = r.string()?;
                let unit = match r.u8()? {
                    1 => Some(r.string()?),
                    _ => None,
                };
                let n = r.u64()? as usize;
                let col = match r.u8()? {
                    1 => Column::U32(r.les(n, u32::from_le_bytes)?),
                    2 => Column::U64(r.les(n, u64::from_le_bytes)?),
                    3 => Column::F64(r.les(n, u64::from_le_bytes)?.into_iter().map(f64::from_bits).collect()),
                    4 => Column::Bool(r.take(n)?.iter().map(|&x| x != 0).collect()),
                    5 => Column::Str((0..n).map(|_| r.string()).collect::<Option<Vec<_>>>()?),
                    6 => Column::I64(r.les(n, i64::from_le_bytes)?),
                    _ => return None,
                };
                t.columns.push((name, col, unit));
            }
            Value::Table(t)
        }
        _ => return None,
    };
    (r.left() == 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<Value> {
        let mut t = Table::default();
        t.push("label", Column::U32(vec![1, 2]), None);
        t.push("volume", Column::F64(vec![f64::NAN, 2.5]), Some("um^3".into()));
        t.push("n", Column::U64(vec![7, u64::MAX]), None);
        t.push("edge", Column::Bool(vec![true, false]), None);
        t.push("sample", Column::Str(vec!["a".into(), "bé".into()]), None);
        vec![
            Value::Mask(Array3::from_shape_fn((2, 3, 4), |(z, y, x)| ((z + y + x) % 2) as u8)),
            // Not a multiple of 8 voxels, more than one packing chunk; and a stray 255 (bytes).
            Value::Mask(Array3::from_shape_fn((3, 71, 53), |(z, y, x)| ((z * 7 + y * 3 + x * x) % 5 == 0) as u8)),
            Value::Mask(Array3::from_shape_fn((1, 2, 5), |(_, y, x)| if y == 1 && x == 3 { 255 } else { (x % 2) as u8 })),
            Value::Labels((Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 100_000 + y * 7 + x) as u32)).into()),
            Value::Image(Data::U8(Array3::from_shape_fn((1, 2, 3), |(_, y, x)| (y * 3 + x) as u8))),
            Value::Image(Data::U16(Array3::from_shape_fn((2, 2, 2), |(z, y, x)| (z * 4000 + y * 2 + x) as u16))),
            Value::Image(Data::U32(Array3::from_elem((1, 1, 3), 4_000_000_000))),
            Value::Image(Data::F32(Array3::from_shape_fn(
                (2, 2, 3),
                |(z, y, x)| if x == 1 { f32::NAN } else { z as f32 - y as f32 * 0.1 },
            ))),
            Value::Image(Data::Rgb8(Array4::from_shape_fn((1, 2, 2, 3), |(_, y, x, c)| (y * 6 + x * 3 + c) as u8))),
            Value::Image(Data::Rgb16(Array4::from_elem((1, 1, 2, 3), 60_000))),
            Value::Table(t),
            Value::Table(Table::default()),
        ]
    }

    fn same(a: &Value, b: &Value) -> bool {
        encode(a) == encode(b)
    }

    #[test]
    fn checkpoints_round_trip_every_value_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        for (i, v) in values().iter().enumerate() {
            let key = format!("{i:02}{}", "ab".repeat(31));
            assert!(!s.has(&key));
            s.save(&key, v).unwrap();
            assert!(s.has(&key));
            let back = s.load(&key).expect("verifies");
            assert!(same(v, &back), "value {i}");
            if let Value::Mask(_) = v {
                assert_eq!(&back, v, "mask {i}");
            }
        }
        assert_eq!(s.keys().len(), values().len());
    }

    /// A save job made for a background thread: the same checkpoint as [`Store::save`]; a
    /// mask's job holds only its bits, so the value is the caller's alone again.
    #[test]
    fn a_save_job_writes_the_same_checkpoint_and_lets_a_mask_go() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        for (i, v) in values().into_iter().enumerate() {
            let (direct, job) = (format!("{i:02}{}", "0a".repeat(31)), format!("{i:02}{}", "0b".repeat(31)));
            s.save(&direct, &v).unwrap();
            let shared = std::sync::Arc::new(v);
            let save = s.saver(&job, &shared);
            let held_elsewhere = std::sync::Arc::strong_count(&shared) > 1;
            assert_eq!(held_elsewhere, !matches!(*shared, Value::Mask(_)), "value {i}");
            std::thread::spawn(save).join().unwrap().unwrap();
            assert_eq!(std::fs::read(s.ckpt_path(&direct)).unwrap(), std::fs::read(s.ckpt_path(&job)).unwrap(), "value {i}");
        }
    }

    #[test]
    fn non_contiguous_arrays_are_stored_like_their_contiguous_copies() {
        // A transposed array keeps its strides: the store must write its values in C order.
        let t = Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 12 + y * 4 + x) as u32).reversed_axes();
        assert!(t.as_slice().is_none());
        let c = t.as_standard_layout().to_owned();
        assert_eq!(encode(&Value::Labels((t.clone()).into())), encode(&Value::Labels((c.clone()).into())));
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        let key = "ef".repeat(32);
        s.save(&key, &Value::Labels(t.into())).unwrap();
        assert_eq!(s.load(&key), Some(Value::Labels(c.into())));
    }

    #[test]
    fn corrupt_or_truncated_checkpoints_are_dropped_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        let v = &values()[1];
        for (i, damage) in ["flip", "truncate", "extend", "header"].iter().enumerate() {
            let key = format!("{i:02}{}", "cd".repeat(31));
            s.save(&key, v).unwrap();
            let p = s.ckpt_path(&key);
            let mut b = std::fs::read(&p).unwrap();
            match *damage {
                "flip" => {
                    let n = b.len() - 5;
                    b[n] ^= 0x40;
                }
                "truncate" => b.truncate(b.len() - 3),
                "extend" => b.push(0),
                _ => b[2] = b'X',
            }
            std::fs::write(&p, &b).unwrap();
            assert!(s.load(&key).is_none(), "{damage}");
            assert!(!p.exists(), "{damage}: the bad checkpoint is removed");
        }
    }

    #[test]
    fn keys_change_with_every_part() {
        let base = || KeyParts {
            tessera: "0.1.0",
            op: "gaussian",
            op_version: 1,
            params: serde_json::json!({"sigma": 1.0}),
            inputs: vec!["file:abc".into()],
            spacing: [1.0, 0.5, 0.5],
            unit: "um",
            ndim: 3,
        };
        let k = stage_key(&base());
        let variants = [
            KeyParts { tessera: "0.1.1", ..base() },
            KeyParts { op_version: 2, ..base() },
            KeyParts { params: serde_json::json!({"sigma": 1.5}), ..base() },
            KeyParts { inputs: vec!["file:abd".into()], ..base() },
            KeyParts { spacing: [1.0, 0.5, 0.6], ..base() },
            KeyParts { unit: "nm", ..base() },
            KeyParts { ndim: 2, ..base() },
        ];
        for v in &variants {
            assert_ne!(stage_key(v), k);
        }
        assert_eq!(stage_key(&base()), k);
    }

    #[test]
    fn locks_exclude_live_processes_and_take_over_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        let l = s.lock("a").unwrap();
        let held = s.lock("a").unwrap_err();
        assert_eq!(held.pid, std::process::id());
        drop(l);
        let l2 = s.lock("a").unwrap();
        drop(l2);
        // A lock file left by a process that no longer exists (killed): nobody holds it.
        std::fs::write(s.root.join("locks/b.lock"), format!("{} {}\n", u32::MAX - 7, crate::util::hostname())).unwrap();
        let l = s.lock("b").unwrap();
        assert_eq!(
            std::fs::read_to_string(s.root.join("locks/b.lock")).unwrap(),
            format!("{} {}\n", std::process::id(), crate::util::hostname())
        );
        drop(l);
        assert_eq!(std::fs::read_to_string(s.root.join("locks/b.lock")).unwrap(), "", "released locks are empty");
    }
}
