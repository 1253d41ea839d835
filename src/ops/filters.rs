//! Smoothing filters. `gaussian` reproduces `scipy.ndimage.gaussian_filter` on float32 input:
//! separable passes z, y, x... in scipy's axis order (z first), kernel radius
//! `int(truncate·σ + 0.5)`, weights `exp(-x²/2σ²)` normalised, `reflect` borders
//! (`d c b a | a b c d | d c b a`), float64 sums in scipy's symmetric pairing order, float32
//! storage between passes.

use std::mem::MaybeUninit;

use ndarray::{Array3, Axis, Zip};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Ctx, Halo, Input, Kind, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, default_input, expect_image, fields_of};
use crate::io::{DType, Data};
use crate::isa::Isa;

/// A number for every axis, or one per axis (`[z, y, x]`, or `[y, x]` for 2D).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PerAxis {
    One(f64),
    Many(Vec<f64>),
}

impl PerAxis {
    /// `[z, y, x]` values; `[y, x]` gets z = the y value (unused by 2D images).
    pub fn zyx(&self) -> Option<[f64; 3]> {
        match self {
            PerAxis::One(v) => Some([*v; 3]),
            PerAxis::Many(v) if v.len() == 3 => Some([v[0], v[1], v[2]]),
            PerAxis::Many(v) if v.len() == 2 => Some([v[0], v[0], v[1]]),
            PerAxis::Many(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SigmaUnit {
    #[default]
    Voxel,
    Physical,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Gaussian {
    #[serde(default = "default_input")]
    pub input: String,
    pub sigma: PerAxis,
    #[serde(default)]
    pub sigma_unit: SigmaUnit,
    #[serde(default = "default_truncate")]
    pub truncate: f64,
}

fn default_truncate() -> f64 {
    4.0
}

pub static GAUSSIAN: OpInfo = OpInfo {
    name: "gaussian",
    family: "filters",
    version: 1,
    output: Kind::Image,
    same_kind: false,
    summary: "Image → f32 image smoothed with a Gaussian (scipy.ndimage.gaussian_filter).",
    doc: "Equals scipy.ndimage.gaussian_filter(image.astype(float32), sigma, mode='reflect', \
          truncate=truncate) to within float rounding (≤ 1e-3 absolute on 0–255 data, tested). \
          Each axis is smoothed in turn with a kernel of radius int(truncate·σ + 0.5) voxels; \
          borders mirror the image (d c b a | a b c d). An axis with σ = 0 is left as it is. \
          With `sigma_unit: physical`, σ is in the pipeline's `unit` and is divided by the voxel \
          spacing per axis. NaNs spread to every voxel whose kernel reaches them.",
    params: &[
        ParamDoc { name: "input", ty: "stage (image)", default: Some("image"), doc: "The image to smooth." },
        ParamDoc { name: "sigma", ty: "number ≥ 0, or [z, y, x] / [y, x]", default: None, doc: "Standard deviation per axis." },
        ParamDoc {
            name: "sigma_unit",
            ty: "voxel | physical",
            default: Some("voxel"),
            doc: "Whether `sigma` is in voxels or in the spacing's unit.",
        },
        ParamDoc { name: "truncate", ty: "number > 0", default: Some("4.0"), doc: "Kernel radius in standard deviations." },
    ],
    build: build::<Gaussian>,
    fields: fields_of::<Gaussian>,
    examples: &["input: {image}, sigma: 1.0", "input: {image}, sigma: [0.6, 1.2, 0.8]"],
};

impl Gaussian {
    fn sigma_voxels(&self, spacing: [f64; 3]) -> [f64; 3] {
        let s = self.sigma.zyx().unwrap_or([0.0; 3]);
        match self.sigma_unit {
            SigmaUnit::Voxel => s,
            SigmaUnit::Physical => [s[0] / spacing[0], s[1] / spacing[1], s[2] / spacing[2]],
        }
    }
}

/// scipy's kernel radius for σ and `truncate`.
pub fn radius(sigma: f64, truncate: f64) -> usize {
    (truncate * sigma + 0.5) as usize
}

impl Op for Gaussian {
    fn info(&self) -> &'static OpInfo {
        &GAUSSIAN
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Image] }]
    }
    fn halo(&self) -> Halo {
        match (self.sigma_unit, self.sigma.zyx()) {
            (SigmaUnit::Voxel, Some(s)) => Halo::Local(s.map(|v| radius(v, self.truncate))),
            // Physical sigmas depend on the sample's spacing; the tiled executor resolves them per sample.
            _ => Halo::Local([0; 3]),
        }
    }
    fn halo_for(&self, ctx: &Ctx) -> Halo {
        Halo::Local(self.sigma_voxels(ctx.spacing).map(|v| radius(v, self.truncate)))
    }
    fn check(&self) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        match self.sigma.zyx() {
            None => v.push(ParamIssue::new("sigma", "`sigma` is a number, [y, x] or [z, y, x]")),
            Some(s) => {
                if s.iter().any(|x| !x.is_finite() || *x < 0.0) {
                    v.push(ParamIssue::new("sigma", "`sigma` values must be ≥ 0"));
                } else if s.iter().all(|x| *x == 0.0) {
                    v.push(
                        ParamIssue::new("sigma", "`sigma` is 0 on every axis: the stage would do nothing")
                            .help("use a positive sigma, or remove the stage"),
                    );
                } else if s.iter().any(|x| *x > 1000.0) {
                    v.push(ParamIssue::new("sigma", "`sigma` above 1000 voxels is surely a mistake"));
                }
            }
        }
        if !(self.truncate.is_finite() && self.truncate > 0.0) {
            v.push(ParamIssue::new("truncate", "`truncate` must be > 0"));
        }
        v
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        expect_image(&inputs[0], "input", "gaussian")?;
        Ok(Meta { dtype: Some(DType::F32), ..inputs[0].clone() })
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let Value::Image(data) = inputs[0] else { return Err("gaussian: input is not an image".into()) };
        smooth(data, self.sigma_voxels(ctx.spacing), self.truncate, ctx.ndim, ([0, 0, 0], data.shape())).map(|a| Value::Image(Data::F32(a)))
    }
    fn run_region(&self, inputs: &[&Value], ctx: &Ctx, out: ([usize; 3], [usize; 3])) -> Option<Result<Value, String>> {
        let Value::Image(data) = inputs[0] else { return Some(Err("gaussian: input is not an image".into())) };
        Some(smooth(data, self.sigma_voxels(ctx.spacing), self.truncate, ctx.ndim, out).map(|a| Value::Image(Data::F32(a))))
    }
    fn run_region_bounded(&self, inputs: &[&Value], ctx: &Ctx, out: ([usize; 3], [usize; 3])) -> Option<(Value, f64)> {
        let Value::Image(data) = inputs[0] else { return None };
        smooth_f32(data, self.sigma_voxels(ctx.spacing), self.truncate, ctx.ndim, out).map(|(a, e)| (Value::Image(Data::F32(a)), e))
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// A pixel type the gaussian reads, converted as numpy's `astype(float32)`.
trait Px: Copy + Send + Sync {
    fn f32(self) -> f32;
}
macro_rules! px_as_f32 {
    ($($t:ty),*) => {$(
        impl Px for $t {
            #[inline(always)]
            fn f32(self) -> f32 {
                self as f32
            }
        }
    )*};
}
px_as_f32!(u8, u16, u32, f32);

/// Gaussian smoothing of `d` (any scalar dtype, read as float32), computed on `out` (start, end
/// per axis; the whole image is `([0; 3], d.shape())`). 2D images (`ndim == 2`) are not smoothed
/// along z.
///
/// The three passes are fused: a work item is one output plane (or a block of its rows). It
/// smooths along z the source rows its y pass needs into a small buffer (float32, as scipy stores
/// between passes), smooths those along y one row at a time and that row along x straight into
/// the output. Every voxel gets the operations [`gaussian`]'s separate passes give it, in the same
/// order (tested bit for bit), but no full-size float32 copy of the input or intermediate volume is
/// made: the input is read where it lies and the output written once.
pub fn smooth(d: &Data, sigma: [f64; 3], truncate: f64, ndim: u8, out: ([usize; 3], [usize; 3])) -> Result<Array3<f32>, String> {
    Ok(match d {
        Data::U8(a) => fused(a, sigma, truncate, ndim, out),
        Data::U16(a) => fused(a, sigma, truncate, ndim, out),
        Data::U32(a) => fused(a, sigma, truncate, ndim, out),
        Data::F32(a) => fused(a, sigma, truncate, ndim, out),
        Data::Rgb8(_) | Data::Rgb16(_) => return Err("RGB input (add a grayscale stage)".into()),
    })
}

/// [`smooth`] summed in float32, and a bound on how far its values are from [`smooth`]'s: for
/// callers that need only where values lie (a range, a side of a threshold) and compute
/// exactly the few voxels the bound leaves undecided. `None` where no bound is given: input
/// that is not finite or beyond ±10³⁰, RGB.
pub fn smooth_f32(d: &Data, sigma: [f64; 3], truncate: f64, ndim: u8, out: ([usize; 3], [usize; 3])) -> Option<(Array3<f32>, f64)> {
    let widest = Isa::widest();
    let dims = d.shape();
    // The input planes the output planes read.
    let rz = axis_kernels(sigma, truncate, ndim, dims)[0].as_ref().map_or(0, |w| w.len() / 2);
    let (z0, z1) = (out.0[0].saturating_sub(rz), (out.1[0] + rz).min(dims[0]));
    // The input planes, and the largest magnitude in them (unsigned integers: the largest value).
    fn planes<T>(a: &Array3<T>, z0: usize, z1: usize) -> &[T] {
        let plane = a.len() / a.dim().0.max(1);
        &a.as_slice().expect("standard layout")[z0 * plane..z1 * plane]
    }
    fn largest<T: Px + Ord + Default>(a: &Array3<T>, z0: usize, z1: usize) -> f64 {
        planes(a, z0, z1).par_chunks(1 << 16).map(|c| c.iter().copied().max().unwrap_or_default()).max().unwrap_or_default().f32() as f64
    }
    let (smoothed, m) = match d {
        Data::U8(a) if a.is_standard_layout() => (fused_with::<_, f32>(a, sigma, truncate, ndim, out, widest), largest(a, z0, z1)),
        Data::U16(a) if a.is_standard_layout() => (fused_with::<_, f32>(a, sigma, truncate, ndim, out, widest), largest(a, z0, z1)),
        Data::U32(a) if a.is_standard_layout() => (fused_with::<_, f32>(a, sigma, truncate, ndim, out, widest), largest(a, z0, z1)),
        Data::F32(a) if a.is_standard_layout() => {
            // The largest magnitude; NaN and anything beyond ±10³⁰ give no bound (NaN fails the
            // comparison too).
            let m = planes(a, z0, z1)
                .par_chunks(1 << 16)
                .map(|c| c.iter().fold(0f32, |m, v| if v.abs() <= 1e30 && m >= 0.0 { m.max(v.abs()) } else { -1.0 }))
                .reduce(|| 0.0, |a, b| if a < 0.0 || b < 0.0 { -1.0 } else { a.max(b) });
            if m < 0.0 {
                return None;
            }
            (fused_with::<_, f32>(a, sigma, truncate, ndim, out, widest), m as f64)
        }
        _ => return None,
    };
    Some((smoothed, f32_sum_bound(sigma, truncate, ndim, dims, m)))
}

/// How far float32 sums of the gaussian ([`smooth_f32`]) are at most from float64's
/// ([`smooth`]), for input values of magnitude at most `m`.
///
/// Every value of every pass is a weighted mean of input values, so at most `m` in magnitude
/// (the weights are positive and sum to 1). Per pass along an axis of radius r: the float32
/// sum of a voxel's 2r+1 terms takes at most r + 2 roundings on its way (the pair's sum, the
/// product, r additions), each off by at most u = 2⁻²⁴ of a value at most `m`; its float32
/// weights are off by u relatively; the float64 sum is off by far less than u·m and is rounded
/// to float32 (u/2·m). Both passes then carry the previous pass's difference on, not enlarged
/// (weights sum to 1, to within (2r+1)·u). That is at most (r + 4)·u·m per pass; the bound is
/// twice the sum over the smoothed axes, plus 10⁻⁴⁰ for subnormal results.
fn f32_sum_bound(sigma: [f64; 3], truncate: f64, ndim: u8, dims: [usize; 3], m: f64) -> f64 {
    let per_pass: f64 = axis_kernels(sigma, truncate, ndim, dims).iter().flatten().map(|w| (w.len() / 2 + 4) as f64).sum();
    2.0 * per_pass * m * (f32::EPSILON as f64 / 2.0) + 1e-40
}

/// Weights per axis; `None` where the axis is not smoothed.
fn axis_kernels(sigma: [f64; 3], truncate: f64, ndim: u8, dims: [usize; 3]) -> [Option<Vec<f64>>; 3] {
    std::array::from_fn(|axis| {
        let s = sigma[axis];
        let r = radius(s, truncate);
        (!(axis == 0 && ndim == 2) && s > 1e-15 && r > 0 && dims[axis] > 0).then(|| kernel(s, r))
    })
}

/// Per-thread buffers of [`fused`].
#[derive(Default)]
struct Scratch {
    zb: Vec<f32>,
    row: Vec<f32>,
    ext: Vec<f32>,
}

thread_local! {
    /// The thread's [`Scratch`], kept from item to item (a fresh one per item would clear its
    /// buffers each time: a few hundred KiB per plane).
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

fn fused<T: Px>(a: &Array3<T>, sigma: [f64; 3], truncate: f64, ndim: u8, out: ([usize; 3], [usize; 3])) -> Array3<f32> {
    let widest = Isa::widest();
    fused_with::<T, f64>(a, sigma, truncate, ndim, out, widest)
}

fn fused_with<T: Px, A: Acc>(
    a: &Array3<T>,
    sigma: [f64; 3],
    truncate: f64,
    ndim: u8,
    out: ([usize; 3], [usize; 3]),
    isa: Isa,
) -> Array3<f32> {
    let a = a.as_standard_layout();
    let src = a.as_slice().expect("standard layout");
    let (nz, ny, nx) = a.dim();
    let (lo, hi) = out;
    let (onz, ony, onx) = (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]);
    if onz * ony * onx == 0 {
        return Array3::zeros((onz, ony, onx));
    }
    let [wz, wy, wx] = axis_kernels(sigma, truncate, ndim, [nz, ny, nx]);
    let ry = wy.as_ref().map_or(0, |w| w.len() / 2);
    // Items: whole planes when there are enough for every thread; otherwise (few planes, 2D)
    // blocks of rows. The z-pass buffer of an item is kept within ~512 KiB (it is reused by the
    // y pass from cache); blocks recompute the z pass of their 2·ry halo rows, a few percent.
    let threads = rayon::current_num_threads().max(1);
    let mut blocks = if onz >= 2 * threads { 1 } else { (4 * threads).div_ceil(onz) };
    let cap = ((512 << 10) / 4 / nx).saturating_sub(2 * ry).max(16);
    blocks = blocks.max(ony.div_ceil(cap)).min(ony);
    let block = ony.div_ceil(blocks);
    let [wz, wy, wx] = [wz, wy, wx].map(|w| w.map(|w| w.iter().map(|&v| A::weight(v)).collect::<Vec<A>>()));
    let k = Kernels { wz: wz.as_deref(), wy: wy.as_deref(), wx: wx.as_deref() };
    let fill = |dst: &mut [MaybeUninit<f32>]| {
        dst.par_chunks_mut(ony * onx).enumerate().for_each(|(zo, plane)| {
            plane.par_chunks_mut(block * onx).enumerate().for_each(|(b, rows)| {
                let ys = lo[1] + b * block..lo[1] + b * block + rows.len() / onx;
                let at = Item { src, dims: [nz, ny, nx], z: lo[0] + zo, ys, xs: lo[2]..hi[2] };
                let (at, k) = (&at, &k);
                SCRATCH.with_borrow_mut(|s| {
                    crate::isa::dispatch!(isa, [T: Px, A: Acc] item(
                        at: &Item<T>, k: &Kernels<A>, s: &mut Scratch, rows: &mut [MaybeUninit<f32>]
                    ))
                });
            });
        });
    };
    // SAFETY: the items cover every output row, and `item` writes every value of its rows.
    let dst = unsafe { crate::util::written_f32(onz * ony * onx, fill) };
    Array3::from_shape_vec((onz, ony, onx), dst).expect("shape")
}

struct Kernels<'a, A> {
    wz: Option<&'a [A]>,
    wy: Option<&'a [A]>,
    wx: Option<&'a [A]>,
}

/// The float type the passes sum in: float64 as scipy does (every value the reference's), or
/// float32 (twice the lanes; values within [`f32_sum_bound`] of float64's).
trait Acc: Copy + Send + Sync + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    const ZERO: Self;
    fn of(v: f32) -> Self;
    fn weight(w: f64) -> Self;
    fn f32(self) -> f32;
}

impl Acc for f64 {
    const ZERO: f64 = 0.0;
    #[inline(always)]
    fn of(v: f32) -> f64 {
        v as f64
    }
    fn weight(w: f64) -> f64 {
        w
    }
    #[inline(always)]
    fn f32(self) -> f32 {
        self as f32
    }
}

impl Acc for f32 {
    const ZERO: f32 = 0.0;
    #[inline(always)]
    fn of(v: f32) -> f32 {
        v
    }
    fn weight(w: f64) -> f32 {
        w as f32
    }
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

/// One work item: output plane `z`, rows `ys` and columns `xs` (source coordinates).
struct Item<'a, T> {
    src: &'a [T],
    dims: [usize; 3],
    z: usize,
    ys: std::ops::Range<usize>,
    xs: std::ops::Range<usize>,
}

/// Lanes of a block in [`sym_rows`]: two AVX-512 vectors (four AVX2 ones) of the sum's type,
/// two independent chains of additions in flight: 16 voxels summed in float64, 32 in float32.
const LANES: usize = 16;

/// One pass of a symmetric kernel `w` (length 2r+1): `out[x]` = `rows[r][x]·w[r]` plus, for
/// j = r..1, `(rows[r−j][x] + rows[r+j][x])·w[r−j]`, summed in float64 in that order (scipy's)
/// and stored as float32. Blocks of voxels ([`LANES`]) keep their sums in registers through all
/// the taps; the order of the operations per voxel is the same as one tap at a time.
#[inline(always)]
fn sym_rows<S: Px, A: Acc>(rows: &[&[S]], w: &[A], out: &mut [MaybeUninit<f32>]) {
    let n = out.len();
    assert!(rows.len() == w.len() && rows.iter().all(|row| row.len() >= n), "rows shorter than the output");
    let mut x = 0;
    if std::mem::size_of::<A>() == 4 {
        x = sym_blocks::<S, A, { 2 * LANES }>(rows, w, out, x);
    }
    x = sym_blocks::<S, A, LANES>(rows, w, out, x);
    // The last voxels one at a time.
    sym_blocks::<S, A, 1>(rows, w, out, x);
}

/// [`sym_rows`]' blocks of `L` voxels from `x` on, while whole blocks fit; where they end.
#[inline(always)]
fn sym_blocks<S: Px, A: Acc, const L: usize>(rows: &[&[S]], w: &[A], out: &mut [MaybeUninit<f32>], mut x: usize) -> usize {
    let r = w.len() / 2;
    let n = out.len();
    let wc = w[r];
    while x + L <= n {
        let mut a = [A::ZERO; L];
        // SAFETY (all `get_unchecked` below): every row holds at least n values (asserted by
        // sym_rows), and x + L <= n; r − j and r + j are within 0..2r+1 = rows.len() = w.len().
        unsafe {
            let c = rows.get_unchecked(r).as_ptr().add(x);
            for (l, a) in a.iter_mut().enumerate() {
                *a = A::of((*c.add(l)).f32()) * wc;
            }
            for j in (1..=r).rev() {
                let (p, q, wj) =
                    (rows.get_unchecked(r - j).as_ptr().add(x), rows.get_unchecked(r + j).as_ptr().add(x), *w.get_unchecked(r - j));
                for (l, a) in a.iter_mut().enumerate() {
                    *a = *a + (A::of((*p.add(l)).f32()) + A::of((*q.add(l)).f32())) * wj;
                }
            }
        }
        for (o, &a) in out[x..x + L].iter_mut().zip(&a) {
            o.write(a.f32());
        }
        x += L;
    }
    x
}

/// `s` as slots [`sym_rows`] writes (it writes values only, never uninitialised memory).
fn as_uninit(s: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; every value written through the result is initialised.
    unsafe { &mut *(s as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

#[inline(always)]
fn item<T: Px, A: Acc>(at: &Item<T>, k: &Kernels<A>, s: &mut Scratch, out: &mut [MaybeUninit<f32>]) {
    let [nz, ny, nx] = at.dims;
    let row_of = |z: usize, y: usize| -> &[T] { &at.src[(z * ny + y) * nx..(z * ny + y + 1) * nx] };
    let ry = k.wy.map_or(0, |w| w.len() / 2);
    let nrows = at.ys.len() + 2 * ry;
    s.zb.resize(nrows * nx, 0.0);
    s.row.resize(nx, 0.0);
    // z pass: the source rows the y pass reads (reflected at the borders).
    let mut src_rows: Vec<&[T]> = Vec::with_capacity(k.wz.map_or(1, <[A]>::len));
    for (i, zrow) in s.zb.chunks_exact_mut(nx).enumerate() {
        let y = if ry > 0 { reflect(at.ys.start as isize + i as isize - ry as isize, ny as isize) } else { at.ys.start + i };
        match k.wz {
            Some(w) => {
                let r = (w.len() / 2) as isize;
                src_rows.clear();
                src_rows.extend((-r..=r).map(|d| row_of(reflect(at.z as isize + d, nz as isize), y)));
                sym_rows(&src_rows, w, as_uninit(zrow));
            }
            None => {
                for (o, &v) in zrow.iter_mut().zip(row_of(at.z, y)) {
                    *o = v.f32();
                }
            }
        }
    }
    let (x0, onx) = (at.xs.start, at.xs.len());
    let rx = k.wx.map_or(0, |w| w.len() / 2);
    s.ext.resize(onx + 2 * rx, 0.0);
    for (i, orow) in out.chunks_exact_mut(onx).enumerate() {
        // y pass of row i into `row`.
        let zrow = |d: usize| &s.zb[d * nx..(d + 1) * nx];
        match k.wy {
            Some(w) => {
                let rows: Vec<&[f32]> = (0..w.len()).map(|d| zrow(i + d)).collect();
                sym_rows(&rows, w, as_uninit(&mut s.row));
            }
            None => s.row.copy_from_slice(zrow(i + ry)),
        }
        // x pass of columns xs into the output.
        match k.wx {
            Some(w) => {
                // ext[t] is the row at x0 + t − rx, reflected at the ends (only the ends need
                // the index arithmetic).
                let first = x0 as isize - rx as isize;
                let (a, b) =
                    ((-first).clamp(0, s.ext.len() as isize) as usize, ((nx as isize - first).clamp(0, s.ext.len() as isize)) as usize);
                let b = b.max(a);
                for (t, e) in s.ext[..a].iter_mut().enumerate() {
                    *e = s.row[reflect(first + t as isize, nx as isize)];
                }
                s.ext[a..b].copy_from_slice(&s.row[(first + a as isize) as usize..(first + b as isize) as usize]);
                for (t, e) in s.ext[b..].iter_mut().enumerate() {
                    *e = s.row[reflect(first + (b + t) as isize, nx as isize)];
                }
                let rows: Vec<&[f32]> = (0..w.len()).map(|d| &s.ext[d..d + onx]).collect();
                sym_rows(&rows, w, orow);
            }
            None => {
                for (o, &v) in orow.iter_mut().zip(&s.row[at.xs.clone()]) {
                    o.write(v);
                }
            }
        }
    }
}

/// The image as float32 (`astype(float32)`).
pub fn to_f32(d: &Data) -> Result<Array3<f32>, String> {
    use crate::util::map3;
    Ok(match d {
        Data::U8(a) => map3(a, f32::from),
        Data::U16(a) => map3(a, f32::from),
        Data::U32(a) => map3(a, |v| v as f32),
        Data::F32(a) => map3(a, |v| v),
        Data::Rgb8(_) | Data::Rgb16(_) => return Err("RGB input (add a grayscale stage)".into()),
    })
}

/// Normalised Gaussian weights for offsets -r..=r.
pub fn kernel(sigma: f64, r: usize) -> Vec<f64> {
    let s2 = sigma * sigma;
    let w: Vec<f64> = (-(r as i64)..=r as i64).map(|x| (-0.5 / s2 * (x * x) as f64).exp()).collect();
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|v| v / sum).collect()
}

/// `reflect` index for i in [-n·k, n·(k+1)).
fn reflect(i: isize, n: isize) -> usize {
    let period = 2 * n;
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - 1 - m;
    }
    m as usize
}

/// Gaussian smoothing of a whole float32 volume ([`smooth`] on all of it); 2D images
/// (`ndim == 2`) skip the z axis.
pub fn gaussian(a: Array3<f32>, sigma: [f64; 3], truncate: f64, ndim: u8) -> Array3<f32> {
    let (nz, ny, nx) = a.dim();
    fused(&a, sigma, truncate, ndim, ([0, 0, 0], [nz, ny, nx]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gaussian as scipy runs it, one whole-volume pass per axis (z, y, x), each storing
    /// float32: the reference the fused passes must equal bit for bit.
    fn separate_passes(mut a: Array3<f32>, sigma: [f64; 3], truncate: f64, ndim: u8) -> Array3<f32> {
        let first = if ndim == 2 { 1 } else { 0 };
        for axis in first..3 {
            let r = radius(sigma[axis], truncate);
            if sigma[axis] <= 1e-15 || r == 0 || a.is_empty() {
                continue;
            }
            let w = kernel(sigma[axis], r);
            let src = a.clone();
            let n = a.len_of(Axis(axis)) as isize;
            ndarray::Zip::indexed(&mut a).for_each(|(z, y, x), o| {
                let at = |d: isize| {
                    let mut i = [z, y, x];
                    i[axis] = reflect(i[axis] as isize + d, n);
                    src[i] as f64
                };
                let mut acc = at(0) * w[r];
                for j in (1..=r as isize).rev() {
                    acc += (at(-j) + at(j)) * w[r - j as usize];
                }
                *o = acc as f32;
            });
        }
        a
    }

    #[test]
    fn a_region_equals_the_crop_of_the_whole() {
        let a = ndarray::Array3::from_shape_fn((9, 11, 13), |(z, y, x)| ((z * 31 + y * 7 + x * 13) % 17) as f32 * 1.5);
        let whole = gaussian(a.clone(), [1.0, 0.7, 1.3], 4.0, 3);
        let d = Data::F32(a.clone());
        for (lo, hi) in [([0, 0, 0], [9, 11, 13]), ([2, 3, 4], [7, 8, 9]), ([0, 5, 0], [1, 6, 13]), ([8, 0, 12], [9, 11, 13])] {
            let r = smooth(&d, [1.0, 0.7, 1.3], 4.0, 3, (lo, hi)).unwrap();
            let c = whole.slice(ndarray::s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]]);
            assert_eq!(r, c, "{lo:?}..{hi:?}");
        }
        // 2D: the z axis is not smoothed, only cut.
        let p = a.slice(ndarray::s![0..1, .., ..]).to_owned();
        let whole = gaussian(p.clone(), [1.0, 1.0, 1.0], 4.0, 2);
        let r = smooth(&Data::F32(p), [1.0, 1.0, 1.0], 4.0, 2, ([0, 2, 3], [1, 9, 10])).unwrap();
        assert_eq!(r, whole.slice(ndarray::s![.., 2..9, 3..10]));
    }

    /// The fused gaussian gives, bit for bit, what scipy's separate whole-volume passes give
    /// (cropped to the region), for every input dtype, region, thread count (which changes how
    /// planes are cut into row blocks), 2D and 3D, and axes left unsmoothed.
    #[test]
    fn fused_equals_separate_passes() {
        let mut rng = crate::stats::kmeans::SplitMix::new(7);
        let mut next = move || rng.next_u64();
        for case in 0..60 {
            let dims = [1 + (next() % 9) as usize, 1 + (next() % 23) as usize, 1 + (next() % 19) as usize];
            let ndim = if dims[0] == 1 && case % 2 == 0 { 2 } else { 3 };
            let sig = |n: u64| [0.0, 0.3, 0.8, 1.0, 1.7, 3.0][(n % 6) as usize];
            let sigma = [sig(next()), sig(next()), sig(next())];
            let lo: [usize; 3] = std::array::from_fn(|i| (next() % dims[i] as u64) as usize);
            let hi: [usize; 3] = std::array::from_fn(|i| lo[i] + 1 + (next() % (dims[i] - lo[i]) as u64) as usize);
            let shape = (dims[0], dims[1], dims[2]);
            let raw: Vec<u64> = (0..dims.iter().product::<usize>()).map(|_| next()).collect();
            let data = match case % 4 {
                0 => Data::U8(Array3::from_shape_vec(shape, raw.iter().map(|v| *v as u8).collect()).unwrap()),
                1 => Data::U16(Array3::from_shape_vec(shape, raw.iter().map(|v| *v as u16).collect()).unwrap()),
                2 => Data::U32(Array3::from_shape_vec(shape, raw.iter().map(|v| *v as u32).collect()).unwrap()),
                _ => Data::F32(Array3::from_shape_vec(shape, raw.iter().map(|v| (*v % 100_000) as f32 * 0.37 - 9000.0).collect()).unwrap()),
            };
            let whole = separate_passes(to_f32(&data).unwrap(), sigma, 4.0, ndim);
            let want = whole.slice(ndarray::s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]]);
            for threads in [1, 3, 8] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let got = pool.install(|| smooth(&data, sigma, 4.0, ndim, (lo, hi)).unwrap());
                let same = got.iter().zip(want.iter()).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(got.dim() == want.dim() && same, "case {case}: {dims:?} σ {sigma:?} {lo:?}..{hi:?} ndim {ndim} threads {threads}");
            }
        }
    }

    /// Float32 sums stay within their bound of float64's, for every input type (u32 values
    /// beyond float32's integers, f32 values of both signs and magnitudes from 10⁻³⁰ to 10³⁰),
    /// σ per axis, 2D and 3D, whole and cropped; and come near it (the bound is not so loose as
    /// to be useless). No bound for input that is not finite.
    #[test]
    fn float32_sums_stay_within_their_bound() {
        let mut rng = crate::stats::kmeans::SplitMix::new(11);
        let mut next = move || rng.next_u64();
        let mut worst = 0f64;
        for case in 0..48 {
            let dims = [1 + (next() % 7) as usize, 1 + (next() % 29) as usize, 1 + (next() % 37) as usize];
            let ndim = if dims[0] == 1 && case % 2 == 0 { 2 } else { 3 };
            let sig = |n: u64| [0.0, 0.5, 1.0, 1.7, 3.0][(n % 5) as usize];
            let sigma = [sig(next()), sig(next()), sig(next())];
            let lo: [usize; 3] = std::array::from_fn(|i| (next() % dims[i] as u64) as usize);
            let hi: [usize; 3] = std::array::from_fn(|i| lo[i] + 1 + (next() % (dims[i] - lo[i]) as u64) as usize);
            let shape = (dims[0], dims[1], dims[2]);
            let raw: Vec<u64> = (0..dims.iter().product::<usize>()).map(|_| next()).collect();
            let scale = [1e-30f32, 1.0, 3.7e4, 1e30][case / 4 % 4];
            let data = match case % 4 {
                0 => Data::U8(Array3::from_shape_vec(shape, raw.iter().map(|v| *v as u8).collect()).unwrap()),
                1 => Data::U16(Array3::from_shape_vec(shape, raw.iter().map(|v| *v as u16).collect()).unwrap()),
                2 => Data::U32(Array3::from_shape_vec(shape, raw.iter().map(|v| *v as u32).collect()).unwrap()),
                _ => Data::F32(
                    Array3::from_shape_vec(shape, raw.iter().map(|v| ((*v % 2001) as f32 / 1000.0 - 1.0) * scale).collect()).unwrap(),
                ),
            };
            let exact = smooth(&data, sigma, 4.0, ndim, (lo, hi)).unwrap();
            let (fast, bound) = smooth_f32(&data, sigma, 4.0, ndim, (lo, hi)).expect("finite input has a bound");
            assert_eq!(fast.dim(), exact.dim());
            for (f, e) in fast.iter().zip(exact.iter()) {
                let d = (*f as f64 - *e as f64).abs();
                assert!(d <= bound, "case {case}: {dims:?} σ {sigma:?} {lo:?}..{hi:?}: {f} against {e}, bound {bound}");
                if bound > 1e-39 {
                    worst = worst.max(d / bound);
                }
            }
        }
        assert!(worst > 1e-2, "the bound is far looser than the differences: {worst}");
        let mut nan = Array3::from_elem((3, 4, 5), 1.0f32);
        nan[[1, 1, 1]] = f32::NAN;
        assert!(smooth_f32(&Data::F32(nan), [1.0; 3], 4.0, 3, ([0; 3], [3, 4, 5])).is_none());
    }

    #[test]
    fn reflect_indices() {
        let got: Vec<usize> = (-5..9).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0]);
        assert_eq!(reflect(-3, 1), 0);
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        // The vector versions of the gaussian only widen vectors (no FMA): their results are
        // the plain loops', bit for bit, on u8 and f32 volumes, 2D and 3D, whole and cropped.
        let mut next = crate::util::test_rng(99);
        let u8s = Array3::from_shape_fn((7, 33, 41), |_| (next() % 256) as u8);
        let f32s = Array3::from_shape_fn((5, 19, 67), |_| (next() % 100_000) as f32 / 7.0);
        let isas = Isa::available();
        let bits = |a: Array3<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        for (sigma, ndim) in [([1.0, 1.0, 1.0], 3), ([0.0, 1.5, 2.5], 2), ([2.0, 0.7, 1.3], 3)] {
            let whole = |d: [usize; 3]| ([0; 3], d);
            let crop = ([1, 2, 3], [4, 15, 30]);
            let want_u8 = bits(fused_with::<_, f64>(&u8s, sigma, 4.0, ndim, crop, Isa::plain()));
            let want_f32 = bits(fused_with::<_, f64>(&f32s, sigma, 4.0, ndim, whole([5, 19, 67]), Isa::plain()));
            for &isa in &isas {
                assert_eq!(bits(fused_with::<_, f64>(&u8s, sigma, 4.0, ndim, crop, isa)), want_u8, "{isa:?} u8 σ {sigma:?}");
                assert_eq!(
                    bits(fused_with::<_, f64>(&f32s, sigma, 4.0, ndim, whole([5, 19, 67]), isa)),
                    want_f32,
                    "{isa:?} f32 σ {sigma:?}"
                );
            }
        }
    }

    #[test]
    fn kernel_matches_scipy_radius_and_sum() {
        assert_eq!(radius(1.0, 4.0), 4);
        assert_eq!(radius(1.5, 4.0), 6);
        assert_eq!(radius(0.1, 4.0), 0);
        let k = kernel(1.0, 4);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        // numpy: p = exp(-x²/2) for x in -4..=4; (p / p.sum())[4]
        assert!((k[4] - 0.398_943_469_356_097_76).abs() < 1e-15);
    }

    #[test]
    fn constant_stays_constant_and_impulse_spreads() {
        let a = Array3::from_elem((3, 5, 5), 7.0f32);
        let g = gaussian(a, [1.0; 3], 4.0, 3);
        assert!(g.iter().all(|v| (v - 7.0).abs() < 1e-5));
        let mut b = Array3::zeros((1, 9, 9));
        b[[0, 4, 4]] = 1.0f32;
        let g = gaussian(b, [1.0; 3], 4.0, 2);
        let s: f32 = g.iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
        assert!((g[[0, 4, 3]] - g[[0, 3, 4]]).abs() < 1e-7);
        assert!(g[[0, 4, 4]] > g[[0, 4, 3]]);
    }

    #[test]
    fn physical_sigma_uses_spacing() {
        let g: Gaussian = serde_yaml::from_str("{sigma: [2, 1, 1], sigma_unit: physical}").unwrap();
        assert_eq!(g.sigma_voxels([2.0, 0.5, 0.25]), [1.0, 2.0, 4.0]);
        let bad: Gaussian = serde_yaml::from_str("{sigma: -1}").unwrap();
        assert_eq!(bad.check()[0].field, "sigma");
    }
}

/// Sizes per axis: an odd integer, or `[z, y, x]` / `[y, x]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Sizes {
    One(u32),
    Many(Vec<u32>),
}

impl Sizes {
    pub fn zyx(&self) -> Option<[usize; 3]> {
        match self {
            Sizes::One(v) => Some([*v as usize; 3]),
            Sizes::Many(v) if v.len() == 3 => Some([v[0] as usize, v[1] as usize, v[2] as usize]),
            Sizes::Many(v) if v.len() == 2 => Some([1, v[0] as usize, v[1] as usize]),
            Sizes::Many(_) => None,
        }
    }
    /// The sizes used on an image: z is 1 for 2D images.
    fn for_ndim(&self, ndim: u8) -> [usize; 3] {
        let mut s = self.zyx().unwrap_or([1; 3]);
        if ndim == 2 {
            s[0] = 1;
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rank {
    Mean,
    Median,
    Minimum,
    Maximum,
}

/// Parameters of the window filters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowParams {
    #[serde(default = "default_input")]
    pub input: String,
    pub size: Sizes,
}

const WINDOW_PARAMS: &[ParamDoc] = &[
    ParamDoc { name: "input", ty: "stage (image)", default: Some("image"), doc: "The image to filter." },
    ParamDoc {
        name: "size",
        ty: "odd integer, or [z, y, x] / [y, x]",
        default: None,
        doc: "Window size per axis, in voxels (1 leaves an axis alone).",
    },
];

macro_rules! window_op {
    ($ty:ident, $info:ident, $name:literal, $rank:expr, $summary:literal, $doc:literal) => {
        #[derive(Debug, Clone, Deserialize, Serialize)]
        #[serde(transparent)]
        pub struct $ty(pub WindowParams);

        pub static $info: OpInfo = OpInfo {
            name: $name,
            family: "filters",
            version: 1,
            output: Kind::Image,
            same_kind: false,
            summary: $summary,
            doc: $doc,
            params: WINDOW_PARAMS,
            build: build::<$ty>,
            fields: fields_of::<WindowParams>,
            examples: &["input: {image}, size: 3", "input: {image}, size: [3, 1, 3]"],
        };

        impl Op for $ty {
            fn info(&self) -> &'static OpInfo {
                &$info
            }
            fn inputs(&self) -> Vec<Input> {
                vec![Input { role: "input", stage: self.0.input.clone(), accepts: &[Kind::Image] }]
            }
            fn halo(&self) -> Halo {
                Halo::Local(self.0.size.zyx().unwrap_or([1; 3]).map(|s| s / 2))
            }
            fn check(&self) -> Vec<ParamIssue> {
                match self.0.size.zyx() {
                    None => vec![ParamIssue::new("size", "`size` is an odd integer, [y, x] or [z, y, x]")],
                    Some(s) if s.iter().any(|v| v % 2 == 0) => {
                        vec![ParamIssue::new("size", format!("window sizes must be odd (centred windows), found {s:?}"))]
                    }
                    Some(s) if s.iter().any(|&v| v > 1001) => vec![ParamIssue::new("size", "window sizes above 1001 are surely a mistake")],
                    _ => Vec::new(),
                }
            }
            fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
                expect_image(&inputs[0], "input", $name)?;
                let s = self.0.size.for_ndim(inputs[0].ndim);
                if let Some(k) = (0..3).find(|&k| s[k] > inputs[0].shape[k] && s[k] > 1) {
                    return Err(ParamIssue::new(
                        "size",
                        format!(
                            "window of {} voxels along {} is larger than the image ({} voxels)",
                            s[k],
                            ["z", "y", "x"][k],
                            inputs[0].shape[k]
                        ),
                    ));
                }
                Ok(inputs[0].clone())
            }
            fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
                let Value::Image(d) = inputs[0] else { return Err(format!("{}: input is not an image", $name)) };
                Ok(Value::Image(window_filter(d, self.0.size.for_ndim(ctx.ndim), $rank)?))
            }
            fn params_json(&self) -> serde_json::Value {
                serde_json::to_value(&self.0).unwrap_or_default()
            }
        }
    };
}

window_op!(
    Mean,
    MEAN,
    "mean",
    Rank::Mean,
    "Image → image (same type): mean over a box window (scipy.ndimage.uniform_filter).",
    "Reproduces scipy.ndimage.uniform_filter(image, size, mode='reflect') exactly: one axis at \
     a time (z, y, x), each a running float64 window sum divided by the size, the result stored \
     in the image's type after every axis (integers truncate toward zero, as C casts do)."
);
window_op!(
    Median,
    MEDIAN,
    "median",
    Rank::Median,
    "Image → image (same type): median over a box window (scipy.ndimage.median_filter).",
    "The middle value of the window's voxels (odd sizes, so the median is one of them); \
     borders mirror the image (mode='reflect'). Equals scipy.ndimage.median_filter. 8-bit \
     images take a sliding histogram (the cost per voxel grows with the window's z·y face, \
     not its volume: 3³ and 5³ windows run 25× and 60× scipy's speed at 256³)."
);
window_op!(
    Minimum,
    MINIMUM,
    "minimum",
    Rank::Minimum,
    "Image → image (same type): minimum over a box window (scipy.ndimage.minimum_filter).",
    "Separable running minimum with mirrored borders (mode='reflect'); equals scipy.ndimage.minimum_filter."
);
window_op!(
    Maximum,
    MAXIMUM,
    "maximum",
    Rank::Maximum,
    "Image → image (same type): maximum over a box window (scipy.ndimage.maximum_filter).",
    "Separable running maximum with mirrored borders (mode='reflect'); equals scipy.ndimage.maximum_filter."
);

/// A value type the window filters work on.
pub trait Sample: Copy + PartialOrd + Send + Sync + 'static {
    fn to_f64(self) -> f64;
    /// Conversion as a C cast from double (truncation toward zero for integers).
    fn from_f64(v: f64) -> Self;
}
macro_rules! sample {
    ($t:ty) => {
        impl Sample for $t {
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
        }
    };
}
sample!(u8);
sample!(u16);
sample!(u32);
sample!(f32);

/// Applies a window filter along one axis (mean, minimum, maximum are separable).
fn separable<T: Sample>(a: &mut Array3<T>, axis: usize, size: usize, rank: Rank) {
    if size <= 1 || a.len_of(Axis(axis)) == 0 {
        return;
    }
    let n = a.len_of(Axis(axis));
    let (h1, h2) = (size / 2, size - size / 2 - 1);
    Zip::from(a.lanes_mut(Axis(axis))).par_for_each(|mut lane| {
        let ext: Vec<T> = (-(h1 as isize)..(n + h2) as isize).map(|i| lane[reflect(i, n as isize)]).collect();
        match rank {
            Rank::Mean => {
                let d = size as f64;
                let mut tmp = 0.0f64;
                for v in &ext[..size] {
                    tmp += v.to_f64();
                }
                lane[0] = T::from_f64(tmp / d);
                for l in 1..n {
                    tmp += ext[l + size - 1].to_f64() - ext[l - 1].to_f64();
                    lane[l] = T::from_f64(tmp / d);
                }
            }
            Rank::Minimum | Rank::Maximum => {
                let better = |x: T, y: T| if rank == Rank::Minimum { x < y } else { x > y };
                for l in 0..n {
                    let mut m = ext[l];
                    for &v in &ext[l + 1..l + size] {
                        if better(v, m) {
                            m = v;
                        }
                    }
                    lane[l] = m;
                }
            }
            Rank::Median => unreachable!("median is not separable"),
        }
    });
}

fn median3<T: Sample>(a: &Array3<T>, s: [usize; 3]) -> Array3<T> {
    let (nz, ny, nx) = a.dim();
    let h = s.map(|v| (v / 2) as isize);
    let mut out = a.clone();
    out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(z, mut plane)| {
        let mut win: Vec<T> = Vec::with_capacity(s[0] * s[1] * s[2]);
        for y in 0..ny {
            for x in 0..nx {
                win.clear();
                for dz in -h[0]..=h[0] {
                    let zz = reflect(z as isize + dz, nz as isize);
                    for dy in -h[1]..=h[1] {
                        let yy = reflect(y as isize + dy, ny as isize);
                        for dx in -h[2]..=h[2] {
                            win.push(a[[zz, yy, reflect(x as isize + dx, nx as isize)]]);
                        }
                    }
                }
                let mid = win.len() / 2;
                win.select_nth_unstable_by(mid, |p, q| p.partial_cmp(q).unwrap_or(std::cmp::Ordering::Equal));
                plane[[y, x]] = win[mid];
            }
        }
    });
    out
}

/// The median of 8-bit images by a sliding histogram (Huang's method): along each output row the
/// window moves one voxel at a time, so only the column of `size_z × size_y` voxels leaving and
/// the one entering change the 256-bin histogram, and the median is found by stepping from the
/// previous one. The result is the same voxel value `median3` selects (the window's middle rank),
/// at a cost per voxel of twice the column height instead of a selection over the whole window.
fn median_u8(a: &Array3<u8>, s: [usize; 3]) -> Array3<u8> {
    let (nz, ny, nx) = a.dim();
    if nx == 0 || ny == 0 || nz == 0 {
        return a.clone();
    }
    let h = s.map(|v| (v / 2) as isize);
    let a = a.as_standard_layout();
    let src = a.as_slice().expect("standard layout");
    // Extended x positions: window slot i of output x is ext[x + i].
    let ext: Vec<usize> = (-h[2]..nx as isize + h[2]).map(|i| reflect(i, nx as isize)).collect();
    let rank = (s[0] * s[1] * s[2] / 2) as u32;
    let mut out = Array3::<u8>::zeros((nz, ny, nx));
    out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(z, mut plane)| {
        let plane = plane.as_slice_mut().expect("standard layout");
        let mut rows: Vec<&[u8]> = Vec::with_capacity(s[0] * s[1]);
        for y in 0..ny {
            rows.clear();
            for dz in -h[0]..=h[0] {
                let zz = reflect(z as isize + dz, nz as isize);
                for dy in -h[1]..=h[1] {
                    let yy = reflect(y as isize + dy, ny as isize);
                    let at = (zz * ny + yy) * nx;
                    rows.push(&src[at..at + nx]);
                }
            }
            let mut hist = [0u32; 256];
            for &xx in &ext[..s[2]] {
                for r in &rows {
                    hist[r[xx] as usize] += 1;
                }
            }
            // `m` is the current median and `below` the number of window values under it.
            let (mut m, mut below) = (0usize, 0u32);
            let line = &mut plane[y * nx..(y + 1) * nx];
            for x in 0..nx {
                if x > 0 {
                    let (gone, new) = (ext[x - 1], ext[x + s[2] - 1]);
                    for r in &rows {
                        let (g, n) = (r[gone] as usize, r[new] as usize);
                        hist[g] -= 1;
                        hist[n] += 1;
                        below = below - (g < m) as u32 + (n < m) as u32;
                    }
                }
                while below > rank {
                    m -= 1;
                    below -= hist[m];
                }
                while below + hist[m] <= rank {
                    below += hist[m];
                    m += 1;
                }
                line[x] = m as u8;
            }
        }
    });
    out
}

/// Mean/median/minimum/maximum over a box window of odd `size` per axis, reflect borders.
pub fn window_filter(d: &Data, size: [usize; 3], rank: Rank) -> Result<Data, String> {
    fn go<T: Sample>(a: &Array3<T>, size: [usize; 3], rank: Rank) -> Array3<T> {
        if rank == Rank::Median {
            return median3(a, size);
        }
        let mut out = a.clone();
        for (axis, &s) in size.iter().enumerate() {
            separable(&mut out, axis, s, rank);
        }
        out
    }
    Ok(match d {
        Data::U8(a) if rank == Rank::Median => Data::U8(median_u8(a, size)),
        Data::U8(a) => Data::U8(go(a, size, rank)),
        Data::U16(a) => Data::U16(go(a, size, rank)),
        Data::U32(a) => Data::U32(go(a, size, rank)),
        Data::F32(a) => Data::F32(go(a, size, rank)),
        Data::Rgb8(_) | Data::Rgb16(_) => return Err("RGB input (add a grayscale stage)".into()),
    })
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn literal_line() {
        let a = Data::U8(Array3::from_shape_vec((1, 1, 6), vec![0u8, 1, 2, 10, 255, 7]).unwrap());
        let run = |r| match window_filter(&a, [1, 1, 3], r).unwrap() {
            Data::U8(o) => o.into_raw_vec_and_offset().0,
            _ => unreachable!(),
        };
        // reflect: [0] 0 1 2 10 255 7 [7]; means truncate (scipy: 0 1 4 89 90 89).
        assert_eq!(run(Rank::Mean), vec![0, 1, 4, 89, 90, 89]);
        assert_eq!(run(Rank::Minimum), vec![0, 0, 1, 2, 7, 7]);
        assert_eq!(run(Rank::Maximum), vec![1, 2, 10, 255, 255, 255]);
        assert_eq!(run(Rank::Median), vec![0, 1, 2, 10, 10, 7]);
    }

    #[test]
    fn histogram_median_equals_selection() {
        // Random 8-bit volumes, few and many distinct values, windows from a line to 5×5×5 and
        // larger than the volume along an axis (reflected more than once).
        let mut next = crate::util::test_rng(7);
        for (shape, size, levels) in [
            ((9, 11, 13), [3, 3, 3], 256u32),
            ((9, 11, 13), [5, 5, 5], 256),
            ((6, 7, 20), [3, 5, 1], 4),
            ((1, 17, 19), [1, 5, 3], 256),
            ((4, 3, 2), [5, 5, 5], 3),
            ((3, 8, 1), [3, 3, 3], 256),
        ] {
            let n = shape.0 * shape.1 * shape.2;
            let v: Vec<u8> = (0..n).map(|_| (next() % levels) as u8).collect();
            let a = Array3::from_shape_vec(shape, v).unwrap();
            assert_eq!(median_u8(&a, size), median3(&a, size), "shape {shape:?} size {size:?}");
        }
    }

    #[test]
    fn even_sizes_are_rejected() {
        let m: Median = serde_yaml::from_str("{size: [3, 4, 3]}").unwrap();
        assert_eq!(m.check()[0].field, "size");
        let ok: Mean = serde_yaml::from_str("{size: 5}").unwrap();
        assert!(ok.check().is_empty());
    }
}
