#!/bin/sh
# Measure a replace of the running bypass (a new version of bpf/redir.c, as
# a deploy brings): how long it takes, and for how long the old and the new
# sockops program are both attached to the cgroup (from `apply --format
# json` events). Positive overlap means no moment without a sockops program,
# so no new connection misses the bypass. Root; works on a copy of the
# sources, in a cgroup and pin directory of its own. Median of ROUNDS.
set -eu
cd "$(dirname "$0")/.."
. scripts/lib.sh
BPFPLAN=${BPFPLAN:-$(pwd)/target/release/bpfplan}
ROUNDS=${ROUNDS:-9}
work=$(mktemp -d)
export BPFPLAN_STATE_DIR="$work/state"
vars=""
cleanup() {
    set +e
    # shellcheck disable=SC2086
    "$BPFPLAN" destroy "$work/manifests/bypass.toml" $vars >/dev/null 2>&1 || true
    sandbox_remove
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
sandbox_create bpfplan-replace
cp -r manifests bpf "$work/"
vars="--var cgroup=$SANDBOX_CGROUP --var pin_dir=$SANDBOX_PINS --build-dir $work/build"
# shellcheck disable=SC2086
"$BPFPLAN" apply "$work/manifests/bypass.toml" $vars > /dev/null
i=0
while [ "$i" -lt "$ROUNDS" ]; do
    echo "static __attribute__((used)) int bpfplan_version_$i(void) { return $i; }" >> "$work/bpf/redir.c"
    # shellcheck disable=SC2086
    "$BPFPLAN" apply "$work/manifests/bypass.toml" $vars --format json > "$work/events-$i.jsonl"
    i=$((i + 1))
done
python3 - "$work" "$ROUNDS" <<'PY'
import json, sys, statistics
work, rounds = sys.argv[1], int(sys.argv[2])
total, overlap, swap = [], [], []
for i in range(rounds):
    ev = [json.loads(l) for l in open(f"{work}/events-{i}.jsonl")]
    fin = {e["summary"]: e for e in ev if e["event"] == "finished"}
    start = {e["summary"]: e for e in ev if e["event"] == "started"}
    attach_new = next(e for s, e in fin.items() if s.startswith("attach program `bpf_sockops` to cgroup"))
    detach_old = next(e for s, e in fin.items() if s.startswith("detach program `bpf_sockops`"))
    first = next(e for e in ev if e["event"] == "started" and "~new" in e["summary"])
    last_move = [e for e in ev if e["event"] == "finished" and e["summary"].startswith("move ")][-1]
    total.append(ev[-1]["t_ms"] - first["t_ms"])
    overlap.append(detach_old["t_ms"] - attach_new["t_ms"])
    swap.append(last_move["t_ms"] - detach_old["t_ms"])
med = statistics.median
print(f"replace of a running bypass, median of {rounds}:")
print(f"  staging to done:                     {med(total):.1f} ms (min {min(total):.1f}, max {max(total):.1f})")
print(f"  both sockops programs attached for:  {med(overlap):.2f} ms (min {min(overlap):.2f}): no gap for new connections")
print(f"  old sockops off to new pins in place: {med(swap):.1f} ms")
PY
