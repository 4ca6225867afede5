#!/usr/bin/env bash
# Block devices on the local backend: set up a device, serve it over NBD in the
# background, copy data through it with nbdcopy (flushed), read it back,
# compare checksums, stop the server (SIGTERM writes everything back).  Run by
# tools/try-it (stowkit on PATH); runs alone too; needs nbdcopy (libnbd-bin).
set -euo pipefail

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

server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

echo "-- a 64 MiB device with 64 KiB objects"
stowkit --config-file "$conf" blockstore setup demo --size 64M --object-size 64K

echo "-- serve it on a free port"
timeout 300 stowkit --config-file "$conf" blockstore serve --port 0 demo \
    >"$demo_dir/serve.log" 2>&1 &
server_pid=$!
port=""
for _ in $(seq 50); do
    port=$(sed -n 's|^serving nbd://127.0.0.1:\([0-9]*\)/demo.*|\1|p' "$demo_dir/serve.log")
    [[ -n "$port" ]] && break
    sleep 0.2
done
[[ -n "$port" ]] || { cat "$demo_dir/serve.log"; exit 1; }
uri="nbd://127.0.0.1:$port/demo"
timeout 30 nbdinfo "$uri" | grep -E 'export-size|can_trim|can_flush'

echo "-- copy 16 MiB of random data in, then read it back"
head -c 16M /dev/urandom >"$demo_dir/in.bin"
truncate -s 64M "$demo_dir/in.bin"
timeout 120 nbdcopy --flush "$demo_dir/in.bin" "$uri"
timeout 120 nbdcopy "$uri" "$demo_dir/out.bin"
in_sum=$(sha256sum <"$demo_dir/in.bin" | cut -d' ' -f1)
out_sum=$(sha256sum <"$demo_dir/out.bin" | cut -d' ' -f1)
echo "in  $in_sum"
echo "out $out_sum"
[[ "$in_sum" == "$out_sum" ]] || { echo "checksums differ"; exit 1; }

echo "-- stop the server (SIGTERM: write back, unlock)"
kill -TERM "$server_pid"
wait "$server_pid"
server_pid=""
stowkit --config-file "$conf" blockstore show demo
