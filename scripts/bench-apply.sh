#!/bin/sh
# Benchmark apply and destroy of manifests/bypass.toml against the exported
# sh script doing the same, on a cgroup and pin directory of its own (root).
# Prints the median of 7 runs of each.
set -eu
cd "$(dirname "$0")/.."
. scripts/lib.sh
BPFPLAN=${BPFPLAN:-target/release/bpfplan}
work=$(mktemp -d)
export BPFPLAN_STATE_DIR="$work/state"
vars=""
cleanup() {
    set +e
    # shellcheck disable=SC2086
    "$BPFPLAN" destroy manifests/bypass.toml $vars >/dev/null 2>&1 || true
    sandbox_remove
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
sandbox_create bpfplan-bench
vars="--var cgroup=$SANDBOX_CGROUP --var pin_dir=$SANDBOX_PINS --build-dir $work/build"
# shellcheck disable=SC2086
"$BPFPLAN" plan manifests/bypass.toml $vars --manifest-only --format sh > "$work/apply.sh"
# shellcheck disable=SC2086
"$BPFPLAN" plan manifests/bypass.toml $vars --manifest-only --format sh --destroy > "$work/destroy.sh"

ms() { s=$(date +%s%N); "$@" > /dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000 )); }
median() { sort -n | sed -n 4p | awk '{ printf "%.1f ms", $1 / 1000 }'; }

for _ in 1 2 3 4 5 6 7; do ms sh "$work/apply.sh" >> "$work/sh_apply"; ms sh "$work/destroy.sh" >> "$work/sh_destroy"; done
for _ in 1 2 3 4 5 6 7; do
    rm -rf "$work/build"
    # shellcheck disable=SC2086
    ms "$BPFPLAN" apply manifests/bypass.toml $vars >> "$work/cold"
    # shellcheck disable=SC2086
    ms "$BPFPLAN" apply manifests/bypass.toml $vars >> "$work/noop"
    # shellcheck disable=SC2086
    ms "$BPFPLAN" destroy manifests/bypass.toml $vars >> "$work/destroy"
    # shellcheck disable=SC2086
    ms "$BPFPLAN" apply manifests/bypass.toml $vars >> "$work/warm"
    # shellcheck disable=SC2086
    ms "$BPFPLAN" destroy manifests/bypass.toml $vars > /dev/null
done
echo "sh script apply (compiles):   $(median < "$work/sh_apply")"
echo "bpfplan apply, cold build:    $(median < "$work/cold")"
echo "bpfplan apply, cached build:  $(median < "$work/warm")"
echo "bpfplan apply, no changes:    $(median < "$work/noop")"
echo "sh script destroy:            $(median < "$work/sh_destroy")"
echo "bpfplan destroy (with waits): $(median < "$work/destroy")"
