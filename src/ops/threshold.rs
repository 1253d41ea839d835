//! Thresholding: image → mask, with a fixed value or Otsu's method as scikit-image computes it.

use ndarray::Array3;
use serde::{Deserialize, Serialize};

use super::slab::{self, Slabs};
use super::{Ctx, Halo, Input, Kind, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, default_input, expect_image, fields_of};
use crate::io::Data;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Fixed,
    Otsu,
    Li,
    Triangle,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    #[serde(default = "default_input")]
    pub input: String,
    pub method: Method,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub invert: bool,
    #[serde(default = "default_nbins")]
    pub nbins: u32,
}

fn default_nbins() -> u32 {
    256
}

pub static THRESHOLD: OpInfo = OpInfo {
    name: "threshold",
    family: "threshold",
    version: 1,
    output: Kind::Mask,
    same_kind: false,
    summary: "Image → mask: voxels above a fixed or automatic (Otsu, Li, triangle) threshold.",
    doc: "Foreground is `input > threshold` (`input <= threshold` with `invert: true`).\n\
          `method: otsu` reproduces skimage.filters.threshold_otsu: integer images use one histogram \
          bin per value between the image's minimum and maximum, float images `nbins` bins over \
          [min, max]; NaN voxels are left out of the histogram and are never foreground. \
          An image with a single value has that value as threshold (so an empty mask).\n\
          `method: triangle` reproduces skimage.filters.threshold_triangle on the same histogram. \
          `method: li` reproduces skimage.filters.threshold_li (minimum cross entropy, iterated \
          from the mean to a tolerance of 0.5 grey levels): exactly on integer images; on float \
          images tessera sums in float64 where scikit-image sums float32, so the threshold agrees \
          to about 1e-6 relative.\n\
          Otsu needs the whole image's histogram: in tiled runs it is a reduction (halo `global`).",
    params: &[
        ParamDoc { name: "input", ty: "stage", default: Some("image"), doc: "The image to threshold." },
        ParamDoc {
            name: "method",
            ty: "fixed | otsu",
            default: None,
            doc: "`fixed` uses `value`; `otsu` maximises the between-class variance.",
        },
        ParamDoc {
            name: "value",
            ty: "number",
            default: None,
            doc: "The threshold for `method: fixed` (required there, not allowed otherwise).",
        },
        ParamDoc { name: "invert", ty: "bool", default: Some("false"), doc: "Foreground is `input <= threshold` instead." },
        ParamDoc {
            name: "nbins",
            ty: "integer, 2 to 16777216",
            default: Some("256"),
            doc: "Histogram bins for float images (integer images always use one bin per value).",
        },
    ],
    build: build::<Threshold>,
    fields: fields_of::<Threshold>,
    examples: &[
        "input: {image}, method: otsu",
        "input: {image}, method: li",
        "input: {image}, method: triangle, invert: true",
        "input: {image}, method: fixed, value: 120",
    ],
};

impl Op for Threshold {
    fn info(&self) -> &'static OpInfo {
        &THRESHOLD
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Image] }]
    }
    fn halo(&self) -> Halo {
        match self.method {
            Method::Fixed => Halo::Local([0, 0, 0]),
            Method::Otsu | Method::Li | Method::Triangle => Halo::Global,
        }
    }
    fn check(&self) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        match (self.method, self.value) {
            (Method::Fixed, None) => v.push(ParamIssue::new("method", "`method: fixed` needs a `value`")),
            (Method::Fixed, Some(x)) if !x.is_finite() => v.push(ParamIssue::new("value", "`value` must be a finite number")),
            (Method::Otsu | Method::Li | Method::Triangle, Some(_)) => {
                v.push(ParamIssue::new("value", "`value` is only used with `method: fixed`").help("remove `value`, or set `method: fixed`"))
            }
            _ => {}
        }
        if self.nbins < 2 {
            v.push(ParamIssue::new("nbins", format!("`nbins` must be at least 2, found {}", self.nbins)));
        } else if self.nbins > 1 << 24 {
            v.push(ParamIssue::new("nbins", format!("`nbins` must be at most 16777216, found {}", self.nbins)));
        }
        v
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        expect_image(&inputs[0], "input", "threshold")?;
        Ok(Meta { kind: Kind::Mask, dtype: None, ..inputs[0].clone() })
    }
    fn run(&self, inputs: &[&Value], _ctx: &Ctx) -> Result<Value, String> {
        let Value::Image(data) = inputs[0] else { return Err("threshold: input is not an image".into()) };
        let t = match self.method {
            Method::Fixed => self.value.unwrap_or(0.0),
            Method::Otsu => otsu(data, self.nbins as usize)?,
            Method::Li => li(data)?,
            Method::Triangle => triangle(data, self.nbins as usize)?,
        };
        Ok(Value::Mask(apply(data, t, self.invert)?))
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn streams(&self, _inputs: &[Meta]) -> Result<(), String> {
        Ok(())
    }
    /// Passes over the image for its histogram (one for integer images, two for float ones:
    /// range, then bins; Li on float images sorts and iterates, see [`li_streamed`]); applying
    /// the value found is then local (a fixed threshold).
    fn stream(&self, io: &mut dyn Slabs, _ctx: &Ctx) -> Result<slab::Outcome, String> {
        let float = io.input(0).meta().dtype == Some(crate::io::DType::F32);
        let planes = io.planes(0);
        let nz = io.input(0).shape()[0];
        let t = match self.method {
            Method::Fixed => self.value.unwrap_or(0.0),
            Method::Li if float => li_streamed(io)?,
            m => {
                let input = io.input(0);
                streamed(m, self.nbins as usize, float, &mut |visit| {
                    for (z0, z1) in slab::ranges(nz, planes) {
                        let Value::Image(d) = input.read(z0, z1)? else { return Err("threshold: input is not an image".into()) };
                        visit(&d)?;
                    }
                    Ok(())
                })?
            }
        };
        // What is left is local: the same threshold at the value found.
        Ok(slab::Outcome::Local(Box::new(Threshold { method: Method::Fixed, value: Some(t), ..self.clone() })))
    }
    fn reads_planes(&self, first: &Meta) -> bool {
        self.method == Method::Otsu && self.nbins <= 256 && first.kind == Kind::Image && first.dtype == Some(crate::io::DType::F32)
    }
    fn run_planes(&self, first: &dyn slab::Volume, _rest: &[&Value], _ctx: &Ctx) -> Result<Value, String> {
        Ok(Value::Mask(otsu_by_planes(first, self.nbins as usize, self.invert, PLANES_BYTES)?))
    }
    fn phased(&self) -> Option<&dyn slab::Phased> {
        // Li iterates over a float image's values (see `li_streamed`): whole, in one task.
        matches!(self.method, Method::Otsu | Method::Triangle).then_some(self as &dyn slab::Phased)
    }
}

/// Bytes of float planes [`otsu_by_planes`] reads at a time.
const PLANES_BYTES: usize = 16 << 20;

/// The planes a range must read exactly, from a volume's bounded reads
/// ([`slab::Volume::read_bounded`]): the first (it holds the first value), and those whose
/// bounded minimum or maximum is within twice the bound of the bounded volume's. The voxel of
/// the exact minimum v lies in such a plane: its bounded value is at most v + ε, and every
/// voxel's bounded value at least v − ε. `None` when a read has no bound.
fn undecided_planes(v: &dyn slab::Volume, planes: usize) -> Option<Vec<bool>> {
    use rayon::prelude::*;
    let [nz, ny, nx] = v.shape();
    let plane = ny * nx;
    let (mut per_plane, mut eps) = (Vec::with_capacity(nz), 0f64);
    for (z0, z1) in slab::ranges(nz, planes) {
        let Some((Value::Image(Data::F32(a)), e)) = v.read_bounded(z0, z1) else { return None };
        let s = a.as_slice().filter(|s| s.len() == (z1 - z0) * plane)?;
        eps = eps.max(e);
        // Bounded reads are of finite input, so their sums are finite.
        per_plane.par_extend(s.par_chunks(plane.max(1)).map(min_max_of_finite));
    }
    if per_plane.len() != nz || !eps.is_finite() {
        return None;
    }
    let lo = per_plane.iter().fold(f64::INFINITY, |m, p| m.min(p.0 as f64));
    let hi = per_plane.iter().fold(f64::NEG_INFINITY, |m, p| m.max(p.1 as f64));
    Some(per_plane.iter().enumerate().map(|(z, p)| z == 0 || p.0 as f64 <= lo + 2.0 * eps || p.1 as f64 >= hi - 2.0 * eps).collect())
}

/// The range of a volume read by planes ([`FloatRange`], as reading every plane gives it): exact
/// reads, `planes` planes at most at a time, of the planes its bounded reads leave undecided
/// ([`undecided_planes`]), or of every plane when it has none.
fn range_by_planes(
    v: &dyn slab::Volume,
    planes: usize,
    read: &dyn Fn(usize, usize) -> Result<Array3<f32>, String>,
) -> Result<FloatRange, String> {
    let nz = v.shape()[0];
    let exact = undecided_planes(v, planes).unwrap_or_else(|| vec![true; nz]);
    let mut range = FloatRange::default();
    let mut z = 0;
    while z < nz {
        if !exact[z] {
            z += 1;
            continue;
        }
        let mut end = z + 1;
        while end < nz && exact[end] && end - z < planes.max(1) {
            end += 1;
        }
        range.see(&read(z, end)?);
        z = end;
    }
    Ok(range)
}

/// Otsu's threshold of a float image and its mask, the image read a few planes at a time and
/// never whole (each read computes the planes again). A pass finds the range; a second puts
/// every voxel in its bin, keeping the bin in the mask's own buffer and whether the voxel lies
/// above its bin's centre in a bit beside it, and counts the bins. The threshold is a bin's
/// centre, so the bins decide `x > t` for every voxel outside the threshold's bin, and the bit
/// decides it inside. Equal to [`otsu`] then [`apply`] bit for bit. Where that argument does not
/// hold (values that are not finite, bins too narrow for their centres to fall inside them, a
/// value outside the bin numpy's correction gives), a third pass compares every voxel with the
/// threshold.
/// `read_bytes`: how many bytes of planes a read asks for.
pub fn otsu_by_planes(v: &dyn slab::Volume, nbins: usize, invert: bool, read_bytes: usize) -> Result<Array3<u8>, String> {
    use rayon::prelude::*;
    let [nz, ny, nx] = v.shape();
    let plane = ny * nx;
    let planes = (read_bytes / (plane * 4).max(1)).clamp(1, nz.max(1));
    let read = |z0: usize, z1: usize| -> Result<Array3<f32>, String> {
        match v.read(z0, z1)? {
            Value::Image(Data::F32(a)) if a.is_standard_layout() => Ok(a),
            Value::Image(Data::F32(a)) => Ok(a.as_standard_layout().to_owned()),
            _ => Err("threshold: expected a float image".into()),
        }
    };
    let range = range_by_planes(v, planes, &read)?;
    let mut code: Vec<u8> = crate::util::zeroed(nz * plane);
    // A third pass, comparing every voxel with `t`.
    let compare = |code: &mut Vec<u8>, t: f64| -> Result<(), String> {
        for (z0, z1) in slab::ranges(nz, planes) {
            let m = apply(&Data::F32(read(z0, z1)?), t, invert)?;
            code[z0 * plane..z1 * plane].copy_from_slice(m.as_slice().expect("standard layout"));
        }
        Ok(())
    };
    let Some(bins) = range.bins(nbins).filter(|_| nbins <= 256) else {
        let t = float_finish(Method::Otsu, &range, None, nbins)?;
        compare(&mut code, t)?;
        return Ok(Array3::from_shape_vec((nz, ny, nx), code).expect("shape"));
    };
    let centers = bins.centers();
    // Voxels per parallel piece: a multiple of 64, so that pieces own whole words of bits.
    const PIECE: usize = 1 << 16;
    let mut above = vec![0u64; (nz * plane).div_ceil(64)];
    let mut counts = vec![0u64; nbins];
    let mut decided = true;
    for (z0, z1) in slab::ranges(nz, planes) {
        let a = read(z0, z1)?;
        let vals = a.as_slice().expect("standard layout");
        let (s, e) = (z0 * plane, z1 * plane);
        // Pieces of [s, e) cut at multiples of PIECE: each owns the words of bits of its voxels
        // (a word the slab shares with the slab before or after is or-ed into, one slab at a
        // time).
        let mut pieces = Vec::new();
        let (mut code_rest, mut bits_rest) = (&mut code[s..e], &mut above[s / 64..e.div_ceil(64)]);
        let mut at = s;
        while at < e {
            let end = ((at / PIECE + 1) * PIECE).min(e);
            let (c, cr) = std::mem::take(&mut code_rest).split_at_mut(end - at);
            let (b, br) = std::mem::take(&mut bits_rest).split_at_mut((end - 1) / 64 + 1 - at / 64);
            pieces.push((at, c, b));
            (code_rest, bits_rest, at) = (cr, br, end);
        }
        let results: Vec<(Vec<u64>, bool)> = pieces
            .into_par_iter()
            .map(|(at, c, b)| {
                let mut k = vec![0u64; nbins];
                let ok = bins.place(&centers, &vals[at - s..at - s + c.len()], c, b, at % 64, &mut k);
                (k, ok)
            })
            .collect();
        for (k, ok) in results {
            counts.iter_mut().zip(k).for_each(|(x, y)| *x += y);
            decided &= ok;
        }
    }
    let t = otsu_finish(&counts, &centers, Some(range.first_number.map(f64::from_bits)))?;
    // The threshold's bin: foreground is every bin above it, and the voxels above its centre.
    let k = centers.iter().position(|&c| c == t).filter(|&k| {
        let (lo, hi) = (bins.edges[k] as f64, bins.edges[k + 1] as f64);
        lo <= t && (t < hi || k + 1 == nbins)
    });
    match k {
        Some(k) if decided => {
            let k = k as u8;
            // 64 voxels and their word of bits at a time: the bits spread to bytes (a byte of
            // bits at a time, from a table), then bytes only, without branches (vectorised).
            const SPREAD: [u64; 256] = {
                let mut t = [0u64; 256];
                let mut b = 0;
                while b < 256 {
                    let mut i = 0;
                    while i < 8 {
                        t[b] |= ((b as u64 >> i) & 1) << (8 * i);
                        i += 1;
                    }
                    b += 1;
                }
                t
            };
            let inv = invert as u8;
            code.par_chunks_mut(PIECE).zip(above.par_chunks(PIECE / 64)).for_each(|(c, b)| {
                for (c, &w) in c.chunks_mut(64).zip(b) {
                    let mut bits = [0u8; 64];
                    for (j, s) in bits.chunks_exact_mut(8).enumerate() {
                        s.copy_from_slice(&SPREAD[(w >> (8 * j)) as usize & 0xff].to_le_bytes());
                    }
                    for (x, &bit) in c.iter_mut().zip(&bits) {
                        *x = ((*x > k) as u8 | ((*x == k) as u8 & bit)) ^ inv;
                    }
                }
            });
        }
        _ => compare(&mut code, t)?,
    }
    Ok(Array3::from_shape_vec((nz, ny, nx), code).expect("shape"))
}

/// `x > t` (or `x <= t` inverted) as 0/1.
pub fn apply(data: &Data, t: f64, invert: bool) -> Result<Array3<u8>, String> {
    fn go<T: Copy + Send + Sync>(a: &Array3<T>, f: impl Fn(T) -> bool + Sync + Send) -> Array3<u8> {
        crate::util::map3(a, |x| f(x) as u8)
    }
    Ok(match data {
        Data::U8(a) => go(a, |x| (x as f64 > t) != invert),
        Data::U16(a) => go(a, |x| (x as f64 > t) != invert),
        Data::U32(a) => go(a, |x| (x as f64 > t) != invert),
        Data::F32(a) => match f32_at_or_below(t) {
            // `x as f64 > t` ⟺ `x > u` for every float32 x (NaN is false both ways), and the
            // float32 comparison vectorises twice as wide.
            Some(u) if invert => go(a, move |x| x <= u),
            Some(u) => go(a, move |x| x > u),
            // t is NaN: no x is above it.
            None => go(a, move |x| !x.is_nan() && invert),
        },
        Data::Rgb8(_) | Data::Rgb16(_) => return Err("threshold: RGB input (add a grayscale stage)".into()),
    })
}

/// The largest float32 `u` (possibly ±inf) with `u as f64 <= t`, so that `x as f64 > t` ⟺
/// `x > u` for every float32 `x`; `None` when `t` is NaN.
fn f32_at_or_below(t: f64) -> Option<f32> {
    if t.is_nan() {
        return None;
    }
    let c = t as f32; // nearest (±inf beyond the float32 range)
    Some(if (c as f64) <= t { c } else { c.next_down() })
}

/// Otsu's threshold, computed exactly as scikit-image 0.26 does (float32 class weights,
/// float64 class means, first maximum).
pub fn otsu(data: &Data, nbins: usize) -> Result<f64, String> {
    let (counts, centers): (Vec<u64>, Vec<f64>) = match data {
        Data::U8(a) => int_hist(a.iter().map(|&v| v as u32)),
        Data::U16(a) => int_hist(a.iter().map(|&v| v as u32)),
        Data::U32(a) => int_hist(a.iter().copied()),
        Data::F32(a) => float_hist_arr(a, nbins),
        Data::Rgb8(_) | Data::Rgb16(_) => return Err("otsu: RGB input".into()),
    };
    let first_number = match data {
        Data::F32(a) => Some(a.iter().copied().find(|v| !v.is_nan()).map(f64::from)),
        _ => None,
    };
    otsu_finish(&counts, &centers, first_number)
}

/// Otsu from a histogram; `first_number` is `Some(first non-NaN value)` for float images.
fn otsu_finish(counts: &[u64], centers: &[f64], first_number: Option<Option<f64>>) -> Result<f64, String> {
    if counts.is_empty() {
        return Err("otsu: the image has no finite values".into());
    }
    if counts.iter().filter(|&&c| c > 0).count() == 1 {
        // A single value: scikit-image returns it.
        let i = counts.iter().position(|&c| c > 0).unwrap_or(0);
        return Ok(first_number.flatten().unwrap_or(centers[i]));
    }
    Ok(otsu_from_hist(counts, centers, first_number.is_some()))
}

/// Values of an integer image as u32, or `None` for float and RGB data.
fn int_values(data: &Data) -> Option<Box<dyn Iterator<Item = u32> + '_>> {
    match data {
        Data::U8(a) => Some(Box::new(a.iter().map(|&v| v as u32))),
        Data::U16(a) => Some(Box::new(a.iter().map(|&v| v as u32))),
        Data::U32(a) => Some(Box::new(a.iter().copied())),
        _ => None,
    }
}

/// Li's minimum cross-entropy threshold as scikit-image computes it.
pub fn li(data: &Data) -> Result<f64, String> {
    if let Some(values) = int_values(data) {
        let (counts, centers) = int_hist(values);
        return Ok(li_int(&counts, &centers));
    }
    li_float(data)
}

/// Li on an integer image's histogram (one bin per value present).
fn li_int(counts: &[u64], centers: &[f64]) -> f64 {
    {
        if counts.len() == 1 {
            return centers[0];
        }
        let min = centers[0];
        let n: u64 = counts.iter().sum();
        // Image minus its minimum; exact integer sums (all below 2^53 in practice).
        let total: f64 = counts.iter().zip(centers).map(|(&c, &v)| c as f64 * (v - min)).sum();
        let mut t_next = total / n as f64;
        let mut t_curr = -2.0 * 0.5;
        let w: Vec<f64> = counts.iter().map(|&c| c as f32 as f64).collect();
        while (t_next - t_curr).abs() > 0.5 {
            t_curr = t_next;
            let (mut fw, mut fs, mut bw, mut bs) = (0f64, 0f64, 0f64, 0f64);
            for (&wi, &v) in w.iter().zip(centers) {
                let c = v - min;
                if c > t_curr {
                    fw += wi;
                    fs += c * wi;
                } else {
                    bw += wi;
                    bs += c * wi;
                }
            }
            if fw == 0.0 || bw == 0.0 {
                break;
            }
            let (mean_fore, mean_back) = (fs / fw, bs / bw);
            if mean_back == 0.0 {
                break;
            }
            t_next = (mean_back - mean_fore) / (mean_back.ln() - mean_fore.ln());
        }
        t_next + min
    }
}

fn li_float(data: &Data) -> Result<f64, String> {
    let Data::F32(a) = data else { return Err("li: RGB input".into()) };
    let mut v: Vec<f64> = a.iter().filter(|x| x.is_finite()).map(|&x| x as f64).collect();
    if v.is_empty() {
        return Err("li: the image has no finite values".into());
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    if v.iter().all(|&x| x == min) {
        return Ok(min);
    }
    for x in v.iter_mut() {
        *x = (*x as f32 - min as f32) as f64;
    }
    let mut sorted = v.clone();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    let tol = sorted.windows(2).map(|p| p[1] - p[0]).fold(f64::INFINITY, f64::min) / 2.0;
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let t = li_iterate(mean, tol, &mut |see| {
        v.iter().for_each(|&x| see(x));
        Ok(())
    })?;
    Ok(t + min)
}

/// Shows every value of an image, in raster order, to the function it is given.
type ValuePass<'a> = dyn FnMut(&mut dyn FnMut(f64)) -> Result<(), String> + 'a;

/// Li's iteration from the mean of the shifted values to a tolerance `tol`; `pass` shows every
/// shifted finite value in raster order (one pass per iteration, so float64 sums are the same
/// whether the image is whole or seen a slab at a time).
fn li_iterate(mean: f64, tol: f64, pass: &mut ValuePass) -> Result<f64, String> {
    let mut t_next = mean;
    let mut t_curr = -2.0 * tol;
    while (t_next - t_curr).abs() > tol {
        t_curr = t_next;
        let (mut fn_, mut fs, mut bn, mut bs) = (0usize, 0f64, 0usize, 0f64);
        pass(&mut |x| {
            if x > t_curr {
                fn_ += 1;
                fs += x;
            } else {
                bn += 1;
                bs += x;
            }
        })?;
        if fn_ == 0 || bn == 0 {
            break;
        }
        let (mean_fore, mean_back) = (fs / fn_ as f64, bs / bn as f64);
        if mean_back == 0.0 {
            break;
        }
        t_next = (mean_back - mean_fore) / (mean_back.ln() - mean_fore.ln());
    }
    Ok(t_next)
}

/// Li on a float image seen a slab at a time, equal to [`li_float`] bit for bit: a pass for the
/// minimum; a pass that sums the shifted values in raster order and sets each slab's sorted
/// distinct values aside (the tolerance is half the smallest gap between distinct values, found
/// by merging those runs); then one pass per iteration, summing in raster order as in memory.
fn li_streamed(io: &mut dyn Slabs) -> Result<f64, String> {
    /// Values per scratch plane of a sorted run (runs are padded to whole planes).
    const WIDTH: usize = 4096;
    let nz = io.input(0).shape()[0];
    // Beside the image: its shifted values as bits, sorted.
    let planes = io.planes(4);
    let each = |io: &dyn Slabs, f: &mut dyn FnMut(&Array3<f32>)| -> Result<(), String> {
        for (z0, z1) in slab::ranges(nz, planes) {
            let Value::Image(Data::F32(a)) = io.input(0).read(z0, z1)? else { return Err("li: expected a float image".into()) };
            f(&a);
        }
        Ok(())
    };
    let (mut min, mut max, mut count) = (f64::INFINITY, f64::NEG_INFINITY, 0usize);
    each(io, &mut |a| {
        for &x in a.iter().filter(|x| x.is_finite()) {
            min = min.min(x as f64);
            max = max.max(x as f64);
            count += 1;
        }
    })?;
    if count == 0 {
        return Err("li: the image has no finite values".into());
    }
    if max == min {
        return Ok(min);
    }
    let minf = min as f32;
    // Shifted values are finite and ≥ 0, so their bit patterns sort as the values do.
    let mut runs = io.scratch("li-runs")?;
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut next_plane = 0;
    let mut total = 0f64;
    let mut failed = Ok(());
    each(io, &mut |a| {
        let mut bits: Vec<u32> = Vec::with_capacity(a.len());
        for &x in a.iter().filter(|x| x.is_finite()) {
            let v = x - minf;
            total += v as f64;
            bits.push(v.to_bits());
        }
        bits.sort_unstable();
        bits.dedup();
        if bits.is_empty() || failed.is_err() {
            return;
        }
        let n = bits.len();
        let np = n.div_ceil(WIDTH);
        bits.resize(np * WIDTH, u32::MAX);
        let chunk = Array3::from_shape_vec((np, 1, WIDTH), bits).expect("whole planes");
        failed = runs.append(&Value::Labels(chunk.into()));
        spans.push((next_plane, n));
        next_plane += np;
    })?;
    failed?;
    let gap = min_gap(runs.as_ref(), &spans, WIDTH)?;
    drop(runs);
    let t = li_iterate(total / count as f64, gap / 2.0, &mut |see| {
        each(io, &mut |a| a.iter().filter(|x| x.is_finite()).for_each(|&x| see((x - minf) as f64)))
    })?;
    Ok(t + min)
}

/// The smallest difference between consecutive distinct values of sorted, deduplicated runs of
/// non-negative f32 bit patterns (`spans`: first plane and length of each run in `runs`), by a
/// k-way merge that holds one plane of each run.
fn min_gap(runs: &dyn slab::Volume, spans: &[(usize, usize)], width: usize) -> Result<f64, String> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    struct Cursor {
        plane: usize,
        buf: Vec<u32>,
        at: usize,
        left: usize,
    }
    let load = |c: &mut Cursor| -> Result<(), String> {
        let Value::Labels(a) = runs.read(c.plane, c.plane + 1)? else { return Err("li: scratch run".into()) };
        let a = a.into_u32();
        c.buf = a.into_raw_vec_and_offset().0;
        c.plane += 1;
        c.at = 0;
        Ok(())
    };
    let mut cursors = Vec::with_capacity(spans.len());
    let mut heap = BinaryHeap::new();
    for (k, &(plane, len)) in spans.iter().enumerate() {
        let mut c = Cursor { plane, buf: Vec::new(), at: 0, left: len };
        load(&mut c)?;
        heap.push(Reverse((c.buf[0], k)));
        cursors.push(c);
    }
    let (mut prev, mut gap) = (None::<f64>, f64::INFINITY);
    while let Some(Reverse((bits, k))) = heap.pop() {
        let v = f32::from_bits(bits) as f64;
        match prev {
            Some(p) if v == p => {}
            Some(p) => {
                gap = gap.min(v - p);
                prev = Some(v);
            }
            None => prev = Some(v),
        }
        let c = &mut cursors[k];
        c.left -= 1;
        c.at += 1;
        if c.left > 0 {
            if c.at == width {
                load(c)?;
            }
            heap.push(Reverse((c.buf[c.at], k)));
        }
    }
    Ok(gap)
}

/// The triangle threshold as scikit-image computes it (dense histogram, peak-to-tail line).
pub fn triangle(data: &Data, nbins: usize) -> Result<f64, String> {
    let (hist, centers, first): (Vec<u64>, Vec<f64>, Option<f64>) = match int_values(data) {
        Some(values) => {
            let (counts, cs) = int_hist(values);
            let (h, c) = dense_int_hist(&counts, &cs)?;
            (h, c, None)
        }
        None => match data {
            Data::F32(a) => {
                let (h, c) = float_hist_arr(a, nbins);
                (h, c, a.iter().next().map(|&v| v as f64))
            }
            _ => return Err("triangle: RGB input".into()),
        },
    };
    triangle_finish(hist, &centers, first)
}

/// One bin per integer level from the smallest value present to the largest.
fn dense_int_hist(counts: &[u64], cs: &[f64]) -> Result<(Vec<u64>, Vec<f64>), String> {
    let (lo, hi) = (cs[0] as u64, cs[cs.len() - 1] as u64);
    if hi - lo >= 1 << 26 {
        return Err(format!("triangle: integer values span {} levels; the histogram would be too large", hi - lo + 1));
    }
    let mut dense = vec![0u64; (hi - lo + 1) as usize];
    for (c, v) in counts.iter().zip(cs) {
        dense[(*v as u64 - lo) as usize] = *c;
    }
    Ok((dense, (lo..=hi).map(|v| v as f64).collect()))
}

/// The triangle method on a dense histogram; `first` is a float image's first voxel value.
fn triangle_finish(hist: Vec<u64>, centers: &[f64], first: Option<f64>) -> Result<f64, String> {
    if hist.is_empty() {
        return Err("triangle: the image has no finite values".into());
    }
    let nb = hist.len();
    let mut peak = 0;
    for i in 0..nb {
        if hist[i] > hist[peak] {
            peak = i;
        }
    }
    let peak_height = hist[peak];
    let low = hist.iter().position(|&c| c > 0).unwrap_or(0);
    let high = nb - 1 - hist.iter().rev().position(|&c| c > 0).unwrap_or(0);
    if low == high {
        return Ok(first.unwrap_or(centers[low]));
    }
    let flip = (peak as i64 - low as i64) < (high as i64 - peak as i64);
    let (h, low, peak): (Vec<u64>, usize, usize) =
        if flip { (hist.iter().rev().copied().collect(), nb - high - 1, nb - peak - 1) } else { (hist.clone(), low, peak) };
    let width = peak - low;
    let norm = (((peak_height as i128).pow(2) + (width as i128).pow(2)) as f64).sqrt();
    let (ph, w) = (peak_height as f64 / norm, width as f64 / norm);
    let mut best = (f64::NEG_INFINITY, 0usize);
    for x in 0..width {
        let len = ph * x as f64 - w * h[x + low] as f64;
        if len > best.0 {
            best = (len, x);
        }
    }
    let mut level = best.1 + low;
    if flip {
        level = nb - level - 1;
    }
    Ok(centers[level])
}

/// Histogram of an integer image with one bin per value present (zero bins do not change
/// Otsu's result: they repeat the previous variance, and the first maximum wins).
fn int_hist(values: impl Iterator<Item = u32>) -> (Vec<u64>, Vec<f64>) {
    let mut h = IntCounts::default();
    h.add(values);
    h.finish()
}

/// Counts per integer value, gathered from any number of slabs.
#[derive(Default)]
struct IntCounts {
    dense: Vec<u64>,
    sparse: std::collections::BTreeMap<u32, u64>,
}

impl IntCounts {
    fn add(&mut self, values: impl Iterator<Item = u32>) {
        if self.dense.is_empty() {
            self.dense = vec![0u64; 65536];
        }
        for v in values {
            if v < 65536 {
                self.dense[v as usize] += 1;
            } else {
                *self.sparse.entry(v).or_default() += 1;
            }
        }
    }
    /// (value, count) of the values present, ascending.
    fn pairs(&self) -> Vec<(u32, u64)> {
        let dense = self.dense.iter().enumerate().filter(|(_, c)| **c > 0).map(|(v, &c)| (v as u32, c));
        dense.chain(self.sparse.iter().map(|(&v, &c)| (v, c))).collect()
    }
    /// Adds counts given as (value, count).
    fn add_pairs(&mut self, pairs: &[(u32, u64)]) {
        if self.dense.is_empty() {
            self.dense = vec![0u64; 65536];
        }
        for &(v, c) in pairs {
            if v < 65536 {
                self.dense[v as usize] += c;
            } else {
                *self.sparse.entry(v).or_default() += c;
            }
        }
    }
    /// (counts, values) of the values present, ascending.
    fn finish(self) -> (Vec<u64>, Vec<f64>) {
        let mut counts = Vec::new();
        let mut centers = Vec::new();
        for (v, &c) in self.dense.iter().enumerate() {
            if c > 0 {
                counts.push(c);
                centers.push(v as f64);
            }
        }
        for (v, c) in self.sparse {
            counts.push(c);
            centers.push(v as f64);
        }
        (counts, centers)
    }
}

/// Sees one slab of an image.
pub type Visitor<'a> = dyn FnMut(&Data) -> Result<(), String> + 'a;

/// What a pass over part of a float image sees for its range: its finite extremes and its first
/// value and first number in raster order. Parts seen in z order merge into the whole's.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct FloatRange {
    /// f32 bits (`lo > hi`: no finite value yet).
    lo: u32,
    hi: u32,
    /// f64 bits.
    first: Option<u64>,
    first_number: Option<u64>,
}

impl Default for FloatRange {
    fn default() -> Self {
        FloatRange { lo: f32::INFINITY.to_bits(), hi: f32::NEG_INFINITY.to_bits(), first: None, first_number: None }
    }
}

impl FloatRange {
    fn see(&mut self, a: &Array3<f32>) {
        use rayon::prelude::*;
        if self.first.is_none() {
            self.first = a.iter().next().map(|&v| (v as f64).to_bits());
        }
        if self.first_number.is_none() {
            self.first_number = a.iter().copied().find(|v| !v.is_nan()).map(|v| f64::from(v).to_bits());
        }
        let none = (f32::INFINITY, f32::NEG_INFINITY);
        let (l, h) = match a.as_slice() {
            Some(v) => v.par_chunks(CHUNK).map(finite_min_max).reduce(|| none, |(a, b), (c, d)| (a.min(c), b.max(d))),
            None => a.iter().filter(|v| v.is_finite()).fold(none, |(l, h), &v| (l.min(v), h.max(v))),
        };
        self.lo = f32::from_bits(self.lo).min(l).to_bits();
        self.hi = f32::from_bits(self.hi).max(h).to_bits();
    }
    /// This part followed (in z order) by `next`.
    fn then(self, next: FloatRange) -> FloatRange {
        FloatRange {
            lo: f32::from_bits(self.lo).min(f32::from_bits(next.lo)).to_bits(),
            hi: f32::from_bits(self.hi).max(f32::from_bits(next.hi)).to_bits(),
            first: self.first.or(next.first),
            first_number: self.first_number.or(next.first_number),
        }
    }
    /// The bins the histogram pass counts into (`None`: fewer than two distinct finite values).
    fn bins(&self, nbins: usize) -> Option<FloatBins> {
        let (lo, hi) = (f32::from_bits(self.lo), f32::from_bits(self.hi));
        (lo < hi).then(|| FloatBins::new(lo, hi, nbins))
    }
}

/// Values per parallel piece of a float pass.
const CHUNK: usize = 1 << 18;

/// Counts of a float slab in `bins`.
fn float_counts(bins: &FloatBins, a: &Array3<f32>, nbins: usize) -> Vec<u64> {
    use rayon::prelude::*;
    match a.as_slice() {
        Some(v) => v
            .par_chunks(CHUNK)
            .map(|c| {
                let mut k = vec![0u64; nbins];
                bins.count_slice(c, &mut k);
                k
            })
            .reduce(
                || vec![0u64; nbins],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            ),
        None => {
            let mut k = vec![0u64; nbins];
            bins.count(a.iter().copied(), &mut k);
            k
        }
    }
}

/// The threshold of an integer image from its counts.
fn int_finish(method: Method, h: IntCounts) -> Result<f64, String> {
    let (counts, centers) = h.finish();
    if counts.is_empty() {
        return Err(format!("{method:?}: the image is empty").to_lowercase());
    }
    match method {
        Method::Fixed => Err("internal: a fixed threshold is not streamed".into()),
        Method::Otsu => otsu_finish(&counts, &centers, None),
        Method::Li => Ok(li_int(&counts, &centers)),
        Method::Triangle => {
            let (h, c) = dense_int_hist(&counts, &centers)?;
            triangle_finish(h, &c, None)
        }
    }
}

/// The threshold of a float image from its range and (when it has two values or more) the
/// counts of its histogram.
fn float_finish(method: Method, range: &FloatRange, counts: Option<Vec<u64>>, nbins: usize) -> Result<f64, String> {
    let (counts, centers) = match (range.bins(nbins), counts) {
        (Some(bins), Some(c)) => (c, bins.centers()),
        (Some(_), None) => return Err("internal: a float threshold without its histogram".into()),
        (None, _) if f32::from_bits(range.lo) > f32::from_bits(range.hi) => (Vec::new(), Vec::new()),
        (None, _) => (vec![1], vec![f32::from_bits(range.lo) as f64]),
    };
    let first_number = range.first_number.map(f64::from_bits);
    match method {
        Method::Otsu => otsu_finish(&counts, &centers, Some(first_number)),
        _ => triangle_finish(counts, &centers, range.first.map(f64::from_bits)),
    }
}

/// A threshold computed from an image seen a slab at a time. `pass` runs the visitor over every
/// slab in z order; it is called once for integer images and twice for float ones (range, then
/// bins), and the result equals the whole-image method's bit for bit.
pub fn streamed(
    method: Method,
    nbins: usize,
    float: bool,
    pass: &mut dyn FnMut(&mut Visitor<'_>) -> Result<(), String>,
) -> Result<f64, String> {
    if !float {
        return int_finish(method, int_pass(pass)?);
    }
    if method == Method::Li {
        return Err("internal: li on a float image streams through li_streamed".into());
    }
    let range = range_pass(pass)?;
    let counts = match range.bins(nbins) {
        None => None,
        Some(bins) => Some(bins_pass(&bins, nbins, pass)?),
    };
    float_finish(method, &range, counts, nbins)
}

/// The counts of an integer image seen slab by slab by `pass`.
fn int_pass(pass: &mut dyn FnMut(&mut Visitor<'_>) -> Result<(), String>) -> Result<IntCounts, String> {
    let mut h = IntCounts::default();
    pass(&mut |d| {
        h.add(int_values(d).ok_or("threshold: expected an integer image")?);
        Ok(())
    })?;
    Ok(h)
}

/// The range of a float image seen slab by slab by `pass`.
fn range_pass(pass: &mut dyn FnMut(&mut Visitor<'_>) -> Result<(), String>) -> Result<FloatRange, String> {
    let mut range = FloatRange::default();
    pass(&mut |d| {
        let Data::F32(a) = d else { return Err("threshold: expected a float image".into()) };
        range.see(a);
        Ok(())
    })?;
    Ok(range)
}

/// The counts in `bins` of a float image seen slab by slab by `pass`.
fn bins_pass(bins: &FloatBins, nbins: usize, pass: &mut dyn FnMut(&mut Visitor<'_>) -> Result<(), String>) -> Result<Vec<u64>, String> {
    let mut counts = vec![0u64; nbins];
    pass(&mut |d| {
        let Data::F32(a) = d else { return Err("threshold: expected a float image".into()) };
        counts.iter_mut().zip(float_counts(bins, a, nbins)).for_each(|(x, y)| *x += y);
        Ok(())
    })?;
    Ok(counts)
}

/// What the blocks of a split image hand on, per round of [`Threshold`]'s phased form.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Part {
    /// An integer image's counts: (value, count), ascending.
    Counts(Vec<(u32, u64)>),
    /// A float image's range (round 1).
    Range(FloatRange),
    /// A float image's histogram (round 2; none when it has fewer than two values).
    Bins(Option<Vec<u64>>),
    /// Reduced: the threshold (f64 bits).
    Value(u64),
}

fn part_bytes(p: &Part) -> Result<Vec<u8>, String> {
    serde_json::to_vec(p).map_err(|e| format!("threshold: {e}"))
}

fn part_of(b: &[u8]) -> Result<Part, String> {
    serde_json::from_slice(b).map_err(|_| "threshold: a block's histogram is damaged (run its task again)".to_string())
}

/// Split over z-blocks: round 1 counts an integer block's values (the reduce sums them and finds
/// the threshold) or finds a float block's range and first values; round 2 counts a float block
/// in the bins of the whole range (the reduce finds the threshold). What remains is local: the
/// same threshold at the value found. Li on float images iterates over the whole image, so it
/// has no phased form and runs in one task per sample.
impl slab::Phased for Threshold {
    fn rounds(&self) -> usize {
        2
    }
    fn ending(&self) -> slab::Ending {
        slab::Ending::Local
    }
    fn partial(&self, io: &mut dyn slab::BlockIo, round: usize, before: Option<&[u8]>, _ctx: &Ctx) -> Result<Vec<u8>, String> {
        let (_, z0, z1) = io.block();
        let float = io.input(0).meta().dtype == Some(crate::io::DType::F32);
        let planes = io.planes(0);
        let nbins = self.nbins as usize;
        let mut each = |f: &mut Visitor<'_>| -> Result<(), String> {
            for (a, b) in slab::ranges(z1 - z0, planes) {
                let Value::Image(d) = io.input(0).read(z0 + a, z0 + b)? else { return Err("threshold: input is not an image".into()) };
                f(&d)?;
            }
            Ok(())
        };
        let part = match (round, float) {
            (0, false) => Part::Counts(int_pass(&mut each)?.pairs()),
            (0, true) => Part::Range(range_pass(&mut each)?),
            (_, false) => Part::Bins(None),
            (_, true) => {
                let Part::Range(range) = part_of(before.unwrap_or_default())? else {
                    return Err("threshold: round 1 did not give a range".into());
                };
                Part::Bins(match range.bins(nbins) {
                    None => None,
                    Some(bins) => Some(bins_pass(&bins, nbins, &mut each)?),
                })
            }
        };
        part_bytes(&part)
    }
    fn reduce(&self, round: usize, partials: &mut slab::Partials<'_>, before: Option<&[u8]>, _ctx: &Ctx) -> Result<Vec<u8>, String> {
        let parts: Vec<Part> = partials.map(|p| part_of(&p?)).collect::<Result<_, _>>()?;
        let nbins = self.nbins as usize;
        let out = match round {
            0 if parts.iter().all(|p| matches!(p, Part::Counts(_))) => {
                let mut h = IntCounts::default();
                for p in parts {
                    if let Part::Counts(c) = p {
                        h.add_pairs(&c);
                    }
                }
                Part::Value(int_finish(self.method, h)?.to_bits())
            }
            0 => {
                let mut all = FloatRange::default();
                for p in parts {
                    let Part::Range(r) = p else { return Err("threshold: blocks of integer and float images".into()) };
                    all = all.then(r);
                }
                Part::Range(all)
            }
            _ => match part_of(before.unwrap_or_default())? {
                t @ Part::Value(_) => t,
                Part::Range(range) => {
                    let mut counts: Option<Vec<u64>> = None;
                    for p in parts {
                        if let Part::Bins(Some(c)) = p {
                            let sum = counts.get_or_insert_with(|| vec![0u64; nbins]);
                            sum.iter_mut().zip(c).for_each(|(x, y)| *x += y);
                        }
                    }
                    Part::Value(float_finish(self.method, &range, counts, nbins)?.to_bits())
                }
                _ => return Err("threshold: round 1 gave neither a threshold nor a range".into()),
            },
        };
        part_bytes(&out)
    }
    fn local(&self, reduced: &[u8]) -> Result<Box<dyn Op>, String> {
        let Part::Value(t) = part_of(reduced)? else { return Err("threshold: the reduce gave no threshold".into()) };
        Ok(Box::new(Threshold { method: Method::Fixed, value: Some(f64::from_bits(t)), ..self.clone() }))
    }
}

/// numpy's float32 histogram edges over `[lo, hi]`.
struct FloatBins {
    lo: f32,
    edges: Vec<f32>,
    norm: f32,
    nbins: usize,
    /// How far (in bins) the computed position must be from a bin's ends for its integer part to
    /// be the bin without looking at the edges ([`FloatBins::count_slice`]).
    margin: f32,
}

impl FloatBins {
    fn new(lo: f32, hi: f32, nbins: usize) -> FloatBins {
        let edges: Vec<f32> = (0..=nbins)
            .map(|i| if i == nbins { hi } else { (lo as f64 + (hi as f64 - lo as f64) * i as f64 / nbins as f64) as f32 })
            .collect();
        // Error bounds, in bins: the position (v − lo)·norm is off by at most 4 float32 roundings
        // (v − lo, hi − lo, the division, the product: ≤ 4·2⁻²⁴·nbins); an edge is off by one
        // float32 rounding of a value up to max(|lo|, |hi|) (≤ 2⁻²⁴·max·nbins/(hi − lo)).
        // Twice their sum, plus a little, is the margin.
        let (l, h, n) = (lo as f64, hi as f64, nbins as f64);
        let bound = 2f64.powi(-24) * (4.0 * n + l.abs().max(h.abs()) * n / (h - l));
        let margin = (2.0 * bound + 2f64.powi(-20)) as f32;
        FloatBins { lo, edges, norm: nbins as f32 / (hi - lo), nbins, margin }
    }
    /// The bin of a finite value (numpy's: computed index, corrected against the edges).
    #[inline(always)]
    fn bin(&self, v: f32) -> usize {
        let nbins = self.nbins;
        let mut i = (((v - self.lo) * self.norm) as usize).min(nbins - 1);
        if v < self.edges[i] && i > 0 {
            i -= 1;
        } else if i + 1 < nbins && v >= self.edges[i + 1] {
            i += 1;
        }
        i
    }
    /// [`FloatBins::bin`] of a finite value that lies within that bin's edges as numpy's
    /// histogram takes them (`edges[i] ≤ v < edges[i + 1]`, the last bin closed); `None` for
    /// anything else.
    #[inline(always)]
    fn bin_within(&self, v: f32) -> Option<usize> {
        if !v.is_finite() {
            return None;
        }
        let i = self.bin(v);
        (self.edges[i] <= v && (v < self.edges[i + 1] || (i + 1 == self.nbins && v <= self.edges[i + 1]))).then_some(i)
    }
    /// A value's position in bins, t = (v − lo)·norm, as its integer part and fraction. t is in
    /// [0, nbins] whatever v is (NaN and -inf give 0, +inf nbins), so the conversion is exact and
    /// needs no saturation (which would not vectorise).
    #[inline(always)]
    fn position(&self, v: f32) -> (i32, f32) {
        let t = ((v - self.lo) * self.norm).max(0.0).min(self.nbins as f32);
        // SAFETY: t is finite, 0 ≤ t ≤ nbins ≤ 2^24 < i32::MAX.
        let j = unsafe { t.to_int_unchecked::<i32>() };
        (j, t - j as f32)
    }

    /// Whether a position (j < nbins) is farther than the margin from its bin's ends (or the bin
    /// is the first or last, on the outer side): its integer part is then the bin numpy picks.
    #[inline(always)]
    fn clear_of_edges(&self, j: i32, f: f32) -> bool {
        let (m, last) = (self.margin, self.nbins as i32 - 1);
        ((f >= m) | (j == 0)) & ((f <= 1.0 - m) | (j == last))
    }

    /// For each value: its bin into `codes` (nbins ≤ 256), whether it lies above its bin's centre
    /// as bit `first + i` of `bits` (or-ed in), and its count; false when a value is not within
    /// its bin's edges ([`FloatBins::bin_within`]). Groups of 16 values whose positions are
    /// farther than the margin from their bin's ends and centre are decided from the positions
    /// alone (see [`FloatBins::count_slice`]; a centre is off its bin's middle by at most two
    /// roundings, which twice the margin covers); the others value by value.
    fn place(&self, centers: &[f64], values: &[f32], codes: &mut [u8], bits: &mut [u64], first: usize, counts: &mut [u64]) -> bool {
        let this = self;
        crate::isa::dispatch!(crate::isa::Isa::widest(), [] FloatBins::place_plain(
            this: &FloatBins, centers: &[f64], values: &[f32], codes: &mut [u8], bits: &mut [u64], first: usize, counts: &mut [u64]
        ) -> bool)
    }

    #[inline(always)]
    fn place_plain(&self, centers: &[f64], values: &[f32], codes: &mut [u8], bits: &mut [u64], first: usize, counts: &mut [u64]) -> bool {
        const L: usize = 16;
        let n = self.nbins;
        let (ni, last) = (n as i32, n as i32 - 1);
        let half = 2.0 * self.margin;
        let fast = half < 0.25;
        // Four interleaved sub-histograms, 256 bins each (nbins ≤ 256): indexed by a u8 bin
        // and k mod 4, with no bounds to check.
        let mut sub = vec![[0u64; 256]; 4];
        let mut ok_all = true;
        let put_bits = |bits: &mut [u64], i: usize, word: u64, len: usize| {
            let (w, off) = ((first + i) / 64, (first + i) % 64);
            bits[w] |= word << off;
            if off + len > 64 {
                bits[w + 1] |= word >> (64 - off);
            }
        };
        let mut i = 0;
        while i + L <= values.len() {
            let c = &values[i..i + L];
            let mut idx = [0i32; L];
            let mut ok = [0i32; L];
            let mut up = [0u32; L];
            for k in 0..L {
                let v = c[k];
                let (j, f) = self.position(v);
                idx[k] = j.min(last);
                ok[k] = ((v.abs() < f32::INFINITY) & (j != ni) & self.clear_of_edges(j, f) & ((f - 0.5).abs() > half)) as i32;
                up[k] = (f > 0.5) as u32;
            }
            let mut word = 0u64;
            if fast && ok.iter().fold(1, |a, &b| a & b) == 1 {
                for (c, &j) in codes[i..i + L].iter_mut().zip(&idx) {
                    *c = j as u8;
                }
                for (k, &j) in idx.iter().enumerate() {
                    sub[k & 3][j as u8 as usize] += 1;
                }
                word = up.iter().enumerate().fold(0u64, |w, (k, &u)| w | (u as u64) << k);
            } else {
                for (k, &v) in c.iter().enumerate() {
                    let j = self.bin_within(v).unwrap_or_else(|| {
                        ok_all = false;
                        0
                    });
                    codes[i + k] = j as u8;
                    counts[j] += 1;
                    word |= ((v as f64 > centers[j]) as u64) << k;
                }
            }
            put_bits(bits, i, word, L);
            i += L;
        }
        for (k, &v) in values[i..].iter().enumerate() {
            let j = self.bin_within(v).unwrap_or_else(|| {
                ok_all = false;
                0
            });
            codes[i + k] = j as u8;
            counts[j] += 1;
            put_bits(bits, i + k, (v as f64 > centers[j]) as u64, 1);
        }
        for (j, c) in counts.iter_mut().enumerate().take(n) {
            *c += sub[0][j] + sub[1][j] + sub[2][j] + sub[3][j];
        }
        ok_all
    }

    fn count(&self, values: impl Iterator<Item = f32>, counts: &mut [u64]) {
        for v in values.filter(|v| v.is_finite()) {
            counts[self.bin(v)] += 1;
        }
    }
    /// [`FloatBins::count`] of a slice. Per value the position t = (v − lo)·norm is computed as in
    /// [`FloatBins::bin`]; when its fractional part is farther than `margin` from both ends of
    /// the bin (or the bin is the first or last, on the outer side), the integer part is the bin
    /// numpy picks, and the edges need not be read. Only groups of 8 values with one near an edge
    /// (or non-finite) go through [`FloatBins::bin`]. Counts go into four interleaved
    /// sub-histograms (neighbouring voxels of a smooth image fall in the same bin; one counter
    /// would make every increment wait for the last). The counts are the same integers.
    fn count_slice(&self, values: &[f32], counts: &mut [u64]) {
        let this = self;
        // At most AVX2: the AVX-512 build is slower here (Otsu of a float image at 512³
        // 0.064 s against 0.059 s, bench_ops).
        let isa = crate::isa::Isa::widest().at_most(crate::isa::Level::Avx2);
        crate::isa::dispatch!(isa, [] FloatBins::count_slice_plain(
            this: &FloatBins, values: &[f32], counts: &mut [u64]
        ))
    }

    #[inline(always)]
    fn count_slice_plain(&self, values: &[f32], counts: &mut [u64]) {
        const L: usize = 8;
        let n = self.nbins;
        let fast = self.margin < 0.25;
        let mut sub = vec![0u64; 4 * n];
        let mut chunks = values.chunks_exact(L);
        // 32-bit lanes (nbins < 2^31): the conversions vectorise.
        let (ni, last) = (n as i32, n as i32 - 1);
        let mut idx = [0i32; L];
        let mut ok = [0i32; L];
        for c in &mut chunks {
            for k in 0..L {
                let v = c[k];
                let (j, f) = self.position(v);
                idx[k] = j.min(last);
                ok[k] = ((v.abs() < f32::INFINITY) & ((j == ni) | self.clear_of_edges(j, f))) as i32;
            }
            if fast && ok.iter().fold(1, |a, &b| a & b) == 1 {
                for k in 0..L {
                    sub[(k & 3) * n + idx[k] as usize] += 1;
                }
            } else {
                for (k, &v) in c.iter().enumerate() {
                    if v.is_finite() {
                        sub[(k & 3) * n + self.bin(v)] += 1;
                    }
                }
            }
        }
        self.count(chunks.remainder().iter().copied(), counts);
        for (i, c) in counts.iter_mut().enumerate() {
            *c += sub[i] + sub[n + i] + sub[2 * n + i] + sub[3 * n + i];
        }
    }
    fn centers(&self) -> Vec<f64> {
        (0..self.nbins).map(|i| ((self.edges[i] + self.edges[i + 1]) / 2.0) as f64).collect()
    }
}

/// `numpy.histogram(x, bins=nbins, range=(min, max))` on float32 data, with float32 edges and
/// centres as numpy computes them for a float32 array.
fn float_hist(values: impl Iterator<Item = f32> + Clone, nbins: usize) -> (Vec<u64>, Vec<f64>) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for v in values.clone().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (Vec::new(), Vec::new());
    }
    if lo == hi {
        return (vec![1], vec![lo as f64]);
    }
    let bins = FloatBins::new(lo, hi, nbins);
    let mut counts = vec![0u64; nbins];
    bins.count(values, &mut counts);
    (counts, bins.centers())
}

/// [`float_hist`] of an array, in parallel over chunks when it is contiguous (the streamed
/// pieces, [`FloatRange`] and [`float_counts`], on the whole): the range is a min/max reduction
/// and the bins are integer counts, so the result is the sequential one.
fn float_hist_arr(a: &Array3<f32>, nbins: usize) -> (Vec<u64>, Vec<f64>) {
    if a.as_slice().is_none() {
        return float_hist(a.iter().copied(), nbins);
    }
    let mut range = FloatRange::default();
    range.see(a);
    match range.bins(nbins) {
        Some(bins) => (float_counts(&bins, a, nbins), bins.centers()),
        None if f32::from_bits(range.lo) > f32::from_bits(range.hi) => (Vec::new(), Vec::new()),
        None => (vec![1], vec![f32::from_bits(range.lo) as f64]),
    }
}

/// Smallest and largest finite value (±inf when there is none), in 16 independent lanes so that
/// the loop vectorises; min and max are exact, so the lanes change nothing.
fn finite_min_max(c: &[f32]) -> (f32, f32) {
    const L: usize = 16;
    let (mut lo, mut hi) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L]);
    let mut chunks = c.chunks_exact(L);
    for ch in &mut chunks {
        for k in 0..L {
            let x = ch[k];
            let finite = x.abs() < f32::INFINITY;
            let (a, b) = if finite { (x, x) } else { (f32::INFINITY, f32::NEG_INFINITY) };
            lo[k] = if a < lo[k] { a } else { lo[k] };
            hi[k] = if b > hi[k] { b } else { hi[k] };
        }
    }
    let mut l = lo.iter().fold(f32::INFINITY, |m, &v| if v < m { v } else { m });
    let mut h = hi.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for &x in chunks.remainder().iter().filter(|x| x.is_finite()) {
        l = l.min(x);
        h = h.max(x);
    }
    (l, h)
}

/// Smallest and largest value of values known to be finite (a NaN is passed over; ±inf would
/// count), in 32 lanes the compiler vectorises, compiled for the widest vectors the CPU has:
/// [`finite_min_max`] checks each value and takes 4 instructions a value at SSE2's width.
fn min_max_of_finite(c: &[f32]) -> (f32, f32) {
    crate::isa::dispatch!(crate::isa::Isa::widest(), [] min_max_plain(c: &[f32]) -> (f32, f32))
}

#[inline(always)]
fn min_max_plain(c: &[f32]) -> (f32, f32) {
    const L: usize = 32;
    let (mut lo, mut hi) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L]);
    let mut chunks = c.chunks_exact(L);
    for ch in &mut chunks {
        for k in 0..L {
            let x = ch[k];
            lo[k] = if x < lo[k] { x } else { lo[k] };
            hi[k] = if x > hi[k] { x } else { hi[k] };
        }
    }
    let mut l = lo.iter().fold(f32::INFINITY, |m, &v| if v < m { v } else { m });
    let mut h = hi.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for &x in chunks.remainder() {
        l = if x < l { x } else { l };
        h = if x > h { x } else { h };
    }
    (l, h)
}

fn otsu_from_hist(counts: &[u64], centers: &[f64], float_centers: bool) -> f64 {
    let n = counts.len();
    let c32: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
    let mut w1 = vec![0f32; n];
    let mut acc = 0f32;
    for i in 0..n {
        acc += c32[i];
        w1[i] = acc;
    }
    let mut w2 = vec![0f32; n];
    acc = 0.0;
    for i in (0..n).rev() {
        acc += c32[i];
        w2[i] = acc;
    }
    // counts * centres: float64 for integer centres; float32 products for float32 centres.
    let prod: Vec<f64> =
        (0..n).map(|i| if float_centers { (c32[i] * centers[i] as f32) as f64 } else { c32[i] as f64 * centers[i] }).collect();
    let mut m1 = vec![0f64; n];
    let mut s = 0f64;
    let mut s32 = 0f32;
    for i in 0..n {
        if float_centers {
            s32 += prod[i] as f32;
            m1[i] = s32 as f64 / w1[i] as f64;
        } else {
            s += prod[i];
            m1[i] = s / w1[i] as f64;
        }
    }
    let mut m2 = vec![0f64; n];
    s = 0.0;
    s32 = 0.0;
    for i in (0..n).rev() {
        if float_centers {
            s32 += prod[i] as f32;
            m2[i] = s32 as f64 / w2[i] as f64;
        } else {
            s += prod[i];
            m2[i] = s / w2[i] as f64;
        }
    }
    let mut best = (f64::NEG_INFINITY, 0usize);
    for i in 0..n - 1 {
        let d = m1[i] - m2[i + 1];
        let v = (w1[i] * w2[i + 1]) as f64 * d * d;
        if v > best.0 {
            best = (v, i);
        }
    }
    centers[best.1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Otsu's mask of a float image read by planes equals `apply(otsu(·))` of the whole image,
    /// for smooth and noisy images, narrow ranges (where bins are a few float32 steps wide),
    /// large offsets, ties on the threshold, NaN and infinities, constant images and 2–256 bins,
    /// read one plane, a few planes or all of them at a time.
    #[test]
    fn otsu_by_planes_equals_otsu_on_the_whole_image() {
        let mut next = crate::util::test_rng(77);
        let mut images: Vec<(&str, Array3<f32>)> = Vec::new();
        let noisy = Array3::from_shape_simple_fn((7, 13, 37), || (next() % 1000) as f32 * 0.173);
        images.push(("noisy", noisy.clone()));
        images.push((
            "smooth",
            Array3::from_shape_fn((9, 11, 21), |(z, y, x)| ((z as f32 * 0.7).sin() + (y as f32 * 0.3).cos() + x as f32 * 0.05) * 40.0),
        ));
        images.push(("narrow", noisy.mapv(|v| 1.0 + (v / 173.0).floor() * f32::EPSILON)));
        images.push(("offset", noisy.mapv(|v| 1.0e6 + v)));
        images.push(("two values", noisy.mapv(|v| if v > 80.0 { 3.0 } else { 1.0 })));
        images.push(("constant", Array3::from_elem((3, 4, 5), 2.5f32)));
        images.push(("integers", noisy.mapv(|v| (v / 10.0).round())));
        let mut odd = noisy.clone();
        odd[[1, 2, 3]] = f32::NAN;
        odd[[2, 3, 4]] = f32::INFINITY;
        odd[[3, 4, 5]] = f32::NEG_INFINITY;
        images.push(("non-finite", odd));
        for (name, img) in images {
            for nbins in [2usize, 3, 17, 256] {
                for invert in [false, true] {
                    let data = Data::F32(img.clone());
                    let want = apply(&data, otsu(&data, nbins).unwrap(), invert).unwrap();
                    let plane = img.dim().1 * img.dim().2 * 4;
                    let max_abs = img.iter().filter(|v| v.is_finite()).fold(0f64, |m, v| m.max(v.abs() as f64));
                    for read_bytes in [1, 3 * plane, usize::MAX / 2] {
                        let got = otsu_by_planes(&slab::WholeImage(data.clone()), nbins, invert, read_bytes).unwrap();
                        assert_eq!(got, want, "{name}: {nbins} bins, invert {invert}, reads of {read_bytes} bytes");
                        // Bounded reads (off by up to 0, a few float32 steps, or a tenth of the range):
                        // the range from them and exact reads of the planes they leave undecided.
                        for eps in [0.0, 1e-5 * (1.0 + max_abs), 0.1 * (1.0 + max_abs)] {
                            let v = Blurred { img: slab::WholeImage(data.clone()), eps, shift: pattern };
                            let got = otsu_by_planes(&v, nbins, invert, read_bytes).unwrap();
                            assert_eq!(got, want, "{name}: {nbins} bins, invert {invert}, reads of {read_bytes} bytes, bound {eps}");
                        }
                    }
                }
            }
        }
    }

    /// An image whose bounded reads are off by up to `eps`: every voxel moved by its own
    /// fraction of it, up and down, so that planes without an extreme can look like they hold
    /// one and planes with one can look like they do not. No bound where a value is not finite
    /// (as the gaussian gives none).
    struct Blurred {
        img: slab::WholeImage,
        eps: f64,
        /// Where a voxel (index, value) is moved to, in units of `eps` within [−1, 1].
        shift: fn(usize, f32) -> f64,
    }

    /// A fixed pattern of moves up and down.
    fn pattern(i: usize, _: f32) -> f64 {
        ((i * 7919 + 13) % 201) as f64 / 100.0 - 1.0
    }

    impl slab::Volume for Blurred {
        fn meta(&self) -> Meta {
            self.img.meta()
        }
        fn read(&self, z0: usize, z1: usize) -> Result<Value, String> {
            self.img.read(z0, z1)
        }
        fn bytes_per_voxel(&self) -> u64 {
            4
        }
        fn read_bounded(&self, z0: usize, z1: usize) -> Option<(Value, f64)> {
            let Ok(Value::Image(Data::F32(a))) = self.img.read(z0, z1) else { return None };
            if a.iter().any(|v| !v.is_finite()) {
                return None;
            }
            let plane = a.dim().1 * a.dim().2;
            let moved = Array3::from_shape_fn(a.dim(), |(z, y, x)| {
                let i = (z0 + z) * plane + y * a.dim().2 + x;
                let v = a[[z, y, x]];
                // Within the bound after rounding to float32 as well.
                let u = (v as f64 + (self.shift)(i, v).clamp(-1.0, 1.0) * self.eps * 0.99) as f32;
                assert!((u as f64 - v as f64).abs() <= self.eps);
                u
            });
            Some((Value::Image(Data::F32(moved)), self.eps))
        }
    }

    /// The range from bounded reads equals the range of every plane when the bound is used to
    /// the full: the exact minimum and maximum moved inwards by the whole bound, and values a
    /// fifth of the bound inside them (in other planes) moved outwards.
    #[test]
    fn a_bounded_range_finds_extremes_the_bound_hides() {
        let eps = 1e-3;
        let mut next = crate::util::test_rng(5);
        let mut img = Array3::from_shape_fn((9, 5, 7), |_| (next() % 1000) as f32 / 10.0);
        img[[3, 2, 2]] = -1.0;
        img[[6, 1, 4]] = (-1.0 + 0.2 * eps) as f32;
        img[[1, 4, 6]] = 200.0;
        img[[7, 0, 0]] = (200.0 - 0.2 * eps) as f32;
        fn inwards(_: usize, v: f32) -> f64 {
            match v {
                -1.0 => 1.0,
                200.0 => -1.0,
                v if v < 100.0 => -1.0,
                _ => 1.0,
            }
        }
        let data = Data::F32(img.clone());
        let mut want = FloatRange::default();
        want.see(&img);
        for planes in [1, 2, 4, 9] {
            let v = Blurred { img: slab::WholeImage(data.clone()), eps, shift: inwards };
            let read = |z0: usize, z1: usize| match slab::Volume::read(&v, z0, z1) {
                Ok(Value::Image(Data::F32(a))) => Ok(a),
                _ => Err("not float".to_string()),
            };
            assert!(undecided_planes(&v, planes).is_some(), "bounded reads");
            let got = range_by_planes(&v, planes, &read).unwrap();
            assert_eq!((got.lo, got.hi, got.first, got.first_number), (want.lo, want.hi, want.first, want.first_number), "{planes} planes");
        }
        // No bound where a value is not finite: the caller reads every plane.
        img[[0, 0, 0]] = f32::NAN;
        let v = Blurred { img: slab::WholeImage(Data::F32(img)), eps, shift: inwards };
        assert!(undecided_planes(&v, 2).is_none());
    }

    #[test]
    fn float32_threshold_compares_like_float64() {
        let mut rng = crate::stats::kmeans::SplitMix::new(3);
        let mut ts: Vec<f64> = vec![0.0, -0.0, 1.0, 0.1, 1e-45, -1e-45, 3.4e38, 3.5e38, -3.5e38, 1e300, f64::INFINITY, f64::NEG_INFINITY];
        for _ in 0..2000 {
            let f = f32::from_bits(rng.next_u64() as u32);
            if f.is_finite() {
                // The float32 itself, and points just above, below and half-way to its neighbours.
                let (d, u) = (f.next_down() as f64, f.next_up() as f64);
                ts.extend([f as f64, (f as f64 + u) / 2.0, (f as f64 + d) / 2.0, f as f64 * (1.0 + 1e-12)]);
            }
        }
        for &t in &ts {
            let u = f32_at_or_below(t).unwrap();
            let c = t as f32;
            let xs = [
                u,
                u.next_up(),
                u.next_down(),
                c,
                c.next_up(),
                c.next_down(),
                0.0,
                -0.0,
                f32::MAX,
                f32::MIN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
            ];
            for x in xs {
                assert_eq!(x > u, x as f64 > t, "t {t:e} x {x:e}");
                assert_eq!(
                    !x.is_nan() && x <= u,
                    !x.is_nan() && (x as f64).partial_cmp(&t) != Some(std::cmp::Ordering::Greater),
                    "t {t:e} x {x:e}"
                );
            }
        }
        assert_eq!(f32_at_or_below(f64::NAN), None);
        // Through the op: the same masks as the float64 definition, NaN voxels 0.
        let a = Array3::from_shape_vec((1, 1, 5), vec![0.5f32, 0.25, f32::NAN, 0.75, 0.5000001]).unwrap();
        let d = Data::F32(a.clone());
        for (t, inv) in [(0.5, false), (0.5, true), (f64::NAN, false), (f64::NAN, true), (0.5000000001, false)] {
            let want: Vec<u8> = a.iter().map(|&x| (!x.is_nan() && ((x as f64 > t) != inv)) as u8).collect();
            assert_eq!(apply(&d, t, inv).unwrap().into_raw_vec_and_offset().0, want, "t {t} invert {inv}");
        }
    }

    #[test]
    fn parallel_float_histogram_equals_sequential() {
        let a = Array3::from_shape_fn((9, 70, 130), |(z, y, x)| {
            let v = ((z * 7919 + y * 104_729 + x * 1_299_709) % 100_003) as f32 / 37.0 - 900.0;
            if x == 5 && y == 3 {
                f32::NAN
            } else if x == 6 && y == 3 {
                f32::INFINITY
            } else {
                v
            }
        });
        for nbins in [2, 17, 256] {
            assert_eq!(float_hist_arr(&a, nbins), float_hist(a.iter().copied(), nbins), "{nbins} bins");
        }
        let c = Array3::from_elem((2, 3, 4), 1.5f32);
        assert_eq!(float_hist_arr(&c, 256), float_hist(c.iter().copied(), 256));
    }

    /// The fast histogram (integer part of the position, edges read only near them) counts
    /// exactly what the edge-checked one counts: values on, just below and just above every
    /// edge, ranges far from zero, narrow ranges, NaN and infinities, random values.
    #[test]
    fn fast_histogram_equals_the_edge_checked_one() {
        let mut rng = crate::stats::kmeans::SplitMix::new(11);
        let mut next = move || rng.next_u64();
        let ranges = [(0.0f32, 255.0f32), (-3.5, 1e-3), (1000.0, 1000.5), (1e6, 1e6 + 64.0), (-1e-30, 1e-30), (7.0, 7.000_01), (-5e4, 9e4)];
        for (lo, hi) in ranges {
            for nbins in [2usize, 3, 17, 256, 1000] {
                let bins = FloatBins::new(lo, hi, nbins);
                let mut v = vec![lo, hi, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
                for &e in &bins.edges {
                    for x in [e, f32::from_bits(e.to_bits().wrapping_add(1)), f32::from_bits(e.to_bits().wrapping_sub(1))] {
                        if x >= lo && x <= hi {
                            v.push(x);
                        }
                    }
                }
                for _ in 0..20_000 {
                    let u = (next() >> 40) as f32 / (1u64 << 24) as f32;
                    v.push((lo as f64 + (hi as f64 - lo as f64) * u as f64) as f32);
                }
                // Shuffle so that near-edge values share groups of 8 with ordinary ones.
                for i in (1..v.len()).rev() {
                    v.swap(i, (next() % (i as u64 + 1)) as usize);
                }
                let (mut want, mut got) = (vec![0u64; nbins], vec![0u64; nbins]);
                bins.count(v.iter().copied(), &mut want);
                bins.count_slice(&v, &mut got);
                assert_eq!(got, want, "range {lo}..{hi}, {nbins} bins");
            }
        }
    }

    #[test]
    fn otsu_on_a_bimodal_literal() {
        // Two clusters around 10 and 200: the threshold falls at the top of the lower cluster.
        let a = Array3::from_shape_vec((1, 2, 6), vec![8u8, 10, 12, 198, 200, 202, 9, 11, 10, 199, 201, 200]).unwrap();
        let t = otsu(&Data::U8(a.clone()), 256).unwrap();
        assert_eq!(t, 12.0);
        let m = apply(&Data::U8(a), t, false).unwrap();
        assert_eq!(m.iter().map(|&v| v as u32).sum::<u32>(), 6);
    }

    /// The vectorised min/max of finite values equals the checked one, whatever the length
    /// (whole blocks and a remainder), signs and magnitudes; NaN is passed over.
    #[test]
    fn min_max_of_finite_values_equals_the_checked_one() {
        let mut state = 11u64;
        for n in [0usize, 1, 5, 31, 32, 33, 64, 100, 1000, 4099] {
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let m = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    m * 10f32.powi((state >> 20) as i32 % 60 - 30)
                })
                .collect();
            assert_eq!(min_max_of_finite(&v), finite_min_max(&v), "{n}");
            assert_eq!(min_max_plain(&v), finite_min_max(&v), "{n}");
            let mut w = v.clone();
            if n > 3 {
                w[n / 2] = f32::NAN;
                let rest: Vec<f32> = w.iter().copied().filter(|x| !x.is_nan()).collect();
                assert_eq!(min_max_of_finite(&w), finite_min_max(&rest), "{n} with NaN");
            }
        }
    }

    #[test]
    fn constant_image_threshold_is_its_value() {
        let a = Array3::from_elem((2, 3, 3), 7u16);
        assert_eq!(otsu(&Data::U16(a.clone()), 256).unwrap(), 7.0);
        assert_eq!(apply(&Data::U16(a), 7.0, false).unwrap().sum(), 0);
    }

    #[test]
    fn fixed_inverted_and_nan() {
        let a = Array3::from_shape_vec((1, 1, 4), vec![1.0f32, f32::NAN, 3.0, 2.0]).unwrap();
        assert_eq!(apply(&Data::F32(a.clone()), 2.0, false).unwrap().into_raw_vec_and_offset().0, vec![0, 0, 1, 0]);
        assert_eq!(apply(&Data::F32(a), 2.0, true).unwrap().into_raw_vec_and_offset().0, vec![1, 0, 0, 1]);
    }

    #[test]
    fn checks() {
        let t: Threshold = serde_yaml::from_str("{method: fixed}").unwrap();
        assert_eq!(t.check()[0].field, "method");
        let t: Threshold = serde_yaml::from_str("{method: otsu, value: 3}").unwrap();
        assert_eq!(t.check()[0].field, "value");
        let t: Threshold = serde_yaml::from_str("{method: otsu, nbins: 16777217}").unwrap();
        assert_eq!(t.check()[0].field, "nbins");
        let t: Threshold = serde_yaml::from_str("{method: otsu, nbins: 16777216}").unwrap();
        assert!(t.check().is_empty());
    }
}
