#!/usr/bin/env bash
# The audit trail in the journal, for real: a systemd-journald of this
# test's own (in a private mount namespace, on tmpfs over /run and
# /var/log/journal, so the host's logging is never touched; this host has no
# journald), bpfplan apply and destroy of the bypass on a cgroup and pin
# directory of the test's own, then
#   - `journalctl -o json` holds every audit line with its structured fields
#     (deployment, command, argv, outcome, exit code, user, host), and the
#     same count of lines as the audit log file;
#   - with BPFPLAN_AUDIT_SYSLOG=SOCKET the lines go as RFC 5424 syslog to
#     journald's own syslog socket instead, structured data and all.
# Everything is removed on exit, even on failure.
#
#   bash tests/journal/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. scripts/lib.sh

test_prelude journal
test_binaries
JOURNALD=/lib/systemd/systemd-journald
[ -x "$JOURNALD" ] || fail "no $JOURNALD (package systemd)"
command -v journalctl >/dev/null || fail "no journalctl (package systemd)"

if [ -z "${BPFPLAN_JOURNAL_NS:-}" ]; then
    # Into a mount namespace of our own, where /run is ours.
    exec env BPFPLAN_JOURNAL_NS=1 unshare --mount --propagation private bash "$0" "$@"
fi

MANIFEST=$ROOT/manifests/bypass.toml
work=$(mktemp -d /tmp/bpfplan-journal.XXXXXX)
SANDBOX_CGROUP=""
journald_pid=""
export BPFPLAN_STATE_DIR="$work/state" BPFPLAN_AUDIT_LOG="$work/log/audit.jsonl" BPFPLAN_CACHE_DIR="$work/cache"

cleanup() {
    local rc=$?
    set +e
    [ -n "$SANDBOX_CGROUP" ] && "$BIN" destroy "$MANIFEST" "${vars[@]}" >/dev/null 2>&1
    [ -n "$journald_pid" ] && kill "$journald_pid" 2>/dev/null && wait "$journald_pid" 2>/dev/null
    test_cleanup "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=2755 tmpfs /var/log/journal
"$JOURNALD" > "$work/journald.log" 2>&1 &
journald_pid=$!
for _ in $(seq 1 100); do
    [ -S /run/systemd/journal/socket ] && [ -S /run/systemd/journal/dev-log ] && break
    kill -0 "$journald_pid" 2>/dev/null || { cat "$work/journald.log"; fail "systemd-journald exited"; }
    sleep 0.05
done
[ -S /run/systemd/journal/socket ] || fail "systemd-journald made no socket"
ok "systemd-journald $(journalctl --version | awk 'NR==1 {print $2}') of the test's own (pid $journald_pid)"
# Without a flush (systemd-journal-flush is a unit), journald keeps the
# journal in /run/log/journal.
journal() {
    journalctl -q --directory=/run/log/journal -o json "$@" 2>/dev/null || true
}

sandbox_create bpfplan-journal
vars=(--var "cgroup=$SANDBOX_CGROUP" --var "pin_dir=$SANDBOX_PINS" --build-dir "$work/build")
"$BIN" apply "$MANIFEST" "${vars[@]}" > "$work/apply.log" 2>&1 || { cat "$work/apply.log"; fail "apply"; }
deployment=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["deployment"])' "$BPFPLAN_AUDIT_LOG")

# journalctl flushes what journald holds; poll until the lines are there.
lines_in_file=$(wc -l < "$BPFPLAN_AUDIT_LOG")
# Up to 30 s: the deployment's own lines, counted (not any line).
for _ in $(seq 1 300); do
    journal SYSLOG_IDENTIFIER=bpfplan > "$work/journal.json"
    [ "$(grep -c "\"BPFPLAN_DEPLOYMENT\":\"$deployment\"" "$work/journal.json" || true)" -ge "$lines_in_file" ] && break
    sleep 0.1
done
journal_failed() {
    echo "journal: $(wc -l < "$work/journal.json") bpfplan entries read; journald said:" >&2
    tail -n 20 "$work/journald.log" >&2
    journalctl --directory=/run/log/journal --header 2>&1 | head -n 20 >&2 || true
    ls -la /run/log/journal /var/log/journal >&2 2>&1 || true
    fail "the journal does not hold the audit trail"
}
python3 - "$work/journal.json" "$BPFPLAN_AUDIT_LOG" "$deployment" "$(cat /proc/sys/kernel/hostname)" <<'EOF' || journal_failed
import json, sys
journal = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
audit = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
deployment, host = sys.argv[3], sys.argv[4]
mine = [e for e in journal if e.get("BPFPLAN_DEPLOYMENT") == deployment]
assert len(mine) == len(audit), f"{len(mine)} journal entries, {len(audit)} audit lines"
for e, a in zip(mine, audit):
    assert e["BPFPLAN_PHASE"] == a["phase"], (e, a)
    assert e["BPFPLAN_COMMAND"] == "apply", e
    assert e["BPFPLAN_USER"] == "root" and e["BPFPLAN_UID"] == "0", e
    assert e["BPFPLAN_HOST"] == host, e
    assert e["BPFPLAN_TIME"] == a["time"], (e, a)
    if a.get("exit") is not None:
        assert e["BPFPLAN_EXIT"] == str(a["exit"]), (e, a)
    if a.get("argv"):
        assert e["BPFPLAN_ARGV"].startswith(a["argv"][0]), (e, a)
    assert e["PRIORITY"] in ("3", "4", "6"), e
# Every bpftool command that changed the kernel is there with its argv and
# outcome, and the run ends with its finish line.
ends = [e for e in mine if e["BPFPLAN_PHASE"] == "end"]
assert any("bpftool" in e.get("BPFPLAN_ARGV", "") and e.get("BPFPLAN_OUTCOME") == "done" for e in ends), ends
finish = mine[-1]
assert finish["BPFPLAN_PHASE"] == "finish" and finish["BPFPLAN_OUTCOME"] == "changed" and finish["BPFPLAN_EXIT"] == "0", finish
print(f"ok: {len(mine)} journal entries match the {len(audit)} audit lines")
EOF
ok "the journal holds every audit line of apply, with its fields"

# Syslog (RFC 5424) when asked: to journald's own syslog socket.
before=$(wc -l < "$BPFPLAN_AUDIT_LOG")
BPFPLAN_AUDIT_SYSLOG=/run/systemd/journal/dev-log "$BIN" destroy "$MANIFEST" "${vars[@]}" > "$work/destroy.log" 2>&1 \
    || { cat "$work/destroy.log"; fail "destroy"; }
want=$(( $(wc -l < "$BPFPLAN_AUDIT_LOG") - before ))
for _ in $(seq 1 100); do
    journal _TRANSPORT=syslog > "$work/syslog.json"
    [ "$(grep -c 'bpfplan@32473' "$work/syslog.json")" -ge "$want" ] && break
    sleep 0.1
done
python3 - "$work/syslog.json" "$deployment" "$want" <<'EOF' || fail "syslog lines missing"
import json, sys
entries = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
mine = [e for e in entries if f'deployment="{sys.argv[2]}"' in e.get("MESSAGE", "")]
assert len(mine) == int(sys.argv[3]), f"{len(mine)} syslog lines, {sys.argv[3]} audit lines"
assert all('command="destroy"' in e["MESSAGE"] for e in mine), mine[0]
assert any('phase="finish"' in e["MESSAGE"] and 'exit="0"' in e["MESSAGE"] for e in mine), mine[-1]
assert all(e.get("SYSLOG_FACILITY") == "10" for e in mine), mine[0]
print(f"ok: {len(mine)} RFC 5424 lines with structured data")
EOF
ok "with BPFPLAN_AUDIT_SYSLOG, destroy's lines arrive as RFC 5424 syslog"
ok "journal test passed"
