//! Per-object measurement: labels (+ intensity images) → one table row per object.
//!
//! Moments are accumulated in integers (voxel counts, coordinate sums) so results do not depend
//! on summation order; physical values multiply by the voxel spacing at the end, as
//! skimage.measure.regionprops does with `spacing`.

use std::collections::BTreeMap;

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis, s};
use serde::{Deserialize, Serialize};

use super::exact::F32Sums;
use super::labels::{LabelInt, plane_u32, skip_zeros};
use super::local::{Contacts, LocalSums, Seam, Wanted, plane_before};
use super::slab::{self, Slabs};
use super::{Ctx, Halo, Input, Kind, Labels, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, expect_image, fields_of};
use crate::io::Data;
use crate::table::{Column, Table};
use crate::with_labels;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    pub labels: String,
    /// name → image stage; gives `<name>_mean/_min/_max/_std/_sum`.
    #[serde(default)]
    pub intensity: BTreeMap<String, String>,
    /// Territory labels (e.g. from `voronoi`): adds `territory_voxels` and `territory_volume`.
    #[serde(default)]
    pub territories: Option<String>,
}

pub static MEASURE: OpInfo = OpInfo {
    name: "measure",
    family: "measure",
    version: 4,
    output: Kind::Table,
    same_kind: false,
    summary: "Labels → table: one row per object with size, position, extent, shape, topology, neighbours and intensity statistics.",
    doc: "Columns (SPEC §6; physical units use the sample's spacing and unit):\n\
          - `label`: the object id.\n\
          - `voxels`: voxel (pixel) count n.\n\
          - `volume`: n × voxel volume (area in 2D: n × spacing_y × spacing_x).\n\
          - `centroid_z`, `centroid_y`, `centroid_x`: mean voxel index × spacing (as skimage \
          regionprops `centroid` with `spacing`); `centroid_z` only for 3D images.\n\
          - `bbox_z0, bbox_y0, bbox_x0, bbox_z1, bbox_y1, bbox_x1`: bounding box in voxel indices, \
          half-open (skimage `bbox`); no z columns in 2D.\n\
          - `inertia_eig_0..2` (`0..1` in 2D): eigenvalues, descending and clipped at 0, of the \
          inertia tensor of the object's voxels with coordinates scaled by the spacing \
          (skimage `inertia_tensor_eigvals`): I_ii = (Σ_k μ_kk − μ_ii)/n, I_ij = −μ_ij/n, μ the \
          central second moments. Unit: unit².\n\
          - `major_axis_length`, `minor_axis_length`: skimage `axis_major_length` / \
          `axis_minor_length`: in 3D √(10(λ0+λ1−λ2)) and √(10(−λ0+λ1+λ2)), in 2D 4√λ0 and 4√λ1 \
          (the axes of the ellipse/ellipsoid with the same second moments).\n\
          - `anisotropy`: 1 − minor/major; NaN for single voxels (major = 0).\n\
          - `nn_distance`, `nn_label`: distance between centroids (physical units) to the nearest \
          other object of the sample and its label (ties: the lower label); NaN and 0 when the \
          sample has one object.\n\
          - `touches_border`: the bounding box reaches the first or last voxel of any axis (y, x \
          only in 2D).\n\
          - `surface_area` (unit²): in 3D the area of the marching-cubes surface of the object's \
          mask at level 0.5, the mask padded with background (objects touching the border are \
          closed there), with the spacing: equal to scikit-image \
          `mesh_surface_area(*marching_cubes(np.pad(mask, 1), 0.5, spacing=…, method='lewiner')[:2])` \
          to 1e-9 relative. In 2D the perimeter (unit): scikit-image regionprops `perimeter` \
          (4-connectivity border weights 1, √2, (1+√2)/2); NaN when the pixels are not square, \
          which scikit-image does not define.\n\
          - `equivalent_diameter`: the diameter of the ball (disc) of the same volume (area), \
          (2·d·V/π)^(1/d): regionprops `equivalent_diameter_area` with spacing.\n\
          - `sphericity`: π^(1/3)·(6V)^(2/3)/A, 1 for a ball, smaller for anything else (marching \
          cubes gives a little over 1 for very small objects); in 2D 2√(πA)/P, the perimeter of \
          the disc of the same area over the perimeter. NaN when the surface is 0 (a single pixel).\n\
          - `euler_number`: objects − tunnels + cavities (2D: objects − holes) of the object's own \
          voxels, the object 26-connected (8 in 2D) and the background 6-connected (4): \
          regionprops `euler_number`, exact. A solid object has 1, a ring 0, a hollow shell 2.\n\
          - `n_neighbors`: other objects that share a face with this one (6-connectivity, 4 in \
          2D), the degree of the object in the `contacts` graph.\n\
          - `<name>_sum`, `_mean`, `_min`, `_max`, `_std` for each `intensity` input: the sum, mean, \
          extremes and population standard deviation (ddof = 0, as skimage `intensity_std`) of \
          the image over the object's voxels. Every sum is exact: integer images in integers, \
          float32 images in fixed point (the sum and the numerator n·Σv² − (Σv)² of the variance \
          computed exactly, then rounded once to float64), so the values do not depend on tiles, \
          slabs, threads or machines. scikit-image sums float32 in float32, so values agree with \
          it to about 1e-6 relative there. NaN voxels of float images propagate to NaN; an \
          infinite voxel gives an infinite sum and mean (NaN with both signs) and a NaN std.\n\
          - `territory_voxels`, `territory_volume` (with `territories`): voxels carrying the \
          object's label in the territory image, and their volume.\n\
          - `n_territory_neighbors` (with `territories`): territories that share a face with the \
          object's territory (the bone study's Lc.DN, when territories come from `voronoi`).\n\
          Surface, Euler number and neighbours are integer sums over 2×2×2 windows (2D: 3×3), so \
          tiled, streamed and split runs give the same values bit for bit. \
          Rows are sorted by label. Labels with no voxels (gaps in the numbering) have no row.",
    params: &[
        ParamDoc { name: "labels", ty: "stage (labels)", default: None, doc: "The objects to measure." },
        ParamDoc {
            name: "intensity",
            ty: "mapping name → stage (image)",
            default: Some("{}"),
            doc: "Images to summarise per object; each adds `<name>_sum/_mean/_min/_max/_std` columns.",
        },
        ParamDoc {
            name: "territories",
            ty: "stage (labels)",
            default: Some("none"),
            doc: "Territory labels with the same numbering (e.g. `voronoi`): adds `territory_voxels`, `territory_volume` and `n_territory_neighbors` per object.",
        },
    ],
    build: build::<Measure>,
    fields: fields_of::<Measure>,
    examples: &[
        "labels: {labels}",
        "labels: {labels}, intensity: {raw: {image}}",
        "labels: {labels}, intensity: {raw: {image}}, territories: {labels}",
    ],
};

impl Op for Measure {
    fn info(&self) -> &'static OpInfo {
        &MEASURE
    }
    fn inputs(&self) -> Vec<Input> {
        let mut v = vec![Input { role: "labels", stage: self.labels.clone(), accepts: &[Kind::Labels] }];
        for stage in self.intensity.values() {
            v.push(Input { role: "intensity", stage: stage.clone(), accepts: &[Kind::Image] });
        }
        if let Some(t) = &self.territories {
            v.push(Input { role: "territories", stage: t.clone(), accepts: &[Kind::Labels] });
        }
        v
    }
    fn halo(&self) -> Halo {
        Halo::Global
    }
    fn check(&self) -> Vec<ParamIssue> {
        self.intensity
            .keys()
            .filter(|k| !crate::spec::is_valid_stage_id(k))
            .map(|k| {
                ParamIssue::new(
                    &format!("intensity.{k}"),
                    format!("intensity name '{k}' must be [a-z][a-z0-9_]* (it prefixes column names)"),
                )
            })
            .collect()
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        let l = &inputs[0];
        if l.kind != Kind::Labels {
            return Err(ParamIssue::new("labels", format!("`measure` needs labels but `labels` is a {}", l.kind))
                .help("label the mask first (op: label)"));
        }
        if let Some(t) = self.territories.as_ref().and(inputs.last())
            && (t.kind != Kind::Labels || t.shape != l.shape)
        {
            return Err(ParamIssue::new(
                "territories",
                format!("territories must be labels of the objects' shape {:?}, found {} of {:?}", l.shape, t.kind, t.shape),
            ));
        }
        for (m, name) in inputs[1..].iter().zip(self.intensity.keys()) {
            let field = format!("intensity.{name}");
            expect_image(m, &field, "measure").map_err(|mut e| {
                e.field = field.clone();
                e
            })?;
            if m.shape != l.shape {
                return Err(ParamIssue::new(
                    &field,
                    format!("intensity image is {:?} (z, y, x) but the labels are {:?}", m.shape, l.shape),
                ));
            }
        }
        Ok(Meta { kind: Kind::Table, dtype: None, ..l.clone() })
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let Value::Labels(labels) = inputs[0] else { return Err("measure: `labels` is not a label image".into()) };
        let mut images = Vec::new();
        for (v, name) in inputs[1..].iter().zip(self.intensity.keys()) {
            let Value::Image(d) = v else { return Err(format!("measure: intensity '{name}' is not an image")) };
            images.push((name.as_str(), d));
        }
        let terr = match self.territories.is_some() {
            true => match inputs.last() {
                Some(Value::Labels(t)) => Some(t.u32()),
                _ => return Err("measure: territories are not labels".into()),
            },
            false => None,
        };
        Ok(Value::Table(measure_with(labels, &images, terr.as_deref(), ctx)))
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn streams(&self, _inputs: &[Meta]) -> Result<(), String> {
        Ok(())
    }
    /// One [`Accumulator`] fed slab by slab, in one pass.
    fn stream(&self, io: &mut dyn Slabs, ctx: &Ctx) -> Result<slab::Outcome, String> {
        let shape = io.input(0).shape();
        // Two slabs at a time: the next is read while the current one is added.
        let planes = (io.planes(0) / 2).max(1);
        let inputs: Vec<&dyn slab::Volume> = (0..self.inputs().len()).map(|k| io.input(k)).collect();
        let acc = self.accumulate(&inputs, 0, shape[0], planes, ctx.ndim == 2)?;
        let names: Vec<&str> = self.intensity.keys().map(String::as_str).collect();
        Ok(slab::Outcome::Table(Value::Table(acc.finish(&names, shape, ctx))))
    }
    fn phased(&self) -> Option<&dyn slab::Phased> {
        Some(self)
    }
}

impl Measure {
    /// The sums over planes `z0..z1` of the inputs (labels, intensity images, territories),
    /// read `planes` planes at a time. The window sums also read plane `z0 − 1`.
    fn accumulate(&self, inputs: &[&dyn slab::Volume], z0: usize, z1: usize, planes: usize, planar: bool) -> Result<Accumulator, String> {
        let n_int = self.intensity.len();
        let read = |a: usize, b: usize| -> Result<MeasureSlab, String> {
            let Value::Labels(l) = inputs[0].read(a, b)? else { return Err("measure: `labels` is not labels".into()) };
            let mut images = Vec::new();
            for input in &inputs[1..1 + n_int] {
                let Value::Image(d) = input.read(a, b)? else { return Err("measure: intensity is not an image".into()) };
                images.push(d);
            }
            let terr = match self.territories.is_some() {
                true => match inputs[1 + n_int].read(a, b)? {
                    Value::Labels(t) => Some(t.into_u32()),
                    _ => return Err("measure: territories are not labels".into()),
                },
                false => None,
            };
            Ok((l, images, terr))
        };
        let ranges: Vec<(usize, usize)> = slab::ranges(z1 - z0, planes).map(|(a, b)| (z0 + a, z0 + b)).collect();
        let nz = inputs[0].shape()[0];
        let mut acc = Accumulator::default();
        // The plane before each slab (labels and territories): read before the first, kept from
        // the one before after.
        let mut before: Option<(Array2<u32>, Option<Array2<u32>>)> = match plane_before(inputs[0], z0, "measure: `labels`")? {
            None => None,
            Some(l) => {
                let t = match self.territories.is_some() {
                    true => plane_before(inputs[1 + n_int], z0, "measure: `territories`")?,
                    false => None,
                };
                Some((l, t))
            }
        };
        slab::pipelined(&ranges, &read, |(l, images, terr), a, b| {
            let refs: Vec<&Data> = images.iter().collect();
            let edges = Edges {
                labels: before.as_ref().map(|(l, _)| l.view()),
                territories: before.as_ref().and_then(|(_, t)| t.as_ref().map(|t| t.view())),
                last: b == nz,
                planar,
            };
            acc.add(&l, &refs, terr.as_ref(), a, &edges);
            let last = |v: &Array3<u32>| v.index_axis(Axis(0), v.dim().0 - 1).to_owned();
            before = Some((l.last_plane(), terr.as_ref().map(last)));
            Ok(())
        })?;
        Ok(acc)
    }
}

/// Split over machines: each block's sums are its partial result, the reduce merges them (every
/// sum is exact, so the merge gives the one-machine sums bit for bit) and gives the table.
impl slab::Phased for Measure {
    fn ending(&self) -> slab::Ending {
        slab::Ending::Table
    }
    fn partial(&self, io: &mut dyn slab::BlockIo, _round: usize, _before: Option<&[u8]>, ctx: &Ctx) -> Result<Vec<u8>, String> {
        let (_, z0, z1) = io.block();
        let planes = (io.planes(0) / 2).max(1);
        let inputs: Vec<&dyn slab::Volume> = (0..self.inputs().len()).map(|k| io.input(k)).collect();
        let acc = self.accumulate(&inputs, z0, z1, planes, ctx.ndim == 2)?;
        Ok(acc.to_bytes(io.input(0).shape()))
    }
    fn reduce(&self, _round: usize, partials: &mut slab::Partials<'_>, _before: Option<&[u8]>, _ctx: &Ctx) -> Result<Vec<u8>, String> {
        let mut all = Accumulator::default();
        let mut dims = None;
        for p in partials {
            let (acc, d) = Accumulator::from_bytes(&p?)?;
            if dims.is_some_and(|x| x != d) {
                return Err("measure: the blocks' partial results are of different volumes (rerun the block tasks)".into());
            }
            dims = Some(d);
            all.merge(acc);
        }
        Ok(all.to_bytes(dims.unwrap_or_default()))
    }
    fn table(&self, reduced: &[u8], ctx: &Ctx) -> Result<Value, String> {
        let (acc, dims) = Accumulator::from_bytes(reduced)?;
        let names: Vec<&str> = self.intensity.keys().map(String::as_str).collect();
        Ok(Value::Table(acc.finish(&names, dims, ctx)))
    }
}

/// One slab of a measure stage's inputs: labels, intensity images, territories.
type MeasureSlab = (Labels, Vec<Data>, Option<Array3<u32>>);

#[derive(Clone, Copy)]
struct Acc {
    n: u64,
    sum: [u64; 3],
    /// Σ of products of coordinates: zz, yy, xx, zy, zx, yx.
    sq: [u64; 6],
    lo: [usize; 3],
    hi: [usize; 3],
}

const PAIRS: [(usize, usize); 6] = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)];

impl Acc {
    /// Adds the voxels (z, y, x) for x in `x0..x1`: the same integers as adding them one by one.
    #[inline]
    fn add_run(&mut self, z: usize, y: usize, x0: usize, x1: usize) {
        let len = (x1 - x0) as u64;
        let (z, y) = (z as u64, y as u64);
        // Σx and Σx² over x0..x1.
        let sq_below = |k: u64| if k == 0 { 0 } else { (k - 1) * k * (2 * k - 1) / 6 };
        let sx = (x0 as u64 + x1 as u64 - 1) * len / 2;
        let sxx = sq_below(x1 as u64) - sq_below(x0 as u64);
        self.n += len;
        self.sum[0] += z * len;
        self.sum[1] += y * len;
        self.sum[2] += sx;
        // PAIRS order: zz, yy, xx, zy, zx, yx.
        self.sq[0] += z * z * len;
        self.sq[1] += y * y * len;
        self.sq[2] += sxx;
        self.sq[3] += z * y * len;
        self.sq[4] += z * sx;
        self.sq[5] += y * sx;
        let (z, y) = (z as usize, y as usize);
        self.lo = [self.lo[0].min(z), self.lo[1].min(y), self.lo[2].min(x0)];
        self.hi = [self.hi[0].max(z + 1), self.hi[1].max(y + 1), self.hi[2].max(x1)];
    }
}

/// Measures every object of `labels`.
pub fn measure(labels: &Labels, images: &[(&str, &Data)], ctx: &Ctx) -> Table {
    measure_with(labels, images, None, ctx)
}

/// Measures every object of `labels`, with territory columns when `territories` are given.
pub fn measure_with(labels: &Labels, images: &[(&str, &Data)], territories: Option<&Array3<u32>>, ctx: &Ctx) -> Table {
    let mut acc = Accumulator::default();
    let data: Vec<&Data> = images.iter().map(|(_, d)| *d).collect();
    acc.add(labels, &data, territories, 0, &Edges { last: true, planar: ctx.ndim == 2, ..Edges::default() });
    let names: Vec<&str> = images.iter().map(|(n, _)| *n).collect();
    let d = labels.dim();
    acc.finish(&names, [d.0, d.1, d.2], ctx)
}

/// The planes around a slab that its window sums need ([`super::local`]).
#[derive(Clone, Copy, Default)]
pub struct Edges<'a> {
    /// Plane z0 − 1 of the labels; `None` for a slab that starts the volume.
    pub labels: Option<ArrayView2<'a, u32>>,
    /// Plane z0 − 1 of the territories.
    pub territories: Option<ArrayView2<'a, u32>>,
    /// The slab ends the volume.
    pub last: bool,
    /// A 2D image.
    pub planar: bool,
}

/// Per-object sums gathered from z-slabs (the whole image is one slab). Every sum is exact —
/// geometry and integer intensities in integers, float intensities in fixed point
/// ([`F32Sums`]) — so neither the cut into slabs, blocks or threads nor the order of merging
/// them can change a bit of the result: one pass, merged in any grouping.
#[derive(Default)]
pub struct Accumulator {
    geo: Vec<Acc>,
    images: Vec<ImageAcc>,
    territory: Option<Vec<u64>>,
    /// Euler, surface and contact sums of the objects.
    local: LocalSums,
    /// Contacts between territories.
    territory_contacts: Option<Contacts>,
}

enum ImageAcc {
    Int { n: Vec<u64>, s: Vec<u128>, s2: Vec<u128>, lo: Vec<u64>, hi: Vec<u64> },
    Float { n: Vec<u64>, s: Vec<F32Sums>, lo: Vec<f64>, hi: Vec<f64> },
    Colour,
}

/// A view of a slab of an intensity image.
#[derive(Clone)]
enum DView<'a> {
    U8(ArrayView3<'a, u8>),
    U16(ArrayView3<'a, u16>),
    U32(ArrayView3<'a, u32>),
    F32(ArrayView3<'a, f32>),
    Colour,
}

impl<'a> DView<'a> {
    fn of(d: &'a Data) -> DView<'a> {
        match d {
            Data::U8(a) => DView::U8(a.view()),
            Data::U16(a) => DView::U16(a.view()),
            Data::U32(a) => DView::U32(a.view()),
            Data::F32(a) => DView::F32(a.view()),
            Data::Rgb8(_) | Data::Rgb16(_) => DView::Colour,
        }
    }
    /// Planes `a..b`.
    fn planes(&self, a: usize, b: usize) -> DView<'a> {
        match self {
            DView::U8(v) => DView::U8((*v).slice_move(s![a..b, .., ..])),
            DView::U16(v) => DView::U16((*v).slice_move(s![a..b, .., ..])),
            DView::U32(v) => DView::U32((*v).slice_move(s![a..b, .., ..])),
            DView::F32(v) => DView::F32((*v).slice_move(s![a..b, .., ..])),
            DView::Colour => DView::Colour,
        }
    }
}

impl ImageAcc {
    fn new(d: &DView) -> ImageAcc {
        match d {
            DView::U8(_) | DView::U16(_) | DView::U32(_) => {
                ImageAcc::Int { n: Vec::new(), s: Vec::new(), s2: Vec::new(), lo: Vec::new(), hi: Vec::new() }
            }
            DView::F32(_) => ImageAcc::Float { n: Vec::new(), s: Vec::new(), lo: Vec::new(), hi: Vec::new() },
            DView::Colour => ImageAcc::Colour,
        }
    }
    fn grow(&mut self, len: usize) {
        match self {
            ImageAcc::Int { n, s, s2, lo, hi } => {
                if n.len() < len {
                    n.resize(len, 0);
                    s.resize(len, 0);
                    s2.resize(len, 0);
                    lo.resize(len, u64::MAX);
                    hi.resize(len, 0);
                }
            }
            ImageAcc::Float { n, s, lo, hi } => {
                if n.len() < len {
                    n.resize(len, 0);
                    s.resize(len, F32Sums::default());
                    lo.resize(len, f64::INFINITY);
                    hi.resize(len, f64::NEG_INFINITY);
                }
            }
            ImageAcc::Colour => {}
        }
    }
}

impl Accumulator {
    /// Adds a slab whose first plane is plane `z0` of the image. `images` (and `territories`)
    /// are the same slab of each intensity input (of the territory labels).
    /// `edges` gives the planes around the slab.
    pub fn add(&mut self, labels: &Labels, images: &[&Data], territories: Option<&Array3<u32>>, z0: usize, edges: &Edges) {
        with_labels!(labels, l => self.add_typed(l, images, territories, z0, edges))
    }

    fn add_typed<L: LabelInt>(
        &mut self,
        labels: &Array3<L>,
        images: &[&Data],
        territories: Option<&Array3<u32>>,
        z0: usize,
        edges: &Edges,
    ) {
        use rayon::prelude::*;
        let views: Vec<DView> = images.iter().map(|d| DView::of(d)).collect();
        let nz = labels.dim().0;
        let threads = rayon::current_num_threads();
        if threads < 2 || nz < 2 || labels.len() < 1 << 16 {
            self.add_view(labels.view(), &views, territories.map(|t| t.view()), z0, edges);
            return;
        }
        // Exact sums and min/max merge exactly, so z-ranges can be added in parallel and merged.
        // Two ranges per thread (each partial is sized by the objects it sees), cut where they
        // hold about as much object as each other: the time goes to objects' voxels and
        // surfaces, and one range per thread of equal planes left a thread waiting for the other
        // (or for the CPU a background writer took from it).
        let k = (2 * threads).min(nz);
        let ranges = balanced_ranges(labels, k);
        let parts: Vec<Accumulator> = ranges
            .par_iter()
            .map(|&(a, b)| {
                let mut p = Accumulator::default();
                let vs: Vec<DView> = views.iter().map(|v| v.planes(a, b)).collect();
                fn plane(v: &Array3<u32>, z: usize) -> ArrayView2<'_, u32> {
                    v.index_axis(Axis(0), z)
                }
                let before = (a > 0).then(|| plane_u32(labels.view(), a - 1));
                let e = Edges {
                    labels: if a == 0 { edges.labels } else { before.as_ref().map(|p| p.view()) },
                    territories: if a == 0 { edges.territories } else { territories.map(|t| plane(t, a - 1)) },
                    last: edges.last && b == nz,
                    planar: edges.planar,
                };
                p.add_view(labels.slice(s![a..b, .., ..]), &vs, territories.map(|t| t.slice(s![a..b, .., ..])), z0 + a, &e);
                p
            })
            .collect();
        if self.images.is_empty() {
            self.images = views.iter().map(ImageAcc::new).collect();
        }
        for p in parts {
            self.merge(p);
        }
    }

    fn add_view<L: LabelInt>(
        &mut self,
        labels: ArrayView3<L>,
        images: &[DView],
        territories: Option<ArrayView3<u32>>,
        z0: usize,
        edges: &Edges,
    ) {
        let seam = |before| Seam { before, last: edges.last, planar: edges.planar };
        self.local.add(labels, &seam(edges.labels), Wanted { shape: true, contacts: true });
        if let Some(t) = territories {
            let mut s = LocalSums { contacts: self.territory_contacts.take().unwrap_or_default(), ..LocalSums::default() };
            s.add(t, &seam(edges.territories), Wanted { shape: false, contacts: true });
            self.territory_contacts = Some(s.contacts);
        }
        let labels = labels.as_standard_layout();
        let flat = labels.as_slice().expect("standard layout");
        let (nz, ny, nx) = labels.dim();
        let len = super::labels::max_of(flat) as usize + 1;
        if self.geo.len() < len {
            self.geo.resize(len, Acc { n: 0, sum: [0; 3], sq: [0; 6], lo: [usize::MAX; 3], hi: [0; 3] });
        }
        if self.images.is_empty() {
            self.images = images.iter().map(ImageAcc::new).collect();
        }
        let rows: Vec<Rows> = images.iter().map(Rows::of).collect();
        let rows: Vec<Flat> = rows.iter().map(Rows::flat).collect();
        for acc in self.images.iter_mut() {
            acc.grow(len);
        }
        add_runs(&mut self.geo, &mut self.images, &rows, flat, z0, (nz, ny, nx));
        if let Some(t) = territories {
            let counts = self.territory.get_or_insert_with(Vec::new);
            for &l in t.iter() {
                if l as usize >= counts.len() {
                    counts.resize(l as usize + 1, 0);
                }
                counts[l as usize] += 1;
            }
        }
    }

    /// Adds another accumulator's sums (of other voxels).
    pub fn merge(&mut self, mut o: Accumulator) {
        if self.images.is_empty() {
            self.images = std::mem::take(&mut o.images);
            for a in &mut self.images {
                a.grow(self.geo.len());
            }
        }
        if self.geo.len() < o.geo.len() {
            self.geo.resize(o.geo.len(), Acc { n: 0, sum: [0; 3], sq: [0; 6], lo: [usize::MAX; 3], hi: [0; 3] });
        }
        for (a, b) in self.geo.iter_mut().zip(&o.geo) {
            if b.n == 0 {
                continue;
            }
            a.n += b.n;
            for k in 0..3 {
                a.sum[k] += b.sum[k];
                a.lo[k] = a.lo[k].min(b.lo[k]);
                a.hi[k] = a.hi[k].max(b.hi[k]);
            }
            for q in 0..6 {
                a.sq[q] += b.sq[q];
            }
        }
        let len = self.geo.len();
        for (a, b) in self.images.iter_mut().zip(o.images) {
            a.grow(len);
            match (a, b) {
                (ImageAcc::Int { n, s, s2, lo, hi }, ImageAcc::Int { n: bn, s: bs, s2: bs2, lo: blo, hi: bhi }) => {
                    for l in 0..bn.len() {
                        n[l] += bn[l];
                        s[l] += bs[l];
                        s2[l] += bs2[l];
                        lo[l] = lo[l].min(blo[l]);
                        hi[l] = hi[l].max(bhi[l]);
                    }
                }
                (ImageAcc::Float { n, s, lo, hi }, ImageAcc::Float { n: bn, s: bs, lo: blo, hi: bhi }) => {
                    for l in 0..bn.len() {
                        if bn[l] == 0 {
                            continue;
                        }
                        n[l] += bn[l];
                        s[l].merge(&bs[l]);
                        lo[l] = min_nan(lo[l], blo[l]);
                        hi[l] = max_nan(hi[l], bhi[l]);
                    }
                }
                _ => {}
            }
        }
        self.local.merge(std::mem::take(&mut o.local));
        if let Some(c) = o.territory_contacts.take() {
            self.territory_contacts.get_or_insert_with(Contacts::default).merge(c);
        }
        if let Some(t) = o.territory {
            let counts = self.territory.get_or_insert_with(Vec::new);
            if counts.len() < t.len() {
                counts.resize(t.len(), 0);
            }
            for (c, v) in counts.iter_mut().zip(t) {
                *c += v;
            }
        }
    }

    /// The sums as bytes (a block's partial result in a split run), with the whole volume's
    /// shape: only the labels present, zstd-compressed.
    pub fn to_bytes(&self, dims: [usize; 3]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        for d in dims {
            put(&mut b, d as u64);
        }
        let present: Vec<usize> = (0..self.geo.len()).filter(|&l| self.geo[l].n > 0).collect();
        put(&mut b, present.len() as u64);
        for &l in &present {
            let a = &self.geo[l];
            put(&mut b, l as u64);
            put(&mut b, a.n);
            for v in a.sum.iter().chain(&a.sq) {
                put(&mut b, *v);
            }
            for v in a.lo.iter().chain(&a.hi) {
                put(&mut b, *v as u64);
            }
        }
        put(&mut b, self.images.len() as u64);
        for img in &self.images {
            match img {
                ImageAcc::Int { n, s, s2, lo, hi } => {
                    b.push(0);
                    for &l in &present {
                        put(&mut b, n[l]);
                        b.extend_from_slice(&s[l].to_le_bytes());
                        b.extend_from_slice(&s2[l].to_le_bytes());
                        put(&mut b, lo[l]);
                        put(&mut b, hi[l]);
                    }
                }
                ImageAcc::Float { n, s, lo, hi } => {
                    b.push(1);
                    for &l in &present {
                        put(&mut b, n[l]);
                        s[l].write(&mut b);
                        put(&mut b, lo[l].to_bits());
                        put(&mut b, hi[l].to_bits());
                    }
                }
                ImageAcc::Colour => b.push(2),
            }
        }
        match &self.territory {
            None => b.push(0),
            Some(t) => {
                b.push(1);
                let used: Vec<usize> = (0..t.len()).filter(|&l| t[l] > 0).collect();
                put(&mut b, used.len() as u64);
                for l in used {
                    put(&mut b, l as u64);
                    put(&mut b, t[l]);
                }
                self.territory_contacts.clone().unwrap_or_default().write(&mut b);
            }
        }
        self.local.write(&mut b);
        zstd::bulk::compress(&b, 1).unwrap_or_default()
    }

    /// Reads what [`Accumulator::to_bytes`] wrote, and the volume's shape.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Accumulator, [usize; 3]), String> {
        let bad = || "measure: a partial result is damaged (rerun its block task)".to_string();
        let b = zstd::stream::decode_all(bytes).map_err(|_| bad())?;
        let mut r = crate::util::ByteReader::new(&b);
        if r.take(MAGIC.len()).ok_or_else(bad)? != MAGIC {
            return Err(bad());
        }
        let mut dims = [0usize; 3];
        for d in &mut dims {
            *d = r.u64().ok_or_else(bad)? as usize;
        }
        // Every count is checked against the bytes left before anything is sized by it.
        let count = r.u64().ok_or_else(bad)? as usize;
        if count > r.left() / (17 * 8) {
            return Err(bad());
        }
        let mut present = Vec::with_capacity(count);
        let mut acc = Accumulator::default();
        for _ in 0..count {
            let l = r.u64().ok_or_else(bad)? as usize;
            if l == 0 || l > u32::MAX as usize || present.last().is_some_and(|&p| p >= l) {
                return Err(bad());
            }
            let mut a = Acc { n: r.u64().ok_or_else(bad)?, sum: [0; 3], sq: [0; 6], lo: [0; 3], hi: [0; 3] };
            for v in a.sum.iter_mut().chain(&mut a.sq) {
                *v = r.u64().ok_or_else(bad)?;
            }
            for v in a.lo.iter_mut().chain(&mut a.hi) {
                *v = r.u64().ok_or_else(bad)? as usize;
            }
            if acc.geo.len() <= l {
                acc.geo.resize(l + 1, Acc { n: 0, sum: [0; 3], sq: [0; 6], lo: [usize::MAX; 3], hi: [0; 3] });
            }
            acc.geo[l] = a;
            present.push(l);
        }
        let len = acc.geo.len();
        let images = r.u64().ok_or_else(bad)? as usize;
        if images > r.left() {
            return Err(bad());
        }
        for _ in 0..images {
            let mut img = match r.take(1).ok_or_else(bad)?[0] {
                0 => ImageAcc::Int { n: Vec::new(), s: Vec::new(), s2: Vec::new(), lo: Vec::new(), hi: Vec::new() },
                1 => ImageAcc::Float { n: Vec::new(), s: Vec::new(), lo: Vec::new(), hi: Vec::new() },
                2 => ImageAcc::Colour,
                _ => return Err(bad()),
            };
            img.grow(len);
            match &mut img {
                ImageAcc::Int { n, s, s2, lo, hi } => {
                    for &l in &present {
                        n[l] = r.u64().ok_or_else(bad)?;
                        s[l] = r.u128().ok_or_else(bad)?;
                        s2[l] = r.u128().ok_or_else(bad)?;
                        lo[l] = r.u64().ok_or_else(bad)?;
                        hi[l] = r.u64().ok_or_else(bad)?;
                    }
                }
                ImageAcc::Float { n, s, lo, hi } => {
                    for &l in &present {
                        n[l] = r.u64().ok_or_else(bad)?;
                        s[l] = F32Sums::read(r.take(F32Sums::BYTES).ok_or_else(bad)?).ok_or_else(bad)?;
                        lo[l] = f64::from_bits(r.u64().ok_or_else(bad)?);
                        hi[l] = f64::from_bits(r.u64().ok_or_else(bad)?);
                    }
                }
                ImageAcc::Colour => {}
            }
            acc.images.push(img);
        }
        match r.take(1).ok_or_else(bad)?[0] {
            0 => {}
            1 => {
                let used = r.u64().ok_or_else(bad)? as usize;
                if used > r.left() / 16 {
                    return Err(bad());
                }
                let mut t = Vec::new();
                for _ in 0..used {
                    let l = r.u64().ok_or_else(bad)? as usize;
                    if l > u32::MAX as usize || l < t.len() {
                        return Err(bad());
                    }
                    t.resize(l + 1, 0);
                    t[l] = r.u64().ok_or_else(bad)?;
                }
                acc.territory = Some(t);
                acc.territory_contacts = Some(Contacts::read(&mut r).ok_or_else(bad)?);
            }
            _ => return Err(bad()),
        }
        acc.local = LocalSums::read(&mut r).ok_or_else(bad)?;
        if r.left() != 0 {
            return Err(bad());
        }
        Ok((acc, dims))
    }

    /// The table: one row per object present, intensity columns named by `names` (in the order
    /// the images were given), territory columns when territories were added.
    pub fn finish(self, names: &[&str], dims: [usize; 3], ctx: &Ctx) -> Table {
        let acc = &self.geo;
        let nmax = acc.len().saturating_sub(1);
        let mut t = self.geometry(dims, ctx);
        let present: Vec<usize> = (1..=nmax).filter(|&l| acc[l].n > 0).collect();
        for (name, ia) in names.iter().zip(&self.images) {
            let stats = intensity_stats(ia, nmax);
            let pick = |f: fn(&IStat) -> f64| Column::F64(present.iter().map(|&l| f(&stats[l])).collect());
            t.push(&format!("{name}_sum"), pick(|s| s.sum), None);
            t.push(&format!("{name}_mean"), pick(|s| s.sum / s.n as f64), None);
            t.push(&format!("{name}_min"), pick(|s| s.min), None);
            t.push(&format!("{name}_max"), pick(|s| s.max), None);
            t.push(&format!("{name}_std"), pick(|s| s.std), None);
        }
        if let Some(counts) = &self.territory {
            push_territories(&mut t, counts, ctx);
            let degree = self.territory_contacts.as_ref().map(|c| c.degrees(acc.len())).unwrap_or_default();
            let n = present.iter().map(|&l| degree.get(l).copied().unwrap_or(0)).collect();
            t.push("n_territory_neighbors", Column::U64(n), None);
        }
        t
    }

    fn geometry(&self, dims: [usize; 3], ctx: &Ctx) -> Table {
        let acc = &self.geo;
        let nmax = acc.len().saturating_sub(1);
        let present: Vec<usize> = (1..=nmax).filter(|&l| acc[l].n > 0).collect();
        let sp = ctx.spacing;
        let three_d = ctx.ndim == 3;
        let voxel_volume = if three_d { sp[0] * sp[1] * sp[2] } else { sp[1] * sp[2] };
        let axes: &[(usize, &str)] = if three_d { &[(0, "z"), (1, "y"), (2, "x")] } else { &[(1, "y"), (2, "x")] };

        let mut t = Table::default();
        t.push("label", Column::U32(present.iter().map(|&l| l as u32).collect()), None);
        t.push("voxels", Column::U64(present.iter().map(|&l| acc[l].n).collect()), None);
        let vunit = if three_d { format!("{}^3", ctx.unit) } else { format!("{}^2", ctx.unit) };
        t.push("volume", Column::F64(present.iter().map(|&l| acc[l].n as f64 * voxel_volume).collect()), Some(vunit));
        for &(k, name) in axes {
            let col = present.iter().map(|&l| acc[l].sum[k] as f64 / acc[l].n as f64 * sp[k]).collect();
            t.push(&format!("centroid_{name}"), Column::F64(col), Some(ctx.unit.to_string()));
        }
        for &(k, name) in axes {
            t.push(&format!("bbox_{name}0"), Column::U64(present.iter().map(|&l| acc[l].lo[k] as u64).collect()), None);
        }
        for &(k, name) in axes {
            t.push(&format!("bbox_{name}1"), Column::U64(present.iter().map(|&l| acc[l].hi[k] as u64).collect()), None);
        }
        // Shape: inertia tensor of the object with coordinates scaled by the spacing (skimage).
        let shape: Vec<Shape> = present.iter().map(|&l| shape_of(&acc[l], sp, three_d)).collect();
        let nev = if three_d { 3 } else { 2 };
        for e in 0..nev {
            t.push(&format!("inertia_eig_{e}"), Column::F64(shape.iter().map(|s| s.eig[e]).collect()), Some(format!("{}^2", ctx.unit)));
        }
        t.push("major_axis_length", Column::F64(shape.iter().map(|s| s.major).collect()), Some(ctx.unit.to_string()));
        t.push("minor_axis_length", Column::F64(shape.iter().map(|s| s.minor).collect()), Some(ctx.unit.to_string()));
        t.push(
            "anisotropy",
            Column::F64(shape.iter().map(|s| if s.major > 0.0 { 1.0 - s.minor / s.major } else { f64::NAN }).collect()),
            None,
        );
        let centroids: Vec<[f64; 3]> = present
            .iter()
            .map(|&l| {
                let a = &acc[l];
                let c = |k: usize| a.sum[k] as f64 / a.n as f64 * sp[k];
                [if three_d { c(0) } else { 0.0 }, c(1), c(2)]
            })
            .collect();
        let nn = crate::ops::kdtree::nearest_others(&centroids);
        t.push("nn_distance", Column::F64(nn.iter().map(|n| n.map(|(_, d)| d).unwrap_or(f64::NAN)).collect()), Some(ctx.unit.to_string()));
        t.push("nn_label", Column::U32(nn.iter().map(|n| n.map(|(i, _)| present[i] as u32).unwrap_or(0)).collect()), None);
        t.push(
            "touches_border",
            Column::Bool(present.iter().map(|&l| axes.iter().any(|&(k, _)| acc[l].lo[k] == 0 || acc[l].hi[k] == dims[k])).collect()),
            None,
        );
        // Window sums: surface (2D: perimeter), Euler number, contacts.
        let planar = !three_d;
        let local: Vec<_> = present.iter().map(|&l| self.local.shape.get(l).copied().unwrap_or_default()).collect();
        let area: Vec<f64> = local.iter().map(|s| s.surface_area(sp, planar)).collect();
        let volume: Vec<f64> = present.iter().map(|&l| acc[l].n as f64 * voxel_volume).collect();
        let d = if three_d { 3.0 } else { 2.0 };
        let aunit = if three_d { format!("{}^2", ctx.unit) } else { ctx.unit.to_string() };
        let sphericity = |v: f64, a: f64| {
            let s = if three_d {
                std::f64::consts::PI.cbrt() * (6.0 * v).powf(2.0 / 3.0) / a
            } else {
                2.0 * (std::f64::consts::PI * v).sqrt() / a
            };
            if a > 0.0 { s } else { f64::NAN }
        };
        t.push("surface_area", Column::F64(area.clone()), Some(aunit));
        let diameter = volume.iter().map(|&v| (2.0 * d * v / std::f64::consts::PI).powf(1.0 / d)).collect();
        t.push("equivalent_diameter", Column::F64(diameter), Some(ctx.unit.to_string()));
        t.push("sphericity", Column::F64(volume.iter().zip(&area).map(|(&v, &a)| sphericity(v, a)).collect()), None);
        t.push("euler_number", Column::I64(local.iter().map(|s| s.euler_number(planar)).collect()), None);
        let degree = self.local.contacts.degrees(acc.len());
        t.push("n_neighbors", Column::U64(present.iter().map(|&l| degree.get(l).copied().unwrap_or(0)).collect()), None);
        t
    }
}

/// The territory columns from voxel counts per territory label.
fn push_territories(t: &mut Table, count: &[u64], ctx: &Ctx) {
    let labels = t.u32("label");
    let sp = ctx.spacing;
    let vv = if ctx.ndim == 3 { sp[0] * sp[1] * sp[2] } else { sp[1] * sp[2] };
    let n: Vec<u64> = labels.iter().map(|&l| count.get(l as usize).copied().unwrap_or(0)).collect();
    let unit = if ctx.ndim == 3 { format!("{}^3", ctx.unit) } else { format!("{}^2", ctx.unit) };
    let vol = n.iter().map(|&c| c as f64 * vv).collect();
    t.push("territory_voxels", Column::U64(n), None);
    t.push("territory_volume", Column::F64(vol), Some(unit));
}

struct Shape {
    eig: [f64; 3],
    major: f64,
    minor: f64,
}

/// Inertia tensor eigenvalues (descending, clipped at 0) and skimage's axis lengths.
fn shape_of(a: &Acc, sp: [f64; 3], three_d: bool) -> Shape {
    let n = a.n as i128;
    // Central second moments from exact integer sums: mu_ij = s_i s_j (n Σc_i c_j − Σc_i Σc_j) / n.
    let mut mu = [[0f64; 3]; 3];
    for (q, &(i, j)) in PAIRS.iter().enumerate() {
        let num = n * a.sq[q] as i128 - a.sum[i] as i128 * a.sum[j] as i128;
        let v = sp[i] * sp[j] * (num as f64 / n as f64);
        mu[i][j] = v;
        mu[j][i] = v;
    }
    let nf = n as f64;
    if three_d {
        let tr = mu[0][0] + mu[1][1] + mu[2][2];
        let mut t = [[0f64; 3]; 3];
        for i in 0..3 {
            t[i][i] = (tr - mu[i][i]) / nf;
            for j in 0..3 {
                if i != j {
                    t[i][j] = -mu[i][j] / nf;
                }
            }
        }
        let mut ev = sym3_eigenvalues(t).map(|v| v.max(0.0));
        ev.sort_by(|x, y| y.total_cmp(x));
        let major = (10.0 * (ev[0] + ev[1] - ev[2])).max(0.0).sqrt();
        let minor = (10.0 * (-ev[0] + ev[1] + ev[2])).max(0.0).sqrt();
        Shape { eig: ev, major, minor }
    } else {
        // 2D over (y, x): T = [[mu_xx, -mu_yx], [-mu_yx, mu_yy]] / n.
        let (a11, a22, a12) = (mu[2][2] / nf, mu[1][1] / nf, -mu[1][2] / nf);
        let mean = (a11 + a22) / 2.0;
        let r = ((a11 - a22) / 2.0).hypot(a12);
        let (l0, l1) = ((mean + r).max(0.0), (mean - r).max(0.0));
        Shape { eig: [l0, l1, 0.0], major: 4.0 * l0.sqrt(), minor: 4.0 * l1.sqrt() }
    }
}

/// Eigenvalues of a symmetric 3×3 matrix by cyclic Jacobi rotations (accurate to rounding).
pub fn sym3_eigenvalues(mut a: [[f64; 3]; 3]) -> [f64; 3] {
    for _ in 0..64 {
        let off = a[0][1].abs() + a[0][2].abs() + a[1][2].abs();
        let scale = a[0][0].abs() + a[1][1].abs() + a[2][2].abs();
        if off == 0.0 || off <= f64::EPSILON * 1e-3 * scale {
            break;
        }
        for (p, q) in [(0usize, 1usize), (0, 2), (1, 2)] {
            if a[p][q] == 0.0 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            for row in a.iter_mut() {
                let (akp, akq) = (row[p], row[q]);
                row[p] = c * akp - s * akq;
                row[q] = s * akp + c * akq;
            }
            let (rp, rq) = (a[p], a[q]);
            a[p] = std::array::from_fn(|k| c * rp[k] - s * rq[k]);
            a[q] = std::array::from_fn(|k| s * rp[k] + c * rq[k]);
        }
    }
    [a[0][0], a[1][1], a[2][2]]
}

#[derive(Clone, Copy, Default)]
struct IStat {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
    std: f64,
}

/// Counts, sums, sums of squares, minima and maxima per label.
type IntSums<'a> = (&'a mut [u64], &'a mut [u128], &'a mut [u128], &'a mut [u64], &'a mut [u64]);

/// An intensity slab as one contiguous slice (borrowed when the view already is one).
enum Rows<'a> {
    U8(ndarray::CowArray<'a, u8, ndarray::Ix3>),
    U16(ndarray::CowArray<'a, u16, ndarray::Ix3>),
    U32(ndarray::CowArray<'a, u32, ndarray::Ix3>),
    F32(ndarray::CowArray<'a, f32, ndarray::Ix3>),
    Colour,
}

impl<'a> Rows<'a> {
    fn of(d: &'a DView<'_>) -> Rows<'a> {
        match d {
            DView::U8(v) => Rows::U8(v.as_standard_layout()),
            DView::U16(v) => Rows::U16(v.as_standard_layout()),
            DView::U32(v) => Rows::U32(v.as_standard_layout()),
            DView::F32(v) => Rows::F32(v.as_standard_layout()),
            DView::Colour => Rows::Colour,
        }
    }
    fn flat(&self) -> Flat<'_> {
        match self {
            Rows::U8(a) => Flat::U8(a.as_slice().expect("standard layout")),
            Rows::U16(a) => Flat::U16(a.as_slice().expect("standard layout")),
            Rows::U32(a) => Flat::U32(a.as_slice().expect("standard layout")),
            Rows::F32(a) => Flat::F32(a.as_slice().expect("standard layout")),
            Rows::Colour => Flat::Colour,
        }
    }
}

/// [`Rows`] as slices.
enum Flat<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    F32(&'a [f32]),
    Colour,
}

/// Adds the intensities at raster positions `a..b` (one run of label `l`).
#[inline]
fn add_intensity(acc: &mut ImageAcc, l: usize, data: &Flat, a: usize, b: usize) {
    #[inline(always)]
    fn ints<T: Copy + Into<u64>>(v: &[T], l: usize, (n, s, s2, lo, hi): IntSums<'_>) {
        // Within a run: Σv < 2^32·2^32 and each v² < 2^64 (v < 2^32), so u64 and u128 suffice.
        let (mut t, mut t2, mut mn, mut mx) = (0u128, 0u128, lo[l], hi[l]);
        for &v in v {
            let v: u64 = v.into();
            t += v as u128;
            t2 += (v * v) as u128;
            mn = mn.min(v);
            mx = mx.max(v);
        }
        n[l] += v.len() as u64;
        s[l] += t;
        s2[l] += t2;
        lo[l] = mn;
        hi[l] = mx;
    }
    match (acc, data) {
        (ImageAcc::Int { n, s, s2, lo, hi }, Flat::U8(d)) => ints(&d[a..b], l, (n, s, s2, lo, hi)),
        (ImageAcc::Int { n, s, s2, lo, hi }, Flat::U16(d)) => ints(&d[a..b], l, (n, s, s2, lo, hi)),
        (ImageAcc::Int { n, s, s2, lo, hi }, Flat::U32(d)) => ints(&d[a..b], l, (n, s, s2, lo, hi)),
        (ImageAcc::Float { n, s, lo, hi }, Flat::F32(d)) => {
            let (mut mn, mut mx) = (lo[l], hi[l]);
            let acc = &mut s[l];
            for &v in &d[a..b] {
                acc.add(v);
                mn = min_nan(mn, v as f64);
                mx = max_nan(mx, v as f64);
            }
            n[l] += (b - a) as u64;
            lo[l] = mn;
            hi[l] = mx;
        }
        _ => {}
    }
}

/// The runs of one label along x of a slab's rows (`flat`, planes from `z0`, `dims`): their
/// geometry sums into `geo` and their intensities into `images`. Compiled for the widest vectors
/// the CPU has (the same integers on any).
fn add_runs<L: LabelInt>(geo: &mut [Acc], images: &mut [ImageAcc], rows: &[Flat], flat: &[L], z0: usize, dims: (usize, usize, usize)) {
    crate::isa::dispatch!(crate::isa::Isa::widest(), [L: LabelInt] add_runs_plain(
        geo: &mut [Acc], images: &mut [ImageAcc], rows: &[Flat], flat: &[L], z0: usize, dims: (usize, usize, usize)
    ))
}

#[inline(always)]
fn add_runs_plain<L: LabelInt>(
    geo: &mut [Acc],
    images: &mut [ImageAcc],
    rows: &[Flat],
    flat: &[L],
    z0: usize,
    (nz, ny, nx): (usize, usize, usize),
) {
    // Objects are visited as runs of one label along x, in raster order: the geometry sums of
    // a run have closed forms (exact integers, so the totals are those of voxel-by-voxel
    // sums), and intensities are added voxel by voxel in raster order as before.
    for r in 0..nz * ny {
        let (z, y) = (z0 + r / ny.max(1), r % ny.max(1));
        let row = &flat[r * nx..(r + 1) * nx];
        let mut x = 0;
        while x < nx {
            let l = row[x];
            if l == L::default() {
                x = skip_zeros(row, x);
                continue;
            }
            let start = x;
            x += 1;
            while x < nx && row[x] == l {
                x += 1;
            }
            let l = l.to_u32() as usize;
            geo[l].add_run(z, y, start, x);
            for (acc, img) in images.iter_mut().zip(rows) {
                add_intensity(acc, l, img, r * nx + start, r * nx + x);
            }
        }
    }
}

/// `k` z-ranges of `labels` (whole planes, none empty) holding about equal work: per plane, its
/// object voxels on every 8th row, plus a share for passing over its background.
fn balanced_ranges<L: LabelInt>(labels: &Array3<L>, k: usize) -> Vec<(usize, usize)> {
    use rayon::prelude::*;
    let (nz, ny, nx) = labels.dim();
    let k = k.min(nz).max(1);
    let weight: Vec<u64> = (0..nz)
        .into_par_iter()
        .map(|z| {
            let plane = labels.index_axis(Axis(0), z);
            let objects: u64 = (0..ny).step_by(8).map(|y| plane.row(y).iter().filter(|&&v| v != L::default()).count() as u64 * 8).sum();
            objects + (ny * nx / 16) as u64 + 1
        })
        .collect();
    let total: u64 = weight.iter().sum();
    let mut ranges = Vec::with_capacity(k);
    let (mut start, mut acc) = (0usize, 0u64);
    for (z, w) in weight.iter().enumerate() {
        acc += w;
        let i = ranges.len() as u64 + 1;
        // Cut after plane z once this range reaches its share, leaving a plane for each range to come.
        if ranges.len() + 1 < k && acc * k as u64 >= total * i && nz - (z + 1) >= k - ranges.len() - 1 {
            ranges.push((start, z + 1));
            start = z + 1;
        }
    }
    ranges.push((start, nz));
    ranges.retain(|(a, b)| b > a);
    ranges
}

/// What a measure partial result starts with (and its format's version).
const MAGIC: &[u8] = b"tessera-measure-2";

fn put(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// The smaller of two values, NaN if either is (as NumPy's `min`).
#[inline]
fn min_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) }
}

/// The larger of two values, NaN if either is (as NumPy's `max`).
#[inline]
fn max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }
}

/// Per-label sum/min/max/std from the accumulated sums. Integer images have exact integer sums
/// (and sums of squares), so the results do not depend on the order voxels were visited.
fn intensity_stats(acc: &ImageAcc, nmax: usize) -> Vec<IStat> {
    match acc {
        ImageAcc::Int { n, s, s2, lo, hi } => (0..=nmax)
            .map(|l| {
                if n.get(l).copied().unwrap_or(0) == 0 {
                    return IStat::default();
                }
                let nn = n[l] as u128;
                // n² var = n Σv² − (Σv)², exact in integers.
                let num = nn * s2[l] - s[l] * s[l];
                let std = ((num as f64) / (nn as f64 * nn as f64)).sqrt();
                IStat { n: n[l], sum: s[l] as f64, min: lo[l] as f64, max: hi[l] as f64, std }
            })
            .collect(),
        ImageAcc::Float { n, s, lo, hi } => (0..=nmax)
            .map(|l| {
                if n.get(l).copied().unwrap_or(0) == 0 {
                    return IStat::default();
                }
                IStat { n: n[l], sum: s[l].sum(), min: lo[l], max: hi[l], std: s[l].variance(n[l]).sqrt() }
            })
            .collect(),
        ImageAcc::Colour => vec![IStat::default(); nmax + 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Balanced ranges cover every plane once, in order, none empty; objects crowded into a few
    /// planes get ranges of their own.
    #[test]
    fn balanced_ranges_cover_the_planes_and_split_the_objects() {
        for (nz, k) in [(1, 2), (2, 2), (3, 8), (40, 2), (40, 3), (41, 7)] {
            let a = Array3::from_shape_fn((nz, 16, 16), |(z, y, x)| u16::from(z < nz / 4 && (x + y) % 3 == 0));
            let r = balanced_ranges(&a, k);
            assert_eq!(r.len(), k.min(nz), "{nz} {k}");
            assert_eq!(r.first().unwrap().0, 0);
            assert_eq!(r.last().unwrap().1, nz);
            assert!(r.windows(2).all(|w| w[0].1 == w[1].0) && r.iter().all(|(a, b)| b > a), "{r:?}");
            if (nz, k) == (40, 2) {
                assert!(r[0].1 <= 10, "the objects' planes are split off: {r:?}");
            }
        }
    }

    #[test]
    fn parallel_accumulation_equals_sequential() {
        // Large enough for the parallel path; objects spanning the z-ranges, integer and float
        // intensities, territories.
        let (nz, ny, nx) = (37, 64, 61);
        let labels = Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
            let v = (z / 5 * 13 + y / 9 * 7 + x / 11) as u32 % 23;
            if (x + y + z) % 7 == 0 { 0 } else { v }
        });
        let terr = labels.mapv(|v| if v > 0 { v } else { 3 });
        let u8s = Data::U8(Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| ((z * 31 + y * 17 + x * 5) % 251) as u8));
        let u16s = Data::U16(Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| ((z * 3001 + y * 97 + x * 13) % 65521) as u16));
        // Floats of very different magnitudes, whose f64 running sums depend on the order.
        let f32s = Data::F32(Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
            ((z * 7 + y * 3 + x) % 19) as f32 * 10f32.powi(((x + z) % 9) as i32 - 4) - 0.3
        }));
        let ctx = Ctx { sample: "s", spacing: [2.0, 0.5, 0.75], unit: "um", ndim: 3 };
        let images = [&u8s, &u16s, &f32s];
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut acc = Accumulator::default();
                acc.add(&labels.clone().into(), &images, Some(&terr), 0, &Edges { last: true, ..Edges::default() });
                format!("{:?}", acc.finish(&["a", "b", "c"], [nz, ny, nx], &ctx))
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
        assert!(one.contains("territory_voxels") && one.contains("n_territory_neighbors") && one.contains("euler_number"));
        // Blocks of planes, through bytes, merged in block order: the same table.
        for cuts in [vec![0, nz], vec![0, 1, 2, 20, nz], vec![0, 11, 12, 13, 30, nz]] {
            let mut all = Accumulator::default();
            for w in cuts.windows(2) {
                let (a, b) = (w[0], w[1]);
                let mut part = Accumulator::default();
                let slab = |d: &Data| match d {
                    Data::U8(v) => Data::U8(v.slice(s![a..b, .., ..]).to_owned()),
                    Data::U16(v) => Data::U16(v.slice(s![a..b, .., ..]).to_owned()),
                    Data::F32(v) => Data::F32(v.slice(s![a..b, .., ..]).to_owned()),
                    _ => unreachable!(),
                };
                let parts: Vec<Data> = images.iter().map(|d| slab(d)).collect();
                let refs: Vec<&Data> = parts.iter().collect();
                let t = terr.slice(s![a..b, .., ..]).to_owned();
                let edges = Edges {
                    labels: (a > 0).then(|| labels.index_axis(Axis(0), a - 1)),
                    territories: (a > 0).then(|| terr.index_axis(Axis(0), a - 1)),
                    last: b == nz,
                    planar: false,
                };
                part.add(&labels.slice(s![a..b, .., ..]).to_owned().into(), &refs, Some(&t), a, &edges);
                let bytes = part.to_bytes([nz, ny, nx]);
                let (back, dims) = Accumulator::from_bytes(&bytes).unwrap();
                assert_eq!(dims, [nz, ny, nx]);
                all.merge(back);
            }
            assert_eq!(format!("{:?}", all.finish(&["a", "b", "c"], [nz, ny, nx], &ctx)), one, "cut at {cuts:?}");
        }
        // Damaged partial results are an error, not a panic.
        let mut acc = Accumulator::default();
        acc.add(&labels.clone().into(), &images, Some(&terr), 0, &Edges { last: true, ..Edges::default() });
        let bytes = acc.to_bytes([nz, ny, nx]);
        let raw = zstd::stream::decode_all(&bytes[..]).unwrap();
        for cut in [0, 10, raw.len() / 2, raw.len() - 1] {
            let damaged = zstd::bulk::compress(&raw[..cut], 1).unwrap();
            assert!(Accumulator::from_bytes(&damaged).is_err());
        }
        assert!(Accumulator::from_bytes(b"not zstd").is_err());
    }

    #[test]
    fn literal_objects() {
        // Two objects in a 2×3×4 volume, spacing (2, 1, 0.5).
        let mut l = Array3::<u32>::zeros((2, 3, 4));
        l[[0, 0, 0]] = 1;
        l[[1, 0, 0]] = 1;
        l[[0, 2, 1]] = 3;
        l[[0, 2, 2]] = 3;
        l[[1, 2, 3]] = 3;
        let img = Data::U8(Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 12 + y * 4 + x) as u8));
        let ctx = Ctx { sample: "s", spacing: [2.0, 1.0, 0.5], unit: "um", ndim: 3 };
        let t = measure(&l.clone().into(), &[("raw", &img)], &ctx);
        assert_eq!(t.u32("label"), vec![1, 3]);
        assert_eq!(t.u64("voxels"), vec![2, 3]);
        assert_eq!(t.f64("volume"), vec![2.0, 3.0]);
        assert_eq!(t.f64("centroid_z"), vec![1.0, 1.0 / 3.0 * 2.0]);
        assert_eq!(t.f64("centroid_y"), vec![0.0, 2.0]);
        assert_eq!(t.f64("centroid_x"), vec![0.0, 1.0]);
        assert_eq!(t.u64("bbox_x1"), vec![1, 4]);
        assert_eq!(t.u64("bbox_z1"), vec![2, 2]);
        // raw values: object 1 = {0, 12}; object 3 = {9, 10, 23}.
        assert_eq!(t.f64("raw_sum"), vec![12.0, 42.0]);
        assert_eq!(t.f64("raw_mean"), vec![6.0, 14.0]);
        assert_eq!(t.f64("raw_min"), vec![0.0, 9.0]);
        assert_eq!(t.f64("raw_std")[0], 6.0);
        let want = ((25.0 + 16.0 + 81.0) / 3.0f64).sqrt();
        assert!((t.f64("raw_std")[1] - want).abs() < 1e-12);
    }

    #[test]
    fn two_d_has_no_z_columns() {
        let l = Array3::<u32>::from_elem((1, 2, 2), 1);
        let ctx = Ctx { sample: "s", spacing: [1.0, 0.5, 0.5], unit: "um", ndim: 2 };
        let t = measure(&l.clone().into(), &[], &ctx);
        assert!(t.names().iter().all(|n| !n.contains("_z")));
        assert_eq!(t.f64("volume"), vec![1.0]);
    }
}
