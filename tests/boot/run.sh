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
. tests/boot/lib.sh

test_prelude boot
command -v systemd-nspawn >/dev/null || fail "systemd-nspawn is not installed (package systemd-container; make deps)"
deb=$(ls target/debian/bpfplan_*.deb 2>/dev/null | tail -n 1)
[ -n "$deb" ] || fail "no target/debian/bpfplan_*.deb: run make deb"
t0=$(now)
ROOTFS=$(bash scripts/boot-rootfs.sh) || fail "scripts/boot-rootfs.sh"
ok "rootfs $ROOTFS ready in $(since "$t0")"

# A work directory and a cgroup of this shell's own: nspawn puts the
# container below it.
boot_sandbox boot
work=$WORK
merged=$MERGED
cg2=$CG2

mkdir -p "$work/upper" "$work/ovl" "$merged" "$work/results"
mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$work/upper,workdir=$work/ovl" "$merged"

boot_install "$merged" "$deb" "$cg2" "$work"
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
boot first
boot second
boot_verify "$work/results" first second
ok "boot test passed"
