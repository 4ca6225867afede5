#!/usr/bin/env bash
# BTRFS volumes on an embedded loop-image btrfs: create a volume, snapshot it,
# show a purge dry-run, schedule a job, and ask the Docker plugin socket for
# its volumes.  Run by tools/try-it (stowkit on PATH); runs alone too, as root.
set -euo pipefail

try_dir=${STOWKIT_TRY_DIR:-$(mktemp -d /tmp/stowkit-try.XXXXXX)}
demo_dir="$try_dir/volumes"
img="$demo_dir/btrfs.img"
mnt="$demo_dir/mnt"
conf="$demo_dir/stowkit.conf"
sock="$demo_dir/plugin.sock"
mkdir -p "$mnt"

loopdev=""
plugin_pid=""
cleanup() {
    if [[ -n "$plugin_pid" ]]; then
        kill -TERM "$plugin_pid" 2>/dev/null || true
        wait "$plugin_pid" 2>/dev/null || true
    fi
    if mountpoint -q "$mnt"; then umount "$mnt"; fi
    if [[ -n "$loopdev" ]]; then losetup -d "$loopdev" 2>/dev/null || true; fi
}
trap cleanup EXIT

echo "-- a 256 MiB btrfs in $img"
truncate -s 256M "$img"
mkfs.btrfs -q "$img" >/dev/null
loopdev=$(losetup -f --show "$img")
mount "$loopdev" "$mnt"

cat >"$conf" <<CONF
[DEFAULT]
state_dir = $demo_dir/state

[volume_btrfs]
root = $mnt/stowkit
CONF
sk() { stowkit --config-file "$conf" "$@"; }

echo "-- stowkit volume create demo -o compression=zstd"
sk volume create demo -o compression=zstd
echo "hello" >"$mnt/stowkit/volumes/demo/greeting"

echo "-- three snapshots of demo"
for _ in 1 2 3; do sk snapshot create demo -f value -c name; done
sk snapshot list demo -c name

echo "-- stowkit snapshot purge demo 1h:1d --dry-run (nothing is deleted)"
sk snapshot purge demo 1h:1d --dry-run

echo "-- a snapshot of demo every 60 minutes, and a buttervolume schedule imported"
sk schedule add demo snapshot 60 -c volume -c action -c minutes -c state
printf 'demo,purge:4h:1d:2w,120,True\n' >"$demo_dir/schedule.csv"
sk schedule import "$demo_dir/schedule.csv" -c volume -c action -c minutes -c state
sk schedule list -c volume -c action -c minutes -c state -c "next run"

echo "-- the Docker volume plugin on $sock (Docker would use /run/docker/plugins/NAME.sock)"
sk schedule pause --all  # the demo's plugin need not run the jobs
# exec, not the sk function: $! must be the server itself, or cleanup kills a subshell.
stowkit --config-file "$conf" plugin serve --socket "$sock" >"$demo_dir/plugin.log" 2>&1 &
plugin_pid=$!
for _ in $(seq 1 100); do [[ -S "$sock" ]] && break; sleep 0.1; done
curl -s --unix-socket "$sock" -X POST http://plugin/Plugin.Activate; echo
curl -s --unix-socket "$sock" -X POST -d '{}' http://plugin/VolumeDriver.List; echo
curl -s --unix-socket "$sock" -X POST -d '{"Name": "../escape"}' http://plugin/VolumeDriver.Create; echo
echo "-- done (the loop image stays in $img; it is unmounted now)"
