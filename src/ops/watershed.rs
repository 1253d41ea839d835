//! Splitting touching objects: `watershed` floods an image from markers, `h_maxima` finds the
//! markers (the maxima that stand out by at least h).
//!
//! Both follow scikit-image to the voxel. The watershed is its priority flood: voxels are taken
//! from a binary heap ordered by (level, age), every voxel labelled when it is first reached and
//! queued at the higher of its value and the level it was reached from; ties between markers of
//! equal value are broken by the heap's own order, which this module's [`Heap`] reproduces. `h_maxima` is its morphological reconstruction by dilation of
//! image − h under the image, done here with Vincent's hybrid algorithm (two raster scans and a
//! queue), whose result is unique.

use std::collections::VecDeque;

use ndarray::Array3;
use serde::{Deserialize, Serialize};

use super::{Ctx, Halo, Input, Kind, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, expect_image, fields_of};
use crate::io::Data;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Watershed {
    pub input: String,
    pub markers: String,
    #[serde(default)]
    pub mask: Option<String>,
    #[serde(default)]
    pub connectivity: Option<u8>,
    #[serde(default)]
    pub invert: bool,
}

pub static WATERSHED: OpInfo = OpInfo {
    name: "watershed",
    family: "segmentation",
    version: 1,
    output: Kind::Labels,
    same_kind: false,
    summary: "Image + markers → labels: floods the image from the markers (watershed declumping).",
    doc: "Every marker voxel keeps its label; the rest of the image (or of `mask`) takes the label of \
          the marker whose flood reaches it first, flooding from low values to high ones (a voxel \
          reached over a ridge waits at the ridge's level). Equal to \
          `skimage.segmentation.watershed(image, markers, connectivity=…, mask=mask)` label for \
          label, including ties between equal values (scikit-image's heap order is reproduced). \
          The image's values are compared as float64, as scikit-image does; `invert: true` floods \
          from high values to low ones — scikit-image on `-image.astype(float)` — which is how a \
          distance map splits touching objects: markers at its maxima (`h_maxima`, then \
          `label`), the flood spreading down from them inside the objects' mask. \
          Markers outside the mask are dropped (as scikit-image does); voxels outside the mask \
          stay 0, and so do voxels the flood cannot reach. \
          Labels are the markers' own, so objects keep the numbering of their markers. \
          The flood is one global order, so the stage runs in memory: in a streamed or split run \
          in one task, when its inputs, its output and 32 bytes a voxel fit --memory; otherwise \
          the sample stops with a message naming the stage.",
    params: &[
        ParamDoc { name: "input", ty: "stage (image)", default: None, doc: "The landscape to flood (a distance map, a gradient)." },
        ParamDoc { name: "markers", ty: "stage (labels)", default: None, doc: "The seeds, one label per object to grow." },
        ParamDoc { name: "mask", ty: "stage (mask)", default: Some("none"), doc: "Only voxels of the mask are flooded." },
        ParamDoc {
            name: "connectivity",
            ty: "4 | 8 (2D), 6 | 18 | 26 (3D)",
            default: Some("4 in 2D, 6 in 3D"),
            doc: "Which neighbours the flood steps to (scikit-image's `connectivity` 1, 2, 3).",
        },
        ParamDoc {
            name: "invert",
            ty: "boolean",
            default: Some("false"),
            doc: "Flood from high values to low ones (a distance map from its maxima).",
        },
    ],
    build: build::<Watershed>,
    fields: fields_of::<Watershed>,
    examples: &["input: {image}, markers: {labels}", "input: {image}, markers: {labels}, mask: {mask}, connectivity: 26, invert: true"],
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HMaxima {
    pub input: String,
    pub h: f64,
    #[serde(default)]
    pub connectivity: Option<u8>,
}

pub static H_MAXIMA: OpInfo = OpInfo {
    name: "h_maxima",
    family: "segmentation",
    version: 1,
    output: Kind::Mask,
    same_kind: false,
    summary: "Image → mask of its maxima that rise at least h above their surroundings (watershed markers).",
    doc: "The regional maxima of the image that are at least `h` high: voxels whose value exceeds \
          the morphological reconstruction by dilation of image − h under the image by h or more. \
          Equal to `skimage.morphology.h_maxima(image, h, footprint)` voxel for voxel, with its \
          arithmetic: integer images subtract an integral h with clipping at 0; float32 images \
          subtract h and a relative 2e-6·|v| in float32 (so that rounding cannot create maxima); an \
          integral image with a fractional h is compared in float64. An h larger than the image's \
          range gives an empty mask. Label the mask (op: label) to get one marker per maximum for \
          `watershed`; on a distance map of touching round objects, smoothed a little (gaussian, \
          sigma 1–2 voxels) so that each object has one dome, h of half a voxel to a voxel gives \
          one marker per object. Runs in memory like `watershed` (in one task of a streamed or \
          split run when it fits --memory).",
    params: &[
        ParamDoc { name: "input", ty: "stage (image)", default: None, doc: "The image (e.g. a distance map)." },
        ParamDoc {
            name: "h",
            ty: "number > 0",
            default: None,
            doc: "The least height of a maximum above its surroundings, in image values.",
        },
        ParamDoc {
            name: "connectivity",
            ty: "4 | 8 (2D), 6 | 18 | 26 (3D)",
            default: Some("8 in 2D, 26 in 3D"),
            doc: "The reconstruction's neighbourhood (scikit-image's default footprint is the full one).",
        },
    ],
    build: build::<HMaxima>,
    fields: fields_of::<HMaxima>,
    examples: &["input: {image}, h: 2", "input: {image}, h: 0.5, connectivity: 6"],
};

/// The image a flood or reconstruction reads: grey, not colour.
fn grey(img: &Meta, op: &str) -> Result<(), ParamIssue> {
    expect_image(img, "input", op)?;
    if matches!(img.dtype, Some(crate::io::DType::Rgb8 | crate::io::DType::Rgb16)) {
        return Err(
            ParamIssue::new("input", format!("`{op}` needs a grey image, not a colour one")).help("convert it first (op: grayscale)")
        );
    }
    Ok(())
}

impl Watershed {
    fn connectivity_for(&self, ndim: u8) -> u8 {
        self.connectivity.unwrap_or(if ndim == 2 { 4 } else { 6 })
    }
}

impl Op for Watershed {
    fn info(&self) -> &'static OpInfo {
        &WATERSHED
    }
    fn inputs(&self) -> Vec<Input> {
        let mut v = vec![
            Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Image] },
            Input { role: "markers", stage: self.markers.clone(), accepts: &[Kind::Labels] },
        ];
        if let Some(m) = &self.mask {
            v.push(Input { role: "mask", stage: m.clone(), accepts: &[Kind::Mask] });
        }
        v
    }
    fn halo(&self) -> Halo {
        Halo::Global
    }
    fn check(&self) -> Vec<ParamIssue> {
        super::connectivity_issue(self.connectivity).into_iter().collect()
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        let img = &inputs[0];
        grey(img, "watershed")?;
        let m = &inputs[1];
        if m.kind != Kind::Labels {
            return Err(ParamIssue::new("markers", format!("`markers` must be labels but is {}", m.kind.with_article()))
                .help("label the markers' mask first (op: label)"));
        }
        for (meta, field) in inputs[1..].iter().zip(["markers", "mask"]) {
            if meta.shape != img.shape {
                return Err(ParamIssue::new(field, format!("`{field}` is {:?} (z, y, x) but the image is {:?}", meta.shape, img.shape)));
            }
        }
        super::connectivity_fits(self.connectivity_for(img.ndim), img.ndim)?;
        Ok(Meta { kind: Kind::Labels, dtype: None, ..img.clone() })
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let Value::Image(d) = inputs[0] else { return Err("watershed: `input` is not an image".into()) };
        let Value::Labels(markers) = inputs[1] else { return Err("watershed: `markers` are not labels".into()) };
        let mask = match inputs.get(2) {
            Some(Value::Mask(m)) => Some(m),
            Some(_) => return Err("watershed: `mask` is not a mask".into()),
            None => None,
        };
        Ok(Value::Labels(watershed(d, self.invert, &markers.u32(), mask, self.connectivity_for(ctx.ndim))?.into()))
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn streams(&self, _inputs: &[Meta]) -> Result<(), String> {
        Err(WHOLE.into())
    }
}

/// Why the two ops have no out-of-core form.
const WHOLE: &str = "needs the whole image in memory (its result depends on one global order of the voxels)";

impl HMaxima {
    fn connectivity_for(&self, ndim: u8) -> u8 {
        self.connectivity.unwrap_or(if ndim == 2 { 8 } else { 26 })
    }
}

impl Op for HMaxima {
    fn info(&self) -> &'static OpInfo {
        &H_MAXIMA
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Image] }]
    }
    fn halo(&self) -> Halo {
        Halo::Global
    }
    fn check(&self) -> Vec<ParamIssue> {
        let mut v: Vec<ParamIssue> = super::connectivity_issue(self.connectivity).into_iter().collect();
        if !(self.h > 0.0 && self.h.is_finite()) {
            v.push(
                ParamIssue::new("h", format!("h must be a number above 0, not {}", self.h)).help("h = 0 would mark every regional maximum"),
            );
        }
        v
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        let img = &inputs[0];
        grey(img, "h_maxima")?;
        super::connectivity_fits(self.connectivity_for(img.ndim), img.ndim)?;
        Ok(Meta { kind: Kind::Mask, dtype: None, ..img.clone() })
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let Value::Image(d) = inputs[0] else { return Err("h_maxima: `input` is not an image".into()) };
        Ok(Value::Mask(h_maxima(d, self.h, self.connectivity_for(ctx.ndim))?))
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn streams(&self, _inputs: &[Meta]) -> Result<(), String> {
        Err(WHOLE.into())
    }
}

/// Neighbour offsets (z, y, x) of a connectivity (4/8 in 2D, 6/18/26 in 3D) in scikit-image's
/// order: the footprint's offsets in raster order (the `label` op's backward ones, then their
/// mirror images), stably sorted by distance.
pub fn offsets(connectivity: u8) -> Vec<[isize; 3]> {
    let back = super::label::backward_offsets(connectivity);
    let mut v: Vec<[isize; 3]> = back.iter().copied().chain(back.iter().rev().map(|o| o.map(|d| -d))).collect();
    v.sort_by_key(|o| o.iter().filter(|&&d| d != 0).count());
    v
}

/// A voxel value's flood order key: the value as float64 (negated with `invert`), mapped to an
/// integer in the same order (−0 and +0 equal).
#[inline]
fn key(v: f64, invert: bool) -> u64 {
    let v = if invert { -v } else { v } + 0.0;
    let b = v.to_bits();
    if b >> 63 == 1 { !b } else { b | 1 << 63 }
}

/// One heap entry: the flood key, the push count (0 for markers), the voxel.
#[derive(Clone, Copy)]
struct Item {
    key: u64,
    age: u64,
    at: usize,
}

impl Item {
    #[inline]
    fn before(&self, o: &Item) -> bool {
        (self.key, self.age) < (o.key, o.age)
    }
}

/// A binary min-heap with the textbook sift-up and sift-down (the left child wins ties), the
/// order scikit-image's watershed heap pops equal items in.
struct Heap(Vec<Item>);

impl Heap {
    fn push(&mut self, it: Item) {
        let v = &mut self.0;
        v.push(it);
        let mut c = v.len() - 1;
        while c > 0 {
            let p = (c - 1) / 2;
            if v[c].before(&v[p]) {
                v.swap(c, p);
                c = p;
            } else {
                break;
            }
        }
    }
    fn pop(&mut self) -> Option<Item> {
        let v = &mut self.0;
        let last = v.pop()?;
        if v.is_empty() {
            return Some(last);
        }
        let top = std::mem::replace(&mut v[0], last);
        let n = v.len();
        let mut i = 0;
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            if l >= n {
                break;
            }
            let mut s = i;
            if v[l].before(&v[i]) {
                s = l;
            }
            if r < n && v[r].before(&v[s]) {
                s = r;
            }
            if s == i {
                break;
            }
            v.swap(i, s);
            i = s;
        }
        Some(top)
    }
}

/// Flat neighbour steps with their bounds: (offset, dz, dy, dx).
fn steps(offs: &[[isize; 3]], ny: usize, nx: usize) -> Vec<(isize, [isize; 3])> {
    offs.iter().map(|&[dz, dy, dx]| (dz * (ny * nx) as isize + dy * nx as isize + dx, [dz, dy, dx])).collect()
}

#[inline]
fn inside(z: usize, y: usize, x: usize, d: [isize; 3], dims: (usize, usize, usize)) -> bool {
    let (nz, ny, nx) = dims;
    let ok = |v: usize, dv: isize, n: usize| match dv {
        -1 => v > 0,
        1 => v + 1 < n,
        _ => true,
    };
    ok(z, d[0], nz) && ok(y, d[1], ny) && ok(x, d[2], nx)
}

/// The watershed flood of the image `d` (from high values with `invert`) from `markers`, within
/// `mask`.
pub fn watershed(
    d: &Data,
    invert: bool,
    markers: &Array3<u32>,
    mask: Option<&Array3<u8>>,
    connectivity: u8,
) -> Result<Array3<u32>, String> {
    fn typed<T: Copy + Into<f64>>(
        img: &Array3<T>,
        invert: bool,
        markers: &Array3<u32>,
        mask: Option<&Array3<u8>>,
        offs: &[[isize; 3]],
    ) -> Array3<u32> {
        let img = img.as_standard_layout();
        let values = img.as_slice().expect("standard layout");
        let mask = mask.map(|m| m.as_standard_layout());
        let inmask = mask.as_ref().map(|m| m.as_slice().expect("standard layout"));
        flood(|i| key(values[i].into(), invert), markers, inmask, offs)
    }
    let offs = offsets(connectivity);
    if mask.is_some() && markers.iter().any(|&l| l == OUTSIDE) {
        return Err(format!("watershed: marker label {OUTSIDE} is reserved with a mask (relabel the markers: op label)"));
    }
    Ok(match d {
        Data::U8(a) => typed(a, invert, markers, mask, &offs),
        Data::U16(a) => typed(a, invert, markers, mask, &offs),
        Data::U32(a) => typed(a, invert, markers, mask, &offs),
        Data::F32(a) => {
            if a.iter().any(|v| v.is_nan()) {
                return Err("watershed: the image has NaN voxels, which have no place in the flood order".into());
            }
            typed(a, invert, markers, mask, &offs)
        }
        Data::Rgb8(_) | Data::Rgb16(_) => return Err("watershed: the image is in colour".into()),
    })
}

/// Marks voxels outside the mask while flooding (never 0; a marker with this label is refused).
const OUTSIDE: u32 = u32::MAX;

/// The flood itself, with `key(i)` the order key of voxel i (raster order).
fn flood(key: impl Fn(usize) -> u64, markers: &Array3<u32>, inmask: Option<&[u8]>, offs: &[[isize; 3]]) -> Array3<u32> {
    use rayon::prelude::*;
    let dims = markers.dim();
    let (_, ny, nx) = dims;
    // The labels so far, with the voxels outside the mask marked (one array to look at per
    // neighbour); markers outside the mask are dropped, as scikit-image does.
    let markers = markers.as_standard_layout();
    let m = markers.as_slice().expect("standard layout");
    let mut out = vec![0u32; m.len()];
    const CHUNK: usize = 1 << 16;
    match inmask {
        Some(k) => out.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK)).zip(k.par_chunks(CHUNK)).for_each(|((o, m), k)| {
            for ((o, &l), &k) in o.iter_mut().zip(m).zip(k) {
                *o = if k != 0 { l } else { OUTSIDE };
            }
        }),
        None => out.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK)).for_each(|(o, m)| o.copy_from_slice(m)),
    }
    let steps = steps(offs, ny, nx);
    let mut heap = Heap(Vec::with_capacity(1024));
    for (i, &l) in out.iter().enumerate() {
        if l != 0 && l != OUTSIDE {
            heap.push(Item { key: key(i), age: 0, at: i });
        }
    }
    let mut age = 1u64;
    let plane = ny * nx;
    while let Some(it) = heap.pop() {
        let i = it.at;
        let (z, y, x) = (i / plane, i % plane / nx, i % nx);
        let l = out[i];
        for &(step, d) in &steps {
            if !inside(z, y, x, d, dims) {
                continue;
            }
            let j = (i as isize + step) as usize;
            if out[j] != 0 {
                continue;
            }
            age += 1;
            out[j] = l;
            // The flood's level never falls: a voxel reached over a ridge waits at the ridge's level.
            heap.push(Item { key: key(j).max(it.key), age, at: j });
        }
    }
    if inmask.is_some() {
        out.par_chunks_mut(CHUNK).for_each(|o| o.iter_mut().filter(|v| **v == OUTSIDE).for_each(|v| *v = 0));
    }
    Array3::from_shape_vec(dims, out).unwrap_or_else(|_| Array3::zeros(dims))
}

/// Reconstruction by dilation of `seed` under `mask` (seed ≤ mask), in place: Vincent's hybrid
/// algorithm (a raster scan, an anti-raster scan that queues voxels that can still spread, then
/// a FIFO propagation).
fn reconstruct<T: Copy + PartialOrd>(j: &mut [T], mask: &[T], dims: (usize, usize, usize), offs: &[[isize; 3]]) {
    let (nz, ny, nx) = dims;
    let plane = ny * nx;
    let all = steps(offs, ny, nx);
    let forward: Vec<_> = all.iter().copied().filter(|s| s.0 < 0).collect();
    let backward: Vec<_> = all.iter().copied().filter(|s| s.0 > 0).collect();
    let across_z = offs.iter().any(|d| d[0] != 0);
    // Voxels with every neighbour inside the image skip the bounds checks.
    let interior = |z: usize, y: usize, x: usize| (!across_z || (z > 0 && z + 1 < nz)) && y > 0 && y + 1 < ny && x > 0 && x + 1 < nx;
    let max = |a: T, b: T| if b > a { b } else { a };
    let min = |a: T, b: T| if b < a { b } else { a };
    // The largest of j over voxel i and its neighbours among `steps`.
    let top = |j: &[T], i: usize, z: usize, y: usize, x: usize, steps: &[(isize, [isize; 3])]| {
        let mut m = j[i];
        if interior(z, y, x) {
            for &(s, _) in steps {
                m = max(m, j[(i as isize + s) as usize]);
            }
        } else {
            for &(s, d) in steps {
                if inside(z, y, x, d, dims) {
                    m = max(m, j[(i as isize + s) as usize]);
                }
            }
        }
        m
    };
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let i = z * plane + y * nx + x;
                j[i] = min(top(j, i, z, y, x, &forward), mask[i]);
            }
        }
    }
    let mut queue = VecDeque::new();
    for z in (0..nz).rev() {
        for y in (0..ny).rev() {
            for x in (0..nx).rev() {
                let i = z * plane + y * nx + x;
                let v = min(top(j, i, z, y, x, &backward), mask[i]);
                j[i] = v;
                let inner = interior(z, y, x);
                let spreads = backward.iter().any(|&(s, d)| {
                    (inner || inside(z, y, x, d, dims)) && {
                        let q = (i as isize + s) as usize;
                        j[q] < v && j[q] < mask[q]
                    }
                });
                if spreads {
                    queue.push_back(i);
                }
            }
        }
    }
    while let Some(p) = queue.pop_front() {
        let (z, y, x) = (p / plane, p % plane / nx, p % nx);
        let inner = interior(z, y, x);
        for &(s, d) in &all {
            if !inner && !inside(z, y, x, d, dims) {
                continue;
            }
            let q = (p as isize + s) as usize;
            if j[q] < j[p] && mask[q] != j[q] {
                j[q] = min(j[p], mask[q]);
                queue.push_back(q);
            }
        }
    }
}

/// The h-maxima of an image, as scikit-image computes them (see [`H_MAXIMA`]).
pub fn h_maxima(d: &Data, h: f64, connectivity: u8) -> Result<Array3<u8>, String> {
    let offs = offsets(connectivity);
    fn ints<T: Copy + Ord + Into<f64> + TryFrom<u64>>(a: &Array3<T>, h: f64, offs: &[[isize; 3]], sub: fn(T, T) -> T) -> Array3<u8> {
        let dims = a.dim();
        let v: Vec<T> = a.iter().copied().collect();
        let (Some(&lo), Some(&hi)) = (v.iter().min(), v.iter().max()) else { return Array3::zeros(dims) };
        if h > hi.into() - lo.into() {
            return Array3::zeros(dims);
        }
        if h.fract() != 0.0 {
            // A fractional h: the image in float64, with a relative resolution of 2e-15.
            let f: Vec<f64> = v.iter().map(|&x| x.into()).collect();
            let mut seed: Vec<f64> = f.iter().map(|&x| x - h - 2.0 * 1e-15 * x.abs()).collect();
            reconstruct(&mut seed, &f, dims, offs);
            let out = f.iter().zip(&seed).map(|(&x, &r)| (x - r >= h) as u8).collect();
            return Array3::from_shape_vec(dims, out).unwrap_or_else(|_| Array3::zeros(dims));
        }
        let Ok(hi_t) = T::try_from(h as u64) else { return Array3::zeros(dims) };
        let mut seed: Vec<T> = v.iter().map(|&x| sub(x, hi_t)).collect();
        reconstruct(&mut seed, &v, dims, offs);
        let out = v.iter().zip(&seed).map(|(&x, &r)| (x.into() - r.into() >= h) as u8).collect();
        Array3::from_shape_vec(dims, out).unwrap_or_else(|_| Array3::zeros(dims))
    }
    Ok(match d {
        Data::U8(a) => ints(a, h, &offs, u8::saturating_sub),
        Data::U16(a) => ints(a, h, &offs, u16::saturating_sub),
        Data::U32(a) => ints(a, h, &offs, u32::saturating_sub),
        Data::F32(a) => {
            let dims = a.dim();
            let v: Vec<f32> = a.iter().copied().collect();
            if v.iter().any(|x| x.is_nan()) {
                return Err("h_maxima: the image has NaN voxels".into());
            }
            let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if v.is_empty() || h > (hi - lo) as f64 {
                return Ok(Array3::zeros(dims));
            }
            // float32 arithmetic, as numpy does it on a float32 image with a Python float h.
            let (h32, res) = (h as f32, 2.0f32 * 1e-6f32);
            let mut seed: Vec<f32> = v.iter().map(|&x| (x - h32) - res * x.abs()).collect();
            reconstruct(&mut seed, &v, dims, &offs);
            let out = v.iter().zip(&seed).map(|(&x, &r)| (x as f64 - r as f64 >= h) as u8).collect();
            Array3::from_shape_vec(dims, out).unwrap_or_else(|_| Array3::zeros(dims))
        }
        Data::Rgb8(_) | Data::Rgb16(_) => return Err("h_maxima: the image is in colour".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_in_scikit_image_order() {
        assert_eq!(offsets(6), vec![[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, 1], [0, 1, 0], [1, 0, 0]]);
        assert_eq!(offsets(4), vec![[0, -1, 0], [0, 0, -1], [0, 0, 1], [0, 1, 0]]);
        assert_eq!(offsets(26).len(), 26);
        assert_eq!(offsets(18)[6], [-1, -1, 0]);
    }

    #[test]
    fn heap_pops_in_key_then_age_order() {
        let mut h = Heap(Vec::new());
        let mut x = 7u64;
        let mut want = Vec::new();
        for age in 0..500u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let key = x >> 60;
            h.push(Item { key, age, at: age as usize });
            want.push((key, age));
        }
        want.sort();
        let got: Vec<(u64, u64)> = std::iter::from_fn(|| h.pop()).map(|i| (i.key, i.age)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn two_basins_meet_between_their_markers() {
        // 1D valley profile along x: markers at both minima.
        let img = Data::U8(Array3::from_shape_vec((1, 1, 7), vec![0, 1, 2, 5, 2, 1, 0]).unwrap());
        let mut m = Array3::<u32>::zeros((1, 1, 7));
        m[[0, 0, 0]] = 1;
        m[[0, 0, 6]] = 2;
        let out = watershed(&img, false, &m, None, 4).unwrap();
        assert_eq!(out.iter().copied().collect::<Vec<_>>(), vec![1, 1, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn a_marker_with_the_reserved_label_is_an_error() {
        let img = Data::U8(Array3::zeros((1, 2, 2)));
        let m = Array3::from_elem((1, 2, 2), u32::MAX);
        let k = Array3::from_elem((1, 2, 2), 1u8);
        assert!(watershed(&img, false, &m, Some(&k), 4).unwrap_err().contains("reserved"));
        assert!(watershed(&img, false, &m, None, 4).is_ok());
    }

    #[test]
    fn h_maxima_of_two_peaks() {
        let img = Data::U8(Array3::from_shape_vec((1, 1, 9), vec![0, 3, 9, 3, 0, 2, 4, 2, 0]).unwrap());
        let got = |h: f64| h_maxima(&img, h, 8).unwrap().iter().copied().collect::<Vec<_>>();
        assert_eq!(got(3.0), vec![0, 0, 1, 0, 0, 0, 1, 0, 0]);
        assert_eq!(got(5.0), vec![0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(got(10.0), vec![0; 9]);
    }
}
