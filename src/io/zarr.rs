//! OME-Zarr (OME-NGFF 0.4 on Zarr v2, 0.5 on Zarr v3): the only place that knows about Zarr.
//!
//! Arrays are read and written through the `zarrs` crate (pinned in Cargo.toml: its API changes
//! between 0.x releases), which brings every chunk codec the NGFF tools write (zstd, gzip,
//! blosc, crc32c, sharding, transpose). The NGFF metadata — `multiscales`, `axes`,
//! `coordinateTransformations`, `image-label` — is plain JSON and handled here.
//!
//! Reading: an image group (its first multiscale's level 0) or one array of it (another level)
//! is a z-stack whose axes are the `space` axes; other axes (time, channel) must have length 1.
//! Planes are read by chunks (the subchunks of shards), so a volume larger than memory streams;
//! a streamed reader keeps the rows of chunks its last read decoded and decodes the next row
//! ahead on the thread pool ([`Reader`]).
//!
//! Writing ([`ZarrWriter`]): an NGFF 0.5 image group, level 0 plus 2× levels (mean for images,
//! nearest for masks and labels) until the smallest side is at most 256; chunks of 256×256 in
//! y and x, as many planes as keep a chunk row under 16 MiB (at most 64); zstd; each row of
//! chunks one shard (one file). Slabs arrive in z order and every level is written shard by
//! shard, chunks compressed in parallel, in bounded memory. The store is built under a temporary name and renamed into place when complete.
//! Labels whose sample image is an NGFF 0.5 image group are written as that image's `labels/`
//! group in a store of their own whose levels link (symlinks) to the image's arrays, so the
//! input is never modified and napari opens image and labels together.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::Array3;
use rayon::prelude::*;
use serde_json::{Value as Json, json};
use zarrs::array::{Array, ArrayBuilder, ArrayShardedExt, ArrayShardedReadableExt, ArrayShardedReadableExtCache, ChunkGrid, data_type};
use zarrs::filesystem::FilesystemStore;
use zarrs::plugin::ExtensionName;

use super::{DType, Data, Header, Image, ImageError, ReadLimits, Spacing, check_budget};

mod bounded;

/// The NGFF version tessera writes.
const NGFF_VERSION: &str = "0.5";
/// Chunk side in y and x.
const CHUNK_YX: usize = 256;
/// Largest chunk row (one chunk depth of planes) a level buffers, in bytes.
const ROW_BYTES: usize = 16 << 20;
/// Levels are added while the smallest side is larger than this.
const SMALLEST_SIDE: usize = 256;
/// zstd level of written chunks.
const ZSTD_LEVEL: i32 = 3;

/// Whether `path` is a Zarr node (group or array, v2 or v3).
pub(crate) fn is_zarr(path: &Path) -> bool {
    path.is_dir() && ["zarr.json", ".zarray", ".zgroup", ".zattrs"].iter().any(|f| path.join(f).is_file())
}

/// What a node's metadata files say.
struct Node {
    array: bool,
    v3: bool,
    attrs: Json,
}

fn read_json(path: &Path) -> Result<Option<Json>, ImageError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| ImageError::corrupt(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ImageError::io(path, e)),
    }
}

fn node(dir: &Path) -> Result<Option<Node>, ImageError> {
    if let Some(j) = read_json(&dir.join("zarr.json"))? {
        let array = match j.get("node_type").and_then(Json::as_str) {
            Some("array") => true,
            Some("group") => false,
            other => {
                return Err(ImageError::corrupt(&dir.join("zarr.json"), format!("node_type {other:?}, expected \"array\" or \"group\"")));
            }
        };
        return Ok(Some(Node { array, v3: true, attrs: j.get("attributes").cloned().unwrap_or_else(|| json!({})) }));
    }
    let attrs = read_json(&dir.join(".zattrs"))?;
    if dir.join(".zarray").is_file() {
        return Ok(Some(Node { array: true, v3: false, attrs: attrs.unwrap_or_else(|| json!({})) }));
    }
    if dir.join(".zgroup").is_file() || attrs.is_some() {
        return Ok(Some(Node { array: false, v3: false, attrs: attrs.unwrap_or_else(|| json!({})) }));
    }
    Ok(None)
}

/// The OME attributes of a node: under `ome` in 0.5, the attributes themselves in 0.4.
fn ome(attrs: &Json) -> &Json {
    attrs.get("ome").unwrap_or(attrs)
}

#[derive(Debug, Clone)]
struct AxisMeta {
    name: String,
    kind: Option<String>,
    unit: Option<String>,
}

#[derive(Debug, Clone)]
struct Dataset {
    path: String,
    scale: Option<Vec<f64>>,
    /// The dataset's `coordinateTransformations` as the file has them.
    transforms: Json,
}

#[derive(Debug, Clone)]
struct Multiscale {
    axes: Vec<AxisMeta>,
    datasets: Vec<Dataset>,
    /// A scale applying to every dataset.
    scale: Option<Vec<f64>>,
    /// The multiscale as the file has it.
    raw: Json,
}

fn transforms(j: Option<&Json>) -> (Option<Vec<f64>>, Option<Vec<f64>>) {
    let (mut scale, mut translation) = (None, None);
    for t in j.and_then(Json::as_array).into_iter().flatten() {
        let v = |k: &str| t.get(k).and_then(Json::as_array).map(|a| a.iter().map(|x| x.as_f64().unwrap_or(1.0)).collect::<Vec<f64>>());
        match t.get("type").and_then(Json::as_str) {
            Some("scale") => scale = v("scale"),
            Some("translation") => translation = v("translation"),
            _ => {}
        }
    }
    (scale, translation)
}

/// The first multiscale of a group, if it has one.
fn multiscale(dir: &Path, attrs: &Json) -> Result<Option<Multiscale>, ImageError> {
    let Some(ms) = ome(attrs).get("multiscales") else { return Ok(None) };
    let m = ms.as_array().and_then(|a| a.first()).ok_or_else(|| ImageError::corrupt(dir, "`multiscales` is not a non-empty list"))?;
    let axes = m
        .get("axes")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .map(|x| match x {
                    Json::String(s) => AxisMeta { name: s.clone(), kind: None, unit: None },
                    _ => AxisMeta {
                        name: x.get("name").and_then(Json::as_str).unwrap_or("").to_string(),
                        kind: x.get("type").and_then(Json::as_str).map(str::to_string),
                        unit: x.get("unit").and_then(Json::as_str).map(str::to_string),
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    let datasets: Vec<Dataset> = m
        .get("datasets")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|d| {
                    let path = d.get("path")?.as_str()?.trim_matches('/').to_string();
                    let t = d.get("coordinateTransformations");
                    let scale = transforms(t).0;
                    Some(Dataset { path, scale, transforms: t.cloned().unwrap_or(Json::Null) })
                })
                .collect()
        })
        .unwrap_or_default();
    if datasets.is_empty() {
        return Err(ImageError::corrupt(dir, "the first multiscale lists no datasets"));
    }
    let scale = transforms(m.get("coordinateTransformations")).0;
    Ok(Some(Multiscale { axes, datasets, scale, raw: m.clone() }))
}

/// The sample types a Zarr array may have and how they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    U8,
    U16,
    U32,
    F32,
    /// Read as f32, as TIFF does.
    I8,
    I16,
    F64,
}

impl Stored {
    fn of(dt: &zarrs::array::DataType) -> Option<Stored> {
        [
            (data_type::uint8(), Stored::U8),
            (data_type::uint16(), Stored::U16),
            (data_type::uint32(), Stored::U32),
            (data_type::float32(), Stored::F32),
            (data_type::int8(), Stored::I8),
            (data_type::int16(), Stored::I16),
            (data_type::float64(), Stored::F64),
        ]
        .into_iter()
        .find(|(d, _)| d == dt)
        .map(|(_, s)| s)
    }
    fn dtype(self) -> DType {
        match self {
            Stored::U8 => DType::U8,
            Stored::U16 => DType::U16,
            Stored::U32 => DType::U32,
            Stored::F32 | Stored::I8 | Stored::I16 | Stored::F64 => DType::F32,
        }
    }
}

/// An image in a Zarr store: which array, how its dimensions map to z, y, x, its spacing.
struct Located {
    array: Array<FilesystemStore>,
    /// For each array dimension: `Some(0|1|2)` for z, y, x; `None` for a dimension of length 1
    /// that is dropped (time, channel).
    dims: Vec<Option<usize>>,
    shape: [usize; 3],
    ndim: u8,
    stored: Stored,
    spacing: Option<Spacing>,
    /// The image group and multiscale the array belongs to, and its level in it.
    group: Option<(PathBuf, Multiscale, usize)>,
    v3: bool,
}

fn open_array(dir: &Path) -> Result<Array<FilesystemStore>, ImageError> {
    bounded::install();
    let store = Arc::new(FilesystemStore::new(dir).map_err(|e| ImageError::corrupt(dir, e))?);
    let array = Array::open(store.clone(), "/").map_err(|e| ImageError::corrupt(dir, e))?;
    // zarrs builds a Zarr v2 array's blosc codec itself, not from the codec registry (to pass it
    // the element size), so it would not be bounded; the same array described as v3 (zarrs' own
    // conversion: same chunk keys, codecs and fill value) is.
    if let zarrs::metadata::ArrayMetadata::V2(v2) = array.metadata()
        && v2.compressor.as_ref().is_some_and(|c| c.id() == "blosc")
    {
        let v3 = zarrs::convert::array_metadata_v2_to_v3(v2).map_err(|e| ImageError::corrupt(dir, e))?;
        return Array::new_with_metadata(store, "/", zarrs::metadata::ArrayMetadata::V3(v3)).map_err(|e| ImageError::corrupt(dir, e));
    }
    Ok(array)
}

fn zarr_err(path: &Path, e: impl std::fmt::Display) -> ImageError {
    ImageError::corrupt(path, e)
}

/// The unit tessera spells as NGFF names it (UDUNITS-2); reading uses [`super::normalise_unit`].
fn unit_to_ngff(u: &str) -> Option<&'static str> {
    Some(match u {
        "um" | "µm" | "micron" | "micrometer" => "micrometer",
        "nm" | "nanometer" => "nanometer",
        "mm" | "millimeter" => "millimeter",
        "cm" | "centimeter" => "centimeter",
        "m" | "meter" => "meter",
        "angstrom" => "angstrom",
        _ => return None,
    })
}

fn locate(path: &Path) -> Result<Located, ImageError> {
    let Some(n) = node(path)? else {
        return Err(ImageError::corrupt(path, "not a Zarr node: no zarr.json, .zarray, .zgroup or .zattrs"));
    };
    let (array_dir, group) = if n.array {
        // An array: its level and spacing come from the parent image group, if it is one.
        let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("").to_string();
        let parent = path.parent().map(Path::to_path_buf);
        let group = parent.and_then(|p| {
            let pn = node(&p).ok().flatten().filter(|pn| !pn.array)?;
            let ms = multiscale(&p, &pn.attrs).ok().flatten()?;
            let level = ms.datasets.iter().position(|d| d.path == name)?;
            Some((p, ms, level))
        });
        (path.to_path_buf(), group)
    } else {
        let ms = multiscale(path, &n.attrs)?.ok_or_else(|| {
            ImageError::unsupported(
                path,
                "a Zarr group without OME-NGFF `multiscales`: give the path of an image group (e.g. scan.ome.zarr) or of one of its arrays (scan.ome.zarr/0)",
            )
        })?;
        (path.join(&ms.datasets[0].path), Some((path.to_path_buf(), ms, 0)))
    };
    let array = open_array(&array_dir)?;
    let v3 = node(&array_dir)?.is_some_and(|a| a.v3);
    let shape: Vec<u64> = array.shape().to_vec();
    let nd = shape.len();
    let stored = Stored::of(array.data_type()).ok_or_else(|| {
        ImageError::unsupported(
            &array_dir,
            format!("{} samples (supported: uint8/16/32 and float32; int8/int16/float64 are read as float32)", array.data_type()),
        )
    })?;
    let axes: Option<&[AxisMeta]> = group.as_ref().map(|(_, ms, _)| ms.axes.as_slice()).filter(|a| a.len() == nd);
    let spatial: Vec<usize> = match axes {
        Some(a) => (0..nd)
            .filter(|&i| match &a[i].kind {
                Some(k) => k == "space",
                None => matches!(a[i].name.as_str(), "z" | "y" | "x"),
            })
            .collect(),
        None => (nd.saturating_sub(3)..nd).collect(),
    };
    let axis_name = |i: usize| axes.map(|a| a[i].name.clone()).unwrap_or_else(|| format!("dimension {i}"));
    if !(2..=3).contains(&spatial.len()) {
        return Err(ImageError::unsupported(&array_dir, format!("{} spatial axes (expected 2 or 3) among {nd} dimensions", spatial.len())));
    }
    let mut dims = vec![None; nd];
    for i in 0..nd {
        if let Some(p) = spatial.iter().position(|&s| s == i) {
            dims[i] = Some(p + 3 - spatial.len());
        } else if shape[i] != 1 {
            return Err(ImageError::unsupported(
                &array_dir,
                format!(
                    "axis `{}` has {} entries; tessera reads one channel and one time point (write them as separate images)",
                    axis_name(i),
                    shape[i]
                ),
            ));
        }
    }
    let len = |i: usize| usize::try_from(shape[i]).map_err(|_| zarr_err(&array_dir, "shape does not fit in memory addresses"));
    let shape3 =
        if spatial.len() == 3 { [len(spatial[0])?, len(spatial[1])?, len(spatial[2])?] } else { [1, len(spatial[0])?, len(spatial[1])?] };
    let spacing = group.as_ref().and_then(|(_, ms, level)| {
        let d = &ms.datasets[*level];
        let mut scale = d.scale.clone().filter(|s| s.len() == nd)?;
        if let Some(g) = ms.scale.as_ref().filter(|g| g.len() == nd) {
            scale.iter_mut().zip(g).for_each(|(s, g)| *s *= g);
        }
        let unit = axes.and_then(|a| spatial.iter().rev().find_map(|&i| a[i].unit.clone())).map(|u| super::normalise_unit(&u));
        let mut zyx = [1.0; 3];
        for (k, &i) in spatial.iter().enumerate() {
            zyx[k + 3 - spatial.len()] = scale[i];
        }
        Some(Spacing { zyx, unit: unit.unwrap_or_else(|| "pixel".into()) })
    });
    Ok(Located { array, dims, shape: shape3, ndim: spatial.len() as u8, stored, spacing, group, v3 })
}

/// The path of level `level` of an OME-Zarr image group (the manifest's `level` column).
pub fn level_path(path: &Path, level: usize) -> Result<PathBuf, ImageError> {
    let n = node(path)?.ok_or_else(|| ImageError::corrupt(path, "`level` is given but this is not a Zarr image group"))?;
    let ms = (!n.array)
        .then(|| multiscale(path, &n.attrs))
        .transpose()?
        .flatten()
        .ok_or_else(|| ImageError::unsupported(path, "`level` is given but this is not an OME-Zarr image group with `multiscales`"))?;
    let d = ms.datasets.get(level).ok_or_else(|| {
        ImageError::corrupt(
            path,
            format!("level {level} asked of an image with {} levels (0..{})", ms.datasets.len(), ms.datasets.len() - 1),
        )
    })?;
    Ok(path.join(&d.path))
}

pub fn read_header(path: &Path) -> Result<Header, ImageError> {
    let l = locate(path)?;
    Ok(Header { shape: l.shape, dtype: l.stored.dtype(), ndim: l.ndim, spacing: l.spacing })
}

/// Reads planes `z0..z1` (all when `None`).
pub fn read(path: &Path, limits: ReadLimits, range: Option<(usize, usize)>) -> Result<Image, ImageError> {
    let r = Reader::open(path, limits)?;
    let (z0, z1) = range.unwrap_or((0, r.inner.loc.shape[0]));
    check_budget(path, [z1.saturating_sub(z0), r.inner.loc.shape[1], r.inner.loc.shape[2]], r.inner.loc.stored.dtype(), limits)?;
    let data = r.read(z0, z1)?;
    Ok(Image { data, ndim: r.inner.loc.ndim, spacing: r.inner.loc.spacing.clone() })
}

/// An open Zarr image, read plane range by plane range.
///
/// Reads go by the array's read grid — its chunks, or the subchunks of its shards — and each
/// decoded chunk is copied row by row into the planes asked for (chunks decoded in parallel, then
/// planes filled in parallel), so the only full-size buffer is the one returned.
///
/// A cached reader ([`Reader::open_cached`]) keeps the rows of chunks its last read decoded, and
/// decodes the next row ahead on the thread pool while the caller computes: streamed samples read
/// consecutive plane ranges with halos, so each chunk is then decoded once, mostly on a core that
/// would otherwise wait. A read never waits for that decoding: it takes the chunks already
/// decoded and decodes the others itself (see [`Ahead`]).
pub struct Reader {
    inner: Arc<Inner>,
    /// Rows of decoded chunks kept from the last read, latest last.
    kept: std::sync::Mutex<Vec<Arc<Row>>>,
    /// The row being decoded ahead, if any.
    ahead: std::sync::Mutex<Option<Ahead>>,
    /// Bytes of decoded rows the reader may hold: kept rows plus the row ahead.
    cache_limit: u64,
}

/// What decoding needs, shared with the row decoded ahead.
struct Inner {
    path: PathBuf,
    loc: Located,
    /// The read grid: the array's chunks, or its shards' subchunks.
    grid: ChunkGrid,
    shards: ArrayShardedReadableExtCache,
    /// The array dimension of z, y and x (`None` for the z of a 2D image).
    axis_dim: [Option<usize>; 3],
    /// Bytes per stored element.
    size: usize,
}

/// One decoded chunk of the read grid: its first voxel and extent in z, y, x (the whole chunk,
/// which may reach past the image's edge), the strides of z, y and x in its elements (C order of
/// the array's dimensions), and its bytes as decoded (native byte order), taken as they are.
struct Piece {
    start: [usize; 3],
    shape: [usize; 3],
    strides: [usize; 3],
    bytes: Vec<u8>,
}

/// The chunks of one z index of the read grid: the planes they cover, and the chunks.
struct Row {
    z: Range<usize>,
    pieces: Vec<Piece>,
}

impl Row {
    fn bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.bytes.len() as u64).sum()
    }
}

/// A row a read decodes: its planes, the chunks still to decode, and those decoded ahead.
struct ToDecode {
    z: Range<usize>,
    chunks: Vec<Vec<u64>>,
    done: Vec<Piece>,
}

/// A row decoded ahead, one chunk after another by one job on the pool: its planes, and where
/// the decoding stands.
///
/// The read that wants the row takes the chunks decoded so far and decodes the rest itself (the
/// one being decoded at that moment too) rather than wait. Reads run on the pool, often as the
/// stolen half of a `rayon::join` (`ops::slab::pipelined`): the job decoding ahead may be beneath
/// the read on the same thread's stack, waiting inside the decoder for pool work, and a wait
/// for it there would never end.
struct Ahead {
    z: Range<usize>,
    work: Arc<std::sync::Mutex<AheadWork>>,
}

struct AheadWork {
    chunks: Vec<Vec<u64>>,
    /// Chunks `..next` are decoded or being decoded; the others are not started.
    next: usize,
    /// Per chunk: its decoded piece (a chunk that failed stays `None`; the read decodes it again
    /// and meets the error itself).
    pieces: Vec<Option<Piece>>,
    /// The read took the row (or it will not be read): nothing more is started or kept.
    taken: bool,
}

/// Decoded chunk buffers above this many bytes are copied into the planes before more rows are
/// decoded (a whole-volume read holds one such batch beside its output, not a second volume).
const BATCH_BYTES: u64 = 64 << 20;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Reader {
    pub fn open(path: &Path, limits: ReadLimits) -> Result<Reader, ImageError> {
        Reader::open_cached(path, 0, limits)
    }

    /// A reader that may hold `cache_limit` bytes of decoded rows: the rows its last read
    /// decoded, and the next row decoded ahead. Refused when one chunk, as decoded, is past
    /// `limits`.
    pub fn open_cached(path: &Path, cache_limit: u64, limits: ReadLimits) -> Result<Reader, ImageError> {
        let loc = locate(path)?;
        let grid = loc.array.subchunk_grid();
        let shards = ArrayShardedReadableExtCache::new(&loc.array);
        let mut axis_dim = [None; 3];
        for (i, d) in loc.dims.iter().enumerate() {
            if let Some(a) = d {
                axis_dim[*a] = Some(i);
            }
        }
        let size = match loc.stored {
            Stored::U8 | Stored::I8 => 1,
            Stored::U16 | Stored::I16 => 2,
            Stored::U32 | Stored::F32 => 4,
            Stored::F64 => 8,
        };
        let inner = Inner { path: path.to_path_buf(), loc, grid, shards, axis_dim, size };
        let r = Reader { inner: Arc::new(inner), kept: Default::default(), ahead: Default::default(), cache_limit };
        r.check_chunks(limits)?;
        Ok(r)
    }

    /// Checks that one chunk of the read grid (a chunk, or a subchunk of a shard), as decoded,
    /// fits within `limits`: chunks are decoded whole, and a store's metadata may give a chunk
    /// shape far larger than its image.
    fn check_chunks(&self, limits: ReadLimits) -> Result<(), ImageError> {
        let inner = &*self.inner;
        let first = vec![0u64; inner.loc.dims.len()];
        let s = inner.grid.subset(&first).map_err(|e| zarr_err(&inner.path, e))?;
        let Some(s) = s else { return Ok(()) };
        let bytes = s.shape().iter().fold(inner.size as u128, |a, &n| a.saturating_mul(n as u128));
        if bytes > limits.max_bytes as u128 {
            let dims: Vec<String> = s.shape().iter().map(u64::to_string).collect();
            return Err(ImageError::TooLarge {
                path: inner.path.clone(),
                what: format!("its chunks ({} {})", dims.join("×"), inner.loc.array.data_type().name_v3().unwrap_or_default()),
                needed: bytes.min(u64::MAX as u128) as u64,
                limit: limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Planes `z0..z1`.
    pub fn read(&self, z0: usize, z1: usize) -> Result<Data, ImageError> {
        let nz = self.inner.loc.shape[0];
        if z0 > z1 || z1 > nz {
            return Err(ImageError::corrupt(&self.inner.path, format!("planes {z0}..{z1} asked of a stack of {nz}")));
        }
        Ok(match self.inner.loc.stored {
            Stored::U8 => Data::U8(self.read_as::<u8>(z0, z1)?),
            Stored::U16 => Data::U16(self.read_as::<u16>(z0, z1)?),
            Stored::U32 => Data::U32(self.read_as::<u32>(z0, z1)?),
            Stored::F32 => Data::F32(self.read_as::<f32>(z0, z1)?),
            Stored::I8 => Data::F32(crate::util::map3(&self.read_as::<i8>(z0, z1)?, f32::from)),
            Stored::I16 => Data::F32(crate::util::map3(&self.read_as::<i16>(z0, z1)?, f32::from)),
            Stored::F64 => Data::F32(crate::util::map3(&self.read_as::<f64>(z0, z1)?, |x| x as f32)),
        })
    }

    fn read_as<T: bytemuck::Pod + Default + Send + Sync>(&self, z0: usize, z1: usize) -> Result<Array3<T>, ImageError> {
        let inner = &*self.inner;
        let [_, ny, nx] = inner.loc.shape;
        let plane = ny * nx;
        let mut out = crate::util::zeros3::<T>((z1 - z0, ny, nx));
        if z0 == z1 || plane == 0 {
            return Ok(out);
        }
        let old = std::mem::take(&mut *lock(&self.kept));
        let slice = out.as_slice_mut().expect("zeros3 is contiguous");
        // Rows in z order, gathered into batches that are decoded together and then copied.
        let mut keep: Vec<Arc<Row>> = Vec::new();
        let mut z = z0;
        while z < z1 {
            let mut batch: Vec<Arc<Row>> = Vec::new();
            let mut todo: Vec<ToDecode> = Vec::new();
            let mut bytes = 0u64;
            while z < z1 && (bytes < BATCH_BYTES || (batch.is_empty() && todo.is_empty())) {
                let (rz, chunks) = inner.row_at(z)?;
                z = rz.end.min(z1);
                if let Some(r) = old.iter().find(|r| r.z == rz) {
                    bytes += r.bytes();
                    batch.push(r.clone());
                } else {
                    bytes += inner.row_bytes(&rz);
                    let (chunks, done) = self.take_ahead(&rz).unwrap_or((chunks, Vec::new()));
                    todo.push(ToDecode { z: rz, chunks, done });
                }
            }
            // Decode the new rows' chunks, all in parallel.
            let jobs: Vec<(usize, &Vec<u64>)> = todo.iter().enumerate().flat_map(|(k, t)| t.chunks.iter().map(move |c| (k, c))).collect();
            let pieces: Vec<(usize, Piece)> =
                jobs.into_par_iter().map(|(k, c)| inner.decode(c).map(|p| (k, p))).collect::<Result<_, _>>()?;
            let mut rows: Vec<Row> = todo.into_iter().map(|t| Row { z: t.z, pieces: t.done }).collect();
            for (k, p) in pieces {
                rows[k].pieces.push(p);
            }
            batch.extend(rows.into_iter().map(Arc::new));
            batch.sort_by_key(|r| r.z.start);
            // Copy into the planes of this batch.
            let b0 = batch[0].z.start.max(z0);
            let b1 = batch[batch.len() - 1].z.end.min(z1);
            slice[(b0 - z0) * plane..(b1 - z0) * plane].par_chunks_mut(plane).enumerate().for_each(|(k, dst)| {
                let zz = b0 + k;
                if let Some(row) = batch.iter().find(|r| r.z.contains(&zz)) {
                    for p in &row.pieces {
                        copy_plane(p, zz, bytemuck::cast_slice_mut(dst), [ny, nx], inner.size);
                    }
                }
            });
            // Keep the last rows read within the limit, the latest first.
            keep.extend(batch);
            let mut total = 0;
            let from = keep.iter().rposition(|r| {
                total += r.bytes();
                total > self.cache_limit
            });
            if let Some(k) = from {
                keep.drain(..=k);
            }
        }
        // Then decode the next row ahead if it fits beside them.
        let total = keep.iter().map(|r| r.bytes()).sum();
        let end = keep.last().map(|r| r.z.end);
        *lock(&self.kept) = keep;
        if let Some(e) = end.filter(|&e| e < inner.loc.shape[0]) {
            self.decode_ahead(e, total)?;
        }
        Ok(out)
    }

    /// Starts decoding the row that begins at plane `z` on the thread pool, unless it is already
    /// under way or would not fit beside the `kept` bytes.
    fn decode_ahead(&self, z: usize, kept: u64) -> Result<(), ImageError> {
        let mut ahead = lock(&self.ahead);
        if ahead.as_ref().is_some_and(|a| a.z.start == z) {
            return Ok(());
        }
        let (rz, chunks) = self.inner.row_at(z)?;
        if kept + self.inner.row_bytes(&rz) > self.cache_limit {
            return Ok(());
        }
        if let Some(old) = ahead.take() {
            abandon(&old);
        }
        let n = chunks.len();
        let work = Arc::new(std::sync::Mutex::new(AheadWork { chunks, next: 0, pieces: (0..n).map(|_| None).collect(), taken: false }));
        let (inner, job) = (self.inner.clone(), work.clone());
        rayon::spawn(move || {
            loop {
                let (k, chunk) = {
                    let mut w = lock(&job);
                    if w.taken || w.next == w.chunks.len() {
                        return;
                    }
                    w.next += 1;
                    (w.next - 1, w.chunks[w.next - 1].clone())
                };
                let piece = inner.decode(&chunk).ok();
                let mut w = lock(&job);
                if w.taken {
                    return;
                }
                w.pieces[k] = piece;
            }
        });
        *ahead = Some(Ahead { z: rz, work });
        Ok(())
    }

    /// If the row of planes `z` is being decoded ahead: the chunks still to decode and the
    /// pieces decoded (the decoding ahead stops; nothing is waited for).
    fn take_ahead(&self, z: &Range<usize>) -> Option<(Vec<Vec<u64>>, Vec<Piece>)> {
        let a = lock(&self.ahead).take_if(|a| a.z == *z)?;
        let mut w = lock(&a.work);
        w.taken = true;
        let w = &mut *w;
        let (mut todo, mut done) = (Vec::new(), Vec::new());
        for (chunk, piece) in w.chunks.iter_mut().zip(&mut w.pieces) {
            match piece.take() {
                Some(p) => done.push(p),
                None => todo.push(std::mem::take(chunk)),
            }
        }
        Some((todo, done))
    }
}

/// A row decoded ahead that will not be read: no more of it is decoded, and what was is dropped.
fn abandon(a: &Ahead) {
    let mut w = lock(&a.work);
    w.taken = true;
    w.pieces.clear();
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(a) = lock(&self.ahead).take() {
            abandon(&a);
        }
    }
}

impl Inner {
    /// The bytes of planes `z` as stored (what decoding a row of them holds, edges aside).
    fn row_bytes(&self, z: &Range<usize>) -> u64 {
        (z.len() * self.loc.shape[1] * self.loc.shape[2] * self.size) as u64
    }

    /// The planes of the row of the read grid that holds plane `z`, and its chunks' indices.
    fn row_at(&self, z: usize) -> Result<(Range<usize>, Vec<Vec<u64>>), ImageError> {
        let nd = self.loc.dims.len();
        let mut point = vec![0u64; nd];
        if let Some(d) = self.axis_dim[0] {
            point[d] = z as u64;
        }
        let bad = |what: &str| zarr_err(&self.path, format!("the chunk grid has no chunk {what} plane {z}"));
        let first = self.grid.chunk_indices(&point).map_err(|e| zarr_err(&self.path, e))?.ok_or_else(|| bad("at"))?;
        let rz = match self.axis_dim[0] {
            Some(d) => {
                let s = self.grid.subset(&first).map_err(|e| zarr_err(&self.path, e))?.ok_or_else(|| bad("around"))?;
                let (a, b) = (s.start()[d] as usize, (s.start()[d] + s.shape()[d]) as usize);
                a..b.min(self.loc.shape[0])
            }
            None => 0..1,
        };
        let grid = self.grid.grid_shape();
        let ranges: Vec<Range<u64>> = (0..nd)
            .map(|i| if self.axis_dim[1] == Some(i) || self.axis_dim[2] == Some(i) { 0..grid[i] } else { first[i]..first[i] + 1 })
            .collect();
        let chunks = zarrs::array::ArraySubset::new_with_ranges(&ranges).indices().into_iter().map(|c| c.to_vec()).collect();
        Ok((rz, chunks))
    }

    /// One chunk of the read grid, decoded.
    fn decode(&self, chunk: &[u64]) -> Result<Piece, ImageError> {
        let err = |e: zarrs::array::ArrayError| zarr_err(&self.path, e);
        let s =
            self.grid.subset(chunk).map_err(|e| zarr_err(&self.path, e))?.ok_or_else(|| zarr_err(&self.path, "chunk outside the grid"))?;
        let decoded: zarrs::array::ArrayBytes<'static> =
            self.loc.array.retrieve_subchunk_opt(&self.shards, chunk, &zarrs::array::CodecOptions::default()).map_err(err)?;
        let bytes = decoded.into_fixed().map_err(|e| zarr_err(&self.path, e))?.into_owned();
        let shape: Vec<usize> = s.shape().iter().map(|&n| n as usize).collect();
        let n: usize = shape.iter().product();
        if bytes.len() != n * self.size {
            return Err(zarr_err(&self.path, format!("chunk {chunk:?} decoded to {} bytes, expected {}", bytes.len(), n * self.size)));
        }
        let mut stride = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1];
        }
        let on = |a: usize, f: &dyn Fn(usize) -> usize, none: usize| self.axis_dim[a].map_or(none, f);
        let start = [0, 1, 2].map(|a| on(a, &|d| s.start()[d] as usize, 0));
        let extent = [0, 1, 2].map(|a| on(a, &|d| shape[d], 1));
        let strides = [0, 1, 2].map(|a| on(a, &|d| stride[d], 0));
        Ok(Piece { start, shape: extent, strides, bytes })
    }
}

/// Plane `z` of chunk `p` copied into its place in `dst` (the bytes of one image plane of
/// `ny × nx` elements of `size` bytes).
fn copy_plane(p: &Piece, z: usize, dst: &mut [u8], [ny, nx]: [usize; 2], size: usize) {
    if z < p.start[0] || z >= p.start[0] + p.shape[0] || p.start[1] >= ny || p.start[2] >= nx {
        return;
    }
    let base = (z - p.start[0]) * p.strides[0];
    let w = p.shape[2].min(nx - p.start[2]);
    for y in p.start[1]..(p.start[1] + p.shape[1]).min(ny) {
        let src = (base + (y - p.start[1]) * p.strides[1]) * size;
        let at = (y * nx + p.start[2]) * size;
        let row = &mut dst[at..at + w * size];
        if p.strides[2] == 1 {
            row.copy_from_slice(&p.bytes[src..src + w * size]);
        } else {
            for (x, v) in row.chunks_exact_mut(size).enumerate() {
                let s = src + x * p.strides[2] * size;
                v.copy_from_slice(&p.bytes[s..s + size]);
            }
        }
    }
}

/// The files a Zarr image's voxels and spacing come from, for the input hash: the image group's
/// metadata and every file of the array read, in path order.
pub fn input_files(path: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let l = locate(path)?;
    let mut files = Vec::new();
    if let Some((g, ms, level)) = &l.group {
        for f in ["zarr.json", ".zgroup", ".zattrs"] {
            if g.join(f).is_file() {
                files.push(g.join(f));
            }
        }
        let dir = g.join(&ms.datasets[*level].path);
        files.extend(crate::util::files_under(&dir).map_err(|e| ImageError::io(&dir, e))?);
    } else {
        files.extend(crate::util::files_under(path).map_err(|e| ImageError::io(path, e))?);
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// What a written voxel output holds: how levels are downsampled and what metadata it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Image,
    Mask,
    Labels,
}

/// A sample type tessera writes to Zarr.
trait Px: Copy + Default + Send + Sync + zarrs::array::Element + Into<zarrs::array::builder::ArrayBuilderFillValue> + 'static {
    fn mean(v: &[Self]) -> Self;
    fn data_type() -> zarrs::array::DataType;
    fn as_u32(self) -> u32;
}

macro_rules! px_int {
    ($t:ty, $dt:ident) => {
        impl Px for $t {
            fn mean(v: &[Self]) -> Self {
                let n = v.len() as u64;
                let s: u64 = v.iter().map(|&x| x as u64).sum();
                ((s + n / 2) / n) as $t
            }
            fn data_type() -> zarrs::array::DataType {
                data_type::$dt()
            }
            fn as_u32(self) -> u32 {
                self as u32
            }
        }
    };
}
px_int!(u8, uint8);
px_int!(u16, uint16);
px_int!(u32, uint32);

impl Px for f32 {
    fn mean(v: &[Self]) -> Self {
        (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32
    }
    fn data_type() -> zarrs::array::DataType {
        data_type::float32()
    }
    fn as_u32(self) -> u32 {
        0
    }
}

/// How a level's planes are made.
enum Src {
    /// The planes appended.
    Input,
    /// The mean of 2×2×2 blocks (2×2 for 2D) of the level above.
    Mean,
    /// Level-0 voxels picked by index: `z[i]`, `y[j]`, `x[k]` are the level-0 indices of this
    /// level's plane `i`, row `j`, column `k`.
    Nearest { z: Vec<usize>, y: Vec<usize>, x: Vec<usize>, next: usize },
}

struct Level<T> {
    array: Array<FilesystemStore>,
    /// For each array dimension: `Some(0|1|2)` z, y, x; `None` a dimension of length 1.
    dims: Vec<Option<usize>>,
    shape: [usize; 3],
    chunk: [usize; 3],
    /// The planes of the chunk row being filled.
    buf: Vec<T>,
    received: usize,
    /// Mean: a plane of the level above waiting for its pair.
    pending: Option<Vec<T>>,
    src: Src,
}

impl<T: Px> Level<T> {
    fn plane_len(&self) -> usize {
        self.shape[1] * self.shape[2]
    }
    fn accept(&mut self, plane: &[T], path: &Path) -> Result<(), ImageError> {
        if self.received >= self.shape[0] {
            return Err(ImageError::corrupt(path, format!("more than the {} planes declared", self.shape[0])));
        }
        self.buf.extend_from_slice(plane);
        self.received += 1;
        if self.buf.len() == self.chunk[0] * self.plane_len() || self.received == self.shape[0] {
            self.flush(path)?;
        }
        Ok(())
    }
    /// Writes the buffered chunk row as one shard (its chunks compressed in parallel by zarrs),
    /// padded with zeros to whole chunks.
    fn flush(&mut self, path: &Path) -> Result<(), ImageError> {
        let [_, ny, nx] = self.shape;
        let [cz, cy, cx] = self.chunk;
        let planes = self.buf.len() / self.plane_len().max(1);
        let row = (self.received - planes) / cz;
        let (sy, sx) = (ny.div_ceil(cy) * cy, nx.div_ceil(cx) * cx);
        let shard = if (sy, sx) == (ny, nx) {
            // Planes of whole chunks: the buffer is the shard (the last row padded in z).
            let mut b = std::mem::replace(&mut self.buf, Vec::with_capacity(cz * sy * sx));
            b.resize(cz * sy * sx, T::default());
            b
        } else {
            let mut shard = crate::util::zeroed::<T>(cz * sy * sx);
            let buf = &self.buf;
            shard.par_chunks_mut(sx).enumerate().filter(|(r, _)| r / sy < planes && r % sy < ny).for_each(|(r, out)| {
                let (z, y) = (r / sy, r % sy);
                out[..nx].copy_from_slice(&buf[(z * ny + y) * nx..][..nx]);
            });
            shard
        };
        let idx: Vec<u64> = self.dims.iter().map(|d| if *d == Some(0) { row as u64 } else { 0 }).collect();
        self.array.store_chunk(&idx, shard).map_err(|e| zarr_err(path, e))?;
        self.buf.clear();
        Ok(())
    }
}

/// Every level of one store being written, for one sample type.
struct Pyramid<T> {
    levels: Vec<Level<T>>,
    ndim: u8,
}

impl<T: Px> Pyramid<T> {
    /// Planes each level received and holds.
    fn counts(&self) -> (Vec<usize>, Vec<usize>) {
        (self.levels.iter().map(|l| l.received).collect(), self.levels.iter().map(|l| l.shape[0]).collect())
    }
    fn push(&mut self, k: usize, plane: &[T], path: &Path) -> Result<(), ImageError> {
        self.levels[k].accept(plane, path)?;
        let z = self.levels[k].received - 1;
        let nx0 = self.levels[0].shape[2];
        for j in k + 1..self.levels.len() {
            let out: Vec<Vec<T>> = match &mut self.levels[j].src {
                Src::Mean if j == k + 1 => {
                    // 3D: planes are averaged in pairs (the last alone when their number is odd).
                    let last = z + 1 == self.levels[k].shape[0];
                    if self.ndim == 3 && z.is_multiple_of(2) && !last {
                        self.levels[j].pending = Some(plane.to_vec());
                        vec![]
                    } else {
                        let above = if self.ndim == 3 && !z.is_multiple_of(2) { self.levels[j].pending.take() } else { None };
                        let (from, to) = (&self.levels[k].shape, &self.levels[j].shape);
                        vec![mean_plane(above.as_deref().unwrap_or(&[]), plane, [from[1], from[2]], [to[1], to[2]])]
                    }
                }
                Src::Nearest { z: zm, y, x, next } if k == 0 => {
                    let mut v = Vec::new();
                    while *next < zm.len() && zm[*next] == z {
                        let mut p = Vec::with_capacity(y.len() * x.len());
                        for &yy in y.iter() {
                            p.extend(x.iter().map(|&xx| plane[yy * nx0 + xx]));
                        }
                        v.push(p);
                        *next += 1;
                    }
                    v
                }
                _ => vec![],
            };
            for p in out {
                self.push(j, &p, path)?;
            }
        }
        Ok(())
    }
}

/// The mean of 2×2 blocks of one plane (`a` empty) or of 2×2×2 blocks of two planes, over the
/// voxels that exist at the edges.
fn mean_plane<T: Px>(a: &[T], b: &[T], [ny, nx]: [usize; 2], [my, mx]: [usize; 2]) -> Vec<T> {
    let mut out = vec![T::default(); my * mx];
    out.par_chunks_mut(mx).enumerate().for_each(|(y, row)| {
        let mut v: Vec<T> = Vec::with_capacity(8);
        for (x, o) in row.iter_mut().enumerate() {
            v.clear();
            for yy in 2 * y..(2 * y + 2).min(ny) {
                for xx in 2 * x..(2 * x + 2).min(nx) {
                    if !a.is_empty() {
                        v.push(a[yy * nx + xx]);
                    }
                    v.push(b[yy * nx + xx]);
                }
            }
            *o = T::mean(&v);
        }
    });
    out
}

enum Typed {
    U8(Pyramid<u8>),
    U16(Pyramid<u16>),
    U32(Pyramid<u32>),
    F32(Pyramid<f32>),
}

/// The axes, levels and link of the store being written.
struct Layout {
    /// The image group the labels belong to (linked store), with its multiscale and first level.
    link: Option<(PathBuf, Multiscale, usize)>,
    /// Per level: shape and the `coordinateTransformations` to record.
    levels: Vec<([usize; 3], Json)>,
    dims: Vec<Option<usize>>,
    axes: Json,
}

/// An OME-Zarr 0.5 store written slab by slab in z order; it appears at its path when finished.
pub struct ZarrWriter {
    path: PathBuf,
    tmp: PathBuf,
    name: String,
    role: Role,
    layout: Layout,
    typed: Typed,
    /// Labels: the largest seen (for the colours).
    max: u32,
}

/// Chunk shape for a level: 256×256 in y and x, and as many planes as keep a row of chunks
/// under [`ROW_BYTES`] (a power of two, at most 64).
fn chunk_shape(shape: [usize; 3], bytes: usize, ndim: u8) -> [usize; 3] {
    let plane = (shape[1].div_ceil(CHUNK_YX) * CHUNK_YX * shape[2].div_ceil(CHUNK_YX) * CHUNK_YX * bytes).max(1);
    let mut cz = 1;
    while ndim == 3 && cz < 64 && cz * 2 * plane <= ROW_BYTES && cz * 2 <= shape[0].next_power_of_two() {
        cz *= 2;
    }
    [cz, CHUNK_YX.min(shape[1]).max(1), CHUNK_YX.min(shape[2]).max(1)]
}

impl ZarrWriter {
    /// A store of `shape` voxels of `dtype`. `source` is the sample's image: when it is an NGFF
    /// 0.5 image group whose level matches `shape` and `role` is labels, the store links to it.
    pub fn create(
        path: &Path,
        shape: [usize; 3],
        dtype: DType,
        ndim: u8,
        spacing: &Spacing,
        role: Role,
        source: Option<&Path>,
    ) -> Result<ZarrWriter, ImageError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("image").trim_end_matches(".ome.zarr").to_string();
        let tmp = crate::util::tmp_sibling(path);
        std::fs::create_dir_all(&tmp).map_err(|e| ImageError::io(&tmp, e))?;
        let link = match (role, source) {
            (Role::Labels, Some(src)) if is_zarr(src) => match locate(src) {
                Ok(l) if l.v3 && l.shape == shape && l.ndim == ndim => {
                    l.group.filter(|(g, _, _)| node(g).ok().flatten().is_some_and(|n| n.v3))
                }
                _ => None,
            },
            _ => None,
        };
        let layout = match &link {
            Some((g, ms, level)) => linked_layout(g, ms, *level, shape)?,
            None => own_layout(shape, ndim, spacing, role),
        };
        let layout = Layout { link, ..layout };
        // A linked store holds the image's levels at its root and the labels under labels/.
        let base = if layout.link.is_some() { tmp.join("labels").join(&name) } else { tmp.clone() };
        let typed = match dtype {
            DType::U8 => Typed::U8(pyramid::<u8>(&base, &layout, ndim, role)?),
            DType::U16 => Typed::U16(pyramid::<u16>(&base, &layout, ndim, role)?),
            DType::U32 => Typed::U32(pyramid::<u32>(&base, &layout, ndim, role)?),
            DType::F32 => Typed::F32(pyramid::<f32>(&base, &layout, ndim, role)?),
            DType::Rgb8 | DType::Rgb16 => return Err(ImageError::unsupported(path, "RGB images as OME-Zarr (write them as TIFF)")),
        };
        Ok(ZarrWriter { path: path.to_path_buf(), tmp, name, role, layout, typed, max: 0 })
    }

    /// The next planes.
    pub fn append(&mut self, d: &Data) -> Result<(), ImageError> {
        let ZarrWriter { path, role, typed, max, .. } = self;
        macro_rules! go {
            ($p:ident, $a:ident) => {{
                let [nz, ny, nx] = d.shape();
                let a = $a.as_standard_layout();
                let s = a.as_slice().expect("standard layout");
                if *role == Role::Labels {
                    *max = (*max).max(s.par_iter().map(|&x| x.as_u32()).max().unwrap_or(0));
                }
                for z in 0..nz {
                    $p.push(0, &s[z * ny * nx..(z + 1) * ny * nx], path)?;
                }
                Ok(())
            }};
        }
        match (typed, d) {
            (Typed::U8(p), Data::U8(a)) => go!(p, a),
            (Typed::U16(p), Data::U16(a)) => go!(p, a),
            (Typed::U32(p), Data::U32(a)) => go!(p, a),
            (Typed::F32(p), Data::F32(a)) => go!(p, a),
            _ => Err(ImageError::corrupt(path, format!("internal: {} planes appended to a store of another type", d.dtype()))),
        }
    }

    pub fn finish(self) -> Result<(), ImageError> {
        let (received, expected) = match &self.typed {
            Typed::U8(p) => p.counts(),
            Typed::U16(p) => p.counts(),
            Typed::U32(p) => p.counts(),
            Typed::F32(p) => p.counts(),
        };
        if received != expected {
            return Err(ImageError::corrupt(&self.path, format!("internal: levels got {received:?} planes, expected {expected:?}")));
        }
        let datasets: Vec<Json> = self
            .layout
            .levels
            .iter()
            .enumerate()
            .map(|(i, (_, t))| json!({"path": i.to_string(), "coordinateTransformations": t}))
            .collect();
        let method = match self.role {
            Role::Image => "mean",
            Role::Mask | Role::Labels => "nearest",
        };
        let ms = json!({
            "name": self.name,
            "axes": self.layout.axes,
            "datasets": datasets,
            "type": method,
            "metadata": {"software": "tessera", "version": env!("CARGO_PKG_VERSION"), "method": method},
        });
        let mut ome = serde_json::Map::new();
        ome.insert("version".into(), json!(NGFF_VERSION));
        if self.role == Role::Labels {
            let mut il = json!({"version": NGFF_VERSION, "colors": label_colors(self.max)});
            if self.layout.link.is_some() {
                il["source"] = json!({"image": "../../"});
            }
            ome.insert("image-label".into(), il);
        }
        match &self.layout.link {
            Some((g, src_ms, first)) => {
                // The linked store: the image's levels (from `first` on) as links, then labels/.
                let mut image_ms = src_ms.raw.clone();
                let kept: Vec<Json> = src_ms.raw["datasets"].as_array().map(|a| a[*first..].to_vec()).unwrap_or_default();
                image_ms["datasets"] = Json::Array(kept);
                let g_abs = std::fs::canonicalize(g).map_err(|e| ImageError::io(g, e))?;
                for d in &src_ms.datasets[*first..] {
                    let to = self.tmp.join(&d.path);
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| ImageError::io(parent, e))?;
                    }
                    std::os::unix::fs::symlink(g_abs.join(&d.path), &to).map_err(|e| ImageError::io(&to, e))?;
                }
                write_group(&self.tmp, json!({"version": NGFF_VERSION, "multiscales": [image_ms]}))?;
                write_group(&self.tmp.join("labels"), json!({"version": NGFF_VERSION, "labels": [self.name]}))?;
                ome.insert("multiscales".into(), json!([ms]));
                write_group(&self.tmp.join("labels").join(&self.name), Json::Object(ome))?;
            }
            None => {
                ome.insert("multiscales".into(), json!([ms]));
                write_group(&self.tmp, Json::Object(ome))?;
            }
        }
        crate::util::sync_tree(&self.tmp).map_err(|e| ImageError::io(&self.tmp, e))?;
        if self.path.exists() {
            std::fs::remove_dir_all(&self.path).map_err(|e| ImageError::io(&self.path, e))?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| ImageError::io(&self.path, e))
    }
}

impl Drop for ZarrWriter {
    /// A store not finished (an error, a panic elsewhere) leaves nothing behind.
    fn drop(&mut self) {
        if self.tmp.exists() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// A group's `zarr.json` with these OME attributes.
fn write_group(dir: &Path, ome: Json) -> Result<(), ImageError> {
    std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
    let j = json!({"zarr_format": 3, "node_type": "group", "attributes": {"ome": ome}});
    let p = dir.join("zarr.json");
    // Indented for people, unless large (one colour per label of 10⁵ labels).
    let pretty = serde_json::to_string_pretty(&j).expect("JSON");
    let text = if pretty.len() <= 1 << 16 { pretty } else { serde_json::to_string(&j).expect("JSON") };
    std::fs::write(&p, text + "\n").map_err(|e| ImageError::io(&p, e))
}

/// One colour per label 1..=max, the same for every run (hues spaced by the golden angle).
fn label_colors(max: u32) -> Json {
    Json::Array(
        (1..=max)
            .map(|v| {
                let h = (v as f64 * 0.618_033_988_749_895).fract() * 6.0;
                let (i, f) = (h.floor() as u32, h.fract());
                let (p, q, t) = (0.25, 1.0 - 0.75 * f, 0.25 + 0.75 * f);
                let (r, g, b) = match i {
                    0 => (1.0, t, p),
                    1 => (q, 1.0, p),
                    2 => (p, 1.0, t),
                    3 => (p, q, 1.0),
                    4 => (t, p, 1.0),
                    _ => (1.0, p, q),
                };
                let c = |x: f64| (x * 255.0).round() as u32;
                json!({"label-value": v, "rgba": [c(r), c(g), c(b), 255]})
            })
            .collect(),
    )
}

/// tessera's own levels: level 0 and halvings until the smallest side longer than 1 is at most
/// 256.
fn own_layout(shape: [usize; 3], ndim: u8, spacing: &Spacing, role: Role) -> Layout {
    let spatial = if ndim == 3 { 0..3 } else { 1..3 };
    let mut levels = Vec::new();
    let mut s = shape;
    // Per axis, how many level-0 voxels one voxel of this level spans (axes of length 1, such
    // as a stack of one plane, are not halved).
    let mut f = [1.0f64; 3];
    loop {
        let scale: Vec<f64> = spatial.clone().map(|a| spacing.zyx[a] * f[a]).collect();
        let mut t = vec![json!({"type": "scale", "scale": scale})];
        if role == Role::Image && !levels.is_empty() {
            // A mean of f voxels is centred half a block in.
            let tr: Vec<f64> = spatial.clone().map(|a| spacing.zyx[a] * (f[a] - 1.0) / 2.0).collect();
            t.push(json!({"type": "translation", "translation": tr}));
        }
        levels.push((s, Json::Array(t)));
        let smallest = spatial.clone().map(|a| s[a]).filter(|&n| n > 1).min();
        if smallest.is_none_or(|n| n <= SMALLEST_SIDE) {
            break;
        }
        for a in spatial.clone() {
            if s[a] > 1 {
                s[a] = s[a].div_ceil(2);
                f[a] *= 2.0;
            }
        }
    }
    let unit = unit_to_ngff(&spacing.unit);
    let axes: Vec<Json> = ["z", "y", "x"][spatial.clone()]
        .iter()
        .map(|n| match unit {
            Some(u) => json!({"name": n, "type": "space", "unit": u}),
            None => json!({"name": n, "type": "space"}),
        })
        .collect();
    Layout { link: None, levels, dims: spatial.map(Some).collect(), axes: Json::Array(axes) }
}

/// Labels linked to an NGFF image group: the image's levels from `first` on, same shapes and
/// transformations, same axes.
fn linked_layout(g: &Path, ms: &Multiscale, first: usize, shape: [usize; 3]) -> Result<Layout, ImageError> {
    let l0 = locate(&g.join(&ms.datasets[first].path))?;
    let mut levels = Vec::new();
    for d in &ms.datasets[first..] {
        let l = locate(&g.join(&d.path))?;
        levels.push((l.shape, d.transforms.clone()));
    }
    if levels[0].0 != shape {
        return Err(ImageError::corrupt(g, "internal: linked level does not match the labels' shape"));
    }
    Ok(Layout { link: None, levels, dims: l0.dims, axes: ms.raw.get("axes").cloned().unwrap_or(Json::Null) })
}

fn pyramid<T: Px>(base: &Path, layout: &Layout, ndim: u8, role: Role) -> Result<Pyramid<T>, ImageError> {
    let bytes = std::mem::size_of::<T>();
    let s0 = layout.levels[0].0;
    let mut levels = Vec::new();
    for (k, (shape, level_transforms)) in layout.levels.iter().enumerate() {
        let chunk = chunk_shape(*shape, bytes, ndim);
        let dir = base.join(k.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
        let store = FilesystemStore::new(&dir).map_err(|e| zarr_err(&dir, e))?;
        let ashape: Vec<u64> = layout.dims.iter().map(|d| d.map_or(1, |a| shape[a]) as u64).collect();
        let achunk: Vec<u64> = layout.dims.iter().map(|d| d.map_or(1, |a| chunk[a]) as u64).collect();
        let names: Vec<String> = match layout.axes.as_array() {
            Some(a) if a.len() == layout.dims.len() => {
                a.iter().map(|x| x.get("name").and_then(Json::as_str).unwrap_or("").to_string()).collect()
            }
            _ => layout.dims.iter().map(|d| ["z", "y", "x"][d.unwrap_or(0)].to_string()).collect(),
        };
        // One shard (file) per row of chunks, its chunks in C order (the bytes do not depend
        // on threads).
        let ashard: Vec<u64> = layout
            .dims
            .iter()
            .map(|d| match d {
                None => 1,
                Some(0) => chunk[0],
                Some(a) => shape[*a].div_ceil(chunk[*a]) * chunk[*a],
            } as u64)
            .collect();
        use zarrs::array::codec::array_to_bytes::sharding::{ShardingCodecOptions, SubchunkWriteOrder};
        let order = zarrs::array::CodecSpecificOptions::default()
            .with_option(ShardingCodecOptions::default().with_subchunk_write_order(SubchunkWriteOrder::C));
        let array = ArrayBuilder::new(ashape, ashard, T::data_type(), T::default())
            .subchunk_shape(achunk)
            .codec_specific_options(order)
            .bytes_to_bytes_codecs(vec![Arc::new(zarrs::array::codec::ZstdCodec::new(ZSTD_LEVEL, false))])
            .dimension_names(Some(names))
            .build(Arc::new(store), "/")
            .map_err(|e| zarr_err(&dir, e))?;
        array.store_metadata().map_err(|e| zarr_err(&dir, e))?;
        let src = if k == 0 {
            Src::Input
        } else if role == Role::Image && layout.link.is_none() {
            Src::Mean
        } else {
            // Nearest: the level-0 voxel whose centre is nearest below this voxel's centre.
            let (scale, translation) = transforms(Some(level_transforms));
            let (scale0, translation0) = transforms(Some(&layout.levels[0].1));
            let nd = layout.dims.len();
            let map = |a: usize| -> Vec<usize> {
                let i = layout.dims.iter().position(|d| *d == Some(a));
                let get = |v: &Option<Vec<f64>>, d: f64| i.and_then(|i| v.as_ref().filter(|v| v.len() == nd).map(|v| v[i])).unwrap_or(d);
                let r = get(&scale, (s0[a] as f64) / (shape[a] as f64)) / get(&scale0, 1.0);
                let off = (get(&translation, 0.0) - get(&translation0, 0.0)) / get(&scale0, 1.0);
                (0..shape[a]).map(|j| ((off + j as f64 * r + 1e-9).floor().max(0.0) as usize).min(s0[a] - 1)).collect()
            };
            Src::Nearest { z: map(0), y: map(1), x: map(2), next: 0 }
        };
        levels.push(Level { array, dims: layout.dims.clone(), shape: *shape, chunk, buf: Vec::new(), received: 0, pending: None, src });
    }
    Ok(Pyramid { levels, ndim })
}

/// The labels inside a store written by [`ZarrWriter`] linked to its sample's image
/// (`<name>.ome.zarr/labels/<name>`), if `path` is one.
pub(crate) fn linked_labels(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?.strip_suffix(".ome.zarr")?;
    let p = path.join("labels").join(name);
    is_zarr(&p).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes_and_scales(shape: [usize; 3], ndim: u8, role: Role) -> Vec<([usize; 3], Json)> {
        let sp = Spacing { zyx: [2.0, 0.5, 0.5], unit: "um".into() };
        own_layout(shape, ndim, &sp, role).levels
    }

    #[test]
    fn levels_halve_every_axis_longer_than_one_until_the_smallest_is_at_most_256() {
        let l = shapes_and_scales([2160, 2560, 2560], 3, Role::Labels);
        let shapes: Vec<[usize; 3]> = l.iter().map(|x| x.0).collect();
        assert_eq!(shapes, [[2160, 2560, 2560], [1080, 1280, 1280], [540, 640, 640], [270, 320, 320], [135, 160, 160]]);
        assert_eq!(l[4].1, json!([{"type": "scale", "scale": [32.0, 8.0, 8.0]}]));
        // A 3D stack of one plane keeps z; its scale stays.
        let l = shapes_and_scales([1, 600, 600], 3, Role::Image);
        assert_eq!(l.iter().map(|x| x.0).collect::<Vec<_>>(), [[1, 600, 600], [1, 300, 300], [1, 150, 150]]);
        assert_eq!(l[2].1, json!([{"type": "scale", "scale": [2.0, 2.0, 2.0]}, {"type": "translation", "translation": [0.0, 0.75, 0.75]}]));
        assert_eq!(shapes_and_scales([31, 61, 57], 3, Role::Image).len(), 1);
        let l = shapes_and_scales([1, 513, 512], 2, Role::Mask);
        assert_eq!(l.iter().map(|x| x.0).collect::<Vec<_>>(), [[1, 513, 512], [1, 257, 256]]);
        assert_eq!(l[1].1, json!([{"type": "scale", "scale": [1.0, 1.0]}]));
    }

    #[test]
    fn a_read_takes_the_chunks_decoded_ahead_and_never_waits_for_the_others() {
        // The row of planes 8..16 as a job decoding ahead left it: chunk 0 being decoded (by a
        // job that here never ends, as when it is beneath the read on one thread's stack),
        // chunk 1 decoded (with its voxels made 0, to see that the read takes it), the rest
        // not started. The read must finish, with chunk 1 from ahead and the others its own.
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/formats/zarr/v05_zstd_8x16x16.ome.zarr");
        let limits = ReadLimits { max_bytes: u64::MAX };
        let whole = Reader::open_cached(&path, 0, limits).unwrap().read(8, 16).unwrap();
        let r = Reader::open_cached(&path, 1 << 30, limits).unwrap();
        let (rz, chunks) = r.inner.row_at(8).unwrap();
        assert_eq!(rz, 8..16);
        let mut marked = r.inner.decode(&chunks[1]).unwrap();
        marked.bytes.iter_mut().for_each(|b| *b = 0);
        let (start, shape) = (marked.start, marked.shape);
        let n = chunks.len();
        let mut pieces: Vec<Option<Piece>> = (0..n).map(|_| None).collect();
        pieces[1] = Some(marked);
        let work = Arc::new(std::sync::Mutex::new(AheadWork { chunks, next: 2, pieces, taken: false }));
        *lock(&r.ahead) = Some(Ahead { z: rz, work: work.clone() });
        let got = r.read(8, 16).unwrap();
        assert!(lock(&work).taken, "the job decoding ahead is told to stop");
        let (Data::U16(got), Data::U16(whole)) = (got, whole) else { panic!("u16 store") };
        for ((z, y, x), &v) in got.indexed_iter() {
            let in_marked = (0..3).all(|a| [z + 8, y, x][a] >= start[a] && [z + 8, y, x][a] < start[a] + shape[a]);
            assert_eq!(v, if in_marked { 0 } else { whole[[z, y, x]] }, "voxel {z},{y},{x}");
        }
    }
}
