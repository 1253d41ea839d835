//! Binary morphology on masks: erosion, dilation, opening, closing with a ball or cube, and
//! hole filling — each equal to the scipy.ndimage `binary_*` function with the same structuring
//! element and voxels outside the image counting as background (`border_value=0`).
//!
//! A structuring element is stored as rows: for every (dz, dy) it reaches, the half-width w of
//! its symmetric run along x. Masks are packed 64 voxels to a word per x-row, and each output
//! row is the AND (erosion) or OR (dilation) over the element's rows of shifted source rows, so
//! the cost is (rows × element rows × 2w+1) word operations.

use ndarray::Array3;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::label::SlabLabeller;
use super::slab::{self, Slabs};
use super::{Ctx, Halo, Input, Kind, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, fields_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    #[default]
    Ball,
    Cube,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RadiusUnit {
    #[default]
    Voxel,
    Physical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Morph {
    Erosion,
    Dilation,
    Opening,
    Closing,
}

/// Parameters shared by the four morphology ops.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MorphParams {
    pub input: String,
    pub radius: f64,
    #[serde(default)]
    pub shape: Shape,
    #[serde(default)]
    pub radius_unit: RadiusUnit,
}

const MORPH_PARAMS: &[ParamDoc] = &[
    ParamDoc { name: "input", ty: "stage (mask)", default: None, doc: "The mask." },
    ParamDoc {
        name: "radius",
        ty: "number ≥ 0",
        default: None,
        doc: "Radius of the structuring element, in voxels (or in the spacing's unit with `radius_unit: physical`).",
    },
    ParamDoc {
        name: "shape",
        ty: "ball | cube",
        default: Some("ball"),
        doc: "`ball`: offsets with (dz·sz)² + (dy·sy)² + (dx·sx)² ≤ r² (s = 1 in voxel units, so dz²+dy²+dx² ≤ r²; an ellipsoid in physical units); `cube`: |d·s| ≤ r on every axis.",
    },
    ParamDoc {
        name: "radius_unit",
        ty: "voxel | physical",
        default: Some("voxel"),
        doc: "Whether `radius` is in voxels or in the spacing's unit.",
    },
];

macro_rules! morph_op {
    ($ty:ident, $info:ident, $name:literal, $kind:expr, $summary:literal, $doc:literal) => {
        #[derive(Debug, Clone, Deserialize, Serialize)]
        #[serde(transparent)]
        pub struct $ty(pub MorphParams);

        pub static $info: OpInfo = OpInfo {
            name: $name,
            family: "morphology",
            version: 1,
            output: Kind::Mask,
            same_kind: false,
            summary: $summary,
            doc: $doc,
            params: MORPH_PARAMS,
            build: build::<$ty>,
            fields: fields_of::<MorphParams>,
            examples: &["input: {mask}, radius: 1", "input: {mask}, radius: 1, shape: cube"],
        };

        impl Op for $ty {
            fn info(&self) -> &'static OpInfo {
                &$info
            }
            fn inputs(&self) -> Vec<Input> {
                vec![Input { role: "input", stage: self.0.input.clone(), accepts: &[Kind::Mask] }]
            }
            fn halo(&self) -> Halo {
                self.0.halo($kind)
            }
            fn halo_for(&self, ctx: &Ctx) -> Halo {
                let se = Element::new(self.0.radius, self.0.shape, self.0.radius_unit, ctx.spacing, ctx.ndim);
                let twice = if matches!($kind, Morph::Opening | Morph::Closing) { 2 } else { 1 };
                Halo::Local(se.reach().map(|r| r * twice))
            }
            fn check(&self) -> Vec<ParamIssue> {
                self.0.check()
            }
            fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
                mask_in(&inputs[0], $name)
            }
            fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
                let Value::Mask(m) = inputs[0] else { return Err(format!("{}: input is not a mask", $name)) };
                let se = Element::new(self.0.radius, self.0.shape, self.0.radius_unit, ctx.spacing, ctx.ndim);
                Ok(Value::Mask(morph(m, &se, $kind)))
            }
            fn writes_over_input(&self) -> bool {
                true
            }
            fn run_over(&self, first: Value, _rest: &[&Value], ctx: &Ctx) -> Result<Value, String> {
                let Value::Mask(m) = first else { return Err(format!("{}: input is not a mask", $name)) };
                let se = Element::new(self.0.radius, self.0.shape, self.0.radius_unit, ctx.spacing, ctx.ndim);
                Ok(Value::Mask(morph_over(m, &se, $kind)))
            }
            fn params_json(&self) -> serde_json::Value {
                serde_json::to_value(&self.0).unwrap_or_default()
            }
        }
    };
}

morph_op!(
    Erosion,
    EROSION,
    "erosion",
    Morph::Erosion,
    "Mask → mask: shrink the foreground (scipy.ndimage.binary_erosion).",
    "A voxel stays foreground when every voxel of the structuring element around it is \
     foreground; voxels outside the image count as background, so objects touching the border \
     are eroded from it too. 2D images use the element's z = 0 plane (a disk or square)."
);
morph_op!(
    Dilation,
    DILATION,
    "dilation",
    Morph::Dilation,
    "Mask → mask: grow the foreground (scipy.ndimage.binary_dilation).",
    "A voxel becomes foreground when any voxel of the structuring element around it is \
     foreground. 2D images use the element's z = 0 plane."
);
morph_op!(
    Opening,
    OPENING,
    "opening",
    Morph::Opening,
    "Mask → mask: erosion then dilation; removes specks and thin bridges (scipy.ndimage.binary_opening).",
    "Dilation of the erosion with the same element, both with outside = background."
);
morph_op!(
    Closing,
    CLOSING,
    "closing",
    Morph::Closing,
    "Mask → mask: dilation then erosion; closes small gaps (scipy.ndimage.binary_closing).",
    "Erosion of the dilation with the same element, both with outside = background, so \
     foreground at the image border can be eroded away, as in scipy."
);

impl MorphParams {
    fn halo(&self, kind: Morph) -> Halo {
        match self.radius_unit {
            RadiusUnit::Voxel => {
                let r = self.radius.max(0.0).floor() as usize;
                let r = if matches!(kind, Morph::Opening | Morph::Closing) { 2 * r } else { r };
                Halo::Local([r; 3])
            }
            RadiusUnit::Physical => Halo::Local([0; 3]),
        }
    }
    fn check(&self) -> Vec<ParamIssue> {
        if !(self.radius.is_finite() && self.radius >= 0.0) {
            vec![ParamIssue::new("radius", format!("`radius` must be ≥ 0, found {}", self.radius))]
        } else if self.radius_unit == RadiusUnit::Voxel && self.radius > 1000.0 {
            vec![ParamIssue::new("radius", "`radius` above 1000 voxels is surely a mistake")]
        } else {
            Vec::new()
        }
    }
}

fn mask_in(m: &Meta, op: &str) -> Result<Meta, ParamIssue> {
    if m.kind != Kind::Mask {
        return Err(ParamIssue::new("input", format!("`{op}` needs a mask but its input is {}", m.kind.with_article()))
            .help("threshold the image first"));
    }
    Ok(m.clone())
}

/// A symmetric structuring element as x-runs: (dz, dy, half-width).
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub rows: Vec<(isize, isize, usize)>,
}

impl Element {
    pub fn new(radius: f64, shape: Shape, unit: RadiusUnit, spacing: [f64; 3], ndim: u8) -> Element {
        let s = match unit {
            RadiusUnit::Voxel => [1.0; 3],
            RadiusUnit::Physical => spacing,
        };
        let reach = |k: usize| (radius / s[k]).floor().max(0.0) as isize;
        let rz = if ndim == 2 { 0 } else { reach(0) };
        let (ry, rx) = (reach(1), reach(2));
        let mut rows = Vec::new();
        for dz in -rz..=rz {
            for dy in -ry..=ry {
                let w = match shape {
                    Shape::Cube => Some(rx),
                    Shape::Ball => {
                        let rest = radius * radius - (dz as f64 * s[0]).powi(2) - (dy as f64 * s[1]).powi(2);
                        if rest < 0.0 {
                            None
                        } else {
                            // Largest dx with (dx·sx)² ≤ rest, checked exactly as the reference does.
                            let mut w = (rest.sqrt() / s[2]).floor() as isize;
                            while w >= 0 && (w as f64 * s[2]).powi(2) > rest {
                                w -= 1;
                            }
                            while ((w + 1) as f64 * s[2]).powi(2) <= rest {
                                w += 1;
                            }
                            (w >= 0).then_some(w)
                        }
                    }
                };
                if let Some(w) = w {
                    rows.push((dz, dy, w as usize));
                }
            }
        }
        Element { rows }
    }

    /// How far the element reaches from its centre along each axis `[z, y, x]`.
    pub fn reach(&self) -> [usize; 3] {
        self.rows.iter().fold([0; 3], |r, &(dz, dy, w)| [r[0].max(dz.unsigned_abs()), r[1].max(dy.unsigned_abs()), r[2].max(w)])
    }
}

/// A mask as bits: every x-row packed into `words` u64s (bit i of word k is x = 64k + i).
struct Bits {
    data: Vec<u64>,
    words: usize,
    dims: (usize, usize, usize),
}

impl Bits {
    fn from_mask(m: &Array3<u8>) -> Bits {
        let (nz, ny, nx) = m.dim();
        let words = nx.div_ceil(64).max(1);
        let mut data = vec![0u64; nz * ny * words];
        let src = m.as_standard_layout();
        let src = src.as_slice().expect("standard layout");
        data.par_chunks_mut(words).zip(src.par_chunks(nx.max(1))).for_each(|(out, row)| crate::util::pack_row(row, out));
        Bits { data, words, dims: (nz, ny, nx) }
    }

    fn to_mask(&self) -> Array3<u8> {
        let (nz, ny, nx) = self.dims;
        self.write_over(Array3::from_shape_vec((nz, ny, nx), crate::util::zeroed(nz * ny * nx)).expect("shape"))
    }

    /// The mask written over `m` (of the same shape): every voxel is set.
    fn write_over(&self, mut m: Array3<u8>) -> Array3<u8> {
        let nx = self.dims.2;
        match m.as_slice_mut() {
            Some(out) => out
                .par_chunks_mut(nx.max(1))
                .zip(self.data.par_chunks(self.words))
                .for_each(|(row, bits)| crate::util::unpack_row(bits, row)),
            None => return self.to_mask(),
        }
        m
    }
}

/// `out[x] = row[x − s]` (zeros shifted in), for |s| < the row length.
fn shift_into(row: &[u64], s: isize, out: &mut [u64]) {
    let n = row.len();
    let (q, r) = ((s.unsigned_abs()) / 64, (s.unsigned_abs() % 64) as u32);
    for k in 0..n {
        out[k] = if s >= 0 {
            let hi = if k >= q { row[k - q] << r } else { 0 };
            let lo = if r > 0 && k > q { row[k - q - 1] >> (64 - r) } else { 0 };
            hi | lo
        } else {
            let lo = if k + q < n { row[k + q] >> r } else { 0 };
            let hi = if r > 0 && k + q + 1 < n { row[k + q + 1] << (64 - r) } else { 0 };
            lo | hi
        };
    }
}

fn erode_or_dilate(m: &Bits, se: &Element, erode: bool) -> Bits {
    let (nz, ny, nx) = m.dims;
    let words = m.words;
    let tail = if nx % 64 == 0 { u64::MAX } else { (1u64 << (nx % 64)) - 1 };
    let mut data = vec![0u64; m.data.len()];
    data.par_chunks_mut(words).enumerate().for_each_init(
        || (vec![0u64; words], vec![0u64; words], vec![0u64; words]),
        |(win, tmp, acc), (row, out)| {
            let (z, y) = (row / ny, row % ny);
            acc.fill(if erode { u64::MAX } else { 0 });
            for &(dz, dy, w) in &se.rows {
                let (sz, sy) = (z as isize + dz, y as isize + dy);
                if sz < 0 || sz >= nz as isize || sy < 0 || sy >= ny as isize {
                    if erode {
                        acc.fill(0);
                        break;
                    }
                    continue;
                }
                let o = (sz as usize * ny + sy as usize) * words;
                let src = &m.data[o..o + words];
                // The x-window of half-width w: AND (erosion) or OR (dilation) of shifts −w..=w.
                win.copy_from_slice(src);
                for s in 1..=w.min(nx) as isize {
                    for sign in [s, -s] {
                        shift_into(src, sign, tmp);
                        for (a, b) in win.iter_mut().zip(tmp.iter()) {
                            if erode { *a &= *b } else { *a |= *b }
                        }
                    }
                }
                if erode && w >= nx {
                    win.fill(0);
                }
                for (a, b) in acc.iter_mut().zip(win.iter()) {
                    if erode { *a &= *b } else { *a |= *b }
                }
            }
            if let Some(last) = acc.last_mut() {
                *last &= tail;
            }
            out.copy_from_slice(acc);
        },
    );
    Bits { data, words, dims: m.dims }
}

/// Applies a morphology op to a 0/1 mask (rows packed as bits; outside = background).
pub fn morph(m: &Array3<u8>, se: &Element, kind: Morph) -> Array3<u8> {
    morph_bits(Bits::from_mask(m), se, kind).to_mask()
}

/// [`morph`], written over the mask it is given instead of into a new one.
pub fn morph_over(m: Array3<u8>, se: &Element, kind: Morph) -> Array3<u8> {
    morph_bits(Bits::from_mask(&m), se, kind).write_over(m)
}

/// The op on packed rows; of an opening's or closing's three packed volumes, two exist at once.
fn morph_bits(b: Bits, se: &Element, kind: Morph) -> Bits {
    let (first, second) = match kind {
        Morph::Erosion => return erode_or_dilate(&b, se, true),
        Morph::Dilation => return erode_or_dilate(&b, se, false),
        Morph::Opening => (true, false),
        Morph::Closing => (false, true),
    };
    let half = erode_or_dilate(&b, se, first);
    drop(b);
    erode_or_dilate(&half, se, second)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FillHoles {
    pub input: String,
}

pub static FILL_HOLES: OpInfo = OpInfo {
    name: "fill_holes",
    family: "morphology",
    version: 1,
    output: Kind::Mask,
    same_kind: false,
    summary: "Mask → mask: fill background regions not connected to the image border.",
    doc: "Background voxels that cannot reach the image border through face-connected \
          background (6-connected in 3D, 4-connected in 2D) become foreground, as \
          scipy.ndimage.binary_fill_holes with its default structure. A 2D image's border is its \
          four edges.",
    params: &[ParamDoc { name: "input", ty: "stage (mask)", default: None, doc: "The mask." }],
    build: build::<FillHoles>,
    fields: fields_of::<FillHoles>,
    examples: &["input: {mask}"],
};

impl Op for FillHoles {
    fn info(&self) -> &'static OpInfo {
        &FILL_HOLES
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Mask] }]
    }
    fn halo(&self) -> Halo {
        Halo::Global
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        mask_in(&inputs[0], "fill_holes")
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let Value::Mask(m) = inputs[0] else { return Err("fill_holes: input is not a mask".into()) };
        Ok(Value::Mask(fill_holes(m, ctx.ndim)))
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
    /// The background labelled slab by slab with face connectivity ([`SlabLabeller`] on the
    /// inverted mask), noting which components touch the volume's border; then a pass that
    /// fills every background component that does not.
    fn stream(&self, io: &mut dyn Slabs, _ctx: &Ctx) -> Result<slab::Outcome, String> {
        let [nz, ny, nx] = io.input(0).shape();
        // Beside the mask: the inverted mask, provisional ids, the filled slab.
        let planes = io.planes(1 + 4 + 1);
        let mut labeller = SlabLabeller::new(6, ny, nx);
        let mut prov = io.scratch("background")?;
        let mut border: Vec<u32> = Vec::new();
        for (z0, z1) in slab::ranges(nz, planes) {
            let Value::Mask(m) = io.input(0).read(z0, z1)? else { return Err("fill_holes: input is not a mask".into()) };
            let ids = labeller.add(&m.mapv(|v| (v == 0) as u8))?;
            for ((z, y, x), &id) in ids.indexed_iter() {
                let edge = y == 0 || x == 0 || y + 1 == ny || x + 1 == nx || z0 + z == 0 || z0 + z + 1 == nz;
                if id != 0 && edge {
                    border.push(id);
                }
            }
            border.sort_unstable();
            border.dedup();
            prov.append(&Value::Labels(ids.into()))?;
        }
        let (remap, count) = labeller.resolve(0, u64::MAX);
        let mut open = vec![false; count as usize + 1];
        for id in border {
            open[remap[id as usize] as usize] = true;
        }
        for (z0, z1) in slab::ranges(nz, planes) {
            let Value::Labels(p) = prov.read(z0, z1)? else { return Err("fill_holes: provisional labels".into()) };
            let p = p.into_u32();
            io.emit(Value::Mask(p.mapv(|id| (id == 0 || !open[remap[id as usize] as usize]) as u8)))?;
        }
        Ok(slab::Outcome::Emitted)
    }
}

/// Fills holes: flood-fills background from the border, everything not reached is foreground.
pub fn fill_holes(m: &Array3<u8>, ndim: u8) -> Array3<u8> {
    let (nz, ny, nx) = m.dim();
    let src = m.as_standard_layout();
    let src = src.as_slice().expect("standard");
    // 0 = unvisited background, 1 = foreground, 2 = outside-connected background.
    let mut state: Vec<u8> = src.iter().map(|&v| (v != 0) as u8).collect();
    let idx = |z: usize, y: usize, x: usize| (z * ny + y) * nx + x;
    let mut stack: Vec<usize> = Vec::new();
    let seed = |i: usize, state: &mut Vec<u8>, stack: &mut Vec<usize>| {
        if state[i] == 0 {
            state[i] = 2;
            stack.push(i);
        }
    };
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let border = y == 0 || x == 0 || y + 1 == ny || x + 1 == nx || (ndim == 3 && (z == 0 || z + 1 == nz));
                if border {
                    seed(idx(z, y, x), &mut state, &mut stack);
                }
            }
        }
    }
    while let Some(i) = stack.pop() {
        let (z, y, x) = (i / (ny * nx), (i / nx) % ny, i % nx);
        let mut push = |j: usize| {
            if state[j] == 0 {
                state[j] = 2;
                stack.push(j);
            }
        };
        if x > 0 {
            push(i - 1);
        }
        if x + 1 < nx {
            push(i + 1);
        }
        if y > 0 {
            push(i - nx);
        }
        if y + 1 < ny {
            push(i + nx);
        }
        if ndim == 3 {
            if z > 0 {
                push(i - nx * ny);
            }
            if z + 1 < nz {
                push(i + nx * ny);
            }
        }
    }
    Array3::from_shape_vec((nz, ny, nx), state.into_iter().map(|s| (s != 2) as u8).collect()).expect("shape")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

    fn naive(m: &Array3<u8>, se: &Element, erode: bool) -> Array3<u8> {
        let (nz, ny, nx) = m.dim();
        Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
            let mut any = false;
            let mut all = true;
            for &(dz, dy, w) in &se.rows {
                for dx in -(w as isize)..=w as isize {
                    let (a, b, c) = (z as isize + dz, y as isize + dy, x as isize + dx);
                    let v = a >= 0
                        && b >= 0
                        && c >= 0
                        && a < nz as isize
                        && b < ny as isize
                        && c < nx as isize
                        && m[[a as usize, b as usize, c as usize]] != 0;
                    any |= v;
                    all &= v;
                }
            }
            (if erode { all } else { any }) as u8
        })
    }

    #[test]
    fn bit_rows_equal_the_definition_for_wide_elements() {
        let mut seed = 3u64;
        let mut rnd = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for trial in 0..40 {
            let dims = (1 + rnd(3) as usize, 1 + rnd(5) as usize, 1 + rnd(200) as usize);
            let m = Array3::from_shape_fn(dims, |_| (rnd(10) < 8) as u8);
            let r = 1.0 + rnd(40) as f64;
            let shape = if trial % 2 == 0 { Shape::Cube } else { Shape::Ball };
            let se = Element::new(r, shape, RadiusUnit::Physical, [r, r, 0.5], 3);
            assert_eq!(morph(&m, &se, Morph::Erosion), naive(&m, &se, true), "erosion trial {trial}");
            assert_eq!(morph(&m, &se, Morph::Dilation), naive(&m, &se, false), "dilation trial {trial}");
        }
    }

    fn grid(rows: &[&str]) -> Array3<u8> {
        Array3::from_shape_fn((1, rows.len(), rows[0].len()), |(_, y, x)| (rows[y].as_bytes()[x] == b'#') as u8)
    }
    fn show(a: &Array3<u8>) -> Vec<String> {
        a.index_axis(Axis(0), 0).rows().into_iter().map(|r| r.iter().map(|&v| if v != 0 { '#' } else { '.' }).collect()).collect()
    }

    #[test]
    fn elements() {
        let ball = Element::new(1.0, Shape::Ball, RadiusUnit::Voxel, [1.0; 3], 3);
        assert_eq!(ball.rows.iter().map(|r| 2 * r.2 + 1).sum::<usize>(), 7);
        let ball2 = Element::new(2.0, Shape::Ball, RadiusUnit::Voxel, [1.0; 3], 3);
        assert_eq!(ball2.rows.iter().map(|r| 2 * r.2 + 1).sum::<usize>(), 33);
        let cube = Element::new(1.0, Shape::Cube, RadiusUnit::Voxel, [1.0; 3], 3);
        assert_eq!(cube.rows.iter().map(|r| 2 * r.2 + 1).sum::<usize>(), 27);
        let disk = Element::new(1.0, Shape::Ball, RadiusUnit::Voxel, [1.0; 3], 2);
        assert_eq!(disk.rows.iter().map(|r| 2 * r.2 + 1).sum::<usize>(), 5);
        // 1 µm radius with z spacing 2 µm and x/y 0.5 µm: only the z = 0 plane, a 5×5 disk.
        let ell = Element::new(1.0, Shape::Ball, RadiusUnit::Physical, [2.0, 0.5, 0.5], 3);
        assert!(ell.rows.iter().all(|r| r.0 == 0));
        assert_eq!(ell.rows.iter().map(|r| 2 * r.2 + 1).sum::<usize>(), 13);
    }

    #[test]
    fn erosion_treats_outside_as_background() {
        let m = grid(&["####.", "####.", "####.", "....."]);
        let disk = Element::new(1.0, Shape::Ball, RadiusUnit::Voxel, [1.0; 3], 2);
        assert_eq!(show(&morph(&m, &disk, Morph::Erosion)), vec![".....", ".##..", ".....", "....."]);
        assert_eq!(show(&morph(&m, &disk, Morph::Dilation)), vec!["#####", "#####", "#####", "####."]);
        assert_eq!(show(&morph(&m, &disk, Morph::Opening)), vec![".##..", "####.", ".##..", "....."]);
    }

    #[test]
    fn fills_only_enclosed_background() {
        let m = grid(&["#####.", "#..#..", "#####.", "......"]);
        assert_eq!(show(&fill_holes(&m, 2)), vec!["#####.", "####..", "#####.", "......"]);
        let mut c = Array3::<u8>::from_elem((3, 3, 3), 1);
        c[[1, 1, 1]] = 0;
        assert_eq!(fill_holes(&c, 3).sum(), 27);
        c[[0, 1, 1]] = 0;
        assert_eq!(fill_holes(&c, 3).sum(), 25, "a hole open to the z border stays");
    }
}
