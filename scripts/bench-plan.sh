#!/bin/sh
# Benchmark `bpfplan plan` as a whole process: bypass.toml, then generated
# manifests of 250 to 2000 programs (each with a map and a cgroup attach),
# to show the cost grows linearly. Prints the median of 15 runs.
set -eu
cd "$(dirname "$0")/.."
. scripts/lib.sh
BPFPLAN=${BPFPLAN:-target/release/bpfplan}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > "$work/prog.o"

median_ms() { # command...
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
        s=$(date +%s%N)
        "$@" > /dev/null
        e=$(date +%s%N)
        echo $(( (e - s) / 1000 ))
    done | sort -n | sed -n 8p | awk '{ printf "%.2f", $1 / 1000 }'
}

gen() { # N
    echo '[vars]'
    echo 'pin_dir = "/sys/fs/bpf/bench"'
    i=0
    while [ "$i" -lt "$1" ]; do
        printf '[[program]]\nname = "p%d"\nobject = "prog.o"\ntype = "cgroup/skb"\npin = "${pin_dir}/p%d"\n' "$i" "$i"
        printf '[[map]]\nname = "m%d"\nprogram = "p%d"\npin = "${pin_dir}/m%d"\n' "$i" "$i" "$i"
        printf '[[attach]]\nprogram = "p%d"\ntype = "egress"\ncgroup = "/sys/fs/cgroup/bench/c%d"\n' "$i" "$i"
        i=$((i + 1))
    done
}

cg2=$(cgroup2_mount)
echo "plan of manifests/bypass.toml: $(median_ms "$BPFPLAN" plan manifests/bypass.toml --var "cgroup=${cg2:-/sys/fs/cgroup}/bench") ms"
for n in 250 500 1000 2000; do
    gen "$n" > "$work/m$n.toml"
    if [ -n "$cg2" ]; then sed -i "s#/sys/fs/cgroup/bench#$cg2/bench#" "$work/m$n.toml"; fi
    echo "plan of $n programs: $(median_ms "$BPFPLAN" plan "$work/m$n.toml") ms"
done
