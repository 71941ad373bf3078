# Shared by the demo and benchmark scripts (sourced, not run).

# mount_of FSTYPE: the mount points of a file system type, from mountinfo
# (the type is the field after the " - " separator).
mount_of() {
    awk -v t="$1" '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i + 1) == t) print $5; break } }' /proc/self/mountinfo
}

# The cgroup v2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
cgroup2_mount() {
    mount_of cgroup2 | head -n 1
}

# Mount bpffs at /sys/fs/bpf (private to root) unless one is there already
# (a second mount would be a fresh, empty instance hiding the pins).
ensure_bpffs() {
    if ! mount_of bpf | grep -qx /sys/fs/bpf; then
        echo "mounting bpffs at /sys/fs/bpf"
        mount -t bpf -o mode=0700 bpf /sys/fs/bpf
    fi
}

# sandbox_create NAME [CHILD...]: a cgroup and a pin directory of this
# script's own, NAME-PID, under the cgroup v2 mount and /sys/fs/bpf (plus
# child cgroups). Sets SANDBOX_CGROUP and SANDBOX_PINS; sandbox_remove
# undoes it (call it from an EXIT trap).
sandbox_create() {
    cg2=$(cgroup2_mount)
    [ -n "$cg2" ] || { echo "no cgroup v2 mount found" >&2; return 1; }
    ensure_bpffs
    SANDBOX_CGROUP="$cg2/$1-$$"
    SANDBOX_PINS="/sys/fs/bpf/$1-$$"
    shift
    mkdir "$SANDBOX_CGROUP" "$SANDBOX_PINS"
    for child in "$@"; do mkdir "$SANDBOX_CGROUP/$child"; done
}

# Remove what sandbox_create made: end its processes, remove its pins and
# directories. Only ever what this script created.
sandbox_remove() {
    [ -n "${SANDBOX_CGROUP:-}" ] || return 0
    for procs in "$SANDBOX_CGROUP"/*/cgroup.procs "$SANDBOX_CGROUP/cgroup.procs"; do
        [ -f "$procs" ] && for pid in $(cat "$procs"); do kill -9 "$pid" 2>/dev/null; done
    done
    rm -f "$SANDBOX_PINS"/* 2>/dev/null
    rmdir "$SANDBOX_PINS" 2>/dev/null
    for child in "$SANDBOX_CGROUP"/*/; do
        [ -d "$child" ] && rmdir "$child" 2>/dev/null
    done
    rmdir "$SANDBOX_CGROUP" 2>/dev/null
    return 0
}

# For the shell tests. test_prelude NAME: fail/ok/now/since say NAME; a
# non-root run skips (fails with BPFPLAN_REQUIRE_KERNEL=1).
test_prelude() {
    TEST_NAME=$1
    if [ "$(id -u)" != 0 ]; then
        [ "${BPFPLAN_REQUIRE_KERNEL:-}" = 1 ] && fail "needs root"
        echo "skipping the $TEST_NAME test: not root"
        exit 0
    fi
}
fail() { echo "${TEST_NAME:-bpfplan} test FAILED: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

# The bpfplan binary the shell tests run (BPFPLAN_BIN, default the release
# build), and bpftool.
test_binaries() {
    BIN=${BPFPLAN_BIN:-$ROOT/target/release/bpfplan}
    [ -x "$BIN" ] || fail "no bpfplan binary at $BIN (set BPFPLAN_BIN)"
    command -v bpftool >/dev/null || fail "bpftool is not installed"
}

# Detach every program attached to a cgroup (one this script created).
detach_all() {
    bpftool -j cgroup show "$1" 2>/dev/null | python3 -c '
import json, sys
text = sys.stdin.read().strip()
for a in (json.loads(text) if text else []):
    print(a["attach_type"], a["id"])' | while read -r type id; do
        bpftool cgroup detach "$1" "$type" id "$id" 2>/dev/null || true
    done
}

# The end of a shell test's EXIT trap: detach what is left on its cgroup,
# remove its pins and sandbox, keep its logs (BPFPLAN_TEST_LOGS), remove
# $work, and say when it cleaned up after a failure. test_cleanup RC
test_cleanup() {
    if [ -n "${SANDBOX_CGROUP:-}" ]; then
        detach_all "$SANDBOX_CGROUP"
        rm -rf "$SANDBOX_PINS"
        sandbox_remove
    fi
    if [ -n "${BPFPLAN_TEST_LOGS:-}" ]; then
        mkdir -p "$BPFPLAN_TEST_LOGS" && cp "$work"/*.log "$BPFPLAN_TEST_LOGS"/ 2>/dev/null
    fi
    rm -rf "$work"
    [ "$1" = 0 ] || echo "$TEST_NAME test: cleaned up after a failure (exit $1)" >&2
    exit "$1"
}

# entries_manifest SOURCE N [changed]: a manifest whose cgroup/skb program
# (SOURCE, tests/fixtures/kernel/big_map.c) has a map `blocked` declaring N
# entries (u32 -> u8; the first one's value 2 if changed). For the entries
# benchmarks.
entries_manifest() {
    printf '[vars]\npin_dir = "/sys/fs/bpf"\n[[program]]\nname = "big_table"\nsource = "%s"\ntype = "cgroup/skb"\npin = "${pin_dir}/big_table"\n' "$1"
    printf '[[map]]\nname = "blocked"\nprogram = "big_table"\npin = "${pin_dir}/blocked"\nkey = "u32"\nvalue = "u8"\nentries = [\n'
    awk -v n="$2" -v c="${3:-}" 'BEGIN { for (i = 0; i < n; i++) printf "  { key = %d, value = %d },\n", i + 1, (c != "" && i == 0) ? 2 : 1 }'
    printf ']\n'
}
