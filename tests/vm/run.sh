#!/usr/bin/env bash
# `make test-vm`: bpfplan on a second kernel. The boot test's Debian
# bookworm rootfs (scripts/boot-rootfs.sh, cached under target/boot), with
# the .deb installed and bpfplan@bypass enabled as tests/boot does, is
# written to a disk image and booted under qemu (software emulation, -accel
# tcg) on Debian's own kernel (6.1), not the host's. After the first boot
# tests/boot/check.sh looks (the unit active before network-pre.target,
# status 0, 8 MiB bypassed) and the guest reboots for real; after the second
# boot it looks again, then `systemctl reload`, `stop` and `stop` with the
# destroy opt-in, and then the essential kernel tests (policy, policy live,
# backpressure, replace, destroy mid-stream) run inside the guest from this
# checkout's test binary. The guest writes its findings to /results on its
# disk, read back here with debugfs; its console is the serial log.
#
# The guest has no network device (the traffic is on its loopback and in
# network namespaces of the kernel tests' own). All of it (image, overlay,
# this shell's cgroup) is removed on exit.
#
#   bash tests/vm/run.sh          # VM_TIMEOUT=1500 seconds for both boots
#   VM_TESTS="live::a_reader_that_stops_holds_its_sender_back" bash tests/vm/run.sh
#
# The guest's console is left in target/vm/console.log.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. scripts/lib.sh
. tests/boot/lib.sh

test_prelude vm
for tool in qemu-system-x86_64 mkfs.ext4 debugfs systemd-nspawn git; do
    command -v $tool >/dev/null || fail "$tool is not installed (make deps)"
done
deb=$(ls target/debian/bpfplan_*.deb 2>/dev/null | tail -n 1)
[ -n "$deb" ] || fail "no target/debian/bpfplan_*.deb: run make deb"

# The kernel tests the guest runs: their names, exactly, and the binary
# cargo built them into (with the bpfplan and traffic binaries beside it).
# (Apply, traffic through the bypass and destroy are also what the boot
# checks see after each boot.)
VM_TESTS=${VM_TESTS:-"kernel::destroy_while_streaming_loses_nothing
bypass::a_denied_port_gets_nothing_and_its_sender_an_error
bypass::changing_only_the_policy_updates_it_live
live::a_reader_that_stops_holds_its_sender_back
changes::nothing_is_lost_during_a_replace"}
testbin=$(cargo test --no-run --test lib --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "lib" and m.get("executable"):
        print(m["executable"])
') || true
[ -x "$testbin" ] || fail "the kernel tests are not built (cargo test --no-run --test lib)"
for name in $VM_TESTS; do
    listed=$("$testbin" --list --exact "$name" 2>/dev/null) || true
    grep -qx "$name: test" <<< "$listed" || fail "no test named $name in $testbin"
done
[ -x target/debug/bpfplan ] && [ -x target/debug/bpfplan-traffic ] \
    || fail "target/debug/bpfplan and bpfplan-traffic are not built (cargo build -p bpfplan-traffic)"

t0=$(now)
ROOTFS=$(bash scripts/boot-rootfs.sh) || fail "scripts/boot-rootfs.sh"
kernel=$(readlink -f "$ROOTFS/vmlinuz")
initrd=$(readlink -f "$ROOTFS/initrd.img")
[ -f "$kernel" ] && [ -f "$initrd" ] || fail "no kernel and initramfs in $ROOTFS"
ok "rootfs $ROOTFS ready in $(since "$t0"), kernel $(basename "$kernel")"

qemu_pid=""
vm_before_remove() {
    [ -n "$qemu_pid" ] && kill -9 "$qemu_pid" 2>/dev/null
    # The guest's console stays for a look: target/vm/console.log.
    [ -f "${WORK:-}/console.log" ] && mkdir -p target/vm && cp "$WORK/console.log" target/vm/console.log
    return 0
}
BOOT_BEFORE_REMOVE=vm_before_remove
# A work directory and a cgroup of this shell's own: the nspawn that
# installs the package runs below it.
boot_sandbox vm
work=$WORK
merged=$MERGED

mkdir -p "$work/upper" "$work/ovl" "$merged"
mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$work/upper,workdir=$work/ovl" "$merged"
# The guest's systemd mounts cgroup v2 at /sys/fs/cgroup (unified).
boot_install "$merged" "$deb" /sys/fs/cgroup "$work"
ok "installed $(basename "$deb") in the rootfs, bpfplan@bypass enabled"

# The checkout (its tracked files) and the test binaries. The tests name
# their files by the paths cargo compiled in, so the guest mounts this copy
# at the same path as here (tests/vm/guest.sh), after boot: a checkout
# under /tmp would be emptied by systemd-tmpfiles at boot.
copy=$merged/var/lib/bpfplan-vm/checkout
mkdir -p "$copy/target/debug" "$copy/target/tmp"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$copy"
cp target/debug/bpfplan target/debug/bpfplan-traffic "$copy/target/debug/"
case "$testbin" in
    "$ROOT"/*) ;;
    *) fail "the test binary $testbin is not under $ROOT" ;;
esac
mkdir -p "$copy$(dirname "${testbin#"$ROOT"}")"
cp "$testbin" "$copy${testbin#"$ROOT"}"
cp tests/vm/guest.sh "$merged/usr/local/bin/bpfplan-vm-next"
chmod 0755 "$merged/usr/local/bin/bpfplan-vm-next"
echo "BPFPLAN_BOOT_CHECK_THEN=/usr/local/bin/bpfplan-vm-next" > "$merged/etc/bpfplan-boot-check.env"
{
    echo "VM_REPO='$ROOT'"
    echo "VM_TESTBIN='$testbin'"
    echo "VM_TESTS='$(echo $VM_TESTS)'"
    echo "VM_WATCH_EVERY='${VM_WATCH_EVERY:-20}'"
} > "$merged/etc/bpfplan-vm-tests.env"
mkdir -p "$merged/results"
echo first > "$merged/results/phase"
# No fstab: the kernel mounts the disk read-write (root=/dev/vda rw).

img=$work/disk.img
t=$(now)
mkfs.ext4 -q -F -L bpfplan-vm -d "$merged" "$img" 8G || fail "mkfs.ext4 -d of the rootfs"
umount "$merged"
ok "disk image written in $(since "$t")"

# Two boots: the guest reboots itself after the first, and powers off after
# the second (qemu then exits). TCG: /dev/kvm may be missing or unusable.
t=$(now)
timeout "${VM_TIMEOUT:-1500}" qemu-system-x86_64 -accel tcg -m 2048 -smp 2 \
    -nodefaults -no-user-config -display none \
    -serial "file:$work/console.log" \
    -kernel "$kernel" -initrd "$initrd" \
    -append "root=/dev/vda rw console=ttyS0 systemd.show_status=1" \
    -drive "file=$img,if=virtio,format=raw" -nic none &
qemu_pid=$!
rc=0
wait "$qemu_pid" || rc=$?
qemu_pid=""
[ "$rc" = 0 ] || { tail -60 "$work/console.log"; fail "qemu exited $rc (124: the guest did not power off within ${VM_TIMEOUT:-1500} s)"; }
boots=$(grep -c "Linux version" "$work/console.log" || true)
ok "two boots under qemu (TCG) and a power-off in $(since "$t") ($boots kernel starts on the console)"
[ "$boots" = 2 ] || { tail -60 "$work/console.log"; fail "the console shows $boots kernel starts, not 2 (boot, reboot)"; }

mkdir -p "$work/out"
debugfs -R "rdump /results $work/out" "$img" >/dev/null 2>&1 || fail "reading /results from the disk image"
results=$work/out/results
for phase in first second; do
    [ -f "$results/$phase" ] || { tail -60 "$work/console.log"; fail "the $phase boot wrote no results"; }
    guest_kernel=$(cat "$results/$phase-kernel")
    [ "$guest_kernel" = "$(basename "$kernel" | sed 's/^vmlinuz-//')" ] \
        || fail "the $phase boot ran kernel '$guest_kernel', not $(basename "$kernel")"
done
[ "$guest_kernel" != "$(uname -r)" ] || fail "the guest ran the host's kernel ($(uname -r))"
ok "both boots ran $guest_kernel (the host runs $(uname -r))"
boot_verify "$results" first second

[ ! -s "$results/tests_failed" ] || { cat "$results/tests.log"; fail "kernel tests failed in the guest on $guest_kernel: $(cat "$results/tests_failed")"; }
want=$(echo $VM_TESTS | wc -w)
passed=$(grep -c "^test result: ok. 1 passed; 0 failed" "$results/tests.log" || true)
[ "$passed" = "$want" ] || { cat "$results/tests.log"; fail "$passed of the $want kernel tests passed in the guest"; }
ok "$want kernel tests passed in the guest on $guest_kernel in $(cat "$results/tests_seconds") s: $(echo $VM_TESTS)"
ok "vm test passed"
