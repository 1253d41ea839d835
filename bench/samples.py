"""Studies of many samples: does a run's memory stay flat as the sample count grows, and what
does each sample cost beyond its pixels (records, locks, checkpoints)?

    bash bench/run.sh --samples [--counts 10,1000,10000] [--write]

Two kinds of study, both of distinct files (content-addressed checkpoints are not shared):
- "small": testdata/nuclei2d.tif (512×512 u8, 84 nuclei) rolled by a different offset per sample;
- "tiny": 24×32 u8 images with 1–3 bright squares on noise (about 2 objects each).
Each count runs pipelines/nuclei.yaml into a fresh folder with the default settings and with
--no-checkpoint, and the tiny study once more with nothing to do (every sample up to date).
Wall time and peak RSS from /usr/bin/time, each run repeated (--repeats, default 3): the best
time and the median peak RSS; 2 threads. Peak RSS of one run varies by ±20% on these VMs.
"""

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tifffile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESSERA = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "tessera")


def make_study(folder, kind, n):
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rng = np.random.default_rng(15)
    base = tifffile.imread(os.path.join(ROOT, "testdata", "nuclei2d.tif")) if kind == "small" else None
    lines = ["sample,image,group"]
    for i in range(n):
        if kind == "small":
            a = np.roll(base, (i % 97, (i // 97) % 101), axis=(0, 1))
        else:
            a = rng.integers(0, 40, size=(24, 32), dtype=np.uint8)
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(3, 19), rng.integers(3, 27)
                a[y - 2 : y + 3, x - 2 : x + 3] = 200
        name = f"images/s{i:05d}.tif"
        tifffile.imwrite(os.path.join(folder, name), a)
        lines.append(f"s{i:05d},{name},g{i % 7}")
    with open(os.path.join(folder, "study.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return os.path.join(folder, "study.csv")


def timed(args):
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + args, capture_output=True, text=True, cwd=ROOT)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    rss_kb = int(p.stderr.strip().splitlines()[-1])
    return secs, rss_kb / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="10,100,1000,10000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", default="tiny,small")
    ap.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    a = ap.parse_args()
    counts = [int(c) for c in a.counts.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TESSERA_BENCH_TMP")) as tmp:
        for kind in a.kinds.split(","):
            for n in counts:
                folder = os.path.join(tmp, f"{kind}{n}")
                manifest = make_study(folder, kind, n)
                for variant, extra in [("checkpoints", []), ("--no-checkpoint", ["--no-checkpoint"])]:
                    out = os.path.join(folder, "out" + variant)
                    args = [TESSERA, "run", "pipelines/nuclei.yaml", "--samples", manifest, "--out", out,
                            "--progress", "never", "--threads", "2"] + extra
                    fresh, again = [], []
                    for _ in range(a.repeats):
                        shutil.rmtree(out, ignore_errors=True)
                        fresh.append(timed(args))
                        if variant == "checkpoints" and kind == "tiny":
                            again.append(timed(args))
                    for name, runs in [(variant, fresh), ("re-run (up to date)", again)]:
                        if not runs:
                            continue
                        secs = min(r[0] for r in runs)
                        rss = statistics.median(r[1] for r in runs)
                        rows.append((kind, n, name, secs, n / secs, rss))
                        print(f"{kind:5} {n:6} {name:20} {secs:8.2f} s {n / secs:8.0f} samples/s {rss:7.0f} MiB", flush=True)
                    shutil.rmtree(out)
                shutil.rmtree(folder)
    table = [f"| study | samples | run | time (s) | samples/s | peak RSS (MiB) | RSS vs {counts[0]} samples |", "|---|---|---|---|---|---|---|"]
    for kind, n, variant, secs, rate, rss in rows:
        base = next((r[5] for r in rows if r[0] == kind and r[2] == variant and r[1] == counts[0]), rss)
        table.append(f"| {kind} | {n} | {variant} | {secs:.2f} | {rate:.0f} | {rss:.0f} | {rss / base:.2f}× |")
    text = "\n".join(table)
    print(text)
    if a.write:
        head = (f"\n### Studies of many samples ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
                f"{os.cpu_count()} cores; bench/samples.py)\n\n")
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as f:
            f.write(head + text + "\n")


if __name__ == "__main__":
    main()
