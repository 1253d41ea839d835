#!/usr/bin/env python3
"""Random forests on scikit-learn's handwritten digits: tessera against scikit-learn and PySpark.

    bash bench/run.sh --classify [--seeds 5] [--trees 100] [--write]

The 1,797 8×8 digit images as a pixel table (testdata/classify/digits.csv, written by
testdata/make_digits.py: pixels normalised to [0, 1]). For each seed, each tool trains a random
forest of the same size (--trees, √64 = 8 features per split, trees grown until pure or, for
PySpark, to its deepest allowed depth 30) on a stratified 80/20 split and reports the hold-out
accuracy; time is wall time of training plus predicting, end to end for tessera (process start,
reading the CSV, writing the model). PySpark MLlib runs in local mode on all cores
(`local[*]`); its session start is timed separately. tessera and scikit-learn draw their own
stratified splits; PySpark uses `sampleBy` per class (stratified, not exactly 20 %).
--write appends the table to BENCHMARKS.md.
"""
import argparse
import json
import os
import platform
import subprocess
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
DIGITS = os.path.join(ROOT, "testdata", "classify", "digits.csv")


def load():
    rows = np.genfromtxt(DIGITS, delimiter=",", skip_header=1, dtype=str)
    return rows[:, 2:].astype(float), rows[:, 1].astype(int)


def run_tessera(seed, trees, tmp):
    exe = os.path.join(TARGET, "release", "tessera")
    model = os.path.join(tmp, f"digits-{seed}.json")
    t = time.perf_counter()
    out = subprocess.run([exe, "train", DIGITS, "--label", "class", "--model", model, "--trees", str(trees),
                          "--seed", str(seed), "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["accuracy"], time.perf_counter() - t


def run_sklearn(x, y, seed, trees):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split
    t = time.perf_counter()
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    rf = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=-1).fit(xtr, ytr)
    acc = float((rf.predict(xte) == yte).mean())
    return acc, time.perf_counter() - t


def spark_session():
    from pyspark.sql import SparkSession
    t = time.perf_counter()
    s = (SparkSession.builder.master("local[*]").appName("digits").config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "2g").getOrCreate())
    s.sparkContext.setLogLevel("ERROR")
    return s, time.perf_counter() - t


def run_spark(spark, x, y, seed, trees):
    from pyspark.ml.classification import RandomForestClassifier
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.linalg import Vectors
    t = time.perf_counter()
    df = spark.createDataFrame([(Vectors.dense(r), float(c)) for r, c in zip(x, y)], ["features", "label"])
    train = df.sampleBy("label", {float(c): 0.8 for c in range(10)}, seed=seed)
    test = df.subtract(train)
    rf = RandomForestClassifier(numTrees=trees, maxDepth=30, featureSubsetStrategy="sqrt", seed=seed, maxBins=32)
    model = rf.fit(train)
    acc = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(model.transform(test))
    return acc, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--no-spark", action="store_true")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    x, y = load()
    results = {"tessera": [], "scikit-learn": [], "PySpark MLlib": []}
    spark, spark_start = (None, None) if a.no_spark else spark_session()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds):
            results["tessera"].append(run_tessera(seed, a.trees, tmp))
            results["scikit-learn"].append(run_sklearn(x, y, seed, a.trees))
            if spark is not None:
                results["PySpark MLlib"].append(run_spark(spark, x, y, seed, a.trees))
    if spark is not None:
        spark.stop()
    t_ref = np.mean([t for _, t in results["tessera"]])
    lines = ["| tool | hold-out accuracy, mean (min–max) over seeds | time per seed (s) | × tessera's time |",
             "|---|---|---|---|"]
    for tool, r in results.items():
        if not r:
            continue
        acc = [a_ for a_, _ in r]
        t = float(np.mean([t for _, t in r]))
        lines.append(f"| {tool} | {100 * np.mean(acc):.2f} % ({100 * min(acc):.2f}–{100 * max(acc):.2f}) | {t:.3f} | {t / t_ref:.1f} |")
    table = "\n".join(lines)
    note = (f"\n{a.seeds} seeds, {a.trees} trees, 1,797 rows × 64 pixels, 10 classes; "
            f"PySpark session start {spark_start:.1f} s, not included.\n" if spark_start is not None else "\n")
    print(table + note)
    if a.write:
        head = (f"\n### Random forests on the digits (bench/classify.py; {time.strftime('%Y-%m-%d')}, "
                f"{platform.machine()}, {os.cpu_count()} cores)\n\n")
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as f:
            f.write(head + table + "\n" + note)


if __name__ == "__main__":
    main()
