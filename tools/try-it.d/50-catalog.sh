#!/usr/bin/env bash
# The backup catalog: serve it without Keystone on SQLite, record a backup, list it, stop.
set -euo pipefail

dir="${STOWKIT_TRY_DIR:?STOWKIT_TRY_DIR must name a scratch directory}/catalog"
mkdir -p "$dir"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$dir/stowkit.conf" <<CONF
[DEFAULT]
state_dir = $dir
CONF

echo "== catalog: serving on 127.0.0.1:$port (no auth, SQLite in $dir)"
stowkit --config-file "$dir/stowkit.conf" catalog serve --no-auth --port "$port" --workers 1 \
    > "$dir/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

url="http://127.0.0.1:$port"
for _ in $(seq 150); do
    curl -s -o /dev/null "$url/" && break
    kill -0 "$server" 2>/dev/null || { cat "$dir/server.log"; exit 1; }
    sleep 0.2
done

echo "== catalog: recording a backup"
curl -sf -X POST "$url/v2/demo/backups" -H 'Content-Type: application/json' -H 'X-User-Id: alice' \
    -d '{"container": "freezer_backups", "hostname": "web-1.example.org", "backup_name": "etc",
         "time_stamp": 1700000000, "curr_backup_level": 0, "path_to_backup": "/etc"}'
echo

echo "== catalog: listing the project's backups"
curl -sf "$url/v2/demo/backups?limit=10"
echo
stowkit --config-file "$dir/stowkit.conf" catalog backup list --project demo

kill "$server"
wait "$server" 2>/dev/null || true
trap - EXIT
echo "== catalog: stopped"
