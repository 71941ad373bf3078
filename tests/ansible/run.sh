#!/usr/bin/env bash
# The Ansible integration, for real, against this host (root): the bpfplan
# module (contrib/ansible/library) driven by ansible-playbook on localhost,
# the rollout playbook (a failing canary stops it; a good one rolls through),
# the status playbook, and the module as an installed collection. Everything
# runs on a cgroup and a pin directory of this script's own, with bpfplan's
# state, audit log and cache in a temporary directory; all of it is removed
# on exit, even on failure.
#
#   bash tests/ansible/run.sh
#
# BPFPLAN_BIN: the bpfplan binary (default target/release/bpfplan).
# BPFPLAN_VENV: the virtualenv (scripts/fleet-venv.sh creates or reuses it).
# BPFPLAN_TEST_LOGS: a directory to keep the ansible-playbook logs in.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. scripts/lib.sh

test_prelude ansible
test_binaries
MANIFEST=$ROOT/manifests/bypass.toml
REJECTED=$ROOT/tests/fixtures/kernel/rejected.toml

t_start=$(now)
VENV=$(bash scripts/fleet-venv.sh) || fail "scripts/fleet-venv.sh"
ok "virtualenv $VENV (ansible-core $("$VENV/bin/python" -c 'import ansible.release as r; print(r.__version__)'), $("$VENV/bin/python" --version)) in $(since "$t_start")"
t_tests=$(now)

work=$(mktemp -d /tmp/bpfplan-ansible.XXXXXX)
SANDBOX_CGROUP=""

cleanup() {
    local rc=$?
    set +e
    if [ -n "$SANDBOX_CGROUP" ]; then
        BPFPLAN_STATE_DIR="$work/state" BPFPLAN_AUDIT_LOG="$work/log/audit.jsonl" BPFPLAN_CACHE_DIR="$work/cache" \
            "$BIN" destroy "$MANIFEST" --build-dir "$work/build" \
            --var "cgroup=$SANDBOX_CGROUP" --var "pin_dir=$SANDBOX_PINS" >/dev/null 2>&1
    fi
    test_cleanup "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sandbox_create bpfplan-ansible
CG=$SANDBOX_CGROUP
PINS=$SANDBOX_PINS
ok "sandbox: cgroup $CG, pins $PINS, state in $work"

# Ansible: nothing from ~/.ansible or an ansible.cfg around; the managed
# host's Python is the system one, as on a real Debian host.
interp=/usr/bin/python3
[ -x "$interp" ] || interp=$(command -v python3)
cat > "$work/ansible.cfg" <<EOF
[defaults]
home = $work/ansible-home
local_tmp = $work/ansible-local
remote_tmp = $work/ansible-remote
retry_files_enabled = false
nocolor = true
interpreter_python = $interp
EOF
export ANSIBLE_CONFIG="$work/ansible.cfg"
# Nothing of Ansible's under the real home either.
export HOME="$work/home"
mkdir -p "$HOME"
unset ANSIBLE_LIBRARY ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS
# bpfplan's own environment reaches it only through the playbooks' environment keyword.
unset BPFPLAN_STATE_DIR BPFPLAN_AUDIT_LOG BPFPLAN_CACHE_DIR
PB=$VENV/bin/ansible-playbook

python3 - "$work/vars.json" <<EOF
import json, sys
json.dump({"bpfplan_bin": "$BIN", "manifest": "$MANIFEST", "rejected_manifest": "$REJECTED",
           "cgroup": "$CG", "pin_dir": "$PINS", "work": "$work"}, open(sys.argv[1], "w"))
EOF

# Kernel facts from the shell, independent of Ansible.
attached_count() { bpftool -j cgroup show "$CG" | python3 -c 'import json,sys; t=sys.stdin.read().strip(); print(len(json.loads(t)) if t else 0)'; }
pin_count() { find "$PINS" -mindepth 1 | wc -l; }
status_rc() {
    local rc=0
    BPFPLAN_STATE_DIR="$work/state" BPFPLAN_AUDIT_LOG="$work/log/audit.jsonl" BPFPLAN_CACHE_DIR="$work/cache" \
        "$BIN" status "$MANIFEST" --build-dir "$work/build" --var "cgroup=$CG" --var "pin_dir=$PINS" >/dev/null 2>&1 || rc=$?
    echo "$rc"
}
recap() { sed -n '/^PLAY RECAP/,$p' "$1"; }
show_log() { echo "----- $1" >&2; tail -n 80 "$1" >&2; echo "-----" >&2; }

# 1. The module's documentation parses.
"$VENV/bin/ansible-doc" -M contrib/ansible/library bpfplan > "$work/doc.txt" 2>&1 || { cat "$work/doc.txt"; fail "ansible-doc bpfplan"; }
grep -q "build_dir" "$work/doc.txt" || fail "ansible-doc shows no build_dir option"
for pb in contrib/ansible/playbooks/rollout.yml contrib/ansible/playbooks/status.yml; do
    ANSIBLE_LIBRARY="$ROOT/contrib/ansible/library" "$PB" -i localhost, --syntax-check "$pb" > "$work/syntax.log" 2>&1 || { cat "$work/syntax.log"; fail "syntax of $pb"; }
done
ok "ansible-doc bpfplan; rollout.yml and status.yml pass --syntax-check"

# 2. The lifecycle, asserted task by task inside the playbook.
t=$(now)
if ! ANSIBLE_LIBRARY="$ROOT/contrib/ansible/library" "$PB" -i localhost, -c local \
    tests/ansible/lifecycle.yml -e "@$work/vars.json" > "$work/lifecycle.log" 2>&1; then
    show_log "$work/lifecycle.log"; fail "lifecycle.yml"
fi
recap "$work/lifecycle.log" | grep -Eq 'localhost +: .*failed=0 .*ignored=3' \
    || { show_log "$work/lifecycle.log"; fail "lifecycle.yml: expected no failure and exactly the 3 expected ones ignored"; }
asserts=$(grep -c '^TASK \[Assert' "$work/lifecycle.log")
[ "$asserts" -ge 19 ] || fail "lifecycle.yml ran only $asserts assert tasks"
grep '^TASK \[Assert' "$work/lifecycle.log" | sed 's/^TASK \[Assert /ok: module: /; s/\] \**$//'
[ "$(attached_count)" = 0 ] && [ "$(pin_count)" = 0 ] || fail "lifecycle left something behind"
ok "lifecycle.yml: $asserts assert tasks passed in $(since "$t")"

# 3. The rollout: two hosts (both this machine) in the group bpfplan.
inventory() { # $1: file, $2: extra canary var line or ""
    cat > "$1" <<EOF
bpfplan:
  vars:
    ansible_connection: local
    bpfplan_vars: {cgroup: "$CG", pin_dir: "$PINS"}
  hosts:
    canary:
$2
    second:
EOF
}
rollout_vars() {
    python3 - "$work/rollout-vars.json" <<EOF
import json, sys
json.dump({"bpfplan_manifest": "$MANIFEST", "bpfplan_binary": "$BIN", "bpfplan_become": False,
           "bpfplan_build_dir": "$work/build",
           "bpfplan_environment": {"BPFPLAN_STATE_DIR": "$work/state",
                                   "BPFPLAN_AUDIT_LOG": "$work/log/audit.jsonl",
                                   "BPFPLAN_CACHE_DIR": "$work/cache"}}, open(sys.argv[1], "w"))
EOF
}
rollout_vars
inventory "$work/bad.yml" "      bpfplan_vars: {cgroup: \"$CG\", pin_dir: \"$PINS\", no_such_var: \"1\"}"
inventory "$work/good.yml" ""

t=$(now)
rc=0
ANSIBLE_LIBRARY="$ROOT/contrib/ansible/library" "$PB" -i "$work/bad.yml" contrib/ansible/playbooks/rollout.yml \
    -e "@$work/rollout-vars.json" > "$work/rollout-bad.log" 2>&1 || rc=$?
[ "$rc" != 0 ] || { show_log "$work/rollout-bad.log"; fail "a rollout whose canary fails exited 0"; }
recap "$work/rollout-bad.log" | grep -Eq '^canary +: .*failed=1' || { show_log "$work/rollout-bad.log"; fail "the canary did not fail"; }
if recap "$work/rollout-bad.log" | grep -q '^second'; then show_log "$work/rollout-bad.log"; fail "the rollout went on to the second host"; fi
grep -q "no_such_var" "$work/rollout-bad.log" || fail "the canary's failure does not show bpfplan's error"
[ "$(attached_count)" = 0 ] && [ "$(pin_count)" = 0 ] || fail "the failed rollout changed the kernel"
ok "rollout.yml: the failing canary stopped the rollout (exit $rc), the second host never ran, kernel untouched ($(since "$t"))"

t=$(now)
if ! ANSIBLE_LIBRARY="$ROOT/contrib/ansible/library" "$PB" -i "$work/good.yml" contrib/ansible/playbooks/rollout.yml \
    -e "@$work/rollout-vars.json" > "$work/rollout-good.log" 2>&1; then
    show_log "$work/rollout-good.log"; fail "rollout.yml"
fi
recap "$work/rollout-good.log" | grep -Eq '^canary +: .*changed=1 .*failed=0' || { show_log "$work/rollout-good.log"; fail "canary: expected changed=1"; }
recap "$work/rollout-good.log" | grep -Eq '^second +: .*changed=0 .*failed=0' || { show_log "$work/rollout-good.log"; fail "second: expected changed=0 (already in sync)"; }
# serial: the canary's batch ran (apply and status) before the second host's apply.
python3 - "$work/rollout-good.log" <<'EOF' || fail "the rollout did not run the canary alone first"
import re, sys
events = re.findall(r'^(?:TASK \[(.*?)\]|(?:ok|changed): \[(\w+)\])', open(sys.argv[1]).read(), re.M)
seq, task = [], None
for t, host in events:
    if t: task = t
    elif task and task.startswith(("Apply", "Check")): seq.append((task.split()[0], host))
assert seq[:2] == [("Apply", "canary"), ("Check", "canary")] and ("Apply", "second") in seq[2:], seq
EOF
[ "$(status_rc)" = 0 ] || fail "bpfplan status is not in sync after the rollout"
[ "$(attached_count)" = 1 ] || fail "the rollout did not attach the program"
ok "rollout.yml: canary changed, then the second host in its own batch (in sync: ok), status exit 0 ($(since "$t"))"

# 4. Status across the fleet, into one JSON file.
t=$(now)
"$PB" -i "$work/good.yml" contrib/ansible/playbooks/status.yml -e "@$work/rollout-vars.json" \
    -e "bpfplan_status_file=$work/fleet-status.json" > "$work/status.log" 2>&1 || { show_log "$work/status.log"; fail "status.yml"; }
python3 - "$work/fleet-status.json" <<'EOF' || fail "fleet-status.json is not what status.yml should write"
import json, sys
d = json.load(open(sys.argv[1]))
assert sorted(d) == ["canary", "second"], d.keys()
for host, r in d.items():
    assert r["rc"] == 0 and r["in_sync"] is True and r["status"]["in_sync"] is True, (host, r)
    assert any(f["kind"] == "attachment" for f in r["status"]["findings"]), r
EOF
ok "status.yml: both hosts' bpfplan status --format json in one file, in sync ($(since "$t"))"

# 5. As a collection: build, install, use by the full name without ANSIBLE_LIBRARY.
t=$(now)
"$VENV/bin/ansible-galaxy" collection build contrib/ansible --output-path "$work/dist" > "$work/galaxy.log" 2>&1 || { cat "$work/galaxy.log"; fail "collection build"; }
"$VENV/bin/ansible-galaxy" collection install "$work"/dist/bpfplan-bpfplan-*.tar.gz -p "$work/collections" >> "$work/galaxy.log" 2>&1 || { cat "$work/galaxy.log"; fail "collection install"; }
[ -L "$work/collections/ansible_collections/bpfplan/bpfplan/plugins/modules/bpfplan.py" ] || fail "plugins/modules/bpfplan.py is not a symlink in the installed collection"
if ! ANSIBLE_COLLECTIONS_PATH="$work/collections" "$PB" -i localhost, -c local tests/ansible/collection.yml \
    -e "@$work/vars.json" > "$work/collection.log" 2>&1; then
    show_log "$work/collection.log"; fail "collection.yml"
fi
ANSIBLE_COLLECTIONS_PATH="$work/collections" "$VENV/bin/ansible-playbook" -i localhost, --syntax-check bpfplan.bpfplan.rollout \
    > "$work/syntax.log" 2>&1 || { cat "$work/syntax.log"; fail "ansible-playbook bpfplan.bpfplan.rollout --syntax-check"; }
ok "collection bpfplan.bpfplan built and installed; bpfplan.bpfplan.bpfplan: present ok, absent changed, absent again ok ($(since "$t"))"

# 6. Nothing left behind.
[ "$(attached_count)" = 0 ] || fail "programs still attached to $CG"
[ "$(pin_count)" = 0 ] || fail "pins left in $PINS: $(ls "$PINS")"
[ "$(status_rc)" = 2 ] || fail "bpfplan status does not report the deployment missing"
ok "nothing attached to $CG, no pins in $PINS"
echo "ansible test passed: tests $(since "$t_tests"), total $(since "$t_start")"
