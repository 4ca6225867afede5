# Sourced by tools/try-it and tools/test-all: what both install before they run.
#
#   table_packages USER...   print the Debian packages of the rows of tools/commands.txt
#                            used by any USER (test, demo, bench, venv), sorted
#   install_packages USER... apt-get install those that dpkg says are missing
#   ensure_venv EXTRAS       make .venv (python3.11, or $PYTHON) with stowkit installed
#                            editable with EXTRAS (e.g. test,btrfs); pip runs only when
#                            setup.py/setup.cfg/pyproject.toml changed or an extra is new
#
# Plain bash (no awk, no python): it runs before anything is installed.

set -euo pipefail # as every script that sources this runs

STOWKIT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMMANDS_TABLE="${COMMANDS_TABLE:-$STOWKIT_ROOT/tools/commands.txt}"

table_packages() {
    local command package users services extra user
    local -A seen=()
    while read -r command package users services extra; do
        [[ -z "$command" || "$command" == \#* ]] && continue
        if [[ -z "$services" || -n "$extra" ]]; then
            echo "$COMMANDS_TABLE: want COMMAND PACKAGE USED-BY SERVICES: $command $package" >&2
            return 1
        fi
        for user in "$@"; do
            if [[ ",$users," == *",$user,"* ]]; then
                seen[$package]=1
                break
            fi
        done
    done <"$COMMANDS_TABLE"
    ((${#seen[@]})) || return 0
    printf '%s\n' "${!seen[@]}" | LC_ALL=C sort
}

install_packages() {
    local pkg wanted missing=()
    wanted=$(table_packages "$@") || return 1
    for pkg in $wanted; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    echo "== apt-get install ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
        install -y -q --no-install-recommends "${missing[@]}"
}

ensure_venv() {
    local extras=$1 venv="$STOWKIT_ROOT/.venv" python="${PYTHON:-python3.11}"
    local marker="$STOWKIT_ROOT/.venv/.stowkit-installed" hash have_hash="" have_extras=""
    local extra need=0
    if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        echo "== $python -m venv $venv" >&2
        "$python" -m venv --clear "$venv"
    fi
    hash=$(cat "$STOWKIT_ROOT"/setup.py "$STOWKIT_ROOT"/setup.cfg "$STOWKIT_ROOT"/pyproject.toml |
        sha256sum | cut -c1-16)
    if [[ -f "$marker" ]]; then read -r have_hash have_extras <"$marker" || true; fi
    if [[ "$have_hash" != "$hash" ]]; then
        need=1
        have_extras=""
    fi
    for extra in ${extras//,/ }; do
        [[ ",$have_extras," == *",$extra,"* ]] || need=1
    done
    ((need)) || return 0
    extras=$(printf '%s\n' ${extras//,/ } ${have_extras//,/ } | LC_ALL=C sort -u | paste -sd, -)
    echo "== pip install -e .[$extras] into $venv" >&2
    (cd "$STOWKIT_ROOT" && "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -e ".[$extras]")
    echo "$hash $extras" >"$marker"
}
