#!/bin/sh
# The entries scale curve: apply a manifest whose map declares N entries
# (100, 1,000, 10,000, 100,000) with bpfplan and with its exported sh script,
# in the same run; then, at 10,000, the time to change one entry, and at
# 100,000 the time of plan and status. Root; a cgroup and pin directory of
# its own. Each figure is the median of ROUNDS (one round at 100,000).
set -eu
cd "$(dirname "$0")/.."
. scripts/lib.sh
BPFPLAN=${BPFPLAN:-$(pwd)/target/release/bpfplan}
ROUNDS=${ROUNDS:-3}
SIZES=${SIZES:-100 1000 10000 100000}
work=$(mktemp -d)
# Records live on tmpfs, as they do by default (/run/bpfplan).
state=$(mktemp -d /run/bpfplan-bench.XXXXXX)
export BPFPLAN_STATE_DIR="$state/state"
vars=""
m="$work/entries.toml"
cleanup() {
    set +e
    # shellcheck disable=SC2086
    [ -f "$m" ] && "$BPFPLAN" destroy "$m" $vars >/dev/null 2>&1
    sandbox_remove
    rm -rf "$work" "$state"
}
trap cleanup EXIT INT TERM
sandbox_create bpfplan-entries
vars="--var pin_dir=$SANDBOX_PINS --build-dir $work/build"
src="$(pwd)/tests/fixtures/kernel/big_map.c"

ms() { s=$(date +%s%N); "$@" > /dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; e=$(date +%s%N); echo $(( (e - s) / 1000 )); }
median() { sort -n | awk '{ v[NR] = $1 } END { printf "%.1f", v[int((NR + 1) / 2)] / 1000 }'; }
# shellcheck disable=SC2086
run_bpfplan() { "$BPFPLAN" "$@" "$m" $vars; }

echo "entries applied (ms, median)   sh script   bpfplan cold build   bpfplan cached build"
for n in $SIZES; do
    entries_manifest "$src" "$n" > "$m"
    run_bpfplan plan --manifest-only --format sh > "$work/apply.sh"
    run_bpfplan plan --manifest-only --format sh --destroy > "$work/destroy.sh"
    rounds=$ROUNDS
    [ "$n" -ge 100000 ] && rounds=1
    : > "$work/sh"; : > "$work/cold"; : > "$work/warm"
    i=0
    while [ "$i" -lt "$rounds" ]; do
        ms sh "$work/apply.sh" >> "$work/sh"; sh "$work/destroy.sh" > /dev/null 2>&1
        rm -rf "$work/build"
        ms run_bpfplan apply >> "$work/cold"; run_bpfplan destroy > /dev/null
        ms run_bpfplan apply >> "$work/warm"; run_bpfplan destroy > /dev/null
        i=$((i + 1))
    done
    printf '%-30s %10s %20s %22s\n' "$n" "$(median < "$work/sh")" "$(median < "$work/cold")" "$(median < "$work/warm")"
    if [ "$n" -eq 10000 ]; then
        run_bpfplan apply > /dev/null
        entries_manifest "$src" "$n" changed > "$m"
        one=$(ms run_bpfplan apply)
        entries_manifest "$src" "$n" > "$m"
        back=$(ms run_bpfplan apply)
        echo "  one entry of 10000 changed: $(echo "$one" | median) ms, and back: $(echo "$back" | median) ms"
        run_bpfplan destroy > /dev/null
    fi
    if [ "$n" -ge 100000 ]; then
        echo "  plan of $n entries: $(ms run_bpfplan plan | median) ms"
        run_bpfplan apply > /dev/null
        echo "  status of $n entries (dumps the map once): $(ms run_bpfplan status | median) ms"
        echo "  no-op apply of $n entries: $(ms run_bpfplan apply | median) ms"
        run_bpfplan destroy > /dev/null
    fi
done
