#!/usr/bin/env bash
# The benchmark suite, as one command: release builds, every gateway type (kernel,
# xdpmesh-tcp, xdpmesh-hbone) x every scenario (throughput, latency, connrate,
# concurrency, cpu) x 2 rounds alternating A B A B, then the verdict against the stored
# baseline (ratio-to-kernel figures, 10% threshold). Needs root (namespaces, XDP).
#
#   sudo scripts/bench.sh                      # bench-out/result.json + bench-out/*.png + verdict
#   sudo scripts/bench.sh --rounds 3           # extra arguments go to xdpmesh-bench
#   sudo scripts/bench.sh --gateways kernel,xdpmesh-tcp,external:benches/external/socat-relay.toml
#
# Refreshing the baseline (after a deliberate performance change; on the benchmark
# machine, with nothing else running): run the suite, read the table, then keep it:
#
#   sudo XDPMESH_BENCH_UPDATE_BASELINE=1 scripts/bench.sh    # copies the result over benches/baseline.json
#   # (same as: sudo scripts/bench.sh && cp bench-out/result.json benches/baseline.json)
#
# and commit benches/baseline.json with a note of why the figures moved.
#
# Environment: XDPMESH_BENCH_OUT (default bench-out), XDPMESH_BENCH_THRESHOLD (0.10),
# XDPMESH_BENCH_BASELINE (benches/baseline.json).
# Exit status: 0 no regression; 1 a regression beyond the threshold; 2 a scenario failed
# (a broken benchmark path) or the harness itself failed (compare too: an unreadable
# file, or results taken at different MTUs).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${XDPMESH_BENCH_OUT:-bench-out}"
threshold="${XDPMESH_BENCH_THRESHOLD:-0.10}"
baseline="${XDPMESH_BENCH_BASELINE:-benches/baseline.json}"

cargo build --release -p xdpmesh-control -p xdpmesh-dataplane -p xdpmesh-benches
bench=target/release/xdpmesh-bench

mkdir -p "$out"
rm -f "$out/result.json"
run_rc=0
"$bench" --out "$out/result.json" "$@" || run_rc=$?
if [ ! -f "$out/result.json" ]; then
    echo "bench.sh: xdpmesh-bench wrote no result (exit $run_rc)" >&2
    exit 2
fi

if [ "${XDPMESH_BENCH_UPDATE_BASELINE:-0}" = 1 ]; then
    if [ "$run_rc" -ne 0 ]; then
        echo "bench.sh: not updating the baseline: a scenario failed (exit $run_rc)" >&2
        exit 2
    fi
    cp "$out/result.json" "$baseline"
    echo "bench.sh: baseline updated: $baseline"
    exit 0
fi

cmp_rc=0
if [ -f "$baseline" ]; then
    echo
    echo "== compare with $baseline (threshold $threshold) =="
    "$bench" compare "$baseline" "$out/result.json" --threshold "$threshold" || cmp_rc=$?
else
    echo "bench.sh: no baseline at $baseline (see the top of this script to create one)" >&2
fi

if [ "$run_rc" -ne 0 ]; then
    echo "bench.sh: VERDICT: BROKEN (a scenario failed, see above)" >&2
    exit 2
fi
if [ "$cmp_rc" -eq 1 ]; then
    echo "bench.sh: VERDICT: REGRESSION (see above)" >&2
    exit 1
fi
if [ "$cmp_rc" -ne 0 ]; then
    echo "bench.sh: VERDICT: NOT COMPARED (compare failed, see above)" >&2
    exit 2
fi
echo "bench.sh: VERDICT: OK"
