//! Tiling geometry as plain data: regions, tile grids, halos and the `--tile` setting.
//!
//! Nothing here touches pixels. A tile is a *core* region of the image; an op that needs context
//! computes on the core grown by its halo (clamped to the image, so a tile at the image's edge
//! sees the same border the whole image does). The executor ([`super::tiled`]) turns these
//! regions into array slices; everything about where tiles are lives here and is tested here.

use std::fmt;
use std::str::FromStr;

/// `[z, y, x]` sizes or positions.
pub type Zyx = [usize; 3];

/// A half-open box `[start, end)` per axis, in voxels of the whole image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    pub start: Zyx,
    pub end: Zyx,
}

impl Region {
    /// The whole of an image of `shape`.
    pub fn whole(shape: Zyx) -> Region {
        Region { start: [0; 3], end: shape }
    }

    /// Size per axis.
    pub fn size(&self) -> Zyx {
        [0, 1, 2].map(|k| self.end[k].saturating_sub(self.start[k]))
    }

    pub fn voxels(&self) -> usize {
        self.size().iter().product()
    }

    /// This region grown by `halo` voxels on every side, clamped to an image of `shape`.
    pub fn grow(&self, halo: Zyx, shape: Zyx) -> Region {
        Region {
            start: [0, 1, 2].map(|k| self.start[k].saturating_sub(halo[k])),
            end: [0, 1, 2].map(|k| (self.end[k].saturating_add(halo[k])).min(shape[k])),
        }
    }

    /// Whether `inner` lies inside this region.
    pub fn contains(&self, inner: &Region) -> bool {
        (0..3).all(|k| self.start[k] <= inner.start[k] && inner.end[k] <= self.end[k])
    }

    /// `inner` in coordinates relative to this region's start (`inner` must lie inside it).
    pub fn local(&self, inner: &Region) -> Region {
        debug_assert!(self.contains(inner), "{inner:?} is not inside {self:?}");
        Region { start: [0, 1, 2].map(|k| inner.start[k] - self.start[k]), end: [0, 1, 2].map(|k| inner.end[k] - self.start[k]) }
    }
}

/// The cores of a grid of tiles of (at most) `core` voxels over an image of `shape`, in raster
/// order (z, then y, then x). Every voxel lies in exactly one core. Zero sizes count as 1.
pub fn grid(shape: Zyx, core: Zyx) -> Vec<Region> {
    if shape.contains(&0) {
        return Vec::new();
    }
    let core = [0, 1, 2].map(|k| core[k].clamp(1, shape[k]));
    let starts = |k: usize| (0..shape[k]).step_by(core[k]).collect::<Vec<_>>();
    let (zs, ys, xs) = (starts(0), starts(1), starts(2));
    let mut v = Vec::with_capacity(zs.len() * ys.len() * xs.len());
    for &z in &zs {
        for &y in &ys {
            for &x in &xs {
                let start = [z, y, x];
                v.push(Region { start, end: [0, 1, 2].map(|k| (start[k] + core[k]).min(shape[k])) });
            }
        }
    }
    v
}

/// The `--tile` setting (and the pipeline's `tile:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TileSize {
    /// Whole images while a sample's working set fits the memory budget, z-slabs otherwise.
    #[default]
    Auto,
    /// Tile cores of at most this many voxels per axis `[z, y, x]` (z is ignored for 2D images).
    Fixed(Zyx),
}

impl fmt::Display for TileSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TileSize::Auto => f.write_str("auto"),
            TileSize::Fixed([z, y, x]) => write!(f, "{z}x{y}x{x}"),
        }
    }
}

impl FromStr for TileSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(TileSize::Auto);
        }
        let parts: Vec<&str> = s.split(['x', 'X']).collect();
        let nums: Option<Vec<usize>> = parts.iter().map(|p| p.trim().parse::<usize>().ok().filter(|&n| n > 0)).collect();
        match nums.as_deref() {
            Some([z, y, x]) => Ok(TileSize::Fixed([*z, *y, *x])),
            Some([y, x]) => Ok(TileSize::Fixed([1, *y, *x])),
            _ => Err(format!("'{s}' is not a tile size: write `auto`, ZxYxX (e.g. 64x256x256) or YxX, positive integers")),
        }
    }
}

/// The tile cores for one group of fused stages over an image of `shape`.
///
/// `Fixed` sizes are used as given. `Auto` keeps the whole image as one tile when the group's
/// working set (`bytes_per_voxel` × voxels, halos included) fits `budget`; otherwise it cuts
/// z-slabs (y-slabs for a single plane) thin enough that `threads` tiles with their halos fit
/// `budget` at once, never thinner than one plane.
pub fn plan_tiles(shape: Zyx, size: TileSize, halo: Zyx, bytes_per_voxel: u64, budget: u64, threads: usize) -> Vec<Region> {
    match size {
        TileSize::Fixed(core) => grid(shape, core),
        TileSize::Auto => {
            let whole = Region::whole(shape).voxels() as u64 * bytes_per_voxel;
            if whole <= budget || shape.contains(&0) {
                return grid(shape, shape);
            }
            // Slabs along the outermost axis longer than one voxel.
            let axis = if shape[0] > 1 { 0 } else { 1 };
            let plane: u64 = (0..3).filter(|&k| k != axis).map(|k| shape[k] as u64).product::<u64>() * bytes_per_voxel.max(1);
            let per_tile = budget / threads.max(1) as u64;
            let thick = (per_tile / plane.max(1)).saturating_sub(2 * halo[axis] as u64).max(1) as usize;
            let mut core = shape;
            core[axis] = thick.min(shape[axis]);
            grid(shape, core)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_every_voxel_once_in_raster_order() {
        for (shape, core) in [([5, 7, 3], [2, 3, 3]), ([1, 10, 10], [4, 1, 10]), ([3, 3, 3], [9, 9, 9]), ([4, 4, 4], [1, 1, 1])] {
            let tiles = grid(shape, core);
            let mut seen = vec![0u8; shape.iter().product()];
            for t in &tiles {
                for z in t.start[0]..t.end[0] {
                    for y in t.start[1]..t.end[1] {
                        for x in t.start[2]..t.end[2] {
                            seen[(z * shape[1] + y) * shape[2] + x] += 1;
                        }
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{shape:?} {core:?}");
            let mut sorted = tiles.clone();
            sorted.sort_by_key(|t| t.start);
            assert_eq!(sorted, tiles, "raster order");
        }
        assert_eq!(grid([5, 7, 3], [2, 3, 3]).len(), 3 * 3);
        assert!(grid([0, 4, 4], [1, 1, 1]).is_empty());
        // Zero core sizes count as one voxel.
        assert_eq!(grid([2, 2, 2], [0, 0, 0]).len(), 8);
    }

    #[test]
    fn grow_clamps_to_the_image_and_local_offsets() {
        let shape = [10, 10, 10];
        let core = Region { start: [0, 4, 8], end: [2, 6, 10] };
        let g = core.grow([3, 1, 2], shape);
        assert_eq!(g, Region { start: [0, 3, 6], end: [5, 7, 10] });
        assert!(g.contains(&core));
        assert_eq!(g.local(&core), Region { start: [0, 1, 2], end: [2, 3, 4] });
        assert_eq!(core.size(), [2, 2, 2]);
        assert_eq!(g.voxels(), 5 * 4 * 4);
    }

    #[test]
    fn parses_tile_sizes() {
        assert_eq!("auto".parse::<TileSize>(), Ok(TileSize::Auto));
        assert_eq!("64x128x256".parse::<TileSize>(), Ok(TileSize::Fixed([64, 128, 256])));
        assert_eq!("32X32".parse::<TileSize>(), Ok(TileSize::Fixed([1, 32, 32])));
        for bad in ["", "0x4x4", "4x4x4x4", "ax4x4", "-1x2x2", "4"] {
            assert!(bad.parse::<TileSize>().is_err(), "{bad}");
        }
        assert_eq!(TileSize::Fixed([1, 2, 3]).to_string(), "1x2x3");
    }

    #[test]
    fn auto_is_whole_when_it_fits_and_slabs_when_not() {
        let shape = [100, 64, 64];
        assert_eq!(plan_tiles(shape, TileSize::Auto, [2; 3], 4, u64::MAX, 2), vec![Region::whole(shape)]);
        // 64*64*4 = 16 KiB per plane; 2 threads, 320 KiB → 160 KiB per tile = 10 planes, less 2·2 halo.
        let tiles = plan_tiles(shape, TileSize::Auto, [2; 3], 4, 320 * 1024, 2);
        assert_eq!(tiles[0], Region { start: [0, 0, 0], end: [6, 64, 64] });
        assert_eq!(tiles.len(), 100usize.div_ceil(6));
        // Never thinner than a plane, and 2D images are cut along y.
        let tiles = plan_tiles([1, 50, 50], TileSize::Auto, [0, 3, 3], 4, 1, 2);
        assert_eq!(tiles.len(), 50);
        assert_eq!(tiles[0].size(), [1, 1, 50]);
    }
}
