#!/usr/bin/env bash
# `make test-container`: the DaemonSet's image and pod under a real
# container runtime, podman 4.3 with runc (Debian's; crun fails here on the
# hybrid cgroup layout), with a containers.conf and a storage of this test's
# own (nothing in /etc/containers or /var/lib/containers is touched).
#   - The image is built from deploy/kubernetes/Containerfile with the
#     network off, FROM a local base (the cached bookworm rootfs of
#     scripts/boot-rootfs.sh, imported) plus the .deb.
#   - The pod's main container runs as the DaemonSet runs it (privileged,
#     the node's bpffs, state, cache and log bound in; the manifest from the
#     ConfigMap): it applies with the image's prebuilt objects, is ready,
#     and repairs a hand detach; a restarted container finds "No changes";
#     the preStop hook destroys only with BPFPLAN_DESTROY_ON_STOP=true.
# The cgroup, pins, containers and images are this test's own and removed on
# exit (the imported base image stays cached in target/podman).
#
#   bash tests/container/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. scripts/lib.sh

test_prelude container
test_binaries
command -v podman >/dev/null || fail "podman is not installed (make deps)"
command -v runc >/dev/null || fail "runc is not installed (make deps)"
deb=$(ls target/debian/bpfplan_*.deb 2>/dev/null | tail -n 1)
[ -n "$deb" ] || fail "no target/debian/bpfplan_*.deb: run make deb"
K8S=$ROOT/deploy/kubernetes

work=$(mktemp -d /tmp/bpfplan-container.XXXXXX)
store=$ROOT/target/podman
mkdir -p "$store"
cat > "$work/containers.conf" <<'EOF'
[containers]
# Within the host's hard limits (podman's defaults are not).
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat > "$work/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$store/graph"
runroot = "$work/run"
EOF
export CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage.conf
image=localhost/bpfplan-test:$$
name=bpfplan-test-$$
SANDBOX_CGROUP=""
# podman (cgroupfs) makes libpod_parent in every cgroup hierarchy for its
# containers and conmon: removed at the end where this test made it.
podman_cgroups=""
for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -d "${h}libpod_parent" ] || podman_cgroups="$podman_cgroups ${h}libpod_parent"
done

# podman keeps its blob-info cache under /var/lib/containers/cache whatever
# the storage configuration says: removed at the end when this test made it.
podman_var=""
[ -e /var/lib/containers ] || podman_var=/var/lib/containers

cleanup() {
    local rc=$?
    set +e
    [ "$rc" = 0 ] || podman logs "$name" > "$work/pod.log" 2>&1; [ "$rc" = 0 ] || grep -m5 -i "error" "$work/pod.log" >&2
    podman rm -f -t 0 "$name" "$name-2" >/dev/null 2>&1
    podman rmi -f "$image" >/dev/null 2>&1
    # Intermediate layers of this build; the base stays cached.
    podman image prune -f >/dev/null 2>&1
    for d in $podman_cgroups; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    if [ -n "$podman_var" ] && [ -d "$podman_var" ] && [ ! -L "$podman_var" ]; then
        rm -rf -- "$podman_var/cache"
        rmdir -- "$podman_var" 2>/dev/null
    fi
    test_cleanup "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The base: the boot test's rootfs (bpftool, clang, libbpf's headers),
# imported once and kept while the rootfs is the same; a container needs
# none of its kernel (that is for tests/vm), so /boot and the modules stay out.
t=$(now)
ROOTFS=$(bash scripts/boot-rootfs.sh) || fail "scripts/boot-rootfs.sh"
base=localhost/bpfplan-base:$( (cat target/boot/stamp; echo "no kernel") | sha256sum | cut -c1-12)
if ! podman image exists "$base"; then
    tar -C "$ROOTFS" --exclude=./boot --exclude=./usr/lib/modules -c . | podman import - "$base" > "$work/import.log" 2>&1 \
        || { cat "$work/import.log"; fail "podman import of the rootfs"; }
fi
ok "base image $base ($(since "$t"))"

# The image, from the Containerfile as shipped, with no network.
t=$(now)
mkdir "$work/context"
cp "$deb" "$K8S/entrypoint.sh" "$work/context/"
podman build --network=none --build-arg "BASE=$base" -t "$image" -f "$K8S/Containerfile" \
    "$work/context" > "$work/build.log" 2>&1 || { tail -30 "$work/build.log"; fail "podman build"; }
podman run --rm --network=none --entrypoint sh "$image" -c \
    '! command -v clang && find /usr/lib/bpfplan/build -name "*.o" | grep -q .' \
    || fail "the image has clang, or no prebuilt objects"
ok "built $image from deploy/kubernetes/Containerfile offline (no clang, objects prebuilt) in $(since "$t")"

sandbox_create bpfplan-container
CG=$SANDBOX_CGROUP
PINS=$SANDBOX_PINS
mkdir -p "$work/state" "$work/cache" "$work/log"
chmod 0700 "$work/state" "$work/cache" "$work/log"
python3 - "$K8S/configmap.yaml" > "$work/manifest.toml" <<'EOF' || fail "reading the ConfigMap"
import re, sys
text = open(sys.argv[1]).read()
# The ConfigMap's one key, a YAML block scalar: its lines, unindented.
block = text.split("manifest.toml: |", 1)[1]
lines = []
for line in block.splitlines()[1:]:
    if line.strip() and not line.startswith("    "):
        break
    lines.append(line[4:])
sys.stdout.write("\n".join(lines).rstrip() + "\n")
EOF
grep -q 'source = "/usr/share/bpfplan/bpf/' "$work/manifest.toml" || fail "the ConfigMap manifest does not name the image's sources"

# The pod's main container, as daemonset.yaml runs it: privileged, the
# node's bpffs, its cgroup v2 mount read-only (the DaemonSet binds a unified
# node's /sys/fs/cgroup; this host is hybrid, so its cgroup2 mount is bound
# at the same path, where podman mounts none), state, cache, log, manifest.
cg2=$(cgroup2_mount)
pod() {
    local cname=$1; shift
    podman run --name "$cname" --privileged --network=host \
        -v /sys/fs/bpf:/sys/fs/bpf:rshared -v "$cg2:$cg2:ro" \
        -v "$work/state:/run/bpfplan" -v "$work/cache:/var/cache/bpfplan" -v "$work/log:/var/log/bpfplan" \
        -v "$work/manifest.toml:/etc/bpfplan/manifest.toml:ro" \
        -e BPFPLAN_MANIFEST=/etc/bpfplan/manifest.toml -e BPFPLAN_BUILD_DIR=/usr/lib/bpfplan/build \
        -e "BPFPLAN_VARS=cgroup=$CG pin_dir=$PINS" -e BPFPLAN_SYNC_INTERVAL=1 "$@"
}
host_bp() { "$BIN" "$1" "$work/manifest.toml" --var "cgroup=$CG" --var "pin_dir=$PINS" --build-dir /nonexistent-build "${@:2}"; }
attached() { bpftool -j cgroup show "$CG" | python3 -c 'import json,sys; t=sys.stdin.read().strip(); print(len(json.loads(t)) if t else 0)'; }
in_sync() { podman exec "$name" /usr/local/bin/bpfplan-entrypoint ready >/dev/null 2>&1; }
wait_for() { local n=$(( $1 * 5 )); shift; for _ in $(seq 1 "$n"); do "$@" && return 0; sleep 0.2; done; return 1; }

t=$(now)
pod "$name" -d "$image" run > /dev/null || fail "podman run"
wait_for 60 in_sync || { podman logs "$name" | tail -30; fail "the pod never became ready"; }
[ "$(attached)" = 1 ] || fail "nothing attached to $CG"
# The image has no clang: both compile steps were skipped as up to date.
podman logs "$name" > "$work/pod-first.log" 2>&1
[ "$(grep -c "up to date" "$work/pod-first.log")" -ge 2 ] || { cat "$work/pod-first.log"; fail "the pod did not use the prebuilt objects"; }
ok "the pod applied with the image's prebuilt objects and is ready ($(since "$t"))"

id_before=$(bpftool -j cgroup show "$CG" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
bpftool cgroup detach "$CG" sock_ops pinned "$PINS/bpf_sockops"
wait_for 30 sh -c "[ \"\$(bpftool -j cgroup show '$CG' | python3 -c 'import json,sys; t=sys.stdin.read().strip(); print(len(json.loads(t)) if t else 0)')\" = 1 ]" \
    || { podman logs "$name" | tail -20; fail "the pod did not repair the hand detach"; }
wait_for 30 in_sync || fail "not ready after the repair"
# (conmon writes the container's log a moment later: poll.)
logged_drift() { podman logs "$name" 2>&1 | grep -q "drift: the kernel differs"; }
wait_for 10 logged_drift || { podman logs "$name" | tail -20; fail "the pod did not report the drift"; }
id_after=$(bpftool -j cgroup show "$CG" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
[ "$id_after" = "$id_before" ] || fail "the repair reloaded program $id_before as $id_after"
ok "the pod saw a hand detach and repaired it (program $id_before attached again, not reloaded)"

# preStop without the opt-in, then the container goes (as a pod deleted).
podman exec "$name" /usr/local/bin/bpfplan-entrypoint prestop > "$work/prestop.log" 2>&1 || { cat "$work/prestop.log"; fail "prestop"; }
podman rm -f -t 10 "$name" > /dev/null
[ "$(attached)" = 1 ] || fail "the deployment went with the pod without the opt-in"
ok "preStop without BPFPLAN_DESTROY_ON_STOP leaves the deployment; the pod is gone"

# A new pod (a restart): in sync, it changes nothing.
pod "$name-2" --rm -e BPFPLAN_SYNC_ONCE=true "$image" run > "$work/restart.log" 2>&1 \
    || { cat "$work/restart.log"; fail "the restarted pod failed"; }
grep -q "No changes" "$work/restart.log" || { cat "$work/restart.log"; fail "the restarted pod changed something"; }
ok "a restarted pod finds No changes"

# preStop with the opt-in destroys it.
pod "$name" -d -e BPFPLAN_DESTROY_ON_STOP=true "$image" run > /dev/null || fail "podman run (destroy on stop)"
wait_for 60 in_sync || fail "the third pod never became ready"
podman exec "$name" /usr/local/bin/bpfplan-entrypoint prestop > "$work/prestop2.log" 2>&1 || { cat "$work/prestop2.log"; fail "prestop with the opt-in"; }
[ "$(attached)" = 0 ] || fail "preStop with BPFPLAN_DESTROY_ON_STOP=true left the attachment"
[ -z "$(ls -A "$PINS")" ] || fail "preStop with BPFPLAN_DESTROY_ON_STOP=true left pins: $(ls "$PINS")"
podman rm -f -t 10 "$name" > /dev/null
ok "preStop with BPFPLAN_DESTROY_ON_STOP=true destroys the deployment"
ok "container test passed"
