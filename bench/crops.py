#!/usr/bin/env python3
"""Table-driven crops: tessera against what teams run today, on the same photos and boxes.

Photos: the sample photos shipped with scikit-image and scikit-learn, cut and resized into
several sizes (long side 480, 800 and 1200 pixels) and saved as JPEG (quality 90) or PNG (one
in four) — `--photos` of them (300). Boxes: `--rows` (50,000) rows, each a normalised box
(`xmin, xmax, ymin, ymax`) on one photo, grouped by photo as real tables are (a shelf photo
and its products), joined with a photo table (`photo_id` → image file, camera, shelf) before use.

Peers, each writing every crop as PNG:
- pandas + PIL: `read_csv`, `merge` on `photo_id`, then per row `Image.open(...).crop((xmin·w,
  ymin·h, xmax·w, ymax·h)).save(...)` — what the per-row function of such a job does;
- the same function in a 2-process `multiprocessing.Pool` (`imap` over the rows, chunks of 64);
- tessera: `pipelines/crops.yaml` (`samples:` the box table joined with the photo table,
  `crop` with `fraction: '${…}'`, `outputs: {crop: png}`), one sample per row.

Prints rows per second, peak RSS and the ratios, and checks tessera's crops of the PNG photos
against PIL's pixel for pixel (all of them) and of JPEG photos to ±(decoder difference).

    bash bench/run.sh --crops [--rows 50000] [--photos 300] [--keep DIR]
"""
import argparse
import csv
import multiprocessing
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESSERA = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "tessera")


def sources():
    """The photos bundled with scikit-image and scikit-learn (no download)."""
    import skimage.data as d
    from sklearn.datasets import load_sample_images

    out = []
    for name in ["astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field",
                 "camera", "brick", "grass", "gravel", "coins", "moon", "page", "text", "clock", "horse", "logo"]:
        try:
            a = getattr(d, name)()
        except Exception:
            continue
        a = np.asarray(a)
        if a.dtype != np.uint8:
            a = (a.astype(float) / max(a.max(), 1) * 255).astype(np.uint8)
        if a.ndim == 3 and a.shape[2] == 4:
            a = a[:, :, :3]
        out.append((name, a))
    for i, a in enumerate(load_sample_images().images):
        out.append((f"sklearn{i}", a))
    return out


def make_photos(folder, n, seed):
    rng = random.Random(seed)
    src = sources()
    os.makedirs(folder, exist_ok=True)
    rows = []
    for k in range(n):
        name, a = src[k % len(src)]
        h, w = a.shape[:2]
        # A random part of at least half of each side, resized to a long side of 480/800/1200.
        ch, cw = rng.randint(h // 2, h), rng.randint(w // 2, w)
        y0, x0 = rng.randint(0, h - ch), rng.randint(0, w - cw)
        im = Image.fromarray(a[y0:y0 + ch, x0:x0 + cw])
        long = [480, 800, 1200][k % 3]
        s = long / max(im.size)
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BILINEAR)
        ext = "png" if k % 4 == 0 else "jpg"
        path = os.path.join(folder, f"photo{k:04d}.{ext}")
        if ext == "png":
            im.save(path)
        else:
            im.save(path, quality=90)
        rows.append((f"p{k:04d}", path, f"cam{k % 5}", f"shelf{k % 37}"))
    return rows


def make_boxes(photos, n, seed):
    rng = random.Random(seed)
    per = [n // len(photos) + (1 if i < n % len(photos) else 0) for i in range(len(photos))]
    out = []
    r = 0
    for (pid, _, _, _), m in zip(photos, per):
        for _ in range(m):
            wx, wy = rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4)
            x0, y0 = rng.uniform(0, 1 - wx), rng.uniform(0, 1 - wy)
            out.append((f"r{r:06d}", pid, round(x0, 4), round(x0 + wx, 4), round(y0, 4), round(y0 + wy, 4)))
            r += 1
    return out


def crop_row(args):
    sample, path, xmin, xmax, ymin, ymax, out = args
    try:
        with Image.open(path) as im:
            w, h = im.size
            im.crop((xmin * w, ymin * h, xmax * w, ymax * h)).save(os.path.join(out, sample + ".png"))
        return None
    except Exception as e:  # a failing row is logged and the job goes on
        return (sample, str(e))


def job_rows(boxes_csv, photos_csv, out):
    boxes = pd.read_csv(boxes_csv)
    photos = pd.read_csv(photos_csv)
    t = boxes.merge(photos, on="photo_id", how="inner")
    return [(r.sample, r.image, r.xmin, r.xmax, r.ymin, r.ymax, out) for r in t.itertuples()]


def pil_loop(boxes_csv, photos_csv, out):
    os.makedirs(out, exist_ok=True)
    return [e for e in map(crop_row, job_rows(boxes_csv, photos_csv, out)) if e]


def pil_pool(boxes_csv, photos_csv, out):
    os.makedirs(out, exist_ok=True)
    with multiprocessing.Pool(2) as pool:
        return [e for e in pool.imap(crop_row, job_rows(boxes_csv, photos_csv, out), chunksize=64) if e]


def timed_child(fn, *args):
    """Runs fn in a fresh process; returns (seconds, peak RSS MiB of it and its children)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        t0 = time.perf_counter()
        fn(*args)
        os.write(w, f"{time.perf_counter() - t0}".encode())
        os._exit(0)
    os.close(w)
    secs = float(os.read(r, 100).decode() or "nan")
    _, status, ru = os.wait4(pid, 0)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return secs, max(ru.ru_maxrss, kids) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", help="keep the inputs and outputs in this folder")
    ap.add_argument("--skip-loop", action="store_true", help="leave out the single-process loop (slow)")
    ap.add_argument("--tessera-only", action="store_true", help="only tessera (and the pixel check, if a pool's crops are kept)")
    a = ap.parse_args()
    work = a.keep or tempfile.mkdtemp(prefix="tessera-crops-")
    os.makedirs(work, exist_ok=True)
    photos = make_photos(os.path.join(work, "photos"), a.photos, a.seed)
    photos_csv = os.path.join(work, "photos.csv")
    with open(photos_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["photo_id", "image", "camera", "shelf"])
        w.writerows(photos)
    boxes = make_boxes(photos, a.rows, a.seed)
    boxes_csv = os.path.join(work, "boxes.csv")
    with open(boxes_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample", "photo_id", "xmin", "xmax", "ymin", "ymax"])
        w.writerows(boxes)
    mb = sum(os.path.getsize(p[1]) for p in photos) / 2**20
    print(f"{len(photos)} photos ({mb:.0f} MiB, long side 480/800/1200, 1 in 4 PNG), {len(boxes)} boxes")

    results = []
    peers = ([] if a.skip_loop else [("pandas + PIL loop", pil_loop)]) + [("pandas + PIL, Pool(2)", pil_pool)]
    for name, fn in [] if a.tessera_only else peers:
        out = os.path.join(work, "out-pool" if "Pool" in name else "out-loop")
        shutil.rmtree(out, ignore_errors=True)
        secs, rss = timed_child(fn, boxes_csv, photos_csv, out)
        results.append((name, secs, rss))
        print(f"{name}: {secs:.1f} s, {len(boxes) / secs:.0f} rows/s, peak RSS {rss:.0f} MiB", flush=True)
        if "Pool" not in name:
            shutil.rmtree(out)  # the pool's crops are the ones compared

    pipeline = os.path.join(ROOT, "pipelines", "crops.yaml")
    tout = os.path.join(work, "out-tessera")
    shutil.rmtree(tout, ignore_errors=True)
    cmd = ["/usr/bin/time", "-f", "%e %M", TESSERA, "run", pipeline, "--samples", boxes_csv, "--join", f"{photos_csv}:photo_id",
           "--out", tout, "--progress", "never", "--threads", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"tessera failed: {p.stderr[-2000:]}")
    secs, kib = p.stderr.strip().splitlines()[-1].split()
    secs, rss = float(secs), int(kib) / 1024
    results.append(("tessera", secs, rss))
    print(f"tessera: {secs:.1f} s, {len(boxes) / secs:.0f} rows/s, peak RSS {rss:.0f} MiB", flush=True)

    # Pixel for pixel against PIL's crops (the pool's), every row.
    pool_out = os.path.join(work, "out-pool")
    same = diff = 0
    worst_jpeg = 0
    files = {pid: path for pid, path, _, _ in photos}
    for sample, pid, *_ in boxes:
        mine = np.asarray(Image.open(os.path.join(tout, "samples", sample, "crop.png")))
        theirs = np.asarray(Image.open(os.path.join(pool_out, sample + ".png")))
        if files[pid].endswith(".png"):
            if mine.shape == theirs.shape and (mine == theirs).all():
                same += 1
            else:
                diff += 1
        else:
            if mine.shape != theirs.shape:
                diff += 1
            else:
                worst_jpeg = max(worst_jpeg, int(np.abs(mine.astype(int) - theirs.astype(int)).max()))
    print(f"crops of PNG photos equal to PIL's: {same} of {same + diff}; JPEG photos: same boxes, pixels within ±{worst_jpeg} (decoders differ)")
    print()
    print("| tool | seconds | rows/s | peak RSS (MiB) | tessera is × faster |")
    print("|---|---|---|---|---|")
    t = results[-1][1]
    for name, secs, rss in results:
        print(f"| {name} | {secs:.1f} | {len(boxes) / secs:,.0f} | {rss:.0f} | {secs / t:.1f} |")
    if diff:
        sys.exit(f"{diff} crops differ from PIL's")
    if not a.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
