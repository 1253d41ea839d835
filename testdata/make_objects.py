#!/usr/bin/env python3
"""Two populations of synthetic 3D objects that differ in shape, for classifying objects on their
measured phenotypes (`tessera train` on `measure` tables, the `classify` op in a pipeline).

Each sample is a 40×64×64 8-bit volume: dark background (20) with Gaussian noise (sd 12) and
bright ellipsoids (180) placed at random without touching (at least 3 voxels apart):

- `round` objects: near-spheres, semi-axes r·(1, 1.0–1.25, 1.0–1.25) with r of 3–5 voxels;
- `long` objects: prolate ellipsoids of about the same volume, semi-axes r·(1, 1, 2.0–3.0)
  along a random direction.

Samples `train_round_1..3` hold only round objects and `train_long_1..3` only long ones
(manifest `objects_train.csv`, column `population`): the measured objects of those samples are
a labelled training set. Samples `mixed_1..3` hold both kinds in different proportions
(manifest `objects_mixed.csv`, columns `n_round` and `n_long`: how many of each were placed).

Writes testdata/classify/objects/*.tif (zlib-compressed TIFF) and the two manifests. Seeded,
so it writes the same files every time. Re-create with:

    python -m venv v && v/bin/pip install numpy tifffile
    v/bin/python testdata/make_objects.py
"""
import os

import numpy as np
import tifffile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "classify")
SHAPE = (40, 64, 64)


def rotation(rng):
    """A uniformly random rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def ellipsoid(rng, kind):
    r = rng.uniform(3.0, 5.0)
    if kind == "round":
        axes = r * np.array([1.0, rng.uniform(1.0, 1.25), rng.uniform(1.0, 1.25)])
    else:
        axes = r * np.array([0.8, 0.8, rng.uniform(2.0, 3.0)])
    return axes, rotation(rng)


def sample(rng, kinds):
    occupied = np.zeros(SHAPE, bool)
    img = np.full(SHAPE, 20.0)
    grid = np.indices(SHAPE).reshape(3, -1).T.astype(float)
    placed = []
    for kind in kinds:
        axes, rot = ellipsoid(rng, kind)
        reach = int(np.ceil(axes.max())) + 1
        for _ in range(200):
            c = np.array([rng.uniform(reach, s - 1 - reach) for s in SHAPE])
            lo = np.maximum(np.floor(c - reach).astype(int), 0)
            hi = np.minimum(np.ceil(c + reach).astype(int) + 1, SHAPE)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            pts = np.indices(hi - lo).reshape(3, -1).T + lo
            local = (pts - c) @ rot / axes
            inside = (local ** 2).sum(1) <= 1.0
            if not inside.any():
                continue
            mask = np.zeros(hi - lo, bool)
            mask.reshape(-1)[inside] = True
            # At least 3 voxels from every object placed before.
            g = tuple(slice(max(a - 3, 0), b + 3) for a, b in zip(lo, hi))
            near = occupied[g]
            if near.any():
                pad = np.zeros(near.shape, bool)
                off = [a - s.start for a, s in zip(lo, g)]
                pad[off[0]:off[0] + mask.shape[0], off[1]:off[1] + mask.shape[1], off[2]:off[2] + mask.shape[2]] = mask
                grown = pad.copy()
                for axis in range(3):
                    for shift in (1, 2, 3, -1, -2, -3):
                        grown |= np.roll(pad, shift, axis)
                if (grown & near).any():
                    continue
            occupied[box] |= mask
            img[box][mask] = 180.0
            placed.append(kind)
            break
    del grid
    img += rng.normal(0.0, 12.0, SHAPE)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), placed


def main():
    rng = np.random.default_rng(20261126)
    os.makedirs(os.path.join(OUT, "objects"), exist_ok=True)
    train = ["sample,image,population"]
    for kind in ("round", "long"):
        for i in range(1, 4):
            img, placed = sample(rng, [kind] * 24)
            name = f"train_{kind}_{i}"
            tifffile.imwrite(os.path.join(OUT, "objects", name + ".tif"), img, compression="zlib")
            train.append(f"{name},objects/{name}.tif,{kind}")
            print(name, len(placed))
    mixed = ["sample,image,n_round,n_long"]
    for i, frac in enumerate((0.25, 0.5, 0.75), start=1):
        n = 24
        kinds = ["long"] * round(n * frac) + ["round"] * (n - round(n * frac))
        rng.shuffle(kinds)
        img, placed = sample(rng, kinds)
        name = f"mixed_{i}"
        tifffile.imwrite(os.path.join(OUT, "objects", name + ".tif"), img, compression="zlib")
        mixed.append(f"{name},objects/{name}.tif,{placed.count('round')},{placed.count('long')}")
        print(name, placed.count("round"), placed.count("long"))
    with open(os.path.join(OUT, "objects_train.csv"), "w") as f:
        f.write("\n".join(train) + "\n")
    with open(os.path.join(OUT, "objects_mixed.csv"), "w") as f:
        f.write("\n".join(mixed) + "\n")


if __name__ == "__main__":
    main()
