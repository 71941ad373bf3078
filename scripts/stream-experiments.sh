#!/bin/sh
# Looking for the bypass's stream loss, measured: each experiment runs the
# same stream over plain loopback TCP and over the bypass, interleaved, in a
# sandbox of its own, and prints medians (GB/s) and bypass/loopback. Root.
#   rcvlowat   the receiver's SO_RCVLOWAT (fewer wake-ups per byte?)
#   rcvbuf     the receiver's SO_RCVBUF
#   counters   the sk_msg program with and without its per-message counters
set -eu
cd "$(dirname "$0")/.."
. scripts/lib.sh
BPFPLAN=${BPFPLAN:-$(pwd)/target/release/bpfplan}
TRAFFIC=${TRAFFIC:-$(pwd)/target/release/bpfplan-traffic}
ROUNDS=${ROUNDS:-5}
SECONDS_EACH=${SECONDS_EACH:-0.5}
SIZE=${SIZE:-4096}
work=$(mktemp -d)
export BPFPLAN_STATE_DIR="$work/state" BPFPLAN_AUDIT_LOG="$work/audit.jsonl"
vars=""
manifest=""
cleanup() {
    set +e
    # shellcheck disable=SC2086
    [ -n "$manifest" ] && "$BPFPLAN" destroy "$manifest" $vars >/dev/null 2>&1
    sandbox_remove
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
sandbox_create bpfplan-streams bypass plain
vars="--var cgroup=$SANDBOX_CGROUP/bypass --var pin_dir=$SANDBOX_PINS --build-dir $work/build"

apply() { # manifest
    # shellcheck disable=SC2086
    [ -n "$manifest" ] && "$BPFPLAN" destroy "$manifest" $vars > /dev/null
    manifest=$1
    # shellcheck disable=SC2086
    "$BPFPLAN" apply "$manifest" $vars > /dev/null
}
one() { # cgroup, extra measure args...
    cg=$1
    shift
    "$TRAFFIC" --cgroup "$SANDBOX_CGROUP/$cg" measure --transport tcp --workload stream \
        --size "$SIZE" --seconds "$SECONDS_EACH" "$@" | sed 's/.*"value":\([0-9.e+]*\).*/\1/'
}
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
row() { # label, extra measure args...
    label=$1
    shift
    : > "$work/l"; : > "$work/b"
    i=0
    while [ "$i" -lt "$ROUNDS" ]; do
        one plain "$@" >> "$work/l"
        one bypass "$@" >> "$work/b"
        i=$((i + 1))
    done
    l=$(median < "$work/l"); b=$(median < "$work/b")
    awk -v n="$label" -v l="$l" -v b="$b" 'BEGIN { printf "  %-34s loopback %5.2f GB/s   bypass %5.2f GB/s   %5.2fx\n", n, l / 1e9, b / 1e9, b / l }'
}

echo "$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores, kernel $(uname -r); $SIZE B writes, median of $ROUNDS x ${SECONDS_EACH}s"
apply manifests/bypass.toml
echo "receiver's SO_RCVLOWAT:"
for v in default 16384 65536; do
    if [ "$v" = default ]; then row "rcvlowat default (1)"; else row "rcvlowat $v" --rcvlowat "$v"; fi
done
echo "receiver's SO_RCVBUF:"
for v in 262144 4194304; do row "rcvbuf $v" --rcvbuf "$v"; done
echo "receiver's read size:"
for v in 4096 16384; do row "read size $v" --read-size "$v"; done
echo "the sk_msg program's per-message counters:"
row "with counters"
apply scripts/experiments/bypass-no-counters.toml
row "without counters"
