#!/usr/bin/env bash
# `make test-boot`: the boot unit under a real systemd. A Debian bookworm
# rootfs (scripts/boot-rootfs.sh, cached under target/boot) is booted twice
# with systemd-nspawn on an overlay of its own (the cache stays clean), with
# the .deb installed and bpfplan@bypass enabled. After each boot a check unit
# in the container (tests/boot/check.sh) writes what it saw to a directory
# bound in from here: the unit active, started before network-pre.target,
# `status` exit 0, 8 MiB through the bypass with almost nothing on lo; after
# the second boot, `systemctl reload` applies a manifest change, `stop`
# leaves the deployment, and `stop` with BPFPLAN_DESTROY_ON_STOP=yes
# destroys it. The journal of the unit shows each step.
#
# The container runs in a cgroup of this test's own (this script moves
# itself there first), so everything it attaches is below it; its bpffs is a
# tmpfs of its own; its network is private. All of it is removed on exit.
#
#   bash tests/boot/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. scripts/lib.sh

test_prelude boot
command -v systemd-nspawn >/dev/null || fail "systemd-nspawn is not installed (package systemd-container; make deps)"
deb=$(ls target/debian/bpfplan_*.deb 2>/dev/null | tail -n 1)
[ -n "$deb" ] || fail "no target/debian/bpfplan_*.deb: run make deb"
t0=$(now)
ROOTFS=$(bash scripts/boot-rootfs.sh) || fail "scripts/boot-rootfs.sh"
ok "rootfs $ROOTFS ready in $(since "$t0")"

work=$(mktemp -d /tmp/bpfplan-boot.XXXXXX)
merged=$work/bpfplan-boot-$$
# nspawn keeps its own state under /run/systemd/nspawn: removed at the end
# when this test made it.
nspawn_state_was_there=""
[ -e /run/systemd/nspawn ] && nspawn_state_was_there=yes
CG=""
home_cg=""
cleanup() {
    local rc=$?
    set +e
    mountpoint -q "$merged" && umount "$merged"
    if [ -n "$CG" ]; then
        # Back to where this shell was, then remove the cgroup (and what
        # nspawn made in it) once it is empty.
        [ -n "$home_cg" ] && echo $$ > "$home_cg/cgroup.procs"
        for procs in $(find "$CG" -name cgroup.procs); do
            for pid in $(cat "$procs"); do kill -9 "$pid" 2>/dev/null; done
        done
        for _ in $(seq 1 50); do
            find "$CG" -depth -type d -exec rmdir {} \; 2>/dev/null
            [ -d "$CG" ] || break
            sleep 0.1
        done
    fi
    rm -rf "$work"
    if [ -z "$nspawn_state_was_there" ]; then
        rm -rf /run/systemd/nspawn
    else
        rm -rf "/run/systemd/nspawn/propagate/bpfplan-boot-$$"
    fi
    [ "$rc" = 0 ] || echo "boot test: cleaned up after a failure (exit $rc)" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# This shell's cgroup of its own: nspawn puts the container below it.
cg2=$(cgroup2_mount)
[ -n "$cg2" ] || fail "no cgroup v2 mount"
home_cg=$cg2$(sed -n 's/^0:://p' /proc/self/cgroup)
CG=$cg2/bpfplan-boot-$$
mkdir "$CG"
echo $$ > "$CG/cgroup.procs"

mkdir -p "$work/upper" "$work/ovl" "$merged" "$work/results"
mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$work/upper,workdir=$work/ovl" "$merged"

# Install the package and set the deployment up, as an operator would.
# (nspawn mounts a tmpfs on /tmp: the package goes elsewhere.)
cp "$deb" "$merged/var/tmp/bpfplan.deb"
cp tests/boot/check.sh "$merged/usr/local/bin/bpfplan-boot-check"
chmod 0755 "$merged/usr/local/bin/bpfplan-boot-check"
cat > "$merged/etc/systemd/system/bpfplan-boot-check.service" <<'EOF'
[Unit]
Description=bpfplan boot test: look, then power off
After=multi-user.target bpfplan@bypass.service
[Service]
Type=oneshot
ExecStart=/usr/local/bin/bpfplan-boot-check
[Install]
WantedBy=multi-user.target
EOF
nspawn_run() {
    systemd-nspawn --quiet --keep-unit --register=no --private-network \
        --system-call-filter=bpf -D "$merged" "$@"
}
nspawn_run --pipe sh -c '
    set -e
    dpkg -i /var/tmp/bpfplan.deb >/dev/null
    rm /var/tmp/bpfplan.deb
    cp /usr/share/bpfplan/manifests/bypass-policy.toml /etc/bpfplan/bypass.toml
    sed -i "s|\"../bpf/|\"/usr/share/bpfplan/bpf/|" /etc/bpfplan/bypass.toml
    systemctl enable bpfplan@bypass.service bpfplan-boot-check.service >/dev/null 2>&1
' > "$work/install.log" 2>&1 || { cat "$work/install.log"; fail "installing the package in the rootfs"; }
ok "installed $(basename "$deb") in the rootfs, bpfplan@bypass enabled"

# doctor where bpftool cannot probe (nspawn without --system-call-filter=bpf:
# no CAP_BPF, bpf(2) filtered): bpftool's own error (JSON on its stdout) is
# said, and it is a warning with the way out, not a failure of the kernel.
rc=0
systemd-nspawn --quiet --keep-unit --register=no --private-network -D "$merged" --pipe \
    /usr/bin/bpfplan doctor --format json > "$work/doctor.json" 2> "$work/doctor.err" || rc=$?
python3 - "$work/doctor.json" <<'EOF' || { cat "$work/doctor.json" "$work/doctor.err"; fail "doctor under a seccomp filter that blocks bpf(2)"; }
import json, sys
report = json.load(open(sys.argv[1]))
probe = [c for c in report["checks"] if c["name"] == "kernel features"]
assert probe, report["checks"]
c = probe[0]
assert c["verdict"] == "warn", c
detail = c["detail"].removeprefix("not probed: ")
# The reason is said: bpftool's own error, or that its loads were refused.
assert c["detail"].startswith("not probed: ") and detail.strip() and not detail.rstrip().endswith(":"), c
assert "seccomp" in c["fix"] and "CAP_BPF" in c["fix"] and "run doctor as root" not in c["fix"], c
print("ok:", c["detail"])
EOF
ok "doctor where bpftool cannot probe (a container without CAP_BPF, bpf(2) filtered): a warning with bpftool's own error and the way out (exit $rc)"

boot() {
    echo "$1" > "$work/results/phase"
    local t
    t=$(now)
    timeout 300 systemd-nspawn --quiet --keep-unit --register=no --private-network \
        --system-call-filter=bpf --tmpfs=/sys/fs/bpf:mode=0700 \
        --bind="$work/results:/results" -D "$merged" --boot > "$work/$1-console.log" 2>&1 \
        || { tail -40 "$work/$1-console.log"; fail "the $1 boot did not power off cleanly"; }
    [ -f "$work/results/$1" ] || { tail -40 "$work/$1-console.log"; fail "the $1 boot wrote no results"; }
    ok "$1 boot, checked and powered off in $(since "$t")"
}
val() { sed -n "s/^$2=//p" "$work/results/$1"; }

# The cgroup the bypass is attached to: a child of the container's cgroup
# v2 root, made by a drop-in before the unit applies.
mkdir -p "$merged/etc/systemd/system/bpfplan@bypass.service.d"
cat > "$merged/usr/local/bin/bpfplan-boot-cgroup" <<'EOF'
#!/bin/sh
cg2=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") print $5; break } }' /proc/self/mountinfo | head -n 1)
mkdir -p "$cg2/bypass-test"
EOF
chmod 0755 "$merged/usr/local/bin/bpfplan-boot-cgroup"
cat > "$merged/etc/systemd/system/bpfplan@bypass.service.d/cgroup.conf" <<'EOF'
[Service]
ExecStartPre=/usr/local/bin/bpfplan-boot-cgroup
EOF
# The container's cgroup v2 mount is where the host's is (hybrid or not).
echo "BPFPLAN_ARGS=\"--var cgroup=$cg2/bypass-test --var pin_dir=/sys/fs/bpf/bypass --var max_queued=268435456\"" \
    > "$merged/etc/bpfplan/bypass.env"

boot first
boot second
for phase in first second; do
    [ "$(val $phase active)" = active ] || { cat "$work/results/$phase-status.txt"; fail "$phase boot: bpfplan@bypass is $(val $phase active)"; }
    [ "$(val $phase status_exit)" = 0 ] || { cat "$work/results/$phase-status.txt"; fail "$phase boot: status exited $(val $phase status_exit)"; }
    unit_at=$(val $phase unit_active_at); pre_at=$(val $phase network_pre_at)
    [ "$unit_at" -gt 0 ] && [ "$pre_at" -gt 0 ] && [ "$unit_at" -le "$pre_at" ] \
        || fail "$phase boot: the unit was active at ${unit_at} us, network-pre.target at ${pre_at} us"
    python3 - "$work/results/$phase-stream.json" <<'EOF' || fail "$phase boot: the stream was not bypassed"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["intact"], r
assert r["payload_bytes"] >= 8 << 20, r
assert r["lo_bytes"] < (8 << 20) // 100, f"{r['lo_bytes']} bytes on lo for 8 MiB"
EOF
done
lo=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["lo_bytes"])' "$work/results/second-stream.json")
ok "after each boot: unit active before network-pre.target (second boot: $(val second unit_active_at) us vs $(val second network_pre_at) us after boot), status 0, 8 MiB bypassed ($lo bytes on lo)"
python3 - "$work/results/first-journal.json" "$work/results/second-journal.json" <<'EOF' || fail "the unit's journal"
import json, sys
for f in sys.argv[1:]:
    lines = [json.loads(l)["MESSAGE"] for l in open(f) if l.strip()]
    text = "\n".join(m if isinstance(m, str) else "" for m in lines)
    assert "$ bpftool" in text, text[-2000:]
    assert "attach" in text, text[-2000:]
print("ok: the unit's journal shows each step of both boots")
EOF
[ "$(val second reload_exit)" = 0 ] || fail "systemctl reload exited $(val second reload_exit)"
[ "$(val second reload_status_exit)" = 0 ] || { cat "$work/results/reload-status.txt"; fail "after reload, status exited $(val second reload_status_exit)"; }
ok "systemctl reload applied the manifest change (status 0 with the new deny port)"
[ "$(val second stop_pins)" -gt 0 ] || fail "systemctl stop without the opt-in removed the deployment"
[ "$(val second restart_active)" = active ] || fail "the unit did not start again"
[ "$(val second destroy_pins)" = 0 ] || fail "systemctl stop with BPFPLAN_DESTROY_ON_STOP=yes left $(val second destroy_pins) pins"
ok "systemctl stop keeps the deployment; with BPFPLAN_DESTROY_ON_STOP=yes it destroys it"
ok "boot test passed"
