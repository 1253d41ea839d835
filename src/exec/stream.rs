//! Out-of-core execution of one sample: z-slabs from disk to disk, in bounded memory.
//!
//! Used when a sample's working set does not fit `--memory`. Sources are read a range of planes
//! at a time ([`crate::io::read_planes`]: TIFF pages, `.npy` by seeking, slice files); every stage
//! output that a later stage reads is *spilled* to a raw file under the output folder's
//! `.tessera/spill/<sample>/` and read back by plane ranges; written outputs are appended slab by
//! slab ([`StackWriter`], [`NpyWriter`]) and appear only when complete.
//!
//! What streams, and how:
//! - runs of local stages: per slab with the run's halo above and below, through the same fused
//!   tile evaluation as in memory ([`super::tiled`]), grouped by the same rule
//!   ([`tiled::group_from`]);
//! - global ops: each in its own out-of-core form ([`crate::ops::Op::stream`], see
//!   [`crate::ops::slab`]): this module gives it its inputs as [`Volume`]s read by plane
//!   ranges, scratch volumes, and a destination for its slabs ([`StageIo`]). It names no op.
//!
//! Each gives the whole-image result bit for bit (`tests/stream.rs` runs every registry op).
//! A global op without an out-of-core form (`distance`, `voronoi` for now) says so through
//! [`crate::ops::Op::streams`]: a sample that needs one and does not fit fails with a message
//! saying so and how much memory would do.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array3;

use super::tiled::{self, Feed, GroupRun};
use super::tiles::Region;
use crate::io::{self, Compression, DType, Data, Header, NpyWriter, Spacing, StackWriter};
use crate::ops::slab::{self, Scratch, Slabs, Volume};
use crate::ops::{Ctx, Kind, Meta, Value};
use crate::plan::{Bound, Format, Plan, Ref};

/// Everything a streamed sample needs.
pub struct Streamed<'a> {
    pub plan: &'a Plan,
    pub bound: &'a Bound,
    /// The sample's source files (`image`, then `sources:`) and their headers.
    pub paths: &'a [PathBuf],
    pub headers: &'a [Header],
    pub spacing: &'a Spacing,
    pub ndim: u8,
    pub sample: &'a str,
    /// Byte budget: slabs are sized so that a step's slabs fit in a quarter of it.
    pub memory: u64,
    pub threads: usize,
    /// Where spill files go (removed afterwards).
    pub spill_dir: PathBuf,
    /// Where the sample's image outputs go.
    pub sample_dir: PathBuf,
    pub compression: Compression,
    /// Force this slab thickness (tests); otherwise it follows `memory`.
    pub slab: Option<usize>,
    /// The checkpoint store (none with `--no-checkpoint`): finished stage values that later
    /// stages read are kept there, and taken from there on a re-run.
    pub checkpoints: Option<&'a crate::store::Store>,
    /// Per stage: its checkpoint key (used with `checkpoints`).
    pub keys: &'a [String],
    /// Per stage: its output files from the last run are current (not rewritten).
    pub valid: &'a [bool],
    /// Ignore existing checkpoints.
    pub force: bool,
}

/// A full-size value on disk, read by plane ranges.
#[derive(Debug, Clone)]
enum Store {
    Source {
        reader: std::sync::Arc<io::PlaneReader>,
        dtype: DType,
        shape: [usize; 3],
    },
    /// `owned`: a temporary spill, removed once no later stage reads it (otherwise a checkpoint).
    Spill {
        path: PathBuf,
        elem: Elem,
        shape: [usize; 3],
        owned: bool,
    },
}

/// The element type of a spill file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Mask,
    Labels,
    Image(DType),
}

impl Elem {
    fn of(v: &Value) -> Result<Elem, String> {
        match v {
            Value::Mask(_) => Ok(Elem::Mask),
            Value::Labels(_) => Ok(Elem::Labels),
            Value::Image(d) if !d.dtype().is_rgb() => Ok(Elem::Image(d.dtype())),
            Value::Image(_) => Err("colour images are not streamed".into()),
            Value::Table(_) => Err("internal: a table is not spilled".into()),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Elem::Mask => "mask",
            Elem::Labels => "labels",
            Elem::Image(DType::U8) => "u8",
            Elem::Image(DType::U16) => "u16",
            Elem::Image(DType::U32) => "u32",
            Elem::Image(_) => "f32",
        }
    }
    fn parse(s: &str) -> Option<Elem> {
        Some(match s {
            "mask" => Elem::Mask,
            "labels" => Elem::Labels,
            "u8" => Elem::Image(DType::U8),
            "u16" => Elem::Image(DType::U16),
            "u32" => Elem::Image(DType::U32),
            "f32" => Elem::Image(DType::F32),
            _ => return None,
        })
    }
    fn bytes(self) -> usize {
        match self {
            Elem::Mask => 1,
            Elem::Labels => 4,
            Elem::Image(d) => d.bytes_per_voxel() as usize,
        }
    }
}

/// Little-endian bytes of a slab (borrowed from it where possible; [`io::le_bytes`]).
fn raw_bytes(v: &Value) -> std::borrow::Cow<'_, [u8]> {
    match v {
        Value::Mask(a) => io::le_bytes(a),
        Value::Labels(a) => io::le_bytes(a),
        Value::Image(d) => io::data_le_bytes(d).unwrap_or_default(),
        Value::Table(_) => std::borrow::Cow::Borrowed(&[]),
    }
}

fn from_bytes(elem: Elem, raw: Vec<u8>, sh: (usize, usize, usize)) -> Value {
    fn le<const W: usize, T>(raw: &[u8], f: fn([u8; W]) -> T) -> Vec<T> {
        raw.chunks_exact(W).map(|c| f(c.try_into().expect("chunk size"))).collect()
    }
    let arr = |v| Array3::from_shape_vec(sh, v).expect("spill slab size");
    match elem {
        Elem::Mask => Value::Mask(Array3::from_shape_vec(sh, raw).expect("spill slab size")),
        Elem::Labels => Value::Labels(arr(le(&raw, u32::from_le_bytes))),
        Elem::Image(DType::U8) => Value::Image(Data::U8(Array3::from_shape_vec(sh, raw).expect("spill slab size"))),
        Elem::Image(DType::U16) => Value::Image(Data::U16(Array3::from_shape_vec(sh, le(&raw, u16::from_le_bytes)).expect("size"))),
        Elem::Image(DType::U32) => Value::Image(Data::U32(arr(le(&raw, u32::from_le_bytes)))),
        Elem::Image(_) => Value::Image(Data::F32(Array3::from_shape_vec(sh, le(&raw, f32::from_le_bytes)).expect("size"))),
    }
}

impl Store {
    fn shape(&self) -> [usize; 3] {
        match self {
            Store::Source { shape, .. } | Store::Spill { shape, .. } => *shape,
        }
    }
}

impl Volume for Store {
    fn meta(&self) -> Meta {
        let (kind, dtype) = match self {
            Store::Source { dtype, .. } | Store::Spill { elem: Elem::Image(dtype), .. } => (Kind::Image, Some(*dtype)),
            Store::Spill { elem: Elem::Mask, .. } => (Kind::Mask, None),
            Store::Spill { elem: Elem::Labels, .. } => (Kind::Labels, None),
        };
        Meta { kind, dtype, shape: self.shape(), ndim: 3, scale: [1.0; 3] }
    }
    fn read(&self, z0: usize, z1: usize) -> Result<Value, String> {
        match self {
            Store::Source { reader, .. } => reader.read(z0, z1).map(Value::Image).map_err(|e| e.to_string()),
            Store::Spill { path, elem, shape, .. } => read_raw(path, *elem, (shape[1], shape[2]), z0, z1),
        }
    }
    fn bytes_per_voxel(&self) -> u64 {
        match self {
            Store::Source { dtype, .. } => dtype.bytes_per_voxel(),
            Store::Spill { elem, .. } => elem.bytes() as u64,
        }
    }
}

/// Planes `z0..z1` of a raw file of `elem` values with planes of `plane` voxels.
fn read_raw(path: &Path, elem: Elem, plane: (usize, usize), z0: usize, z1: usize) -> Result<Value, String> {
    let n = (z1 - z0) * plane.0 * plane.1;
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.seek(SeekFrom::Start((z0 * plane.0 * plane.1 * elem.bytes()) as u64)).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut raw = vec![0u8; n * elem.bytes()];
    f.read_exact(&mut raw).map_err(|e| format!("{}: spill file cut short: {e}", path.display()))?;
    Ok(from_bytes(elem, raw, (z1 - z0, plane.0, plane.1)))
}

/// Appends slabs to a spill file.
struct Spill {
    path: PathBuf,
    w: BufWriter<File>,
    elem: Option<Elem>,
    hash: blake3::Hasher,
    bytes: u64,
    /// Planes appended, and their size.
    planes: usize,
    plane: (usize, usize),
}

impl Spill {
    fn create(dir: &Path, name: &str) -> Result<Spill, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("{name}.raw"));
        let f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Spill { path, w: BufWriter::with_capacity(1 << 20, f), elem: None, hash: blake3::Hasher::new(), bytes: 0, planes: 0, plane: (0, 0) })
    }
    fn append(&mut self, v: &Value) -> Result<(), String> {
        let e = Elem::of(v)?;
        let (nz, ny, nx) = value_dim(v);
        if *self.elem.get_or_insert(e) != e || (self.planes > 0 && self.plane != (ny, nx)) {
            return Err(format!("internal: {}: slabs of different kinds or plane sizes", self.path.display()));
        }
        self.plane = (ny, nx);
        self.planes += nz;
        let raw = raw_bytes(v);
        self.hash.update(&raw);
        self.bytes += raw.len() as u64;
        self.w.write_all(&raw).map_err(|e| format!("{}: {e}", self.path.display()))
    }
    fn shape(&self) -> [usize; 3] {
        [self.planes, self.plane.0, self.plane.1]
    }
    /// The finished spill: a checkpoint of `key` when there is a store, a temporary otherwise.
    fn finish(mut self, ck: Option<&crate::store::Store>, key: &str) -> Result<Store, String> {
        self.w.flush().map_err(|e| format!("{}: {e}", self.path.display()))?;
        let elem = self.elem.ok_or_else(|| format!("{}: nothing was spilled", self.path.display()))?;
        match ck {
            Some(store) => {
                let meta = crate::store::RawMeta {
                    elem: elem.name().into(),
                    bytes: self.bytes,
                    blake3: self.hash.finalize().to_hex().to_string(),
                };
                let path = store.adopt_raw(key, &self.path, &meta)?;
                Ok(Store::Spill { path, elem, shape: self.shape(), owned: false })
            }
            None => {
                let shape = self.shape();
                Ok(Store::Spill { path: self.path, elem, shape, owned: true })
            }
        }
    }
}

/// A stage's image outputs, written slab by slab.
pub(super) enum Out {
    Tiff(StackWriter),
    Npy(NpyWriter),
}

impl Out {
    pub(super) fn append(&mut self, d: &Data) -> Result<(), crate::io::ImageError> {
        match self {
            Out::Tiff(w) => w.append(d),
            Out::Npy(w) => w.append(d),
        }
    }
    pub(super) fn finish(self) -> Result<(), crate::io::ImageError> {
        match self {
            Out::Tiff(w) => w.finish(),
            Out::Npy(w) => w.finish(),
        }
    }
}


/// Streams one sample. Tables go to `sink` (with their plan index); label counts are pushed to
/// `objects`; image outputs are written here. Errors name the failing stage's plan index.
pub fn evaluate_streamed(
    s: &Streamed,
    sink: &mut dyn FnMut(usize, &Value) -> Result<(), String>,
    objects: &mut Vec<(String, u64)>,
    timings: &mut Vec<(String, f64)>,
    reused: &mut Vec<String>,
) -> Result<(), (usize, String)> {
    let r = run(s, sink, objects, timings, reused);
    let _ = std::fs::remove_dir_all(&s.spill_dir);
    // And `spill/` and `.tessera/` when nothing else is in them (other samples may be running).
    if let Some(parent) = s.spill_dir.parent() {
        let _ = std::fs::remove_dir(parent);
        if let Some(top) = parent.parent() {
            let _ = std::fs::remove_dir(top);
        }
    }
    r
}

/// Why a stage cannot be streamed, if it cannot.
pub fn not_streamable(s: &Streamed) -> Option<(usize, String)> {
    let plan = s.plan;
    if s.ndim != 3 {
        return Some((0, "2D images are not streamed".into()));
    }
    if s.headers.iter().any(|h| h.dtype.is_rgb()) {
        return Some((0, "colour images are not streamed".into()));
    }
    for (i, st) in plan.stages.iter().enumerate() {
        if local_halo(s, i).is_some() {
            continue;
        }
        let ins: Vec<Meta> = (0..st.inputs.len()).map(|k| input_meta(s, i, k)).collect();
        if let Err(why) = s.bound.ops[i].streams(&ins) {
            return Some((i, format!("stage '{}' (op `{}`) {why}", st.id, st.op.info().name)));
        }
    }
    None
}

fn input_meta(s: &Streamed, i: usize, k: usize) -> Meta {
    match s.plan.stages[i].inputs[k].1 {
        Ref::Stage(j) => s.bound.metas[j].clone(),
        Ref::Source(src) => {
            let h = &s.headers[src];
            Meta { kind: Kind::Image, dtype: Some(h.dtype), shape: h.shape, ndim: h.ndim, scale: [1.0; 3] }
        }
    }
}

/// Stage `i`'s context: the sample's spacing, scaled after a downsample.
fn ctx_of<'a>(s: &'a Streamed, i: usize) -> Ctx<'a> {
    let spacing = super::scaled(s.spacing, super::input_scale(s.plan, s.bound, i)).zyx;
    Ctx { sample: s.sample, spacing, unit: &s.spacing.unit, ndim: s.ndim }
}

fn local_halo(s: &Streamed, i: usize) -> Option<[usize; 3]> {
    let ins: Vec<Meta> = (0..s.plan.stages[i].inputs.len()).map(|k| input_meta(s, i, k)).collect();
    let refs: Vec<&Meta> = ins.iter().collect();
    tiled::is_local(s.bound.ops[i].as_ref(), &ctx_of(s, i), &s.bound.metas[i], &refs)
}

/// Planes per slab for a step reading `bpv` bytes per voxel with `halo` planes above and below.
fn slab_planes(s: &Streamed, plane: usize, bpv: u64, halo: usize) -> usize {
    if let Some(t) = s.slab {
        return t.max(1);
    }
    let per_plane = (plane as u64).saturating_mul(bpv.max(1));
    let fit = (s.memory / 4) / per_plane.max(1);
    (fit as usize).saturating_sub(2 * halo).max(1)
}

fn run(
    s: &Streamed,
    sink: &mut dyn FnMut(usize, &Value) -> Result<(), String>,
    objects: &mut Vec<(String, u64)>,
    timings: &mut Vec<(String, f64)>,
    reused: &mut Vec<String>,
) -> Result<(), (usize, String)> {
    if let Some(e) = not_streamable(s) {
        return Err(e);
    }
    let plan = s.plan;
    let n = plan.stages.len();
    let last_use = plan.last_use();
    let reads = |i: usize| plan.stage_inputs(i);
    let mut sources: Vec<Store> = Vec::new();
    for (p, h) in s.paths.iter().zip(s.headers) {
        let reader = io::PlaneReader::open(p).map_err(|e| (0, e.to_string()))?;
        sources.push(Store::Source { reader: std::sync::Arc::new(reader), dtype: h.dtype, shape: h.shape });
    }
    let mut stores: Vec<Option<Store>> = vec![None; n];
    // Backward from what must exist (output files to rewrite, tables to merge): a value later
    // stages read comes from a verified checkpoint when there is one, else it is computed.
    let ck = s.checkpoints;
    let mut compute = vec![false; n];
    let mut required = vec![false; n];
    let mut preset: Vec<Option<Value>> = vec![None; n];
    for (i, _) in &plan.outputs {
        if !s.valid[*i] {
            compute[*i] = true;
        } else if plan.stages[*i].kind == Kind::Table {
            required[*i] = true;
        }
    }
    for i in (0..n).rev() {
        if !compute[i] && !required[i] {
            continue;
        }
        if !compute[i] {
            let reuse = ck.filter(|_| !s.force);
            if plan.stages[i].kind == Kind::Table {
                if let Some(v @ Value::Table(_)) = reuse.and_then(|c| c.load(&s.keys[i])) {
                    preset[i] = Some(v);
                    continue;
                }
            } else if let Some((path, meta)) = reuse.and_then(|c| c.raw(&s.keys[i]))
                && let Some(elem) = Elem::parse(&meta.elem)
            {
                stores[i] = Some(Store::Spill { path, elem, shape: s.bound.metas[i].shape, owned: false });
                reused.push(plan.stages[i].id.clone());
                continue;
            }
            compute[i] = true;
        }
        for j in reads(i) {
            required[j] = true;
        }
    }
    reused.reverse();
    // A computed stage's value is spilled when a later computed stage reads it.
    let spilled = |k: usize| (k + 1..n).any(|m| compute[m] && reads(m).contains(&k));
    let store_of = |stores: &Vec<Option<Store>>, r: &Ref| -> Store {
        match r {
            Ref::Source(k) => sources[*k].clone(),
            Ref::Stage(j) => stores[*j].clone().expect("inputs computed before use"),
        }
    };

    let mut i = 0;
    while i < n {
        let t0 = Instant::now();
        let st = &plan.stages[i];
        if !compute[i] {
            if let Some(v) = preset[i].take() {
                sink(i, &v).map_err(|e| (i, e))?;
            }
            i += 1;
            continue;
        }
        let group = tiled::group_from(i, n, &|k| if compute[k] { local_halo(s, k) } else { None }, &|a, b| {
            s.bound.metas[a].shape == s.bound.metas[b].shape
        });
        if !group.stages.is_empty() {
            // A run of local stages, slab by slab with the run's halo.
            let last = *group.stages.last().expect("a group has stages");
            let [nz, ny, nx] = s.bound.metas[i].shape;
            let pos = |k: usize| group.stages.iter().position(|&g| g == k);
            let mut feed_stores: Vec<Store> = Vec::new();
            let mut feeds = Vec::new();
            for &k in &group.stages {
                let mut f = Vec::new();
                for (_, r) in &plan.stages[k].inputs {
                    f.push(match r {
                        Ref::Stage(x) if pos(*x).is_some() => Feed::Group(pos(*x).unwrap_or(0)),
                        _ => {
                            feed_stores.push(store_of(&stores, r));
                            Feed::Full(feed_stores.len() - 1)
                        }
                    });
                }
                feeds.push(f);
            }
            let keep: Vec<bool> = group.stages.iter().map(|&k| spilled(k) || writes(s, k) || k == last).collect();
            let down = group.downstream(&reads);
            let halo = group.total_halo(&down)[0];
            let bpv = feed_stores.iter().map(Store::bytes_per_voxel).sum::<u64>()
                + group.stages.iter().map(|&k| tiled::bytes_per_voxel(&s.bound.metas[k])).sum::<u64>();
            let thick = slab_planes(s, ny * nx, bpv, halo);
            let mut dests: Vec<Dest> = Vec::new();
            for (p, &k) in group.stages.iter().enumerate() {
                dests.push(Dest::new(s, k, keep[p] && last_use[k] > last && spilled(k), keep[p]).map_err(|e| (k, e))?);
            }
            for (z0, z1) in slab::ranges(nz, thick) {
                let (r0, r1) = (z0.saturating_sub(halo), (z1 + halo).min(nz));
                let full: Vec<Value> = feed_stores.iter().map(|st| st.read(r0, r1)).collect::<Result<_, _>>().map_err(|e| (i, e))?;
                let refs: Vec<&Value> = full.iter().collect();
                let core = Region { start: [z0 - r0, 0, 0], end: [z1 - r0, ny, nx] };
                let run = GroupRun {
                    group: &group,
                    ops: group.stages.iter().map(|&k| s.bound.ops[k].as_ref()).collect(),
                    inputs: feeds.clone(),
                    ctxs: group.stages.iter().map(|&k| ctx_of(s, k)).collect(),
                    keep: keep.clone(),
                    shape: [r1 - r0, ny, nx],
                    tiles: vec![core],
                    threads: s.threads,
                };
                let out = tiled::run_group(&run, &refs, &reads).map_err(|(p, e)| (group.stages[p], e))?;
                for (p, v) in out.into_iter().enumerate() {
                    let Some(v) = v else { continue };
                    // The group's values span the slab with its halo; keep the core planes.
                    let v = if (r0, r1) == (z0, z1) { v } else { tiled::crop(&v, &core) };
                    dests[p].emit(v, s).map_err(|e| (group.stages[p], e))?;
                }
            }
            for (p, d) in dests.into_iter().enumerate() {
                let k = group.stages[p];
                if let Some(store) = d.finish(s).map_err(|e| (k, e))? {
                    stores[k] = Some(store);
                }
            }
            let ids: Vec<&str> = group.stages.iter().map(|&k| plan.stages[k].id.as_str()).collect();
            timings.push((ids.join("+"), t0.elapsed().as_secs_f64()));
            i = last;
        } else {
            // A global op, in its own out-of-core form.
            let fail = |e: String| (i, e);
            let inputs: Vec<Store> = st.inputs.iter().map(|(_, r)| store_of(&stores, r)).collect();
            let dest = if st.kind == Kind::Table { None } else { Some(Dest::new(s, i, spilled(i), true).map_err(fail)?) };
            let mut io = StageIo { s, stage: i, inputs, dest, scratch: 0 };
            let table = s.bound.ops[i].stream(&mut io, &ctx_of(s, i)).map_err(fail)?;
            match (io.dest.take(), table) {
                (Some(d), None) => {
                    if st.kind == Kind::Labels {
                        objects.push((st.id.clone(), d.max.unwrap_or(0) as u64));
                    }
                    if let Some(store) = d.finish(s).map_err(fail)? {
                        stores[i] = Some(store);
                    }
                }
                (None, Some(table @ Value::Table(_))) => {
                    if let Some(store) = ck {
                        store.save(&s.keys[i], &table).map_err(|e| fail(format!("writing a checkpoint: {e}")))?;
                    }
                    sink(i, &table).map_err(fail)?;
                }
                _ => return Err(fail(format!("internal: `{}` gave no {}", st.op.info().name, st.kind))),
            }
            timings.push((st.id.clone(), t0.elapsed().as_secs_f64()));
        }
        // Spill files no later stage reads are removed as soon as possible.
        for (k, store) in stores.iter_mut().enumerate().take(i + 1) {
            if last_use[k] <= i
                && let Some(Store::Spill { path, owned: true, .. }) = store.take()
            {
                let _ = std::fs::remove_file(path);
            }
        }
        i += 1;
    }
    Ok(())
}

/// Whether stage `k`'s output files are (re)written by this run.
fn writes(s: &Streamed, k: usize) -> bool {
    !s.valid[k] && s.plan.outputs.iter().any(|(o, fs)| *o == k && !fs.is_empty())
}

/// `(z, y, x)` of a voxel value.
fn value_dim(v: &Value) -> (usize, usize, usize) {
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

/// Where a streamed stage's slabs go, in z order: its spill file (when later stages read it) and
/// its output files (opened at the first slab, when the file type is known).
struct Dest {
    stage: usize,
    spill: Option<Spill>,
    /// Whether output files are written (not current from the last run).
    write: bool,
    outs: Option<Vec<Out>>,
    /// Labels: the largest id (declared by the op, or seen).
    max: Option<u32>,
    planes: usize,
}

impl Dest {
    fn new(s: &Streamed, k: usize, spill: bool, write: bool) -> Result<Dest, String> {
        let spill = if spill { Some(Spill::create(&s.spill_dir, &s.plan.stages[k].id)?) } else { None };
        Ok(Dest { stage: k, spill, write: write && writes(s, k), outs: None, max: None, planes: 0 })
    }
    fn emit(&mut self, v: Value, s: &Streamed) -> Result<(), String> {
        let (nz, ny, nx) = value_dim(&v);
        let [_, my, mx] = s.bound.metas[self.stage].shape;
        if (ny, nx) != (my, mx) {
            return Err(format!("internal: slab planes {ny}×{nx}, expected {my}×{mx}"));
        }
        self.planes += nz;
        if let Some(sp) = self.spill.as_mut() {
            sp.append(&v)?;
        }
        if !self.write {
            return Ok(());
        }
        let u16_labels = match &v {
            Value::Labels(_) => self.max.ok_or("internal: labels emitted before their largest id")? <= u16::MAX as u32,
            _ => false,
        };
        if self.outs.is_none() {
            let dtype = match &v {
                Value::Mask(_) => DType::U8,
                Value::Labels(_) if u16_labels => DType::U16,
                Value::Labels(_) => DType::U32,
                Value::Image(d) => d.dtype(),
                Value::Table(_) => return Err("internal: a table is not written slab by slab".into()),
            };
            self.outs = Some(open_outputs(s, self.stage, dtype)?);
        }
        let d = super::file_data(&v, u16_labels).ok_or("internal: no voxel data to write")?;
        for o in self.outs.iter_mut().flatten() {
            o.append(&d).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    /// Closes the outputs; the spill, if any, becomes the stage's store.
    fn finish(self, s: &Streamed) -> Result<Option<Store>, String> {
        let want = s.bound.metas[self.stage].shape[0];
        if self.planes != want {
            return Err(format!("internal: {} planes streamed, expected {want}", self.planes));
        }
        for o in self.outs.into_iter().flatten() {
            o.finish().map_err(|e| e.to_string())?;
        }
        match self.spill {
            Some(sp) => sp.finish(s.checkpoints, &s.keys[self.stage]).map(Some),
            None => Ok(None),
        }
    }
}

/// Stage `i`'s output files, created for slabs of `dtype`.
fn open_outputs(s: &Streamed, i: usize, dtype: DType) -> Result<Vec<Out>, String> {
    let st = &s.plan.stages[i];
    let shape = s.bound.metas[i].shape;
    let sp = super::scaled(s.spacing, s.bound.metas[i].scale);
    let mut v = Vec::new();
    for (_, formats) in s.plan.outputs.iter().filter(|(o, _)| *o == i) {
        for f in formats {
            let path = s.sample_dir.join(format!("{}.{}", st.id, f.ext()));
            v.push(match f {
                Format::Tiff => Out::Tiff(StackWriter::create(&path, shape, dtype, s.ndim, &sp, s.compression, None).map_err(|e| e.to_string())?),
                Format::Npy => Out::Npy(NpyWriter::create(&path, shape, dtype, s.ndim).map_err(|e| e.to_string())?),
                Format::Parquet | Format::Csv => return Err(format!("cannot write {} as {}", st.kind.with_article(), f.ext())),
            });
        }
    }
    Ok(v)
}

/// What a global op running out of core sees of the executor ([`Slabs`]).
struct StageIo<'a> {
    s: &'a Streamed<'a>,
    stage: usize,
    inputs: Vec<Store>,
    dest: Option<Dest>,
    /// Scratch volumes made so far (for unique names).
    scratch: usize,
}

impl Slabs for StageIo<'_> {
    fn input(&self, k: usize) -> &dyn Volume {
        &self.inputs[k]
    }
    fn planes(&self, bytes_per_voxel: u64) -> usize {
        let [_, ny, nx] = self.inputs.first().map(Store::shape).unwrap_or([1; 3]);
        slab_planes(self.s, ny * nx, bytes_per_voxel, 0)
    }
    fn scratch(&mut self, name: &str) -> Result<Box<dyn Scratch>, String> {
        self.scratch += 1;
        let name = format!("{}.{}.{name}", self.s.plan.stages[self.stage].id, self.scratch);
        Ok(Box::new(ScratchFile { spill: Spill::create(&self.s.spill_dir, &name)? }))
    }
    fn labels_max(&mut self, max: u32) {
        if let Some(d) = self.dest.as_mut() {
            d.max = Some(max);
        }
    }
    fn emit(&mut self, v: Value) -> Result<(), String> {
        match self.dest.as_mut() {
            Some(d) => d.emit(v, self.s),
            None => Err("internal: a table stage emitted voxels".into()),
        }
    }
}

/// A scratch volume: a spill file appended to and read back (removed when dropped).
struct ScratchFile {
    spill: Spill,
}

impl Volume for ScratchFile {
    fn meta(&self) -> Meta {
        let (kind, dtype) = match self.spill.elem {
            Some(Elem::Mask) => (Kind::Mask, None),
            Some(Elem::Image(d)) => (Kind::Image, Some(d)),
            Some(Elem::Labels) | None => (Kind::Labels, None),
        };
        Meta { kind, dtype, shape: self.spill.shape(), ndim: 3, scale: [1.0; 3] }
    }
    fn read(&self, z0: usize, z1: usize) -> Result<Value, String> {
        let elem = self.spill.elem.ok_or("internal: reading an empty scratch volume")?;
        if z1 > self.spill.planes || z0 > z1 {
            return Err(format!("internal: planes {z0}..{z1} of a scratch volume of {}", self.spill.planes));
        }
        read_raw(&self.spill.path, elem, self.spill.plane, z0, z1)
    }
    fn bytes_per_voxel(&self) -> u64 {
        self.spill.elem.map(|e| e.bytes() as u64).unwrap_or(4)
    }
}

impl Scratch for ScratchFile {
    fn append(&mut self, v: &Value) -> Result<(), String> {
        self.spill.append(v)?;
        // Readable at once.
        self.spill.w.flush().map_err(|e| format!("{}: {e}", self.spill.path.display()))
    }
    fn overwrite(&mut self, z0: usize, v: &Value) -> Result<(), String> {
        let (nz, ny, nx) = value_dim(v);
        if Some(Elem::of(v)?) != self.spill.elem || (ny, nx) != self.spill.plane || z0 + nz > self.spill.planes {
            return Err("internal: overwriting a scratch volume with other data".into());
        }
        let path = &self.spill.path;
        let bytes = self.spill.elem.map(Elem::bytes).unwrap_or(1);
        let mut f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        f.seek(SeekFrom::Start((z0 * ny * nx * bytes) as u64)).map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(&raw_bytes(v)).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.spill.path);
    }
}

/// Bytes the whole-image run of a sample needs at most: its sources plus the two largest stage
/// values (an op's input and output at the same time).
pub fn whole_run_bytes(plan: &Plan, bound: &Bound, headers: &[Header]) -> u64 {
    let vox = |shape: [usize; 3]| shape.iter().map(|&d| d as u64).product::<u64>();
    let sources: u64 = headers.iter().map(|h| vox(h.shape) * h.dtype.bytes_per_voxel()).sum();
    let mut sizes: Vec<u64> =
        plan.stages.iter().enumerate().map(|(i, _)| vox(bound.metas[i].shape) * tiled::bytes_per_voxel(&bound.metas[i])).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sources + sizes.iter().take(2).sum::<u64>()
}
