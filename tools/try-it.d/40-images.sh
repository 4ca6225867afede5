#!/usr/bin/env bash
# Image sync between two local-store regions: a master with a few images, a target
# region with a stale copy, then status -> sync -> status.  Run by tools/try-it
# (stowkit on PATH); runs alone too, no root or services needed.
set -euo pipefail

try_dir=${STOWKIT_TRY_DIR:-$(mktemp -d /tmp/stowkit-try.XXXXXX)}
dir="$try_dir/images"
rm -rf "$dir"
mkdir -p "$dir/store/RegionTwo"
cat >"$dir/stowkit.conf" <<CONF
[image]
backend = local
[image_local]
path = $dir/store
CONF
cat >"$dir/glancesync.conf" <<CONF
[main]
master_region = RegionOne
[master]
# GlanceSync's rules: public images are synchronised, metadata_set limits what is copied
metadata_set = type, nid
CONF
sk() { stowkit --config-file "$dir/stowkit.conf" "$@"; }

head -c 65536 /dev/urandom >"$dir/base.img"
head -c 4096 /dev/urandom >"$dir/kernel.img"
head -c 1024 /dev/urandom >"$dir/private.img"
sk image create "$dir/base.img" --name base --region RegionOne --public \
    --property type=baseimages --property nid=1 -f value -c id >/dev/null
sk image create "$dir/kernel.img" --name tools --region RegionOne --public \
    --property type=tools -f value -c id >/dev/null
sk image create "$dir/private.img" --name private --region RegionOne \
    --property nid=2 -f value -c id >/dev/null
# a stale copy in the target region: same bytes, old metadata
sk image create "$dir/base.img" --name base --region RegionTwo --public \
    --property type=old -f value -c id >/dev/null

echo "== regions"
sk image regions --sync-config "$dir/glancesync.conf"
echo "== status before"
sk image status --sync-config "$dir/glancesync.conf"
echo "== sync"
sk image sync --sync-config "$dir/glancesync.conf"
echo "== status after"
sk image status --sync-config "$dir/glancesync.conf"
echo "== RegionTwo"
sk image list --region RegionTwo -c name -c visibility -c size -c checksum
