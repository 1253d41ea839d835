#!/usr/bin/env python3
"""Does `tessera watch` keep up with an instrument? A writer drops 256^3 u8 scans (TIFF, a few
thousand objects each) into a folder at a fixed rate, each written slowly in pieces as a detector
does, with a sentinel file once complete; `tessera watch` runs the benchmark chain (gaussian ->
Otsu -> opening -> label 26 -> measure, label TIFF + Parquet) with the study's statistics and
report rewritten as scans finish. Latency = from the sentinel's creation to the `published`
event that has the scan's rows in tables/shape.parquet (the event's time is taken after the
files were renamed into place).

    bash bench/run.sh --watch [--rates 1,10,60,120,180] [--scans N] [--size 256] [--write]

For each rate: scans (default: one minute's worth, at least 3 and at most --scans), median,
p95 and max latency, and whether it kept up (the last scans' latency no worse than the first
ones' + 1 s, all under 2 s). Prints a Markdown table; --write puts it in BENCHMARKS.md.
"""
import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tifffile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import volume, ROOT, TARGET, PIPELINE as BENCH_PIPELINE  # noqa: E402

# The chain of bench.py, named for this benchmark, with the study's statistics.
PIPELINE = BENCH_PIPELINE.replace("name: bench", "name: watch-bench") + \
    "stats: {table: shape, by: sample, phenotypes: [volume, major_axis_length, anisotropy, raw_mean]}\n"


def encode(base, i):
    """Scan i: a rolled copy of one volume (the same statistics, other bytes, so nothing comes
    from checkpoints), as TIFF bytes."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.roll(base, 7 * i + 1, axis=2))
    return buf.getvalue()


def writer(folder, base, n, rate, pieces, write_seconds, complete, stop):
    """Writes scan i at start + i·60/rate, in `pieces` over `write_seconds`, then its sentinel
    (each scan encoded just before its turn, so a long run does not hold every scan)."""
    start = time.time() + 1.0
    for i in range(n):
        data = encode(base, i)
        at = start + i * 60.0 / rate
        while time.time() < at and not stop.is_set():
            time.sleep(min(0.01, max(0.0, at - time.time())))
        name = f"scan_{i:05d}.tif"
        path = os.path.join(folder, name)
        step = (len(data) + pieces - 1) // pieces
        with open(path, "wb") as f:
            for k in range(pieces):
                f.write(data[k * step:(k + 1) * step])
                f.flush()
                time.sleep(write_seconds / pieces)
        open(path + ".done", "w").close()
        complete[f"scan_{i:05d}"] = time.time()


def one_rate(binary, work, base, rate, n, pieces, write_seconds):
    folder = os.path.join(work, f"in-{rate}")
    out = os.path.join(work, f"out-{rate}")
    os.makedirs(folder)
    pipe = os.path.join(work, "watch.yaml")
    open(pipe, "w").write(PIPELINE)
    proc = subprocess.Popen(
        [binary, "watch", pipe, "--dir", folder, "--out", out, "--sentinel", ".done", "--poll", "0.1", "--json",
         "--until", str(n), "--threads", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    complete, stop = {}, threading.Event()
    t = threading.Thread(target=writer, args=(folder, base, n, rate, pieces, write_seconds, complete, stop))
    t.start()
    published, pub_seconds, proc_seconds = {}, [], []
    # Scans already published are removed, as an acquisition moves them to storage (disk here
    # is finite); their results stay.
    def tidy(names):
        for s in names:
            for f in (s + ".tif", s + ".tif.done"):
                try:
                    os.remove(os.path.join(folder, f))
                except OSError:
                    pass
    for line in proc.stdout:
        e = json.loads(line)
        if e["event"] == "published":
            for s in e["new"]:
                published[s] = e["unix"]
            if e["new"]:
                pub_seconds.append(e["seconds"])
            tidy(e["new"])
        elif e["event"] == "finished":
            proc_seconds.append(e["seconds"])
    proc.wait()
    stop.set()
    t.join()
    lat = [published[s] - complete[s] for s in sorted(complete) if s in published]
    k = max(1, len(lat) // 5)
    # Least-squares slope of latency over the scans' order: how fast a backlog builds up.
    xs = list(range(len(lat)))
    mx, my = statistics.mean(xs), statistics.mean(lat)
    sxx = sum((x - mx) ** 2 for x in xs) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, lat)) / sxx
    first, last = statistics.median(lat[:k]), statistics.median(lat[-k:])
    shutil.rmtree(folder)
    shutil.rmtree(out)
    return {
        "rate": rate, "scans": n, "published": len(lat),
        "median": statistics.median(lat), "p95": sorted(lat)[min(len(lat) - 1, int(0.95 * len(lat)))], "max": max(lat),
        "first": first, "last": last,
        "publish_median": statistics.median(pub_seconds), "publish_last": pub_seconds[-1],
        "slope100": 100 * slope, "process": statistics.mean(proc_seconds),
        "kept_up": max(lat) < 2.0,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="1,10,60,120,180")
    ap.add_argument("--scans", type=int, default=60, help="at most this many scans per rate")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pieces", type=int, default=8)
    ap.add_argument("--write-seconds", type=float, default=0.3, help="time the writer takes per scan")
    ap.add_argument("--long", default="60x300", help="RATExSCANS: one long run after the others ('' for none)")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    binary = os.path.join(TARGET, "release", "tessera")
    base = volume(a.size)
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as work:
        runs = [(int(r), max(3, min(a.scans, int(r)))) for r in a.rates.split(",")]
        if a.long:
            rate, n = (int(x) for x in a.long.split("x"))
            runs.append((rate, n))
        for rate, n in runs:
            r = one_rate(binary, work, base, rate, n, a.pieces, a.write_seconds)
            rows.append(r)
            print(f"{rate}/min: {r}", file=sys.stderr, flush=True)
    kept = [r["rate"] for r in rows if r["kept_up"]]
    lines = [
        f"`bash bench/run.sh --watch` on {platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}: "
        f"{a.size}³ u8 scans ({a.size ** 3 / 1e6:.1f} MB TIFF each, ~3,000 objects), each written in {a.pieces} pieces "
        f"over {a.write_seconds} s, then `scan.tif.done`; `tessera watch --sentinel .done --poll 0.1 --threads 2`; "
        "latency = sentinel created → `published` event with the scan's rows in tables/shape.parquet "
        "(statistics with bootstrap intervals and report.html rewritten in the same publication).",
        "",
        "| scans/min | scans | median latency | p95 | max | first → last fifth (median) | latency growth per 100 scans | processing per scan | publication (median / last) | all under 2 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rate']} | {r['scans']} | {r['median']:.2f} s | {r['p95']:.2f} s | {r['max']:.2f} s | "
            f"{r['first']:.2f} → {r['last']:.2f} s | {r['slope100']:+.2f} s | {r['process']:.2f} s | "
            f"{r['publish_median']:.2f} / {r['publish_last']:.2f} s | "
            f"{'yes' if r['kept_up'] else 'no'} |")
    lines.append("")
    lines.append(f"Highest rate with every latency under 2 s: {max(kept) if kept else 'none'} scans/min.")
    table = "\n".join(lines)
    print(table)
    if a.write:
        path = os.path.join(ROOT, "BENCHMARKS.md")
        text = open(path).read()
        head = "## Keeping up with an instrument (`tessera watch`)"
        section = f"{head}\n\n<!-- watch:begin -->\n{table}\n<!-- watch:end -->\n"
        if "<!-- watch:begin -->" in text:
            pre = text[:text.index(head)]
            post = text[text.index("<!-- watch:end -->") + len("<!-- watch:end -->\n"):]
            text = pre + section + post
        else:
            text = text.rstrip("\n") + "\n\n" + section
        open(path, "w").write(text)


if __name__ == "__main__":
    main()
