#!/usr/bin/env python3
"""DuckDB reads a watched study's tables while `tessera watch` rewrites them: scans are dropped
into a folder one by one (written in pieces, then a sentinel), and a reader takes the merged
table and the statistics as fast as it can meanwhile, each file through one open (what a
reader that opens a file gets), and queries those bytes with DuckDB. Every read must be a
complete Parquet file once the files exist (a reader never sees a half-written file), the
samples it sees only grow, and at the end every scan is in the table. Exits 1 naming what went
wrong.

(Each file is taken through one open because DuckDB opens a file more than once per query, to
bind the schema and then to scan: a query over a path that is replaced between those opens can
mix two complete versions, whatever the writer does. A reader that must not retry copies the
file first, as here.)

    check_watch_live.py TESSERA PIPELINE IMAGES_FOLDER WORK
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import duckdb


def main(tessera, pipeline, images, work):
    src = [os.path.join(images, f) for f in ("nuclei2d.tif", "neuron3d.tif", "nuclei3d.tif")]
    folder, out = os.path.join(work, "in"), os.path.join(work, "out")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(folder)
    n = 12
    proc = subprocess.Popen([tessera, "watch", pipeline, "--dir", folder, "--out", out, "--sentinel", ".done",
                             "--poll", "0.05", "--json", "--until", str(n)], stdout=subprocess.PIPE, text=True)
    table = os.path.join(out, "tables", "shape.parquet")
    stats = os.path.join(out, "stats", "shape_within_between.parquet")
    done = threading.Event()
    seen = {"reads": 0, "errors": [], "counts": []}

    snap = os.path.join(work, "snapshot")
    os.makedirs(snap)

    def taken(path, name):
        """The file's bytes through one open, set down where nothing replaces them."""
        with open(path, "rb") as f:
            data = f.read()
        copy = os.path.join(snap, name)
        with open(copy, "wb") as f:
            f.write(data)
        return copy

    def reader():
        con = duckdb.connect()
        while not done.is_set():
            if not os.path.exists(stats):
                time.sleep(0.005)
                continue
            try:
                t, s = taken(table, "shape.parquet"), taken(stats, "stats.parquet")
                k = con.execute(f"select count(distinct sample) from '{t}'").fetchone()[0]
                con.execute(f"select phenotype, within_cv_pct_lo, within_cv_pct_hi from '{s}'").fetchall()
                seen["reads"] += 1
                if not seen["counts"] or seen["counts"][-1] != k:
                    seen["counts"].append(k)
            except Exception as e:  # a half-written file would land here
                seen["errors"].append(str(e))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(n):
        data = open(src[i % 3], "rb").read()
        path = os.path.join(folder, f"scan_{i:02d}.tif")
        with open(path, "wb") as f:
            for k in range(4):
                f.write(data[k * len(data) // 4:(k + 1) * len(data) // 4])
                f.flush()
                time.sleep(0.02)
        open(path + ".done", "w").close()
        time.sleep(0.15)
    events = [json.loads(line) for line in proc.stdout]
    proc.wait()
    done.set()
    t.join()
    problems = []
    if proc.returncode != 0:
        problems.append(f"tessera watch exited {proc.returncode}")
    if seen["errors"]:
        problems.append(f"{len(seen['errors'])} of {seen['reads'] + len(seen['errors'])} reads failed: {seen['errors'][0]}")
    if seen["counts"] != sorted(seen["counts"]):
        problems.append(f"the samples in the table did not only grow: {seen['counts']}")
    final = duckdb.connect().execute(f"select count(distinct sample) from '{table}'").fetchone()[0]
    if final != n:
        problems.append(f"{final} samples in the final table, {n} expected")
    publications = sum(1 for e in events if e["event"] == "published")
    if problems:
        print("\n".join(problems))
        return 1
    print(f"DuckDB read the watched study {seen['reads']} times during {publications} publications "
          f"(samples seen: {seen['counts']}); no read failed; {final} samples at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
