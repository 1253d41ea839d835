//! Voronoi territories: every voxel of a mask takes the label of the nearest object voxel
//! (Euclidean, physical spacing; ties → the lower label).
//!
//! Exact: squared distances are compared as integers ([`Metric`]: in units of 2⁻³² of the finest
//! axis's squared spacing, so for isotropic spacing exactly the squared voxel distance), and
//! the nearest (squared distance, label) pair, compared lexicographically, decomposes over axes:
//! three 1D passes of a lower envelope of parabolas (as in the distance transform; built in
//! float64, then every parabola near a breakpoint weighed exactly) give the brute-force answer.

use ndarray::{Array3, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, ShapeBuilder, s};
use serde::{Deserialize, Serialize};

use super::distance::{NONE, nearest_in_row, yx};
use super::slab::{self, Slabs};
use super::{Ctx, Halo, Input, Kind, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, fields_of};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Voronoi {
    pub labels: String,
    pub mask: String,
}

pub static VORONOI: OpInfo = OpInfo {
    name: "voronoi",
    family: "distance",
    // 2: ties compared exactly (2026-11-26).
    version: 2,
    output: Kind::Labels,
    same_kind: false,
    summary: "Labels + mask → labels: each mask voxel takes the label of the nearest object (its territory).",
    doc: "For every voxel of `mask`, the label of the nearest voxel of any object in `labels`, by \
          straight-line Euclidean distance in physical units (the spacing); ties go to the lower \
          label. Distances are compared exactly, as integers (for isotropic spacing the squared \
          distance in voxels; otherwise the axes' squared spacing ratios rounded to 2^-32), so \
          equal distances are ties whatever the voxel size. Voxels outside the mask are 0, so measuring the result gives each object's \
          territory inside the mask (e.g. the bone volume served by each lacuna). A sample with no \
          objects gives an all-zero image.",
    params: &[
        ParamDoc { name: "labels", ty: "stage (labels)", default: None, doc: "The objects that claim territory." },
        ParamDoc { name: "mask", ty: "stage (mask)", default: None, doc: "Where territories are drawn." },
    ],
    build: build::<Voronoi>,
    fields: fields_of::<Voronoi>,
    examples: &["labels: {labels}, mask: {mask}"],
};

impl Op for Voronoi {
    fn info(&self) -> &'static OpInfo {
        &VORONOI
    }
    fn inputs(&self) -> Vec<Input> {
        vec![
            Input { role: "labels", stage: self.labels.clone(), accepts: &[Kind::Labels] },
            Input { role: "mask", stage: self.mask.clone(), accepts: &[Kind::Mask] },
        ]
    }
    fn halo(&self) -> Halo {
        Halo::Global
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        if inputs[0].kind != Kind::Labels {
            return Err(ParamIssue::new("labels", format!("`voronoi` needs labels but `labels` is {}", inputs[0].kind.with_article())));
        }
        if inputs[1].kind != Kind::Mask {
            return Err(ParamIssue::new("mask", format!("`voronoi` needs a mask but `mask` is {}", inputs[1].kind.with_article())));
        }
        Ok(inputs[0].clone())
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let (Value::Labels(l), Value::Mask(m)) = (inputs[0], inputs[1]) else { return Err("voronoi: needs labels and a mask".into()) };
        Ok(Value::Labels(voronoi(&l.u32(), m, ctx.spacing, ctx.ndim)?.into()))
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
    /// The passes within planes a slab at a time, set aside by blocks of rows; each block along
    /// z whole; the result gathered back into slabs ([`voronoi_streamed`]).
    fn stream(&self, io: &mut dyn Slabs, ctx: &Ctx) -> Result<slab::Outcome, String> {
        voronoi_streamed(io, ctx.spacing)?;
        Ok(slab::Outcome::Emitted)
    }
    fn phased(&self) -> Option<&dyn slab::Phased> {
        Some(self)
    }
}

/// Split over machines, the passes of [`voronoi_streamed`] spread out as `distance` spreads
/// its own: each block's planes through the passes within planes, packed ([`pack`]) and set
/// aside by pieces of rows (its partial); a crossing task per piece takes every plane of its
/// rows along z ([`z_block`]); each block gathers its planes of the territories back.
impl slab::Phased for Voronoi {
    fn crosses(&self) -> bool {
        true
    }
    fn partial(&self, io: &mut dyn slab::BlockIo, _round: usize, _before: Option<&[u8]>, ctx: &Ctx) -> Result<Vec<u8>, String> {
        let (_, z0, z1) = io.block();
        let shape = io.input(0).shape();
        check_plane(shape[1], shape[2])?;
        let m = Metric::new(ctx.spacing, shape)?;
        // What a crossing task holds: two words a voxel read, a label written.
        let runs = io.runs(shape[2], 8 + 4);
        let mut keep = Vec::new();
        for k in 0..runs.len() {
            keep.push(io.keep_run(k)?);
        }
        for (a, b) in slab::ranges(z1 - z0, io.planes(4 + 8)) {
            let (Value::Labels(l), Value::Mask(mask)) = (io.input(0).read(z0 + a, z0 + b)?, io.input(1).read(z0 + a, z0 + b)?) else {
                return Err("voronoi: needs labels and a mask".into());
            };
            let l = l.into_u32();
            let l = l.as_standard_layout();
            let ls = l.as_slice().expect("standard layout");
            let sites = sites_of(ls, l.dim(), &m);
            for (k, &(y0, y1)) in keep.iter_mut().zip(&runs) {
                let mut words = Array3::<u32>::zeros((b - a, y1 - y0, 2 * shape[2]));
                pack(ls, sites.view(), mask.view(), (y0, y1), words.view_mut());
                k.append(&Value::Labels(words.into()))?;
            }
        }
        Ok(Vec::new())
    }
    fn cross(&self, io: &mut dyn slab::CrossIo, ctx: &Ctx) -> Result<(), String> {
        let shape = io.shape();
        let [nz, _, nx] = shape;
        let m = Metric::new(ctx.spacing, shape)?;
        for (y0, y1) in slab::piece_runs(io) {
            let words = slab::piece_rows(io, y0, y1)?;
            let mut lab: Array3<u32> = crate::util::zeros3((nz, y1 - y0, nx));
            z_block(words.view(), y0, &m, lab.view_mut());
            drop(words);
            slab::cross_out(io, &lab)?;
        }
        Ok(())
    }
    fn apply(&self, io: &mut dyn slab::BlockIo, _reduced: &[u8], _ctx: &Ctx) -> Result<(), String> {
        slab::emit_crossed(io, 4)
    }
}

/// How far (in voxels) a breakpoint of the lower envelope, rounded in float64, may be from
/// where two parabolas really meet: far more than the rounding error, far less than a voxel.
const TIE: f64 = 0.01;
/// In a packed block word: where the site index ends and the mask bit begins.
const MASK_BIT: u32 = 1 << 31;
/// No site, in a packed block word.
const NO_SITE: u32 = NONE & !MASK_BIT;

/// Squared distances, exactly: per axis, d² times the axis's squared spacing over the finest
/// axis's, in units of 2⁻³² (so exact integers for isotropic spacing, and ratios rounded to
/// 2⁻³² otherwise), as u128 — sums of three never overflow for axes up to 2²⁰ voxels and
/// spacings within a factor 10⁶. Float64 copies (`w2`) build the envelopes.
pub struct Metric {
    /// `t[a][d]`: d² along axis a (z, y, x), exactly.
    t: [Vec<u128>; 3],
    /// The same weight per axis as float64, in units of the finest axis's squared spacing.
    w2: [f64; 3],
}

impl Metric {
    pub fn new(spacing: [f64; 3], shape: [usize; 3]) -> Result<Metric, String> {
        let finest = spacing.iter().copied().fold(f64::INFINITY, f64::min);
        if finest.is_nan() || finest <= 0.0 || spacing.iter().any(|s| !s.is_finite() || s / finest > 1e6) {
            return Err(format!("voronoi: spacing {spacing:?} must be positive and within a factor 10^6 across axes"));
        }
        if shape.iter().any(|&n| n > 1 << 20) {
            return Err(format!("voronoi: an axis of more than 2^20 voxels ({shape:?}) is not supported"));
        }
        let unit = (1u64 << 32) as f64;
        let weight = |a: usize| ((spacing[a] / finest).powi(2) * unit).round() as u128;
        let t = [0, 1, 2].map(|a| (0..shape[a].max(1) as u128).map(|d| d * d * weight(a)).collect());
        let w2 = [0, 1, 2].map(|a| weight(a) as f64 / unit);
        Ok(Metric { t, w2 })
    }
    /// d² along `axis` for |d| = `d`.
    fn sq(&self, axis: usize, d: usize) -> u128 {
        self.t[axis][d]
    }
}

/// Columns gathered at once in the pass along y: one cache line of each row's sites.
const CHUNK: usize = 8;

/// Buffers one thread reuses from chunk to chunk: `c` lines of `n` squared distances (float64
/// for the envelope, exact for the comparisons), labels, a per-voxel word the caller keeps (the
/// row pass's x), and the picks.
#[derive(Default)]
struct Scratch {
    f: Vec<f64>,
    e: Vec<u128>,
    lab: Vec<u32>,
    keep: Vec<u32>,
    pick: Vec<u32>,
    env: super::distance::Envelope,
}

impl Scratch {
    /// Room for `len` voxels (whose values the caller sets, each one: [`Scratch::set`]).
    fn reset(&mut self, len: usize) {
        self.f.resize(len, f64::INFINITY);
        self.e.resize(len, 0);
        self.lab.resize(len, 0);
        self.keep.resize(len, NONE);
        self.pick.resize(len, NONE);
    }
    /// Voxel `at` of the lines: a site (squared distance so far, float64 and exact; label;
    /// the caller's word), or none.
    #[inline]
    fn set(&mut self, at: usize, site: Option<(f64, u128, u32, u32)>) {
        let (f, e, l, keep) = site.unwrap_or((f64::INFINITY, 0, 0, NONE));
        (self.f[at], self.e[at], self.lab[at], self.keep[at]) = (f, e, l, keep);
    }

    /// Each of the lines of `n` along `axis` through [`line`].
    fn lines(&mut self, n: usize, axis: usize, m: &Metric) {
        let Scratch { f, e, lab, pick, env, .. } = self;
        for (((f, e), lab), pick) in f.chunks(n).zip(e.chunks(n)).zip(lab.chunks(n)).zip(pick.chunks_mut(n)) {
            line(f, e, lab, axis, m, env, pick);
        }
    }
}

/// One line along `axis` of sites (squared distance so far: `f[q]` approximately, +inf for
/// none, and `e[q]` exactly; label `lab[q]`): `pick[i]` becomes the q with the
/// lexicographically least (e[q] + (i−q)², lab[q]) in the exact metric, [`NONE`] on a line
/// without a site.
fn line(f: &[f64], e: &[u128], lab: &[u32], axis: usize, m: &Metric, env: &mut super::distance::Envelope, pick: &mut [u32]) {
    env.build(f, m.w2[axis], TIE);
    if env.len() == 0 {
        pick.fill(NONE);
        return;
    }
    let (mut k, last) = (0, env.len() - 1);
    for (i, p) in pick.iter_mut().enumerate() {
        let x = i as f64;
        while k < last && env.starts_before(k + 1, x) {
            k += 1;
        }
        // The envelope's breakpoints are rounded: near one (within TIE of x), every parabola
        // whose region reaches there is weighed exactly, so the nearest wins and exact ties go
        // to the lower label. Elsewhere the lowest parabola is the nearest site.
        let near_next = k < last && env.starts_by(k + 1, x + TIE);
        let near_prev = k > 0 && !env.starts_before(k, x - TIE);
        if !near_next && !near_prev {
            *p = env.site(k) as u32;
            continue;
        }
        let val = |q: usize| (m.sq(axis, i.abs_diff(q)) + e[q], lab[q], q);
        let mut best = val(env.site(k));
        let mut take = |q: usize| {
            let cand = val(q);
            if (cand.0, cand.1) < (best.0, best.1) {
                best = cand;
            }
        };
        let mut j = k + 1;
        while j <= last && env.starts_by(j, x + TIE) {
            take(env.site(j));
            j += 1;
        }
        let mut j = k;
        while j > 0 && !env.starts_before(j, x - TIE) {
            take(env.site(j - 1));
            j -= 1;
        }
        *p = best.2 as u32;
    }
}

/// The pass along x of one row of labels: `out[i]` is the x of the nearest object voxel of the
/// row (the lower label at equal distance), [`NONE`] in a row without one: the nearest site on
/// each side is the lower envelope of parabolas that are all 0 at their sites.
fn x_row(lrow: &[u32], out: &mut [u32]) {
    nearest_in_row(lrow.len(), |i| lrow[i] != 0, |l, r| lrow[r as usize] < lrow[l as usize], out);
}

/// The nearest site within one plane of `labels` (`ny × nx`, x contiguous) for each voxel, as
/// its position `y << 16 | x` in the plane ([`NONE`] in a plane without objects): x by
/// [`x_row`], then y over chunks of columns, each voxel's row candidate weighed by its squared
/// x distance.
fn plane_sites(lp: &[u32], sites: &mut [u32], nx: usize, m: &Metric, sc: &mut Scratch) {
    if nx == 0 {
        return;
    }
    let ny = lp.len() / nx;
    for (lr, sr) in lp.chunks(nx).zip(sites.chunks_mut(nx)) {
        x_row(lr, sr);
    }
    let c = CHUNK;
    for x0 in (0..nx).step_by(c) {
        let cols = c.min(nx - x0);
        sc.reset(cols * ny);
        for (y, (sr, lr)) in sites.chunks(nx).zip(lp.chunks(nx)).enumerate() {
            for (j, &q) in sr[x0..x0 + cols].iter().enumerate() {
                let dx = (x0 + j).abs_diff(q as usize);
                sc.set(j * ny + y, (q != NONE).then(|| ((dx * dx) as f64 * m.w2[2], m.sq(2, dx), lr[q as usize], q)));
            }
        }
        sc.lines(ny, 1, m);
        for (y, sr) in sites.chunks_mut(nx).enumerate() {
            for (j, s) in sr[x0..x0 + cols].iter_mut().enumerate() {
                let p = sc.pick[j * ny + y];
                *s = if p == NONE { NONE } else { p << 16 | sc.keep[j * ny + p as usize] };
            }
        }
    }
}

/// The pass along z of one row of a block (`words`: planes × 2nx as [`pack`] writes them),
/// chunks of columns at a time, into `out` (planes × nx): each voxel's nearest label, 0 outside
/// the mask.
fn z_row(words: ArrayView2<u32>, mut out: ArrayViewMut2<u32>, y: usize, m: &Metric, sc: &mut Scratch) {
    let (n, nx) = out.dim();
    // Eight voxels are one cache line of words: each line of a plane is read once.
    let c = 8;
    let mut labels = [0u32; 8];
    for x0 in (0..nx).step_by(c) {
        let cols = c.min(nx - x0);
        sc.reset(cols * n);
        for (k, w) in words.rows().into_iter().enumerate() {
            let w = &w.as_slice().expect("rows of words are contiguous")[2 * x0..2 * (x0 + cols)];
            for (j, p) in w.chunks_exact(2).enumerate() {
                let s = p[1] & !MASK_BIT;
                let (qy, qx) = yx(s);
                let (dy, dx) = (y.abs_diff(qy), (x0 + j).abs_diff(qx));
                let site = s != NO_SITE;
                sc.set(
                    j * n + k,
                    site.then(|| ((dy * dy) as f64 * m.w2[1] + (dx * dx) as f64 * m.w2[2], m.sq(1, dy) + m.sq(2, dx), p[0], 0)),
                );
            }
        }
        sc.lines(n, 0, m);
        for (k, (w, mut o)) in words.rows().into_iter().zip(out.rows_mut()).enumerate() {
            for (j, l) in labels[..cols].iter_mut().enumerate() {
                let q = sc.pick[j * n + k];
                *l = if q == NONE || w[2 * (x0 + j) + 1] & MASK_BIT == 0 { 0 } else { sc.lab[j * n + q as usize] };
            }
            o.as_slice_mut().expect("rows of labels are contiguous")[x0..x0 + cols].copy_from_slice(&labels[..cols]);
        }
    }
}

/// The pass along z over a block of rows `y0..` (all planes): `words` (planes × rows × 2nx, as
/// [`pack`] writes them) into `out` (planes × rows × nx), a row per task.
fn z_block(words: ArrayView3<u32>, y0: usize, m: &Metric, mut out: ArrayViewMut3<u32>) {
    use rayon::prelude::*;
    out.axis_iter_mut(Axis(1))
        .into_par_iter()
        .zip(words.axis_iter(Axis(1)))
        .enumerate()
        .for_each_init(Scratch::default, |sc, (r, (o, w))| z_row(w, o, y0 + r, m, sc));
}

/// Plane sizes the sites can address: 16 bits of x, 15 of y (packed blocks keep a bit for the
/// mask).
fn check_plane(ny: usize, nx: usize) -> Result<(), String> {
    if ny >= 1 << 15 || nx >= 1 << 16 {
        return Err(format!("voronoi: planes of {ny}×{nx} voxels are larger than it supports (fewer than 32768 rows of fewer than 65536)"));
    }
    Ok(())
}

/// Each plane of `labels` (a whole image or a z-slab, x contiguous) through [`plane_sites`].
fn sites_of(ls: &[u32], (nz, ny, nx): (usize, usize, usize), m: &Metric) -> Array3<u32> {
    use rayon::prelude::*;
    let mut sites: Array3<u32> = crate::util::zeros3((nz, ny, nx));
    if ny * nx > 0 {
        sites
            .as_slice_mut()
            .expect("standard layout")
            .par_chunks_mut(ny * nx)
            .zip(ls.par_chunks(ny * nx))
            .for_each_init(Scratch::default, |sc, (sp, lp)| plane_sites(lp, sp, nx, m, sc));
    }
    sites
}

/// A (planes × rows × cols) buffer whose planes are a cache line apart from a multiple of
/// 4 KiB, so that walking down its planes does not map every plane to the same cache sets (as
/// a power-of-two plane size would).
fn padded(buf: &mut Vec<u32>, (n, rows, cols): (usize, usize, usize)) -> ArrayViewMut3<'_, u32> {
    let pitch = (rows * cols).div_ceil(1024) * 1024 + 16;
    buf.resize(n * pitch, 0);
    ArrayViewMut3::from_shape((n, rows, cols).strides((pitch, cols, 1)), &mut buf[..]).expect("the buffer holds every plane")
}

/// Territories of `labels` inside `mask`. The sites within planes go into the output volume;
/// then blocks of rows at a time are packed ([`pack`]), passed along z ([`z_block`]) and
/// written back over their sites.
pub fn voronoi(labels: &Array3<u32>, mask: &Array3<u8>, spacing: [f64; 3], ndim: u8) -> Result<Array3<u32>, String> {
    use rayon::prelude::*;
    let (nz, ny, nx) = labels.dim();
    check_plane(ny, nx)?;
    let m = Metric::new(spacing, [nz, ny, nx])?;
    let labels = labels.as_standard_layout();
    let mask = mask.as_standard_layout();
    let ls = labels.as_slice().expect("standard layout");
    let mut sites = sites_of(ls, (nz, ny, nx), &m);
    let plane = ny * nx;
    if plane == 0 {
        return Ok(sites);
    }
    if ndim == 2 || nz == 1 {
        let ms = mask.as_slice().expect("standard layout");
        let ss = sites.as_slice_mut().expect("standard layout");
        ss.par_chunks_mut(plane).zip(ms.par_chunks(plane)).enumerate().for_each(|(k, (sp, mp))| {
            for (s, &mv) in sp.iter_mut().zip(mp) {
                *s = if mv == 0 || *s == NONE {
                    0
                } else {
                    let (qy, qx) = yx(*s);
                    ls[k * plane + qy * nx + qx]
                };
            }
        });
        return Ok(sites);
    }
    // Blocks of about 32 MiB (12 bytes a voxel), at least two rows (one per thread).
    let rows = (32usize << 20) / (12 * nz * nx).max(1);
    let rows = rows.clamp(2.min(ny), ny);
    let (mut wbuf, mut obuf) = (Vec::new(), Vec::new());
    for y0 in (0..ny).step_by(rows) {
        let y1 = (y0 + rows).min(ny);
        let mut words = padded(&mut wbuf, (nz, y1 - y0, 2 * nx));
        pack(ls, sites.view(), mask.view(), (y0, y1), words.view_mut());
        let mut out = padded(&mut obuf, (nz, y1 - y0, nx));
        z_block(words.view(), y0, &m, out.view_mut());
        sites
            .slice_mut(s![.., y0..y1, ..])
            .axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(out.axis_iter(Axis(0)))
            .for_each(|(mut d, o)| d.assign(&o));
    }
    Ok(sites)
}

/// Rows `y0..y1` of a slab into `w` (planes × rows × 2nx): two words a voxel, the label of its
/// nearest site within its plane and the site (with the mask in the top bit).
fn pack(labels: &[u32], sites: ArrayView3<u32>, mask: ArrayView3<u8>, (y0, y1): (usize, usize), mut w: ArrayViewMut3<u32>) {
    use rayon::prelude::*;
    let (_, ny, nx) = sites.dim();
    w.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(z, mut wp)| {
        for (r, mut wr) in wp.rows_mut().into_iter().enumerate() {
            let y = y0 + r;
            let wr = wr.as_slice_mut().expect("rows of words are contiguous");
            for ((p, &s), &mv) in wr.chunks_exact_mut(2).zip(sites.slice(s![z, y, ..])).zip(mask.slice(s![z, y, ..])) {
                let m = if mv != 0 { MASK_BIT } else { 0 };
                if s == NONE {
                    (p[0], p[1]) = (0, NO_SITE | m);
                } else {
                    let (qy, qx) = yx(s);
                    (p[0], p[1]) = (labels[(z * ny + qy) * nx + qx], s | m);
                }
            }
        }
    });
    debug_assert_eq!(y1 - y0, w.dim().1);
}

/// [`voronoi`] out of core, as `distance` streams: (1) each z-slab through the passes within
/// planes, its rows set aside by blocks of rows, two words a voxel ([`pack`]); (2) each block
/// whole along z ([`z_block`]), set aside again; (3) gathered back into z-slabs and emitted.
/// Every line is computed as in memory, so the labels are the same.
fn voronoi_streamed(io: &mut dyn Slabs, spacing: [f64; 3]) -> Result<(), String> {
    let [nz, ny, nx] = io.input(0).shape();
    check_plane(ny, nx)?;
    let m = Metric::new(spacing, [nz, ny, nx])?;
    // Per voxel of a block: its words as read and its labels.
    let blocks = slab::row_blocks(io, 8 + 4);
    let mut parts: Vec<Box<dyn slab::Scratch>> = Vec::new();
    for b in 0..blocks.len() {
        parts.push(io.scratch(&format!("b{b}"))?);
    }
    // Beside the labels and mask: the sites, and the packed rows.
    let planes = io.planes(4 + 8);
    for (z0, z1) in slab::ranges(nz, planes) {
        let (Value::Labels(l), Value::Mask(mask)) = (io.input(0).read(z0, z1)?, io.input(1).read(z0, z1)?) else {
            return Err("voronoi: needs labels and a mask".into());
        };
        let l = l.into_u32();
        let l = l.as_standard_layout();
        let ls = l.as_slice().expect("standard layout");
        let sites = sites_of(ls, l.dim(), &m);
        for (b, &(y0, y1)) in blocks.iter().enumerate() {
            let mut words = Array3::<u32>::zeros((z1 - z0, y1 - y0, 2 * nx));
            pack(ls, sites.view(), mask.view(), (y0, y1), words.view_mut());
            parts[b].append(&Value::Labels(words.into()))?;
        }
    }
    let mut done: Vec<Box<dyn slab::Scratch>> = Vec::new();
    let mut max = 0u32;
    let emit = io.planes(4);
    for (b, part) in parts.into_iter().enumerate() {
        let Value::Labels(words) = part.read(0, nz)? else { return Err("voronoi: scratch block".into()) };
        let words = words.into_u32();
        drop(part);
        let (y0, y1) = blocks[b];
        let mut lab: Array3<u32> = crate::util::zeros3((nz, y1 - y0, nx));
        z_block(words.view(), y0, &m, lab.view_mut());
        drop(words);
        max = max.max(super::labels::max3(&lab));
        done.push(slab::keep_block(io, &format!("t{b}"), nz, emit, |z0, z1| {
            Value::Labels(lab.slice(s![z0..z1, .., ..]).to_owned().into())
        })?);
    }
    io.labels_max(max);
    slab::emit_blocks(io, &blocks, &done, emit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every object voxel weighed against every mask voxel, in the exact metric.
    fn brute(labels: &Array3<u32>, mask: &Array3<u8>, s: [f64; 3]) -> Array3<u32> {
        let (nz, ny, nx) = labels.dim();
        let m = Metric::new(s, [nz, ny, nx]).unwrap();
        let objs: Vec<((usize, usize, usize), u32)> = labels.indexed_iter().filter(|(_, l)| **l > 0).map(|(i, l)| (i, *l)).collect();
        Array3::from_shape_fn(labels.dim(), |(z, y, x)| {
            if mask[[z, y, x]] == 0 {
                return 0;
            }
            let mut best = (u128::MAX, 0u32);
            for &((a, b, c), l) in &objs {
                let d = m.sq(0, z.abs_diff(a)) + m.sq(1, y.abs_diff(b)) + m.sq(2, x.abs_diff(c));
                best = best.min((d, l));
            }
            best.1
        })
    }

    #[test]
    fn equals_brute_force_with_ties() {
        let mut seed = 99u64;
        let mut rnd = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        let spacings = [[1.0, 1.0, 1.0], [2.0, 0.5, 1.0], [1.0, 1.0, 0.5], [0.7, 0.7, 0.7], [2.1, 0.3, 0.3], [0.7, 0.35, 0.35]];
        for (trial, s) in spacings.iter().cycle().take(3000).enumerate() {
            let big = trial % 10 == 0;
            let dims = if big {
                (4 + rnd(12) as usize, 8 + rnd(24) as usize, 8 + rnd(24) as usize)
            } else {
                (1 + rnd(6) as usize, 2 + rnd(9) as usize, 2 + rnd(9) as usize)
            };
            let mut labels = Array3::<u32>::zeros(dims);
            for _ in 0..1 + rnd(if big { 40 } else { 6 }) {
                let (z, y, x) = (rnd(dims.0 as u64) as usize, rnd(dims.1 as u64) as usize, rnd(dims.2 as u64) as usize);
                labels[[z, y, x]] = 1 + rnd(5) as u32;
            }
            let mask = Array3::from_shape_fn(dims, |_| (rnd(4) != 0) as u8);
            let ndim = if dims.0 == 1 { 2 } else { 3 };
            assert_eq!(voronoi(&labels, &mask, *s, ndim).unwrap(), brute(&labels, &mask, *s), "trial {trial} spacing {s:?}");
        }
    }

    #[test]
    fn symmetric_tie_goes_to_lower_label() {
        let mut labels = Array3::<u32>::zeros((1, 1, 5));
        labels[[0, 0, 0]] = 7;
        labels[[0, 0, 4]] = 3;
        let mask = Array3::from_elem((1, 1, 5), 1u8);
        assert_eq!(voronoi(&labels, &mask, [1.0; 3], 2).unwrap().into_raw_vec_and_offset().0, vec![7, 7, 3, 3, 3]);
    }

    #[test]
    fn isotropic_ties_are_exact_at_any_spacing() {
        // (3,4,0) and (5,0,0) are both 25 voxels² away: equal at 0.7 µm too, so the lower label.
        let mut labels = Array3::<u32>::zeros((6, 5, 1));
        labels[[3, 4, 0]] = 9;
        labels[[5, 0, 0]] = 2;
        let mask = Array3::from_elem((6, 5, 1), 1u8);
        assert_eq!(voronoi(&labels, &mask, [0.7; 3], 3).unwrap()[[0, 0, 0]], 2);
        labels[[5, 0, 0]] = 10;
        assert_eq!(voronoi(&labels, &mask, [0.7; 3], 3).unwrap()[[0, 0, 0]], 9);
    }
}
