#!/bin/sh
# bpfplan in a Kubernetes DaemonSet (installed in the image as
# /usr/local/bin/bpfplan-entrypoint). POSIX sh. One script, four roles:
#
#   bpfplan-entrypoint mount-bpffs   init container: mount bpffs at /sys/fs/bpf
#                                    only when no bpffs is mounted there
#   bpfplan-entrypoint run           main container (the default): apply, then
#                                    keep the node in sync: every interval,
#                                    `bpfplan status`; on drift (exit 2) apply
#   bpfplan-entrypoint ready         readiness probe: `bpfplan status` exit 0
#   bpfplan-entrypoint prestop       preStop hook: destroy, only when
#                                    BPFPLAN_DESTROY_ON_STOP=true
#
# Environment:
#   BPFPLAN_MANIFEST         the manifest (default /etc/bpfplan/manifest.toml)
#   BPFPLAN_VARS             NAME=VALUE words, blank-separated (values hold no blanks)
#   BPFPLAN_BIN              bpfplan (default: bpfplan on PATH)
#   BPFPLAN_BUILD_DIR        --build-dir, if set (used by every command alike:
#                            bpfplan counts another build directory as a change)
#   BPFPLAN_SYNC_INTERVAL    seconds between checks (default 30, 1..86400)
#   BPFPLAN_SYNC_ITERATIONS  stop after this many checks (default 0: never; tests)
#   BPFPLAN_SYNC_ONCE        true: apply once and exit
#   BPFPLAN_DESTROY_ON_STOP  true: prestop destroys the deployment
#   BPFPLAN_BPFFS            where mount-bpffs mounts (default /sys/fs/bpf)
# bpfplan's own BPFPLAN_STATE_DIR, BPFPLAN_CACHE_DIR, BPFPLAN_AUDIT_LOG,
# BPFPLAN_LOCK_TIMEOUT and BPFPLAN_COMMAND_TIMEOUT pass through.
#
# Pins live on the host's bpffs and records in the host's /run/bpfplan, so
# the deployment outlives the pod: a restarted pod finds it in sync and
# changes nothing; stopping the pod leaves it running unless the operator
# opted in to destroy on stop.
set -eu

BIN=${BPFPLAN_BIN:-bpfplan}
MANIFEST=${BPFPLAN_MANIFEST:-/etc/bpfplan/manifest.toml}
INTERVAL=${BPFPLAN_SYNC_INTERVAL:-30}
ITERATIONS=${BPFPLAN_SYNC_ITERATIONS:-0}

log() { printf '%s bpfplan-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
die() { log "error: $*" >&2; exit 1; }
is_true() { case "${1:-}" in true|TRUE|True|yes|1) return 0 ;; *) return 1 ;; esac; }
is_count() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }

# The arguments every bpfplan command of this deployment gets, as words
# (variables and the build directory); no globbing, split on blanks.
set -f
ARGS=""
for v in ${BPFPLAN_VARS:-}; do
    case "$v" in
        [A-Za-z_]*=*) ARGS="$ARGS --var $v" ;;
        *) die "BPFPLAN_VARS: \`$v\` is not NAME=VALUE" ;;
    esac
done
# A path passed on is one word: blanks in it would become more arguments.
no_blanks() {
    case "$2" in
        *[[:space:]]*) die "$1 must not hold blanks: \`$2\`" ;;
    esac
}
if [ -n "${BPFPLAN_BUILD_DIR:-}" ]; then
    no_blanks BPFPLAN_BUILD_DIR "$BPFPLAN_BUILD_DIR"
    ARGS="$ARGS --build-dir $BPFPLAN_BUILD_DIR"
fi

# A path spelled once: doubled slashes collapsed, a trailing one dropped
# (mountinfo spells mount points so).
normal_path() {
    printf '%s\n' "$1" | sed -e 's#//*#/#g' -e 's#\(.\)/$#\1#'
}

# bpfplan <verb> MANIFEST ARGS... [extra...]
bp() {
    verb=$1
    shift
    # shellcheck disable=SC2086
    "$BIN" "$verb" "$MANIFEST" $ARGS "$@"
}

check_manifest() {
    [ -f "$MANIFEST" ] || die "no manifest at $MANIFEST"
    # bpfplan names a deployment by the manifest's resolved path: a ConfigMap
    # volume's file is a symlink into a timestamped directory that changes
    # with every update and every pod start, which would make a new
    # deployment each time. Mount the ConfigMap key with subPath.
    real=$(readlink -f "$MANIFEST")
    [ "$real" = "$MANIFEST" ] \
        || log "warning: $MANIFEST resolves to $real; bpfplan records the resolved path, mount it with subPath so it stays the same"
}

# True when a bpffs is mounted exactly at $1 (mountinfo field 5 is the mount
# point, the field after " - " the file system type).
bpffs_mounted_at() {
    awk -v p="$1" '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($5 == p && $(i + 1) == "bpf") found = 1; break } }
        END { exit !found }' /proc/self/mountinfo
}

mount_bpffs() {
    no_blanks BPFPLAN_BPFFS "${BPFPLAN_BPFFS:-/sys/fs/bpf}"
    target=$(normal_path "${BPFPLAN_BPFFS:-/sys/fs/bpf}")
    if bpffs_mounted_at "$target"; then
        log "bpffs is mounted at $target already: leaving it (a second mount would hide its pins)"
        return 0
    fi
    mkdir -p "$target"
    mount -t bpf -o mode=0700 bpf "$target"
    bpffs_mounted_at "$target" || die "mounted bpffs at $target but mountinfo does not show it"
    log "mounted bpffs at $target"
}

apply() {
    if bp apply; then
        log "applied $MANIFEST"
        return 0
    fi
    log "apply failed (it rolled back what it had done); the next check retries"
    return 1
}

# One check: 0 in sync or repaired, 1 otherwise.
sync_once() {
    rc=0
    bp status > /dev/null 2>&1 || rc=$?
    case $rc in
        0) return 0 ;;
        2) log "drift: the kernel differs from $MANIFEST; re-applying"
           bp status 2>&1 | sed -n '1,40p' || true
           apply ;;
        *) log "bpfplan status failed (exit $rc):"
           bp status 2>&1 | sed -n '1,20p' || true
           return 1 ;;
    esac
}

SLEEP_PID=""
STOP=""
on_term() {
    STOP=yes
    [ -z "$SLEEP_PID" ] || kill "$SLEEP_PID" 2>/dev/null || true
}

run() {
    is_count "$INTERVAL" && [ "$INTERVAL" -ge 1 ] && [ "$INTERVAL" -le 86400 ] \
        || die "BPFPLAN_SYNC_INTERVAL must be 1..86400 seconds, not \`$INTERVAL\`"
    is_count "$ITERATIONS" || die "BPFPLAN_SYNC_ITERATIONS must be a count, not \`$ITERATIONS\`"
    check_manifest
    # SIGTERM (pod deletion, after preStop) ends the loop between checks; an
    # apply under way finishes first (it is one transaction).
    trap on_term TERM INT
    log "applying $MANIFEST$ARGS"
    if ! apply; then
        is_true "${BPFPLAN_SYNC_ONCE:-}" && exit 1
    fi
    if is_true "${BPFPLAN_SYNC_ONCE:-}"; then
        bp status > /dev/null 2>&1 || die "not in sync after apply"
        exit 0
    fi
    n=0
    while [ -z "$STOP" ]; do
        sleep "$INTERVAL" &
        SLEEP_PID=$!
        wait "$SLEEP_PID" 2>/dev/null || true
        # A signal ends that wait early; this one reaps the killed sleep, so
        # nothing of the loop outlives it.
        wait "$SLEEP_PID" 2>/dev/null || true
        SLEEP_PID=""
        [ -z "$STOP" ] || break
        sync_once || true
        n=$((n + 1))
        if [ "$ITERATIONS" -gt 0 ] && [ "$n" -ge "$ITERATIONS" ]; then
            log "done after $n checks"
            break
        fi
    done
    [ -z "$STOP" ] || log "stopping on SIGTERM; the deployment stays in place"
    exit 0
}

ready() {
    check_manifest > /dev/null
    # Probe output shows in `kubectl describe pod` when it fails.
    out=$(bp status 2>&1) && exit 0
    printf '%s\n' "$out" | sed -n '1,20p'
    exit 1
}

prestop() {
    if is_true "${BPFPLAN_DESTROY_ON_STOP:-}"; then
        log "BPFPLAN_DESTROY_ON_STOP is set: destroying $MANIFEST"
        bp destroy
        log "destroyed"
    else
        log "leaving the deployment in place (set BPFPLAN_DESTROY_ON_STOP=true to destroy it when the pod stops)"
    fi
}

case "${1:-run}" in
    mount-bpffs) mount_bpffs ;;
    run) run ;;
    ready) ready ;;
    prestop) prestop ;;
    *) die "usage: bpfplan-entrypoint [run|ready|prestop|mount-bpffs]" ;;
esac
