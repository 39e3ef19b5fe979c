#!/usr/bin/env bash
# Installs the system packages that the lab, the tests, the demo and the benchmarks need.
# Idempotent, non-interactive; run as root on Debian 12 (bookworm) or later.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export PATH="${HOME:-/root}/.cargo/bin:${PATH}"

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps.sh: must run as root (it calls apt-get install)" >&2
    exit 1
fi

packages=(
    wireguard-tools   # wg, wg-quick
    wireguard-go      # reference userspace peer
    iperf3            # TCP/UDP transfers
    babeld            # reference Babel router (interop tests, demo islands)
    bird2             # second Babel implementation (interop tests)
    iputils-ping      # ping
    iproute2          # ip netns, veth
    netcat-openbsd    # nc
    ethtool           # offload settings in benches
    tcpdump           # captures for the replay tests
    prometheus        # promtool (metrics lint) and the dashboard test's Prometheus
    adduser           # the package's postinst (installed by the package test)
    binutils          # strip, readelf (the package)
    procps            # sysctl, pgrep
    python3           # small helper scripts
    ca-certificates
    curl
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    echo "install-deps.sh: installing ${missing[*]}"
    apt-get update
    # babeld and bird2 come with services: the lab runs its own daemons inside network
    # namespaces, so keep the packages from starting any in the root namespace.
    policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "install-deps.sh: system packages already installed"
fi

if ! command -v boringtun-cli >/dev/null 2>&1; then
    echo "install-deps.sh: installing boringtun-cli with cargo"
    cargo install boringtun-cli --locked
fi

echo "install-deps.sh: done ($(wg --version 2>&1 | head -n1); $(boringtun-cli --version 2>&1 | head -n1))"
