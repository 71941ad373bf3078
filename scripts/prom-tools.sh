#!/usr/bin/env bash
# promtool and node_exporter, Debian's own builds (packages prometheus and
# prometheus-node-exporter, bookworm), unpacked under target/prom-tools of
# this checkout and not installed: installing them would start a Prometheus
# server and a node_exporter on this host. Reused while the versions in
# the stamp match; prints the directory holding the two binaries.
#
#   bash scripts/prom-tools.sh       # -> .../target/prom-tools/usr/bin
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/target/prom-tools
bin=$dir/usr/bin
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
versions() { echo "prometheus=$(candidate prometheus) node-exporter=$(candidate prometheus-node-exporter)"; }
want=$(versions)
if [ -x "$bin/promtool" ] && [ -x "$bin/prometheus-node-exporter" ] \
    && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$want" ]; then
    echo "$bin"
    exit 0
fi
# A fresh machine may not have read the package lists yet.
if echo "$want" | grep -qE '=(\(none\))?( |$)'; then
    apt-get update -qq >&2
    want=$(versions)
fi
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
# apt's sandbox user cannot write a root-only temporary directory: say so
# once, not for each file.
(cd "$dl" && apt-get download -qq prometheus prometheus-node-exporter 2>&1 | grep -v 'unsandboxed as root' >&2 || true)
rm -rf "$dir"
mkdir -p "$dir"
for deb in "$dl"/*.deb; do
    dpkg-deb -x "$deb" "$dir"
done
[ -x "$bin/promtool" ] && [ -x "$bin/prometheus-node-exporter" ] \
    || { echo "prom-tools: the packages hold no promtool or node_exporter" >&2; exit 1; }
echo "$want" > "$dir/stamp"
echo "$bin"
