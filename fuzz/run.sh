#!/usr/bin/env bash
# Runs fuzz targets with the limits every run uses (here and in CI):
#   bash fuzz/run.sh [--keep-going] SECONDS [TARGET...]      (all targets when none is named)
# Each target first runs every input of its committed corpus (fuzz/corpus/<target>) and of its
# regressions (fuzz/regressions/<target>: inputs that once failed, kept after the fix), then
# fuzzes for SECONDS from them, writing what it finds to a scratch folder, so a run never
# changes the committed files; new inputs it finds are in $FUZZ_WORK/<target>
# (default: a temporary folder, removed unless FUZZ_WORK is set). A crash, a leak, a timeout
# or an allocation past the limits stops the target and fails the script; libFuzzer writes the
# input to fuzz/artifacts/<target>/.
#
# --keep-going (long runs): libFuzzer's fork mode, which records a failing input and goes on;
# the script then lists what was found instead of failing. Its last status line per target
# (executions, coverage, corpus, crashes/OOMs/timeouts) is printed.
#
# The limits: -timeout=10 (seconds an input may take), -malloc_limit_mb=256 (one allocation;
# the targets read with a 64 MiB decoded-size limit, tessera_fuzz::LIMIT), -rss_limit_mb=2560.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=()
if [ "${1:-}" = "--keep-going" ]; then
    keep=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
    shift
fi
secs="${1:?usage: fuzz/run.sh [--keep-going] SECONDS [TARGET...]}"
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
work="${FUZZ_WORK:-}"
if [ -z "$work" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
fi
cargo +nightly fuzz build
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    printf '\n== fuzz %s for %s s (%s)\n' "$t" "$secs" "$(date +%H:%M:%S)"
    seeds=("fuzz/corpus/$t")
    [ -d "fuzz/regressions/$t" ] && seeds+=("fuzz/regressions/$t")
    rc=0
    cargo +nightly fuzz run "$t" "$work/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=10 -malloc_limit_mb=256 -rss_limit_mb=2560 -print_final_stats=1 "${keep[@]}" \
        >"$work/$t.log" 2>&1 || rc=$?
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE|INFO: seed corpus)" "$work/$t.log" || true
    if [ ${#keep[@]} -gt 0 ]; then
        grep -E "^#[0-9]+: cov:" "$work/$t.log" | tail -n 1
        ls "fuzz/artifacts/$t" 2>/dev/null | sed "s|^|found: fuzz/artifacts/$t/|" || true
        continue
    fi
    if [ "$rc" -ne 0 ]; then
        tail -n 80 "$work/$t.log"
        echo "fuzz target $t failed (exit $rc)"
        exit "$rc"
    fi
done
