#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine (or CI runner) for building xdpmesh and running its
# network-namespace tests. Idempotent: installs only what is missing (apt-get update runs
# only then) and mounts bpffs only if it is not mounted.
#
#   sudo scripts/setup.sh
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: must run as root (it installs packages and mounts bpffs); try: sudo $0" >&2
    exit 1
fi

# package -> a command (or file) that proves it is installed
declare -A probe=(
    [clang]="cmd:clang"
    [libelf-dev]="file:/usr/include/libelf.h"
    [m4]="cmd:m4"
    [zlib1g-dev]="file:/usr/include/zlib.h"
    [libpcap-dev]="file:/usr/include/pcap/dlt.h"   # libxdp-sys (xsk-rs) configure needs it
    [pkg-config]="cmd:pkg-config"
    [iperf3]="cmd:iperf3"
    [socat]="cmd:socat"
    [tcpdump]="cmd:tcpdump"
    [iproute2]="cmd:ip"
    [ethtool]="cmd:ethtool"
    [iptables]="cmd:iptables"     # doctor tests: raw-table rpfilter rules
    [nftables]="cmd:nft"
    [tshark]="cmd:tshark"         # capture tests read the pcapng with it
    [curl]="cmd:curl"
    [util-linux]="cmd:nsenter"
    [python3]="cmd:python3"
    [iputils-ping]="cmd:ping"
    [coreutils]="cmd:sha256sum"
    [prometheus]="cmd:prometheus"   # operator_endpoints test: a real server scrapes 15020
    [openssl]="cmd:openssl"
)

missing=()
for pkg in "${!probe[@]}"; do
    kind="${probe[$pkg]%%:*}"
    what="${probe[$pkg]#*:}"
    case "$kind" in
        cmd) command -v "$what" >/dev/null 2>&1 || missing+=("$pkg") ;;
        file) [ -e "$what" ] || missing+=("$pkg") ;;
    esac
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # iperf3's postinst asks whether to start a daemon; answer no.
    echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "setup.sh: all packages present"
fi

if ! mountpoint -q /sys/fs/bpf; then
    echo "setup.sh: mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
else
    echo "setup.sh: bpffs already mounted at /sys/fs/bpf"
fi

# Python HTTP/2 library for the independent HBONE test peers (tests/peers/hbone_*.py).
if python3 -c 'import h2' 2>/dev/null; then
    echo "setup.sh: python h2 present"
else
    echo "setup.sh: installing python h2"
    python3 -m pip --version >/dev/null 2>&1 || {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update && apt-get install -y --no-install-recommends python3-pip
    }
    python3 -m pip install --quiet 'h2>=4,<5' 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages 'h2>=4,<5'
fi

mkdir -p /run/netns /run/xdpmesh /sys/fs/bpf/xdpmesh
echo "setup.sh: done"
