#!/bin/sh
# bpfplan demo: the socket redirect bypass on a cgroup of its own.
# Shows the plan, measures same-host TCP without and with the bypass, then
# destroys everything it made. Run as root, after `make deps build`.
set -eu
cd "$(dirname "$0")/.."
. scripts/lib.sh
BPFPLAN=target/release/bpfplan
TRAFFIC=target/release/bpfplan-traffic

vars=""
cleanup() {
    set +e
    # shellcheck disable=SC2086
    "$BPFPLAN" destroy manifests/bypass.toml $vars >/dev/null 2>&1 || true
    sandbox_remove
    rm -f "/tmp/bpfplan-demo-$$.txt"
}
trap cleanup EXIT INT TERM
sandbox_create bpfplan-demo
cgroup=$SANDBOX_CGROUP
vars="--var cgroup=$cgroup --var pin_dir=$SANDBOX_PINS"

echo "== the plan (bpfplan plan manifests/bypass.toml $vars)"
# shellcheck disable=SC2086
"$BPFPLAN" plan manifests/bypass.toml $vars
echo
echo "== same-host TCP in $cgroup, without the bypass"
"$TRAFFIC" --cgroup "$cgroup" compare --header --label "loopback TCP" | tee "/tmp/bpfplan-demo-$$.txt"
echo
echo "== bpfplan apply"
# shellcheck disable=SC2086
"$BPFPLAN" apply manifests/bypass.toml $vars
echo
echo "== the same traffic with the bypass"
"$TRAFFIC" --cgroup "$cgroup" compare --label "sockmap bypass" | tee -a "/tmp/bpfplan-demo-$$.txt"
echo
echo "== bpfplan destroy"
# shellcheck disable=SC2086
"$BPFPLAN" destroy manifests/bypass.toml $vars
echo
echo "== side by side"
cat "/tmp/bpfplan-demo-$$.txt"
