#!/bin/sh
# The scale curve of issue #23: a cgroup_skb program whose hash map declares
# N entries (u32 -> u8; 10,000, 100,000 and 1,000,000 by default), applied
# by the sh script `plan --format sh` exports and by bpfplan, in the same
# rounds (interleaved), then bpfplan's no-op apply, status, plan, a change
# of one entry (applied from the manifest, then as a saved plan: plan
# --out, show, apply --plan) and destroy. Each figure is the median of ROUNDS runs: wall
# seconds and peak resident memory (/usr/bin/time). Nothing is attached;
# root; a pin directory, record and audit log of its own, removed at the end.
set -eu
cd "$(dirname "$0")/.."
. scripts/lib.sh
BPFPLAN=${BPFPLAN:-$(pwd)/target/release/bpfplan}
ROUNDS=${ROUNDS:-3}
SIZES=${SIZES:-10000 100000 1000000}
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (package time)" >&2; exit 1; }
work=$(mktemp -d)
state=$(mktemp -d /run/bpfplan-scale.XXXXXX)
export BPFPLAN_STATE_DIR="$state/state" BPFPLAN_AUDIT_LOG="$state/audit.jsonl" BPFPLAN_AUDIT_JOURNAL=0
m="$work/entries.toml"
vars=""
cleanup() {
    set +e
    # shellcheck disable=SC2086
    [ -f "$m" ] && "$BPFPLAN" destroy "$m" $vars >/dev/null 2>&1
    [ -n "${SANDBOX_PINS:-}" ] && rm -f "$SANDBOX_PINS"/* && rmdir "$SANDBOX_PINS"
    rm -rf "$work" "$state"
}
trap cleanup EXIT INT TERM
ensure_bpffs
SANDBOX_PINS="/sys/fs/bpf/bpfplan-scale-$$"
mkdir -m 0700 "$SANDBOX_PINS"
vars="--var pin_dir=$SANDBOX_PINS --build-dir $work/build"
src="$(pwd)/tests/fixtures/kernel/big_map.c"

# measure FILE CMD...: append "seconds kilobytes" of one run of CMD to FILE.
measure() {
    out=$1; shift
    /usr/bin/time -f "%e %M" -o "$work/t" "$@" > /dev/null 2> "$work/err" || {
        echo "failed: $*" >&2; cat "$work/err" >&2; exit 1; }
    tail -n 1 "$work/t" >> "$out"
}
# measure_bp FILE VERB: measure bpfplan VERB on the manifest.
# shellcheck disable=SC2086
measure_bp() { measure "$1" "$BPFPLAN" "$2" "$m" $vars; }
# median FILE COLUMN
median() { awk -v c="$2" '{ print $c }' "$1" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
# shellcheck disable=SC2086
bp() { verb=$1; shift; "$BPFPLAN" "$verb" "$m" $vars "$@"; }

echo "# bpfplan scale curve: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores, kernel $(uname -r), bpftool $(bpftool version | head -n 1 | awk '{ print $2 }')"
echo "# median of $ROUNDS rounds; seconds (peak MB); the sh script and bpfplan apply interleaved in each round"
printf '%-10s %16s %16s %7s %14s %14s %14s %14s %14s %14s %14s %14s\n' entries "sh script" "bpfplan apply" ratio "no-op apply" status plan "one changed" "plan --out" show "apply --plan" destroy
for n in $SIZES; do
    entries_manifest "$src" "$n" > "$m"
    entries_manifest "$src" "$n" changed > "$work/changed.toml"
    bp plan --manifest-only --format sh > "$work/apply.sh"
    bp plan --manifest-only --format sh --destroy > "$work/destroy.sh"
    for f in sh apply noop status plan one out show applyplan destroy; do : > "$work/$f"; done
    bp apply > /dev/null   # the object built once: every round finds it up to date
    bp destroy > /dev/null
    i=0
    while [ "$i" -lt "$ROUNDS" ]; do
        measure "$work/sh" sh "$work/apply.sh"
        sh "$work/destroy.sh" > /dev/null 2>&1
        measure_bp "$work/apply" apply
        measure_bp "$work/noop" apply
        measure_bp "$work/status" status
        measure_bp "$work/plan" plan
        # One entry's value changes in the same manifest, then changes back.
        cp "$m" "$work/orig.toml"
        cp "$work/changed.toml" "$m"
        measure_bp "$work/one" apply
        cp "$work/orig.toml" "$m"
        # The same change as a saved plan: made, shown, applied; then back.
        cp "$work/changed.toml" "$m"
        # shellcheck disable=SC2086
        measure "$work/out" "$BPFPLAN" plan "$m" $vars --out "$work/saved.json"
        measure "$work/show" "$BPFPLAN" show "$work/saved.json"
        measure "$work/applyplan" "$BPFPLAN" apply --plan "$work/saved.json"
        rm -f "$work/saved.json"
        cp "$work/orig.toml" "$m"
        bp apply > /dev/null
        measure_bp "$work/destroy" destroy
        i=$((i + 1))
    done
    cell() { printf '%s (%s)' "$(median "$work/$1" 1)" "$(mb "$(median "$work/$1" 2)")"; }
    ratio=$(awk -v a="$(median "$work/apply" 1)" -v s="$(median "$work/sh" 1)" 'BEGIN { printf "%.2fx", a / s }')
    printf '%-10s %16s %16s %7s %14s %14s %14s %14s %14s %14s %14s %14s\n' "$n" "$(cell sh)" "$(cell apply)" "$ratio" \
        "$(cell noop)" "$(cell status)" "$(cell plan)" "$(cell one)" "$(cell out)" "$(cell show)" \
        "$(cell applyplan)" "$(cell destroy)"
done
