#!/usr/bin/env bash
# Fuzzes every parser that takes outside input (issue #14; docs/fuzzing.md): builds the
# cargo-fuzz crate in fuzz/ with nightly, then runs each target for a bounded time, one at
# a time, from its seeds (fuzz/corpus/<target>/), its regressions
# (fuzz/regressions/<target>/) and its dictionary if it has one (fuzz/dict/<target>.dict).
# Fails on any crash, hang (-timeout) or oversized allocation (-rss_limit_mb,
# -malloc_limit_mb), and prints, per target, the executions (libFuzzer's final
# stat::number_of_executed_units) and the wall time.
#
# Environment: FUZZ_SECONDS (per target, default 20), FUZZ_TARGETS (space-separated
# subset, default all), FUZZ_TIMEOUT (seconds one input may take, default 10),
# FUZZ_RSS_MB (default 2048). Installs cargo-fuzz if it is missing; uses the nightly
# toolchain if there is one (see below).
#
# What a run grows stays in fuzz/work/ (not committed); crashes land in fuzz/artifacts/.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-20}
timeout=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-2048}

# libFuzzer's instrumentation needs nightly's -Z flags. A machine of this project's kind
# has one toolchain, stable, and no other can be fetched; stable ships the same sanitizer
# runtimes, so without nightly the fuzz build (and only it) unlocks them on stable.
if cargo +nightly --version >/dev/null 2>&1; then
    cargo=(cargo +nightly)
elif cargo --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain; building the fuzz targets with stable and RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
else
    echo "fuzz: cargo not found" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

start=$(date +%s)
"${cargo[@]}" fuzz build
echo "fuzz: built the targets in $(($(date +%s) - start)) s"

targets=${FUZZ_TARGETS:-$("${cargo[@]}" fuzz list)}
mkdir -p work/logs
passed=0
failed=0
failures=()
printf '%-16s %14s %10s %8s\n' target executions exec/s seconds
for t in $targets; do
    mkdir -p "work/$t"
    dirs=("work/$t" "corpus/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    extra=()
    [ -f "dict/$t.dict" ] && extra+=("-dict=dict/$t.dict")
    log="work/logs/$t.log"
    t0=$(date +%s%3N)
    rc=0
    "${cargo[@]}" fuzz run "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout="$timeout" \
        -rss_limit_mb="$rss_mb" -malloc_limit_mb="$rss_mb" \
        -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || rc=$?
    t1=$(date +%s%3N)
    # A target that failed before fuzzing has no stats: still counted and reported below.
    execs=$(grep -a '^stat::number_of_executed_units:' "$log" | awk '{print $2}' | tail -1 || true)
    rate=$(grep -a '^stat::average_exec_per_sec:' "$log" | awk '{print $2}' | tail -1 || true)
    ms=$((t1 - t0))
    printf '%-16s %14s %10s %6d.%d\n' "$t" "${execs:-?}" "${rate:-?}" $((ms / 1000)) $((ms % 1000 / 100))
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$t")
    fi
done

for t in "${failures[@]}"; do
    echo
    echo "fuzz: $t FAILED; from fuzz/work/logs/$t.log:"
    grep -a -E -A3 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to|No such file' \
        "work/logs/$t.log" | head -40 || true
done
echo
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
