#!/usr/bin/env bash
# The virtualenv of the fleet tooling tests (tests/ansible, tests/kubernetes):
# ansible-core and kubernetes-validate, every package pinned. Creates it at
# $BPFPLAN_VENV (default target/venv of this checkout) or reuses it when its
# stamp says it holds exactly these pins; prints the venv's path on stdout,
# progress on stderr.
#
#   bash scripts/fleet-venv.sh          # create or reuse, print the path
#   . scripts/fleet-venv.sh             # the same, and sets BPFPLAN_VENV
#
# ansible-core 2.20 and later need Python >= 3.12 on the controller; Debian
# 12's python3 is 3.11. So: BPFPLAN_PYTHON if set, else the first Python
# >= 3.12 found (python3.13, python3.12, pyenv's installed versions), else
# python3. Python >= 3.12 gets ansible-core 2.21.5; 3.11 gets 2.19.14, the
# last ansible-core that runs on it (both pass tests/ansible/run.sh). The
# module itself runs on the managed host's python3 (3.9 or later).
# kubernetes-validate bundles its schemas: once installed it needs no network.
# The venv is reused while its stamp (Python version and pins) matches: no
# network then either.

fleet_venv_main() {
    local root venv py want_core pins stamp_want lock
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    venv=${BPFPLAN_VENV:-$root/target/venv}

    py=""
    local cand
    if [ -n "${BPFPLAN_PYTHON:-}" ]; then
        py=$(command -v "$BPFPLAN_PYTHON") || { echo "fleet-venv: no $BPFPLAN_PYTHON" >&2; return 1; }
    else
        for cand in python3.13 python3.12 \
            $( (command -v pyenv >/dev/null 2>&1 && ls -d "$(pyenv root)"/versions/3.1[2-9]*/bin/python3 2>/dev/null) | sort -rV); do
            if "$cand" -c 'import sys, venv, ssl; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
                py=$(command -v "$cand"); break
            fi
        done
        [ -n "$py" ] || py=$(command -v python3) || { echo "fleet-venv: no python3" >&2; return 1; }
    fi
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
        want_core=2.21.5
    elif "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        want_core=2.19.14
        echo "fleet-venv: $py is older than 3.12: ansible-core $want_core, the last for Python 3.11" >&2
    else
        echo "fleet-venv: $py is older than 3.11" >&2; return 1
    fi

    # Everything pip resolved for these two, pinned (same set on 3.11 and 3.12).
    pins="ansible-core==$want_core kubernetes-validate==1.37.0
attrs==26.1.0 cffi==2.1.1 cryptography==50.0.2 importlib_resources==7.1.0
Jinja2==3.1.6 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
MarkupSafe==3.0.4 packaging==26.4 pycparser==3.12 PyYAML==6.0.4
referencing==0.37.0 resolvelib==1.2.1 rpds-py==2026.9.1 typing_extensions==4.16.0"
    stamp_want="python=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
$pins"

    mkdir -p "$(dirname "$venv")"
    lock="$venv.lock"
    (
        flock -w 600 9 || { echo "fleet-venv: could not lock $lock" >&2; exit 1; }
        if [ -f "$venv/.bpfplan-fleet-stamp" ] && [ "$(cat "$venv/.bpfplan-fleet-stamp")" = "$stamp_want" ] \
            && [ -x "$venv/bin/ansible-playbook" ] && [ -x "$venv/bin/kubernetes-validate" ]; then
            exit 0
        fi
        if [ -e "$venv" ] && [ ! -f "$venv/.bpfplan-fleet-stamp" ] && [ -n "$(ls -A "$venv" 2>/dev/null)" ]; then
            echo "fleet-venv: $venv exists and was not made by this script; set BPFPLAN_VENV elsewhere" >&2
            exit 1
        fi
        echo "fleet-venv: creating $venv with $py (ansible-core $want_core)" >&2
        rm -rf "$venv"
        "$py" -m venv "$venv" >&2
        # shellcheck disable=SC2086
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $pins >&2
        "$venv/bin/python" -m pip check >&2
        printf '%s\n' "$stamp_want" > "$venv/.bpfplan-fleet-stamp"
    ) 9>"$lock" || return 1
    BPFPLAN_VENV=$venv
    export BPFPLAN_VENV
    echo "$venv"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    fleet_venv_main
else
    fleet_venv_main >/dev/null
fi
