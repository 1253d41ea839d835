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
//!   tile evaluation as in memory ([`super::tiled`]);
//! - `threshold` by Otsu/Li/triangle: a histogram pass (two for float images) and an apply pass;
//! - `label`: slab labelling with provisional ids spilled to disk, unions across seams, then a
//!   renumbering pass ([`SlabLabeller`]);
//! - `measure`: one [`Accumulator`] fed slab by slab (a second pass for float intensities).
//!
//! Each of these gives the whole-image result bit for bit (the tests compare them). Other global
//! ops (`fill_holes`, `distance`, `voronoi`, `crop`, `downsample`, `rescale` over the image's
//! range) need the whole image: a sample that needs them and does not fit fails with a message
//! saying so and how much memory would do.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array3;

use super::tiled::{self, Feed, Group, GroupRun};
use super::tiles::Region;
use crate::io::{self, Compression, DType, Data, Header, NpyWriter, Spacing, StackWriter};
use crate::ops::label::{Label, SlabLabeller};
use crate::ops::measure::{Accumulator, Measure};
use crate::ops::threshold::{self, Method, Threshold};
use crate::ops::{Ctx, Kind, Meta, Op, Value};
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
    },
    /// `owned`: a temporary spill, removed once no later stage reads it (otherwise a checkpoint).
    Spill {
        path: PathBuf,
        elem: Elem,
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
    fn read(&self, z0: usize, z1: usize, plane: (usize, usize)) -> Result<Value, String> {
        match self {
            Store::Source { reader, .. } => reader.read(z0, z1).map(Value::Image).map_err(|e| e.to_string()),
            Store::Spill { path, elem, .. } => {
                let n = (z1 - z0) * plane.0 * plane.1;
                let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
                f.seek(SeekFrom::Start((z0 * plane.0 * plane.1 * elem.bytes()) as u64)).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut raw = vec![0u8; n * elem.bytes()];
                f.read_exact(&mut raw).map_err(|e| format!("{}: spill file cut short: {e}", path.display()))?;
                Ok(from_bytes(*elem, raw, (z1 - z0, plane.0, plane.1)))
            }
        }
    }
    fn bytes_per_voxel(&self) -> u64 {
        match self {
            Store::Source { dtype, .. } => dtype.bytes_per_voxel(),
            Store::Spill { elem, .. } => elem.bytes() as u64,
        }
    }
}

/// Appends slabs to a spill file.
struct Spill {
    path: PathBuf,
    w: BufWriter<File>,
    elem: Option<Elem>,
    hash: blake3::Hasher,
    bytes: u64,
}

impl Spill {
    fn create(dir: &Path, name: &str) -> Result<Spill, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("{name}.raw"));
        let f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Spill { path, w: BufWriter::with_capacity(1 << 20, f), elem: None, hash: blake3::Hasher::new(), bytes: 0 })
    }
    fn append(&mut self, v: &Value) -> Result<(), String> {
        let e = Elem::of(v)?;
        self.elem.get_or_insert(e);
        let raw = raw_bytes(v);
        self.hash.update(&raw);
        self.bytes += raw.len() as u64;
        self.w.write_all(&raw).map_err(|e| format!("{}: {e}", self.path.display()))
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
                Ok(Store::Spill { path, elem, owned: false })
            }
            None => Ok(Store::Spill { path: self.path, elem, owned: true }),
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

/// One slab of a measure stage's inputs: labels, intensity images, territories.
type MeasureSlab = (Array3<u32>, Vec<Data>, Option<Array3<u32>>);

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
        let op = s.bound.ops[i].as_ref();
        if local_halo(s, i).is_some() {
            continue;
        }
        let name = op.info().name;
        match name {
            "label" | "measure" => {}
            "threshold" => {
                let Ok(t) = serde_json::from_value::<Threshold>(op.params_json()) else { return Some((i, "internal".into())) };
                let float = input_meta(s, i, 0).dtype == Some(DType::F32);
                if t.method == Method::Li && float {
                    return Some((i, format!("stage '{}': li on a float image needs every value at once; use otsu or triangle", st.id)));
                }
            }
            _ => return Some((i, format!("stage '{}' (op `{name}`) needs the whole image in memory", st.id))),
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

fn ctx_of<'a>(s: &'a Streamed, _i: usize) -> Ctx<'a> {
    Ctx { sample: s.sample, spacing: s.spacing.zyx, unit: &s.spacing.unit, ndim: s.ndim }
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

/// Slab cores `[z0, z1)` covering `nz` planes.
fn slabs(nz: usize, thick: usize) -> Vec<(usize, usize)> {
    (0..nz).step_by(thick.max(1)).map(|z| (z, (z + thick).min(nz))).collect()
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
    let [nz, ny, nx] = s.headers[0].shape;
    let plane = (ny, nx);
    let last_use = plan.last_use();
    let reads = |i: usize| plan.stage_inputs(i);
    let outputs_of = |i: usize| plan.outputs.iter().find(|(o, _)| *o == i).map(|(_, f)| f.clone()).unwrap_or_default();
    let mut sources: Vec<Store> = Vec::new();
    for (p, h) in s.paths.iter().zip(s.headers) {
        let reader = io::PlaneReader::open(p).map_err(|e| (0, e.to_string()))?;
        sources.push(Store::Source { reader: std::sync::Arc::new(reader), dtype: h.dtype });
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
                stores[i] = Some(Store::Spill { path, elem, owned: false });
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
    let open_outputs = |i: usize, dtype: DType| -> Result<Vec<Out>, String> {
        let st = &plan.stages[i];
        let mut v = Vec::new();
        if s.valid[i] {
            return Ok(v);
        }
        for f in outputs_of(i) {
            let path = s.sample_dir.join(format!("{}.{}", st.id, f.ext()));
            let sp = Spacing { zyx: s.spacing.zyx, unit: s.spacing.unit.clone() };
            v.push(match f {
                Format::Tiff => {
                    Out::Tiff(StackWriter::create(&path, [nz, ny, nx], dtype, s.ndim, &sp, s.compression, None).map_err(|e| e.to_string())?)
                }
                Format::Npy => Out::Npy(NpyWriter::create(&path, [nz, ny, nx], dtype, s.ndim).map_err(|e| e.to_string())?),
                Format::Parquet | Format::Csv => return Err(format!("cannot write {} as {}", st.kind.with_article(), f.ext())),
            });
        }
        Ok(v)
    };
    let write_out = |outs: &mut Vec<Out>, v: &Value, u16_labels: bool| -> Result<(), String> {
        if outs.is_empty() {
            return Ok(());
        }
        let d = super::file_data(v, u16_labels).ok_or("internal: no voxel data to write")?;
        for o in outs.iter_mut() {
            o.append(&d).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let finish_out = |outs: Vec<Out>| -> Result<(), String> {
        for o in outs {
            o.finish().map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let file_dtype = |m: &Meta, labels_u16: bool| match m.kind {
        Kind::Mask => DType::U8,
        Kind::Labels if labels_u16 => DType::U16,
        Kind::Labels => DType::U32,
        _ => m.dtype.unwrap_or(DType::F32),
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
        let mut group = Group { stages: Vec::new(), halos: Vec::new() };
        let mut j = i;
        while j < n
            && compute[j]
            && let Some(h) = local_halo(s, j)
        {
            group.stages.push(j);
            group.halos.push(h);
            j += 1;
        }
        if !group.stages.is_empty() {
            // A run of local stages, slab by slab with the run's halo.
            let last = *group.stages.last().expect("a group has stages");
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
            let keep: Vec<bool> =
                group.stages.iter().map(|&k| spilled(k) || (!outputs_of(k).is_empty() && !s.valid[k]) || k == last).collect();
            let down = group.downstream(&reads);
            let halo = group.total_halo(&down)[0];
            let bpv = feed_stores.iter().map(Store::bytes_per_voxel).sum::<u64>()
                + group.stages.iter().map(|&k| tiled::bytes_per_voxel(&s.bound.metas[k])).sum::<u64>();
            let thick = slab_planes(s, ny * nx, bpv, halo);
            let mut spills: Vec<Option<Spill>> = Vec::new();
            let mut outs: Vec<Vec<Out>> = Vec::new();
            for (p, &k) in group.stages.iter().enumerate() {
                let spill = if keep[p] && last_use[k] > last {
                    Some(Spill::create(&s.spill_dir, &plan.stages[k].id).map_err(|e| (k, e))?)
                } else {
                    None
                };
                spills.push(spill);
                let o = if keep[p] { open_outputs(k, file_dtype(&s.bound.metas[k], false)).map_err(|e| (k, e))? } else { Vec::new() };
                outs.push(o);
            }
            for (z0, z1) in slabs(nz, thick) {
                let (r0, r1) = (z0.saturating_sub(halo), (z1 + halo).min(nz));
                let full: Vec<Value> = feed_stores.iter().map(|st| st.read(r0, r1, plane)).collect::<Result<_, _>>().map_err(|e| (i, e))?;
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
                    let k = group.stages[p];
                    if let Some(sp) = spills[p].as_mut() {
                        sp.append(&v).map_err(|e| (k, e))?;
                    }
                    write_out(&mut outs[p], &v, false).map_err(|e| (k, e))?;
                }
            }
            for (p, (sp, o)) in spills.into_iter().zip(outs).enumerate() {
                let k = group.stages[p];
                if let Some(sp) = sp {
                    stores[k] = Some(sp.finish(ck, &s.keys[k]).map_err(|e| (k, e))?);
                }
                finish_out(o).map_err(|e| (k, e))?;
            }
            let ids: Vec<&str> = group.stages.iter().map(|&k| plan.stages[k].id.as_str()).collect();
            timings.push((ids.join("+"), t0.elapsed().as_secs_f64()));
            i = last;
        } else {
            let op: &dyn Op = s.bound.ops[i].as_ref();
            let fail = |e: String| (i, e);
            match op.info().name {
                "threshold" => {
                    let t: Threshold = serde_json::from_value(op.params_json()).map_err(|e| fail(e.to_string()))?;
                    let input = store_of(&stores, &st.inputs[0].1);
                    let float = input_meta(s, i, 0).dtype == Some(DType::F32);
                    let thick = slab_planes(s, ny * nx, input.bytes_per_voxel() + 1, 0);
                    let value = threshold::streamed(t.method, t.nbins as usize, float, &mut |visit| {
                        for (z0, z1) in slabs(nz, thick) {
                            let Value::Image(d) = input.read(z0, z1, plane)? else { return Err("threshold: input is not an image".into()) };
                            visit(&d)?;
                        }
                        Ok(())
                    })
                    .map_err(fail)?;
                    let mut spill = if spilled(i) { Some(Spill::create(&s.spill_dir, &st.id).map_err(fail)?) } else { None };
                    let mut outs = open_outputs(i, DType::U8).map_err(fail)?;
                    for (z0, z1) in slabs(nz, thick) {
                        let Value::Image(d) = input.read(z0, z1, plane).map_err(fail)? else {
                            return Err(fail("threshold: input is not an image".into()));
                        };
                        let m = Value::Mask(threshold::apply(&d, value, t.invert).map_err(fail)?);
                        if let Some(sp) = spill.as_mut() {
                            sp.append(&m).map_err(fail)?;
                        }
                        write_out(&mut outs, &m, false).map_err(fail)?;
                    }
                    if let Some(sp) = spill {
                        stores[i] = Some(sp.finish(ck, &s.keys[i]).map_err(fail)?);
                    }
                    finish_out(outs).map_err(fail)?;
                }
                "label" => {
                    let l: Label = serde_json::from_value(op.params_json()).map_err(|e| fail(e.to_string()))?;
                    let input = store_of(&stores, &st.inputs[0].1);
                    let thick = slab_planes(s, ny * nx, 1 + 4 + 4, 0);
                    let mut labeller = SlabLabeller::new(l.connectivity_for(s.ndim), ny, nx);
                    let mut prov = Spill::create(&s.spill_dir, &format!("{}.provisional", st.id)).map_err(fail)?;
                    for (z0, z1) in slabs(nz, thick) {
                        let Value::Mask(m) = input.read(z0, z1, plane).map_err(fail)? else {
                            return Err(fail("label: input is not a mask".into()));
                        };
                        prov.append(&Value::Labels(labeller.add(&m).map_err(fail)?)).map_err(fail)?;
                    }
                    let prov = prov.finish(None, "").map_err(fail)?;
                    let (min, max) = l.size_range();
                    let (remap, count) = labeller.resolve(min, max);
                    objects.push((st.id.clone(), count as u64));
                    let u16_labels = count <= u16::MAX as u32;
                    let mut outs = open_outputs(i, if u16_labels { DType::U16 } else { DType::U32 }).map_err(fail)?;
                    // The provisional file is rewritten in place with the final ids: it becomes
                    // this stage's spill when a later stage reads it, and is removed otherwise.
                    let Store::Spill { path: prov_path, .. } = &prov else { return Err(fail("internal: provisional labels".into())) };
                    let mut rw = std::fs::OpenOptions::new()
                        .write(true)
                        .open(prov_path)
                        .map_err(|e| fail(format!("{}: {e}", prov_path.display())))?;
                    let keep = spilled(i);
                    let mut hash = blake3::Hasher::new();
                    for (z0, z1) in slabs(nz, thick) {
                        let Value::Labels(p) = prov.read(z0, z1, plane).map_err(fail)? else {
                            return Err(fail("internal: provisional labels".into()));
                        };
                        let v = Value::Labels(p.mapv(|x| remap[x as usize]));
                        if keep {
                            let raw = raw_bytes(&v);
                            hash.update(&raw);
                            rw.seek(SeekFrom::Start((z0 * ny * nx * 4) as u64))
                                .map_err(|e| fail(format!("{}: {e}", prov_path.display())))?;
                            rw.write_all(&raw).map_err(|e| fail(format!("{}: {e}", prov_path.display())))?;
                        }
                        write_out(&mut outs, &v, u16_labels).map_err(fail)?;
                    }
                    rw.flush().map_err(|e| fail(format!("{}: {e}", prov_path.display())))?;
                    drop(rw);
                    if !keep {
                        let _ = std::fs::remove_file(prov_path);
                    } else if let Some(store) = ck {
                        let meta = crate::store::RawMeta {
                            elem: Elem::Labels.name().into(),
                            bytes: (nz * ny * nx * 4) as u64,
                            blake3: hash.finalize().to_hex().to_string(),
                        };
                        let path = store.adopt_raw(&s.keys[i], prov_path, &meta).map_err(fail)?;
                        stores[i] = Some(Store::Spill { path, elem: Elem::Labels, owned: false });
                    } else {
                        stores[i] = Some(prov.clone());
                    }
                    finish_out(outs).map_err(fail)?;
                }
                "measure" => {
                    let m: Measure = serde_json::from_value(op.params_json()).map_err(|e| fail(e.to_string()))?;
                    let ins: Vec<Store> = st.inputs.iter().map(|(_, r)| store_of(&stores, r)).collect();
                    let n_int = m.intensity.len();
                    let bpv = ins.iter().map(Store::bytes_per_voxel).sum::<u64>();
                    let thick = slab_planes(s, ny * nx, bpv, 0);
                    let mut acc = Accumulator::default();
                    let read_all = |z0: usize, z1: usize| -> Result<MeasureSlab, String> {
                        let Value::Labels(l) = ins[0].read(z0, z1, plane)? else { return Err("measure: `labels` is not labels".into()) };
                        let mut images = Vec::new();
                        for store in &ins[1..1 + n_int] {
                            let Value::Image(d) = store.read(z0, z1, plane)? else {
                                return Err("measure: intensity is not an image".into());
                            };
                            images.push(d);
                        }
                        let terr = match ins.get(1 + n_int) {
                            Some(store) => match store.read(z0, z1, plane)? {
                                Value::Labels(t) => Some(t),
                                _ => return Err("measure: territories are not labels".into()),
                            },
                            None => None,
                        };
                        Ok((l, images, terr))
                    };
                    for (z0, z1) in slabs(nz, thick) {
                        let (l, images, terr) = read_all(z0, z1).map_err(fail)?;
                        let refs: Vec<&Data> = images.iter().collect();
                        acc.add(&l, &refs, terr.as_ref(), z0);
                    }
                    if acc.needs_second_pass() {
                        for (z0, z1) in slabs(nz, thick) {
                            let (l, images, _) = read_all(z0, z1).map_err(fail)?;
                            let refs: Vec<&Data> = images.iter().collect();
                            acc.add_second(&l, &refs, z0);
                        }
                    }
                    let names: Vec<&str> = m.intensity.keys().map(String::as_str).collect();
                    let table = Value::Table(acc.finish(&names, [nz, ny, nx], &ctx_of(s, i)));
                    if let Some(store) = ck {
                        store.save(&s.keys[i], &table).map_err(|e| fail(format!("writing a checkpoint: {e}")))?;
                    }
                    sink(i, &table).map_err(fail)?;
                }
                other => return Err(fail(format!("internal: `{other}` is not streamed"))),
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
