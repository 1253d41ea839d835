//! Spill files: full-size stage values set aside on disk while a sample streams, read back by
//! plane ranges.
//!
//! A spill file holds one volume of one element type as zstd-compressed chunks of whole planes
//! (each append cut into chunks of about 1 MiB of voxels, compressed in parallel and written at
//! once, so a writer holds nothing between appends: a stage may fill hundreds of them), then an
//! index of the chunks and a trailer. Masks and labels shrink tens of times, so streaming a
//! volume costs little disk beyond its outputs; the format is internal (checkpoints made of
//! spills name it in their metadata, [`FORMAT`], and others are not taken).
//!
//! Trailer (little-endian u64s, then 8 magic bytes): chunk count, planes, y, x, element code,
//! `TSPILL02`; the index before it: (first plane, offset, length) per chunk.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ndarray::Array3;
use rayon::prelude::*;

use crate::io::{self, DType, Data};
use crate::ops::Value;

/// Names this layout in checkpoint metadata.
pub const FORMAT: &str = "zstd-chunks-2";
const MAGIC: &[u8; 8] = b"TSPILL02";
const TRAILER: usize = 5 * 8 + 8;
/// Raw bytes per chunk (at least one plane).
const CHUNK_BYTES: usize = 1 << 20;
const LEVEL: i32 = 1;

thread_local! {
    /// Each thread's zstd contexts, kept: making one allocates and clears hundreds of KiB,
    /// which cost more than compressing the small chunks of thin blocks of rows.
    static ZSTD: std::cell::RefCell<Option<(zstd::bulk::Compressor<'static>, zstd::bulk::Decompressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// `f` with this thread's zstd compressor (at [`LEVEL`]) and decompressor.
fn with_zstd<T>(
    f: impl FnOnce(&mut (zstd::bulk::Compressor<'static>, zstd::bulk::Decompressor<'static>)) -> std::io::Result<T>,
) -> std::io::Result<T> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some((zstd::bulk::Compressor::new(LEVEL)?, zstd::bulk::Decompressor::new()?));
        }
        f(slot.as_mut().expect("just made"))
    })
}

/// The element type of a spill file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    Mask,
    Labels,
    Image(DType),
}

impl Elem {
    pub fn of(v: &Value) -> Result<Elem, String> {
        match v {
            Value::Mask(_) => Ok(Elem::Mask),
            Value::Labels(_) => Ok(Elem::Labels),
            Value::Image(d) if !d.dtype().is_rgb() => Ok(Elem::Image(d.dtype())),
            Value::Image(_) => Err("colour images are not streamed".into()),
            Value::Table(_) => Err("internal: a table is not spilled".into()),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Elem::Mask => "mask",
            Elem::Labels => "labels",
            Elem::Image(DType::U8) => "u8",
            Elem::Image(DType::U16) => "u16",
            Elem::Image(DType::U32) => "u32",
            Elem::Image(_) => "f32",
        }
    }
    const ALL: [Elem; 6] =
        [Elem::Mask, Elem::Labels, Elem::Image(DType::U8), Elem::Image(DType::U16), Elem::Image(DType::U32), Elem::Image(DType::F32)];
    fn code(self) -> u64 {
        Elem::ALL.iter().position(|e| *e == self).unwrap_or(5) as u64
    }
    pub fn bytes(self) -> usize {
        match self {
            Elem::Mask => 1,
            Elem::Labels => 4,
            Elem::Image(d) => d.bytes_per_voxel() as usize,
        }
    }
}

/// `(z, y, x)` of a voxel value.
pub fn value_dim(v: &Value) -> (usize, usize, usize) {
    match v {
        Value::Mask(a) => a.dim(),
        Value::Labels(a) => a.dim(),
        Value::Image(d) => {
            let [z, y, x] = d.shape();
            (z, y, x)
        }
        Value::Table(_) => (0, 0, 0),
    }
}

/// Little-endian bytes of planes `z0..z1` of a slab (borrowed where contiguous).
fn planes_bytes(v: &Value, z0: usize, z1: usize) -> std::borrow::Cow<'_, [u8]> {
    let r = ndarray::s![z0..z1, .., ..];
    match v {
        Value::Mask(a) => io::view_le_bytes(a.slice(r)),
        Value::Labels(crate::ops::Labels::U32(a)) => io::view_le_bytes(a.slice(r)),
        // Spills hold labels as u32.
        Value::Labels(crate::ops::Labels::U16(a)) => {
            std::borrow::Cow::Owned(a.slice(r).iter().flat_map(|&v| u32::from(v).to_le_bytes()).collect())
        }
        Value::Image(Data::U8(a)) => io::view_le_bytes(a.slice(r)),
        Value::Image(Data::U16(a)) => io::view_le_bytes(a.slice(r)),
        Value::Image(Data::U32(a)) => io::view_le_bytes(a.slice(r)),
        Value::Image(Data::F32(a)) => io::view_le_bytes(a.slice(r)),
        Value::Image(_) | Value::Table(_) => std::borrow::Cow::Borrowed(&[]),
    }
}

/// Where the chunks are: (first plane, offset, compressed length) each, in plane order.
#[derive(Debug, Clone, Default)]
struct Layout {
    elem: Option<Elem>,
    plane: (usize, usize),
    index: Vec<(usize, u64, u64)>,
    planes: usize,
}

impl Layout {
    fn plane_bytes(&self) -> usize {
        self.plane.0 * self.plane.1 * self.elem.map(Elem::bytes).unwrap_or(1)
    }
    /// Planes `z0..z1`.
    fn read(&self, file: &File, path: &Path, z0: usize, z1: usize) -> Result<Value, String> {
        let elem = self.elem.ok_or_else(|| format!("internal: {}: read before anything was spilled", path.display()))?;
        if z1 > self.planes || z0 > z1 {
            return Err(format!("internal: planes {z0}..{z1} of a spill of {}", self.planes));
        }
        Ok(match elem {
            Elem::Mask => Value::Mask(self.fill(file, path, z0, z1)?),
            Elem::Labels => Value::Labels(self.fill::<u32>(file, path, z0, z1)?.into()),
            Elem::Image(DType::U8) => Value::Image(Data::U8(self.fill(file, path, z0, z1)?)),
            Elem::Image(DType::U16) => Value::Image(Data::U16(self.fill(file, path, z0, z1)?)),
            Elem::Image(DType::U32) => Value::Image(Data::U32(self.fill(file, path, z0, z1)?)),
            Elem::Image(_) => Value::Image(Data::F32(self.fill(file, path, z0, z1)?)),
        })
    }

    /// The values of planes `z0..z1`: the chunks holding them are read and decompressed in
    /// parallel, each straight into its place when it lies wholly inside the range.
    fn fill<T: io::LeNumber + Default + Send>(&self, file: &File, path: &Path, z0: usize, z1: usize) -> Result<Array3<T>, String> {
        let pb = self.plane_bytes();
        let mut out: Array3<T> = crate::util::zeros3((z1 - z0, self.plane.0, self.plane.1));
        let all = out.as_slice_mut().ok_or("internal: a fresh array is contiguous")?;
        if z0 == z1 {
            return Ok(out);
        }
        let bytes = io::bytes_mut(all);
        // Each chunk overlapping z0..z1 with the part of `bytes` its planes fill.
        let first = self.index.partition_point(|&(first, _, _)| first <= z0).saturating_sub(1);
        let mut parts = Vec::new();
        let mut rest = &mut bytes[..];
        let mut z = z0;
        for c in first.. {
            if z >= z1 {
                break;
            }
            let &(start, off, len) = self.index.get(c).ok_or_else(|| format!("{}: spill index cut short", path.display()))?;
            let end = self.index.get(c + 1).map(|e| e.0).unwrap_or(self.planes);
            let upto = z1.min(end);
            if start > z || upto <= z {
                return Err(format!("{}: spill index out of order", path.display()));
            }
            let (here, tail) = rest.split_at_mut((upto - z) * pb);
            parts.push((start, end, z, off, len, here));
            rest = tail;
            z = upto;
        }
        parts.into_par_iter().try_for_each(|(start, end, from, off, len, dest)| {
            let fail = |e: std::io::Error| format!("{}: {e}", path.display());
            let mut comp = vec![0u8; len as usize];
            file.read_exact_at(&mut comp, off).map_err(fail)?;
            let whole = (end - start) * pb;
            if dest.len() == whole {
                let n = with_zstd(|z| z.1.decompress_to_buffer(&comp, dest)).map_err(fail)?;
                if n != whole {
                    return Err(format!("{}: spill chunk cut short", path.display()));
                }
            } else {
                let plain = with_zstd(|z| z.1.decompress(&comp, whole)).map_err(fail)?;
                let at = (from - start) * pb;
                let part = plain.get(at..at + dest.len()).ok_or_else(|| format!("{}: spill file cut short", path.display()))?;
                dest.copy_from_slice(part);
            }
            Ok(())
        })?;
        io::fix_le(out.as_slice_mut().ok_or("internal: a fresh array is contiguous")?);
        Ok(out)
    }
}

/// A spill file being written, slab by slab in z order; what is written can be read already.
pub struct Writer {
    path: PathBuf,
    w: BufWriter<File>,
    layout: Layout,
    offset: u64,
    hash: blake3::Hasher,
}

impl Writer {
    pub fn create(dir: &Path, name: &str) -> Result<Writer, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("{name}.spill"));
        let f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Writer {
            path,
            // Chunks are written whole; a small buffer, since a stage may fill hundreds at once.
            w: BufWriter::with_capacity(64 << 10, f),
            layout: Layout::default(),
            offset: 0,
            hash: blake3::Hasher::new(),
        })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn elem(&self) -> Option<Elem> {
        self.layout.elem
    }
    pub fn shape(&self) -> [usize; 3] {
        [self.layout.planes, self.layout.plane.0, self.layout.plane.1]
    }
    /// Appends the next planes (one element type and plane size throughout), compressed and
    /// written before it returns.
    pub fn append(&mut self, v: &Value) -> Result<(), String> {
        let e = Elem::of(v)?;
        let (nz, ny, nx) = value_dim(v);
        if self.layout.elem.is_none() {
            self.layout = Layout { elem: Some(e), plane: (ny, nx), index: Vec::new(), planes: 0 };
        } else if self.layout.elem != Some(e) || self.layout.plane != (ny, nx) {
            return Err(format!("internal: {}: slabs of different kinds or plane sizes", self.path.display()));
        }
        if nz == 0 {
            return Ok(());
        }
        let pb = self.layout.plane_bytes().max(1);
        let per_chunk = (CHUNK_BYTES / pb).max(1);
        let chunks: Vec<usize> = (0..nz).step_by(per_chunk).collect();
        let comp: Vec<std::io::Result<Vec<u8>>> =
            chunks.into_par_iter().map(|a| with_zstd(|z| z.0.compress(&planes_bytes(v, a, (a + per_chunk).min(nz))))).collect();
        for (k, c) in comp.into_iter().enumerate() {
            let c = c.map_err(|e| format!("{}: compressing: {e}", self.path.display()))?;
            self.layout.index.push((self.layout.planes + k * per_chunk, self.offset, c.len() as u64));
            self.put(&c)?;
        }
        self.layout.planes += nz;
        // Readable at once.
        self.w.flush().map_err(|e| format!("{}: {e}", self.path.display()))
    }
    fn put(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.hash.update(bytes);
        self.offset += bytes.len() as u64;
        self.w.write_all(bytes).map_err(|e| format!("{}: {e}", self.path.display()))
    }
    /// Appends every plane of a finished spill file as it is stored (its compressed chunks
    /// copied, not decoded): the blocks of a split volume become one file.
    pub fn append_file(&mut self, r: &Reader) -> Result<(), String> {
        let e = r.elem();
        let (ny, nx) = r.layout.plane;
        if self.layout.elem.is_none() {
            self.layout = Layout { elem: Some(e), plane: (ny, nx), index: Vec::new(), planes: 0 };
        } else if self.layout.elem != Some(e) || self.layout.plane != (ny, nx) {
            return Err(format!("{}: planes of another kind or size than {}", r.path.display(), self.path.display()));
        }
        for &(first, off, len) in &r.layout.index {
            let mut comp = vec![0u8; len as usize];
            r.file.read_exact_at(&mut comp, off).map_err(|e| format!("{}: {e}", r.path.display()))?;
            self.layout.index.push((self.layout.planes + first, self.offset, len));
            self.put(&comp)?;
        }
        self.layout.planes += r.layout.planes;
        self.w.flush().map_err(|e| format!("{}: {e}", self.path.display()))
    }
    /// Planes `z0..z1` of what was appended so far.
    pub fn read(&self, z0: usize, z1: usize) -> Result<Value, String> {
        let f = File::open(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.layout.read(&f, &self.path, z0, z1)
    }
    /// Writes the index and the trailer: the file, its size and blake3.
    pub fn finish(mut self, owned: bool) -> Result<(Reader, u64, String), String> {
        let elem = self.layout.elem.ok_or_else(|| format!("{}: nothing was spilled", self.path.display()))?;
        let mut tail = Vec::with_capacity(self.layout.index.len() * 24 + TRAILER);
        for (first, o, l) in &self.layout.index {
            tail.extend((*first as u64).to_le_bytes());
            tail.extend(o.to_le_bytes());
            tail.extend(l.to_le_bytes());
        }
        let l = &self.layout;
        for v in [l.index.len() as u64, l.planes as u64, l.plane.0 as u64, l.plane.1 as u64, elem.code()] {
            tail.extend(v.to_le_bytes());
        }
        tail.extend(MAGIC);
        self.put(&tail)?;
        self.w.flush().map_err(|e| format!("{}: {e}", self.path.display()))?;
        let file = File::open(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let shape = self.shape();
        let reader = Reader { path: self.path.clone(), file, layout: self.layout.clone(), shape, owned };
        Ok((reader, self.offset, self.hash.finalize().to_hex().to_string()))
    }
}

/// A finished spill file, read by plane ranges; removed when dropped if `owned` (a temporary).
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    file: File,
    layout: Layout,
    shape: [usize; 3],
    owned: bool,
}

impl Reader {
    /// A finished spill file on disk (a checkpoint), not removed when dropped.
    pub fn open(path: &Path) -> Result<Reader, String> {
        let bad = |why: &str| format!("{}: not a spill file ({why})", path.display());
        let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?.len();
        if len < TRAILER as u64 {
            return Err(bad("too short"));
        }
        let mut t = [0u8; TRAILER];
        file.seek(SeekFrom::Start(len - TRAILER as u64)).map_err(|e| format!("{}: {e}", path.display()))?;
        file.read_exact(&mut t).map_err(|e| format!("{}: {e}", path.display()))?;
        if &t[40..] != MAGIC {
            return Err(bad("no trailer"));
        }
        let u = |k: usize| u64::from_le_bytes(t[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
        let (n, planes, ny, nx, code) = (u(0), u(1), u(2), u(3), u(4));
        let elem = *Elem::ALL.get(code as usize).ok_or_else(|| bad("element type"))?;
        if n.checked_mul(24).is_none_or(|b| b + TRAILER as u64 > len) {
            return Err(bad("index"));
        }
        let mut raw = vec![0u8; n as usize * 24];
        let at = len - TRAILER as u64 - raw.len() as u64;
        file.read_exact_at(&mut raw, at).map_err(|e| format!("{}: {e}", path.display()))?;
        let word = |c: &[u8], k: usize| u64::from_le_bytes(c[k * 8..k * 8 + 8].try_into().expect("8"));
        let index: Vec<(usize, u64, u64)> = raw.chunks_exact(24).map(|c| (word(c, 0) as usize, word(c, 1), word(c, 2))).collect();
        let ordered = index.first().is_none_or(|e| e.0 == 0)
            && index.windows(2).all(|w| w[0].0 < w[1].0)
            && index.last().is_none_or(|e| (e.0 as u64) < planes);
        if !ordered || (n == 0) != (planes == 0) {
            return Err(bad("index"));
        }
        let layout = Layout { elem: Some(elem), plane: (ny as usize, nx as usize), index, planes: planes as usize };
        Ok(Reader { path: path.to_path_buf(), file, layout, shape: [planes as usize, ny as usize, nx as usize], owned: false })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn elem(&self) -> Elem {
        self.layout.elem.unwrap_or(Elem::Mask)
    }
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }
    /// Planes `z0..z1`.
    pub fn read(&self, z0: usize, z1: usize) -> Result<Value, String> {
        self.layout.read(&self.file, &self.path, z0, z1)
    }
    /// Moves the file (a checkpoint adopts it); it is no longer removed when dropped.
    pub fn keep_at(mut self, path: PathBuf) -> Reader {
        self.path = path;
        self.owned = false;
        self
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_round_trip_through_compressed_chunks_at_any_range() {
        let dir = tempfile::tempdir().unwrap();
        // 37 planes of 300×200 u32: 240 KB a plane, 4 planes a chunk; appends of 5 planes make
        // chunks of 4 and 1.
        let a = Array3::from_shape_fn((37, 300, 200), |(z, y, x)| ((z * 7 + y / 9) as u32) * 1000 + (x as u32 / 50));
        let mut w = Writer::create(dir.path(), "t").unwrap();
        for z in (0..37).step_by(5) {
            let z1 = (z + 5).min(37);
            w.append(&Value::Labels((a.slice(ndarray::s![z..z1, .., ..]).to_owned()).into())).unwrap();
            // Readable while being written.
            assert_eq!(w.read(0, z1).unwrap(), Value::Labels((a.slice(ndarray::s![0..z1, .., ..]).to_owned()).into()));
        }
        let (r, bytes, _) = w.finish(true).unwrap();
        assert!(bytes < (37 * 300 * 200 * 4 / 10) as u64, "labels compress: {bytes} bytes");
        for (z0, z1) in [(0, 37), (3, 4), (4, 9), (35, 37), (0, 1), (12, 12)] {
            assert_eq!(r.read(z0, z1).unwrap(), Value::Labels((a.slice(ndarray::s![z0..z1, .., ..]).to_owned()).into()), "{z0}..{z1}");
        }
        let again = Reader::open(r.path()).unwrap();
        assert_eq!((again.shape(), again.elem()), ([37, 300, 200], Elem::Labels));
        assert_eq!(again.read(10, 30).unwrap(), r.read(10, 30).unwrap());
        assert!(r.read(30, 38).is_err());
        let path = r.path().to_path_buf();
        drop(again);
        drop(r);
        assert!(!path.exists(), "a temporary spill is removed with its last reader");
    }

    #[test]
    fn files_append_whole_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = Array3::from_shape_fn((23, 40, 30), |(z, y, x)| (z * 1200 + y * 30 + x) as u32);
        let mut parts = Vec::new();
        for (k, (z0, z1)) in [(0, 7), (7, 8), (8, 23)].into_iter().enumerate() {
            let mut w = Writer::create(dir.path(), &format!("p{k}")).unwrap();
            w.append(&Value::Labels((a.slice(ndarray::s![z0..z1, .., ..]).to_owned()).into())).unwrap();
            parts.push(w.finish(false).unwrap().0);
        }
        let mut all = Writer::create(dir.path(), "all").unwrap();
        for p in &parts {
            all.append_file(p).unwrap();
        }
        let (r, _, _) = all.finish(false).unwrap();
        let again = Reader::open(r.path()).unwrap();
        assert_eq!(again.read(0, 23).unwrap(), Value::Labels((a.clone()).into()));
        assert_eq!(again.read(6, 9).unwrap(), Value::Labels((a.slice(ndarray::s![6..9, .., ..]).to_owned()).into()));
        let mut mask = Writer::create(dir.path(), "m").unwrap();
        mask.append(&Value::Mask(Array3::zeros((1, 40, 30)))).unwrap();
        assert!(mask.append_file(&again).is_err(), "another element type is refused");
    }

    #[test]
    fn damaged_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.spill");
        std::fs::write(&p, b"short").unwrap();
        assert!(Reader::open(&p).unwrap_err().contains("not a spill file"));
        std::fs::write(&p, vec![7u8; 200]).unwrap();
        assert!(Reader::open(&p).unwrap_err().contains("no trailer"));
    }
}
