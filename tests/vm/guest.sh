#!/bin/sh
# Runs inside the qemu guest of tests/vm/run.sh, after tests/boot/check.sh
# has looked at the boot (BPFPLAN_BOOT_CHECK_THEN). After the first boot it
# reboots the guest for real; after the second it runs the kernel tests
# named in /etc/bpfplan-vm-tests.env from the checkout copied into the
# image, mounted at the same path as on the host; writes their output to
# /results, and powers off.
set -u
phase=$(cat /results/phase)
uname -r > "/results/$phase-kernel"
if [ "$phase" = first ]; then
    echo second > /results/phase
    sync
    exec systemctl reboot
fi
. /etc/bpfplan-vm-tests.env
# The checkout, at the path the test binary was built in.
mkdir -p "$VM_REPO"
if ! mount --bind /var/lib/bpfplan-vm/checkout "$VM_REPO" || ! cd "$VM_REPO"; then
    echo "mounting the checkout at $VM_REPO" > /results/tests_failed
    sync
    exec systemctl poweroff
fi
start=$(date +%s)
# One test per run, each bounded, its output also on the console.
: > /results/tests.log
: > /results/tests_failed
# Every VM_WATCH_EVERY (20) s, the guest's TCP memory on the console (a test that hangs
# shows what it is waiting on).
(
    while sleep "${VM_WATCH_EVERY:-20}"; do
        echo "vm-watch: $(grep TCP: /proc/net/sockstat) tcp_mem $(cat /proc/sys/net/ipv4/tcp_mem)" > /dev/console
    done
) &
for name in $VM_TESTS; do
    rc=0
    BPFPLAN_REQUIRE_KERNEL=1 timeout 300 "$VM_TESTBIN" --exact --test-threads=1 "$name" \
        > /results/test.out 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        # What the host's TCP memory looked like after a failure.
        { echo "--- after $name: tcp_mem $(cat /proc/sys/net/ipv4/tcp_mem)"; cat /proc/net/sockstat
          grep -h . /sys/fs/cgroup/memory.pressure 2>/dev/null | head -1; } >> /results/test.out
    fi
    cat /results/test.out >> /results/tests.log
    cat /results/test.out > /dev/console
    [ "$rc" = 0 ] || echo "$name (exit $rc)" >> /results/tests_failed
done
rm -f /results/test.out
echo $(($(date +%s) - start)) > /results/tests_seconds
sync
exec systemctl poweroff
