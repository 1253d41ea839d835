//! Connected-component labelling: mask → labels, numbered as `scipy.ndimage.label` numbers them.

use ndarray::Array3;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::slab::{self, Slabs};
use super::{Ctx, Halo, Input, Kind, LabelInt, Labels, Meta, Op, OpInfo, ParamDoc, ParamIssue, Value, build, fields_of};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    pub input: String,
    #[serde(default)]
    pub connectivity: Option<u8>,
    #[serde(default)]
    pub min_size: Option<u64>,
    #[serde(default)]
    pub max_size: Option<u64>,
}

pub static LABEL: OpInfo = OpInfo {
    name: "label",
    family: "label",
    version: 1,
    output: Kind::Labels,
    same_kind: false,
    summary: "Mask → labels: connected components numbered 1..N in raster order.",
    doc: "Objects are numbered 1..N in raster order (z, then y, then x) of their first voxel, exactly \
          as scipy.ndimage.label and skimage.measure.label number them. Connectivity counts the \
          neighbours that touch: 4 (edges) or 8 (edges and corners) in 2D; 6 (faces), 18 (faces and \
          edges) or 26 (faces, edges and corners) in 3D. Objects with fewer than `min_size` or more \
          than `max_size` voxels are removed and the rest renumbered in the same order.",
    params: &[
        ParamDoc { name: "input", ty: "stage (mask)", default: None, doc: "The mask to label." },
        ParamDoc {
            name: "connectivity",
            ty: "4 | 8 (2D), 6 | 18 | 26 (3D)",
            default: Some("8 in 2D, 26 in 3D"),
            doc: "Which neighbours join voxels into one object.",
        },
        ParamDoc { name: "min_size", ty: "integer ≥ 1", default: Some("none"), doc: "Drop objects with fewer voxels." },
        ParamDoc { name: "max_size", ty: "integer ≥ 1", default: Some("none"), doc: "Drop objects with more voxels." },
    ],
    build: build::<Label>,
    fields: fields_of::<Label>,
    examples: &["input: {mask}, connectivity: 6", "input: {mask}, connectivity: 26, min_size: 3"],
};

impl Label {
    /// The size range objects must fall in (`min_size`, `max_size`; everything by default).
    pub fn size_range(&self) -> (u64, u64) {
        (self.min_size.unwrap_or(0), self.max_size.unwrap_or(u64::MAX))
    }
    pub fn connectivity_for(&self, ndim: u8) -> u8 {
        self.connectivity.unwrap_or(if ndim == 2 { 8 } else { 26 })
    }
}

impl Op for Label {
    fn info(&self) -> &'static OpInfo {
        &LABEL
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input { role: "input", stage: self.input.clone(), accepts: &[Kind::Mask] }]
    }
    fn halo(&self) -> Halo {
        Halo::Global
    }
    fn check(&self) -> Vec<ParamIssue> {
        let mut v: Vec<ParamIssue> = super::connectivity_issue(self.connectivity).into_iter().collect();
        if self.min_size == Some(0) {
            v.push(ParamIssue::new("min_size", "`min_size` must be at least 1"));
        }
        if self.max_size == Some(0) {
            v.push(ParamIssue::new("max_size", "`max_size` must be at least 1"));
        }
        if let (Some(lo), Some(hi)) = (self.min_size, self.max_size)
            && lo > hi
        {
            v.push(ParamIssue::new(
                "max_size",
                format!("`max_size` ({hi}) is smaller than `min_size` ({lo}): every object would be dropped"),
            ));
        }
        v
    }
    fn infer(&self, inputs: &[Meta]) -> Result<Meta, ParamIssue> {
        let m = &inputs[0];
        if m.kind != Kind::Mask {
            return Err(ParamIssue::new("input", format!("`label` needs a mask but its input is a {}", m.kind))
                .help("threshold the image first (op: threshold)"));
        }
        super::connectivity_fits(self.connectivity_for(m.ndim), m.ndim)?;
        Ok(Meta { kind: Kind::Labels, dtype: None, ..m.clone() })
    }
    fn run(&self, inputs: &[&Value], ctx: &Ctx) -> Result<Value, String> {
        let Value::Mask(mask) = inputs[0] else { return Err("label: input is not a mask".into()) };
        let (mut labels, n) = label_narrow(mask, self.connectivity_for(ctx.ndim))?;
        if self.min_size.is_some() || self.max_size.is_some() {
            crate::with_labels!(&mut labels, l => filter_sizes(l, n, self.min_size.unwrap_or(0), self.max_size.unwrap_or(u64::MAX)));
        }
        Ok(Value::Labels(labels))
    }
    fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
    fn streams(&self, _inputs: &[Meta]) -> Result<(), String> {
        Ok(())
    }
    /// Slabs labelled with provisional ids set aside on disk and joined across seams
    /// ([`SlabLabeller`]), then a pass that renumbers them.
    fn stream(&self, io: &mut dyn Slabs, ctx: &Ctx) -> Result<slab::Outcome, String> {
        let [nz, ny, nx] = io.input(0).shape();
        // Beside the mask: provisional ids, and the renumbered slab.
        let planes = io.planes(4 + 4);
        let mut labeller = SlabLabeller::new(self.connectivity_for(ctx.ndim), ny, nx);
        let mut prov = io.scratch("provisional")?;
        for (z0, z1) in slab::ranges(nz, planes) {
            let Value::Mask(m) = io.input(0).read(z0, z1)? else { return Err("label: input is not a mask".into()) };
            prov.append(&Value::Labels(labeller.add(&m)?.into()))?;
        }
        let (min, max) = self.size_range();
        let (remap, count) = labeller.resolve(min, max);
        io.labels_max(count);
        for (z0, z1) in slab::ranges(nz, planes) {
            let Value::Labels(p) = prov.read(z0, z1)? else { return Err("label: provisional labels".into()) };
            io.emit(Value::Labels(p.into_u32().mapv(|x| remap[x as usize]).into()))?;
        }
        Ok(slab::Outcome::Emitted)
    }
    fn phased(&self) -> Option<&dyn slab::Phased> {
        Some(self)
    }
}

/// Split over z-blocks: each block is labelled on its own ([`SlabLabeller`], provisional ids
/// kept on disk); the reduce joins the blocks' union-finds across their seams in block order,
/// which numbers objects as one labeller would (raster order of first voxels, so scipy's), with
/// the size filter on whole objects; each block then renumbers its provisional ids.
impl slab::Phased for Label {
    fn partial(&self, io: &mut dyn slab::BlockIo, _round: usize, _before: Option<&[u8]>, ctx: &Ctx) -> Result<Vec<u8>, String> {
        let (_, z0, z1) = io.block();
        let [_, ny, nx] = io.input(0).shape();
        let planes = io.planes(4);
        let mut labeller = SlabLabeller::new(self.connectivity_for(ctx.ndim), ny, nx);
        let mut prov = io.keep()?;
        for (a, b) in slab::ranges(z1 - z0, planes) {
            let Value::Mask(m) = io.input(0).read(z0 + a, z0 + b)? else { return Err("label: input is not a mask".into()) };
            prov.append(&Value::Labels(labeller.add(&m)?.into()))?;
        }
        labeller.to_bytes()
    }
    fn reduce(&self, _round: usize, partials: &mut slab::Partials<'_>, _before: Option<&[u8]>, _ctx: &Ctx) -> Result<Vec<u8>, String> {
        let (all, offsets) = SlabLabeller::join(partials.map(|p| SlabLabeller::from_bytes(&p?)))?;
        let (min, max) = self.size_range();
        let (remap, count) = all.resolve(min, max);
        let mut b = Vec::with_capacity(16 + 4 * (offsets.len() + remap.len()));
        b.extend((count as u64).to_le_bytes());
        b.extend((offsets.len() as u64).to_le_bytes());
        b.extend(offsets.iter().chain(&remap).flat_map(|v| v.to_le_bytes()));
        zstd::bulk::compress(&b, 1).map_err(|e| format!("label: compressing the numbering: {e}"))
    }
    fn apply(&self, io: &mut dyn slab::BlockIo, reduced: &[u8], _ctx: &Ctx) -> Result<(), String> {
        let bad = || "label: the joined numbering is damaged (rerun the reduce task)".to_string();
        let b = zstd::stream::decode_all(reduced).map_err(|_| bad())?;
        let word = |k: usize| b.get(k * 8..k * 8 + 8).map(|c| u64::from_le_bytes(c.try_into().expect("8")));
        let blocks = word(1).ok_or_else(bad)? as usize;
        let u32s: Vec<u32> = b.get(16..).ok_or_else(bad)?.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4"))).collect();
        let (block, z0, z1) = io.block();
        if blocks > u32s.len() || block >= blocks {
            return Err(bad());
        }
        let (offsets, remap) = u32s.split_at(blocks);
        let off = offsets[block] as usize;
        let prov = io.kept()?;
        let planes = io.planes(8);
        for (a, b) in slab::ranges(z1 - z0, planes) {
            let Value::Labels(p) = prov.read(a, b)? else { return Err("label: provisional labels".into()) };
            let p = p.into_u32();
            let mut bad_id = false;
            let out = p.mapv(|x| {
                if x == 0 {
                    return 0;
                }
                remap.get(off + x as usize).copied().unwrap_or_else(|| {
                    bad_id = true;
                    0
                })
            });
            if bad_id {
                return Err(bad());
            }
            io.emit(Value::Labels(out.into()))?;
        }
        Ok(())
    }
}

/// The neighbours visited before a voxel in raster order, for a connectivity.
pub fn backward_offsets(connectivity: u8) -> Vec<[isize; 3]> {
    let mut v = Vec::new();
    for dz in -1isize..=1 {
        for dy in -1isize..=1 {
            for dx in -1isize..=1 {
                let order = (dz, dy, dx);
                if order >= (0, 0, 0) {
                    continue;
                }
                let nonzero = (dz != 0) as u8 + (dy != 0) as u8 + (dx != 0) as u8;
                let keep = match connectivity {
                    4 => dz == 0 && nonzero == 1,
                    8 => dz == 0,
                    6 => nonzero == 1,
                    18 => nonzero <= 2,
                    _ => true,
                };
                if keep {
                    v.push([dz, dy, dx]);
                }
            }
        }
    }
    v
}

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let p = parent[x as usize];
        parent[x as usize] = parent[p as usize];
        x = p;
    }
    x
}

/// Connected components of a mask, numbered 1..N in raster order of their first voxel (the
/// canonical scipy numbering), as u32 labels.
///
/// Two-pass union-find: provisional labels in raster order, where a component's root (its
/// smallest provisional label, merged lowest-wins) is the label of its first voxel; renumbering
/// roots in increasing order then gives the canonical (scipy) numbering. Stacks are cut into
/// z-slabs labelled in parallel; slab s's provisional labels follow slab s−1's, so the order is
/// still raster order, and the slabs are joined by unions across their seams before the final
/// renumbering.
pub fn label(mask: &Array3<u8>, connectivity: u8) -> Result<(Array3<u32>, u32), String> {
    label_as::<u32>(mask, connectivity)?.ok_or_else(too_many)
}

/// [`label`], as u16 labels while they fit (fewer than 65,536 objects, and slabs whose
/// provisional labels fit too), written as u16 from the start: the labels of most images take
/// half the memory, and no u32 copy of them ever exists.
pub fn label_narrow(mask: &Array3<u8>, connectivity: u8) -> Result<(Labels, u32), String> {
    if let Some((l, n)) = label_as::<u16>(mask, connectivity)? {
        return Ok((Labels::U16(l), n));
    }
    let (l, n) = label(mask, connectivity)?;
    Ok((Labels::U32(l), n))
}

fn too_many() -> String {
    format!("more than {} separate objects while labelling: tessera labels are 32-bit", u32::MAX - 1)
}

/// Planes per slab a u16 labelling starts from (a slab whose provisional labels outgrow u16 is
/// cut in two, down to one plane).
const U16_SLAB_PLANES: usize = 32;

/// [`label`] in labels of type `L`; `None` when they do not fit it.
fn label_as<L: LabelInt>(mask: &Array3<u8>, connectivity: u8) -> Result<Option<(Array3<L>, u32)>, String> {
    let (nz, ny, nx) = mask.dim();
    let m = mask.as_standard_layout();
    let m = m.as_slice().expect("standard layout");
    let plane = ny * nx;
    // label_slab writes every voxel, so the buffer needs no clearing.
    let mut out: Vec<L> = L::buffer(m.len());
    let threads = rayon::current_num_threads();
    let mut slabs = if threads > 1 && nz >= 2 * threads && plane > 0 { threads } else { 1 };
    if L::MAX < u32::MAX {
        slabs = slabs.max(nz.div_ceil(U16_SLAB_PLANES));
    }
    let bounds: Vec<(usize, usize)> = (0..slabs).map(|s| (s * nz / slabs, (s + 1) * nz / slabs)).collect();
    // Label every slab on its own (cut further where its provisional labels outgrow L).
    let mut chunks: Vec<&mut [L]> = Vec::with_capacity(slabs);
    let mut rest: &mut [L] = &mut out;
    for &(z0, z1) in &bounds {
        let (head, tail) = rest.split_at_mut((z1 - z0) * plane);
        chunks.push(head);
        rest = tail;
    }
    let labelled: Vec<Option<Vec<SlabParents>>> = chunks
        .into_par_iter()
        .zip(bounds.par_iter())
        .map(|(chunk, &(z0, z1))| label_range(m, chunk, (z0, z1), (ny, nx), connectivity))
        .collect();
    let Some(labelled) = labelled.into_iter().collect::<Option<Vec<_>>>() else {
        return Ok(None);
    };
    let (bounds, parents): (Vec<(usize, usize)>, Vec<Vec<u32>>) = labelled.into_iter().flatten().unzip();
    let slabs = bounds.len();
    // One global union-find: slab s's label l is l + offset[s].
    let mut offset = vec![0u32; slabs];
    let mut parent: Vec<u32> = vec![0];
    for (s, p) in parents.iter().enumerate() {
        if parent.len() + p.len() > u32::MAX as usize {
            return Err(too_many());
        }
        offset[s] = parent.len() as u32 - 1;
        parent.extend(p[1..].iter().map(|&q| q + offset[s]));
    }
    // Seams: the first plane of each slab against the last plane of the previous one.
    let seam_offs: Vec<[isize; 3]> = backward_offsets(connectivity).into_iter().filter(|o| o[0] == -1).collect();
    for s in 1..slabs {
        let z = bounds[s].0;
        for y in 0..ny {
            for x in 0..nx {
                let here = out[z * plane + y * nx + x].to_u32();
                if here == 0 {
                    continue;
                }
                let a = here + offset[s];
                for o in &seam_offs {
                    let (yy, xx) = (y as isize + o[1], x as isize + o[2]);
                    if yy < 0 || xx < 0 || yy >= ny as isize || xx >= nx as isize {
                        continue;
                    }
                    let there = out[(z - 1) * plane + yy as usize * nx + xx as usize].to_u32();
                    if there != 0 {
                        let (ra, rb) = (find(&mut parent, a), find(&mut parent, there + offset[s - 1]));
                        if ra != rb {
                            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
                            parent[hi as usize] = lo;
                        }
                    }
                }
            }
        }
    }
    let mut remap = vec![0u32; parent.len()];
    let mut n = 0u32;
    for l in 1..parent.len() {
        let r = find(&mut parent, l as u32) as usize;
        if r == l {
            n += 1;
            remap[l] = n;
        } else {
            remap[l] = remap[r];
        }
    }
    if n > L::MAX {
        return Ok(None);
    }
    let mut rest: &mut [L] = &mut out;
    let mut chunks: Vec<(&mut [L], u32)> = Vec::with_capacity(slabs);
    for (s, &(z0, z1)) in bounds.iter().enumerate() {
        let (head, tail) = rest.split_at_mut((z1 - z0) * plane);
        chunks.push((head, offset[s]));
        rest = tail;
    }
    let zero = L::default();
    chunks.into_par_iter().for_each(|(chunk, off)| {
        // Background passed over 16 voxels at a time.
        for block in chunk.chunks_mut(16) {
            if block.iter().fold(0, |m, &v| m | v.to_u32()) == 0 {
                continue;
            }
            for v in block.iter_mut().filter(|v| **v != zero) {
                *v = L::of(remap[(v.to_u32() + off) as usize]);
            }
        }
    });
    Ok(Some((Array3::from_shape_vec((nz, ny, nx), out).expect("shape"), n)))
}

/// A labelled slab: its planes `z0..z1` and its union-find parents.
type SlabParents = ((usize, usize), Vec<u32>);

/// Labels planes `z0..z1` (`out` is theirs) as one slab, or as several when its provisional labels
/// outgrow `L` (halves, down to single planes): each slab's bounds and union-find parents, in z
/// order. `None` when a single plane outgrows `L`.
fn label_range<L: LabelInt>(
    m: &[u8],
    out: &mut [L],
    (z0, z1): (usize, usize),
    (ny, nx): (usize, usize),
    connectivity: u8,
) -> Option<Vec<SlabParents>> {
    let plane = ny * nx;
    if let Some(p) = label_slab(&m[z0 * plane..z1 * plane], out, (z1 - z0, ny, nx), connectivity) {
        return Some(vec![((z0, z1), p)]);
    }
    if z1 - z0 < 2 {
        return None;
    }
    let mid = (z0 + z1) / 2;
    let (a, b) = out.split_at_mut((mid - z0) * plane);
    let mut first = label_range(m, a, (z0, mid), (ny, nx), connectivity)?;
    first.extend(label_range(m, b, (mid, z1), (ny, nx), connectivity)?);
    Some(first)
}

/// Labels one slab (`dims` = its z, y, x sizes) into `out`, writing every voxel (background 0);
/// returns its union-find parents (index 0 unused), provisional labels 1.. in raster order.
fn label_slab<L: LabelInt>(m: &[u8], out: &mut [L], dims: (usize, usize, usize), connectivity: u8) -> Option<Vec<u32>> {
    let (nz, ny, nx) = dims;
    let mut parent: Vec<u32> = vec![0];
    // Backward neighbours grouped by row: (row, dx) with row 0 = (z, y), 1 = (z, y−1),
    // 2 = (z−1, y−1), 3 = (z−1, y), 4 = (z−1, y+1).
    let offs: Vec<(usize, isize)> = backward_offsets(connectivity)
        .into_iter()
        .map(|[dz, dy, dx]| {
            let row = match (dz, dy) {
                (0, 0) => 0,
                (0, -1) => 1,
                (-1, -1) => 2,
                (-1, 0) => 3,
                _ => 4,
            };
            (row, dx)
        })
        .collect();
    // With 8/26-connectivity a voxel whose left neighbour is foreground only needs the
    // neighbours at dx = +1: the others are neighbours of the left voxel, already joined to it.
    let full = connectivity == 8 || connectivity == 26;
    let right: Vec<(usize, isize)> = offs.iter().copied().filter(|&(r, dx)| r > 0 && dx == 1).collect();
    let plane = ny * nx;
    for z in 0..nz {
        for y in 0..ny {
            let start = z * plane + y * nx;
            let (prev, cur) = out.split_at_mut(start);
            let row_of = |r: usize| -> Option<&[L]> {
                let (zz, yy) = match r {
                    1 => (z as isize, y as isize - 1),
                    2 => (z as isize - 1, y as isize - 1),
                    3 => (z as isize - 1, y as isize),
                    4 => (z as isize - 1, y as isize + 1),
                    _ => return None,
                };
                if zz < 0 || yy < 0 || yy >= ny as isize {
                    return None;
                }
                let s = zz as usize * plane + yy as usize * nx;
                Some(&prev[s..s + nx])
            };
            let rows: [Option<&[L]>; 5] = [None, row_of(1), row_of(2), row_of(3), row_of(4)];
            let src = &m[start..start + nx];
            let cur = &mut cur[..nx];
            let mut x = 0;
            // Jump over background quickly: most voxels of most images are background. Every
            // voxel of `out` is written (background as 0): the caller's buffer may hold old values.
            loop {
                let next = crate::util::skip_zeros_u8(src, x);
                cur[x..next].fill(L::default());
                x = next;
                if x >= nx {
                    break;
                }
                let mut label = 0u32;
                let join = |l: u32, label: &mut u32, parent: &mut Vec<u32>| {
                    if l == 0 || l == *label {
                        return;
                    }
                    if *label == 0 {
                        *label = find(parent, l);
                    } else {
                        let (a, b) = (find(parent, *label), find(parent, l));
                        if a != b {
                            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                            parent[hi as usize] = lo;
                            *label = lo;
                        }
                    }
                };
                let left = if x > 0 { cur[x - 1].to_u32() } else { 0 };
                let list: &[(usize, isize)] = if full && left != 0 {
                    join(left, &mut label, &mut parent);
                    &right
                } else {
                    &offs
                };
                for &(r, dx) in list {
                    let xx = x as isize + dx;
                    if xx < 0 || xx >= nx as isize {
                        continue;
                    }
                    let l = if r == 0 { cur[xx as usize].to_u32() } else { rows[r].map_or(0, |row| row[xx as usize].to_u32()) };
                    join(l, &mut label, &mut parent);
                }
                if label == 0 {
                    // Provisional labels past the type: the caller cuts the slab, or gives up.
                    if parent.len() > L::MAX as usize || parent.len() >= u32::MAX as usize {
                        return None;
                    }
                    label = parent.len() as u32;
                    parent.push(label);
                }
                cur[x] = L::of(label);
                x += 1;
                if x >= nx {
                    break;
                }
            }
        }
    }
    Some(parent)
}

/// Labels a mask seen one z-slab at a time, in z order, for volumes that do not fit in memory.
///
/// Each slab is labelled with provisional ids that continue the previous slab's (so they stay in
/// raster order), joined to the previous slab's last plane across the seam, and counted. The
/// caller keeps the provisional slabs (on disk); [`SlabLabeller::resolve`] then gives the map
/// from provisional to final ids — the same numbering, size filter included, as [`label`] and
/// [`filter_sizes`] give for the whole volume, because a component's root is its first voxel.
pub struct SlabLabeller {
    connectivity: u8,
    parent: Vec<u32>,
    count: Vec<u64>,
    /// Provisional ids of the first plane seen and of the last (for joining blocks, and slabs).
    first: Vec<u32>,
    last: Vec<u32>,
    plane: (usize, usize),
}

impl SlabLabeller {
    pub fn new(connectivity: u8, ny: usize, nx: usize) -> SlabLabeller {
        SlabLabeller { connectivity, parent: vec![0], count: vec![0], first: Vec::new(), last: Vec::new(), plane: (ny, nx) }
    }

    /// Provisional ids for the next slab.
    pub fn add(&mut self, mask: &Array3<u8>) -> Result<Array3<u32>, String> {
        let (nz, ny, nx) = mask.dim();
        if (ny, nx) != self.plane {
            return Err(format!("label: slab planes are {ny}×{nx}, expected {}×{}", self.plane.0, self.plane.1));
        }
        let m = mask.as_standard_layout();
        let m = m.as_slice().expect("standard layout");
        let plane = ny * nx;
        let mut out: Vec<u32> = crate::util::zeroed(m.len());
        if nz == 0 || plane == 0 {
            return Ok(Array3::from_shape_vec((nz, ny, nx), out).expect("shape"));
        }
        let p = label_slab(m, &mut out, (nz, ny, nx), self.connectivity).ok_or_else(too_many)?;
        if self.parent.len() + p.len() > u32::MAX as usize {
            return Err(format!("more than {} separate objects while labelling: tessera labels are 32-bit", u32::MAX - 1));
        }
        let offset = self.parent.len() as u32 - 1;
        self.parent.extend(p[1..].iter().map(|&q| q + offset));
        self.count.resize(self.parent.len(), 0);
        for v in out.iter_mut().filter(|v| **v != 0) {
            *v += offset;
            self.count[*v as usize] += 1;
        }
        if self.last.is_empty() {
            self.first = out[..plane].to_vec();
        } else {
            let last = std::mem::take(&mut self.last);
            self.join_seam(&out[..plane], &last, 0);
        }
        self.last = out[(nz - 1) * plane..].to_vec();
        Ok(Array3::from_shape_vec((nz, ny, nx), out).expect("shape"))
    }

    /// Unions across a seam: `here` (a first plane, its ids plus `offset`) against `there`, the
    /// plane before it (ids as they are), through the neighbours one plane back.
    fn join_seam(&mut self, here: &[u32], there: &[u32], offset: u32) {
        let (ny, nx) = self.plane;
        let seam: Vec<[isize; 3]> = backward_offsets(self.connectivity).into_iter().filter(|o| o[0] == -1).collect();
        for y in 0..ny {
            for x in 0..nx {
                let h = here[y * nx + x];
                if h == 0 {
                    continue;
                }
                for o in &seam {
                    let (yy, xx) = (y as isize + o[1], x as isize + o[2]);
                    if yy < 0 || xx < 0 || yy >= ny as isize || xx >= nx as isize {
                        continue;
                    }
                    let t = there[yy as usize * nx + xx as usize];
                    if t != 0 {
                        let (ra, rb) = (find(&mut self.parent, h + offset), find(&mut self.parent, t));
                        if ra != rb {
                            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
                            self.parent[hi as usize] = lo;
                        }
                    }
                }
            }
        }
    }

    /// The state a block of a split volume hands on (its union-find, counts and end planes),
    /// compressed.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let mut b = Vec::with_capacity(32 + self.parent.len() * 12 + (self.first.len() + self.last.len()) * 4);
        for v in [self.connectivity as u64, self.plane.0 as u64, self.plane.1 as u64, self.parent.len() as u64, self.first.len() as u64] {
            b.extend(v.to_le_bytes());
        }
        b.extend(self.parent.iter().flat_map(|v| v.to_le_bytes()));
        b.extend(self.count.iter().flat_map(|v| v.to_le_bytes()));
        b.extend(self.first.iter().flat_map(|v| v.to_le_bytes()));
        b.extend(self.last.iter().flat_map(|v| v.to_le_bytes()));
        zstd::bulk::compress(&b, 1).map_err(|e| format!("label: compressing a block's state: {e}"))
    }

    /// [`SlabLabeller::to_bytes`] read back.
    pub fn from_bytes(bytes: &[u8]) -> Result<SlabLabeller, String> {
        let bad = || "label: a block's state is damaged (rerun its block task)".to_string();
        let b = zstd::stream::decode_all(bytes).map_err(|_| bad())?;
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let s = b.get(at..at.checked_add(n).ok_or_else(bad)?).ok_or_else(bad)?;
            at += n;
            Ok(s)
        };
        let mut head = [0u64; 5];
        for h in &mut head {
            *h = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
        }
        let [conn, ny, nx, n, nf] = head.map(|v| v as usize);
        let plane = ny.checked_mul(nx).ok_or_else(bad)?;
        if n == 0 || (nf != 0 && nf != plane) || n > u32::MAX as usize {
            return Err(bad());
        }
        let u32s = |s: &[u8]| s.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4"))).collect::<Vec<u32>>();
        let parent = u32s(take(n.checked_mul(4).ok_or_else(bad)?)?);
        let count =
            take(n.checked_mul(8).ok_or_else(bad)?)?.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))).collect();
        let first = u32s(take(nf * 4)?);
        let last = u32s(take(nf * 4)?);
        if parent.iter().chain(&first).chain(&last).any(|&v| v as usize >= n) {
            return Err(bad());
        }
        Ok(SlabLabeller { connectivity: conn as u8, parent, count, first, last, plane: (ny, nx) })
    }

    /// The labellers of consecutive z-blocks as one, as if one labeller had seen every slab:
    /// block b's provisional id l becomes l + offsets[b]. Blocks are taken one at a time, so
    /// only one block's end planes are held beside the union-find.
    pub fn join(parts: impl IntoIterator<Item = Result<SlabLabeller, String>>) -> Result<(SlabLabeller, Vec<u32>), String> {
        let mut it = parts.into_iter();
        let Some(mut all) = it.next().transpose()? else { return Err("label: no blocks to join".into()) };
        let mut offsets = vec![0u32];
        for p in it {
            let p = p?;
            if p.plane != all.plane || p.connectivity != all.connectivity {
                return Err("label: blocks of different plane sizes or connectivities".into());
            }
            if all.parent.len() + p.parent.len() > u32::MAX as usize {
                return Err(format!("more than {} separate objects while labelling: tessera labels are 32-bit", u32::MAX - 1));
            }
            let offset = all.parent.len() as u32 - 1;
            offsets.push(offset);
            all.parent.extend(p.parent[1..].iter().map(|&q| q + offset));
            all.count.extend_from_slice(&p.count[1..]);
            if p.first.is_empty() {
                continue;
            }
            if all.last.is_empty() {
                all.first = p.first.iter().map(|&v| if v == 0 { 0 } else { v + offset }).collect();
            } else {
                let last = std::mem::take(&mut all.last);
                all.join_seam(&p.first, &last, offset);
            }
            all.last = p.last.iter().map(|&v| if v == 0 { 0 } else { v + offset }).collect();
        }
        Ok((all, offsets))
    }

    /// The final id of every provisional id (0 for dropped objects) and the object count, with
    /// objects outside `[min, max]` voxels dropped.
    pub fn resolve(mut self, min: u64, max: u64) -> (Vec<u32>, u32) {
        let n = self.parent.len();
        let mut size = vec![0u64; n];
        for l in 1..n {
            let r = find(&mut self.parent, l as u32) as usize;
            size[r] += self.count[l];
        }
        let mut remap = vec![0u32; n];
        let mut next = 0u32;
        for l in 1..n {
            let r = find(&mut self.parent, l as u32) as usize;
            if r == l {
                if size[l] >= min && size[l] <= max {
                    next += 1;
                    remap[l] = next;
                }
            } else {
                remap[l] = remap[r];
            }
        }
        (remap, next)
    }
}

/// Removes objects outside `[min, max]` voxels and renumbers the rest in order.
pub fn filter_sizes<L: LabelInt>(labels: &mut Array3<L>, n: u32, min: u64, max: u64) {
    let mut sizes = vec![0u64; n as usize + 1];
    for &l in labels.iter() {
        sizes[l.to_u32() as usize] += 1;
    }
    let mut remap = vec![0u32; n as usize + 1];
    let mut next = 0;
    for l in 1..=n as usize {
        if sizes[l] >= min && sizes[l] <= max {
            next += 1;
            remap[l] = next;
        }
    }
    labels.mapv_inplace(|l| L::of(remap[l.to_u32() as usize]));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// u16 labels are u32's, value for value: random masks (one slab and several), a slab whose
    /// provisional labels outgrow u16 twice over (cut down to 8 planes, one object in the end),
    /// and more than 65,535 objects (u32 after all).
    #[test]
    fn narrow_labels_equal_wide_labels() {
        let mut next = crate::util::test_rng(4242);
        for (shape, conn) in [((5, 17, 19), 6u8), ((70, 23, 9), 26), ((1, 40, 41), 8)] {
            let mask = Array3::from_shape_simple_fn(shape, || (next() % 100 < 45) as u8);
            let (wide, n) = label(&mask, conn).unwrap();
            let (narrow, m) = label_narrow(&mask, conn).unwrap();
            assert_eq!(m, n);
            assert!(matches!(narrow, Labels::U16(_)));
            assert_eq!(narrow.into_u32(), wide, "{shape:?} connectivity {conn}");
        }
        // 4096 stripes a plane, joined by the plane's last row: 131,072 provisional labels in
        // 32 planes, one object.
        let comb = Array3::from_shape_fn((32, 3, 8192), |(_, y, x)| (y == 2 || x % 2 == 0) as u8);
        let (wide, n) = label(&comb, 26).unwrap();
        let (narrow, m) = label_narrow(&comb, 26).unwrap();
        assert_eq!((n, m), (1, 1));
        assert!(matches!(narrow, Labels::U16(_)));
        assert_eq!(narrow.into_u32(), wide);
        // 65,536 separate voxels.
        let dots = Array3::from_shape_fn((4, 256, 512), |(z, y, x)| (z % 2 == 0 && y % 2 == 0 && x % 2 == 0) as u8);
        let (wide, n) = label(&dots, 6).unwrap();
        let (narrow, m) = label_narrow(&dots, 6).unwrap();
        assert_eq!((n, m), (65_536, 65_536));
        assert!(matches!(narrow, Labels::U32(_)));
        assert_eq!(narrow.into_u32(), wide);
    }

    #[test]
    fn labels_written_over_a_used_buffer_are_the_same() {
        // Big enough for the buffer pool: a recycled buffer full of old values is taken as is,
        // and every voxel must be written.
        let mut next = crate::util::test_rng(12345);
        let mask = Array3::from_shape_fn((16, 384, 384), |_| (next() % 100 < 20) as u8);
        let (clean, n) = label(&mask, 26).unwrap();
        crate::util::recycle_u32(vec![0xdead_beef; mask.len()]);
        let (reused, m) = label(&mask, 26).unwrap();
        crate::util::clear_pool();
        assert_eq!((n, &clean), (m, &reused));
    }

    #[test]
    fn slab_labelling_equals_whole_labelling() {
        // Pseudo-random masks, every connectivity, slabs of every thickness, size filters.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for case in 0..60 {
            let (nz, ny, nx) = (1 + case % 7, 1 + (case * 3) % 9, 1 + (case * 5) % 11);
            let mask = Array3::from_shape_fn((nz, ny, nx), |_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 100 < 45) as u8
            });
            for c in [6u8, 18, 26] {
                let (min, max) = [(0, u64::MAX), (3, u64::MAX), (2, 6)][case % 3];
                let (mut whole, n) = label(&mask, c).unwrap();
                filter_sizes(&mut whole, n, min, max);
                let thick = 1 + case % 3;
                let mut sl = SlabLabeller::new(c, ny, nx);
                let mut prov = Vec::new();
                let mut z = 0;
                while z < nz {
                    let z1 = (z + thick).min(nz);
                    prov.push(sl.add(&mask.slice(ndarray::s![z..z1, .., ..]).to_owned()).unwrap());
                    z = z1;
                }
                let (remap, _) = sl.resolve(min, max);
                let views: Vec<_> = prov.iter().map(|a| a.view()).collect();
                let streamed = ndarray::concatenate(ndarray::Axis(0), &views).unwrap().mapv(|v| remap[v as usize]);
                assert_eq!(streamed, whole, "case {case}, connectivity {c}, slabs of {thick}");
            }
        }
    }

    #[test]
    fn blocks_labelled_apart_and_joined_equal_whole_labelling() {
        // Pseudo-random masks cut into z-blocks (each labelled in slabs on its own, its state
        // through bytes), joined in block order: the numbering and size filter of the whole.
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for case in 0..80 {
            let (nz, ny, nx) = (2 + case % 9, 1 + (case * 3) % 8, 1 + (case * 7) % 10);
            let mask = Array3::from_shape_fn((nz, ny, nx), |_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 100 < 40) as u8
            });
            let blocks = 1 + case % nz.min(5);
            for c in [6u8, 18, 26] {
                let (min, max) = [(0, u64::MAX), (3, u64::MAX), (2, 6)][case % 3];
                let (mut whole, n) = label(&mask, c).unwrap();
                filter_sizes(&mut whole, n, min, max);
                let mut parts = Vec::new();
                let mut prov = Vec::new();
                for b in 0..blocks {
                    let (z0, z1) = (b * nz / blocks, (b + 1) * nz / blocks);
                    let mut sl = SlabLabeller::new(c, ny, nx);
                    let mut z = z0;
                    let mut mine = Vec::new();
                    while z < z1 {
                        let t = (z + 1 + case % 2).min(z1);
                        mine.push(sl.add(&mask.slice(ndarray::s![z..t, .., ..]).to_owned()).unwrap());
                        z = t;
                    }
                    parts.push(SlabLabeller::from_bytes(&sl.to_bytes().unwrap()).unwrap());
                    prov.push(mine);
                }
                let (all, offsets) = SlabLabeller::join(parts.into_iter().map(Ok)).unwrap();
                let (remap, _) = all.resolve(min, max);
                let mut views: Vec<Array3<u32>> = Vec::new();
                for (slabs, &off) in prov.iter().zip(&offsets) {
                    for a in slabs {
                        views.push(a.mapv(|v| if v == 0 { 0 } else { remap[(v + off) as usize] }));
                    }
                }
                let v: Vec<_> = views.iter().map(|a| a.view()).collect();
                let joined = ndarray::concatenate(ndarray::Axis(0), &v).unwrap();
                assert_eq!(joined, whole, "case {case}, connectivity {c}, {blocks} blocks");
            }
        }
        assert!(SlabLabeller::from_bytes(b"not a state").is_err());
    }

    fn arr2(rows: &[&str]) -> Array3<u8> {
        let ny = rows.len();
        let nx = rows[0].len();
        Array3::from_shape_fn((1, ny, nx), |(_, y, x)| (rows[y].as_bytes()[x] == b'#') as u8)
    }

    /// Flood fill from each unlabelled voxel in raster order: the definition of the numbering.
    fn reference(mask: &Array3<u8>, conn: u8) -> Array3<u32> {
        let (nz, ny, nx) = mask.dim();
        let mut nb: Vec<[isize; 3]> = backward_offsets(conn);
        nb.extend(backward_offsets(conn).iter().map(|o| [-o[0], -o[1], -o[2]]));
        let mut out = Array3::<u32>::zeros((nz, ny, nx));
        let mut n = 0;
        for ((z, y, x), &v) in mask.indexed_iter() {
            if v == 0 || out[[z, y, x]] != 0 {
                continue;
            }
            n += 1;
            out[[z, y, x]] = n;
            let mut stack = vec![(z, y, x)];
            while let Some((a, b, c)) = stack.pop() {
                for o in &nb {
                    let (p, q, r) = (a as isize + o[0], b as isize + o[1], c as isize + o[2]);
                    if p < 0 || q < 0 || r < 0 || p >= nz as isize || q >= ny as isize || r >= nx as isize {
                        continue;
                    }
                    let i = [p as usize, q as usize, r as usize];
                    if mask[i] != 0 && out[i] == 0 {
                        out[i] = n;
                        stack.push((i[0], i[1], i[2]));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn random_volumes_match_flood_fill() {
        let mut seed = 5u64;
        let mut rnd = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for trial in 0..200 {
            let dims = (1 + rnd(5) as usize, 1 + rnd(9) as usize, 1 + rnd(9) as usize);
            let density = 1 + rnd(4);
            let m = Array3::from_shape_fn(dims, |_| (rnd(5) < density) as u8);
            let conns: &[u8] = if dims.0 == 1 { &[4, 8, 6, 18, 26] } else { &[6, 18, 26] };
            for &c in conns {
                let (got, n) = label(&m, c).unwrap();
                let want = reference(&m, c);
                assert_eq!(got, want, "trial {trial} connectivity {c} dims {dims:?}");
                assert_eq!(n, want.iter().copied().max().unwrap_or(0));
            }
        }
    }

    #[test]
    fn slabs_join_across_seams() {
        let mut seed = 11u64;
        let mut rnd = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for threads in [2, 3, 4, 7] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for trial in 0..40 {
                let dims = (2 * threads + rnd(12) as usize, 1 + rnd(7) as usize, 1 + rnd(7) as usize);
                let density = 1 + rnd(4);
                let m = Array3::from_shape_fn(dims, |_| (rnd(5) < density) as u8);
                for c in [6u8, 18, 26] {
                    let (got, n) = pool.install(|| label(&m, c)).unwrap();
                    let want = reference(&m, c);
                    assert_eq!(got, want, "{threads} threads, trial {trial}, connectivity {c}, dims {dims:?}");
                    assert_eq!(n, want.iter().copied().max().unwrap_or(0));
                }
            }
        }
    }

    #[test]
    fn offsets_counts() {
        assert_eq!(backward_offsets(4).len(), 2);
        assert_eq!(backward_offsets(8).len(), 4);
        assert_eq!(backward_offsets(6).len(), 3);
        assert_eq!(backward_offsets(18).len(), 9);
        assert_eq!(backward_offsets(26).len(), 13);
    }

    #[test]
    fn numbering_follows_first_voxel_and_connectivity() {
        // A U shape whose right arm starts first in raster order on row 0 after a lone dot.
        let m = arr2(&["#..#.#", "...#.#", ".#.###", "#....."]);
        let (l4, n4) = label(&m, 4).unwrap();
        assert_eq!(n4, 4);
        let got: Vec<u32> = l4.iter().copied().collect();
        #[rustfmt::skip]
        assert_eq!(got, vec![
            1,0,0,2,0,2,
            0,0,0,2,0,2,
            0,3,0,2,2,2,
            4,0,0,0,0,0]);
        let (_, n8) = label(&m, 8).unwrap();
        assert_eq!(n8, 3, "the diagonal pair joins under 8-connectivity");
    }

    #[test]
    fn corner_touch_in_3d() {
        let mut m = Array3::<u8>::zeros((2, 2, 2));
        m[[0, 0, 0]] = 1;
        m[[1, 1, 1]] = 1;
        assert_eq!(label(&m, 6).unwrap().1, 2);
        assert_eq!(label(&m, 18).unwrap().1, 2);
        assert_eq!(label(&m, 26).unwrap().1, 1);
        m[[1, 1, 0]] = 1;
        assert_eq!(label(&m, 18).unwrap().1, 1);
    }

    #[test]
    fn size_filter_renumbers() {
        let m = arr2(&["#.##.###"]);
        let (mut l, n) = label(&m, 4).unwrap();
        filter_sizes(&mut l, n, 2, 2);
        assert_eq!(l.iter().copied().collect::<Vec<_>>(), vec![0, 0, 1, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn empty_and_full() {
        assert_eq!(label(&Array3::zeros((3, 3, 3)), 26).unwrap().1, 0);
        let (l, n) = label(&Array3::from_elem((3, 4, 5), 1), 6).unwrap();
        assert_eq!(n, 1);
        assert!(l.iter().all(|&v| v == 1));
    }
}
