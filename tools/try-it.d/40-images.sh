#!/usr/bin/env bash
# Image sync between two local-store regions: a master with a few images, a target
# region with a stale copy, then status -> sync -> status, and a check that the
# target holds the public images, byte for byte, with the master's metadata.
# Run by tools/try-it (stowkit on PATH); runs alone too, no root or services needed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

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
sync_conf=(--sync-config "$dir/glancesync.conf")

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
md5() { md5sum <"$1" | cut -d' ' -f1; }

say "regions"
sk image regions "${sync_conf[@]}"
expect_eq "regions" "$(sk image regions "${sync_conf[@]}" -f value -c region -c role)" \
    "$(printf 'RegionOne master\nRegionTwo ')"

say "status before"
sk image status "${sync_conf[@]}"
expect_eq "status before the sync" \
    "$(sk image status "${sync_conf[@]}" -f value -c status -c image | LC_ALL=C sort)" \
    "$(printf 'pending_metadata base\npending_upload tools')"
ok "tools is to upload, base needs its metadata; private is not public: not synchronised"

say "sync"
sk image sync "${sync_conf[@]}"

say "status after"
sk image status "${sync_conf[@]}"
expect_eq "status after the sync" \
    "$(sk image status "${sync_conf[@]}" -f value -c status -c image | LC_ALL=C sort)" \
    "$(printf 'ok base\nok tools')"

say "RegionTwo"
sk image list --region RegionTwo -c name -c visibility -c size -c checksum
expect_eq "RegionTwo's images (name visibility size md5)" \
    "$(sk image list --region RegionTwo -f value -c name -c visibility -c size -c checksum |
        LC_ALL=C sort)" \
    "$(printf 'base public 65536 %s\ntools public 4096 %s' "$(md5 "$dir/base.img")" \
        "$(md5 "$dir/kernel.img")")"
base_id=$(sk image list --region RegionTwo -f value -c id -c name | sed -n 's/ base$//p')
expect_eq "base's properties in RegionTwo" \
    "$(sk image show "$base_id" --region RegionTwo -f value -c properties)" "nid=1 type=baseimages"
ok "RegionTwo holds base and tools with the master's checksums and metadata, status ok"
