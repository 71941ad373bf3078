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
    rm -f "/tmp/bpfplan-demo-$$.txt" "/tmp/bpfplan-demo-$$.stats"
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
echo "== what the bypass counted (a stream whose reader falls behind by more than its"
echo "   receive buffer goes back to TCP: backpressure, demoted_backpressure)"
# shellcheck disable=SC2086
"$BPFPLAN" status manifests/bypass.toml $vars | grep -E 'redirected_bytes|demoted' | tee "/tmp/bpfplan-demo-$$.stats" || true
echo
echo "== bpfplan destroy"
# shellcheck disable=SC2086
"$BPFPLAN" destroy manifests/bypass.toml $vars
echo
echo "== side by side"
cat "/tmp/bpfplan-demo-$$.txt"
# What this machine says: the bypass keeps the bytes it redirects off lo (a
# stream sent back to TCP by backpressure puts them there); whether it is
# faster depends on the workload and the CPU (see `bpfplan bench`).
# The backpressure demotions status counted, for the last word on the stream.
demoted=$(awk '$2 == "demoted_backpressure" { n += $3 } END { print n + 0 }' "/tmp/bpfplan-demo-$$.stats" 2>/dev/null || echo 0)
awk -v demoted="$demoted" '
    NR == 2 { lp = $(NF - 5); ls = $(NF - 1) }
    NR == 3 { bp = $(NF - 5); bs = $(NF - 1); blo = $(NF - 6) }
    END {
        rr = (lp - bp) / lp * 100; st = (bs - ls) / ls * 100
        printf "\non this machine: request/response p50 %s by %.0f%%; the 64 MiB stream %s by %.0f%%\n", \
            (rr >= 0 ? "faster" : "slower"), (rr < 0 ? -rr : rr), (st >= 0 ? "faster" : "slower"), (st < 0 ? -st : st)
        if (st < -5)
            print "streams lose here (one wake-up per message on the tcp_bpf path): keep bulk-transfer ports out with skip_ports"
        if (rr > 5)
            print "request/response gains: that is what the bypass is for"
        if (blo > 32 * 1048576 && demoted > 0)
            printf "the bypassed stream still crossed lo: status counted %d backpressure demotion(s), the bypass sending a connection back to TCP (its reader fell more than a receive buffer behind: backpressure, max_queued), as it is made to\n", demoted
        else if (blo > 32 * 1048576)
            print "the bypassed stream still crossed lo, and status counted no backpressure demotion: look at `bpfplan status` and `bpfplan doctor`"
        print "one run of each: `bpfplan bench manifests/bypass.toml` measures with rounds and says what to bypass"
    }' "/tmp/bpfplan-demo-$$.txt"
