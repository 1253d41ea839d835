#!/usr/bin/env python3
"""Out-of-core figures: the benchmark chain on a volume larger than its --memory budget.

    bash bench/run.sh --big [--shape Z Y X] [--memory SIZE] [--compare] [--no-checkpoint] [--write]
    bash bench/run.sh --big --zarr [--zarr-chunks Z Y X] [--shape Z Y X] [--memory SIZE] [--write]

Makes a Z×Y×X u8 volume of random ellipsoids plus noise (the same density as bench.py's),
generated slab by slab straight into a BigTIFF so that even 2048×2048×1024 (4 GiB) needs little
memory to make. Runs gaussian(σ=1) → Otsu → opening(r=1) → label(26) → measure with
`tessera run --memory SIZE` under /usr/bin/time, and prints wall time, peak RSS, the peak disk
used beyond the outputs (spills, scratch volumes, checkpoints under .tessera/) and the objects
found. With --compare it also runs the same chain in memory (when that fits) and checks that the
label TIFF and the table are byte-identical. --write appends the row to BENCHMARKS.md.

With --zarr it also stores the volume as OME-Zarr (NGFF 0.5, one level, zstd level 3 chunks of
--zarr-chunks, written by zarr-python a slab at a time) and runs the same streamed chain from the
uncompressed TIFF and from the Zarr store, one after the other at the same --memory: time, peak
RSS, stored size, and the label TIFF and table compared byte for byte.
"""
import argparse
import json
import os
import platform
import subprocess
import tempfile
import time

import numpy as np
import tifffile

import bench  # bench/bench.py, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))

# The chain bench.py times end to end, under its own name.
PIPELINE = bench.PIPELINE.replace("name: bench", "name: big")


def make_volume(path, shape, seed=1, slab=32):
    """Ellipsoids (3000 per 256³) and Gaussian noise, written a z-slab at a time."""
    nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    count = int(3000 * nz * ny * nx / 256 ** 3)
    centres = rng.uniform(0, 1, (count, 3)) * np.array(shape)
    axes = rng.uniform(1.5, 4.5, (count, 3))
    order = np.argsort(centres[:, 0])
    centres, axes = centres[order], axes[order]
    reach = np.ceil(axes.max(axis=1)).astype(int) + 1
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for z0 in range(0, nz, slab):
            z1 = min(nz, z0 + slab)
            vol = np.zeros((z1 - z0, ny, nx), np.float32)
            lo = np.searchsorted(centres[:, 0], z0 - 6)
            hi = np.searchsorted(centres[:, 0], z1 + 6)
            for c, a, r in zip(centres[lo:hi], axes[lo:hi], reach[lo:hi]):
                sl = [(max(z0, int(c[0]) - r), min(z1, int(c[0]) + r + 1)),
                      (max(0, int(c[1]) - r), min(ny, int(c[1]) + r + 1)),
                      (max(0, int(c[2]) - r), min(nx, int(c[2]) + r + 1))]
                if any(b <= a_ for a_, b in sl):
                    continue
                zz, yy, xx = np.ogrid[sl[0][0]:sl[0][1], sl[1][0]:sl[1][1], sl[2][0]:sl[2][1]]
                q = ((zz - c[0]) / a[0]) ** 2 + ((yy - c[1]) / a[1]) ** 2 + ((xx - c[2]) / a[2]) ** 2
                view = vol[sl[0][0] - z0:sl[0][1] - z0, sl[1][0]:sl[1][1], sl[2][0]:sl[2][1]]
                np.maximum(view, (q <= 1) * 150.0, out=view)
            noise = np.random.default_rng([seed, z0]).normal(40, 20, vol.shape).astype(np.float32)
            vol += noise
            tw.write(np.clip(vol, 0, 255).astype(np.uint8), contiguous=True)
    return count


def make_zarr(tif, path, shape, chunks):
    """The TIFF's voxels as an OME-Zarr 0.5 image (one level, zstd 3), a chunk row at a time."""
    import shutil

    import zarr
    shutil.rmtree(path, ignore_errors=True)
    src = tifffile.memmap(tif).reshape(shape)  # written a slab at a time: (slabs, planes, y, x)
    g = zarr.open_group(path, mode="w", zarr_format=3)
    a = g.create_array("0", shape=src.shape, chunks=tuple(chunks), dtype=src.dtype,
                       compressors=[zarr.codecs.ZstdCodec(level=3)], dimension_names=["z", "y", "x"])
    for z0 in range(0, src.shape[0], chunks[0]):
        a[z0:z0 + chunks[0]] = src[z0:z0 + chunks[0]]
    axes = [{"name": n, "type": "space"} for n in "zyx"]
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]}


def tree_digest(path):
    """blake2 of a file, or of every file under a folder with its relative path."""
    import hashlib
    h = hashlib.blake2b()
    if os.path.isfile(path):
        return hashlib.blake2b(open(path, "rb").read()).hexdigest()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            h.update(os.path.relpath(os.path.join(root, f), path).encode())
            with open(os.path.join(root, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def tree_bytes(path, skip=None):
    """Bytes of the files under `path` (leaving out the folder named `skip`)."""
    total = 0
    for root, dirs, files in os.walk(path):
        if skip:
            dirs[:] = [d for d in dirs if d != skip]
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass  # removed while we looked
    return total


def run(exe, pipe, path, out, memory, extra=()):
    """Runs tessera under /usr/bin/time; also samples the output folder's size every 50 ms, for
    the disk the run used beyond its outputs (spills, scratch, checkpoints) at its peak."""
    import shutil
    import threading
    # A fresh folder: a folder from an earlier run would be up to date and skip the work.
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["/usr/bin/time", "-f", "%e %M", exe, "run", pipe, path, "--out", out, "--threads", "2",
           "--progress", "never", "--json", *extra]
    if memory:
        cmd += ["--memory", memory]
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_bytes(out))
            done.wait(0.05)

    t = threading.Thread(target=sample)
    t.start()
    p = subprocess.run(cmd, capture_output=True, text=True)
    done.set()
    t.join()
    if p.returncode != 0:
        raise SystemExit(f"tessera failed:\n{p.stdout}\n{p.stderr}")
    secs, kib = p.stderr.strip().splitlines()[-1].split()
    report = json.load(open(os.path.join(out, "run.json")))
    sample = report["samples"][0]
    outputs = tree_bytes(out, skip=".tessera")
    beyond = max(peak[0], tree_bytes(out)) - outputs
    return float(secs), int(kib) / 1024, sample["objects"].get("objects", 0), sample["streamed"], beyond / 2 ** 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[384, 768, 768], metavar=("Z", "Y", "X"))
    ap.add_argument("--memory", default="64MiB")
    ap.add_argument("--compare", action="store_true", help="also run in memory and compare outputs")
    ap.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md")
    ap.add_argument("--work", default=None, help="folder for the volume and outputs (needs ~10× the volume free)")
    ap.add_argument("--reuse", action="store_true", help="keep WORK/big.tif if it has the right shape")
    ap.add_argument("--no-checkpoint", action="store_true", help="run with --no-checkpoint (spills are not kept: less disk)")
    ap.add_argument("--zarr", action="store_true", help="also run from the volume stored as OME-Zarr (zstd) and compare")
    ap.add_argument("--zarr-chunks", type=int, nargs=3, default=[64, 256, 256], metavar=("Z", "Y", "X"))
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp()
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "big.tif")
    t0 = time.perf_counter()
    # The file is written a slab at a time, so tifffile may see its series as (slabs, planes, y, x).
    if a.reuse and os.path.exists(path) and np.prod(tifffile.TiffFile(path).series[0].shape) == np.prod(a.shape) \
            and tifffile.TiffFile(path).series[0].shape[-2:] == tuple(a.shape[1:]):
        count = int(3000 * np.prod(a.shape) / 256 ** 3)
    else:
        count = make_volume(path, a.shape)
    gib = np.prod(a.shape) / 2 ** 30
    print(f"volume {a.shape[0]}×{a.shape[1]}×{a.shape[2]} u8 ({gib:.2f} GiB), {count} ellipsoids, "
          f"made in {time.perf_counter() - t0:.0f} s", flush=True)
    exe = os.path.join(TARGET, "release", "tessera")
    pipe = os.path.join(work, "big.yaml")
    open(pipe, "w").write(PIPELINE)
    extra = ["--no-checkpoint"] if a.no_checkpoint else []
    if a.zarr:
        # Both runs write their labels as OME-Zarr (zstd): the same outputs, and not 2 × 8 GiB of
        # uncompressed TIFF on this disk.
        open(pipe, "w").write(PIPELINE.replace("objects: tiff", "objects: ome-zarr"))
        return zarr_vs_tiff(a, exe, pipe, path, work, gib, extra)
    secs, rss, objects, streamed, disk = run(exe, pipe, path, os.path.join(work, "streamed"), a.memory, extra)
    rate = np.prod(a.shape) / secs / 1e6
    line = (f"| {a.shape[0]}×{a.shape[1]}×{a.shape[2]} u8 ({gib:.2f} GiB) | --memory {a.memory}{' --no-checkpoint' if extra else ''} | "
            f"{'streamed' if streamed else 'in memory'} | {secs:.1f} | {rss:.0f} | {disk:.0f} | {objects} | {rate:.0f} |")
    print(line, flush=True)
    rows = [line]
    if a.compare:
        secs2, rss2, objects2, streamed2, disk2 = run(exe, pipe, path, os.path.join(work, "whole"), None, extra)
        rows.append(f"| {a.shape[0]}×{a.shape[1]}×{a.shape[2]} u8 ({gib:.2f} GiB) | default | "
                    f"{'streamed' if streamed2 else 'in memory'} | {secs2:.1f} | {rss2:.0f} | {disk2:.0f} | {objects2} | "
                    f"{np.prod(a.shape) / secs2 / 1e6:.0f} |")
        print(rows[-1], flush=True)
        for f in ("samples/big/objects.tif", "samples/big/shape.parquet", "tables/shape.parquet"):
            same = open(os.path.join(work, "streamed", f), "rb").read() == open(os.path.join(work, "whole", f), "rb").read()
            print(f"{f}: {'identical' if same else 'DIFFERENT'}")
            if not same:
                raise SystemExit(1)
    if a.write:
        md = os.path.join(ROOT, "BENCHMARKS.md")
        text = open(md).read() if os.path.exists(md) else "# Benchmarks\n"
        head = ("| volume | budget | mode | time (s) | peak RSS (MiB) | disk beyond outputs, peak (MiB) | objects | Mvoxel/s |\n"
                "|---|---|---|---|---|---|---|---|\n")
        section = f"\n### Out of core ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores; bench/big.py)\n\n"
        text += section + head + "\n".join(rows) + "\n"
        open(md, "w").write(text)


def zarr_vs_tiff(a, exe, pipe, tif, work, gib, extra):
    zpath = os.path.join(work, "big.ome.zarr")
    t0 = time.perf_counter()
    make_zarr(tif, zpath, tuple(a.shape), a.zarr_chunks)
    print(f"OME-Zarr written in {time.perf_counter() - t0:.0f} s: {tree_bytes(zpath) / 2 ** 30:.2f} GiB", flush=True)
    shape = f"{a.shape[0]}×{a.shape[1]}×{a.shape[2]} u8 ({gib:.2f} GiB)"
    rows = []
    for name, src, stored in [("uncompressed TIFF", tif, os.path.getsize(tif)),
                              (f"OME-Zarr, zstd 3, chunks {'×'.join(map(str, a.zarr_chunks))}", zpath, tree_bytes(zpath))]:
        out = os.path.join(work, "from-zarr" if src == zpath else "from-tiff")
        secs, rss, objects, streamed, _ = run(exe, pipe, src, out, a.memory, extra)
        assert streamed, "the chain was not streamed: lower --memory"
        rows.append(f"| {shape} | {name} | {stored / 2 ** 30:.2f} | --memory {a.memory} | {secs:.1f} | {rss:.0f} | {objects} |")
        print(rows[-1], flush=True)
    # From the Zarr input the labels are that image's labels (a store linking to it): compare
    # their level 0 with level 0 of the labels written from the TIFF.
    for f, g in (("samples/big/objects.ome.zarr/0", "samples/big/objects.ome.zarr/labels/objects/0"),
                 ("samples/big/shape.parquet", None), ("tables/shape.parquet", None)):
        same = tree_digest(os.path.join(work, "from-tiff", f)) == tree_digest(os.path.join(work, "from-zarr", g or f))
        print(f"{f}: {'identical' if same else 'DIFFERENT'}")
        if not same:
            raise SystemExit(1)
    if a.write:
        md = os.path.join(ROOT, "BENCHMARKS.md")
        head = ("| volume | input | stored (GiB) | budget | time (s) | peak RSS (MiB) | objects |\n"
                "|---|---|---|---|---|---|---|\n")
        section = (f"\n### Streamed from OME-Zarr and from TIFF ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
                   f"{os.cpu_count()} cores; bench/big.py --zarr)\n\n")
        open(md, "a").write(section + head + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
