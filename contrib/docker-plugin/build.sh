#!/bin/bash
# Build stowkit's managed Docker plugin: OUTDIR/config.json and OUTDIR/rootfs/.
#
#   contrib/docker-plugin/build.sh [--create NAME] OUTDIR
#
# The root filesystem is a minimal Debian 12 made by mmdebstrap from a Debian mirror
# (no image registry is used): python3 with Debian's btrfsutil bindings, btrfs-progs,
# openssh-client, rsync and zstd, and a venv /opt/stowkit (system site packages, so
# `import btrfsutil` finds Debian's) holding stowkit's wheel and its dependencies.
# Then, as root (see doc/docker-plugin.md, "Managed plugin"):
#
#   docker plugin create stowkit OUTDIR        # or --create stowkit here
#   docker plugin set stowkit state.source=/srv/btrfs/stowkit
#   docker plugin enable stowkit
#
# Environment:
#   STOWKIT_CACHE  cache directory (default ${XDG_CACHE_HOME:-~/.cache}/stowkit); the
#                  Debian base is kept there as docker-plugin/base-KEY.tar, KEY a hash of
#                  everything that makes it (suite, mirror, packages, options), so a
#                  second build skips mmdebstrap
#   MIRROR         Debian mirror (default http://deb.debian.org/debian)
#   PYTHON         Python 3.11 with pip that builds the wheels (default the checkout's
#                  .venv, whose installed versions pin the dependencies)
#   DOCKER         docker client for --create (default docker; DOCKER_HOST is honoured)
#
# Needs root (mmdebstrap, chroot) and network access to the mirror and to PyPI (pip's
# cache makes a rebuild work from it).  Exit status: 0 built, 2 usage, else a failure.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SUITE=bookworm
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
DOCKER="${DOCKER:-docker}"
CACHE="${STOWKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stowkit}/docker-plugin"
VENV=/opt/stowkit
# What `stowkit plugin serve` and its jobs run: btrfs send/receive, ssh to peers,
# rsync (volume sync), zstd (send_compression), and python3-venv for /opt/stowkit.
PACKAGES=(python3 python3-venv python3-btrfsutil btrfs-progs openssh-client rsync zstd)
# No recommends, no docs, man pages or translations; merged /usr without usrmerge
# (which would pull in perl).  apt's lists and caches are dropped by mmdebstrap itself.
MMDEBSTRAP_OPTS=(
    --variant=essential
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    "--aptopt=APT::Install-Recommends \"false\""
    --dpkgopt=path-exclude=/usr/share/man/*
    --dpkgopt=path-exclude=/usr/share/doc/*
    --dpkgopt=path-include=/usr/share/doc/*/copyright
    --dpkgopt=path-exclude=/usr/share/locale/*
    --dpkgopt=path-exclude=/usr/share/info/*
    "--customize-hook=chroot \"\$1\" python3 -m venv --system-site-packages $VENV"
    "--customize-hook=rm -rf \"\$1\"/var/cache/debconf/*-old \"\$1\"/var/log/*.log"
)

die() {
    echo "build.sh: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 [--create NAME] OUTDIR" >&2
    exit 2
}

name=""
out=""
while (($#)); do
    case "$1" in
    --create)
        (($# >= 2)) || usage
        name=$2
        shift 2
        ;;
    -h | --help) usage ;;
    -*) usage ;;
    *)
        [[ -z "$out" ]] || usage
        out=$1
        shift
        ;;
    esac
done
[[ -n "$out" ]] || usage
((EUID == 0)) || die "run as root (mmdebstrap and chroot)"
command -v mmdebstrap >/dev/null || die "mmdebstrap not found (apt-get install mmdebstrap)"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null ||
    die "$PYTHON is not Python 3.11 (the wheels must match the rootfs' python3.11)"

# -- the Debian base, cached ----------------------------------------------------------
key=$(printf '%s\n' "$SUITE" "$MIRROR" "${PACKAGES[@]}" "${MMDEBSTRAP_OPTS[@]}" |
    sha256sum | cut -c1-16)
base="$CACHE/base-$key.tar"
mkdir -p "$CACHE"
(
    # Two builds at once make the base once.
    flock 9
    if [[ ! -s "$base" ]]; then
        echo "== mmdebstrap $SUITE (${PACKAGES[*]}) -> $base" >&2
        tmp="$CACHE/.base-$key.$$.tar"
        trap 'rm -f "$tmp"' EXIT
        mmdebstrap --quiet "${MMDEBSTRAP_OPTS[@]}" --format=tar \
            --include="$(
                IFS=,
                echo "${PACKAGES[*]}"
            )" "$SUITE" "$tmp" "$MIRROR"
        mv "$tmp" "$base"
    fi
) 9>"$CACHE/.lock"

# -- stowkit's wheel and its dependencies, built on this host ------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/stowkit-plugin-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Build from a copy: an in-tree build would write build/ and *.egg-info into a
# checkout others may be using.  The copy has no .git, so setuptools-scm is told the
# version of the checkout's editable install.
mkdir "$work/src" "$work/wheels"
cp -a "$REPO"/{setup.py,setup.cfg,pyproject.toml,README.md,LICENSE,corelib,plugins,cli} "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
version=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("stowkit"))' 2>/dev/null ||
    echo 0.0.0)
pip=("$PYTHON" -m pip --disable-pip-version-check)
SETUPTOOLS_SCM_PRETEND_VERSION="$version" "${pip[@]}" wheel -q --no-deps -w "$work/wheels" "$work/src"
wheel=$(echo "$work"/wheels/stowkit-*.whl)
[[ -f "$wheel" ]] || die "no stowkit wheel was built"
# The dependencies at the versions PYTHON's environment has (the ones tested), as
# wheels made here: the rootfs then installs with --no-index and needs no network.
"${pip[@]}" freeze --exclude-editable | grep -v '^btrfsutil==' >"$work/constraints.txt" || true
"${pip[@]}" wheel -q -w "$work/wheels" -c "$work/constraints.txt" "$wheel"

# -- the root filesystem ----------------------------------------------------------------
mkdir -p "$out"
out="$(cd "$out" && pwd)"
rootfs="$out/rootfs"
[[ "$rootfs" != / ]] || die "refusing rootfs /"
if [[ -e "$rootfs" ]]; then
    # A previous build's tree; never follow a mount out of it.
    rm -rf --one-file-system "$rootfs"
fi
mkdir "$rootfs"
tar -xf "$base" -C "$rootfs"
cp -a "$work/wheels" "$rootfs/tmp/wheels"
# A clean environment: this host's PIP_* settings (find-links, indexes) mean nothing there.
in_rootfs=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$rootfs")
"${in_rootfs[@]}" "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir \
    --no-index --find-links /tmp/wheels "/tmp/wheels/$(basename "$wheel")"
rm -rf "$rootfs/tmp/wheels"
"${in_rootfs[@]}" "$VENV/bin/pip" check -q --disable-pip-version-check >&2 ||
    die "pip check failed in the rootfs"
# pip itself is not needed to run (an upgrade is a rebuild): 16 MB less to copy.
"${in_rootfs[@]}" "$VENV/bin/pip" uninstall -q -y --disable-pip-version-check pip
cp "$HERE/config.json" "$out/config.json"

# -- what Docker will run must be there ---------------------------------------------
entry=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["Entrypoint"][0])' \
    "$out/config.json")
[[ -x "$rootfs$entry" ]] || die "Entrypoint $entry is not an executable in the rootfs"
"${in_rootfs[@]}" "$VENV/bin/python" -c \
    'import btrfsutil, stowkit.plugins.btrfs.driver, stowkit.cli.plugin' ||
    die "stowkit's btrfs driver does not import in the rootfs"
"${in_rootfs[@]}" "$entry" plugin serve --help >/dev/null ||
    die "$entry plugin serve --help failed in the rootfs"
echo "built $out (stowkit $version, rootfs $(du -sh --one-file-system "$rootfs" | cut -f1))" >&2

if [[ -n "$name" ]]; then
    "$DOCKER" plugin create "$name" "$out"
fi
