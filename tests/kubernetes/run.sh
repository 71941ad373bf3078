#!/usr/bin/env bash
# The Kubernetes deployment (deploy/kubernetes), without a cluster (root):
#   1. every YAML file validated against the Kubernetes 1.37 schema with
#      kubernetes-validate --strict, offline (in a network namespace of its
#      own), and a broken copy refused; the files agree with each other and
#      with the Containerfile and entrypoint (names, paths, variables).
#   2. the entrypoint, for real, on this host, on a cgroup and pin directory
#      of its own, with the ConfigMap's own manifest (its sources pointed at
#      the checkout's bpf/) and objects prebuilt with `bpfplan build` as in
#      the image: mount-bpffs never mounts over a bpffs; `run` applies, in a
#      mount namespace where the cgroup v2 mount is read-only and clang cannot
#      run (as in the pod), repairs a hand detach, stops on SIGTERM leaving
#      the deployment and no process behind; `ready` follows status;
#      `prestop` destroys only when BPFPLAN_DESTROY_ON_STOP=true.
# Everything it makes is removed on exit, even on failure.
#
#   bash tests/kubernetes/run.sh
#
# BPFPLAN_BIN: the bpfplan binary (default target/release/bpfplan).
# BPFPLAN_VENV: the virtualenv (scripts/fleet-venv.sh creates or reuses it).
# BPFPLAN_TEST_LOGS: a directory to keep the entrypoint's logs in.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. scripts/lib.sh

test_prelude kubernetes
test_binaries
K8S=$ROOT/deploy/kubernetes
ENTRY=$K8S/entrypoint.sh

t_start=$(now)
VENV=$(bash scripts/fleet-venv.sh) || fail "scripts/fleet-venv.sh"
ok "virtualenv $VENV (kubernetes-validate $("$VENV/bin/kubernetes-validate" --version)) in $(since "$t_start")"
t_tests=$(now)

work=$(mktemp -d /tmp/bpfplan-k8s.XXXXXX)
SANDBOX_CGROUP=""
ENTRY_PID=""  # a short entrypoint run (entry)
LOOP_PID=""   # the long-running `run`

# The process ids of PID and all its descendants.
tree() {
    local p
    echo "$1"
    for p in $(pgrep -P "$1" || true); do tree "$p"; done
}
# End an entrypoint this script started, and what it started, by their ids:
# SIGTERM first (what the kubelet sends), then SIGKILL.
stop_pid() {
    [ -n "$1" ] || return 0
    local pids i
    pids=$(tree "$1")
    kill -TERM $pids 2>/dev/null || true
    for i in $(seq 20); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL $pids 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    stop_pid "$ENTRY_PID"
    stop_pid "$LOOP_PID"
    if [ -n "$SANDBOX_CGROUP" ]; then
        [ -f "$work/etc/manifest.toml" ] && bp destroy >/dev/null 2>&1
    fi
    test_cleanup "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- 1. schemas
t=$(now)
yamls=$(find "$K8S" -name '*.yaml' -o -name '*.yml' | sort)
[ -n "$yamls" ] || fail "no YAML in $K8S"
# shellcheck disable=SC2086
unshare -n "$VENV/bin/kubernetes-validate" --strict $yamls > "$work/validate.log" 2>&1 \
    || { cat "$work/validate.log"; fail "kubernetes-validate --strict"; }
for y in $yamls; do
    grep -q "^INFO $y passed" "$work/validate.log" || { cat "$work/validate.log"; fail "$y was not validated"; }
done
# The validator refuses what it should (a misspelt field, a number for a string).
sed 's/terminationGracePeriodSeconds:/terminationGracePeriodSecond:/; s/value: "30"/value: 30/' \
    "$K8S/daemonset.yaml" > "$work/broken.yaml"
if unshare -n "$VENV/bin/kubernetes-validate" --strict "$work/broken.yaml" > "$work/broken.log" 2>&1; then
    fail "kubernetes-validate --strict accepted a broken DaemonSet"
fi
ok "kubernetes-validate --strict (Kubernetes 1.37, no network): $(echo $yamls | wc -w) files pass; a broken copy is refused ($(since "$t"))"

"$VENV/bin/python" - "$K8S" > "$work/consistency.log" 2>&1 <<'EOF' || { cat "$work/consistency.log"; fail "deploy/kubernetes files disagree"; }
import glob, os, re, sys, yaml
k8s = sys.argv[1]
docs = [d for f in sorted(glob.glob(os.path.join(k8s, "*.yaml"))) for d in yaml.safe_load_all(open(f)) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
ns = by[("Namespace", "bpfplan")]
assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
for d in docs:
    if d["kind"] != "Namespace":
        assert d["metadata"]["namespace"] == "bpfplan", d["metadata"]
ds = by[("DaemonSet", "bpfplan")]
spec = ds["spec"]["template"]["spec"]
assert ("ServiceAccount", spec["serviceAccountName"]) in by
assert spec["automountServiceAccountToken"] is False
assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
vols = {v["name"]: v for v in spec["volumes"]}
cm_name = vols["manifest"]["configMap"]["name"]
cm = by[("ConfigMap", cm_name)]
containerfile = open(os.path.join(k8s, "Containerfile")).read()
entry = open(os.path.join(k8s, "entrypoint.sh")).read()
dest = re.search(r"^COPY entrypoint\.sh (\S+)", containerfile, re.M).group(1)
build_dir = re.search(r"--build-dir (\S+?);?\s*\\?$", containerfile, re.M).group(1)
verbs = set(re.findall(r"^    ([a-z-]+)\) ", entry, re.M))
assert {"run", "ready", "prestop", "mount-bpffs"} <= verbs, verbs
def cmd(c):
    assert c[0] == dest and c[1] in verbs, c
    return c[1]
init = spec["initContainers"][0]
assert cmd(init["command"]) == "mount-bpffs"
assert init["securityContext"]["privileged"] is True
m = {x["name"]: x for x in init["volumeMounts"]}
assert m["bpffs"]["mountPath"] == "/sys/fs/bpf" and m["bpffs"]["mountPropagation"] == "Bidirectional"
main = spec["containers"][0]
assert cmd(main["command"]) == "run"
assert cmd(main["readinessProbe"]["exec"]["command"]) == "ready"
assert cmd(main["lifecycle"]["preStop"]["exec"]["command"]) == "prestop"
env = {e["name"]: e["value"] for e in main["env"]}
for name in env:
    assert name in entry, "%s is not read by entrypoint.sh" % name
assert env["BPFPLAN_DESTROY_ON_STOP"] == "false"
assert env["BPFPLAN_BUILD_DIR"] == build_dir, (env["BPFPLAN_BUILD_DIR"], build_dir)
mounts = {x["name"]: x for x in main["volumeMounts"]}
assert mounts["bpffs"]["mountPath"] == "/sys/fs/bpf"
assert mounts["cgroup"]["mountPath"] == "/sys/fs/cgroup" and mounts["cgroup"]["readOnly"] is True
for name, path in [("bpffs", "/sys/fs/bpf"), ("cgroup", "/sys/fs/cgroup"), ("state", "/run/bpfplan"),
                   ("cache", "/var/cache/bpfplan"), ("audit", "/var/log/bpfplan")]:
    assert vols[name]["hostPath"]["path"] == path, name
    assert mounts[name]["mountPath"] == path, name
mf = mounts["manifest"]
assert mf["mountPath"] == env["BPFPLAN_MANIFEST"] and mf["subPath"] in cm["data"], mf
print("consistent")
EOF
ok "the files agree: names, the entrypoint's path and verbs, env read by entrypoint.sh, host paths, the prebuilt build dir, the ConfigMap key (subPath)"

sh -n "$ENTRY" || fail "entrypoint.sh: sh -n"
if command -v dash >/dev/null; then dash -n "$ENTRY" || fail "entrypoint.sh: dash -n"; SH="dash"; else SH="sh"; fi
ok "entrypoint.sh parses as POSIX sh; it runs under $SH below"

# ------------------------------------------------------- 2. the entrypoint
sandbox_create bpfplan-k8s
CG=$SANDBOX_CGROUP
PINS=$SANDBOX_PINS
CG2=$(cgroup2_mount)
ok "sandbox: cgroup $CG, pins $PINS, state in $work"

# The ConfigMap's manifest, its sources pointed at the checkout.
mkdir -p "$work/etc"
"$VENV/bin/python" - "$K8S/configmap.yaml" "$ROOT/bpf" > "$work/etc/manifest.toml" <<'EOF'
import sys, yaml
cm = yaml.safe_load(open(sys.argv[1]))
sys.stdout.write(cm["data"]["manifest.toml"].replace("/usr/share/bpfplan/bpf/", sys.argv[2] + "/"))
EOF
grep -q "source = \"$ROOT/bpf/sockops.c\"" "$work/etc/manifest.toml" || fail "the ConfigMap manifest does not name /usr/share/bpfplan/bpf/sockops.c"

export BPFPLAN_BIN="$BIN" BPFPLAN_MANIFEST="$work/etc/manifest.toml" BPFPLAN_VARS="cgroup=$CG pin_dir=$PINS" \
    BPFPLAN_BUILD_DIR="$work/build" BPFPLAN_STATE_DIR="$work/state" BPFPLAN_CACHE_DIR="$work/cache" \
    BPFPLAN_AUDIT_LOG="$work/log/audit.jsonl"
unset BPFPLAN_DESTROY_ON_STOP BPFPLAN_SYNC_ONCE BPFPLAN_SYNC_ITERATIONS BPFPLAN_SYNC_INTERVAL BPFPLAN_BPFFS
bp() { local verb=$1; shift; "$BIN" "$verb" "$BPFPLAN_MANIFEST" --var "cgroup=$CG" --var "pin_dir=$PINS" --build-dir "$BPFPLAN_BUILD_DIR" "$@"; }
status_rc() { local rc=0; bp status >/dev/null 2>&1 || rc=$?; echo "$rc"; }
attached() { bpftool -j cgroup show "$CG" | python3 -c 'import json,sys; t=sys.stdin.read().strip(); print(len(json.loads(t)) if t else 0)'; }
pin_count() { find "$PINS" -mindepth 1 | wc -l; }
bpffs_mounts_at() { awk -v p="$1" '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($5 == p && $(i + 1) == "bpf") n++; break } } END { print n + 0 }' /proc/self/mountinfo; }
# wait_for SECONDS CMD...: poll every 0.2 s, bounded.
wait_for() {
    local limit=$1 i=0; shift
    while ! "$@"; do
        i=$((i + 1)); [ "$i" -le $((limit * 5)) ] || return 1; sleep 0.2
    done
}
in_sync() { [ "$(status_rc)" = 0 ]; }
# entry SECONDS ARGS...: the entrypoint, in the background so that an
# interrupted test ends it too (cleanup), bounded in time; its exit code.
entry() {
    local limit=$1 rc=0
    shift
    timeout -k 2 "$limit" $SH "$ENTRY" "$@" &
    ENTRY_PID=$!
    wait "$ENTRY_PID" || rc=$?
    ENTRY_PID=""
    [ "$rc" != 124 ] || fail "entrypoint $* did not end within $limit s"
    return "$rc"
}
attached_one() { [ "$(attached)" = 1 ]; }

# mount-bpffs: never over an existing bpffs.
before=$(bpffs_mounts_at /sys/fs/bpf)
[ "$before" -ge 1 ] || fail "no bpffs at /sys/fs/bpf on this host"
entry 10 mount-bpffs > "$work/mount.log" 2>&1 || { cat "$work/mount.log"; fail "mount-bpffs"; }
grep -q "mounted at /sys/fs/bpf already" "$work/mount.log" || { cat "$work/mount.log"; fail "mount-bpffs did not notice the bpffs"; }
[ "$(bpffs_mounts_at /sys/fs/bpf)" = "$before" ] || fail "mount-bpffs mounted over /sys/fs/bpf"
# The same mount point spelled another way is the same mount point.
BPFPLAN_BPFFS="//sys/fs/bpf/" entry 10 mount-bpffs > "$work/mount-slash.log" 2>&1 || { cat "$work/mount-slash.log"; fail "mount-bpffs with //sys/fs/bpf/"; }
grep -q "mounted at /sys/fs/bpf already" "$work/mount-slash.log" || { cat "$work/mount-slash.log"; fail "mount-bpffs did not see //sys/fs/bpf/ as /sys/fs/bpf"; }
[ "$(bpffs_mounts_at /sys/fs/bpf)" = "$before" ] || fail "mount-bpffs mounted over /sys/fs/bpf spelled //sys/fs/bpf/"
# A path with a blank would become two arguments: refused, nothing mounted.
if BPFPLAN_BPFFS="$work/two words" entry 10 mount-bpffs > "$work/mount-blank.log" 2>&1; then
    fail "mount-bpffs accepted a path with a blank"
fi
grep -q "must not hold blanks" "$work/mount-blank.log" || { cat "$work/mount-blank.log"; fail "mount-bpffs: no clear error for a blank"; }
# Where there is none (a directory of ours, in a mount namespace of its own):
# mounted once, and a second run leaves it.
mkdir "$work/bpffs"
BPFPLAN_BPFFS="$work/bpffs" unshare -m --propagation private $SH -c '
    "$1" "$2" mount-bpffs && "$1" "$2" mount-bpffs &&
    awk -v p="$3" "{ for (i = 1; i <= NF; i++) if (\$i == \"-\") { if (\$5 == p && \$(i + 1) == \"bpf\") n++; break } } END { print n + 0 }" /proc/self/mountinfo
' sh "$SH" "$ENTRY" "$work/bpffs" > "$work/mount2.log" 2>&1 || { cat "$work/mount2.log"; fail "mount-bpffs on an empty directory"; }
[ "$(tail -n 1 "$work/mount2.log")" = 1 ] && grep -q "mounted bpffs at $work/bpffs" "$work/mount2.log" \
    && grep -q "mounted at $work/bpffs already" "$work/mount2.log" \
    || { cat "$work/mount2.log"; fail "mount-bpffs: expected one mount, then none"; }
[ "$(bpffs_mounts_at "$work/bpffs")" = 0 ] || fail "the test bpffs leaked out of its mount namespace"
ok "mount-bpffs: leaves the existing bpffs at /sys/fs/bpf alone (also spelled //sys/fs/bpf/); refuses a path with a blank; mounts one where none is, and only once"

# Objects prebuilt, as the image does with `bpfplan build`.
bp build > "$work/build.log" 2>&1 || { cat "$work/build.log"; fail "bpfplan build"; }
ok "bpfplan build: objects prebuilt into $work/build"

# run: in a mount namespace like the pod's: the cgroup v2 mount read-only,
# and clang unable to run (the image has none).
t=$(now)
clang_real=$(readlink -f "$(command -v clang)" 2>/dev/null || true)
BPFPLAN_SYNC_INTERVAL=1 BPFPLAN_SYNC_ITERATIONS=60 unshare -m --propagation private $SH -c '
    mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97
    if [ -n "$2" ]; then mount --bind /dev/null "$2" || exit 98; fi
    exec "$3" "$4" run
' sh "$CG2" "$clang_real" "$SH" "$ENTRY" > "$work/run.log" 2>&1 &
LOOP_PID=$!
wait_for 30 in_sync || { cat "$work/run.log"; fail "run did not apply within 30 s"; }
attached_one || fail "run applied, but nothing is attached to $CG"
grep -q "applied $BPFPLAN_MANIFEST" "$work/run.log" || { cat "$work/run.log"; fail "run did not say it applied"; }
# (seen through the entrypoint's own mount namespace: a child cgroup cannot be made)
if mkdir "/proc/$LOOP_PID/root$CG/probe" 2>"$work/mkdir.err"; then
    rmdir "$CG/probe"; fail "the cgroup mount is writable in the entrypoint's namespace"
fi
grep -q "Read-only file system" "$work/mkdir.err" || { cat "$work/mkdir.err"; fail "mkdir in the cgroup failed, but not for a read-only mount"; }
if [ -n "$clang_real" ] && "/proc/$LOOP_PID/root$clang_real" --version >/dev/null 2>&1; then
    fail "clang still runs in the entrypoint's namespace"
fi
ok "run: applied the ConfigMap's manifest with prebuilt objects, through a read-only cgroup mount, no clang ($(since "$t"))"

entry 20 ready > "$work/ready.log" 2>&1 || { cat "$work/ready.log"; fail "ready: not ready while in sync"; }
ok "ready: exit 0 in sync"

t=$(now)
id_before=$(bpftool -j cgroup show "$CG" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
bpftool cgroup detach "$CG" sock_ops pinned "$PINS/bpf_sockops"
[ "$(attached)" = 0 ] || fail "the hand detach did not detach"
wait_for 20 attached_one || { cat "$work/run.log"; fail "the loop did not re-attach within 20 s"; }
wait_for 10 in_sync || fail "not in sync after the repair"
grep -q "drift: the kernel differs" "$work/run.log" || { cat "$work/run.log"; fail "the loop did not report the drift"; }
id_after=$(bpftool -j cgroup show "$CG" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
[ "$id_after" = "$id_before" ] || fail "the repair reloaded program $id_before as $id_after; it should only re-attach it"
ok "run: a hand detach is seen and repaired by re-applying (program $id_before attached again, not reloaded; status exit 0) in $(since "$t")"

kids=$(pgrep -P "$LOOP_PID" || true)
kill -TERM "$LOOP_PID"
rc=0
for _ in $(seq 50); do kill -0 "$LOOP_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$LOOP_PID" 2>/dev/null && fail "run did not stop within 5 s of SIGTERM"
wait "$LOOP_PID" || rc=$?
LOOP_PID=""
[ "$rc" = 0 ] || { cat "$work/run.log"; fail "run exited $rc on SIGTERM"; }
grep -q "stopping on SIGTERM" "$work/run.log" || { cat "$work/run.log"; fail "run did not log its stop"; }
for k in $kids; do
    # An exiting child may take a moment to be gone: poll, bounded.
    for _ in $(seq 20); do kill -0 "$k" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$k" 2>/dev/null && fail "process $k of the entrypoint outlived it by 2 s"
done
in_sync && attached_one || fail "the deployment did not stay after SIGTERM"
ok "run: SIGTERM ends the loop at once (exit 0), no child left, the deployment stays"

BPFPLAN_SYNC_INTERVAL=1 BPFPLAN_SYNC_ITERATIONS=2 entry 30 run > "$work/bounded.log" 2>&1 \
    || { cat "$work/bounded.log"; fail "a bounded run failed"; }
grep -q "done after 2 checks" "$work/bounded.log" || { cat "$work/bounded.log"; fail "BPFPLAN_SYNC_ITERATIONS=2 did not stop after 2 checks"; }
grep -q "No changes" "$work/bounded.log" && ! grep -q "drift" "$work/bounded.log" \
    || { cat "$work/bounded.log"; fail "a run over an in-sync deployment changed something"; }
ok "run: BPFPLAN_SYNC_ITERATIONS bounds the loop; over an in-sync deployment apply says No changes and no check finds drift"

bpftool cgroup detach "$CG" sock_ops pinned "$PINS/bpf_sockops"
rc=0; entry 20 ready > "$work/ready.log" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "DRIFT" "$work/ready.log" || { cat "$work/ready.log"; fail "ready: expected exit 1 and the drift while detached (got $rc)"; }
BPFPLAN_SYNC_ONCE=true entry 30 run > "$work/once.log" 2>&1 || { cat "$work/once.log"; fail "BPFPLAN_SYNC_ONCE run"; }
attached_one && in_sync || fail "BPFPLAN_SYNC_ONCE did not repair"
entry 20 ready >/dev/null 2>&1 || fail "ready: not ready after the repair"
ok "ready: exit 1 with the drift while detached; BPFPLAN_SYNC_ONCE=true applies once and exits 0; ready again"

# A pod restarted on a node whose /run was lost (bpffs bound in from the
# host keeps the pins, the record is gone): the entrypoint's apply adopts the
# deployment, the same programs, and says so in the audit log.
ids_before=$(bpftool -j prog show pinned "$PINS/bpf_sockops" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
mv "$work/state" "$work/state.lost"
BPFPLAN_SYNC_ONCE=true entry 60 run > "$work/adopt.log" 2>&1 || { cat "$work/adopt.log"; fail "run after the record was lost"; }
grep -q "takes over program \`bpf_sockops\`" "$work/adopt.log" || { cat "$work/adopt.log"; fail "the entrypoint did not adopt the deployment"; }
ids_after=$(bpftool -j prog show pinned "$PINS/bpf_sockops" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
[ "$ids_before" = "$ids_after" ] || fail "adoption replaced program $ids_before by $ids_after"
attached_one && in_sync || fail "not in sync after the adoption"
grep -q '"adopted ' "$work/log/audit.jsonl" || fail "the adoption is not in the audit log"
rm -rf "$work/state.lost"
ok "run: a pod restart that lost the record adopts the deployment (program $ids_after kept, in sync, on record)"

ln -s "$work/etc/manifest.toml" "$work/link.toml"
BPFPLAN_MANIFEST="$work/link.toml" BPFPLAN_SYNC_ONCE=true entry 30 run > "$work/link.log" 2>&1 || { cat "$work/link.log"; fail "run through a symlinked manifest"; }
grep -q "warning: $work/link.toml resolves to $work/etc/manifest.toml" "$work/link.log" || { cat "$work/link.log"; fail "no warning for a symlinked manifest"; }
rc=0; BPFPLAN_VARS="cgroup" entry 10 run > "$work/bad.log" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "is not NAME=VALUE" "$work/bad.log" || { cat "$work/bad.log"; fail "a bad BPFPLAN_VARS was accepted"; }
rc=0; BPFPLAN_SYNC_INTERVAL=0 entry 10 run > "$work/bad.log" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "BPFPLAN_SYNC_INTERVAL" "$work/bad.log" || { cat "$work/bad.log"; fail "BPFPLAN_SYNC_INTERVAL=0 was accepted"; }
ok "run: warns when the manifest is a symlink (ConfigMap without subPath); refuses bad BPFPLAN_VARS and intervals"

# prestop: destroys only when opted in.
entry 20 prestop > "$work/prestop.log" 2>&1 || { cat "$work/prestop.log"; fail "prestop without opt-in"; }
grep -q "leaving the deployment in place" "$work/prestop.log" || fail "prestop did not say it leaves the deployment"
in_sync && attached_one && [ "$(pin_count)" -gt 0 ] || fail "prestop without opt-in changed the deployment"
BPFPLAN_DESTROY_ON_STOP=false entry 20 prestop >/dev/null 2>&1 || fail "prestop with BPFPLAN_DESTROY_ON_STOP=false"
in_sync || fail "prestop with BPFPLAN_DESTROY_ON_STOP=false changed the deployment"
ok "prestop: with BPFPLAN_DESTROY_ON_STOP unset or false the deployment stays (status exit 0, attached, $(pin_count) pins)"
BPFPLAN_DESTROY_ON_STOP=true entry 60 prestop > "$work/prestop.log" 2>&1 || { cat "$work/prestop.log"; fail "prestop with opt-in"; }
[ "$(attached)" = 0 ] || fail "prestop with opt-in left a program attached"
[ "$(pin_count)" = 0 ] || fail "prestop with opt-in left pins: $(ls "$PINS")"
[ "$(status_rc)" = 2 ] || fail "status does not report the deployment gone"
ok "prestop: with BPFPLAN_DESTROY_ON_STOP=true it is gone (nothing attached, no pins, status exit 2)"

grep -q '"phase":"end"' "$BPFPLAN_AUDIT_LOG" || fail "nothing in the audit log"
echo "kubernetes test passed: tests $(since "$t_tests"), total $(since "$t_start")"
