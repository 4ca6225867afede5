#!/usr/bin/env bash
# Block devices on the local backend: set up a device, serve it over NBD in the
# background, copy data through it with nbdcopy (flushed), read it back,
# compare checksums, stop the server (SIGTERM writes everything back) and check
# what the backend holds.  Run by tools/try-it (stowkit on PATH); runs alone
# too; needs nbdinfo and nbdcopy (libnbd-bin).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

try_dir=${STOWKIT_TRY_DIR:-$(mktemp -d /tmp/stowkit-try.XXXXXX)}
demo_dir="$try_dir/blockstore"
conf="$demo_dir/stowkit.conf"
mkdir -p "$demo_dir"
cat >"$conf" <<CONF
[DEFAULT]
state_dir = $demo_dir/state
[blockstore]
backend = local
CONF
sk() { stowkit --config-file "$conf" "$@"; }

server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

say "a 64 MiB device with 64 KiB objects"
sk blockstore setup demo --size 64M --object-size 64K
expect_eq "size, object size, objects" \
    "$(fields sk blockstore show demo -f value -c size -c object_size -c objects)" \
    "67108864 65536 1024"

say "serve it on a free port"
# The server itself in the background, no `timeout` wrapper: $! is the pid that
# gets SIGTERM (a wrapper would be signalled instead and exit 143).  Every client
# below runs under timeout.
stowkit --config-file "$conf" blockstore serve --port 0 demo >"$demo_dir/serve.log" 2>&1 &
server_pid=$!
port=""
serving() {
    port=$(sed -n 's|^serving nbd://127.0.0.1:\([0-9]*\)/demo.*|\1|p' "$demo_dir/serve.log")
    [[ -n "$port" ]]
}
wait_for "NBD server (log: $demo_dir/serve.log)" "$server_pid" 150 serving
uri="nbd://127.0.0.1:$port/demo"
info=$(timeout 30 nbdinfo "$uri")
grep -E 'export-size|can_trim|can_flush' <<<"$info"
expect_has "nbdinfo" "$info" "export-size: 67108864"
ok "$uri answers: 64 MiB"

say "copy 16 MiB of random data in, then read it back"
head -c 16M /dev/urandom >"$demo_dir/in.bin"
truncate -s 64M "$demo_dir/in.bin"
timeout 120 nbdcopy --flush "$demo_dir/in.bin" "$uri"
timeout 120 nbdcopy "$uri" "$demo_dir/out.bin"
in_sum=$(sha256sum <"$demo_dir/in.bin" | cut -d' ' -f1)
out_sum=$(sha256sum <"$demo_dir/out.bin" | cut -d' ' -f1)
echo "in  $in_sum"
echo "out $out_sum"
expect_eq "sha256 of what was read back" "$out_sum" "$in_sum"
ok "checksums match"

say "stop the server (SIGTERM: write back, unlock)"
stop_server "$server_pid"
server_pid=""
sk blockstore show demo
shown=$(fields sk blockstore show demo -f value -c size -c objects_stored -c bytes_stored \
    -c locked_by)
# 16 MiB of random data is 256 objects of 64 KiB; the zero tail stores nothing.
expect_eq "size, objects stored, bytes stored, lock after the stop" "$shown" \
    "67108864 256 16777216 None"
ok "256 objects (16 MiB) stored, the lock released"
