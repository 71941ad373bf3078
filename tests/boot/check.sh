#!/bin/sh
# Runs inside the booted container (bpfplan-boot-check.service, after
# multi-user.target): looks at what the boot did and writes it to /results,
# then powers the container off (or, when BPFPLAN_BOOT_CHECK_THEN names a
# command, as tests/vm does, runs that instead). PHASE (first or second boot) comes from
# /results/phase. Each finding is one `key=value` line of /results/PHASE.
set -u
phase=$(cat /results/phase)
out=/results/$phase
: > "$out.tmp"
say() { echo "$1=$2" >> "$out.tmp"; }
unit=bpfplan@bypass.service
say active "$(systemctl is-active $unit)"
say cgroup "$(cat /proc/self/cgroup | tr '\n' ' ')"
# Ordering: the unit finished starting before network-pre.target was reached.
say unit_active_at "$(systemctl show -p ActiveEnterTimestampMonotonic --value $unit)"
say network_pre_at "$(systemctl show -p ActiveEnterTimestampMonotonic --value network-pre.target)"
. /etc/bpfplan/bypass.env
# shellcheck disable=SC2086
/usr/bin/bpfplan status /etc/bpfplan/bypass.toml $BPFPLAN_ARGS > /results/$phase-status.txt 2>&1
say status_exit $?
# Traffic in the bypassed cgroup: bytes on lo prove the redirect.
cg=$(sed -n 's/.*cgroup=\([^ ]*\).*/\1/p' /etc/bpfplan/bypass.env)
/usr/bin/bpfplan-traffic --cgroup "$cg" stream --bytes 8388608 > /results/$phase-stream.json 2>&1
say stream_exit $?
journalctl -u $unit -o json --no-pager > /results/$phase-journal.json 2>/dev/null
journalctl -b -o short-monotonic --no-pager > /results/$phase-boot.log 2>/dev/null
if [ "$phase" = second ]; then
    # A manifest change applied by `systemctl reload`: deny port 2000
    sed -i 's/^deny_port = .*/deny_port = "2000"/' /etc/bpfplan/bypass.toml
    systemctl reload $unit
    say reload_exit $?
    # shellcheck disable=SC2086
    /usr/bin/bpfplan status /etc/bpfplan/bypass.toml $BPFPLAN_ARGS > /results/reload-status.txt 2>&1
    say reload_status_exit $?
    pin_dir=$(sed -n 's/.*pin_dir=\([^ ]*\).*/\1/p' /etc/bpfplan/bypass.env)
    # Stop without the opt-in: the deployment stays.
    systemctl stop $unit
    say stop_pins "$(ls "$pin_dir" | wc -l)"
    # With BPFPLAN_DESTROY_ON_STOP=yes, stop destroys.
    echo 'BPFPLAN_DESTROY_ON_STOP=yes' >> /etc/bpfplan/bypass.env
    systemctl start $unit
    say restart_active "$(systemctl is-active $unit)"
    systemctl stop $unit
    say destroy_pins "$(ls "$pin_dir" 2>/dev/null | wc -l)"
    journalctl -u $unit -o json --no-pager > /results/second-journal-all.json 2>/dev/null
fi
mv "$out.tmp" "$out"
sync
exec ${BPFPLAN_BOOT_CHECK_THEN:-systemctl poweroff}
