#!/usr/bin/env bash
# BTRFS volumes on an embedded loop-image btrfs: create a volume, snapshot it,
# show a purge dry-run, schedule a job, and ask the Docker plugin socket for
# its volumes.  Each step checks its result.  Run by tools/try-it (stowkit on
# PATH); runs alone too, as root.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

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

say "a 256 MiB btrfs in $img"
truncate -s 256M "$img"
mkfs.btrfs -q "$img" >/dev/null 2>&1
loopdev=$(losetup -f --show "$img")
mount "$loopdev" "$mnt"

cat >"$conf" <<CONF
[DEFAULT]
state_dir = $demo_dir/state

[volume_btrfs]
root = $mnt/stowkit
CONF
sk() { stowkit --config-file "$conf" "$@"; }

say "stowkit volume create demo -o compression=zstd"
sk volume create demo -o compression=zstd
expect_has "volume options" "$(sk volume show demo -f value -c options)" "compression=zstd"
echo "hello" >"$mnt/stowkit/volumes/demo/greeting"
ok "demo exists, compressed with zstd"

say "three snapshots of demo"
made=()
for _ in 1 2 3; do made+=("$(sk snapshot create demo -f value -c name)"); done
sk snapshot list demo -c name
listed=$(sk snapshot list demo -f value -c name)
expect_eq "number of snapshots listed" "$(grep -c . <<<"$listed")" 3
expect_eq "snapshots listed" "$listed" "$(printf '%s\n' "${made[@]}")"
expect_eq "greeting in snapshot ${made[0]}" "$(cat "$mnt/stowkit/snapshots/${made[0]}/greeting")" hello
ok "3 snapshots listed, the first holds the greeting"

say "stowkit snapshot purge demo 1h:1d --dry-run (nothing is deleted)"
purge=$(sk snapshot purge demo 1h:1d --dry-run -f value -c snapshot -c action)
sk snapshot purge demo 1h:1d --dry-run
expect_eq "snapshots the dry-run keeps" "$(grep -c ' kept$' <<<"$purge")" 3
expect_eq "snapshots after the dry-run" "$(sk snapshot list demo -f value -c name)" "$listed"
ok "all 3 kept (they are younger than 1h), none deleted"

say "a snapshot of demo every 60 minutes, and a buttervolume schedule imported"
sk schedule add demo snapshot 60 -c volume -c action -c minutes -c state
printf 'demo,purge:4h:1d:2w,120,True\n' >"$demo_dir/schedule.csv"
sk schedule import "$demo_dir/schedule.csv" -c volume -c action -c minutes -c state
sk schedule list -c volume -c action -c minutes -c state -c next_run
expect_eq "scheduled jobs" "$(sk schedule list -f value -c volume -c action -c minutes)" \
    "$(printf 'demo snapshot 60.0\ndemo purge:4h:1d:2w 120.0')"
ok "2 jobs: the snapshot every 60 min, the imported purge every 120 min"

say "the Docker volume plugin on $sock (Docker would use /run/docker/plugins/NAME.sock)"
sk schedule pause --all >/dev/null # the demo's plugin need not run the jobs
# Not the sk function: $! must be the server itself, or cleanup signals a subshell.
stowkit --config-file "$conf" plugin serve --socket "$sock" >"$demo_dir/plugin.log" 2>&1 &
plugin_pid=$!
wait_for "plugin socket $sock" "$plugin_pid" 100 test -S "$sock"
call() { curl -sS --max-time 30 --unix-socket "$sock" -X POST "${@:2}" "http://plugin/$1"; }
answer=$(call Plugin.Activate)
echo "Plugin.Activate: $answer"
expect_eq "Plugin.Activate" "$(json Plugin.Activate "$answer" 'd["Implements"]')" \
    "['VolumeDriver']"
answer=$(call VolumeDriver.List -d '{}')
echo "VolumeDriver.List: $answer"
expect_eq "VolumeDriver.List: names, error" "$(json VolumeDriver.List "$answer" \
    '[v["Name"] for v in d["Volumes"]], d.get("Err", "")')" "(['demo'], '')"
answer=$(call VolumeDriver.Create -d '{"Name": "../escape"}')
echo "VolumeDriver.Create ../escape: $answer"
expect_has "VolumeDriver.Create of a bad name" \
    "$(json VolumeDriver.Create "$answer" 'd["Err"]')" "invalid volume name"
[[ ! -e "$mnt/stowkit/escape" && ! -e "$mnt/escape" ]] || fail "../escape was created"
ok "the plugin lists demo and refuses ../escape"
stop_server "$plugin_pid"
plugin_pid=""
say "done (the loop image stays in $img; it is unmounted now)"
