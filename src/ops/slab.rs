//! The out-of-core form of global ops: how an op runs over z-slabs of volumes on disk.
//!
//! Local ops need nothing here: the executor runs them per slab with their halo, fused as in
//! memory. A global op (a reduction, a renumbering, a change of shape) that can run on a volume
//! larger than memory implements [`Op::stream`](super::Op::stream) in its own file, in terms of
//! this interface: it reads its inputs a range of planes at a time, in any order and as many
//! passes as it needs; keeps per-slab partial results (histograms, union-find, accumulators);
//! may set intermediate volumes aside on disk ([`Slabs::scratch`]); and hands its output to the
//! executor slab by slab, in z order ([`Slabs::emit`]). The executor names no op: it only
//! decides where volumes live (source files, spill files, checkpoints) and where emitted slabs go
//! (later stages, output files).
//!
//! What the executor guarantees: every [`Volume`] read returns exactly the planes asked for,
//! the same bytes the in-memory value holds. What the op guarantees: the emitted slabs,
//! concatenated, equal [`Op::run`](super::Op::run) on the whole inputs bit for bit (the property
//! tests in `tests/stream.rs` check every op of the registry).

use super::{Meta, Op, Value};

/// How a global op's out-of-core form ends.
pub enum Outcome {
    /// Its voxels were emitted slab by slab ([`Slabs::emit`]).
    Emitted,
    /// Its table.
    Table(Value),
    /// What remains is local: this op, on the same inputs, gives the output (a threshold once
    /// the histogram passes have fixed its value). The executor then computes the stage per
    /// slab where it is read, fused with its readers, instead of writing it to disk.
    Local(Box<dyn Op>),
}

/// The compact form a global op keeps its streamed output in ([`Op::stored`](super::Op::stored)),
/// for values that compress badly but are determined by something that compresses well (a
/// float distance map by each voxel's nearest site): the op emits slabs of the stored form; the
/// executor spills and checkpoints those, and decodes them wherever the stage is read or
/// written, so no full-size copy of the voxels is ever on disk.
pub trait Stored: Send + Sync {
    /// Names the form (with a version) in checkpoint metadata.
    fn name(&self) -> &'static str;
    /// The stored form's shape for a value of shape `shape`.
    fn shape(&self, shape: [usize; 3]) -> [usize; 3];
    /// The value's planes `z0..` from the same planes of the stored form.
    fn decode(&self, stored: Value, z0: usize) -> Result<Value, String>;
}

/// A full-size volume on disk, read by plane ranges.
pub trait Volume: Send + Sync {
    /// Its kind, type and shape.
    fn meta(&self) -> Meta;
    /// `[z, y, x]`.
    fn shape(&self) -> [usize; 3] {
        self.meta().shape
    }
    /// Planes `z0..z1`.
    fn read(&self, z0: usize, z1: usize) -> Result<Value, String>;
    /// Planes `z0..z1` computed faster and less exactly, and a bound: every value is within it
    /// of [`Volume::read`]'s ([`super::Op::run_region_bounded`]). `None`: not available.
    fn read_bounded(&self, _z0: usize, _z1: usize) -> Option<(Value, f64)> {
        None
    }
    /// Bytes one voxel takes in memory while a slab is read (for a volume computed on the
    /// fly: its inputs' and intermediates' too).
    fn bytes_per_voxel(&self) -> u64;
    /// Planes of context a read adds on each side (volumes computed on the fly from a halo).
    fn halo(&self) -> usize {
        0
    }
    /// Bytes held at once while `planes` planes are read (for a volume computed on the fly: the
    /// slabs of its inputs, with their context, and of its intermediate stages).
    fn slab_bytes(&self, planes: usize) -> u64 {
        let [_, y, x] = self.shape();
        (planes * y * x) as u64 * self.bytes_per_voxel()
    }
}

/// A whole image as a volume read by plane ranges (each read copies its planes), for tests of
/// ops that read their input a few planes at a time.
#[cfg(test)]
pub(crate) struct WholeImage(pub crate::io::Data);

#[cfg(test)]
impl Volume for WholeImage {
    fn meta(&self) -> Meta {
        Meta { kind: super::Kind::Image, dtype: Some(self.0.dtype()), shape: self.0.shape(), ndim: 3, scale: [1.0; 3] }
    }
    fn read(&self, z0: usize, z1: usize) -> Result<Value, String> {
        let [_, y, x] = self.0.shape();
        let planes = crate::exec::tiles::Region { start: [z0, 0, 0], end: [z1, y, x] };
        Ok(crate::exec::tiled::crop(&Value::Image(self.0.clone()), &planes))
    }
    fn bytes_per_voxel(&self) -> u64 {
        self.0.dtype().bytes_per_voxel()
    }
}

/// A volume an op writes itself, slab by slab in z order, then reads back.
pub trait Scratch: Volume {
    /// Appends the next planes (all of one kind and plane size); they can be read at once.
    fn append(&mut self, v: &Value) -> Result<(), String>;
}

/// What the executor gives a global op running out of core.
pub trait Slabs {
    /// Input `k` (in [`Op::inputs`](super::Op::inputs) order).
    fn input(&self, k: usize) -> &dyn Volume;
    /// Planes per slab for a pass that reads a slab of every input (with whatever computing
    /// them takes) and holds `extra_bytes_per_voxel` more of its own per voxel of the slab,
    /// within the memory budget; at least 1.
    fn planes(&self, extra_bytes_per_voxel: u64) -> usize;
    /// The bytes a pass may hold at once (a quarter of `--memory`, as slabs are sized), for ops
    /// that cut their data another way than by planes.
    fn memory(&self) -> u64;
    /// A new, empty scratch volume (removed when the stage ends).
    fn scratch(&mut self, name: &str) -> Result<Box<dyn Scratch>, String>;
    /// Labels outputs: the largest id the emitted slabs will hold (files store labels as u16
    /// when it fits, as in memory). Must be called before the first labels slab is emitted.
    fn labels_max(&mut self, max: u32);
    /// The next planes of the output, in z order (voxel outputs only; in the op's stored form
    /// when it has one).
    fn emit(&mut self, v: Value) -> Result<(), String>;
}

/// Slab cores `[z0, z1)` of `thick` planes covering `nz` planes, in z order.
pub fn ranges(nz: usize, thick: usize) -> impl Iterator<Item = (usize, usize)> {
    let t = thick.max(1);
    (0..nz).step_by(t).map(move |z| (z, (z + t).min(nz)))
}

/// The largest label in a volume, read slab by slab (for ops that pass labels through).
pub fn max_label(v: &dyn Volume, planes: usize) -> Result<u32, String> {
    let mut max = 0;
    for (z0, z1) in ranges(v.shape()[0], planes) {
        match v.read(z0, z1)? {
            Value::Labels(l) => max = max.max(l.max()),
            other => return Err(format!("expected labels, found {}", other.kind().with_article())),
        }
    }
    Ok(max)
}

/// Blocks of rows `[y0, y1)` for an op whose last pass runs along z over whole blocks (all
/// planes of some rows: `distance`, `voronoi`): as many rows a block as fit half of
/// [`Slabs::memory`] at `bytes_per_voxel`, and at most 256 blocks (each an open scratch volume
/// being filled), whatever the budget.
pub fn row_blocks(io: &dyn Slabs, bytes_per_voxel: u64) -> Vec<(usize, usize)> {
    let [nz, ny, nx] = io.input(0).shape();
    let per_row = (nz * nx) as u64 * bytes_per_voxel;
    let rows = ((io.memory() / 2) / per_row.max(1)).clamp(1, ny.max(1) as u64) as usize;
    ranges(ny, rows.max(ny.div_ceil(256))).collect()
}

/// Reads the slabs `ranges` in order and hands each to `use_slab`, reading the next one while
/// the current one is used (on the other threads): a pass whose use of a slab is sequential
/// (accumulating in raster order) overlaps it with reading and decoding. Two slabs are held at
/// once, so size them for that.
pub fn pipelined<T: Send>(
    ranges: &[(usize, usize)],
    read: &(dyn Fn(usize, usize) -> Result<T, String> + Sync),
    mut use_slab: impl FnMut(T, usize, usize) -> Result<(), String> + Send,
) -> Result<(), String> {
    let mut next = ranges.first().map(|&(a, b)| read(a, b));
    for (i, &(z0, z1)) in ranges.iter().enumerate() {
        let cur = next.take().ok_or("internal: a slab was not read ahead")??;
        let (used, ahead) = rayon::join(|| use_slab(cur, z0, z1), || ranges.get(i + 1).map(|&(a, b)| read(a, b)));
        used?;
        next = ahead;
    }
    Ok(())
}

/// Sets a block of rows (all planes) aside as a new scratch volume `name`, appended `planes`
/// planes at a time, the slab height [`emit_blocks`] will read it by: a scratch volume is cut
/// into compressed chunks at least at every append, so each slab emitted then decompresses
/// only its own planes of each block (not a larger chunk again for every slab).
/// `slab(z0, z1)` gives the block's planes `z0..z1`.
pub fn keep_block(
    io: &mut dyn Slabs,
    name: &str,
    nz: usize,
    planes: usize,
    slab: impl Fn(usize, usize) -> Value,
) -> Result<Box<dyn Scratch>, String> {
    let mut out = io.scratch(name)?;
    for (z0, z1) in ranges(nz, planes) {
        out.append(&slab(z0, z1))?;
    }
    Ok(out)
}

/// Emits a volume set aside as blocks of rows (`parts[b]` holds every plane of rows
/// `blocks[b]`) as z-slabs of `planes` planes, in z order.
pub fn emit_blocks(io: &mut dyn Slabs, blocks: &[(usize, usize)], parts: &[Box<dyn Scratch>], planes: usize) -> Result<(), String> {
    let nz = parts.first().map_or(0, |p| p.shape()[0]);
    for (z0, z1) in ranges(nz, planes) {
        let rows: Vec<Value> = parts.iter().map(|p| p.read(z0, z1)).collect::<Result<_, _>>()?;
        if rows.len() != blocks.len() {
            return Err("internal: a block of rows without its scratch volume".into());
        }
        io.emit(stack_rows(&rows)?)?;
    }
    Ok(())
}

/// The runs of rows a crossing task computes at a time: those the first block set aside (each
/// then decoded once).
pub fn piece_runs(io: &dyn CrossIo) -> Vec<(usize, usize)> {
    io.runs(0)
}

/// Rows `y0..y1` of every plane, from the runs every block set aside (u32 words), read plane
/// slab by plane slab.
pub fn piece_rows(io: &dyn CrossIo, y0: usize, y1: usize) -> Result<ndarray::Array3<u32>, String> {
    use ndarray::s;
    let blocks = io.blocks();
    let nz = blocks.last().map_or(0, |b| b.1);
    let mut out: Option<ndarray::Array3<u32>> = None;
    for (b, &(z0, z1)) in blocks.iter().enumerate() {
        for (k, (a0, a1)) in io.runs(b).into_iter().enumerate() {
            let (lo, hi) = (a0.max(y0), a1.min(y1));
            if lo >= hi {
                continue;
            }
            let part = io.part(b, k)?;
            let [pz, rows, w] = part.shape();
            if pz != z1 - z0 || rows != a1 - a0 {
                return Err(format!("block {} of {}: a run set aside is {pz}×{rows}, not {}×{}", b + 1, blocks.len(), z1 - z0, a1 - a0));
            }
            let o = out.get_or_insert_with(|| crate::util::zeros3((nz, y1 - y0, w)));
            let planes = ((io.memory() / 4) / ((rows * w) as u64 * 4).max(1)).max(1) as usize;
            for (a, c) in ranges(pz, planes) {
                let Value::Labels(v) = part.read(a, c)? else { return Err("internal: a run set aside holds no words".into()) };
                let v = v.into_u32();
                o.slice_mut(s![z0 + a..z0 + c, lo - y0..hi - y0, ..]).assign(&v.slice(s![.., lo - a0..hi - a0, ..]));
            }
        }
    }
    out.ok_or_else(|| format!("no block set aside rows {y0}..{y1}"))
}

/// Hands each block its planes of a crossing task's output (`nz` planes of some rows): the next
/// run of rows of every block, appended in slabs of an eighth of the task's memory.
pub fn cross_out(io: &mut dyn CrossIo, v: &ndarray::Array3<u32>) -> Result<(), String> {
    use ndarray::s;
    let (_, rows, w) = v.dim();
    let planes = (io.memory() / 8 / ((rows * w * 4) as u64).max(1)).max(1) as usize;
    for (b, (z0, z1)) in io.blocks().into_iter().enumerate() {
        let mut out = io.out(b)?;
        for (a, c) in ranges(z1 - z0, planes) {
            out.append(&Value::Labels(v.slice(s![z0 + a..z0 + c, .., ..]).to_owned().into()))?;
        }
    }
    Ok(())
}

/// The apply of an op that crosses: the runs of rows the crossing tasks gave
/// ([`BlockIo::crossed`]) side by side, emitted as the block's planes, slab by slab.
pub fn emit_crossed(io: &mut dyn BlockIo, bytes_per_voxel: u64) -> Result<(), String> {
    let parts = io.crossed()?;
    let (_, z0, z1) = io.block();
    let planes = io.planes(bytes_per_voxel);
    for (a, b) in ranges(z1 - z0, planes) {
        let rows: Vec<Value> = parts.iter().map(|p| p.read(a, b)).collect::<Result<_, _>>()?;
        io.emit(stack_rows(&rows)?)?;
    }
    Ok(())
}

/// Values of one kind and type side by side along y (blocks of rows back into whole planes).
fn stack_rows(parts: &[Value]) -> Result<Value, String> {
    use crate::io::Data;
    use ndarray::{Array3, ArrayView3, Axis};
    use rayon::prelude::*;
    /// In standard layout (ndarray's `concatenate` along y gives planes strided apart, which
    /// every later copy to bytes would walk voxel by voxel), a plane per task.
    fn stack<T: Copy + Default + Send + Sync>(
        parts: &[Value],
        get: impl Fn(&Value) -> Option<ArrayView3<'_, T>>,
    ) -> Result<Array3<T>, String> {
        let views: Vec<ArrayView3<T>> =
            parts.iter().map(&get).collect::<Option<_>>().ok_or("internal: blocks of rows of different kinds")?;
        let (nz, _, nx) = views.first().map_or((0, 0, 0), |v| v.dim());
        if views.iter().any(|v| (v.dim().0, v.dim().2) != (nz, nx)) {
            return Err("internal: blocks of rows of different plane counts or widths".into());
        }
        let ny = views.iter().map(|v| v.dim().1).sum();
        let mut out: Array3<T> = crate::util::zeros3((nz, ny, nx));
        out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(z, mut plane)| {
            let mut y = 0;
            for v in &views {
                let rows = v.dim().1;
                plane.slice_mut(ndarray::s![y..y + rows, ..]).assign(&v.index_axis(Axis(0), z));
                y += rows;
            }
        });
        Ok(out)
    }
    Ok(match parts.first() {
        Some(Value::Mask(_)) => Value::Mask(stack(parts, |v| if let Value::Mask(a) = v { Some(a.view()) } else { None })?),
        // Rows set aside are u32 words.
        Some(Value::Labels(_)) => {
            Value::Labels(stack(parts, |v| if let Value::Labels(super::Labels::U32(a)) = v { Some(a.view()) } else { None })?.into())
        }
        Some(Value::Image(Data::U8(_))) => {
            Value::Image(Data::U8(stack(parts, |v| if let Value::Image(Data::U8(a)) = v { Some(a.view()) } else { None })?))
        }
        Some(Value::Image(Data::U16(_))) => {
            Value::Image(Data::U16(stack(parts, |v| if let Value::Image(Data::U16(a)) = v { Some(a.view()) } else { None })?))
        }
        Some(Value::Image(Data::U32(_))) => {
            Value::Image(Data::U32(stack(parts, |v| if let Value::Image(Data::U32(a)) = v { Some(a.view()) } else { None })?))
        }
        Some(Value::Image(Data::F32(_))) => {
            Value::Image(Data::F32(stack(parts, |v| if let Value::Image(Data::F32(a)) = v { Some(a.view()) } else { None })?))
        }
        _ => return Err("internal: blocks of rows hold no grey voxels".into()),
    })
}

/// The blocks' partial results of a round, read from disk one at a time in block order (a
/// reduce need not hold them all).
pub type Partials<'a> = dyn Iterator<Item = Result<Vec<u8>, String>> + 'a;

/// What a block task gives a phased op ([`Phased`]): block `index` of a volume cut into z-blocks,
/// planes `z0..z1` of the whole.
pub trait BlockIo {
    /// `(index, z0, z1)`.
    fn block(&self) -> (usize, usize, usize);
    /// Input `k` (in [`Op::inputs`](super::Op::inputs) order), whole: read the block's planes.
    fn input(&self, k: usize) -> &dyn Volume;
    /// Planes per slab for a pass that holds `extra_bytes_per_voxel` beside its inputs' slabs.
    fn planes(&self, extra_bytes_per_voxel: u64) -> usize;
    /// The block's own volume, set aside by [`Phased::partial`] for [`Phased::apply`]: created
    /// empty in the partial phase.
    fn keep(&mut self) -> Result<Box<dyn Scratch>, String>;
    /// What the partial phase kept, in the apply phase.
    fn kept(&self) -> Result<Box<dyn Volume>, String>;
    /// The block's planes of the output, in z order (apply phase).
    fn emit(&mut self, v: Value) -> Result<(), String>;
    /// An op that crosses ([`Phased::crosses`]), in its partial: the runs of rows `[y0, y1)` to
    /// set aside, in order — each within the rows of one crossing task, and few enough that
    /// every plane of a run fits that task's memory at `bytes_per_voxel` for `width` values a
    /// row, so the crossing task reads each run once.
    fn runs(&mut self, width: usize, bytes_per_voxel: u64) -> Vec<(usize, usize)>;
    /// An op that crosses, in its partial: the block's planes of run `k` of [`BlockIo::runs`],
    /// set aside for its crossing task (created empty, appended plane by plane).
    fn keep_run(&mut self, k: usize) -> Result<Box<dyn Scratch>, String>;
    /// An op that crosses, in its apply: what the crossing tasks gave for this block's planes,
    /// as blocks of rows (every plane of the block, some rows each), in row order.
    fn crossed(&self) -> Result<Vec<Box<dyn Volume>>, String>;
}

/// What a crossing task gives a phased op that crosses ([`Phased::cross`]): piece `p` of the
/// volume (rows `y0..y1`, every plane), as the blocks' partial tasks set it aside.
pub trait CrossIo {
    /// `(p, y0, y1)`.
    fn piece(&self) -> (usize, usize, usize);
    /// The whole volume's shape `[z, y, x]` (of the op's output).
    fn shape(&self) -> [usize; 3];
    /// The z-blocks `[z0, z1)`, in order.
    fn blocks(&self) -> Vec<(usize, usize)>;
    /// The runs of rows `(y0, y1)` block `b`'s partial set aside of this piece, in order and
    /// covering it.
    fn runs(&self, b: usize) -> Vec<(usize, usize)>;
    /// Run `k` of block `b` ([`CrossIo::runs`]): the block's planes of those rows.
    fn part(&self, b: usize, k: usize) -> Result<Box<dyn Volume>, String>;
    /// The bytes the task may hold at once (a quarter of `--memory`).
    fn memory(&self) -> u64;
    /// A new output for block `b`'s planes of the next run of rows (runs of rows in order,
    /// each for every block, all of its block's planes): what the block's apply reads back.
    fn out(&mut self, b: usize) -> Result<Box<dyn Scratch>, String>;
}

/// How a phased op ([`Phased`]) ends after its last reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every block writes its planes of the output ([`Phased::apply`]).
    Apply,
    /// What remains is local ([`Phased::local`]): the executor computes it per block, fused
    /// with the local stages around it, as a streamed run does with [`Outcome::Local`].
    Local,
    /// The reduced result gives the op's table ([`Phased::table`]), in the reduce task.
    Table,
}

/// The phased form of a global op, for a volume split into z-blocks on separate machines
/// (`tessera run --split`): in each of its [`Phased::rounds`], every block computes a partial
/// result ([`Phased::partial`], a block array task each) and one task reduces them in block
/// order ([`Phased::reduce`]); then it ends as its [`Phased::ending`] says (or it crosses
/// instead of reducing: [`Phased::crosses`]). Partial and reduced results are bytes the
/// executor keeps on disk between the tasks. The output must equal [`Op::run`](super::Op::run) on the whole inputs bit for
/// bit, for any cut into blocks (`tests/split.rs`).
pub trait Phased: Send + Sync {
    /// Rounds of partial results and reductions (a float threshold needs its range, then its
    /// histogram).
    fn rounds(&self) -> usize {
        1
    }
    /// The last round (0-based): the one whose reduced result the op finishes from.
    fn last_round(&self) -> usize {
        self.rounds().max(1) - 1
    }
    /// How the op ends after the last round.
    fn ending(&self) -> Ending {
        Ending::Apply
    }
    /// Block partial result of round `round` (reads the block's planes of the inputs, may keep
    /// a volume); `before` is the previous round's reduced result.
    fn partial(&self, io: &mut dyn BlockIo, round: usize, before: Option<&[u8]>, ctx: &super::Ctx) -> Result<Vec<u8>, String>;
    /// The partial results of every block, read one at a time in block order, reduced (every
    /// op but those that cross).
    fn reduce(&self, _round: usize, _partials: &mut Partials<'_>, _before: Option<&[u8]>, _ctx: &super::Ctx) -> Result<Vec<u8>, String> {
        Err("internal: this op crosses instead of reducing".into())
    }
    /// The local op that gives the output from the same inputs, from the last reduced result
    /// ([`Ending::Local`]).
    fn local(&self, _reduced: &[u8]) -> Result<Box<dyn super::Op>, String> {
        Err("internal: this op applies its reduced result per block".into())
    }
    /// The block's planes of the output from the last reduced result ([`Ending::Apply`]).
    fn apply(&self, _io: &mut dyn BlockIo, _reduced: &[u8], _ctx: &super::Ctx) -> Result<(), String> {
        Err("internal: this op does not apply its reduced result per block".into())
    }
    /// Whether the op crosses: its partial (one round) sets each block's planes aside by runs
    /// of rows ([`BlockIo::keep_run`]); instead of a reduce, a crossing task per piece reads
    /// every plane of its rows and computes them ([`Phased::cross`]: the pass along z of a
    /// separable transform); then each block applies ([`Phased::apply`], reading
    /// [`BlockIo::crossed`]).
    fn crosses(&self) -> bool {
        false
    }
    /// The crossing task of one piece (when [`Phased::crosses`]).
    fn cross(&self, _io: &mut dyn CrossIo, _ctx: &super::Ctx) -> Result<(), String> {
        Err("internal: this op does not cross".into())
    }
    /// The op's table from the last reduced result ([`Ending::Table`]).
    fn table(&self, _reduced: &[u8], _ctx: &super::Ctx) -> Result<Value, String> {
        Err("internal: this op does not end in a table".into())
    }
}
