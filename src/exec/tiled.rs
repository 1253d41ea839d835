//! Fused, tiled evaluation of runs of local stages.
//!
//! Consecutive stages (in plan order) whose ops are local — a finite halo, the same shape in as
//! out — form a *group*. A group is evaluated tile by tile: each stage of the group is computed
//! on the tile's core grown by the halos of everything downstream of it in the group, from
//! inputs grown by its own halo as well, so the core of the last stage sees exactly the context
//! the whole-image computation sees. Stages of the group that nothing after the group reads and
//! that are not written never exist at full size: that is the memory the fusion saves.
//!
//! Tiles run in parallel on the caller's rayon pool, in batches, and are pasted in tile order,
//! so the result does not depend on the thread count. Tiled equals whole byte for byte for every
//! op declared local (tested by property tests in `tests/tiled.rs`); global ops run on whole
//! arrays in the caller.

use ndarray::{Array3, Array4, ArrayView3, s};
use rayon::prelude::*;

use super::tiles::{Region, Zyx};
use crate::io::Data;
use crate::ops::{Ctx, Halo, Kind, Labels, Meta, Op, Value};

/// One group of fused local stages, as plan indices in order, with each stage's halo for the
/// sample being run.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub stages: Vec<usize>,
    pub halos: Vec<Zyx>,
}

impl Group {
    /// How far beyond a tile's core each stage of the group must be computed: the largest sum of
    /// halos along any path from it to a later stage of the group (0 for the last).
    pub fn downstream(&self, reads: &dyn Fn(usize) -> Vec<usize>) -> Vec<Zyx> {
        let n = self.stages.len();
        let mut down = vec![[0usize; 3]; n];
        for a in (0..n).rev() {
            for b in a + 1..n {
                if reads(self.stages[b]).contains(&self.stages[a]) {
                    let via_b = [0, 1, 2].map(|k| down[b][k] + self.halos[b][k]);
                    down[a] = [0, 1, 2].map(|k| down[a][k].max(via_b[k]));
                }
            }
        }
        down
    }

    /// The largest context any of the group's inputs needs: downstream halo plus own halo.
    pub fn total_halo(&self, down: &[Zyx]) -> Zyx {
        let mut h = [0; 3];
        for (i, d) in down.iter().enumerate() {
            for k in 0..3 {
                h[k] = h[k].max(d[k] + self.halos[i][k]);
            }
        }
        h
    }
}

/// The group of local stages the executors fuse starting at stage `start` (of `n`): consecutive
/// stages for which `local` gives a halo (a local op, and one to compute), all with the first
/// one's shape (`same_shape`). Empty when `start` itself is not local. This one rule decides
/// fusion in memory, over slabs, and in `tessera plan`.
pub fn group_from(start: usize, n: usize, local: &dyn Fn(usize) -> Option<Zyx>, same_shape: &dyn Fn(usize, usize) -> bool) -> Group {
    let mut group = Group { stages: Vec::new(), halos: Vec::new() };
    let mut j = start;
    while j < n
        && same_shape(start, j)
        && let Some(h) = local(j)
    {
        group.stages.push(j);
        group.halos.push(h);
        j += 1;
    }
    group
}

/// Whether a stage can join a fused group: a local op whose output has its input's shape and
/// whose inputs and output are voxel data (not tables).
pub fn is_local(op: &dyn Op, ctx: &Ctx, meta: &Meta, input_metas: &[&Meta]) -> Option<Zyx> {
    let Halo::Local(h) = op.halo_for(ctx) else { return None };
    if meta.kind == Kind::Table || input_metas.is_empty() {
        return None;
    }
    if input_metas.iter().any(|m| m.kind == Kind::Table || m.shape != meta.shape) {
        return None;
    }
    // A 2D image has one plane: no context along z.
    Some(if ctx.ndim == 2 { [0, h[1], h[2]] } else { h })
}

/// Bytes per voxel of a value of this metadata.
pub fn bytes_per_voxel(m: &Meta) -> u64 {
    match m.kind {
        Kind::Mask => 1,
        Kind::Labels => 4,
        Kind::Table => 0,
        Kind::Image => m.dtype.map(|d| d.bytes_per_voxel()).unwrap_or(4),
    }
}

/// Where a group stage takes an input from.
#[derive(Debug, Clone, Copy)]
pub enum Feed {
    /// A value that exists at full size (a source, or a stage before the group).
    Full(usize),
    /// An earlier stage of the same group (its position in the group).
    Group(usize),
}

/// What evaluating a group needs from the caller.
pub struct GroupRun<'a> {
    pub group: &'a Group,
    pub ops: Vec<&'a dyn Op>,
    /// Per group stage: its inputs, in the op's order.
    pub inputs: Vec<Vec<Feed>>,
    /// Per group stage: its context (spacing after any downsample).
    pub ctxs: Vec<Ctx<'a>>,
    /// Per group stage: whether it is needed at full size after the group.
    pub keep: Vec<bool>,
    pub shape: Zyx,
    /// The tile cores (from [`super::tiles::plan_tiles`]).
    pub tiles: Vec<Region>,
    pub threads: usize,
}

/// Evaluates a group over tiles. `full` holds the values the group reads at full size (indexed as
/// in [`Feed::Full`]). Returns, per group stage, the full-size value when `keep` is set. An error
/// names the failing stage by its position in the group.
pub fn run_group(run: &GroupRun, full: &[&Value], reads: &dyn Fn(usize) -> Vec<usize>) -> Result<Vec<Option<Value>>, (usize, String)> {
    let down = run.group.downstream(reads);
    let tiles = &run.tiles;
    let n = run.group.stages.len();
    let mut out: Vec<Option<Value>> = vec![None; n];
    let batch = (2 * run.threads).max(1);
    for chunk in tiles.chunks(batch) {
        let results: Vec<TileResult> = chunk.par_iter().map(|core| run_tile(run, full, &down, *core)).collect();
        for (core, r) in chunk.iter().zip(results) {
            let cores = r?;
            for (i, v) in cores.into_iter().enumerate() {
                let Some(v) = v else { continue };
                let dst = out[i].get_or_insert_with(|| empty_like(&v, run.shape));
                paste(dst, &v, core);
            }
        }
    }
    Ok(out)
}

/// A tile's cores of the kept stages, or the failing stage's position in the group and why.
pub type TileResult = Result<Vec<Option<Value>>, (usize, String)>;

/// Evaluates a group on one tile core only, returning the kept stages over that core (nothing
/// is pasted into full-size values): a slab with its halo planes, streamed.
pub fn run_core(run: &GroupRun, full: &[&Value], reads: &dyn Fn(usize) -> Vec<usize>, core: Region) -> TileResult {
    let down = run.group.downstream(reads);
    run_tile(run, full, &down, core)
}

/// A fused group's last stage as a volume computed where it is read: each read of planes
/// `z0..z1` evaluates the group over them (from its inputs with the context its stages need).
/// It never exists whole: for a stage that reads its input by planes ([`Op::reads_planes`]).
pub struct GroupPlanes<'a> {
    pub run: &'a GroupRun<'a>,
    pub full: &'a [&'a Value],
    pub reads: &'a (dyn Fn(usize) -> Vec<usize> + Sync),
    pub meta: Meta,
    /// The group's stage names, for errors.
    pub names: Vec<String>,
}

impl crate::ops::slab::Volume for GroupPlanes<'_> {
    fn meta(&self) -> Meta {
        self.meta.clone()
    }
    fn read(&self, z0: usize, z1: usize) -> Result<Value, String> {
        let [_, ny, nx] = self.run.shape;
        let core = Region { start: [z0, 0, 0], end: [z1, ny, nx] };
        let mut cores = run_core(self.run, self.full, self.reads, core).map_err(|(p, e)| format!("stage `{}`: {e}", self.names[p]))?;
        cores.pop().flatten().ok_or_else(|| "internal: a group read by planes keeps its last stage".to_string())
    }
    /// A group of one stage that reads only full-size values: the op's bounded region.
    fn read_bounded(&self, z0: usize, z1: usize) -> Option<(Value, f64)> {
        let [_, ny, nx] = self.run.shape;
        let ([op], [inputs]) = (&self.run.ops[..], &self.run.inputs[..]) else { return None };
        op.run_region_bounded(&full_only(inputs, self.full)?, &self.run.ctxs[0], ([z0, 0, 0], [z1, ny, nx]))
    }
    fn bytes_per_voxel(&self) -> u64 {
        bytes_per_voxel(&self.meta)
    }
}

/// One tile: every group stage over its grown region; returns the cores of the kept stages.
fn run_tile(run: &GroupRun, full: &[&Value], down: &[Zyx], core: Region) -> TileResult {
    let n = run.group.stages.len();
    let mut local: Vec<Option<(Region, Value)>> = vec![None; n];
    let mut cores = vec![None; n];
    for i in 0..n {
        let h = run.group.halos[i];
        let region_in = core.grow([0, 1, 2].map(|k| down[i][k] + h[k]), run.shape);
        let region_out = core.grow(down[i], run.shape);
        // An op that computes a region of its inputs reads full-size inputs where they lie: no
        // copy of the region with its halo (equal, as `run_region` must equal the crop of `run`,
        // and `run` on the whole equals `run` on any region with its halo).
        let whole = Region::whole(run.shape);
        let direct = if region_in == whole { None } else { full_only(&run.inputs[i], full) }
            .and_then(|refs| run.ops[i].run_region(&refs, &run.ctxs[i], (region_out.start, region_out.end)));
        let v = match direct {
            Some(v) => v.map_err(|e| (i, e))?,
            None => run_cropped(run, full, &local, i, region_in, region_out)?,
        };
        // A kept value no later stage of the group reads is moved, not copied, when it is
        // already just the core.
        let read_later = run.inputs[i + 1..].iter().flatten().any(|f| matches!(f, Feed::Group(j) if *j == i));
        if run.keep[i] {
            if region_out == core && !read_later {
                cores[i] = Some(v);
                continue;
            }
            cores[i] = Some(if region_out == core { v.clone() } else { crop(&v, &region_out.local(&core)) });
        }
        if read_later {
            local[i] = Some((region_out, v));
        }
    }
    Ok(cores)
}

/// A stage's inputs when they are all full-size values (none from the group).
fn full_only<'v>(inputs: &[Feed], full: &[&'v Value]) -> Option<Vec<&'v Value>> {
    inputs.iter().map(|f| if let Feed::Full(j) = *f { Some(full[j]) } else { None }).collect()
}

/// Stage `i` of a tile over `region_out`, from its inputs cropped to `region_in` (the region with
/// the stage's halo; inputs that already span it are used as they are).
fn run_cropped(
    run: &GroupRun,
    full: &[&Value],
    local: &[Option<(Region, Value)>],
    i: usize,
    region_in: Region,
    region_out: Region,
) -> Result<Value, (usize, String)> {
    let whole = Region::whole(run.shape);
    let ins: Vec<std::borrow::Cow<Value>> = run.inputs[i]
        .iter()
        .map(|f| match *f {
            Feed::Full(j) if region_in == whole => std::borrow::Cow::Borrowed(full[j]),
            Feed::Full(j) => std::borrow::Cow::Owned(crop(full[j], &region_in)),
            Feed::Group(j) => {
                let (r, v) = local[j].as_ref().expect("group stages computed in order");
                if *r == region_in { std::borrow::Cow::Borrowed(v) } else { std::borrow::Cow::Owned(crop(v, &r.local(&region_in))) }
            }
        })
        .collect();
    let refs: Vec<&Value> = ins.iter().map(|c| c.as_ref()).collect();
    let want = region_in.local(&region_out);
    Ok(if region_in == region_out {
        run.ops[i].run(&refs, &run.ctxs[i]).map_err(|e| (i, e))?
    } else {
        match run.ops[i].run_region(&refs, &run.ctxs[i], (want.start, want.end)) {
            Some(v) => v.map_err(|e| (i, e))?,
            None => crop(&run.ops[i].run(&refs, &run.ctxs[i]).map_err(|e| (i, e))?, &want),
        }
    })
}

fn view3<'a, T>(a: &'a Array3<T>, r: &Region) -> ArrayView3<'a, T> {
    a.slice(s![r.start[0]..r.end[0], r.start[1]..r.end[1], r.start[2]..r.end[2]])
}

fn crop4<T: Clone>(a: &Array4<T>, r: &Region) -> Array4<T> {
    a.slice(s![r.start[0]..r.end[0], r.start[1]..r.end[1], r.start[2]..r.end[2], ..]).to_owned()
}

/// The voxels of `v` inside `r` (coordinates of `v`), as a new value. Tables are returned as is.
pub fn crop(v: &Value, r: &Region) -> Value {
    match v {
        Value::Mask(a) => Value::Mask(view3(a, r).to_owned()),
        Value::Labels(crate::ops::Labels::U16(a)) => Value::Labels(view3(a, r).to_owned().into()),
        Value::Labels(crate::ops::Labels::U32(a)) => Value::Labels(view3(a, r).to_owned().into()),
        Value::Image(d) => Value::Image(match d {
            Data::U8(a) => Data::U8(view3(a, r).to_owned()),
            Data::U16(a) => Data::U16(view3(a, r).to_owned()),
            Data::U32(a) => Data::U32(view3(a, r).to_owned()),
            Data::F32(a) => Data::F32(view3(a, r).to_owned()),
            Data::Rgb8(a) => Data::Rgb8(crop4(a, r)),
            Data::Rgb16(a) => Data::Rgb16(crop4(a, r)),
        }),
        Value::Table(t) => Value::Table(t.clone()),
    }
}

/// A zeroed value of `v`'s type over a whole image of `shape`.
fn empty_like(v: &Value, shape: Zyx) -> Value {
    let d3 = (shape[0], shape[1], shape[2]);
    let d4 = |channels: usize| (shape[0], shape[1], shape[2], channels);
    match v {
        Value::Mask(_) => Value::Mask(crate::util::zeros3(d3)),
        // Tiles of labels are put together as u32, whatever each tile's type.
        Value::Labels(_) => Value::Labels(crate::util::zeros3::<u32>(d3).into()),
        Value::Image(d) => Value::Image(match d {
            Data::U8(_) => Data::U8(crate::util::zeros3(d3)),
            Data::U16(_) => Data::U16(crate::util::zeros3(d3)),
            Data::U32(_) => Data::U32(crate::util::zeros3(d3)),
            Data::F32(_) => Data::F32(crate::util::zeros3(d3)),
            Data::Rgb8(a) => Data::Rgb8(Array4::zeros(d4(a.shape()[3]))),
            Data::Rgb16(a) => Data::Rgb16(Array4::zeros(d4(a.shape()[3]))),
        }),
        Value::Table(t) => Value::Table(t.clone()),
    }
}

/// Copies `src` (the size of `at`) into `dst` at `at`.
fn paste(dst: &mut Value, src: &Value, at: &Region) {
    let r = at;
    // In parallel (tiles are disjoint; each voxel is written once, so the order is immaterial).
    macro_rules! p3 {
        ($d:expr, $s:expr) => {
            ndarray::Zip::from($d.slice_mut(s![r.start[0]..r.end[0], r.start[1]..r.end[1], r.start[2]..r.end[2]]))
                .and($s)
                .par_for_each(|d, &s| *d = s)
        };
    }
    macro_rules! p4 {
        ($d:expr, $s:expr) => {
            $d.slice_mut(s![r.start[0]..r.end[0], r.start[1]..r.end[1], r.start[2]..r.end[2], ..]).assign($s)
        };
    }
    match (dst, src) {
        (Value::Mask(d), Value::Mask(s)) => p3!(d, s),
        (Value::Labels(Labels::U32(d)), Value::Labels(Labels::U32(s))) => p3!(d, s),
        (Value::Labels(Labels::U32(d)), Value::Labels(Labels::U16(s))) => {
            let s = s.mapv(u32::from);
            p3!(d, &s)
        }
        (Value::Image(d), Value::Image(s)) => match (d, s) {
            (Data::U8(d), Data::U8(s)) => p3!(d, s),
            (Data::U16(d), Data::U16(s)) => p3!(d, s),
            (Data::U32(d), Data::U32(s)) => p3!(d, s),
            (Data::F32(d), Data::F32(s)) => p3!(d, s),
            (Data::Rgb8(d), Data::Rgb8(s)) => p4!(d, s),
            (Data::Rgb16(d), Data::Rgb16(s)) => p4!(d, s),
            _ => unreachable!("a stage's tiles all have one type"),
        },
        _ => unreachable!("a stage's tiles all have one kind"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downstream_halos_sum_along_paths() {
        // a → b → c, and a → c directly: a needs b's and c's halos, b needs c's.
        let g = Group { stages: vec![10, 11, 12], halos: vec![[1, 1, 1], [2, 0, 0], [0, 3, 0]] };
        let reads = |s: usize| match s {
            11 => vec![10],
            12 => vec![11, 10],
            _ => vec![],
        };
        let d = g.downstream(&reads);
        assert_eq!(d, vec![[2, 3, 0], [0, 3, 0], [0, 0, 0]]);
        assert_eq!(g.total_halo(&d), [3, 4, 1]);
    }

    #[test]
    fn groups_are_consecutive_local_stages_of_one_shape() {
        // 0, 1 local (shape A); 2 local but shape B; 3 global; 4, 5 local.
        let local = |k: usize| if k == 3 { None } else { Some([k, 0, 0]) };
        let shape = |k: usize| if k == 2 { 1 } else { 0 };
        let same = |a: usize, b: usize| shape(a) == shape(b);
        assert_eq!(group_from(0, 6, &local, &same).stages, vec![0, 1]);
        assert_eq!(group_from(2, 6, &local, &same).stages, vec![2]);
        assert!(group_from(3, 6, &local, &same).stages.is_empty());
        let g = group_from(4, 6, &local, &same);
        assert_eq!((g.stages, g.halos), (vec![4, 5], vec![[4, 0, 0], [5, 0, 0]]));
    }

    #[test]
    fn crop_and_paste_round_trip() {
        let a = Array3::from_shape_fn((3, 4, 5), |(z, y, x)| (z * 100 + y * 10 + x) as u32);
        let v = Value::Labels((a.clone()).into());
        let mut dst = empty_like(&v, [3, 4, 5]);
        for core in super::super::tiles::grid([3, 4, 5], [2, 3, 2]) {
            paste(&mut dst, &crop(&v, &core), &core);
        }
        assert_eq!(dst, v);
    }
}
