#!/usr/bin/env bash
# Instructions per frame of the engine, counted by callgrind over the in-process
# benchmark (xdpmesh-engine-bench): only inside Engine::on_frame and Engine::poll, so
# the simulated pods' own TCP does not count. Hardware counters do not exist on the
# project's VMs; instruction counts are exact and repeatable, unlike timings.
#
#   benches/callgrind.sh [--mib N]          # prints one line per protocol, and JSON
#
# Needs valgrind (apt-get install valgrind) and a release build of the benchmark
# (built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
mib=4
[ "${1:-}" = "--mib" ] && mib="$2"
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 2; }
cargo build --release -q -p xdpmesh-benches --bin xdpmesh-engine-bench
bin=target/release/xdpmesh-engine-bench
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for proto in tcp hbone; do
    for scenario in bulk connrate; do
        args=(--scenario "$scenario" --protocol "$proto" --mib "$mib" --conns 100)
        json=$(valgrind --tool=callgrind --callgrind-out-file="$out/cg.$proto.$scenario" \
            --toggle-collect='*Engine*on_frame*' --toggle-collect='*Engine*poll*' \
            "$bin" "${args[@]}" 2>"$out/log.$proto.$scenario")
        ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out/cg.$proto.$scenario" | head -n 1)
        [ -n "$ir" ] || ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out/cg.$proto.$scenario" | head -n 1)
        frames=$(printf '%s' "$json" | sed -n 's/.*"engine_rx_frames":\([0-9]*\).*/\1/p')
        per=$(( ir / frames ))
        echo "$proto $scenario: $ir instructions in the engines, $frames frames received by them: $per instructions per frame"
        printf '{"protocol":"%s","scenario":"%s","engine_instructions":%s,"engine_rx_frames":%s,"instructions_per_frame":%s}\n' \
            "$proto" "$scenario" "$ir" "$frames" "$per"
    done
done
