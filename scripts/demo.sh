#!/bin/sh
# bpfplan demo: the socket redirect bypass on a cgroup of its own.
# Shows the plan, measures same-host TCP without and with the bypass, then
# destroys everything it made. Run as root, after `make deps build`.
set -eu
cd "$(dirname "$0")/.."
BPFPLAN=target/release/bpfplan
TRAFFIC=target/release/bpfplan-traffic

# cgroup v2 and bpffs mounts, from mountinfo (the file system type follows " - ").
mount_of() {
    awk -v t="$1" '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i + 1) == t) print $5; break } }' /proc/self/mountinfo
}
cg2=$(mount_of cgroup2 | head -n 1)
[ -n "$cg2" ] || { echo "demo: no cgroup v2 mount found" >&2; exit 1; }
if ! mount_of bpf | grep -qx /sys/fs/bpf; then
    echo "demo: mounting bpffs at /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi

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
