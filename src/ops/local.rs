//! Sums over local windows of a label image: each object's Euler number and surface area (2D:
//! perimeter), and the faces where two objects touch.
//!
//! Every quantity here is a sum over windows that span at most two neighbouring planes (2×2×2
//! cubes between planes z−1 and z; in 2D, windows within the one plane), with the image padded by
//! background. A slab of planes `z0..z1` owns the windows whose upper plane is in the slab — it
//! needs the plane before it ([`Seam::before`]) — and the slab that ends the volume also owns the
//! windows past its last plane ([`Seam::last`]). The sums are integers, so slabs, blocks and
//! threads add up to the whole image's sums exactly, in any grouping.
//!
//! - **Euler number** (`euler_number`, as scikit-image's `regionprops` with its default
//!   connectivity: 26-connected objects in 3D, 8-connected in 2D): the Euler characteristic of the
//!   union of closed voxel cubes, counted per window as 8·[any] − 4·(faces touched) + 2·(edges
//!   touched) − (voxels) (×8; in 2D 4·[any] − 2·(sides touched) + (pixels), ×4).
//! - **Surface area** (3D): the area of scikit-image's Lewiner marching-cubes surface of the
//!   object's mask at level 0.5. For a binary mask every triangle joins edge midpoints or the
//!   cube centre, so each configuration's triangles are a few counts per normal direction
//!   ([`super::mc_table`]); the area with any axis spacing follows from the counts.
//! - **Perimeter** (2D): scikit-image's `perimeter` with 4-connectivity: border pixels weighted 1,
//!   √2 or (1 + √2)/2 by the border pixels around them.
//! - **Contacts**: pairs of face neighbours with different non-zero labels, counted per axis
//!   (cc3d's `contacts` with connectivity 6, or 4 in 2D).

use std::collections::HashMap;

use ndarray::{ArrayView2, ArrayView3, Axis};

use super::labels::{LabelInt, flat_u32, plane_u32};
use super::mc_table::{DIRS, WEIGHTS};
use crate::util::ByteReader;

/// Where a slab of planes sits in its volume.
#[derive(Clone, Copy, Default)]
pub struct Seam<'a> {
    /// The plane before the slab; `None` for a slab that starts the volume.
    pub before: Option<ArrayView2<'a, u32>>,
    /// The slab ends the volume: it also owns the windows past its last plane.
    pub last: bool,
    /// A 2D image: windows lie within the plane.
    pub planar: bool,
}

/// One object's window sums.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Local {
    /// Σ of the windows' Euler contributions: 8·χ in 3D, 4·χ in 2D.
    pub euler: i64,
    /// 3D: Σ of the triangle weights per normal direction ([`DIRS`]). 2D: the perimeter's border
    /// pixels weighted 1, √2 and (1 + √2)/2 (entries 0, 1, 2).
    pub surface: [u64; 10],
}

impl Local {
    fn add(&mut self, o: &Local) {
        self.euler += o.euler;
        for (a, b) in self.surface.iter_mut().zip(&o.surface) {
            *a += b;
        }
    }

    /// The Euler number.
    pub fn euler_number(&self, planar: bool) -> i64 {
        self.euler / if planar { 4 } else { 8 }
    }

    /// The surface area in units² (2D: the perimeter in units; NaN when the pixels are not
    /// square, which scikit-image does not define). Summed in a fixed order, so the value does
    /// not depend on how the sums were gathered.
    pub fn surface_area(&self, spacing: [f64; 3], planar: bool) -> f64 {
        if planar {
            if spacing[1] != spacing[2] {
                return f64::NAN;
            }
            let r2 = std::f64::consts::SQRT_2;
            let s = &self.surface;
            return (s[0] as f64 + s[1] as f64 * r2 + s[2] as f64 * (1.0 + r2) / 2.0) * spacing[1];
        }
        let [sz, sy, sx] = spacing;
        let scale = [sy * sx, sz * sx, sz * sy];
        let mut area = 0.0;
        for (d, &w) in DIRS.iter().zip(&self.surface) {
            if w > 0 {
                let n = (0..3).map(|k| (d[k] as f64 * scale[k]).powi(2)).sum::<f64>().sqrt();
                area += w as f64 * n;
            }
        }
        area / 8.0
    }
}

/// The Euler contribution ×8 of each 2×2×2 configuration (bit b: corner (z, y, x) =
/// (b>>2 & 1, b>>1 & 1, b & 1)).
static EULER26: [i8; 256] = euler_table(3);
/// The Euler contribution ×4 of each 2×2 configuration (bit b: corner (y, x) = (b>>1 & 1, b & 1));
/// entries past 15 unused.
static EULER8: [i8; 256] = euler_table(2);

/// The Euler characteristic of the union of closed unit cells centred on the set corners,
/// counted in one window: the window's centre (a vertex shared by no other window), its half
/// edges ×½, its quarter faces ×¼ (3D) and its corner cells ×1/2^d, times 2^d.
const fn euler_table(dims: usize) -> [i8; 256] {
    let n_corners = 1usize << dims;
    let mut t = [0i8; 256];
    let mut c = 1;
    while c < 1 << n_corners {
        let (mut sides, mut pairs) = (0i32, 0i32);
        let mut axis = 0;
        while axis < dims {
            let bit = 1usize << axis;
            let mut side = 0;
            while side < 2 {
                let mut any = false;
                let mut b = 0;
                while b < n_corners {
                    if (b & bit != 0) == (side == 1) && (c >> b) & 1 == 1 {
                        any = true;
                    }
                    b += 1;
                }
                sides += any as i32;
                side += 1;
            }
            let mut b = 0;
            while b < n_corners {
                if b & bit == 0 && ((c >> b) & 1 == 1 || (c >> (b | bit)) & 1 == 1) {
                    pairs += 1;
                }
                b += 1;
            }
            axis += 1;
        }
        let n = (c as u32).count_ones() as i32;
        t[c] = if dims == 3 { 8 - 4 * sides + 2 * pairs - n } else { 4 - 2 * sides + n } as i8;
        c += 1;
    }
    t
}

/// A fast hash for label pairs (the multiply-rotate of rustc's FxHash): the map is internal and
/// always read back sorted, so neither its order nor resistance to crafted keys matters.
#[derive(Default, Clone, Copy)]
pub struct PairHasher(u64);

impl std::hash::Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type PairMap = HashMap<(u32, u32), [u64; 3], std::hash::BuildHasherDefault<PairHasher>>;

/// Face contacts between objects: `(a, b)` with a < b → faces along z, y and x.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Contacts {
    pairs: PairMap,
}

impl Contacts {
    pub fn merge(&mut self, o: Contacts) {
        if self.pairs.is_empty() {
            self.pairs = o.pairs;
            return;
        }
        for (k, v) in o.pairs {
            let e = self.pairs.entry(k).or_default();
            for (a, f) in e.iter_mut().zip(v) {
                *a += f;
            }
        }
    }

    /// The pairs in order.
    pub fn sorted(&self) -> Vec<((u32, u32), [u64; 3])> {
        let mut v: Vec<_> = self.pairs.iter().map(|(&k, &f)| (k, f)).collect();
        v.sort_unstable_by_key(|p| p.0);
        v
    }

    /// Objects touching each label (index = label, up to `len`).
    pub fn degrees(&self, len: usize) -> Vec<u64> {
        let mut d = vec![0u64; len];
        for &(a, b) in self.pairs.keys() {
            for l in [a, b] {
                if let Some(x) = d.get_mut(l as usize) {
                    *x += 1;
                }
            }
        }
        d
    }

    /// The contact area of faces along z, y, x (2D: the shared edge length).
    pub fn area(faces: [u64; 3], spacing: [f64; 3], planar: bool) -> f64 {
        let sz = if planar { 1.0 } else { spacing[0] };
        let [_, sy, sx] = spacing;
        faces[0] as f64 * (sy * sx) + faces[1] as f64 * (sz * sx) + faces[2] as f64 * (sz * sy)
    }

    pub fn write(&self, b: &mut Vec<u8>) {
        let pairs = self.sorted();
        b.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
        for ((x, y), f) in pairs {
            b.extend_from_slice(&x.to_le_bytes());
            b.extend_from_slice(&y.to_le_bytes());
            for v in f {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// Reads what [`Contacts::write`] wrote; `None` when the bytes are not that.
    pub fn read(r: &mut ByteReader) -> Option<Contacts> {
        let n = r.u64()? as usize;
        if n > r.left() / 32 {
            return None;
        }
        let mut pairs = PairMap::with_capacity_and_hasher(n, Default::default());
        for _ in 0..n {
            let a = r.u32()?;
            let b = r.u32()?;
            if a == 0 || a >= b {
                return None;
            }
            let f = [r.u64()?, r.u64()?, r.u64()?];
            pairs.insert((a, b), f);
        }
        Some(Contacts { pairs })
    }
}

/// Counts contacts, adding runs of the same pair at once.
struct PairCounter<'a> {
    to: &'a mut Contacts,
    key: (u32, u32),
    faces: [u64; 3],
}

impl PairCounter<'_> {
    #[inline]
    fn add(&mut self, a: u32, b: u32, axis: usize) {
        let k = if a < b { (a, b) } else { (b, a) };
        if k != self.key {
            self.flush();
            self.key = k;
        }
        self.faces[axis] += 1;
    }
    fn flush(&mut self) {
        if self.faces != [0; 3] {
            let e = self.to.pairs.entry(self.key).or_default();
            for (a, f) in e.iter_mut().zip(self.faces) {
                *a += f;
            }
            self.faces = [0; 3];
        }
    }
}

impl Drop for PairCounter<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What a pass sums.
#[derive(Clone, Copy)]
pub struct Wanted {
    pub shape: bool,
    pub contacts: bool,
}

/// Window sums of a label image (or of the slabs added so far).
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct LocalSums {
    /// Per label (index = label; label 0 unused).
    pub shape: Vec<Local>,
    pub contacts: Contacts,
}

/// Plane `z0 − 1` of a label volume, the plane a slab or block starting at `z0` needs before it
/// ([`Seam::before`]); `None` at the volume's start. `what` names the input in errors.
pub fn plane_before(input: &dyn super::slab::Volume, z0: usize, what: &str) -> Result<Option<ndarray::Array2<u32>>, String> {
    if z0 == 0 {
        return Ok(None);
    }
    match input.read(z0 - 1, z0)? {
        super::Value::Labels(l) => Ok(Some(l.into_u32().index_axis_move(Axis(0), 0))),
        _ => Err(format!("{what} are not labels")),
    }
}

/// A plane with a border of background: (ny + 2) × (nx + 2).
fn pad<L: LabelInt>(plane: ArrayView2<L>, buf: &mut [u32], w: usize) {
    for (y, row) in plane.outer_iter().enumerate() {
        let dst = &mut buf[(y + 1) * w + 1..(y + 2) * w - 1];
        match row.as_slice() {
            Some(s) => dst.iter_mut().zip(s).for_each(|(d, &v)| *d = v.to_u32()),
            None => dst.iter_mut().zip(row.iter()).for_each(|(d, &v)| *d = v.to_u32()),
        }
    }
}

impl LocalSums {
    /// Adds the windows a slab of planes owns (see the module docs), one thread.
    pub fn add<L: LabelInt>(&mut self, labels: ArrayView3<L>, seam: &Seam, want: Wanted) {
        let (nz, ny, nx) = labels.dim();
        if nz == 0 || ny == 0 || nx == 0 {
            return;
        }
        if want.shape {
            let max = super::labels::max_view(labels).max(seam.before.map_or(0, |b| b.iter().copied().max().unwrap_or(0)));
            if self.shape.len() <= max as usize {
                self.shape.resize(max as usize + 1, Local::default());
            }
        }
        let mut counter = PairCounter { to: &mut self.contacts, key: (0, 0), faces: [0; 3] };
        let shape = &mut self.shape;
        let (w, h) = (nx + 2, ny + 2);
        if want.shape && !seam.planar {
            // 2×2×2 windows: surfaces, Euler numbers and (on the windows' edges) the faces.
            let mut prev = vec![0u32; w * h];
            let mut cur = vec![0u32; w * h];
            // Before the volume's first plane: background.
            if let Some(b) = seam.before {
                pad(b, &mut prev, w);
            }
            for plane in labels.axis_iter(Axis(0)) {
                pad(plane, &mut cur, w);
                cubes(&prev, &cur, w, h, shape, want.contacts.then_some(&mut counter));
                std::mem::swap(&mut prev, &mut cur);
            }
            if seam.last {
                // The windows past the last plane: surfaces only (no faces touch the background).
                cur.fill(0);
                cubes(&prev, &cur, w, h, shape, None);
            }
            return;
        }
        if want.shape {
            let mut cur = vec![0u32; w * h];
            for plane in labels.axis_iter(Axis(0)) {
                pad(plane, &mut cur, w);
                plane_windows(&cur, w, h, shape);
            }
        }
        if want.contacts {
            // Faces alone: each voxel against its x, y and (3D) z − 1 neighbours.
            let mut before = if seam.planar { None } else { seam.before.map(flat_u32) };
            for plane in labels.axis_iter(Axis(0)) {
                let cur = flat_u32(plane);
                let c: &[u32] = &cur;
                let p: Option<&[u32]> = before.as_deref();
                for (y, row) in c.chunks_exact(nx).enumerate() {
                    faces(&row[..nx - 1], &row[1..], 2, &mut counter);
                    if y + 1 < ny {
                        faces(row, &c[(y + 1) * nx..(y + 2) * nx], 1, &mut counter);
                    }
                    if let Some(p) = p {
                        faces(&p[y * nx..(y + 1) * nx], row, 0, &mut counter);
                    }
                }
                before = (!seam.planar).then_some(cur);
            }
        }
    }

    /// The sums of a whole slab, its z-ranges on the threads of the pool.
    pub fn of<L: LabelInt>(labels: ArrayView3<L>, seam: &Seam, want: Wanted) -> LocalSums {
        use rayon::prelude::*;
        let nz = labels.dim().0;
        let k = rayon::current_num_threads().min(nz).max(1);
        if k < 2 || seam.planar || labels.len() < 1 << 16 {
            let mut s = LocalSums::default();
            s.add(labels, seam, want);
            return s;
        }
        let parts: Vec<LocalSums> = (0..k)
            .into_par_iter()
            .map(|i| {
                let (a, b) = (i * nz / k, (i + 1) * nz / k);
                let plane = (a > 0).then(|| plane_u32(labels, a - 1));
                let before = if a == 0 { seam.before } else { plane.as_ref().map(|p| p.view()) };
                let part = Seam { before, last: seam.last && b == nz, planar: false };
                let mut s = LocalSums::default();
                s.add(labels.slice_axis(Axis(0), (a..b).into()), &part, want);
                s
            })
            .collect();
        let mut all = LocalSums::default();
        for p in parts {
            all.merge(p);
        }
        all
    }

    pub fn merge(&mut self, o: LocalSums) {
        if self.shape.len() < o.shape.len() {
            self.shape.resize(o.shape.len(), Local::default());
        }
        for (a, b) in self.shape.iter_mut().zip(&o.shape) {
            a.add(b);
        }
        self.contacts.merge(o.contacts);
    }

    pub fn write(&self, b: &mut Vec<u8>) {
        let used: Vec<usize> = (0..self.shape.len()).filter(|&l| self.shape[l] != Local::default()).collect();
        b.extend_from_slice(&(used.len() as u64).to_le_bytes());
        for l in used {
            let s = &self.shape[l];
            b.extend_from_slice(&(l as u64).to_le_bytes());
            b.extend_from_slice(&s.euler.to_le_bytes());
            for v in s.surface {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        self.contacts.write(b);
    }

    /// Reads what [`LocalSums::write`] wrote; `None` when the bytes are not that.
    pub fn read(r: &mut ByteReader) -> Option<LocalSums> {
        let n = r.u64()? as usize;
        if n > r.left() / 96 {
            return None;
        }
        let mut shape: Vec<Local> = Vec::new();
        for _ in 0..n {
            let l = r.u64()? as usize;
            if l == 0 || l > u32::MAX as usize || l < shape.len() {
                return None;
            }
            let mut s = Local { euler: r.u64()? as i64, surface: [0; 10] };
            for v in &mut s.surface {
                *v = r.u64()?;
            }
            shape.resize(l + 1, Local::default());
            shape[l] = s;
        }
        let contacts = Contacts::read(r)?;
        Some(LocalSums { shape, contacts })
    }
}

/// Counts the faces between `a[i]` and `b[i]` (neighbours along `axis`) where two objects
/// touch; runs of 16 equal pairs are passed over at once.
fn faces(a: &[u32], b: &[u32], axis: usize, counter: &mut PairCounter) {
    for (ca, cb) in a.chunks(16).zip(b.chunks(16)) {
        if ca.iter().zip(cb).fold(0, |m, (x, y)| m | (x ^ y)) == 0 {
            continue;
        }
        for (&x, &y) in ca.iter().zip(cb) {
            if x != y && x != 0 && y != 0 {
                counter.add(x, y, axis);
            }
        }
    }
}

/// The 2×2×2 windows between padded planes `p` (z−1) and `q` (z): their Euler and surface
/// weights into `shape`, and the faces of plane z and between the planes where two objects
/// touch (with `counter`). Each face lies on one window's upper edges — x faces on its (z, y+1)
/// edge, y faces on its (z, x+1) edge, z faces on its (y+1, x+1) edge — so it is counted once; a
/// window of one value has none, and is skipped, as are the runs of background.
fn cubes(p: &[u32], q: &[u32], w: usize, h: usize, shape: &mut [Local], counter: Option<&mut PairCounter>) {
    crate::isa::dispatch!(crate::isa::Isa::widest(), [] cubes_plain(
        p: &[u32], q: &[u32], w: usize, h: usize, shape: &mut [Local], counter: Option<&mut PairCounter>
    ))
}

#[inline(always)]
fn cubes_plain(p: &[u32], q: &[u32], w: usize, h: usize, shape: &mut [Local], mut counter: Option<&mut PairCounter>) {
    // Per column x of a row of windows, the OR of its four voxels: window x is background when
    // columns x and x + 1 are. Computed a row at a time (vectorised) so that runs of background
    // windows are passed over 16 columns at a time.
    let mut column = vec![0u32; w];
    for yy in 0..h - 1 {
        let (r0, r1) = (yy * w, (yy + 1) * w);
        let (p0, p1, q0, q1) = (&p[r0..r0 + w], &p[r1..r1 + w], &q[r0..r0 + w], &q[r1..r1 + w]);
        for (x, c) in column.iter_mut().enumerate() {
            *c = p0[x] | p1[x] | q0[x] | q1[x];
        }
        let mut x = 0;
        while x < w - 1 {
            if column[x] | column[x + 1] == 0 {
                // The next nonzero column j is at least x + 2; windows up to j − 2 are background.
                x = super::labels::skip_zeros(&column, x + 1).saturating_sub(1).max(x + 1);
                continue;
            }
            let c = [p0[x], p0[x + 1], p1[x], p1[x + 1], q0[x], q0[x + 1], q1[x], q1[x + 1]];
            x += 1;
            if c.iter().all(|&v| v == c[0]) {
                continue;
            }
            // Most windows hold one object and background (on its surface): one configuration.
            let l = c.iter().fold(0, |m, &v| m.max(v));
            if c.iter().all(|&v| v == 0 || v == l) {
                let cfg = c.iter().enumerate().fold(0usize, |m, (k, &v)| m | (((v == l) as usize) << k));
                let s = &mut shape[l as usize];
                s.euler += EULER26[cfg] as i64;
                for (a, &wt) in s.surface.iter_mut().zip(&WEIGHTS[cfg]) {
                    *a += wt as u64;
                }
                continue;
            }
            if let Some(counter) = counter.as_deref_mut() {
                for (a, b, axis) in [(c[6], c[7], 2), (c[5], c[7], 1), (c[3], c[7], 0)] {
                    if a != b && a != 0 && b != 0 {
                        counter.add(a, b, axis);
                    }
                }
            }
            let mut done = 0u32;
            for b in 0..8 {
                let l = c[b];
                if l == 0 || done >> b & 1 == 1 {
                    continue;
                }
                let mut cfg = 0usize;
                for (k, &v) in c.iter().enumerate().skip(b) {
                    if v == l {
                        cfg |= 1 << k;
                    }
                }
                done |= cfg as u32;
                let s = &mut shape[l as usize];
                s.euler += EULER26[cfg] as i64;
                for (a, &wt) in s.surface.iter_mut().zip(&WEIGHTS[cfg]) {
                    *a += wt as u64;
                }
            }
        }
    }
}

/// A 2D plane's windows: the Euler number's 2×2 windows and the perimeter's border pixels.
fn plane_windows(q: &[u32], w: usize, h: usize, shape: &mut [Local]) {
    for yy in 0..h - 1 {
        let (r0, r1) = (yy * w, (yy + 1) * w);
        for x in 0..w - 1 {
            let c = [q[r0 + x], q[r0 + x + 1], q[r1 + x], q[r1 + x + 1]];
            if c.iter().all(|&v| v == c[0]) {
                continue;
            }
            let mut done = 0u32;
            for b in 0..4 {
                let l = c[b];
                if l == 0 || done >> b & 1 == 1 {
                    continue;
                }
                let cfg = (b..4).filter(|&k| c[k] == l).fold(0usize, |m, k| m | 1 << k);
                done |= cfg as u32;
                shape[l as usize].euler += EULER8[cfg] as i64;
            }
        }
    }
    // Border pixels: an object pixel with a 4-neighbour of another value.
    let border: Vec<bool> = (0..w * h)
        .map(|i| {
            let (y, x) = (i / w, i % w);
            let l = q[i];
            l != 0 && y > 0 && y < h - 1 && x > 0 && x < w - 1 && (q[i - 1] != l || q[i + 1] != l || q[i - w] != l || q[i + w] != l)
        })
        .collect();
    for i in 0..w * h {
        if !border[i] {
            continue;
        }
        let l = q[i];
        let on = |j: usize| (q[j] == l && border[j]) as u32;
        let code =
            1 + 2 * (on(i - 1) + on(i + 1) + on(i - w) + on(i + w)) + 10 * (on(i - w - 1) + on(i - w + 1) + on(i + w - 1) + on(i + w + 1));
        let class = match code {
            5 | 7 | 15 | 17 | 25 | 27 => 0,
            21 | 33 => 1,
            13 | 23 => 2,
            _ => continue,
        };
        shape[l as usize].surface[class] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, s};

    #[test]
    fn euler_tables() {
        assert_eq!(EULER26[0], 0);
        assert_eq!(EULER26[255], 0);
        assert_eq!(EULER26[1], 1); // one voxel
        assert_eq!(EULER26[0b1001], -2); // a face diagonal
        assert_eq!(EULER26[0b1000_0001], -6); // a body diagonal
        assert_eq!(EULER8[0b0001], 1);
        assert_eq!(EULER8[0b1111], 0);
    }

    fn sums(a: &Array3<u32>, planar: bool) -> LocalSums {
        let mut s = LocalSums::default();
        s.add(a.view(), &Seam { before: None, last: true, planar }, Wanted { shape: true, contacts: true });
        s
    }

    #[test]
    fn euler_numbers_of_known_shapes() {
        // A solid box (1), a hollow box (2: a cavity), a ring (0: a tunnel).
        let mut a = Array3::<u32>::zeros((12, 12, 30));
        a.slice_mut(s![1..4, 1..4, 1..4]).fill(1);
        a.slice_mut(s![1..8, 1..8, 6..13]).fill(2);
        a.slice_mut(s![3..6, 3..6, 8..11]).fill(0);
        a.slice_mut(s![1..4, 1..6, 15..20]).fill(3);
        a.slice_mut(s![1..4, 2..5, 16..19]).fill(0);
        let s = sums(&a, false);
        assert_eq!([1, 2, 3].map(|l| s.shape[l].euler_number(false)), [1, 2, 0]);
        // One voxel's marching-cubes surface is the octahedron of its face centres' midpoints:
        // 8 triangles with sides √½ → 8 · (√3/4)·½ = √3.
        let mut one = Array3::<u32>::zeros((1, 1, 1));
        one[[0, 0, 0]] = 7;
        let a = sums(&one, false).shape[7].surface_area([1.0; 3], false);
        assert!((a - 3f64.sqrt()).abs() < 1e-12, "{a}");
    }

    #[test]
    fn slabs_add_up_to_the_whole() {
        let mut a = Array3::<u32>::zeros((9, 7, 8));
        let mut x = 12345u64;
        for v in a.iter_mut() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *v = ((x >> 33) % 4) as u32;
        }
        let whole = sums(&a, false);
        for cut in [1, 3, 8] {
            let mut parts = LocalSums::default();
            let want = Wanted { shape: true, contacts: true };
            parts.add(a.slice(s![..cut, .., ..]), &Seam { before: None, last: false, planar: false }, want);
            let seam = Seam { before: Some(a.index_axis(Axis(0), cut - 1)), last: true, planar: false };
            let mut rest = LocalSums::default();
            rest.add(a.slice(s![cut.., .., ..]), &seam, want);
            parts.merge(rest);
            assert_eq!(parts, whole, "cut at {cut}");
        }
        let threads = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let big = Array3::from_shape_fn((40, 50, 40), |(z, y, x)| ((z / 3 + y / 5 + x / 7) % 5) as u32);
        let par =
            threads.install(|| LocalSums::of(big.view(), &Seam { last: true, ..Seam::default() }, Wanted { shape: true, contacts: true }));
        assert_eq!(par, sums(&big, false));
    }

    #[test]
    fn damaged_bytes_are_refused() {
        let a = Array3::from_shape_fn((3, 4, 5), |(z, y, x)| ((z + y + x) % 3) as u32);
        let s = sums(&a, false);
        let mut b = Vec::new();
        s.write(&mut b);
        assert_eq!(LocalSums::read(&mut ByteReader::new(&b)), Some(s));
        for cut in 0..b.len() {
            assert!(LocalSums::read(&mut ByteReader::new(&b[..cut])).is_none(), "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[8..16].copy_from_slice(&0u64.to_le_bytes()); // label 0
        assert!(LocalSums::read(&mut ByteReader::new(&bad)).is_none());
    }
}
