#!/bin/sh
# What reading the receiver through bpf_probe_read_kernel (bpf/redir.c now,
# which Linux 6.1 loads) costs against the kfunc bpf_cast_to_kern_ctx and
# plain loads (redir.c before, Linux 6.2 and later only): `bpfplan bench`
# of both, interleaved, ROUNDS pairs (default 7), 64 B request/response and
# 64 KiB streams. Prints the machine, then each pair's bypass/loopback
# ratios and their medians. Root; the old source is taken from git
# (commit edd2ef9), in a directory of this script's own.
#
#   sh scripts/bench-probe-read.sh [ROUNDS] | tee docs/bench-probe-read.txt
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${BPFPLAN_BIN:-$ROOT/target/release/bpfplan}
rounds=${1:-7}
work=$(mktemp -d /tmp/bpfplan-probe-read.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 0700 "$work"
for v in kfunc probe; do
    mkdir -p "$work/$v"
    cp -r manifests bpf "$work/$v/"
done
git show edd2ef9:bpf/redir.c > "$work/kfunc/bpf/redir.c"
export BPFPLAN_AUDIT_LOG="$work/audit.jsonl" BPFPLAN_STATE_DIR="$work/state" BPFPLAN_CACHE_DIR="$work/cache"
i=1
while [ "$i" -le "$rounds" ]; do
    for v in kfunc probe; do
        "$BIN" bench "$work/$v/manifests/bypass.toml" --workload rr,stream --sizes 64,64k \
            --rounds 3 --format json > "$work/$v-$i.json" 2> "$work/$v-$i.err" \
            || { cat "$work/$v-$i.err" >&2; exit 1; }
    done
    i=$((i + 1))
done
python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def rows(v, i):
    d = json.load(open(f"{work}/{v}-{i}.json"))
    return d["machine"], {r["workload"]: r for r in d["rows"]}
machine, _ = rows("probe", 1)
print(f"{machine}; bpfplan bench --workload rr,stream --sizes 64,64k --rounds 3, {rounds} interleaved pairs")
print("bypass/loopback (rr: latency, lower is better; stream: throughput, higher is better)")
names = sorted(rows("probe", 1)[1])
for name in names:
    k = [rows("kfunc", i)[1][name]["bypass_vs_loopback"] for i in range(1, rounds + 1)]
    p = [rows("probe", i)[1][name]["bypass_vs_loopback"] for i in range(1, rounds + 1)]
    print(f"{name:16} kfunc {' '.join(f'{x:.2f}' for x in k)}  median {statistics.median(k):.2f}")
    print(f"{'':16} probe {' '.join(f'{x:.2f}' for x in p)}  median {statistics.median(p):.2f}")
PY
