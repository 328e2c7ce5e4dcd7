#!/usr/bin/env bash
# The test command (README, CI): format and lint gates, then every test in the
# workspace. Network-namespace, XDP verifier and HBONE peer tests need root; without it
# each prints a loud SKIPPED banner and returns. XDPMESH_REQUIRE_ROOT=1 (set by .ci/run)
# makes each of those a failure instead ("XDPMESH_REQUIRE_ROOT=1: <test> needs root but
# runs as uid N"), so a run cannot pass by skipping; unset, empty or 0 is off.
#
#   bash scripts/test.sh                            # as root
#   XDPMESH_REQUIRE_ROOT=1 bash scripts/test.sh     # as root, as CI
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
    bash scripts/setup.sh
elif [ -n "${XDPMESH_REQUIRE_ROOT:-}" ] && [ "${XDPMESH_REQUIRE_ROOT}" != 0 ]; then
    echo "==== test.sh: not root and XDPMESH_REQUIRE_ROOT=${XDPMESH_REQUIRE_ROOT}: the network-namespace and XDP tests will FAIL ====" >&2
else
    echo "==== test.sh: not root: the network-namespace and XDP tests will be SKIPPED ====" >&2
fi

cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
cargo clippy --workspace --all-targets -- -D warnings
# The namespace tests spawn these binaries (cargo does not build them for another
# crate's tests).
cargo build -p xdpmesh-control -p xdpmesh-dataplane
# Namespace tests each build a topology with two gateways and push real traffic; on 2
# cores, one at a time (two at once made HBONE tests flaky under load: see the note
# in issue 3). XDPMESH_TEST_THREADS=2 runs two.
cargo test --workspace -- --test-threads "${XDPMESH_TEST_THREADS:-1}"
# The fuzz targets (fuzz/, its own workspace) over their committed corpora: every
# target's assertions on every seed, no AFL needed (fuzz/README.md).
CARGO_TARGET_DIR="$PWD/target/fuzz" FUZZ_JOBS="${FUZZ_JOBS:-2}" bash fuzz/run.sh smoke
