#!/usr/bin/env python3
"""tessera against its peers, op by op and end to end, on the same volume in the same run.

    bash bench/run.sh [SIZE] [REPEATS]      # installs the peers in a venv, builds, runs this

Makes a SIZE^3 u8 volume with a few thousand random ellipsoids (seeded), then times, each the
best of REPEATS, with 2 threads where a tool has threads:
- per op: tessera's op in-process (examples/bench_ops.rs) against scipy.ndimage, scikit-image,
  cc3d, SimpleITK and edt on the same array;
- end to end: `tessera run` (process start to exit: read TIFF, gaussian → Otsu → opening →
  label(26) → measure, write label TIFF and Parquet) against the same chain as a Python script
  with scipy + scikit-image and with SimpleITK (each writing the table tessera writes), and as a
  best-of-breed script (cc3d, smaller table), on SIZE³ and the --e2e-shapes volumes (default
  100³, 384×768×768, 512³), with each process's peak RSS.
Prints a Markdown table (ratio = peer time / tessera time; > 1 means tessera is faster) and
writes it to BENCHMARKS.md when --write is given.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import tifffile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))



def dist_version(name):
    """A pip distribution's version (cc3d and edt have no __version__)."""
    try:
        import importlib.metadata
        return importlib.metadata.version(name)
    except Exception:
        return "?"

def volume(n, seed=1):
    """A u8 volume (a cube of side n, or a (z, y, x) shape) of random ellipsoids, 3000 per 256³,
    at 150 over noise (mean 40, sd 20); seeded."""
    shape = (n, n, n) if isinstance(n, int) else tuple(n)
    rng = np.random.default_rng(seed)
    vol = np.zeros(shape, np.float32)
    count = int(3000 * np.prod(shape, dtype=np.float64) / 256 ** 3)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    hi = np.array(shape, np.float64)
    for _ in range(count):
        c = rng.uniform(0, hi, 3)
        a = rng.uniform(1.5, 4.5, 3)
        r = int(np.ceil(a.max())) + 1
        sl = tuple(slice(max(0, int(c[i]) - r), min(shape[i], int(c[i]) + r + 1)) for i in range(3))
        zz, yy, xx = z[sl[0], :, :], y[:, sl[1], :], x[:, :, sl[2]]
        q = ((zz - c[0]) / a[0]) ** 2 + ((yy - c[1]) / a[1]) ** 2 + ((xx - c[2]) / a[2]) ** 2
        vol[sl] = np.maximum(vol[sl], (q <= 1) * 150.0)
    vol += rng.normal(40, 20, vol.shape).astype(np.float32)
    return np.clip(vol, 0, 255, out=vol).astype(np.uint8)


def parse_shape(spec):
    """"256" → (256, 256, 256); "384x768x768" → (384, 768, 768)."""
    v = [int(p) for p in spec.lower().split("x")]
    return tuple(v * 3) if len(v) == 1 else tuple(v)


def best(repeats, f):
    t = float("inf")
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        t = min(t, time.perf_counter() - t0)
    return t, out


def ball(r):
    z, y, x = np.ogrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return z * z + y * y + x * x <= r * r


def chain(img):
    """The benchmark chain's values, as the peers compute them: smoothed, Otsu mask, opened mask,
    26-connected labels."""
    import scipy.ndimage as ndi
    from skimage.filters import threshold_otsu

    sm = ndi.gaussian_filter(img.astype(np.float32), 1.0)
    mask = sm > threshold_otsu(sm)
    opened = ndi.binary_opening(mask, ball(1))
    labels, _ = ndi.label(opened, np.ones((3, 3, 3)))
    return sm, mask, opened, labels


def voronoi_peers(labels, mask):
    """Territories of the objects inside the mask (tessera's voronoi), two ways a user would
    write it; neither sends exact ties to the lower label, so their labels differ from
    tessera's at ties (timing only)."""
    import scipy.ndimage as ndi
    import SimpleITK as sitk

    slab = sitk.GetImageFromArray(labels.astype(np.uint32))

    def scipy_voronoi():
        _, idx = ndi.distance_transform_edt(labels == 0, return_indices=True)
        t = labels[tuple(idx)]
        t[~mask] = 0
        return t

    def sitk_voronoi():
        f = sitk.DanielssonDistanceMapImageFilter()
        f.InputIsBinaryOff()
        f.UseImageSpacingOn()
        f.Execute(slab)
        t = sitk.GetArrayFromImage(f.GetVoronoiMap())
        t[~mask] = 0
        return t

    return scipy_voronoi, sitk_voronoi


def peers(img, repeats):
    import scipy.ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.measure import regionprops_table
    import cc3d
    import edt
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    res = {}
    res["gaussian_s1"] = {"scipy": best(repeats, lambda: ndi.gaussian_filter(img.astype(np.float32), 1.0))[0]}
    sm = ndi.gaussian_filter(img.astype(np.float32), 1.0)
    simg = sitk.GetImageFromArray(img.astype(np.float32))
    res["gaussian_s1"]["SimpleITK"] = best(repeats, lambda: sitk.SmoothingRecursiveGaussian(simg, 1.0))[0]
    res["median_3"] = {"scipy": best(repeats, lambda: ndi.median_filter(img, size=3))[0]}
    res["median_5"] = {"scipy": best(1, lambda: ndi.median_filter(img, size=5))[0]}
    res["otsu"] = {"scikit-image": best(repeats, lambda: threshold_otsu(sm))[0]}
    mask = sm > threshold_otsu(sm)
    res["opening_ball1"] = {"scipy": best(repeats, lambda: ndi.binary_opening(mask, ball(1)))[0]}
    smask = sitk.GetImageFromArray(mask.astype(np.uint8))
    res["opening_ball1"]["SimpleITK"] = best(repeats, lambda: sitk.BinaryMorphologicalOpening(smask, [1, 1, 1], sitk.sitkBall))[0]
    opened = ndi.binary_opening(mask, ball(1))
    res["label_26"] = {
        "scipy": best(repeats, lambda: ndi.label(opened, np.ones((3, 3, 3))))[0],
        "cc3d": best(repeats, lambda: cc3d.connected_components(opened, connectivity=26))[0],
    }
    labels, _ = ndi.label(opened, np.ones((3, 3, 3)))
    slab = sitk.GetImageFromArray(labels.astype(np.uint32))
    sraw = sitk.GetImageFromArray(img)

    def sitk_measure():
        f = sitk.LabelShapeStatisticsImageFilter()
        f.ComputeMomentsOn() if hasattr(f, "ComputeMomentsOn") else None
        f.Execute(slab)
        g = sitk.LabelIntensityStatisticsImageFilter()
        g.Execute(slab, sraw)
        return f, g

    res["measure"] = {
        "SimpleITK": best(repeats, sitk_measure)[0],
        "scikit-image": best(1, lambda: regionprops_table(labels, intensity_image=img, properties=[
            "label", "area", "centroid", "bbox", "inertia_tensor_eigvals", "intensity_mean"]))[0],
    }
    res["distance"] = {
        "scipy": best(repeats, lambda: ndi.distance_transform_edt(opened))[0],
        "edt": best(repeats, lambda: edt.edt(opened, parallel=2))[0],
    }

    scipy_voronoi, sitk_voronoi = voronoi_peers(labels, mask)
    res["voronoi"] = {
        "scipy (edt indices)": best(repeats, scipy_voronoi)[0],
        "SimpleITK (Danielsson)": best(1, sitk_voronoi)[0],
    }
    return res


def run_tessera_ops(path, repeats, only=None):
    exe = os.path.join(TARGET, "release", "examples", "bench_ops")
    env = dict(os.environ, RAYON_NUM_THREADS="2")
    args = [exe, path, str(repeats)] + ([",".join(only)] if only else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out)


def large_peers(img, repeats):
    """distance and voronoi on a larger volume (their peers are too slow to repeat there)."""
    import scipy.ndimage as ndi
    import edt
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    _, mask, opened, labels = chain(img)
    scipy_voronoi, sitk_voronoi = voronoi_peers(labels, mask)
    return {
        "distance": {"scipy": best(1, lambda: ndi.distance_transform_edt(opened))[0],
                     "edt": best(repeats, lambda: edt.edt(opened, parallel=2))[0]},
        "voronoi": {"scipy (edt indices)": best(1, scipy_voronoi)[0],
                    "SimpleITK (Danielsson)": best(1, sitk_voronoi)[0]},
    }


PIPELINE = """version: 1
name: bench
stages:
  smooth: {op: gaussian, input: image, sigma: 1.0}
  mask: {op: threshold, input: smooth, method: otsu}
  clean: {op: opening, input: mask, radius: 1}
  objects: {op: label, input: clean, connectivity: 26}
  shape: {op: measure, labels: objects, intensity: {raw: image}}
outputs: {objects: tiff, shape: parquet}
"""

# Each peer script is its library's chain (read → gaussian → Otsu → opening → label) followed by
# a table. The full tables are the one tessera writes (SPEC §6 columns: voxels, volume, centroid,
# bbox, inertia eigenvalues, axis lengths, anisotropy, intensity sum/mean/min/max/std, nearest
# neighbour, touches_border), each computed the way a user of that library would.
SCIPY_HEAD = """
import sys, numpy as np, tifffile, scipy.ndimage as ndi, pandas as pd
from scipy.spatial import cKDTree
from skimage.filters import threshold_otsu
from skimage.measure import regionprops_table
img = tifffile.imread(sys.argv[1])
sm = ndi.gaussian_filter(img.astype(np.float32), 1.0)
mask = sm > threshold_otsu(sm)
z, y, x = np.ogrid[-1:2, -1:2, -1:2]
mask = ndi.binary_opening(mask, (z*z + y*y + x*x) <= 1)
labels, n = ndi.label(mask, np.ones((3, 3, 3)))
tifffile.imwrite(sys.argv[2] + "/labels.tif", labels.astype(np.uint16 if n < 65536 else np.uint32))
"""

SCIPY_CHAIN = SCIPY_HEAD + """
t = pd.DataFrame(regionprops_table(labels, intensity_image=img, properties=[
    "label", "area", "centroid", "bbox", "inertia_tensor_eigvals", "axis_major_length",
    "axis_minor_length", "intensity_mean", "intensity_min", "intensity_max", "intensity_std"]))
t["volume"] = t["area"]
t["anisotropy"] = 1 - t["axis_minor_length"] / t["axis_major_length"]
t["raw_sum"] = t["intensity_mean"] * t["area"]
c = t[["centroid-0", "centroid-1", "centroid-2"]].to_numpy()
d, i = cKDTree(c).query(c, k=2)
t["nn_distance"], t["nn_label"] = d[:, 1], t["label"].to_numpy()[i[:, 1]]
lo = t[["bbox-0", "bbox-1", "bbox-2"]].to_numpy(); hi = t[["bbox-3", "bbox-4", "bbox-5"]].to_numpy()
t["touches_border"] = (lo == 0).any(axis=1) | (hi == np.array(labels.shape)).any(axis=1)
t.to_parquet(sys.argv[2] + "/shape.parquet")
"""

SITK_HEAD = """
import sys, numpy as np, SimpleITK as sitk, pandas as pd
from scipy.spatial import cKDTree
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
img = sitk.ReadImage(sys.argv[1])
sm = sitk.DiscreteGaussian(sitk.Cast(img, sitk.sitkFloat32), 1.0)
mask = sitk.OtsuThreshold(sm, 0, 1)
mask = sitk.BinaryMorphologicalOpening(mask, [1, 1, 1], sitk.sitkBall)
labels = sitk.ConnectedComponent(mask, True)
f = sitk.LabelShapeStatisticsImageFilter(); f.Execute(labels)
g = sitk.LabelIntensityStatisticsImageFilter(); g.Execute(labels, img)
sitk.WriteImage(labels, sys.argv[2] + "/labels.tif")
"""

SITK_CHAIN = SITK_HEAD + """
size = labels.GetSize()
rows = []
for l in f.GetLabels():
    bb = f.GetBoundingBox(l)  # x0 y0 z0 sx sy sz
    pm = f.GetPrincipalMoments(l)
    ax = f.GetEquivalentEllipsoidDiameter(l)
    rows.append((l, f.GetNumberOfPixels(l), f.GetPhysicalSize(l), *f.GetCentroid(l), *bb, *pm, max(ax), min(ax),
                 g.GetSum(l), g.GetMean(l), g.GetMinimum(l), g.GetMaximum(l), g.GetStandardDeviation(l)))
t = pd.DataFrame(rows, columns=["label", "voxels", "volume", "cx", "cy", "cz", "x0", "y0", "z0", "sx", "sy", "sz",
                                "m0", "m1", "m2", "major", "minor", "sum", "mean", "min", "max", "std"])
t["anisotropy"] = 1 - t["minor"] / t["major"]
c = t[["cx", "cy", "cz"]].to_numpy()
d, i = cKDTree(c).query(c, k=2)
t["nn_distance"], t["nn_label"] = d[:, 1], t["label"].to_numpy()[i[:, 1]]
t["touches_border"] = ((t[["x0", "y0", "z0"]] == 0).any(axis=1) |
                       (t["x0"] + t["sx"] == size[0]) | (t["y0"] + t["sy"] == size[1]) | (t["z0"] + t["sz"] == size[2]))
t.to_parquet(sys.argv[2] + "/shape.parquet")
"""

# What a performance-aware user writes: the smoothing straight to float32, scipy's opening,
# cc3d's labelling and statistics, a bincount of intensities taken a few planes at a time. Its
# table is smaller than tessera's: label, voxels, centroid, bounding box, intensity sum and mean
# (11 columns; no inertia, axis lengths, min/max/std, nearest neighbour or border contact).
BOB_CHAIN = """
import sys, numpy as np, tifffile, scipy.ndimage as ndi, cc3d, pandas as pd
from skimage.filters import threshold_otsu
img = tifffile.imread(sys.argv[1])
sm = ndi.gaussian_filter(img, 1.0, output=np.float32)
mask = sm > threshold_otsu(sm)
del sm
z, y, x = np.ogrid[-1:2, -1:2, -1:2]
mask = ndi.binary_opening(mask, (z*z + y*y + x*x) <= 1)
labels, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
labels = labels.astype(np.uint16 if n < 65536 else np.uint32, copy=False)
tifffile.imwrite(sys.argv[2] + "/labels.tif", labels)
st = cc3d.statistics(labels)
# Intensity sums by bincount, 8 planes at a time: bincount takes float64 weights and intp
# labels, and whole-volume conversions would cost 16 bytes a voxel (9 s at 384×768×768).
total = np.zeros(n + 1)
for z0 in range(0, img.shape[0], 8):
    total += np.bincount(labels[z0:z0 + 8].ravel(), weights=img[z0:z0 + 8].ravel(), minlength=n + 1)
voxels = st["voxel_counts"]
bb = np.array([[s.start for s in b] + [s.stop for s in b] for b in st["bounding_boxes"][1:]]).reshape(-1, 6)
t = pd.DataFrame({"label": np.arange(1, n + 1), "voxels": voxels[1:]})
for k, c in enumerate("zyx"):
    t["centroid_" + c] = st["centroids"][1:, k]
for k, c in enumerate(["z0", "y0", "x0", "z1", "y1", "x1"]):
    t["bbox_" + c] = bb[:, k]
t["raw_sum"] = total[1:]
t["raw_mean"] = total[1:] / voxels[1:]
t.to_parquet(sys.argv[2] + "/shape.parquet")
"""

NOTES = """64³ tiles cost more than z-slabs: each cube also computes its halo (the gaussian's is
4 voxels: 72³ voxels for 64³ of output), and in the opening a 64-wide tile with its 2-voxel halos
spans 68 voxels, two 64-bit words per bit-packed row instead of one. tessera does not fsync its
files unless run with `--durable` (like the peers, which never do; a killed run is still safe,
see README "Checkpoints and resuming"); the `--durable` row shows what waiting for the disk
costs here."""

CHAINS = (("scipy + scikit-image", SCIPY_CHAIN), ("SimpleITK", SITK_CHAIN), ("best-of-breed Python", BOB_CHAIN))


def timed_rss(cmd, env=None):
    """Wall seconds (perf_counter around the process) and peak resident memory (MiB, from
    /usr/bin/time) of one process."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True, env=env)
    t = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {p.stderr}")
    return t, int(p.stderr.strip().splitlines()[-1]) / 1024


def end_to_end(path, repeats, work, chains=CHAINS, own_repeats=None):
    """Best time, and peak RSS of that run, of `tessera run` and of each peer script on one
    volume; also the object count tessera found."""
    exe = os.path.join(TARGET, "release", "tessera")
    pipe = os.path.join(work, "bench.yaml")
    open(pipe, "w").write(PIPELINE)
    runs = []
    objects = None
    for k in range(own_repeats or repeats):
        # A new output folder each time (a re-run into the same one is a no-op: up to date).
        out = os.path.join(work, f"tessera-out-{k}")
        runs.append(timed_rss([exe, "run", pipe, path, "--out", out, "--threads", "2", "--progress", "never"]))
        if objects is None:
            import pyarrow.parquet as pq
            found = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f == "shape.parquet"]
            objects = pq.read_metadata(found[0]).num_rows if found else None
        shutil.rmtree(out, ignore_errors=True)
    ours = min(runs)
    res = {}
    for name, code in chains:
        script = os.path.join(work, "chain.py")
        open(script, "w").write(code)
        d = os.path.join(work, name.split()[0])
        os.makedirs(d, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="2")
        res[name] = min(timed_rss([sys.executable, script, path, d], env) for _ in range(repeats))
        shutil.rmtree(d, ignore_errors=True)
    return ours, res, objects


def run_rss(cmd):
    """Seconds and peak resident memory (MiB) of one process, by /usr/bin/time (a forked
    child's own ru_maxrss would include this Python process's pages)."""
    p = subprocess.run(["/usr/bin/time", "-f", "%e %M"] + cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {p.stderr}")
    secs, kib = p.stderr.strip().splitlines()[-1].split()
    return float(secs), int(kib) / 1024


def tiling(path, size, repeats, work):
    """The benchmark chain whole and with forced tiles: time and peak RSS."""
    exe = os.path.join(TARGET, "release", "tessera")
    pipe = os.path.join(work, "bench.yaml")
    rows = []
    for label, extra in (("whole (auto)", ["--tile", "auto"]), (f"--tile 32x{size}x{size}", ["--tile", f"32x{size}x{size}"]),
                         ("--tile 64x64x64", ["--tile", "64x64x64"]), ("--no-checkpoint", ["--no-checkpoint"]),
                         ("--durable (fsync every file)", ["--durable"]),
                         ("--memory 16MiB (streamed)", ["--memory", "16MiB"])):
        runs = []
        for k in range(max(repeats, 5)):
            out = os.path.join(work, f"variant-{len(rows)}-{k}")
            runs.append(run_rss([exe, "run", pipe, path, "--out", out, "--threads", "2", "--progress", "never"] + extra))
            shutil.rmtree(out, ignore_errors=True)
        rows.append((label, min(r[0] for r in runs), max(r[1] for r in runs)))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write the table to BENCHMARKS.md")
    ap.add_argument("--e2e-shapes", nargs="*", default=["100", "384x768x768", "512"],
                    help="more volumes for the end-to-end rows: a cube side or ZxYxX (default: 100 384x768x768 512)")
    ap.add_argument("--large", type=int, default=512,
                    help="cube size for a second table of distance and voronoi (default 512; 0: none)")
    a = ap.parse_args()
    work = tempfile.mkdtemp()
    img = volume(a.size)
    path = os.path.join(work, f"vol{a.size}.tif")
    tifffile.imwrite(path, img)
    ours = run_tessera_ops(path, a.repeats)
    theirs = peers(img, a.repeats)
    lines = [f"### {a.size}³ u8, {int(ours['objects'])} objects after opening; best of {a.repeats}; 2 threads", "",
             "| op | tessera (s) | peer | peer (s) | ratio |", "|---|---|---|---|---|"]
    for op, ps in theirs.items():
        for peer, t in ps.items():
            lines.append(f"| {op} | {ours[op]:.3f} | {peer} | {t:.3f} | {t / ours[op]:.1f}× |")
    if a.large and a.large != a.size:
        big = volume(a.large)
        p = os.path.join(work, f"vol{a.large}.tif")
        tifffile.imwrite(p, big)
        mine = run_tessera_ops(p, a.repeats, ["distance", "voronoi"])
        large = large_peers(big, a.repeats)
        os.remove(p)
        del big
        lines += ["", f"### {a.large}³ u8, {int(mine['objects'])} objects after opening: distance and voronoi; "
                  f"tessera and edt best of {a.repeats}, the others one run; 2 threads", "",
                  "| op | tessera (s) | peer | peer (s) | ratio |", "|---|---|---|---|---|"]
        for op, ps in large.items():
            for peer, t in ps.items():
                lines.append(f"| {op} | {mine[op]:.3f} | {peer} | {t:.3f} | {t / mine[op]:.1f}× |")
    peer_reps = lambda shape: a.repeats if np.prod(shape) <= 256 ** 3 else 1
    lines += ["", "End to end, process start to exit: read the TIFF, gaussian(σ=1) → Otsu → opening(r=1) → label(26) → "
              "measure, write the label TIFF and the Parquet table. tessera: best of "
              f"{max(a.repeats, 10)}; peers: best of {a.repeats} up to 256³, one run above; 2 threads. The scipy + "
              "scikit-image and SimpleITK scripts write tessera's table (SPEC §6 columns, computed as a user of "
              "that library would); the best-of-breed script (scipy's gaussian straight to float32, "
              "scikit-image's Otsu, scipy's opening, cc3d's labelling and statistics, a numpy bincount for "
              "intensities, 8 planes at a time) writes a smaller one: 11 columns (label, voxels, centroid, bounding box, intensity "
              "sum and mean) against tessera's 27. Peak RSS is each process's maximum resident set "
              "(/usr/bin/time), and × input is it over the u8 input's size. Timings on this VM drift by up "
              "to 2× from minute to minute (host noise): compare figures from one run, not across runs.", "",
              "| volume | objects | tessera (s) | tessera peak RSS (MiB) | peer script | peer (s) | peer peak RSS (MiB) | ratio |",
              "|---|---|---|---|---|---|---|---|"]
    e2e = [(parse_shape(str(a.size)), path)]
    for spec in a.e2e_shapes:
        shape = parse_shape(spec)
        if shape != e2e[0][0]:
            p = os.path.join(work, "vol" + "x".join(map(str, shape)) + ".tif")
            tifffile.imwrite(p, volume(shape))
            e2e.append((shape, p))
    for shape, p in sorted(e2e, key=lambda e: np.prod(e[0])):
        name = f"{shape[0]}³" if len(set(shape)) == 1 else "×".join(map(str, shape))
        mib = np.prod(shape) / 2 ** 20
        # Small volumes: only process start to exit (the peers' interpreter start-up dominates).
        chains = CHAINS if np.prod(shape) >= 256 ** 3 else ()
        (t, rss), res, objects = end_to_end(p, peer_reps(shape), work, chains, own_repeats=max(a.repeats, 10))
        ours = f"| {name} | {objects} | {t:.3f} | {rss:.0f} ({rss / mib:.1f}×) |"
        if not res:
            lines.append(ours + " (process start to exit) | | | |")
        for peer, (pt, prss) in res.items():
            lines.append(f"{ours} {peer} | {pt:.2f} | {prss:.0f} | {pt / t:.1f}× |")
        if p != path:
            os.remove(p)
    tiles = tiling(path, a.size, a.repeats, work)
    lines += ["", f"The same chain on {a.size}³, run variants (fresh output folder each time; checkpoints on unless said; best of {max(a.repeats, 5)}):", "",
              "| run | time (s) | vs whole | peak RSS (MiB) |", "|---|---|---|---|"]
    for tile, t, rss in tiles:
        lines.append(f"| {tile} | {t:.2f} | {100 * (t / tiles[0][1] - 1):+.0f}% | {rss:.0f} |")
    lines += ["", NOTES]
    table = "\n".join(lines)
    print(table)
    if a.write:
        host = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        import scipy, skimage, SimpleITK, cc3d, edt  # noqa: E401
        vers = f"scipy {scipy.__version__}, scikit-image {skimage.__version__}, SimpleITK {SimpleITK.Version_VersionString()}, cc3d {dist_version('connected-components-3d')}, edt {dist_version('edt')}"
        text = open(os.path.join(ROOT, "BENCHMARKS.md")).read() if os.path.exists(os.path.join(ROOT, "BENCHMARKS.md")) else ""
        head = "# Benchmarks\n\nMade by `bash bench/run.sh` (bench/bench.py); ratio = peer time / tessera time.\n\n"
        body = f"## {time.strftime('%Y-%m-%d')} ({host}; {vers})\n\n{table}\n"
        # Keep the sections the other scripts wrote (bench/profile.py's, then bench/big.py's and
        # the rest): they take much longer to make.
        marks = [text.index(m) for m in ("\n### Where the time goes", "\n### Out of core") if m in text]
        kept = text[min(marks):] if marks else ""
        open(os.path.join(ROOT, "BENCHMARKS.md"), "w").write(head + body + kept)


if __name__ == "__main__":
    main()
