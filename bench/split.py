#!/usr/bin/env python3
"""One volume split over tasks: the cost of `tessera run --split N` against one machine.

    python bench/split.py [--shape Z Y X] [--blocks 1 2 4 8] [--memory SIZE] [--threads T]
                          [--scan FILE] [--slurm N]

Generates a bone scan with bench/bone.py (unless --scan names one), runs
pipelines/bone-lacunae-scan.yaml on it once on one machine (`tessera run --memory SIZE`, every
stage streamed, as a split run's tasks are), then split into each N of --blocks, running the
phases one after the other here (`--phase K` for K = 1.., then `--phase final`), each timed. It
prints, per N: the wall time of every phase and in all, against the one-machine run, and the
bytes each phase wrote (block parts, partial results and checkpoints: what tasks on other
machines would move through the shared file system); and checks that every output file is
byte-identical to the one-machine run's. On this 2-core machine the phases' tasks run one
after the other, so the figures measure the overhead of splitting, not a speed-up.

With --slurm N it also submits the split into N blocks to the Slurm cluster on this machine
(`tessera submit --split N`, started by ../shared/scheduler/slurm-up.sh) and times it from
submission to the merged outputs.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
TESSERA = os.path.join(TARGET, "release", "tessera")
PIPELINE = os.path.join(ROOT, "pipelines", "bone-lacunae-scan.yaml")


def tree_bytes(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total


def written_since(path, seen):
    """Bytes of files under `path` that are new or changed since `seen` (updated)."""
    wrote = 0
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            try:
                st = os.stat(p)
            except OSError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            if seen.get(p) != key:
                wrote += st.st_size
                seen[p] = key
    return wrote


def outputs(out):
    files = {}
    for sub in ("samples", "tables", "stats"):
        for d, _, names in os.walk(os.path.join(out, sub)):
            for n in names:
                p = os.path.join(d, n)
                files[os.path.relpath(p, out)] = p
    return files


def same_outputs(a, b):
    fa, fb = outputs(a), outputs(b)
    if sorted(fa) != sorted(fb):
        return False
    for k in fa:
        if subprocess.run(["cmp", "-s", fa[k], fb[k]]).returncode != 0:
            return False
    return True


def run(args):
    t = time.time()
    r = subprocess.run([TESSERA] + args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"tessera {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return time.time() - t


def phases_of(blocks):
    r = subprocess.run([TESSERA, "plan", PIPELINE, "--split", str(blocks)], capture_output=True, text=True, check=True)
    return [l.strip() for l in r.stdout.splitlines() if l.strip().startswith("phase ")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[384, 768, 768])
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--memory", default="512MiB")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scan")
    ap.add_argument("--slurm", type=int)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tessera-split-", dir=os.environ.get("TMPDIR", "/tmp"))
    try:
        scan = a.scan or os.path.join(work, "scan.tif")
        if not a.scan:
            t = time.time()
            subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bone.py"), scan, "--shape", *map(str, a.shape)],
                           check=True, stdout=subprocess.DEVNULL)
            print(f"scan {'x'.join(map(str, a.shape))} u8 ({os.path.getsize(scan) / 1e9:.2f} GB) made in {time.time() - t:.0f} s")
        manifest = os.path.join(work, "samples.csv")
        with open(manifest, "w") as f:
            f.write(f"sample,image\nscan,{scan}\n")
        env = os.environ.copy()
        base = [PIPELINE, "--samples", manifest, "--memory", a.memory, "--progress", "never"]
        os.environ["RAYON_NUM_THREADS"] = str(a.threads)
        one = os.path.join(work, "one")
        t_one = run(["run"] + base + ["--out", one])
        print(f"one machine (--memory {a.memory}, streamed): {t_one:.1f} s")
        print()
        print("| blocks | phases | wall (s) | vs one machine | written by the phases (MB) | per phase: s (MB written) | outputs |")
        print("|---|---|---|---|---|---|---|")
        for n in a.blocks:
            out = os.path.join(work, f"split{n}")
            names = phases_of(n)
            seen = {}
            times, wrote = [], []
            for k in range(1, len(names) + 1):
                times.append(run(["run"] + base + ["--out", out, "--split", str(n), "--phase", str(k)]))
                wrote.append(written_since(os.path.join(out, ".tessera"), seen))
            times.append(run(["run"] + base + ["--out", out, "--split", str(n), "--phase", "final"]))
            wrote.append(written_since(os.path.join(out, ".tessera"), seen))
            total = sum(times)
            per = "; ".join(f"{k + 1}: {t:.1f} ({w / 1e6:.0f})" for k, (t, w) in enumerate(zip(times[:-1], wrote[:-1])))
            per += f"; final: {times[-1]:.1f}"
            ok = "identical" if same_outputs(one, out) else "DIFFER"
            print(f"| {n} | {len(names)} | {total:.1f} | {total / t_one:.2f}× | {sum(wrote[:-1]) / 1e6:.0f} | {per} | {ok} |")
            shutil.rmtree(out, ignore_errors=True)
        print()
        for line in phases_of(max(a.blocks)):
            print("  " + line)
        if a.slurm:
            out = os.path.join(work, "slurm")
            t = time.time()
            r = subprocess.run([TESSERA, "submit", PIPELINE, "--samples", manifest, "--scheduler", "slurm", "--split",
                                str(a.slurm), "--threads", "1", "--memory", a.memory, "--out", out, "--json"],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                sys.exit(r.stderr)
            while subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
                time.sleep(1)
            ok = "identical" if same_outputs(one, out) else "DIFFER"
            print(f"\nSlurm, --split {a.slurm}, 1 thread per task: {time.time() - t:.1f} s from submission to the merged outputs ({ok})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
