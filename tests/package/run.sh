#!/bin/sh
# The Debian package, end to end (root): install target/debian/bpfplan_*.deb
# with dpkg -i, check what it holds (binaries, man pages, completions, the
# unit, the examples), verify the unit with systemd-analyze, run the
# installed binary from / (doctor, plan, build, apply, status, traffic
# through the bypass, destroy) on a cgroup and pin directory of its own, and
# remove the package. Refuses to touch a bpfplan package installed before.
set -eu
cd "$(dirname "$0")/../.."
. scripts/lib.sh

test_prelude package
deb=$(ls target/debian/bpfplan_*.deb 2>/dev/null | tail -n 1)
[ -n "$deb" ] || { echo "package test: no target/debian/bpfplan_*.deb: run make deb" >&2; exit 1; }
if dpkg -s bpfplan >/dev/null 2>&1; then
    echo "package test: a bpfplan package is installed already; not touching it" >&2
    exit 1
fi

work=$(mktemp -d)
installed=""
vars=""
m=/usr/share/bpfplan/manifests/bypass.toml
export BPFPLAN_STATE_DIR="$work/state" BPFPLAN_AUDIT_LOG="$work/log/audit.jsonl" BPFPLAN_CACHE_DIR="$work/cache"
cleanup() {
    set +e
    # shellcheck disable=SC2086
    [ -n "$installed" ] && [ -n "$vars" ] && /usr/bin/bpfplan destroy "$m" $vars >/dev/null 2>&1
    sandbox_remove
    [ -n "$installed" ] && dpkg --purge bpfplan >/dev/null 2>&1
    rm -rf "$work" /tmp/bpfplan-unit.$$
}
trap cleanup EXIT INT TERM

dpkg -i "$deb" > "$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -i $deb"; }
installed=yes
ok "dpkg -i $(basename "$deb")"
for f in /usr/bin/bpfplan /usr/bin/bpfplan-traffic /usr/share/man/man1/bpfplan.1.gz \
    /usr/share/man/man1/bpfplan-apply.1.gz /usr/share/bash-completion/completions/bpfplan \
    /usr/share/zsh/vendor-completions/_bpfplan /usr/share/fish/vendor_completions.d/bpfplan.fish \
    /lib/systemd/system/bpfplan@.service /usr/share/bpfplan/manifests/bypass.toml \
    /usr/share/bpfplan/bpf/redir.c /usr/share/bpfplan/bpf/sock_key.h /etc/bpfplan/README; do
    [ -e "$f" ] || fail "$f is not installed"
done
ok "binaries, man pages, completions, unit, examples installed"
zcat /usr/share/man/man1/bpfplan-apply.1.gz | grep -q 'fB.-.-plan' || fail "bpfplan-apply(1) does not document --plan"
grep -q 'apply' /usr/share/bash-completion/completions/bpfplan || fail "bash completion lacks apply"

# The unit template, verified as an instance.
mkdir -p /tmp/bpfplan-unit.$$
cp /lib/systemd/system/bpfplan@.service /tmp/bpfplan-unit.$$/bpfplan@demo.service
systemd-analyze verify /tmp/bpfplan-unit.$$/bpfplan@demo.service > "$work/verify.log" 2>&1 \
    || { cat "$work/verify.log"; fail "systemd-analyze verify"; }
ok "systemd-analyze verify bpfplan@demo.service"

sandbox_create bpfplan-package
# The 8 MiB stream below tests the redirect itself: the bound as shipped
# sends a stream whose reader falls behind its buffer back to TCP.
vars="--var cgroup=$SANDBOX_CGROUP --var pin_dir=$SANDBOX_PINS --var max_queued=268435456"
cd /
/usr/bin/bpfplan doctor "$m" > "$work/doctor.txt" || { cat "$work/doctor.txt"; fail "doctor"; }
ok "doctor: $(tail -n 1 "$work/doctor.txt")"
# shellcheck disable=SC2086
/usr/bin/bpfplan plan "$m" $vars > "$work/plan.txt" || fail "plan"
grep -q "compile program \`bpf_sockops\` from /usr/share/bpfplan/bpf/sockops.c" "$work/plan.txt" || fail "plan does not compile the installed sources"
grep -q "$work/cache/build/bypass-" "$work/plan.txt" || fail "plan does not build into the cache"
# shellcheck disable=SC2086
/usr/bin/bpfplan build "$m" $vars > /dev/null || fail "build"
# shellcheck disable=SC2086
/usr/bin/bpfplan apply "$m" $vars > "$work/apply.txt" || { cat "$work/apply.txt"; fail "apply"; }
# shellcheck disable=SC2086
/usr/bin/bpfplan status "$m" $vars > /dev/null || fail "status is not in sync after apply"
ok "plan, build, apply and status of the installed example, run from /"
/usr/bin/bpfplan-traffic --cgroup "$SANDBOX_CGROUP" stream --bytes 8388608 > "$work/stream.json" || fail "traffic"
python3 - "$work/stream.json" <<'PY' || fail "the installed bypass does not redirect"
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert r["intact"] and r["lo_bytes"] * 100 < r["payload_bytes"], r
PY
ok "8 MiB through the installed bypass, off loopback and intact"
# shellcheck disable=SC2086
/usr/bin/bpfplan destroy "$m" $vars > /dev/null || fail "destroy"
vars=""
[ -z "$(ls "$SANDBOX_PINS")" ] || fail "destroy left pins: $(ls "$SANDBOX_PINS")"
ok "destroy left nothing"
grep -q '"phase":"end"' "$BPFPLAN_AUDIT_LOG" || fail "nothing in the audit log"

dpkg --purge bpfplan > /dev/null || fail "dpkg --purge"
installed=""
[ ! -e /usr/bin/bpfplan ] || fail "/usr/bin/bpfplan is still there after purge"
ok "dpkg --purge bpfplan"
echo "package test passed"
