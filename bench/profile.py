#!/usr/bin/env python3
"""Where the time of an end-to-end run goes, and what the machine's floor is.

    bash bench/run.sh --profile [--shapes 256 384x768x768] [--runs 5] [--write]

For each volume (bench.py's random ellipsoids), the chain of bench.py's end-to-end rows
(gaussian σ=1 → Otsu → opening r=1 → label 26 → measure, label TIFF + Parquet):
1. wall seconds per stage: `tessera run`'s own stage timings (run.json) of the fastest of
   --runs fresh runs, beside the op alone in-process (examples/bench_ops, memory reused);
2. the whole run's CPU time by kind, from `perf record` samples (999 Hz, every thread):
   kernel zeroing fresh pages, the writer thread filling the page cache, each op's code,
   compression, copies;
3. instructions per voxel of each op (valgrind --tool=callgrind on bench_ops, one repeat; these
   counts repeat exactly, unlike times on this VM) — first volume only;
4. the floor: process start, reading the TIFF, the first touch of the memory no chain avoids
   (the input; the label image, u16), and writing the label TIFF and the table
   (examples/floor), each the best of --runs.
Prints Markdown; --write appends it to BENCHMARKS.md in place of an earlier profile section.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import tifffile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import PIPELINE, TARGET, ROOT, volume, parse_shape  # noqa: E402

EXE = os.path.join(TARGET, "release", "tessera")
OPS = os.path.join(TARGET, "release", "examples", "bench_ops")
FLOOR = os.path.join(TARGET, "release", "examples", "floor")
STAGES = (("smooth", "gaussian_s1", "gaussian"), ("mask", "otsu", "Otsu + mask"), ("clean", "opening_ball1", "opening"),
          ("objects", "label_26", "label"), ("shape", "measure", "measure"))
ENV = dict(os.environ, RAYON_NUM_THREADS="2")

# perf symbols → what they are. First match wins; kernel symbols are split by thread.
KINDS = [
    ("kernel: zeroing fresh pages (first touch)", r"\[k\] (clear_page|folio_zero|clear_huge)"),
    ("kernel: writer thread (page cache, ext4)", r"^tessera-writer.*\[k\]"),
    ("kernel: reading files, other", r"\[k\]"),
    ("gaussian", r"ops::filters::"),
    ("Otsu + mask", r"ops::threshold::"),
    ("opening", r"ops::morphology::|util::(pack|unpack)_row"),
    ("label", r"ops::label::"),
    ("measure", r"ops::(measure|local|kdtree|exact)::"),
    ("TIFF decode/encode", r"io::tiff|tiff::|weezl|fdeflate|zune|flate"),
    ("Parquet (zstd, polars)", r"ZSTD|HUF_|FSE_|HIST_|polars|parquet|arrow"),
    ("blake3 (input and checkpoint hashes)", r"blake3"),
    ("memcpy/memmove/memset", r"mem(cpy|move|set)"),
    ("other", r"."),
]


def fresh_runs(path, runs, work):
    """Fastest of `runs` fresh `tessera run`s: (seconds, stage seconds)."""
    pipe = os.path.join(work, "bench.yaml")
    open(pipe, "w").write(PIPELINE)
    best = None
    for k in range(runs):
        out = os.path.join(work, f"out-{k}")
        t0 = time.perf_counter()
        subprocess.run([EXE, "run", pipe, path, "--out", out, "--threads", "2", "--progress", "never"], check=True, capture_output=True)
        t = time.perf_counter() - t0
        stages = json.load(open(os.path.join(out, "run.json")))["samples"][0]["stage_seconds"]
        label_bytes = os.path.getsize(os.path.join(out, "samples", os.path.basename(path)[:-4], "objects.tif"))
        table_bytes = os.path.getsize(os.path.join(out, "samples", os.path.basename(path)[:-4], "shape.parquet"))
        if best is None or t < best[0]:
            best = (t, stages, label_bytes, table_bytes)
        shutil.rmtree(out, ignore_errors=True)
    return best


def perf_kinds(path, work):
    pipe = os.path.join(work, "bench.yaml")
    data = os.path.join(work, "perf.data")
    out = os.path.join(work, "perf-out")
    subprocess.run(["perf", "record", "-q", "-F", "999", "-o", data, "--", EXE, "run", pipe, path, "--out", out, "--threads", "2",
                    "--progress", "never"], check=True, capture_output=True)
    shutil.rmtree(out, ignore_errors=True)
    rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "--sort", "comm,sym", "-F", "sample,comm,sym"],
                         check=True, capture_output=True, text=True).stdout
    sums = {k: 0 for k, _ in KINDS}
    for line in rep.splitlines():
        m = re.match(r"\s*(\d+)\s+(\S+)\s+(.*)$", line)
        if not m:
            continue
        n, rest = int(m.group(1)), m.group(2) + " " + m.group(3)
        for k, pat in KINDS:
            if re.search(pat, rest):
                sums[k] += n
                break
    return {k: v / 999 for k, v in sums.items()}


def callgrind_ir(path, work, voxels):
    """Instructions per voxel of each op, from callgrind's inclusive counts of the functions
    that hold the op's work (the op entry points are inlined into rayon closures)."""
    out = os.path.join(work, "cg.out")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", OPS, path, "1",
                    "gaussian_s1,otsu,opening_ball1,label_26,measure"], check=True, capture_output=True, env=ENV)
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", out], check=True, capture_output=True, text=True).stdout
    sums = {}
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+\S*?:(.*)$", line)
        if not m:
            continue
        ir, sym = int(m.group(1).replace(",", "")), m.group(2)
        for k, pat in KINDS[3:8]:
            if re.search(pat, sym):
                sums[k] = sums.get(k, 0) + ir
                break
    return {k: v / voxels for k, v in sums.items()}


def floor(path, label_bytes, table_bytes, voxels, runs, work):
    starts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([EXE, "--version"], check=True, capture_output=True)
        starts.append(time.perf_counter() - t0)
    rows = [json.loads(subprocess.run([FLOOR, path, str(voxels * 3), str(label_bytes + table_bytes), work], check=True,
                                      capture_output=True, text=True, env=ENV).stdout) for _ in range(runs)]
    return {"start": min(starts), "read": min(r["read"] for r in rows), "touch": min(r["touch"] for r in rows),
            "write": min(r["write"] for r in rows)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["256", "384x768x768"])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp()
    lines = [f"### Where the time goes ({time.strftime('%Y-%m-%d')}; bash bench/run.sh --profile)", ""]
    for i, spec in enumerate(a.shapes):
        shape = parse_shape(spec)
        voxels = int(np.prod(shape))
        name = f"{shape[0]}³" if len(set(shape)) == 1 else "×".join(map(str, shape))
        path = os.path.join(work, "vol.tif")
        tifffile.imwrite(path, volume(shape))
        total, stages, label_bytes, table_bytes = fresh_runs(path, a.runs, work)
        alone = json.loads(subprocess.run([OPS, path, "3", ",".join(s[1] for s in STAGES)], check=True, capture_output=True, text=True,
                                          env=ENV).stdout)
        ir = callgrind_ir(path, work, voxels) if i == 0 else {}
        kinds = perf_kinds(path, work)
        fl = floor(path, label_bytes, table_bytes, voxels, a.runs, work)
        lines += [f"**{name}** ({voxels / 1e6:.1f} M voxels): `tessera run` {total:.3f} s, fastest of {a.runs}.", "",
                  "| stage | in the run (s) | op alone, memory reused (s) |" + (" instructions per voxel |" if ir else ""),
                  "|---|---|---|" + ("---|" if ir else "")]
        for stage, op, label in STAGES:
            # Stages computed together (the smoothing read by planes inside the threshold) are
            # timed together, under their joined names, on the first of their rows.
            joined = next((k for k in stages if stage in k.split("+")), stage)
            took = stages.get(joined, float("nan")) if joined.split("+")[0] == stage else float("nan")
            shown = f"{took:.3f}" if took == took else f"(with {joined.split('+')[0]})"
            name = label + (" (and the stages timed with it)" if took == took and "+" in joined else "")
            lines.append(f"| {name} | {shown} | {alone[op]:.3f} |" + (f" {ir.get(label, 0):.1f} |" if ir else ""))
        rest = total - sum(stages.values())
        lines += [f"| outside the stages (start, read + hash input, write outputs, exit) | {rest:.3f} | |" + (" |" if ir else ""), "",
                  "CPU time of one run by kind (perf samples of every thread; the run's wall time is shorter: two threads):", "",
                  "| kind | CPU s | share |", "|---|---|---|"]
        cpu = sum(kinds.values())
        for k, v in kinds.items():
            if v > 0:
                lines.append(f"| {k} | {v:.3f} | {100 * v / cpu:.0f}% |")
        floor_s = fl["start"] + fl["read"] + fl["touch"] + fl["write"]
        lines += ["", f"The floor here: process start {fl['start']:.3f} s, reading the TIFF into fresh memory {fl['read']:.3f} s, "
                  f"first touch of {3 * voxels / 2**20:.0f} MiB (the input and a u16 label image) {fl['touch']:.3f} s, "
                  f"writing the outputs' {(label_bytes + table_bytes) / 2**20:.0f} MiB to the page cache {fl['write']:.3f} s: "
                  f"{floor_s:.3f} s in all, {100 * floor_s / total:.0f}% of the run.", ""]
    text = "\n".join(lines)
    print(text)
    if a.write:
        p = os.path.join(ROOT, "BENCHMARKS.md")
        old = open(p).read()
        head = "### Where the time goes"
        if head in old:
            # In place of the earlier profile.
            at = old.index(head)
            nxt = old.find("\n### ", at + 1)
            old = old[:at] + (old[nxt + 1:] if nxt >= 0 else "")
        else:
            # After the end-to-end section of bench.py, before the out-of-core ones.
            at = old.find("\n### Out of core")
            at = len(old) if at < 0 else at + 1
        open(p, "w").write(old[:at] + text + "\n" + old[at:])
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
