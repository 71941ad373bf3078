#!/bin/sh
# bpfplan demo: the socket redirect bypass on a cgroup of its own.
# Shows the plan, measures same-host TCP without and with the bypass, then
# destroys everything it made. Run as root, after `make deps build`.
set -eu
cd "$(dirname "$0")/.."
. scripts/lib.sh
BPFPLAN=target/release/bpfplan
TRAFFIC=target/release/bpfplan-traffic

cg2=$(cgroup2_mount)
[ -n "$cg2" ] || { echo "demo: no cgroup v2 mount found" >&2; exit 1; }
ensure_bpffs

cgroup="$cg2/bpfplan-demo-$$"
pin_dir="/sys/fs/bpf/bpfplan-demo-$$"
vars="--var cgroup=$cgroup --var pin_dir=$pin_dir"

cleanup() {
    set +e
    # shellcheck disable=SC2086
    "$BPFPLAN" destroy manifests/bypass.toml $vars >/dev/null 2>&1 || true
    rmdir "$pin_dir" 2>/dev/null || true
    rmdir "$cgroup" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
mkdir "$cgroup" "$pin_dir"

echo "== the plan (bpfplan plan manifests/bypass.toml $vars)"
# shellcheck disable=SC2086
"$BPFPLAN" plan manifests/bypass.toml $vars
echo
echo "== same-host TCP in $cgroup, without the bypass"
"$TRAFFIC" --cgroup "$cgroup" compare --header --label "loopback TCP" | tee /tmp/bpfplan-demo-$$.txt
echo
echo "== bpfplan apply"
# shellcheck disable=SC2086
"$BPFPLAN" apply manifests/bypass.toml $vars
echo
echo "== the same traffic with the bypass"
"$TRAFFIC" --cgroup "$cgroup" compare --label "sockmap bypass" | tee -a /tmp/bpfplan-demo-$$.txt
echo
echo "== bpfplan destroy"
# shellcheck disable=SC2086
"$BPFPLAN" destroy manifests/bypass.toml $vars
echo
echo "== side by side"
cat /tmp/bpfplan-demo-$$.txt
rm -f /tmp/bpfplan-demo-$$.txt
