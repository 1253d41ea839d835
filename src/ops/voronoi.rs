//! Voronoi territories: every voxel of a mask takes the label of the nearest object voxel
//! (Euclidean, physical spacing; ties → the lower label).
//!
//! Exact by separability: the nearest (squared distance, label) pair, compared
//! lexicographically, decomposes over axes, so three 1D passes of a lower envelope of parabolas
//! (as in the distance transform) that keep label ties give the brute-force answer.

use ndarray::{Array3, Axis, Zip, s};
use serde::{Deserialize, Serialize};

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
    version: 1,
    output: Kind::Labels,
    same_kind: false,
    summary: "Labels + mask → labels: each mask voxel takes the label of the nearest object (its territory).",
    doc: "For every voxel of `mask`, the label of the nearest voxel of any object in `labels`, by \
          straight-line Euclidean distance in physical units (the spacing); ties go to the lower \
          label. Voxels outside the mask are 0, so measuring the result gives each object's \
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
        Ok(Value::Labels(voronoi(l, m, ctx.spacing, ctx.ndim)))
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
}

/// Buffers one thread reuses from line to line.
#[derive(Default)]
struct Scratch {
    f0: Vec<f64>,
    l0: Vec<u32>,
    v: Vec<usize>,
    z: Vec<f64>,
}

/// One line: for each i, the lexicographic min over q of (f[q] + ((i−q)·w)², lab[q]).
fn line(f: &mut [f64], lab: &mut [u32], w: f64, sc: &mut Scratch) {
    let n = f.len();
    let Scratch { f0, l0, v, z } = sc;
    super::distance::lower_envelope(f, w, v, z);
    if v.is_empty() {
        return;
    }
    f0.clear();
    f0.extend_from_slice(f);
    l0.clear();
    l0.extend_from_slice(lab);
    let mut k = 0;
    for i in 0..n {
        let x = i as f64;
        while k + 1 < v.len() && z[k + 1] < x {
            k += 1;
        }
        let val = |q: usize| {
            let d = (x - q as f64) * w;
            d * d + f0[q]
        };
        let mut best = (val(v[k]), l0[v[k]]);
        // Parabolas whose region starts exactly here tie with the current one.
        let mut j = k + 1;
        while j < v.len() && z[j] <= x {
            let cand = (val(v[j]), l0[v[j]]);
            if cand.0 < best.0 || (cand.0 == best.0 && cand.1 < best.1) {
                best = cand;
            }
            j += 1;
        }
        // Also the neighbours in the envelope at an exact tie (equal values from both sides).
        if k > 0 {
            let cand = (val(v[k - 1]), l0[v[k - 1]]);
            if cand.0 == best.0 && cand.1 < best.1 {
                best = cand;
            }
        }
        f[i] = best.0;
        lab[i] = best.1;
    }
}

/// Territories of `labels` inside `mask`.
pub fn voronoi(labels: &Array3<u32>, mask: &Array3<u8>, spacing: [f64; 3], ndim: u8) -> Array3<u32> {
    let (mut f, mut lab) = plane_passes(labels, spacing);
    if ndim != 2 {
        axis_pass(&mut f, &mut lab, 0, spacing[0]);
    }
    outside_to_zero(&mut lab, mask);
    lab
}

/// Territories stop at the mask: labels outside it are 0.
fn outside_to_zero(lab: &mut Array3<u32>, mask: &Array3<u8>) {
    Zip::from(lab).and(mask).for_each(|l, &m| {
        if m == 0 {
            *l = 0;
        }
    });
}

/// The passes within planes, x then y: the nearest (squared distance, label) within each plane
/// of `labels`, a whole image or any z-slab of it.
fn plane_passes(labels: &Array3<u32>, spacing: [f64; 3]) -> (Array3<f64>, Array3<u32>) {
    let mut f: Array3<f64> = crate::util::map3(labels, |l| if l > 0 { 0.0 } else { f64::INFINITY });
    let mut lab = crate::util::map3(labels, |l| l);
    axis_pass(&mut f, &mut lab, 2, spacing[2]);
    axis_pass(&mut f, &mut lab, 1, spacing[1]);
    (f, lab)
}

/// One pass along `axis` over every line of `f` and `lab`, in parallel, each thread reusing its
/// buffers: rows (x) in place; columns (y, z) gathered a plane at a time into contiguous lines
/// and scattered back, as the distance transform does.
fn axis_pass(f: &mut Array3<f64>, lab: &mut Array3<u32>, axis: usize, w: f64) {
    use rayon::prelude::*;
    let (_, _, nx) = f.dim();
    if f.is_empty() {
        return;
    }
    if axis == 2 {
        let fs = f.as_slice_mut().expect("standard layout");
        let ls = lab.as_slice_mut().expect("standard layout");
        fs.par_chunks_mut(nx).zip(ls.par_chunks_mut(nx)).for_each_init(Scratch::default, |sc, (fr, lr)| line(fr, lr, w, sc));
        return;
    }
    let n = f.len_of(Axis(axis));
    let other = if axis == 1 { 0 } else { 1 };
    f.axis_iter_mut(Axis(other)).into_par_iter().zip(lab.axis_iter_mut(Axis(other))).for_each_init(
        || (Scratch::default(), Vec::new(), Vec::new()),
        |(sc, cf, cl), (mut fp, mut lp)| {
            // `fp`, `lp` are (n × nx), x contiguous: one contiguous line per x.
            cf.resize(n * nx, 0f64);
            cl.resize(n * nx, 0u32);
            for (k, (fr, lr)) in fp.rows().into_iter().zip(lp.rows()).enumerate() {
                for (x, (&a, &b)) in fr.iter().zip(lr.iter()).enumerate() {
                    cf[x * n + k] = a;
                    cl[x * n + k] = b;
                }
            }
            for (fl, ll) in cf.chunks_mut(n).zip(cl.chunks_mut(n)) {
                line(fl, ll, w, sc);
            }
            for (k, (mut fr, mut lr)) in fp.rows_mut().into_iter().zip(lp.rows_mut()).enumerate() {
                for (x, (a, b)) in fr.iter_mut().zip(lr.iter_mut()).enumerate() {
                    *a = cf[x * n + k];
                    *b = cl[x * n + k];
                }
            }
        },
    );
}

/// A block's state in one `u32` scratch volume, four words a voxel: the f64 distance exactly
/// (low, high), the label, the mask (planes four times as wide).
fn pack(f: &Array3<f64>, lab: &Array3<u32>, mask: &Array3<u8>) -> Array3<u32> {
    let (z, y, x) = f.dim();
    let mut w = Vec::with_capacity(4 * f.len());
    for ((&v, &l), &m) in f.iter().zip(lab.iter()).zip(mask.iter()) {
        let b = v.to_bits();
        w.extend([b as u32, (b >> 32) as u32, l, m as u32]);
    }
    Array3::from_shape_vec((z, y, 4 * x), w).expect("four words a voxel")
}

fn unpack(w: &Array3<u32>) -> (Array3<f64>, Array3<u32>, Array3<u8>) {
    let (z, y, x4) = w.dim();
    let sh = (z, y, x4 / 4);
    let words = w.as_standard_layout();
    let words = words.as_slice().expect("standard");
    let f: Vec<f64> = words.chunks_exact(4).map(|p| f64::from_bits(p[0] as u64 | (p[1] as u64) << 32)).collect();
    let l: Vec<u32> = words.chunks_exact(4).map(|p| p[2]).collect();
    let m: Vec<u8> = words.chunks_exact(4).map(|p| p[3] as u8).collect();
    let shaped = "four words a voxel";
    (
        Array3::from_shape_vec(sh, f).expect(shaped),
        Array3::from_shape_vec(sh, l).expect(shaped),
        Array3::from_shape_vec(sh, m).expect(shaped),
    )
}

/// [`voronoi`] out of core, as `distance` streams: (1) each z-slab through the passes within
/// planes, its rows (distances, labels, mask) set aside by blocks of rows; (2) each block whole
/// along z, the mask applied, set aside again; (3) gathered back into z-slabs and emitted. Every
/// line is computed as in memory, so the labels are the same.
fn voronoi_streamed(io: &mut dyn Slabs, spacing: [f64; 3]) -> Result<(), String> {
    let nz = io.input(0).shape()[0];
    // Per voxel of a block: its packed words as read, then the f64 distance, the label, the
    // mask, and the line buffers.
    let blocks = slab::row_blocks(io, 16 + 8 + 4 + 1 + 12);
    let mut parts: Vec<Box<dyn slab::Scratch>> = Vec::new();
    for b in 0..blocks.len() {
        parts.push(io.scratch(&format!("b{b}"))?);
    }
    // Beside the labels and mask: the f64 distances, the labels again, the packed block rows,
    // and the line buffers.
    let planes = io.planes(8 + 4 + 16 + 12);
    for (z0, z1) in slab::ranges(nz, planes) {
        let (Value::Labels(l), Value::Mask(m)) = (io.input(0).read(z0, z1)?, io.input(1).read(z0, z1)?) else {
            return Err("voronoi: needs labels and a mask".into());
        };
        let (f, lab) = plane_passes(&l, spacing);
        for (b, &(y0, y1)) in blocks.iter().enumerate() {
            let rows = s![.., y0..y1, ..];
            parts[b].append(&Value::Labels(pack(&f.slice(rows).to_owned(), &lab.slice(rows).to_owned(), &m.slice(rows).to_owned())))?;
        }
    }
    let mut done: Vec<Box<dyn slab::Scratch>> = Vec::new();
    let mut max = 0u32;
    for (b, part) in parts.into_iter().enumerate() {
        let Value::Labels(words) = part.read(0, nz)? else { return Err("voronoi: scratch block".into()) };
        drop(part);
        let (mut fb, mut lab, mask) = unpack(&words);
        drop(words);
        axis_pass(&mut fb, &mut lab, 0, spacing[0]);
        outside_to_zero(&mut lab, &mask);
        max = max.max(crate::util::max3(&lab));
        let mut out = io.scratch(&format!("t{b}"))?;
        out.append(&Value::Labels(lab))?;
        done.push(out);
    }
    io.labels_max(max);
    let planes = io.planes(4);
    slab::emit_blocks(io, &blocks, &done, planes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(labels: &Array3<u32>, mask: &Array3<u8>, s: [f64; 3]) -> Array3<u32> {
        let objs: Vec<((usize, usize, usize), u32)> = labels.indexed_iter().filter(|(_, l)| **l > 0).map(|(i, l)| (i, *l)).collect();
        Array3::from_shape_fn(labels.dim(), |(z, y, x)| {
            if mask[[z, y, x]] == 0 {
                return 0;
            }
            let mut best = (f64::INFINITY, 0u32);
            for &((a, b, c), l) in &objs {
                let (dz, dy, dx) = ((z as f64 - a as f64) * s[0], (y as f64 - b as f64) * s[1], (x as f64 - c as f64) * s[2]);
                let d = dz * dz + dy * dy + dx * dx;
                if d < best.0 || (d == best.0 && l < best.1) {
                    best = (d, l);
                }
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
        for (trial, s) in [[1.0, 1.0, 1.0], [2.0, 0.5, 1.0], [1.0, 1.0, 0.5]].iter().cycle().take(300).enumerate() {
            let dims = (1 + rnd(6) as usize, 2 + rnd(9) as usize, 2 + rnd(9) as usize);
            let mut labels = Array3::<u32>::zeros(dims);
            for _ in 0..1 + rnd(6) {
                let (z, y, x) = (rnd(dims.0 as u64) as usize, rnd(dims.1 as u64) as usize, rnd(dims.2 as u64) as usize);
                labels[[z, y, x]] = 1 + rnd(5) as u32;
            }
            let mask = Array3::from_shape_fn(dims, |_| (rnd(4) != 0) as u8);
            let ndim = if dims.0 == 1 { 2 } else { 3 };
            assert_eq!(voronoi(&labels, &mask, *s, ndim), brute(&labels, &mask, *s), "trial {trial} spacing {s:?}");
        }
    }

    #[test]
    fn symmetric_tie_goes_to_lower_label() {
        let mut labels = Array3::<u32>::zeros((1, 1, 5));
        labels[[0, 0, 0]] = 7;
        labels[[0, 0, 4]] = 3;
        let mask = Array3::from_elem((1, 1, 5), 1u8);
        assert_eq!(voronoi(&labels, &mask, [1.0; 3], 2).into_raw_vec_and_offset().0, vec![7, 7, 3, 3, 3]);
    }
}
