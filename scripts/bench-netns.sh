#!/bin/sh
# Benchmark a connection to a peer in another network namespace (over a veth
# pair, 198.18.0.0/30 from the benchmarking range) from a cgroup with the
# bypass applied and from one without, interleaved. The bypass should leave
# such a connection alone: its throughput should match. Root; cleans up.
set -eu
cd "$(dirname "$0")/.."
. scripts/lib.sh
BPFPLAN=${BPFPLAN:-target/release/bpfplan}
TRAFFIC=${TRAFFIC:-target/release/bpfplan-traffic}
ROUNDS=${ROUNDS:-7}
SECONDS_EACH=${SECONDS_EACH:-1}
ns="bpfplan-bench-$$"
hif="bbh$(($$ % 100000))"
pif="bbn$(($$ % 100000))"
work=$(mktemp -d)
export BPFPLAN_STATE_DIR="$work/state"
vars=""
cleanup() {
    set +e
    if [ -n "${server:-}" ]; then kill "$server" 2>/dev/null; fi
    # shellcheck disable=SC2086
    "$BPFPLAN" destroy manifests/bypass.toml $vars >/dev/null 2>&1 || true
    ip netns del "$ns" 2>/dev/null || true
    ip link del "$hif" 2>/dev/null || true
    sandbox_remove
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
sandbox_create bpfplan-netns bypass plain
root=$SANDBOX_CGROUP
vars="--var cgroup=$root/bypass --var pin_dir=$SANDBOX_PINS --build-dir $work/build"
ip netns add "$ns"
ip link add "$hif" type veth peer name "$pif"
ip link set "$pif" netns "$ns"
ip addr add 198.18.0.1/30 dev "$hif"
ip link set "$hif" up
ip netns exec "$ns" ip addr add 198.18.0.2/30 dev "$pif"
ip netns exec "$ns" ip link set "$pif" up
ip netns exec "$ns" ip link set lo up
mkfifo "$work/in"
ip netns exec "$ns" "$TRAFFIC" listen --bind 198.18.0.2:0 --sink < "$work/in" > "$work/listen" &
server=$!
exec 3> "$work/in"
while ! grep -q port "$work/listen" 2>/dev/null; do sleep 0.05; done
port=$(sed 's/.*"port":\([0-9]*\).*/\1/' "$work/listen")
# shellcheck disable=SC2086
"$BPFPLAN" apply manifests/bypass.toml $vars > /dev/null
one() { # cgroup
    "$TRAFFIC" --cgroup "$1" measure --transport tcp --workload stream --size 65536 \
        --seconds "$SECONDS_EACH" --connect "198.18.0.2:$port" |
        sed 's/.*"value":\([0-9.e+]*\).*/\1/'
}
i=0
while [ "$i" -lt "$ROUNDS" ]; do
    one "$root/plain" >> "$work/plain"
    one "$root/bypass" >> "$work/bypass"
    i=$((i + 1))
done
exec 3>&-
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
p=$(median < "$work/plain")
b=$(median < "$work/bypass")
awk -v p="$p" -v b="$b" -v n="$ROUNDS" 'BEGIN {
    printf "peer in a network namespace, 64 KiB writes, median of %d:\n", n
    printf "  without bypass: %.2f GB/s\n  with bypass:    %.2f GB/s (%.3fx)\n", p / 1e9, b / 1e9, b / p
}'
