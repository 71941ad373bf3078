#!/usr/bin/env bash
# The Prometheus metrics, for real: the bypass applied on a cgroup and pin
# directory of this script's own, traffic through it, then
#   - `status --format prometheus` passes Debian's `promtool check metrics`;
#   - `status --textfile DIR` writes DIR/bpfplan-DEPLOYMENT.prom, which a real
#     node_exporter (--collector.textfile.directory, on 127.0.0.1 only) serves
#     without a scrape error, with the counters the traffic moved;
#   - drift shows as bpfplan_in_sync 0, the last apply's time and result come
#     from the audit log.
# Everything (node_exporter, sandbox, state) is removed on exit, even on
# failure. promtool and node_exporter come from scripts/prom-tools.sh.
#
#   bash tests/prometheus/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. scripts/lib.sh

test_prelude prometheus
test_binaries
TRAFFIC=${BPFPLAN_TRAFFIC:-$ROOT/target/debug/bpfplan-traffic}
[ -x "$TRAFFIC" ] || fail "no bpfplan-traffic at $TRAFFIC (cargo build -p bpfplan-traffic)"
MANIFEST=$ROOT/manifests/bypass.toml
TOOLS=$(bash scripts/prom-tools.sh) || fail "scripts/prom-tools.sh"
PROMTOOL=$TOOLS/promtool
EXPORTER=$TOOLS/prometheus-node-exporter
ok "promtool $("$PROMTOOL" --version 2>&1 | awk 'NR==1 {print $3}'), node_exporter $("$EXPORTER" --version 2>&1 | awk 'NR==1 {print $3}')"

work=$(mktemp -d /tmp/bpfplan-prometheus.XXXXXX)
SANDBOX_CGROUP=""
exporter_pid=""
export BPFPLAN_STATE_DIR="$work/state" BPFPLAN_AUDIT_LOG="$work/log/audit.jsonl" BPFPLAN_CACHE_DIR="$work/cache"

cleanup() {
    local rc=$?
    set +e
    [ -n "$exporter_pid" ] && kill "$exporter_pid" 2>/dev/null && wait "$exporter_pid" 2>/dev/null
    [ -n "$SANDBOX_CGROUP" ] && "$BIN" destroy "$MANIFEST" "${vars[@]}" >/dev/null 2>&1
    test_cleanup "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sandbox_create bpfplan-prom
vars=(--var "cgroup=$SANDBOX_CGROUP" --var "pin_dir=$SANDBOX_PINS" --build-dir "$work/build")
"$BIN" apply "$MANIFEST" "${vars[@]}" > "$work/apply.log" 2>&1 || { cat "$work/apply.log"; fail "apply"; }
ok "applied on $SANDBOX_CGROUP"
"$TRAFFIC" --cgroup "$SANDBOX_CGROUP" stream --bytes 1048576 > "$work/stream.json" \
    || fail "the stream through the bypass"
grep -q '"intact":true' "$work/stream.json" || fail "the stream was not intact: $(cat "$work/stream.json")"

# The exposition itself, checked by promtool (format and lint), with a
# window of the programs' run statistics while a stream runs.
"$BIN" status "$MANIFEST" "${vars[@]}" --format prometheus --stats 2 > "$work/metrics.prom" 2> "$work/status.err" &
status_pid=$!
for _ in $(seq 1 100); do grep -q "counting the programs' runs" "$work/status.err" && break; sleep 0.05; done
"$TRAFFIC" --cgroup "$SANDBOX_CGROUP" rr --count 500 > /dev/null || fail "rr through the bypass"
wait "$status_pid" || fail "status --format prometheus --stats 2 exited $?: $(cat "$work/status.err")"
grep -q "^bpfplan_program_window_runs{deployment=\"[^\"]*\",program=\"bpf_redir\",id=\"[0-9]*\"} [1-9]" "$work/metrics.prom" \
    || fail "no runs of bpf_redir in the --stats window: $(grep window "$work/metrics.prom")"
"$PROMTOOL" check metrics < "$work/metrics.prom" > "$work/promtool.log" 2>&1 \
    || { cat "$work/promtool.log"; fail "promtool check metrics"; }
ok "promtool check metrics passes ($(grep -c '^bpfplan_' "$work/metrics.prom") series)"
deployment=$(sed -n 's/^bpfplan_in_sync{deployment="\([^"]*\)"} 1$/\1/p' "$work/metrics.prom")
[ -n "$deployment" ] || fail "no bpfplan_in_sync 1 series: $(head -5 "$work/metrics.prom")"
for want in \
    "bpfplan_program_info{deployment=\"$deployment\",program=\"bpf_redir\"" \
    "bpfplan_map_info{deployment=\"$deployment\",map=\"sock_ops_map\"" \
    "bpfplan_map_max_entries{deployment=\"$deployment\",map=\"sock_ops_map\"} 65535" \
    "bpfplan_map_stat_total{deployment=\"$deployment\",map=\"bypass_stats\",stat=\"redirected_bytes\"}" \
    "bpfplan_last_apply_success{deployment=\"$deployment\",outcome=\"changed\"} 1" \
    "bpfplan_host_tcp_memory_bytes{deployment=\"$deployment\",level=\"high\"}"; do
    grep -qF "$want" "$work/metrics.prom" || fail "no \`$want\` in the metrics"
done
redirected=$(sed -n 's/^bpfplan_map_stat_total{.*stat="redirected_bytes"} \([0-9]*\)$/\1/p' "$work/metrics.prom")
# (Backpressure as shipped may send a fast stream back to TCP part way.)
[ "${redirected:-0}" -ge 1 ] || fail "redirected_bytes is ${redirected:-none} after a stream through the bypass"
ok "deployment $deployment: in sync, programs, maps, counters (redirected_bytes $redirected), last apply"

# The textfile collector: a file renamed into place, served by node_exporter.
textdir=$work/textfile
mkdir -m 0755 "$textdir"
"$BIN" status "$MANIFEST" "${vars[@]}" --textfile "$textdir" || fail "status --textfile exited $?"
prom=$textdir/bpfplan-$deployment.prom
[ -f "$prom" ] || fail "no $prom: $(ls -la "$textdir")"
[ "$(stat -c %a "$prom")" = 644 ] || fail "$prom is mode $(stat -c %a "$prom"), node_exporter runs as another user"
[ "$(ls -A "$textdir" | wc -l)" = 1 ] || fail "more than the .prom file in $textdir: $(ls -A "$textdir")"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$EXPORTER" --web.listen-address="127.0.0.1:$port" --collector.disable-defaults \
    --collector.textfile --collector.textfile.directory="$textdir" > "$work/exporter.log" 2>&1 &
exporter_pid=$!
scrape() { python3 -c "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$port/metrics', timeout=5).read().decode())"; }
for _ in $(seq 1 100); do
    scrape > "$work/scraped.txt" 2>/dev/null && break
    kill -0 "$exporter_pid" 2>/dev/null || { cat "$work/exporter.log"; fail "node_exporter exited"; }
    sleep 0.1
done
grep -q '^node_textfile_scrape_error 0' "$work/scraped.txt" \
    || { grep textfile "$work/scraped.txt"; cat "$work/exporter.log"; fail "node_exporter could not read the file"; }
grep -qF "bpfplan_in_sync{deployment=\"$deployment\"} 1" "$work/scraped.txt" \
    || fail "node_exporter does not serve bpfplan_in_sync"
grep -q "^bpfplan_map_stat_total{.*stat=\"redirected_bytes\".*} [1-9]" "$work/scraped.txt" \
    || fail "node_exporter does not serve the redirected bytes"
ok "node_exporter on 127.0.0.1:$port serves the textfile ($(grep -c '^bpfplan_' "$work/scraped.txt") bpfplan series)"

# The Grafana dashboard in contrib/ loads as JSON and queries only metrics
# bpfplan exports (every name is served above, --stats window included).
python3 - "$ROOT/contrib/grafana/bpfplan.json" "$work/metrics.prom" "$work/scraped.txt" <<'EOF' \
    || fail "contrib/grafana/bpfplan.json"
import json, re, sys
dash = json.load(open(sys.argv[1]))
served = set()
for f in sys.argv[2:]:
    served |= {m.group(1) for m in re.finditer(r"^(bpfplan_[a-z_]+)\{", open(f).read(), re.M)}
exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
assert exprs and all(p["targets"] for p in dash["panels"]), "a panel without a query"
used = {n for e in exprs for n in re.findall(r"\b(bpfplan_[a-z_]+)", e)}
missing = sorted(used - served)
assert not missing, f"the dashboard queries metrics bpfplan does not export: {missing}"
print(f"ok: the dashboard's {len(dash['panels'])} panels query {len(used)} metrics, all exported")
EOF

# Drift, seen by the next scrape: a hand detach.
bpftool cgroup detach "$SANDBOX_CGROUP" sock_ops pinned "$SANDBOX_PINS/bpf_sockops" || fail "detach by hand"
rc=0
"$BIN" status "$MANIFEST" "${vars[@]}" --textfile "$textdir" || rc=$?
[ "$rc" = 2 ] || fail "status --textfile exited $rc on drift, not 2"
scrape > "$work/scraped.txt" || fail "scrape after the drift"
grep -qF "bpfplan_in_sync{deployment=\"$deployment\"} 0" "$work/scraped.txt" || fail "drift not served"
grep -q "^bpfplan_drift_findings{deployment=\"$deployment\"} [1-9]" "$work/scraped.txt" || fail "no drift findings served"
ok "a hand detach is served as bpfplan_in_sync 0 (exit 2)"
"$BIN" apply "$MANIFEST" "${vars[@]}" > "$work/apply2.log" 2>&1 || { cat "$work/apply2.log"; fail "repair"; }
"$BIN" destroy "$MANIFEST" "${vars[@]}" > "$work/destroy.log" 2>&1 || { cat "$work/destroy.log"; fail "destroy"; }
ok "prometheus test passed"
