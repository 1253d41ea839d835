#!/usr/bin/env python3
"""Statistics at the published scale: `tessera stats` over 1276 per-sample CSV files with 56
phenotype columns and 15-60 k rows each (about 48 M rows), within/between for every column;
and one k-means iteration over 55 M rows x 6 features. Peers run in the same process on the same
files: pandas (read_csv with the pyarrow engine + groupby) on a subset of files, extrapolated
per row, and scikit-learn's KMeans (one Lloyd iteration).

    bash bench/run.sh --tables [--files 1276] [--work DIR] [--reuse] [--cold] [--write]

--cold drops the page cache before tessera reads (needs root), so the files come from disk.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESSERA = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "tessera")
N_PHEN = 56


def generate(work, n_files, seed=1276):
    rng = np.random.default_rng(seed)
    os.makedirs(work, exist_ok=True)
    total = 0
    base = rng.uniform(1, 1000, N_PHEN)
    for f in range(n_files):
        n = int(rng.integers(15_000, 60_001))
        shift = rng.normal(1.0, 0.05, N_PHEN)
        cols = {"sample": pa.array([f"s{f:04d}"] * n), "label": pa.array(np.arange(1, n + 1, dtype=np.uint32))}
        for j in range(N_PHEN):
            v = base[j] * shift[j] * rng.lognormal(0.0, 0.3, n)
            cols[f"p{j:02d}"] = pa.array(np.round(v, 3))
        pacsv.write_csv(pa.table(cols), os.path.join(work, f"s{f:04d}.csv"))
        total += n
    return total


def du(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def drop_caches():
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def pandas_peer(files):
    import pandas as pd
    t = time.perf_counter()
    df = pd.concat([pd.read_csv(f, engine="pyarrow") for f in files], ignore_index=True)
    phen = [c for c in df.columns if c not in ("sample", "label")]
    g = df.groupby("sample")[phen]
    means, sds = g.mean(), g.std(ddof=1)
    within = (100 * sds / means.abs()).mean()
    between = 100 * means.std(ddof=1) / means.mean().abs()
    _ = 100 * within / between
    return time.perf_counter() - t, len(df)


def kmeans_bench(work, rows, threads):
    path = os.path.join(work, "kmeans.parquet")
    rng = np.random.default_rng(6)
    if not os.path.exists(path):
        centers = rng.normal(0, 3, (5, 6))
        lab = rng.integers(0, 5, rows)
        x = centers[lab] + rng.normal(0, 1, (rows, 6))
        tab = pa.table({"sample": pa.array((np.arange(rows) // 43_000).astype(np.uint32))}
                       | {f"f{j}": pa.array(x[:, j]) for j in range(6)})
        pq.write_table(tab, path, row_group_size=1 << 20)
        del x, tab
    cmd = [TESSERA, "stats", path, "--phenotypes", "f0,f1,f2,f3,f4,f5", "--kmeans", "5", "--seed", "1",
           "--threads", str(threads), "--json"]
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t
    j = json.loads(out)
    ours = j["kmeans"]["seconds_per_iteration"]
    # scikit-learn: one Lloyd iteration from k-means++-free random starting centres.
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits
    x = np.column_stack([pq.read_table(path, columns=[f"f{j}"]).column(0).to_numpy() for j in range(6)])
    x = (x - x.mean(0)) / x.std(0)
    init = x[rng.choice(rows, 5, replace=False)]
    with threadpool_limits(threads):
        t = time.perf_counter()
        KMeans(5, init=init, n_init=1, max_iter=1, algorithm="lloyd").fit(x)
        sk = time.perf_counter() - t
    return dict(rows=rows, ours_per_iter=ours, iterations=j["kmeans"]["iterations"], wall=wall, sklearn_one_iter=sk)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1276)
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "bench-tables"))
    ap.add_argument("--reuse", action="store_true", help="keep generated files from an earlier run")
    ap.add_argument("--peer-files", type=int, default=64, help="files pandas reads (extrapolated per row)")
    ap.add_argument("--kmeans-rows", type=int, default=55_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    csv_dir = os.path.join(a.work, "csv")
    if not (a.reuse and os.path.isdir(csv_dir) and len(os.listdir(csv_dir)) == a.files):
        shutil.rmtree(csv_dir, ignore_errors=True)
        t = time.perf_counter()
        generate(csv_dir, a.files)
        print(f"generated {a.files} files in {time.perf_counter() - t:.0f} s")
    files = sorted(os.path.join(csv_dir, f) for f in os.listdir(csv_dir))
    size = du(csv_dir)
    cold = drop_caches() if a.cold else False
    cmd = ["/usr/bin/time", "-v", TESSERA, "stats", csv_dir, "--threads", str(a.threads), "--out",
           os.path.join(a.work, "wb.parquet")]
    t = time.perf_counter()
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    ours = time.perf_counter() - t
    rss = next(int(l.split()[-1]) for l in r.stderr.splitlines() if "Maximum resident" in l) / 1024
    rows = int(r.stdout.split()[0])
    print(f"tessera stats: {a.files} files, {rows} rows, {size / 2**30:.1f} GiB, {ours:.1f} s "
          f"({'cold cache' if cold else 'page cache as left'}), peak RSS {rss:.0f} MiB")
    peer_t, peer_rows = pandas_peer(files[: a.peer_files])
    peer_full = peer_t * rows / peer_rows
    print(f"pandas (pyarrow engine) on {a.peer_files} files: {peer_t:.1f} s for {peer_rows} rows -> "
          f"{peer_full:.0f} s extrapolated; tessera is {peer_full / ours:.1f}x faster")
    km = kmeans_bench(a.work, a.kmeans_rows, a.threads)
    print(f"k-means: {km['rows']} rows x 6: {km['ours_per_iter']:.2f} s per iteration "
          f"({km['iterations']} iterations, {km['wall']:.0f} s in all incl. reading and k-means++); "
          f"scikit-learn one iteration {km['sklearn_one_iter']:.2f} s")
    if a.write:
        import pandas, sklearn
        md = os.path.join(ROOT, "BENCHMARKS.md")
        text = open(md).read()
        if "\n### Statistics" in text:
            text = text[: text.index("\n### Statistics")]
        text = text.rstrip("\n") + "\n"
        text += (
            f"\n### Statistics ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
            f"{a.threads} threads; pandas {pandas.__version__}, scikit-learn {sklearn.__version__}; bench/tables.py)\n\n"
            "| case | tessera | peer | ratio | target |\n|---|---|---|---|---|\n"
            f"| `tessera stats` on {a.files} CSV files × {N_PHEN} phenotypes, {rows / 1e6:.1f} M rows "
            f"({size / 2**30:.1f} GiB; {'cold page cache' if cold else 'files in page cache as left by the generator'}): "
            f"load + within/between/ICC/ANOVA for every column | {ours:.0f} s, peak RSS {rss:.0f} MiB | "
            f"pandas read_csv(pyarrow) + groupby: {peer_full:.0f} s (measured on {a.peer_files} files, extrapolated per row) "
            f"| {peer_full / ours:.1f}× | < 180 s |\n"
            f"| one k-means iteration, {km['rows'] / 1e6:.0f} M rows × 6 features, k = 5 | {km['ours_per_iter']:.2f} s "
            f"| scikit-learn KMeans(max_iter=1): {km['sklearn_one_iter']:.2f} s | {km['sklearn_one_iter'] / km['ours_per_iter']:.1f}× | < 2 s |\n"
        )
        open(md, "w").write(text)


if __name__ == "__main__":
    main()
