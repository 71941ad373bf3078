# Shared by the boot tests under systemd-nspawn (tests/boot/run.sh) and
# qemu (tests/vm/run.sh); sourced, after scripts/lib.sh.

# boot_sandbox NAME: a work directory (WORK), the overlay's mount point in
# it (MERGED), and a cgroup of this shell's own (CG, under the cgroup v2
# mount CG2) that the shell moves into, so that what nspawn starts is below
# it. On exit, whatever the exit, boot_sandbox_remove undoes all of it
# (after BOOT_BEFORE_REMOVE, a command of the test's, if set): back to the
# shell's cgroup, its processes killed and its directories removed (in the
# named systemd hierarchy too, where nspawn makes one on a hybrid host), the
# overlay unmounted, nspawn's state under /run/systemd/nspawn removed when
# this test made it.
boot_sandbox() {
    trap boot_exit EXIT
    trap 'exit 130' INT TERM
    BOOT_NAME=bpfplan-$1-$$
    WORK=$(mktemp -d "/tmp/bpfplan-$1.XXXXXX")
    MERGED=$WORK/$BOOT_NAME
    BOOT_NSPAWN_STATE_WAS_THERE=""
    [ -e /run/systemd/nspawn ] && BOOT_NSPAWN_STATE_WAS_THERE=yes
    CG2=$(cgroup2_mount)
    [ -n "$CG2" ] || fail "no cgroup v2 mount"
    BOOT_HOME_CG=$CG2$(sed -n 's/^0:://p' /proc/self/cgroup)
    CG=$CG2/$BOOT_NAME
    mkdir "$CG"
    echo $$ > "$CG/cgroup.procs"
}
boot_exit() {
    local rc=$?
    set +e
    [ -n "${BOOT_BEFORE_REMOVE:-}" ] && $BOOT_BEFORE_REMOVE
    boot_sandbox_remove
    [ "$rc" = 0 ] || echo "${TEST_NAME:-boot} test: cleaned up after a failure (exit $rc)" >&2
    exit "$rc"
}
boot_sandbox_remove() {
    [ -n "${BOOT_NAME:-}" ] || return 0
    [ -n "${MERGED:-}" ] && mountpoint -q "$MERGED" && umount "$MERGED"
    if [ -n "${CG:-}" ] && [ -d "$CG" ]; then
        echo $$ > "$BOOT_HOME_CG/cgroup.procs"
        for procs in $(find "$CG" -name cgroup.procs); do
            for pid in $(cat "$procs"); do kill -9 "$pid" 2>/dev/null; done
        done
        for _ in $(seq 1 50); do
            find "$CG" -depth -type d -exec rmdir {} \; 2>/dev/null
            [ -d "$CG" ] || break
            sleep 0.1
        done
    fi
    # On a hybrid host nspawn also makes the container's cgroup in the
    # named systemd hierarchy (cgroup v1, name=systemd), at the same path.
    local v1
    v1=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup" && $(i + 3) ~ /(^|,)name=systemd(,|$)/) print $5; break } }' /proc/self/mountinfo | head -n 1)
    if [ -n "$v1" ] && [ -d "$v1/$BOOT_NAME" ]; then
        for _ in $(seq 1 50); do
            find "$v1/$BOOT_NAME" -depth -type d -exec rmdir {} \; 2>/dev/null
            [ -d "$v1/$BOOT_NAME" ] || break
            sleep 0.1
        done
    fi
    [ -n "${WORK:-}" ] && rm -rf "$WORK"
    if [ -z "$BOOT_NSPAWN_STATE_WAS_THERE" ]; then
        rm -rf /run/systemd/nspawn
    else
        rm -rf "/run/systemd/nspawn/propagate/$BOOT_NAME"
    fi
    return 0
}

# boot_install ROOT DEB CG2 WORK: in the root file system ROOT (an overlay
# of the test's own), install the package and set the deployment up as an
# operator would: /etc/bpfplan/bypass.toml from the packaged example,
# bpfplan@bypass enabled on a child cgroup of CG2 (the cgroup v2 mount as
# the booted system will see it, made by a drop-in before the unit
# applies), and bpfplan-boot-check.service (tests/boot/check.sh) to look
# after each boot. dpkg runs under systemd-nspawn (no boot, no network);
# its log is WORK/install.log.
boot_install() {
    local root=$1 deb=$2 cg2=$3 work=$4
    # (nspawn mounts a tmpfs on /tmp: the package goes elsewhere.)
    cp "$deb" "$root/var/tmp/bpfplan.deb"
    cp tests/boot/check.sh "$root/usr/local/bin/bpfplan-boot-check"
    chmod 0755 "$root/usr/local/bin/bpfplan-boot-check"
    cat > "$root/etc/systemd/system/bpfplan-boot-check.service" <<'UNIT'
[Unit]
Description=bpfplan boot test: look, then power off
After=multi-user.target bpfplan@bypass.service
[Service]
Type=oneshot
EnvironmentFile=-/etc/bpfplan-boot-check.env
ExecStart=/usr/local/bin/bpfplan-boot-check
[Install]
WantedBy=multi-user.target
UNIT
    systemd-nspawn --quiet --keep-unit --register=no --private-network \
        --system-call-filter=bpf -D "$root" --pipe sh -c '
        set -e
        dpkg -i /var/tmp/bpfplan.deb >/dev/null
        rm /var/tmp/bpfplan.deb
        cp /usr/share/bpfplan/manifests/bypass-policy.toml /etc/bpfplan/bypass.toml
        sed -i "s|\"../bpf/|\"/usr/share/bpfplan/bpf/|" /etc/bpfplan/bypass.toml
        systemctl enable bpfplan@bypass.service bpfplan-boot-check.service >/dev/null 2>&1
    ' > "$work/install.log" 2>&1 || { cat "$work/install.log"; fail "installing the package in the rootfs"; }

    mkdir -p "$root/etc/systemd/system/bpfplan@bypass.service.d"
    cat > "$root/usr/local/bin/bpfplan-boot-cgroup" <<'SH'
#!/bin/sh
cg2=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") print $5; break } }' /proc/self/mountinfo | head -n 1)
mkdir -p "$cg2/bypass-test"
SH
    chmod 0755 "$root/usr/local/bin/bpfplan-boot-cgroup"
    cat > "$root/etc/systemd/system/bpfplan@bypass.service.d/cgroup.conf" <<'UNIT'
[Service]
ExecStartPre=/usr/local/bin/bpfplan-boot-cgroup
UNIT
    echo "BPFPLAN_ARGS=\"--var cgroup=$cg2/bypass-test --var pin_dir=/sys/fs/bpf/bypass --var max_queued=268435456\"" \
        > "$root/etc/bpfplan/bypass.env"
}

# boot_verify RESULTS PHASE...: what tests/boot/check.sh wrote after each
# boot: the unit active, and so before network-pre.target; status exit 0;
# 8 MiB through the bypass with almost nothing on lo; the unit's journal
# showing each step. After the last phase: `systemctl reload` applied a
# manifest change, `stop` kept the deployment, and `stop` with
# BPFPLAN_DESTROY_ON_STOP=yes destroyed it.
boot_verify() {
    local results=$1 phase last unit_at pre_at lo
    shift
    val() { sed -n "s/^$2=//p" "$results/$1"; }
    for phase in "$@"; do
        last=$phase
        [ "$(val $phase active)" = active ] || { cat "$results/$phase-status.txt"; fail "$phase boot: bpfplan@bypass is $(val $phase active)"; }
        [ "$(val $phase status_exit)" = 0 ] || { cat "$results/$phase-status.txt"; fail "$phase boot: status exited $(val $phase status_exit)"; }
        unit_at=$(val $phase unit_active_at); pre_at=$(val $phase network_pre_at)
        [ "$unit_at" -gt 0 ] && [ "$pre_at" -gt 0 ] && [ "$unit_at" -le "$pre_at" ] \
            || fail "$phase boot: the unit was active at ${unit_at} us, network-pre.target at ${pre_at} us"
        python3 - "$results/$phase-stream.json" <<'PY' || fail "$phase boot: the stream was not bypassed"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["intact"], r
assert r["payload_bytes"] >= 8 << 20, r
assert r["lo_bytes"] < (8 << 20) // 100, f"{r['lo_bytes']} bytes on lo for 8 MiB"
PY
        python3 - "$results/$phase-journal.json" <<'PY' || fail "$phase boot: the unit's journal"
import json, sys
lines = [json.loads(l)["MESSAGE"] for l in open(sys.argv[1]) if l.strip()]
text = "\n".join(m if isinstance(m, str) else "" for m in lines)
assert "$ bpftool" in text, text[-2000:]
assert "attach" in text, text[-2000:]
PY
    done
    lo=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["lo_bytes"])' "$results/$last-stream.json")
    ok "after each boot ($*): unit active before network-pre.target ($last boot: $(val $last unit_active_at) us vs $(val $last network_pre_at) us after boot), status 0, 8 MiB bypassed ($lo bytes on lo), the unit's journal shows each step"
    [ "$(val $last reload_exit)" = 0 ] || fail "systemctl reload exited $(val $last reload_exit)"
    [ "$(val $last reload_status_exit)" = 0 ] || { cat "$results/reload-status.txt"; fail "after reload, status exited $(val $last reload_status_exit)"; }
    ok "systemctl reload applied the manifest change (status 0 with the new deny port)"
    [ "$(val $last stop_pins)" -gt 0 ] || fail "systemctl stop without the opt-in removed the deployment"
    [ "$(val $last restart_active)" = active ] || fail "the unit did not start again"
    [ "$(val $last destroy_pins)" = 0 ] || fail "systemctl stop with BPFPLAN_DESTROY_ON_STOP=yes left $(val $last destroy_pins) pins"
    ok "systemctl stop keeps the deployment; with BPFPLAN_DESTROY_ON_STOP=yes it destroys it"
}
