//! Exact Euclidean distance transform with anisotropic spacing, as
//! `scipy.ndimage.distance_transform_edt(mask, sampling=spacing)`: separable lower envelopes of
//! parabolas (Felzenszwalb & Huttenlocher) along x, then y, then z, in float64.

use ndarray::{Array3, Axis, s};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::LabelInt;
use super::slab::{self, Slabs};
use super::{Ctx, Halo, Input, Kind, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, fields_of};
use crate::io::{DType, Data};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Distance {
    pub input: String,
    #[serde(default)]
    pub invert: bool,
}

pub static DISTANCE: OpInfo = OpInfo {
    name: "distance",
    family: "distance",
    version: 1,
    output: Kind::Image,
    same_kind: false,
    summary: "Mask or labels → f32 image: Euclidean distance of each foreground voxel to the nearest background voxel.",
    doc: "Distances are physical (the sample's spacing), exact, and equal \
          scipy.ndimage.distance_transform_edt(mask, sampling=spacing) to float32 rounding. \
          Labels count as a mask of their objects (nonzero = foreground). Background voxels are 0. \
          With `invert: true` the roles swap: every background voxel gets \
          its distance to the nearest foreground voxel (a distance map *to* a structure, e.g. \
          canals, to measure other objects with). Only voxels inside the image count; a mask with \
          no background (no foreground with `invert`) has no distances and is +inf everywhere \
          (scipy instead measures to a point outside the image corner).",
    params: &[
        ParamDoc { name: "input", ty: "stage (mask)", default: None, doc: "The mask." },
        ParamDoc {
            name: "invert",
            ty: "bool",
            default: Some("false"),
            doc: "Measure background voxels' distance to the foreground instead.",
        },
    ],
    build: build::<Distance>,
    fields: fields_of::<Distance>,
    examples: &["input: {mask}", "input: {labels}, invert: true"],
};

impl Op for Distance {
    fn info(&self) -> &'static OpInfo {
        &DISTANCE
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Mask, Kind::Labels] }]
    }
    fn halo(&self) -> Halo {
        Halo::Global
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        let m = &inputs[0];
        if m.kind != Kind::Mask && m.kind != Kind::Labels {
            return Err(ParamIssue::new("input", format!("`distance` needs a mask or labels but its input is {}", m.kind.with_article()))
                .help("threshold the image first"));
        }
        Ok(Meta { kind: Kind::Image, dtype: Some(DType::F32), ..m.clone() })
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let owned;
        let m = match inputs[0] {
            Value::Mask(m) => m,
            Value::Labels(l) => {
                owned = crate::with_labels!(l, a => a.mapv(|v| (v.to_u32() != 0) as u8));
                &owned
            }
            _ => return Err("distance: input is not a mask or labels".into()),
        };
        Ok(Value::Image(Data::F32(edt(m, ctx.spacing, ctx.ndim, self.invert))))
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn streams(&self, inputs: &[Meta]) -> Result<(), String> {
        match inputs[0].ndim {
            3 => Ok(()),
            _ => Err("2D images are not streamed".into()),
        }
    }
    /// Planes through x and y a slab at a time, set aside by blocks of rows; each block along z
    /// whole; the result gathered back into slabs ([`edt_streamed`]) as each voxel's nearest
    /// site ([`NearestSites`]).
    fn stream(&self, io: &mut dyn Slabs, ctx: &Ctx) -> Result<slab::Outcome, String> {
        edt_streamed(io, ctx.spacing, self.invert)?;
        Ok(slab::Outcome::Emitted)
    }
    fn stored(&self, ctx: &Ctx) -> Option<std::sync::Arc<dyn slab::Stored>> {
        Some(std::sync::Arc::new(NearestSites { spacing: ctx.spacing }))
    }
    fn phased(&self) -> Option<&dyn slab::Phased> {
        Some(self)
    }
}

/// Split over machines, the passes of [`edt_streamed`] spread out: each block's planes through
/// x and y (its partial), set aside by pieces of rows; a crossing task per piece takes every
/// plane of its rows along z; each block gathers its planes back from the pieces, as nearest
/// sites ([`NearestSites`]). The same choices as in memory, so the same bits.
impl slab::Phased for Distance {
    fn crosses(&self) -> bool {
        true
    }
    fn partial(&self, io: &mut dyn slab::BlockIo, _round: usize, _before: Option<&[u8]>, ctx: &Ctx) -> Result<Vec<u8>, String> {
        let (_, z0, z1) = io.block();
        check_plane(io.input(0).shape())?;
        // What a crossing task holds: the sites read, the nearest sites (two words) written.
        let runs = io.runs(io.input(0).shape()[2], 4 + 8);
        let mut keep = Vec::new();
        for k in 0..runs.len() {
            keep.push(io.keep_run(k)?);
        }
        for (a, b) in slab::ranges(z1 - z0, io.planes(4)) {
            let sites = slab_sites(io.input(0).read(z0 + a, z0 + b)?, ctx.spacing, self.invert)?;
            for (k, &(y0, y1)) in keep.iter_mut().zip(&runs) {
                k.append(&Value::Labels(sites.slice(s![.., y0..y1, ..]).to_owned().into()))?;
            }
        }
        Ok(Vec::new())
    }
    fn cross(&self, io: &mut dyn slab::CrossIo, ctx: &Ctx) -> Result<(), String> {
        for (y0, y1) in slab::piece_runs(io) {
            let out = z_pass(slab::piece_rows(io, y0, y1)?, y0, ctx.spacing);
            slab::cross_out(io, &out)?;
        }
        Ok(())
    }
    fn apply(&self, io: &mut dyn slab::BlockIo, _reduced: &[u8], _ctx: &Ctx) -> Result<(), String> {
        slab::emit_crossed(io, 8)
    }
}

/// The lower envelope of the parabolas y = f[q] + w2·(x − q)² over the finite f[q]
/// (Felzenszwalb & Huttenlocher), with where each of its parabolas becomes the lowest kept as a
/// fraction, so that neither building nor reading it divides (a division's latency was most of
/// the time of a pass).
#[derive(Default)]
pub(crate) struct Envelope {
    segs: Vec<Seg>,
}

/// One parabola of an [`Envelope`].
#[derive(Clone, Copy)]
struct Seg {
    /// Its site.
    q: usize,
    /// Where it becomes the lowest, `num / den` (`den` ≥ 0; the first at −∞, −1/0).
    num: f64,
    den: f64,
    /// f[q] + w2·q².
    a: f64,
}

impl Envelope {
    /// Builds it for `f`. A parabola whose region is empty by no more than `slack` (in index
    /// units) is kept — at 0, one that only touches the envelope at a point — so callers can
    /// break ties there (Voronoi, whose slack also covers the rounding of the breakpoints);
    /// distances are the same either way.
    pub fn build(&mut self, f: &[f64], w2: f64, slack: f64) {
        let segs = &mut self.segs;
        segs.clear();
        for (q, &fq) in f.iter().enumerate() {
            if fq.is_infinite() {
                continue;
            }
            let a = fq + w2 * (q * q) as f64;
            let mut seg = Seg { q, num: -1.0, den: 0.0, a };
            while let Some(last) = segs.last() {
                // Where the parabolas from the last site and q meet, n / d (index units),
                // against where the last one's region starts: both denominators are ≥ 0.
                let (n, d) = (a - last.a, 2.0 * w2 * (q - last.q) as f64);
                if n * last.den < (last.num - slack * last.den) * d {
                    segs.pop();
                } else {
                    (seg.num, seg.den) = (n, d);
                    break;
                }
            }
            segs.push(seg);
        }
    }
    /// The number of parabolas on it.
    #[inline]
    pub fn len(&self) -> usize {
        self.segs.len()
    }
    /// The site of its `k`th parabola.
    #[inline]
    pub fn site(&self, k: usize) -> usize {
        self.segs[k].q
    }
    /// Whether the `k`th parabola's region starts before `x`.
    #[inline]
    pub fn starts_before(&self, k: usize, x: f64) -> bool {
        let s = &self.segs[k];
        s.num < x * s.den
    }
    /// Whether the `k`th parabola's region starts at or before `x`.
    #[inline]
    pub fn starts_by(&self, k: usize, x: f64) -> bool {
        let s = &self.segs[k];
        s.num <= x * s.den
    }
}

/// Which parabola gives each position of a line its value (see [`line_sq`]): `pick[i]` is the
/// q with the least ((i−q)·w)² + f[q] on the lower envelope, [`NONE`] on a line without a
/// site.
fn line_arg(f: &[f64], w: f64, env: &mut Envelope, pick: &mut [u32]) {
    // A line of sites only (0 everywhere): each position is its own site.
    if f.iter().all(|&x| x == 0.0) {
        for (i, p) in pick.iter_mut().enumerate() {
            *p = i as u32;
        }
        return;
    }
    env.build(f, w * w, 0.0);
    if env.len() == 0 {
        pick.fill(NONE);
        return;
    }
    let (mut k, last) = (0, env.len() - 1);
    for (i, p) in pick.iter_mut().enumerate() {
        while k < last && env.starts_before(k + 1, i as f64) {
            k += 1;
        }
        *p = env.site(k) as u32;
    }
}

/// Squared distance transform of one line in place: `f[i]` becomes min_q ((i−q)·w)² + f[q].
fn line_sq(f: &mut [f64], w: f64, env: &mut Envelope, pick: &mut Vec<u32>, out: &mut Vec<f64>) {
    pick.resize(f.len(), NONE);
    line_arg(f, w, env, pick);
    if pick.first() == Some(&NONE) {
        return; // no finite site: the line stays infinite
    }
    out.clear();
    out.extend(pick.iter().enumerate().map(|(i, &q)| {
        let d = (i as f64 - q as f64) * w;
        d * d + f[q as usize]
    }));
    f.copy_from_slice(out);
}

/// Euclidean distance (physical units) of each foreground voxel to the nearest background
/// voxel (`invert`: of background to foreground), as float32.
pub fn edt(mask: &Array3<u8>, spacing: [f64; 3], ndim: u8, invert: bool) -> Array3<f32> {
    let mut d = plane_passes(mask, spacing, invert);
    if ndim != 2 {
        axis_pass(&mut d, 0, spacing[0]);
    }
    d.par_mapv_inplace(f32::sqrt);
    d
}

/// The passes within planes: squared distances along x, then y, of every plane of `mask` (a
/// whole image or any z-slab of it: planes do not see each other yet).
fn plane_passes(mask: &Array3<u8>, spacing: [f64; 3], invert: bool) -> Array3<f32> {
    // Squared distances are stored as float32 between passes (half the memory traffic) and
    // every line is transformed in float64; the relative error stays below 1e-7.
    let (nz, ny, nx) = mask.dim();
    let mut d: Array3<f32> = crate::util::zeros3((nz, ny, nx));
    if nx > 0 {
        let w = spacing[2];
        let m = mask.as_standard_layout();
        let m = m.as_slice().expect("standard layout");
        d.as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(nx)
            .zip(m.par_chunks(nx))
            .for_each_init(Vec::new, |near, (row, mrow)| x_row(mrow, row, w, invert, near));
    }
    axis_pass(&mut d, 1, spacing[1]);
    d
}

/// No site: in a row, plane or line without one (and in stored nearest sites).
pub(crate) const NONE: u32 = u32::MAX;

/// A site's row and column in its plane (`y << 16 | x`).
pub(crate) fn yx(s: u32) -> (usize, usize) {
    ((s >> 16) as usize, (s & 0xffff) as usize)
}

/// For each position `i` of a row of `n`, the position of the nearest site (`is_site`), by two
/// scans; at equal distance the left one, unless `right_wins(left, right)`. [`NONE`]
/// throughout a row without a site. The pass along x of `distance` (in memory and streamed)
/// and of `voronoi` (which breaks ties by label).
pub(crate) fn nearest_in_row(n: usize, is_site: impl Fn(usize) -> bool, right_wins: impl Fn(u32, u32) -> bool, out: &mut [u32]) {
    let mut last = NONE;
    for (i, o) in out.iter_mut().enumerate().take(n) {
        if is_site(i) {
            last = i as u32;
        }
        *o = last;
    }
    if last == NONE {
        return;
    }
    let mut next = NONE;
    for i in (0..n).rev() {
        if is_site(i) {
            next = i as u32;
        }
        let (left, at) = (out[i], i as u32);
        if next != NONE && (left == NONE || next - at < at - left || (next - at == at - left && right_wins(left, next))) {
            out[i] = next;
        }
    }
}

/// The pass along x of one row, straight from the mask: every site (a voxel the distance is
/// measured to) is at 0, so the lower envelope of the parabolas is the nearest site on either
/// side ([`nearest_in_row`]) and the value ((i − q)·w)², computed as [`line_sq`] computes it
/// (the same float64 product of the same integer and `w`, squared; + 0.0 changes nothing), so
/// the result is the same bits. Rows without a site stay +inf.
fn x_row(mrow: &[u8], row: &mut [f32], w: f64, invert: bool, near: &mut Vec<u32>) {
    near.resize(mrow.len(), NONE);
    nearest_in_row(mrow.len(), |i| (mrow[i] != 0) == invert, |_, _| false, near);
    for (i, (v, &q)) in row.iter_mut().zip(near.iter()).enumerate() {
        *v = if q == NONE { f32::INFINITY } else { fx(i.abs_diff(q as usize), w) };
    }
}

/// Columns a pass across rows gathers at once: one cache line of float32 per row, each read
/// once (rows a power of two apart share cache sets, so a wider gather would read them again).
const COLS: usize = 16;

/// Squared distances along `axis` (1: y, 0: z) of every line of `d`: each column gathered into a
/// buffer, transformed, scattered back; one plane (y) or one row of planes (z) per task.
fn axis_pass(d: &mut Array3<f32>, axis: usize, w: f64) {
    let n = d.len_of(Axis(axis));
    let nx = d.dim().2;
    if n == 0 {
        return;
    }
    let other = if axis == 1 { 0 } else { 1 };
    d.axis_iter_mut(Axis(other)).into_par_iter().for_each_init(
        || (Vec::new(), Envelope::default(), Vec::new(), Vec::new()),
        |(cols, env, pick, out), mut plane| {
            // `plane` is (n × nx), x contiguous: COLS columns at a time (one cache line of each
            // row) gathered into contiguous lines, transformed, scattered back.
            cols.resize(n * COLS, 0f64);
            for x0 in (0..nx).step_by(COLS) {
                let c = COLS.min(nx - x0);
                for (k, row) in plane.rows().into_iter().enumerate() {
                    let row = &row.as_slice().expect("rows are contiguous")[x0..x0 + c];
                    for (j, &val) in row.iter().enumerate() {
                        cols[j * n + k] = val as f64;
                    }
                }
                for line in cols.chunks_mut(n).take(c) {
                    line_sq(line, w, env, pick, out);
                }
                for (k, mut row) in plane.rows_mut().into_iter().enumerate() {
                    let row = &mut row.as_slice_mut().expect("rows are contiguous")[x0..x0 + c];
                    for (j, val) in row.iter_mut().enumerate() {
                        *val = cols[j * n + k] as f32;
                    }
                }
            }
        },
    );
}

/// What the in-memory passes store (float32) for a nearest site `dx` columns away; then `dy`
/// rows and `dx` columns away; then the distance to one also `dz` planes away — the same float
/// operations in the same order as [`x_row`], [`line_sq`] and the square root, so a voxel's
/// value follows from its nearest site, bit for bit.
fn fx(dx: usize, wx: f64) -> f32 {
    let d = dx as f64 * wx;
    (d * d) as f32
}

fn fxy(dy: usize, dx: usize, [_, wy, wx]: [f64; 3]) -> f32 {
    let d = dy as f64 * wy;
    (d * d + fx(dx, wx) as f64) as f32
}

fn fxyz(dz: usize, dy: usize, dx: usize, w: [f64; 3]) -> f32 {
    let d = dz as f64 * w[0];
    ((d * d + fxy(dy, dx, w) as f64) as f32).sqrt()
}

/// Buffers one thread reuses (streamed passes).
#[derive(Default)]
struct Lines {
    f: Vec<f64>,
    keep: Vec<u32>,
    pick: Vec<u32>,
    env: Envelope,
}

/// The nearest site within one plane of the mask (`mp`, `ny × nx`) for each voxel, as
/// `y << 16 | x` ([`NONE`] in a plane without one): along x by two scans, then along y over
/// chunks of columns by [`line_arg`] — the choices [`x_row`] and the y pass make in memory.
fn plane_sites(mp: &[u8], sp: &mut [u32], nx: usize, invert: bool, w: [f64; 3], sc: &mut Lines) {
    if nx == 0 {
        return;
    }
    let ny = mp.len() / nx;
    for (mr, sr) in mp.chunks(nx).zip(sp.chunks_mut(nx)) {
        nearest_in_row(nx, |i| (mr[i] != 0) == invert, |_, _| false, sr);
    }
    for x0 in (0..nx).step_by(COLS) {
        let c = COLS.min(nx - x0);
        sc.f.resize(c * ny, 0.0);
        sc.keep.resize(c * ny, NONE);
        sc.pick.resize(c * ny, NONE);
        for (y, sr) in sp.chunks(nx).enumerate() {
            for (j, &q) in sr[x0..x0 + c].iter().enumerate() {
                sc.f[j * ny + y] = if q == NONE { f64::INFINITY } else { fx((x0 + j).abs_diff(q as usize), w[2]) as f64 };
                sc.keep[j * ny + y] = q;
            }
        }
        for (f, p) in sc.f.chunks(ny).zip(sc.pick.chunks_mut(ny)).take(c) {
            line_arg(f, w[1], &mut sc.env, p);
        }
        for (y, sr) in sp.chunks_mut(nx).enumerate() {
            for (j, s) in sr[x0..x0 + c].iter_mut().enumerate() {
                let p = sc.pick[j * ny + y];
                *s = if p == NONE { NONE } else { p << 16 | sc.keep[j * ny + p as usize] };
            }
        }
    }
}

/// The pass along z of one row of a block (`sites`: planes × nx, as [`plane_sites`] gives
/// them) into `out` (planes × 2nx): each voxel's nearest site as two words, its plane and its
/// position there (`NONE, NONE` for none).
fn z_row(sites: ndarray::ArrayView2<u32>, mut out: ndarray::ArrayViewMut2<u32>, y: usize, w: [f64; 3], sc: &mut Lines) {
    let (n, nx) = sites.dim();
    for x0 in (0..nx).step_by(COLS) {
        let c = COLS.min(nx - x0);
        sc.f.resize(c * n, 0.0);
        sc.pick.resize(c * n, NONE);
        for (k, row) in sites.rows().into_iter().enumerate() {
            for (j, &s) in row.iter().skip(x0).take(c).enumerate() {
                let (qy, qx) = yx(s);
                sc.f[j * n + k] = if s == NONE { f64::INFINITY } else { fxy(y.abs_diff(qy), (x0 + j).abs_diff(qx), w) as f64 };
            }
        }
        for (f, p) in sc.f.chunks(n).zip(sc.pick.chunks_mut(n)).take(c) {
            line_arg(f, w[0], &mut sc.env, p);
        }
        for (k, mut o) in out.rows_mut().into_iter().enumerate() {
            let o = o.as_slice_mut().expect("rows of words are contiguous");
            for j in 0..c {
                let p = sc.pick[j * n + k];
                let s = if p == NONE { NONE } else { sites[[p as usize, x0 + j]] };
                (o[2 * (x0 + j)], o[2 * (x0 + j) + 1]) = (p, s);
            }
        }
    }
}

/// How streamed distances are kept: each voxel's nearest site (plane, `y << 16 | x`), two
/// words — constant over each site's region, so it compresses tens of times where the float32
/// distances hardly compress at all — decoded into the distances where they are read.
pub struct NearestSites {
    pub spacing: [f64; 3],
}

impl slab::Stored for NearestSites {
    fn name(&self) -> &'static str {
        "distance-nearest-sites-1"
    }
    fn shape(&self, [z, y, x]: [usize; 3]) -> [usize; 3] {
        [z, y, 2 * x]
    }
    fn decode(&self, stored: Value, z0: usize) -> Result<Value, String> {
        let Value::Labels(words) = stored else { return Err("distance: stored nearest sites are not words".into()) };
        let words = words.into_u32();
        let words = words.as_standard_layout();
        let (nz, ny, nx2) = words.dim();
        let nx = nx2 / 2;
        let mut d: Array3<f32> = crate::util::zeros3((nz, ny, nx));
        let w = self.spacing;
        d.axis_iter_mut(Axis(0)).into_par_iter().zip(words.axis_iter(Axis(0))).enumerate().for_each(|(k, (mut dp, wp))| {
            let z = z0 + k;
            for (y, (mut dr, wr)) in dp.rows_mut().into_iter().zip(wp.rows()).enumerate() {
                let wr = wr.to_slice().ok_or(()).expect("stored rows are contiguous");
                for (x, (v, p)) in dr.iter_mut().zip(wr.chunks_exact(2)).enumerate() {
                    *v = if p[0] == NONE {
                        f32::INFINITY
                    } else {
                        let (qy, qx) = yx(p[1]);
                        fxyz(z.abs_diff(p[0] as usize), y.abs_diff(qy), x.abs_diff(qx), w)
                    };
                }
            }
        });
        Ok(Value::Image(Data::F32(d)))
    }
}

/// [`edt`] out of core, emitting [`NearestSites`]: (1) each z-slab's planes through the passes
/// within planes, as each voxel's nearest site in its plane, set aside in blocks of rows (one
/// scratch volume per block, all planes of those rows); (2) each block whole along z, set aside
/// again as each voxel's nearest site; (3) gathered back into z-slabs and emitted. The choices
/// are those of the in-memory passes, so the decoded values are the same bits.
fn edt_streamed(io: &mut dyn Slabs, spacing: [f64; 3], invert: bool) -> Result<(), String> {
    let [nz, ny, nx] = io.input(0).shape();
    check_plane([nz, ny, nx])?;
    // A block of all planes: its sites, the two words out, and the lines of the z pass.
    let blocks = slab::row_blocks(io, 4 + 8);
    let mut xy: Vec<Box<dyn slab::Scratch>> = Vec::new();
    for b in 0..blocks.len() {
        xy.push(io.scratch(&format!("xy{b}"))?);
    }
    // Beside the mask: the sites.
    let planes = io.planes(4);
    for (z0, z1) in slab::ranges(nz, planes) {
        let sites = slab_sites(io.input(0).read(z0, z1)?, spacing, invert)?;
        for (b, &(y0, y1)) in blocks.iter().enumerate() {
            xy[b].append(&Value::Labels(sites.slice(s![.., y0..y1, ..]).to_owned().into()))?;
        }
    }
    let emit = io.planes(8);
    let mut done: Vec<Box<dyn slab::Scratch>> = Vec::new();
    for (b, block) in xy.into_iter().enumerate() {
        let Value::Labels(sites) = block.read(0, nz)? else { return Err("distance: scratch block".into()) };
        let sites = sites.into_u32();
        drop(block);
        let out = z_pass(sites, blocks[b].0, spacing);
        done.push(slab::keep_block(io, &format!("z{b}"), nz, emit, |z0, z1| {
            Value::Labels(out.slice(s![z0..z1, .., ..]).to_owned().into())
        })?);
    }
    slab::emit_blocks(io, &blocks, &done, emit)
}

/// Planes of at most 65535 voxels on a side (sites keep `y << 16 | x`).
fn check_plane([_, ny, nx]: [usize; 3]) -> Result<(), String> {
    if ny >= 0xffff || nx >= 0xffff {
        return Err(format!("distance: planes of {ny}×{nx} voxels are more than it streams (fewer than 65535 on each side)"));
    }
    Ok(())
}

/// Each voxel's nearest site within its plane ([`plane_sites`]), for a slab of the input.
fn slab_sites(v: Value, spacing: [f64; 3], invert: bool) -> Result<Array3<u32>, String> {
    let m = match v {
        Value::Mask(m) => m,
        Value::Labels(l) => crate::with_labels!(&l, a => a.mapv(|v| (v.to_u32() != 0) as u8)),
        _ => return Err("distance: input is not a mask or labels".into()),
    };
    let m = m.as_standard_layout();
    let (_, ny, nx) = m.dim();
    let mut sites: Array3<u32> = crate::util::zeros3(m.dim());
    if ny * nx > 0 {
        sites
            .as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(ny * nx)
            .zip(m.as_slice().expect("standard layout").par_chunks(ny * nx))
            .for_each_init(Lines::default, |sc, (sp, mp)| plane_sites(mp, sp, nx, invert, spacing, sc));
    }
    Ok(sites)
}

/// The pass along z of every plane of some rows (`sites`, the first row being row `y0`): each
/// voxel's nearest site as two words ([`z_row`]).
fn z_pass(sites: Array3<u32>, y0: usize, spacing: [f64; 3]) -> Array3<u32> {
    let (nz, rows, nx) = sites.dim();
    let mut out: Array3<u32> = crate::util::zeros3((nz, rows, 2 * nx));
    out.axis_iter_mut(Axis(1))
        .into_par_iter()
        .zip(sites.axis_iter(Axis(1)))
        .enumerate()
        .for_each_init(Lines::default, |sc, (r, (o, sr))| z_row(sr, o, y0 + r, spacing, sc));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(mask: &Array3<u8>, s: [f64; 3]) -> Array3<f64> {
        let bg: Vec<(usize, usize, usize)> = mask.indexed_iter().filter(|(_, v)| **v == 0).map(|(i, _)| i).collect();
        Array3::from_shape_fn(mask.dim(), |(z, y, x)| {
            if mask[[z, y, x]] == 0 {
                return 0.0;
            }
            bg.iter()
                .map(|&(a, b, c)| {
                    let (dz, dy, dx) = ((z as f64 - a as f64) * s[0], (y as f64 - b as f64) * s[1], (x as f64 - c as f64) * s[2]);
                    (dz * dz + dy * dy + dx * dx).sqrt()
                })
                .fold(f64::INFINITY, f64::min)
        })
    }

    #[test]
    fn matches_brute_force_anisotropic() {
        let mut seed = 12345u64;
        let mask = Array3::from_shape_fn((5, 7, 9), |_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            !(seed >> 33).is_multiple_of(5) as u8
        });
        let s = [2.0, 0.7, 0.3];
        let got = edt(&mask, s, 3, false);
        let want = brute(&mask, s);
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((*g as f64 - w).abs() <= 1e-6 * w.max(1.0), "{g} vs {w}");
        }
    }

    #[test]
    fn two_d_ignores_z_and_no_background_is_infinite() {
        let mask = Array3::from_shape_vec((1, 1, 4), vec![1u8, 1, 0, 1]).unwrap();
        let d = edt(&mask, [9.0, 1.0, 0.5], 2, false);
        assert_eq!(d.iter().copied().collect::<Vec<_>>(), vec![1.0, 0.5, 0.0, 0.5]);
        let inv = edt(&mask, [9.0, 1.0, 0.5], 2, true);
        assert_eq!(inv.iter().copied().collect::<Vec<_>>(), vec![0.0, 0.0, 0.5, 0.0]);
        assert!(edt(&Array3::from_elem((2, 2, 2), 1), [1.0; 3], 3, false).iter().all(|v| v.is_infinite()));
    }
}
