#!/usr/bin/env bash
# Benchmarks tessera against scipy, scikit-image, cc3d, SimpleITK and edt on the same volume.
#   bash bench/run.sh [--size N] [--repeats R] [--write]
#   bash bench/run.sh --big [--shape Z Y X] [--memory SIZE] [--compare] [--zarr] [--write]   (bench/big.py)
#   bash bench/run.sh --tables [--files N] [--reuse] [--cold] [--write]               (bench/tables.py)
#   bash bench/run.sh --samples [--counts 10,1000,10000] [--kinds tiny,small] [--write] (bench/samples.py)
#   bash bench/run.sh --classify [--seeds 5] [--trees 100] [--write]                  (bench/classify.py)
#   bash bench/run.sh --crops [--rows 50000] [--photos 300] [--keep DIR]              (bench/crops.py)
#   bash bench/run.sh --shapes [--size 256] [--repeats 3] [--write]                   (bench/shapes.py)
#   bash bench/run.sh --watch [--rates 1,10,60,120,180] [--scans 60] [--write]         (bench/watch.py)
#   bash bench/run.sh --profile [--shapes 256 384x768x768] [--runs 5] [--write]      (bench/profile.py; perf, valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}"
VENV="${TESSERA_BENCH_VENV:-$HOME/.cache/tessera-bench-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    numpy scipy scikit-image scikit-learn tifffile imagecodecs pandas pyarrow connected-components-3d SimpleITK edt zarr
cargo build --release --quiet --bin tessera --example bench_ops --example floor
if [ "${1:-}" = "--tables" ]; then
    shift
    exec "$VENV/bin/python" bench/tables.py "$@"
fi
if [ "${1:-}" = "--samples" ]; then
    shift
    exec "$VENV/bin/python" bench/samples.py "$@"
fi
if [ "${1:-}" = "--classify" ]; then
    shift
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check pyspark
    exec "$VENV/bin/python" bench/classify.py "$@"
fi
if [ "${1:-}" = "--crops" ]; then
    shift
    exec "$VENV/bin/python" bench/crops.py "$@"
fi
if [ "${1:-}" = "--shapes" ]; then
    shift
    exec "$VENV/bin/python" bench/shapes.py "$@"
fi
if [ "${1:-}" = "--watch" ]; then
    shift
    exec "$VENV/bin/python" bench/watch.py "$@"
fi
if [ "${1:-}" = "--profile" ]; then
    shift
    exec "$VENV/bin/python" bench/profile.py "$@"
fi
if [ "${1:-}" = "--big" ]; then
    shift
    exec "$VENV/bin/python" bench/big.py "$@"
fi
exec "$VENV/bin/python" bench/bench.py "$@"
