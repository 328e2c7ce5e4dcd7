#!/usr/bin/env bash
# The demo on the embedded default config: four network namespaces (client pod,
# gateway A, gateway B, server pod), xdpmesh on both gateways, real curl / iperf3 /
# echo traffic through them; prints a result table and tears everything down.
#
#   bash scripts/demo.sh [xdpmesh-demo options, e.g. --gateway kernel --size-mib 16]   # as root
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p xdpmesh-control -p xdpmesh-dataplane -p xdpmesh-netns
exec target/release/xdpmesh-demo "$@"
