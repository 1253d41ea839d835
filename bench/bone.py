#!/usr/bin/env python3
"""A synthetic cortical-bone scan (SRXTM-like) of any size, written slab by slab into a BigTIFF.

    python bench/bone.py OUT.tif --shape Z Y X [--seed S] [--voxel 0.7] [--manifest OUT.csv]

Bright mineralised matrix; Haversian canals as tubes along z (25 µm radius on average, one
per (250 µm)² of section, drifting slightly); osteocyte lacunae as ellipsoids (semi-axes about
8 × 4 × 2.5 µm, so 200–600 µm³ each; 25,000 per mm³ of bone; long axes within 20° of z;
none inside or against a canal); a little blur within planes and noise. numpy and tifffile
only. Seeded and
reproducible; it never holds more than one slab with its margin, so 2560×2560×2160 (14 GVx,
the study's scan size) takes about 15 GB of disk and little memory. The voxel size goes into
the file (ImageJ description and resolution tags), so tessera measures in µm.

Prints the numbers of canals and lacunae it placed; `--manifest` writes a one-sample CSV for
`tessera run pipelines/bone-lacunae-scan.yaml`.
"""
import argparse
import os
import time

import numpy as np
import tifffile

# Lacunae per mm³ of bone, and their semi-axes (µm) with their spread.
DENSITY = 25_000
SEMI_AXES = np.array([8.0, 4.0, 2.5])
SEMI_SPREAD = np.array([1.2, 0.6, 0.4])
# Canals: radius (µm) range, one per this area of section (mm²).
CANAL_RADIUS = (20.0, 30.0)
CANAL_AREA = 0.25 ** 2
MATRIX, CANAL, LACUNA, NOISE = 185.0, 35.0, 45.0, 14.0


def canals_of(rng, shape, voxel):
    """(y, x at z=0, dy/dz, dx/dz, radius) in voxels, for each canal."""
    nz, ny, nx = shape
    area = ny * nx * (voxel / 1000) ** 2
    n = max(1, int(round(area / CANAL_AREA)))
    c = np.empty((n, 5))
    c[:, 0] = rng.uniform(0, ny, n)
    c[:, 1] = rng.uniform(0, nx, n)
    c[:, 2:4] = rng.uniform(-0.05, 0.05, (n, 2))
    c[:, 4] = rng.uniform(*CANAL_RADIUS, n) / voxel
    return c


def lacunae_of(rng, shape, voxel, canals):
    """Centres (z, y, x), semi-axes (voxels) and unit axes (long, mid, short) of the lacunae,
    sorted by z; none within 6 µm of a canal's wall."""
    nz, ny, nx = shape
    bone_mm3 = nz * ny * nx * (voxel / 1000) ** 3
    want = int(round(DENSITY * bone_mm3 * (1 - canal_fraction(shape, voxel, canals))))
    centres = np.column_stack([rng.uniform(0, nz, 2 * want + 16), rng.uniform(0, ny, 2 * want + 16), rng.uniform(0, nx, 2 * want + 16)])
    keep = np.ones(len(centres), bool)
    margin = 6.0 / voxel
    for cy, cx, dy, dx, r in canals:
        d2 = (centres[:, 1] - (cy + dy * centres[:, 0])) ** 2 + (centres[:, 2] - (cx + dx * centres[:, 0])) ** 2
        keep &= d2 > (r + margin + SEMI_AXES[0] / voxel) ** 2
    centres = centres[keep][:want]
    n = len(centres)
    semi = (SEMI_AXES + rng.normal(0, 1, (n, 3)) * SEMI_SPREAD).clip(SEMI_AXES / 2) / voxel
    tilt, phi, psi = rng.uniform(0, np.radians(20), n), rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 2 * np.pi, n)
    u = np.column_stack([np.cos(tilt), np.sin(tilt) * np.cos(phi), np.sin(tilt) * np.sin(phi)])
    ref = np.where(np.abs(u[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]])
    a = np.cross(u, ref)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.cross(u, a)
    v = np.cos(psi)[:, None] * a + np.sin(psi)[:, None] * b
    w = np.cross(u, v)
    order = np.argsort(centres[:, 0])
    return centres[order], semi[order], np.stack([u, v, w], axis=1)[order]


def canal_fraction(shape, voxel, canals):
    nz, ny, nx = shape
    return min(0.9, float(np.sum(np.pi * canals[:, 4] ** 2)) / (ny * nx))


def blur(vol):
    """A little blur within planes: the binomial kernel [1, 2, 1]/4 along y, then x (edges
    repeated), about a Gaussian of σ 0.7 voxel. numpy only, so CI can run the generator."""
    for axis in (1, 2):
        p = np.concatenate([vol.take([0], axis=axis), vol, vol.take([-1], axis=axis)], axis=axis)
        n = vol.shape[axis]
        vol = (p.take(range(0, n), axis=axis) + 2 * p.take(range(1, n + 1), axis=axis) + p.take(range(2, n + 2), axis=axis)) / 4
    return vol.astype(np.float32)


def generate(path, shape, seed=1, voxel=0.7, slab=16):
    nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    canals = canals_of(rng, shape, voxel)
    centres, semi, axes = lacunae_of(rng, shape, voxel, canals)
    reach = np.ceil(semi.max(axis=1)).astype(int) + 1
    yy, xx = np.ogrid[0:ny, 0:nx]
    desc = f"ImageJ=1.54f\nimages={nz}\nslices={nz}\nunit=micron\nspacing={voxel}\nloop=false\n"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for z0 in range(0, nz, slab):
            z1 = min(nz, z0 + slab)
            vol = np.full((z1 - z0, ny, nx), MATRIX, np.float32)
            for k, z in enumerate(range(z0, z1)):
                plane = vol[k]
                for cy, cx, dy, dx, r in canals:
                    y0, x0 = cy + dy * z, cx + dx * z
                    ys, xs = slice(max(0, int(y0 - r) - 1), min(ny, int(y0 + r) + 2)), slice(max(0, int(x0 - r) - 1), min(nx, int(x0 + r) + 2))
                    inside = (yy[ys] - y0) ** 2 + (xx[:, xs] - x0) ** 2 <= r * r
                    plane[ys, xs][inside] = CANAL
            lo = np.searchsorted(centres[:, 0], z0 - reach.max())
            hi = np.searchsorted(centres[:, 0], z1 + reach.max())
            for c, s, ax, r in zip(centres[lo:hi], semi[lo:hi], axes[lo:hi], reach[lo:hi]):
                sl = [(max(z0, int(c[0]) - r), min(z1, int(c[0]) + r + 1)),
                      (max(0, int(c[1]) - r), min(ny, int(c[1]) + r + 1)),
                      (max(0, int(c[2]) - r), min(nx, int(c[2]) + r + 1))]
                if any(b <= a for a, b in sl):
                    continue
                g = np.mgrid[sl[0][0]:sl[0][1], sl[1][0]:sl[1][1], sl[2][0]:sl[2][1]].astype(np.float32)
                d = np.stack([g[0] - c[0], g[1] - c[1], g[2] - c[2]], axis=-1)
                q = ((d @ ax[0]) / s[0]) ** 2 + ((d @ ax[1]) / s[1]) ** 2 + ((d @ ax[2]) / s[2]) ** 2
                view = vol[sl[0][0] - z0:sl[0][1] - z0, sl[1][0]:sl[1][1], sl[2][0]:sl[2][1]]
                view[q <= 1] = LACUNA
            vol = blur(vol)
            vol += np.random.default_rng([seed, z0]).normal(0, NOISE, vol.shape).astype(np.float32)
            tw.write(np.clip(np.round(vol), 0, 255).astype(np.uint8), contiguous=True,
                     resolution=(1 / voxel, 1 / voxel), description=desc if z0 == 0 else None, metadata=None)
    return len(canals), len(centres)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 512, 512], metavar=("Z", "Y", "X"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--voxel", type=float, default=0.7, help="voxel size in µm")
    ap.add_argument("--manifest", help="also write a one-sample manifest CSV naming OUT")
    a = ap.parse_args()
    t0 = time.perf_counter()
    canals, lacunae = generate(a.out, tuple(a.shape), a.seed, a.voxel)
    gb = np.prod(a.shape) / 1e9
    print(f"{a.out}: {a.shape[0]}×{a.shape[1]}×{a.shape[2]} u8 ({gb:.2f} GB) at {a.voxel} µm, "
          f"{canals} canals, {lacunae} lacunae, in {time.perf_counter() - t0:.0f} s")
    if a.manifest:
        with open(a.manifest, "w") as f:
            f.write(f"sample,image\nscan,{os.path.abspath(a.out)}\n")


if __name__ == "__main__":
    main()
