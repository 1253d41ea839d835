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
//!   ([`tiled::group_from`]); computed where they are read, except that a stage two or more
//!   later global steps read is spilled once (a checkpoint, like a global stage's spill) and
//!   read back;
//! - global ops: each in its own out-of-core form ([`crate::ops::Op::stream`], see
//!   [`crate::ops::slab`]): this module gives it its inputs as [`Volume`]s read by plane
//!   ranges, scratch volumes, and a destination for its slabs ([`StageIo`]). It names no op.
//!
//! Each gives the whole-image result bit for bit (`tests/stream.rs` runs every registry op).
//! Every op has an out-of-core form for 3D grey volumes; one without (a future op, or 2D and
//! colour images) says so through [`crate::ops::Op::streams`], and a sample that needs it and
//! does not fit fails with a message saying so and how much memory would do.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::schedule::{self, Decision, Step};
use super::spill::{self, Elem, value_dim};
use super::split;
use super::tiled::{self, Feed, GroupRun};
use super::tiles::Region;
use crate::io::{self, Compression, DType, Header, Spacing, VoxelWriter};
use crate::ops::slab::{self, Outcome, Scratch, Slabs, Volume};
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
    /// Told each stage's id when it is done (computed, reused or spilled), for progress.
    pub on_stage: &'a (dyn Fn(&str) + Sync),
    /// Compute these stages and keep each as a checkpoint, instead of what the outputs need (a
    /// single task of a split run, [`super::split`]).
    pub targets: Option<&'a [bool]>,
}

/// A full-size stage value, read by plane ranges: a source file, a spill file (or checkpoint),
/// or computed on the fly from other stores (a run of local stages, recomputed per read).
#[derive(Clone)]
enum Store<'a> {
    Source {
        reader: Arc<io::PlaneReader>,
        dtype: DType,
        shape: [usize; 3],
    },
    Spill(Arc<spill::Reader>),
    /// A spill (or checkpoint) of an op's stored form ([`slab::Stored`]), decoded on reading
    /// into a value like `meta`.
    Decoded(Arc<spill::Reader>, Arc<dyn slab::Stored>, Meta),
    /// Stage `.1` (a position in the group) of a fused run of local stages.
    Computed(Arc<Computed<'a>>, usize),
}

/// A run of local stages computed per slab read: the stores it reads, with its halo.
struct Computed<'a> {
    s: &'a Streamed<'a>,
    group: tiled::Group,
    ops: Vec<OpRef<'a>>,
    feeds: Vec<Vec<Feed>>,
    inputs: Vec<Store<'a>>,
    shape: [usize; 3],
    /// Planes of context above and below a slab the group needs from its inputs.
    halo: usize,
}

/// An op of a computed run: the plan's, or the local op a global one finished with.
enum OpRef<'a> {
    Bound(&'a dyn crate::ops::Op),
    Owned(Box<dyn crate::ops::Op>),
}

impl OpRef<'_> {
    fn get(&self) -> &dyn crate::ops::Op {
        match self {
            OpRef::Bound(o) => *o,
            OpRef::Owned(o) => o.as_ref(),
        }
    }
}

impl<'a> Computed<'a> {
    /// Bytes held while `planes` planes are computed: its inputs over the slab with the run's
    /// context, and every stage of the run over that (an upper bound: later stages need less).
    fn slab_bytes(&self, planes: usize) -> u64 {
        let t = planes + 2 * self.halo;
        let [_, y, x] = self.shape;
        self.inputs.iter().map(|v| v.slab_bytes(t)).sum::<u64>()
            + self.group.stages.iter().map(|&k| (t * y * x) as u64 * tiled::bytes_per_voxel(&self.s.bound.metas[k])).sum::<u64>()
    }
    /// A run of the plan's stages (`ops` overrides stage ops where a global op finished local).
    fn new(
        s: &'a Streamed<'a>,
        group: tiled::Group,
        mut ops: Vec<OpRef<'a>>,
        stores: &[Option<Store<'a>>],
        sources: &[Store<'a>],
    ) -> Computed<'a> {
        let plan = s.plan;
        let pos = |k: usize| group.stages.iter().position(|&g| g == k);
        let mut inputs: Vec<Store<'a>> = Vec::new();
        let mut feeds = Vec::new();
        for &k in &group.stages {
            let mut f = Vec::new();
            for (_, r) in &plan.stages[k].inputs {
                f.push(match r {
                    Ref::Stage(x) if pos(*x).is_some() => Feed::Group(pos(*x).unwrap_or(0)),
                    Ref::Stage(x) => {
                        inputs.push(stores[*x].clone().expect("inputs computed before use"));
                        Feed::Full(inputs.len() - 1)
                    }
                    Ref::Source(x) => {
                        inputs.push(sources[*x].clone());
                        Feed::Full(inputs.len() - 1)
                    }
                });
            }
            feeds.push(f);
        }
        let reads = |i: usize| plan.stage_inputs(i);
        let down = group.downstream(&reads);
        let halo = group.total_halo(&down)[0];
        ops.truncate(group.stages.len());
        let shape = s.bound.metas[group.stages[0]].shape;
        Computed { s, group, ops, feeds, inputs, shape, halo }
    }
    /// Planes `z0..z1` of the stages marked in `keep` (positions in the group).
    fn run(&self, z0: usize, z1: usize, keep: &[bool]) -> Result<Vec<Option<Value>>, String> {
        let s = self.s;
        let [nz, ny, nx] = self.shape;
        let (r0, r1) = (z0.saturating_sub(self.halo), (z1 + self.halo).min(nz));
        let full: Vec<Value> = self.inputs.iter().map(|st| st.read(r0, r1)).collect::<Result<_, _>>()?;
        let refs: Vec<&Value> = full.iter().collect();
        let core = Region { start: [z0 - r0, 0, 0], end: [z1 - r0, ny, nx] };
        let run = GroupRun {
            group: &self.group,
            ops: self.ops.iter().map(OpRef::get).collect(),
            inputs: self.feeds.clone(),
            ctxs: self.group.stages.iter().map(|&k| ctx_of(s, k)).collect(),
            keep: keep.to_vec(),
            shape: [r1 - r0, ny, nx],
            tiles: vec![core],
            threads: s.threads,
        };
        let reads = |i: usize| s.plan.stage_inputs(i);
        // The slab's core planes, computed from the slab with its halo.
        tiled::run_core(&run, &refs, &reads, core).map_err(|(p, e)| format!("stage '{}': {e}", s.plan.stages[self.group.stages[p]].id))
    }
}

impl Volume for Store<'_> {
    fn meta(&self) -> Meta {
        let (kind, dtype) = match self {
            Store::Source { dtype, .. } => (Kind::Image, Some(*dtype)),
            Store::Spill(r) => elem_kind(Some(r.elem())),
            Store::Computed(c, p) => {
                let m = &c.s.bound.metas[c.group.stages[*p]];
                (m.kind, m.dtype)
            }
            Store::Decoded(_, _, m) => (m.kind, m.dtype),
        };
        Meta { kind, dtype, shape: self.shape(), ndim: 3, scale: [1.0; 3] }
    }
    fn shape(&self) -> [usize; 3] {
        match self {
            Store::Source { shape, .. } => *shape,
            Store::Spill(r) => r.shape(),
            Store::Computed(c, _) => c.shape,
            Store::Decoded(_, _, m) => m.shape,
        }
    }
    fn read(&self, z0: usize, z1: usize) -> Result<Value, String> {
        match self {
            Store::Source { reader, .. } => reader.read(z0, z1).map(Value::Image).map_err(|e| e.to_string()),
            Store::Spill(r) => r.read(z0, z1),
            Store::Decoded(r, codec, _) => codec.decode(r.read(z0, z1)?, z0),
            Store::Computed(c, p) => {
                let keep: Vec<bool> = (0..c.group.stages.len()).map(|k| k == *p).collect();
                c.run(z0, z1, &keep)?.swap_remove(*p).ok_or_else(|| "internal: a computed stage gave nothing".into())
            }
        }
    }
    fn bytes_per_voxel(&self) -> u64 {
        match self {
            Store::Source { dtype, .. } => dtype.bytes_per_voxel(),
            Store::Spill(r) => r.elem().bytes() as u64,
            // The stored words as read (per voxel of the value) and the value decoded.
            Store::Decoded(r, codec, m) => {
                let [_, y, x] = m.shape;
                let [_, sy, sx] = codec.shape(m.shape);
                let per = (sy * sx) as u64 * r.elem().bytes() as u64 / (y * x).max(1) as u64;
                per + tiled::bytes_per_voxel(m)
            }
            // Its inputs (with theirs) and every stage of the run.
            Store::Computed(c, _) => {
                c.inputs.iter().map(Volume::bytes_per_voxel).sum::<u64>()
                    + c.group.stages.iter().map(|&k| tiled::bytes_per_voxel(&c.s.bound.metas[k])).sum::<u64>()
            }
        }
    }
    fn halo(&self) -> usize {
        match self {
            Store::Computed(c, _) => c.halo + c.inputs.iter().map(Volume::halo).max().unwrap_or(0),
            _ => 0,
        }
    }
    fn slab_bytes(&self, planes: usize) -> u64 {
        match self {
            // Its inputs over the slab with the run's context, and every stage of the run over
            // that (an upper bound: later stages need less context).
            Store::Computed(c, _) => c.slab_bytes(planes),
            _ => {
                let [_, y, x] = self.shape();
                (planes * y * x) as u64 * self.bytes_per_voxel()
            }
        }
    }
}

/// A finished spill: a checkpoint of `key` when there is a store, a temporary otherwise. With
/// `stored`, it holds the op's stored form of a value like the meta given.
fn finish_spill<'a>(
    w: spill::Writer,
    ck: Option<&crate::store::Store>,
    key: &str,
    stored: Option<(Arc<dyn slab::Stored>, Meta)>,
) -> Result<Store<'a>, String> {
    let reader = match ck {
        Some(store) if w.elem().is_some() => adopt(w, store, key, stored.as_ref().map(|(c, _)| c.as_ref()))?,
        _ => w.finish(ck.is_none())?.0,
    };
    Ok(match stored {
        Some((codec, meta)) => Store::Decoded(Arc::new(reader), codec, meta),
        None => Store::Spill(Arc::new(reader)),
    })
}

/// Finishes a spill as the raw checkpoint of `key` in `store` (holding the `stored` form, if
/// any); gives its reader there.
pub(super) fn adopt(
    w: spill::Writer,
    store: &crate::store::Store,
    key: &str,
    stored: Option<&dyn slab::Stored>,
) -> Result<spill::Reader, String> {
    let elem = w.elem().ok_or_else(|| format!("{}: nothing was spilled", w.path().display()))?;
    let (reader, bytes, blake3) = w.finish(false)?;
    let meta = crate::store::RawMeta { elem: elem.name().into(), format: layout(stored), bytes, blake3 };
    let path = store.adopt_raw(key, reader.path(), &meta)?;
    Ok(reader.keep_at(path))
}

/// The layout named in a checkpoint's metadata: the spill format, with the stored form's name.
fn layout(stored: Option<&dyn slab::Stored>) -> String {
    match stored {
        Some(c) => format!("{}+{}", spill::FORMAT, c.name()),
        None => spill::FORMAT.into(),
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
        // Without an out-of-core form, the stage runs in memory when it fits.
        if let Some((why, need)) = runs_whole(s.plan, s.bound, s.headers, i)
            && need > s.memory
        {
            return Some((
                i,
                format!(
                    "stage '{}' (op `{}`) {why}: its inputs, output and working arrays take about {}, more than --memory {}",
                    st.id,
                    st.op.info().name,
                    crate::util::human_bytes(need),
                    crate::util::human_bytes(s.memory)
                ),
            ));
        }
    }
    None
}

/// Working bytes per voxel of an op that runs in memory, beside its inputs and output (a flood's
/// queue, a reconstruction's copy).
const WHOLE_WORK_BYTES: u64 = 32;

/// When stage `i`'s op has no out-of-core form for its inputs: why, and the bytes the stage holds
/// running whole in memory (its inputs, its output and its working arrays). `None`: it streams.
fn runs_whole(plan: &Plan, bound: &Bound, headers: &[Header], i: usize) -> Option<(String, u64)> {
    let ins = input_metas_of(plan, bound, headers, i);
    let why = bound.ops[i].streams(&ins).err()?;
    let meta = &bound.metas[i];
    let voxels = meta.shape.iter().map(|&d| d as u64).product::<u64>();
    let per_voxel: u64 = ins.iter().map(tiled::bytes_per_voxel).sum::<u64>() + tiled::bytes_per_voxel(meta) + WHOLE_WORK_BYTES;
    Some((why, voxels * per_voxel))
}

/// A global op without an out-of-core form, run on its inputs read whole (the stage fits in
/// memory: [`not_streamable`] checked it).
fn run_whole(io: &mut StageIo, op: &dyn crate::ops::Op, ctx: &crate::ops::Ctx) -> Result<Outcome, String> {
    let values: Vec<Value> = (0..io.inputs.len())
        .map(|k| {
            let v = io.input(k);
            v.read(0, v.shape()[0])
        })
        .collect::<Result<_, _>>()?;
    let refs: Vec<&Value> = values.iter().collect();
    let out = op.run(&refs, ctx)?;
    drop(values);
    match out {
        Value::Table(_) => Ok(Outcome::Table(out)),
        v => {
            if let Value::Labels(l) = &v {
                io.labels_max(l.max());
            }
            io.emit(v)?;
            Ok(Outcome::Emitted)
        }
    }
}

/// Stage `i`'s inputs' metadata, in its inputs' order (a source's from its header).
fn input_metas_of(plan: &Plan, bound: &Bound, headers: &[Header], i: usize) -> Vec<Meta> {
    plan.stages[i]
        .inputs
        .iter()
        .map(|(_, r)| match *r {
            Ref::Stage(j) => bound.metas[j].clone(),
            Ref::Source(src) => {
                let h = &headers[src];
                Meta { kind: Kind::Image, dtype: Some(h.dtype), shape: h.shape, ndim: h.ndim, scale: [1.0; 3] }
            }
        })
        .collect()
}

fn input_metas(s: &Streamed, i: usize) -> Vec<Meta> {
    input_metas_of(s.plan, s.bound, s.headers, i)
}

/// Stage `i`'s context: the sample's spacing, scaled after a downsample.
pub(super) fn ctx_of<'a>(s: &'a Streamed, i: usize) -> Ctx<'a> {
    let spacing = super::scaled(s.spacing, super::input_scale(s.plan, s.bound, i)).zyx;
    Ctx { sample: s.sample, spacing, unit: &s.spacing.unit, ndim: s.ndim }
}

/// Stage `i`'s stored form out of core, if its op has one.
pub(super) fn stored_form(s: &Streamed, i: usize) -> Option<Arc<dyn slab::Stored>> {
    s.bound.ops[i].stored(&ctx_of(s, i))
}

fn local_halo(s: &Streamed, i: usize) -> Option<[usize; 3]> {
    let ins = input_metas(s, i);
    let refs: Vec<&Meta> = ins.iter().collect();
    tiled::is_local(s.bound.ops[i].as_ref(), &ctx_of(s, i), &s.bound.metas[i], &refs)
}

/// The most planes per slab (at least 1, at most `nz`) whose `need` (bytes held for a slab of
/// that many planes, [`Volume::slab_bytes`]) fits a quarter of the budget (`--memory`; the rest
/// is the process, the writers and the allocator's slack).
fn fit_planes(s: &Streamed, nz: usize, need: &dyn Fn(usize) -> u64) -> usize {
    if let Some(t) = s.slab {
        return t.max(1);
    }
    let budget = s.memory / 4;
    // Needs grow with t: the largest t that fits, by bisection.
    let (mut lo, mut hi) = (1usize, nz.max(1));
    if need(hi) <= budget {
        return hi;
    }
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        if need(mid) <= budget { lo = mid } else { hi = mid }
    }
    lo
}

/// Stage `i`'s verified raw checkpoint in `c`, as a store (in its op's stored form if it has one).
fn checkpoint<'a>(s: &Streamed, c: &crate::store::Store, i: usize) -> Option<Store<'a>> {
    let codec = stored_form(s, i);
    let (path, meta) = c.raw(&s.keys[i])?;
    if meta.format != layout(codec.as_deref()) {
        return None;
    }
    let r = spill::Reader::open(&path).ok()?;
    let m = &s.bound.metas[i];
    match codec {
        Some(codec) if r.shape() == codec.shape(m.shape) => Some(Store::Decoded(Arc::new(r), codec, m.clone())),
        None if r.shape() == m.shape => Some(Store::Spill(Arc::new(r))),
        _ => None,
    }
}

/// The sample's source files, read by plane ranges. Slabs take a quarter of the budget
/// (`fit_planes`); a Zarr source's decoded chunks — the rows the last slab read, for the next
/// slab's halo, and the next row decoded ahead — at most another quarter; writers' buffers the
/// rest.
fn open_sources<'a>(s: &Streamed) -> Result<Vec<Store<'a>>, (usize, String)> {
    let cache = s.memory / 4 / s.paths.len().max(1) as u64;
    s.paths
        .iter()
        .zip(s.headers)
        .map(|(p, h)| {
            // Reads are sized by the slab plan (at least a plane and its halo, even past a tiny
            // budget); the reader's own limit only bounds what a damaged file could make it
            // allocate.
            let reader = io::PlaneReader::open_cached(p, cache, io::ReadLimits::default()).map_err(|e| (0, e.to_string()))?;
            Ok(Store::Source { reader: Arc::new(reader), dtype: h.dtype, shape: h.shape })
        })
        .collect()
}

fn run<'a>(
    s: &'a Streamed<'a>,
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
    let sources = open_sources(s)?;
    let mut stores: Vec<Option<Store>> = vec![None; n];
    // Table values, for the stages that read tables.
    let mut tables: Vec<Option<Value>> = vec![None; n];
    // Backward from what must exist (output files to rewrite, tables to merge): a value later
    // stages read comes from a verified checkpoint when there is one (a table, or a global
    // stage's spill), else it is computed.
    let ck = s.checkpoints;
    let mut preset: Vec<Option<Value>> = vec![None; n];
    let required = s.targets.map_or_else(|| super::required_stages(plan, s.valid), <[bool]>::to_vec);
    let target = |k: usize| s.targets.is_some_and(|t| t[k]);
    let decisions = schedule::decide(required, &reads, &mut |i| {
        let Some(c) = ck.filter(|_| !s.force) else { return false };
        if plan.stages[i].kind == Kind::Table {
            preset[i] = c.load(&s.keys[i]).filter(|v| matches!(v, Value::Table(_)));
            return preset[i].is_some();
        }
        stores[i] = checkpoint(s, c, i);
        stores[i].is_some()
    });
    reused.extend((0..n).filter(|&i| decisions[i] == Decision::Reuse).map(|i| plan.stages[i].id.clone()));
    // A global stage's emitted value is spilled when a later computed stage reads it (local
    // stages are recomputed where they are read instead).
    let spilled = |k: usize| target(k) || (k + 1..n).any(|m| decisions[m] == Decision::Compute && reads(m).contains(&k));
    let local = |k: usize| local_halo(s, k);
    let same_shape = |a: usize, b: usize| s.bound.metas[a].shape == s.bound.metas[b].shape;
    // A run of local stages is computed where it is read, so each later global step that reads
    // it (directly or through other local stages) computes it again. A stage of the run read
    // by two or more such steps is spilled instead, in one pass, and read back from there.
    let shared = |group: &[usize]| -> Vec<bool> {
        group
            .iter()
            .map(|&k| {
                let (mut seen, mut todo, mut readers) = (vec![false; n], vec![k], 0);
                while let Some(j) = todo.pop() {
                    for m in j + 1..n {
                        if !seen[m] && !group.contains(&m) && decisions[m] == Decision::Compute && reads(m).contains(&j) {
                            seen[m] = true;
                            if local(m).is_some() { todo.push(m) } else { readers += 1 }
                        }
                    }
                }
                readers >= 2 || target(k)
            })
            .collect()
    };

    for step in schedule::steps(&decisions, &local, &same_shape, &|_, _| false) {
        let t0 = Instant::now();
        let i = match &step {
            Step::Reuse(i) => {
                let i = *i;
                if let Some(v) = preset[i].take() {
                    sink(i, &v).map_err(|e| (i, e))?;
                    tables[i] = Some(v);
                } else if writes(s, i)
                    && let Some(store) = &stores[i]
                {
                    // A checkpoint of a stage whose output files must be rewritten.
                    if let Some(max) = copy_out(s, i, store).map_err(|e| (i, e))? {
                        objects.push((plan.stages[i].id.clone(), max as u64));
                    }
                }
                i
            }
            Step::Fused(group) => {
                // A run of local stages: computed where it is read, and written here if it has
                // output files.
                let ops = group.stages.iter().map(|&k| OpRef::Bound(s.bound.ops[k].as_ref())).collect();
                let comp = Arc::new(Computed::new(s, group.clone(), ops, &stores, &sources));
                let spilled = materialise(s, &comp, &shared(&group.stages)).map_err(|(p, e)| (comp.group.stages[p], e))?;
                for ((p, &k), spill) in comp.group.stages.iter().enumerate().zip(spilled) {
                    stores[k] = Some(spill.unwrap_or_else(|| Store::Computed(Arc::clone(&comp), p)));
                }
                let ids: Vec<&str> = comp.group.stages.iter().map(|&k| plan.stages[k].id.as_str()).collect();
                timings.push((ids.join("+"), t0.elapsed().as_secs_f64()));
                *group.stages.last().expect("a run has stages")
            }
            Step::Global(i)
                if plan.stages[*i].inputs.iter().all(|(_, r)| matches!(r, Ref::Stage(j) if plan.stages[*j].kind == Kind::Table)) =>
            {
                // An op on tables (small, held in memory): as in a run in memory.
                let i = *i;
                let fail = |e: String| (i, e);
                let ins: Vec<&Value> = plan
                    .stage_inputs(i)
                    .into_iter()
                    .map(|j| tables[j].as_ref().ok_or_else(|| fail("internal: an input table was not kept".into())))
                    .collect::<Result<_, _>>()?;
                let table = s.bound.ops[i].run(&ins, &ctx_of(s, i)).map_err(fail)?;
                if let Some(store) = ck {
                    store.save(&s.keys[i], &table).map_err(|e| fail(format!("writing a checkpoint: {e}")))?;
                }
                sink(i, &table).map_err(fail)?;
                tables[i] = Some(table);
                timings.push((plan.stages[i].id.clone(), t0.elapsed().as_secs_f64()));
                i
            }
            Step::ByPlanes(_, i) => return Err((*i, "internal: a stage reads by planes only in runs in memory".into())),
            Step::Global(i) => {
                // A global op, in its own out-of-core form.
                let i = *i;
                let st = &plan.stages[i];
                let fail = |e: String| (i, e);
                let inputs: Vec<Store> = st
                    .inputs
                    .iter()
                    .map(|(_, r)| match r {
                        Ref::Source(k) => sources[*k].clone(),
                        Ref::Stage(j) => stores[*j].clone().expect("inputs computed before use"),
                    })
                    .collect();
                let dest = match st.kind {
                    Kind::Table => None,
                    _ => Some(Dest { stored: stored_form(s, i), ..Dest::new(s, i, spilled(i)).map_err(fail)? }),
                };
                let mut io = StageIo { s, stage: i, inputs, dest, scratch: 0 };
                let op = s.bound.ops[i].as_ref();
                let outcome = match runs_whole(s.plan, s.bound, s.headers, i) {
                    None => op.stream(&mut io, &ctx_of(s, i)),
                    Some(_) => run_whole(&mut io, op, &ctx_of(s, i)),
                }
                .map_err(fail)?;
                match (io.dest.take(), outcome) {
                    (Some(d), Outcome::Emitted) => {
                        if st.kind == Kind::Labels {
                            objects.push((st.id.clone(), d.max.unwrap_or(0) as u64));
                        }
                        if let Some(store) = d.finish(s).map_err(fail)? {
                            stores[i] = Some(store);
                        }
                    }
                    (Some(d), Outcome::Local(op)) if st.kind != Kind::Labels => {
                        // Nothing was emitted: the rest is a local op, computed where it is read.
                        d.abandon();
                        let group = tiled::Group { stages: vec![i], halos: vec![[0; 3]] };
                        let comp = Arc::new(Computed::new(s, group, vec![OpRef::Owned(op)], &stores, &sources));
                        let spilled = materialise(s, &comp, &shared(&[i])).map_err(|(_, e)| fail(e))?;
                        stores[i] = Some(spilled.into_iter().next().flatten().unwrap_or(Store::Computed(comp, 0)));
                    }
                    (None, Outcome::Table(table @ Value::Table(_))) => {
                        if let Some(store) = ck {
                            store.save(&s.keys[i], &table).map_err(|e| fail(format!("writing a checkpoint: {e}")))?;
                        }
                        sink(i, &table).map_err(fail)?;
                        tables[i] = Some(table);
                    }
                    _ => return Err(fail(format!("internal: `{}` did not give {}", st.op.info().name, st.kind.with_article()))),
                }
                timings.push((st.id.clone(), t0.elapsed().as_secs_f64()));
                i
            }
        };
        let done: Vec<usize> = match &step {
            Step::Fused(group) => group.stages.clone(),
            Step::ByPlanes(group, i) => group.stages.iter().copied().chain([*i]).collect(),
            Step::Reuse(_) | Step::Global(_) => vec![i],
        };
        for k in done {
            (s.on_stage)(&plan.stages[k].id);
        }
        // What no later stage reads is dropped (a temporary spill file with its last reader).
        for (k, store) in stores.iter_mut().enumerate().take(i + 1) {
            if last_use[k] <= i {
                *store = None;
            }
        }
    }
    Ok(())
}

/// Writes stage `i`'s output files from its stored value (a checkpoint), slab by slab; gives
/// the largest label of a labels stage.
fn copy_out(s: &Streamed, i: usize, store: &Store) -> Result<Option<u32>, String> {
    let mut d = Dest::new(s, i, false)?;
    let nz = store.shape()[0];
    let thick = fit_planes(s, nz, &|t| 2 * store.slab_bytes(t));
    if s.bound.metas[i].kind == Kind::Labels {
        d.max = Some(slab::max_label(store, thick)?);
    }
    for (z0, z1) in slab::ranges(nz, thick) {
        d.emit(store.read(z0, z1)?, s)?;
    }
    let max = d.max;
    d.finish(s).map(|_| max)
}

/// Writes the output files of a computed run's stages (those not current) and spills the
/// stages marked in `spill` (positions in the run), in one pass over slabs; gives the spills'
/// stores. An error names the failing stage's position in the run.
fn materialise<'a>(s: &'a Streamed, comp: &Computed, spill: &[bool]) -> Result<Vec<Option<Store<'a>>>, (usize, String)> {
    let stages = &comp.group.stages;
    let keep: Vec<bool> = stages.iter().zip(spill).map(|(&k, &sp)| writes(s, k) || sp).collect();
    if !keep.iter().any(|&w| w) {
        return Ok(vec![None; stages.len()]);
    }
    let mut dests: Vec<Option<Dest>> = Vec::new();
    for (p, &k) in stages.iter().enumerate() {
        dests.push(if keep[p] { Some(Dest::new(s, k, spill[p]).map_err(|e| (p, e))?) } else { None });
    }
    let nz = comp.shape[0];
    let thick = fit_planes(s, nz, &|t| comp.slab_bytes(t));
    for (z0, z1) in slab::ranges(nz, thick) {
        let out = comp.run(z0, z1, &keep).map_err(|e| (0, e))?;
        for (p, v) in out.into_iter().enumerate() {
            if let (Some(v), Some(d)) = (v, dests[p].as_mut()) {
                d.emit(v, s).map_err(|e| (p, e))?;
            }
        }
    }
    let mut stores = Vec::new();
    for (p, d) in dests.into_iter().enumerate() {
        stores.push(match d {
            // A spill becomes the stage's checkpoint, as a global stage's does: a re-run takes
            // it instead of computing the run again.
            Some(d) => d.finish(s).map_err(|e| (p, e))?,
            None => None,
        });
    }
    Ok(stores)
}

/// Whether stage `k`'s output files are (re)written by this run.
fn writes(s: &Streamed, k: usize) -> bool {
    !s.valid[k] && s.plan.outputs.iter().any(|(o, fs)| *o == k && !fs.is_empty())
}

/// Where a streamed stage's slabs go, in z order: its spill file (when later stages read it) and
/// its output files (opened at the first slab, when the file type is known).
struct Dest {
    stage: usize,
    spill: Option<spill::Writer>,
    /// Whether output files are written (not current from the last run).
    write: bool,
    outs: Option<Vec<VoxelWriter>>,
    /// Labels: the largest id (declared by the op, or seen).
    max: Option<u32>,
    planes: usize,
    /// The op's stored form, when it emits that ([`slab::Stored`]): spilled as emitted,
    /// decoded for the output files.
    stored: Option<Arc<dyn slab::Stored>>,
}

impl Dest {
    fn new(s: &Streamed, k: usize, spill: bool) -> Result<Dest, String> {
        let spill = if spill { Some(spill::Writer::create(&s.spill_dir, &s.plan.stages[k].id)?) } else { None };
        Ok(Dest { stage: k, spill, write: writes(s, k), outs: None, max: None, planes: 0, stored: None })
    }
    fn emit(&mut self, v: Value, s: &Streamed) -> Result<(), String> {
        let (nz, ny, nx) = value_dim(&v);
        let meta = &s.bound.metas[self.stage];
        let [_, my, mx] = self.stored.as_ref().map_or(meta.shape, |c| c.shape(meta.shape));
        if (ny, nx) != (my, mx) {
            return Err(format!("internal: slab planes {ny}×{nx}, expected {my}×{mx}"));
        }
        let z0 = self.planes;
        self.planes += nz;
        if let Some(sp) = self.spill.as_mut() {
            sp.append(&v)?;
        }
        if !self.write {
            return Ok(());
        }
        let v = match &self.stored {
            Some(codec) => codec.decode(v, z0)?,
            None => v,
        };
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
    /// Gives up a destination nothing was emitted to (its spill file is removed).
    fn abandon(self) {
        if let Some(sp) = self.spill {
            let _ = std::fs::remove_file(sp.path());
        }
    }
    /// Closes the outputs; the spill, if any, becomes the stage's store.
    fn finish<'a>(self, s: &Streamed) -> Result<Option<Store<'a>>, String> {
        let want = s.bound.metas[self.stage].shape[0];
        if self.planes != want {
            return Err(format!("internal: {} planes streamed, expected {want}", self.planes));
        }
        for o in self.outs.into_iter().flatten() {
            o.finish().map_err(|e| e.to_string())?;
        }
        let stored = self.stored.map(|c| (c, s.bound.metas[self.stage].clone()));
        match self.spill {
            Some(sp) => finish_spill(sp, s.checkpoints, &s.keys[self.stage], stored).map(Some),
            None => Ok(None),
        }
    }
}

/// Stage `i`'s output files, created for slabs of `dtype`.
fn open_outputs(s: &Streamed, i: usize, dtype: DType) -> Result<Vec<VoxelWriter>, String> {
    let st = &s.plan.stages[i];
    let shape = s.bound.metas[i].shape;
    let sp = super::scaled(s.spacing, s.bound.metas[i].scale);
    let mut v = Vec::new();
    for (_, formats) in s.plan.outputs.iter().filter(|(o, _)| *o == i) {
        for f in formats {
            let path = s.sample_dir.join(format!("{}.{}", st.id, f.ext()));
            v.push(match f {
                Format::Voxels(vf) => {
                    let meta = io::VoxelMeta {
                        ndim: s.ndim,
                        spacing: &sp,
                        compression: s.compression,
                        role: super::voxel_role(st.kind),
                        source: s.paths.first().map(PathBuf::as_path),
                    };
                    VoxelWriter::create(&path, *vf, shape, dtype, &meta).map_err(|e| e.to_string())?
                }
                Format::Table(_) => return Err(format!("cannot write {} as {}", st.kind.with_article(), f.ext())),
            });
        }
    }
    Ok(v)
}

/// What a global op running out of core sees of the executor ([`Slabs`]).
struct StageIo<'a> {
    s: &'a Streamed<'a>,
    stage: usize,
    inputs: Vec<Store<'a>>,
    dest: Option<Dest>,
    /// Scratch volumes made so far (for unique names).
    scratch: usize,
}

impl Slabs for StageIo<'_> {
    fn input(&self, k: usize) -> &dyn Volume {
        &self.inputs[k]
    }
    fn planes(&self, extra_bytes_per_voxel: u64) -> usize {
        let [nz, ny, nx] = self.inputs.first().map(Volume::shape).unwrap_or([1; 3]);
        let extra = (ny * nx) as u64 * extra_bytes_per_voxel;
        fit_planes(self.s, nz, &|t| self.inputs.iter().map(|v| v.slab_bytes(t)).sum::<u64>() + t as u64 * extra)
    }
    fn memory(&self) -> u64 {
        self.s.memory / 4
    }
    fn scratch(&mut self, name: &str) -> Result<Box<dyn Scratch>, String> {
        self.scratch += 1;
        let name = format!("{}.{}.{name}", self.s.plan.stages[self.stage].id, self.scratch);
        Ok(Box::new(ScratchFile { w: spill::Writer::create(&self.s.spill_dir, &name)? }))
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

/// The kind and type of a spilled value of element type `elem` (labels while nothing is spilled).
fn elem_kind(elem: Option<Elem>) -> (Kind, Option<DType>) {
    match elem {
        Some(Elem::Mask) => (Kind::Mask, None),
        Some(Elem::Image(d)) => (Kind::Image, Some(d)),
        Some(Elem::Labels) | None => (Kind::Labels, None),
    }
}

/// A scratch volume: a spill file appended to and read back (removed when dropped).
struct ScratchFile {
    w: spill::Writer,
}

impl Volume for ScratchFile {
    fn meta(&self) -> Meta {
        let (kind, dtype) = elem_kind(self.w.elem());
        Meta { kind, dtype, shape: self.w.shape(), ndim: 3, scale: [1.0; 3] }
    }
    fn read(&self, z0: usize, z1: usize) -> Result<Value, String> {
        self.w.read(z0, z1)
    }
    fn bytes_per_voxel(&self) -> u64 {
        self.w.elem().map(|e| e.bytes() as u64).unwrap_or(4)
    }
}

impl Scratch for ScratchFile {
    fn append(&mut self, v: &Value) -> Result<(), String> {
        self.w.append(v)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.w.path());
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
    // A stage without an out-of-core form holds its inputs, output and working arrays at once.
    let whole = (0..plan.stages.len())
        .filter(|&i| plan.stages[i].halo == crate::ops::Halo::Global)
        .filter_map(|i| runs_whole(plan, bound, headers, i).map(|(_, bytes)| bytes))
        .max()
        .unwrap_or(0);
    sources + (sizes.iter().take(2).sum::<u64>()).max(whole)
}

/// Runs block `block` of a block phase of a split run ([`super::split`]) for one sample: its
/// local stages over the block's planes (storing the blocks of `phase.stored`), and its phased
/// ops' partial results and applications. Values of earlier phases are read from their
/// checkpoints. What exists already is not redone; every file appears whole. Errors name the
/// failing stage's plan index.
pub fn run_block(s: &Streamed, phase: &split::Phase, block: usize, files: &split::Files) -> Result<(), (usize, String)> {
    if let Some(e) = not_streamable(s) {
        return Err(e);
    }
    let plan = s.plan;
    let n = plan.stages.len();
    let ck = s.checkpoints.ok_or((0, "internal: a split run keeps checkpoints".to_string()))?;
    let sources = open_sources(s)?;
    let here = |k: usize| phase.work.contains(&split::Work::Local(k));
    let mut stores: Vec<Option<Store>> = vec![None; n];
    // What earlier phases made, from its checkpoint (a single task joined the blocks).
    // (An application reads only what its partial phase kept.)
    for w in phase.work.iter().filter(|w| w.reads_inputs()) {
        for j in plan.stage_inputs(w.stage()) {
            if !here(j) && stores[j].is_none() {
                let st = &plan.stages[j];
                stores[j] = Some(checkpoint(s, ck, j).ok_or_else(|| {
                    (
                        w.stage(),
                        format!(
                            "the value of stage '{}' from an earlier phase is missing: run that phase first (`tessera status` shows it)",
                            st.id
                        ),
                    )
                })?);
            }
        }
    }
    // A stage with fewer planes than blocks has a block per plane; the blocks after have none.
    let range = |k: usize| split::block_of(s.bound.metas[k].shape[0], files.blocks, block);
    // A phased op that finished local (a threshold once its histogram is reduced) is computed
    // as that local op.
    let mut finished: Vec<Option<Box<dyn crate::ops::Op>>> = Vec::new();
    for k in 0..n {
        finished.push(match s.bound.ops[k].phased().filter(|p| here(k) && p.ending() == slab::Ending::Local) {
            Some(p) => {
                let reduced = files.read_reduced(&s.keys[k], p.last_round(), &plan.stages[k].id).map_err(|e| (k, e))?;
                Some(p.local(&reduced).map_err(|e| (k, e))?)
            }
            None => None,
        });
    }
    let local = |k: usize| match &finished[k] {
        Some(op) => {
            let ins = input_metas(s, k);
            let refs: Vec<&Meta> = ins.iter().collect();
            tiled::is_local(op.as_ref(), &ctx_of(s, k), &s.bound.metas[k], &refs)
        }
        None => local_halo(s, k),
    };
    // Local stages, grouped as the executors group them.
    let decisions: Vec<Decision> = (0..n).map(|k| if here(k) { Decision::Compute } else { Decision::Skip }).collect();
    let same_shape = |a: usize, b: usize| s.bound.metas[a].shape == s.bound.metas[b].shape;
    let steps = schedule::steps(&decisions, &local, &same_shape, &|_, _| false);
    for step in steps {
        let Step::Fused(group) = step else {
            let k = match step {
                Step::Global(k) | Step::Reuse(k) => k,
                Step::Fused(_) => 0,
                Step::ByPlanes(_, k) => k,
            };
            return Err((k, format!("stage '{}' is not local for this sample, so it cannot run per block", plan.stages[k].id)));
        };
        let ops = group
            .stages
            .iter()
            .map(|&k| match finished[k].take() {
                Some(op) => OpRef::Owned(op),
                None => OpRef::Bound(s.bound.ops[k].as_ref()),
            })
            .collect();
        let comp = Arc::new(Computed::new(s, group.clone(), ops, &stores, &sources));
        for (p, &k) in group.stages.iter().enumerate() {
            stores[k] = Some(Store::Computed(Arc::clone(&comp), p));
        }
        let keep: Vec<bool> = group.stages.iter().map(|&k| phase.stored.contains(&k) && !files.part(&s.keys[k], block).is_file()).collect();
        if !keep.contains(&true) {
            continue;
        }
        let Some((z0, z1)) = range(group.stages[0]) else { continue };
        let mut outs: Vec<Option<spill::Writer>> = Vec::new();
        for (p, &k) in group.stages.iter().enumerate() {
            outs.push(if keep[p] { Some(aside_writer(&files.part(&s.keys[k], block)).map_err(|e| (k, e))?) } else { None });
        }
        let thick = fit_planes(s, z1 - z0, &|t| comp.slab_bytes(t));
        for (a, b) in slab::ranges(z1 - z0, thick) {
            let vals = comp.run(z0 + a, z0 + b, &keep).map_err(|e| (group.stages[0], e))?;
            for (p, v) in vals.into_iter().enumerate() {
                if let (Some(v), Some(w)) = (v, outs[p].as_mut()) {
                    w.append(&v).map_err(|e| (group.stages[p], e))?;
                }
            }
        }
        for (p, w) in outs.into_iter().enumerate() {
            if let Some(w) = w {
                let k = group.stages[p];
                place(w, &files.part(&s.keys[k], block)).map_err(|e| (k, e))?;
            }
        }
    }
    // Phased global ops: partial results, crossings, applications.
    for w in &phase.work {
        let (i, apply, round) = match *w {
            split::Work::Partial(i, r) => (i, false, r),
            split::Work::Apply(i) => (i, true, 0),
            split::Work::Cross(i) => {
                cross(s, files, i, block).map_err(|e| (i, e))?;
                continue;
            }
            _ => continue,
        };
        let key = &s.keys[i];
        let done = if apply { files.part(key, block) } else { files.partial(key, block, round) };
        if done.is_file() {
            continue;
        }
        let fail = |e: String| (i, e);
        let op =
            s.bound.ops[i].phased().ok_or_else(|| fail(format!("internal: `{}` has no phased form", plan.stages[i].op.info().name)))?;
        let inputs: Vec<Store> = plan.stages[i]
            .inputs
            .iter()
            .filter(|_| !apply)
            .map(|(_, r)| match r {
                Ref::Source(k) => Ok(sources[*k].clone()),
                Ref::Stage(j) => stores[*j].clone().ok_or_else(|| fail("internal: an input was not prepared".into())),
            })
            .collect::<Result<_, _>>()?;
        // A phased op's output has its input's shape (the planner sends others to one task).
        let Some((z0, z1)) = range(i) else { continue };
        let mut io = BlockStage {
            s,
            files,
            key,
            inputs,
            shape: s.bound.metas[i].shape,
            block: (block, z0, z1),
            keeping: Vec::new(),
            runs: Vec::new(),
            part: files.part(key, block),
            out: None,
            planes: 0,
        };
        let ctx = ctx_of(s, i);
        let id = &plan.stages[i].id;
        if apply {
            // A crossing op applies what its crossing tasks gave; others their reduced result.
            let reduced = if op.crosses() { Vec::new() } else { files.read_reduced(key, op.last_round(), id).map_err(fail)? };
            op.apply(&mut io, &reduced, &ctx).map_err(fail)?;
            let out = io.out.take().ok_or_else(|| fail("internal: a phased op applied nothing".into()))?;
            if io.planes != z1 - z0 {
                return Err(fail(format!("internal: {} planes applied to a block of {}", io.planes, z1 - z0)));
            }
            place(out, &done).map_err(fail)?;
        } else {
            let before = match round {
                0 => None,
                r => Some(files.read_reduced(key, r - 1, id).map_err(fail)?),
            };
            let bytes = op.partial(&mut io, round, before.as_deref(), &ctx).map_err(fail)?;
            place_kept(std::mem::take(&mut io.keeping)).map_err(fail)?;
            crate::util::write_atomic(&done, &bytes).map_err(|e| fail(format!("{}: {e}", done.display())))?;
        }
    }
    Ok(())
}

/// The crossing task of piece `p` of stage `i` (of a phased op that crosses): unless done, the
/// op's [`slab::Phased::cross`] over what every block's partial set aside of the piece; its
/// outputs placed, then the piece's runs of rows recorded (what marks it done).
fn cross(s: &Streamed, files: &split::Files, i: usize, p: usize) -> Result<(), String> {
    let key = &s.keys[i];
    let [nz, ny, _] = s.bound.metas[i].shape;
    let Some((y0, y1)) = split::block_of(ny, files.blocks, p) else { return Ok(()) };
    if files.cross_done(key, p).is_file() {
        return Ok(());
    }
    let op = s.bound.ops[i].phased().ok_or("internal: no phased form")?;
    let blocks = split::cuts(nz, files.blocks);
    // What every block set aside of the piece, listed once (a block that did not is named here).
    let set_aside = (0..blocks.len()).map(|b| files.kept_runs(key, b, p, (y0, y1))).collect::<Result<Vec<_>, _>>()?;
    let mut io =
        CrossStage { s, files, key, stage: i, piece: (p, y0, y1), given: vec![0; blocks.len()], blocks, set_aside, writers: Vec::new() };
    op.cross(&mut io, &ctx_of(s, i))?;
    let runs = io.given[0];
    if io.given.iter().any(|&r| r != runs) {
        return Err("internal: a crossing task gave blocks different runs of rows".into());
    }
    place_kept(std::mem::take(&mut io.writers))?;
    let path = files.cross_done(key, p);
    crate::util::write_atomic(&path, runs.to_string().as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// A volume a phased op or a crossing task writes, and where it goes when the task ends.
type Aside = (PathBuf, Arc<std::sync::Mutex<Option<spill::Writer>>>);

/// A new volume written aside, listed in `list` to be placed at `path` ([`place_kept`]).
fn set_aside(list: &mut Vec<Aside>, path: PathBuf) -> Result<Box<dyn Scratch>, String> {
    let w = Arc::new(std::sync::Mutex::new(Some(aside_writer(&path)?)));
    list.push((path, Arc::clone(&w)));
    Ok(Box::new(Kept(w)))
}

/// Places the volumes a phased op set aside, each at its path.
fn place_kept(kept: Vec<Aside>) -> Result<(), String> {
    for (path, k) in kept {
        let w = k.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(w) = w {
            place(w, &path)?;
        }
    }
    Ok(())
}

/// What a crossing task sees ([`slab::CrossIo`]).
struct CrossStage<'a> {
    s: &'a Streamed<'a>,
    files: &'a split::Files,
    key: &'a str,
    stage: usize,
    piece: (usize, usize, usize),
    blocks: Vec<(usize, usize)>,
    /// What each block set aside of the piece: its runs of rows and their files.
    set_aside: Vec<Vec<(usize, usize, PathBuf)>>,
    /// Runs of rows given so far, per block.
    given: Vec<usize>,
    writers: Vec<Aside>,
}

impl slab::CrossIo for CrossStage<'_> {
    fn piece(&self) -> (usize, usize, usize) {
        self.piece
    }
    fn shape(&self) -> [usize; 3] {
        self.s.bound.metas[self.stage].shape
    }
    fn blocks(&self) -> Vec<(usize, usize)> {
        self.blocks.clone()
    }
    fn runs(&self, b: usize) -> Vec<(usize, usize)> {
        self.set_aside.get(b).map_or_else(Vec::new, |v| v.iter().map(|&(a, c, _)| (a, c)).collect())
    }
    fn part(&self, b: usize, k: usize) -> Result<Box<dyn Volume>, String> {
        let (_, _, path) = self.set_aside.get(b).and_then(|v| v.get(k)).ok_or("internal: no such run of rows")?;
        let r = spill::Reader::open(path).map_err(|e| {
            format!(
                "what block {} of {} set aside for piece {} is damaged ({e}): run that block's partial phase again",
                b + 1,
                self.files.blocks,
                self.piece.0 + 1
            )
        })?;
        Ok(Box::new(Store::Spill(Arc::new(r))))
    }
    fn memory(&self) -> u64 {
        self.s.memory / 4
    }
    fn out(&mut self, b: usize) -> Result<Box<dyn Scratch>, String> {
        let run = *self.given.get(b).ok_or("internal: no such block")?;
        self.given[b] += 1;
        set_aside(&mut self.writers, self.files.crossed(self.key, self.piece.0, run, b))
    }
}

/// A spill writer for a file that appears at `path` only when whole ([`place`]), under a
/// temporary name beside it ([`crate::util::tmp_sibling`]).
fn aside_writer(path: &std::path::Path) -> Result<spill::Writer, String> {
    let dir = path.parent().ok_or("internal: a split file without a folder")?;
    let tmp = crate::util::tmp_sibling(path);
    spill::Writer::create(dir, &tmp.file_name().unwrap_or_default().to_string_lossy())
}

/// Finishes a writer from [`aside_writer`] and renames it into place.
fn place(w: spill::Writer, path: &std::path::Path) -> Result<(), String> {
    let (r, _, _) = w.finish(false)?;
    std::fs::rename(r.path(), path).map_err(|e| format!("{}: {e}", path.display()))
}

/// What a phased op sees of one block ([`slab::BlockIo`]).
struct BlockStage<'a> {
    s: &'a Streamed<'a>,
    files: &'a split::Files,
    key: &'a str,
    /// The op's inputs (none when it applies its reduced result).
    inputs: Vec<Store<'a>>,
    /// The output's shape.
    shape: [usize; 3],
    block: (usize, usize, usize),
    /// What the partial sets aside, and where each goes when it ends.
    keeping: Vec<Aside>,
    /// An op that crosses: the runs of rows its partial sets aside (piece, y0, y1).
    runs: Vec<(usize, usize, usize)>,
    /// Where the block's output goes, and its writer once the op emits.
    part: PathBuf,
    out: Option<spill::Writer>,
    planes: usize,
}

/// The volume a phased op keeps of its block: a spill file kept when the partial ends.
struct Kept(Arc<std::sync::Mutex<Option<spill::Writer>>>);

impl Kept {
    fn with<T>(&self, f: impl FnOnce(&mut spill::Writer) -> Result<T, String>) -> Result<T, String> {
        let mut g = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(g.as_mut().ok_or("internal: a kept volume used after its block")?)
    }
}

impl Volume for Kept {
    fn meta(&self) -> Meta {
        let (elem, shape) = self.with(|w| Ok((w.elem(), w.shape()))).unwrap_or((None, [0; 3]));
        let (kind, dtype) = elem_kind(elem);
        Meta { kind, dtype, shape, ndim: 3, scale: [1.0; 3] }
    }
    fn read(&self, z0: usize, z1: usize) -> Result<Value, String> {
        self.with(|w| w.read(z0, z1))
    }
    fn bytes_per_voxel(&self) -> u64 {
        self.with(|w| Ok(w.elem().map(|e| e.bytes() as u64).unwrap_or(4))).unwrap_or(4)
    }
}

impl Scratch for Kept {
    fn append(&mut self, v: &Value) -> Result<(), String> {
        self.with(|w| w.append(v))
    }
}

impl slab::BlockIo for BlockStage<'_> {
    fn block(&self) -> (usize, usize, usize) {
        self.block
    }
    fn input(&self, k: usize) -> &dyn Volume {
        &self.inputs[k]
    }
    fn planes(&self, extra_bytes_per_voxel: u64) -> usize {
        let (_, z0, z1) = self.block;
        let [_, ny, nx] = self.shape;
        let extra = (ny * nx) as u64 * extra_bytes_per_voxel;
        fit_planes(self.s, z1 - z0, &|t| self.inputs.iter().map(|v| v.slab_bytes(t)).sum::<u64>() + t as u64 * extra)
    }
    fn keep(&mut self) -> Result<Box<dyn Scratch>, String> {
        set_aside(&mut self.keeping, self.files.kept(self.key, self.block.0))
    }
    fn kept(&self) -> Result<Box<dyn Volume>, String> {
        let r = spill::Reader::open(&self.files.kept(self.key, self.block.0)).map_err(|e| {
            format!("what the partial phase kept of this block is missing or damaged ({e}): run that block's partial phase again")
        })?;
        Ok(Box::new(Store::Spill(Arc::new(r))))
    }
    fn runs(&mut self, width: usize, bytes_per_voxel: u64) -> Vec<(usize, usize)> {
        // What a crossing task holds at once: half its memory (a quarter of --memory), as
        // `distance` and `voronoi` size their blocks of rows when streamed.
        let [nz, ny, _] = self.shape;
        let per_row = ((nz * width) as u64 * bytes_per_voxel).max(1);
        let budget = self.s.memory / 4 / 2;
        self.files.remove_kept_runs(self.key, self.block.0);
        self.runs.clear();
        for (p, (y0, y1)) in split::cuts(ny, self.files.blocks).into_iter().enumerate() {
            let rows = (budget / per_row).clamp(1, (y1 - y0).max(1) as u64) as usize;
            self.runs.extend(slab::ranges(y1 - y0, rows).map(|(a, b)| (p, y0 + a, y0 + b)));
        }
        self.runs.iter().map(|&(_, a, b)| (a, b)).collect()
    }
    fn keep_run(&mut self, k: usize) -> Result<Box<dyn Scratch>, String> {
        let &(p, y0, y1) = self.runs.get(k).ok_or("internal: no such run of rows")?;
        set_aside(&mut self.keeping, self.files.kept_run(self.key, self.block.0, p, (y0, y1)))
    }
    fn crossed(&self) -> Result<Vec<Box<dyn Volume>>, String> {
        let mut v: Vec<Box<dyn Volume>> = Vec::new();
        for p in 0..split::blocks_for(self.shape[1], self.files.blocks) {
            let runs = self.files.cross_runs(self.key, p)?;
            for r in 0..runs {
                let path = self.files.crossed(self.key, p, r, self.block.0);
                let rd = spill::Reader::open(&path).map_err(|e| {
                    format!("what the crossing task of piece {} gave is missing or damaged ({e}): run that phase again", p + 1)
                })?;
                v.push(Box::new(Store::Spill(Arc::new(rd))));
            }
        }
        Ok(v)
    }
    fn emit(&mut self, v: Value) -> Result<(), String> {
        if self.out.is_none() {
            self.out = Some(aside_writer(&self.part)?);
        }
        self.planes += value_dim(&v).0;
        self.out.as_mut().map_or(Ok(()), |w| w.append(&v))
    }
}
