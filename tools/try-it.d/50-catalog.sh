#!/usr/bin/env bash
# The backup catalog: serve it without Keystone on SQLite, record a backup, list it
# over HTTP and with the CLI, check both name it, stop the server.  Run by
# tools/try-it (stowkit on PATH); runs alone too, no root or services needed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

try_dir=${STOWKIT_TRY_DIR:-$(mktemp -d /tmp/stowkit-try.XXXXXX)}
dir="$try_dir/catalog"
rm -rf "$dir"
mkdir -p "$dir"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$dir/stowkit.conf" <<CONF
[DEFAULT]
state_dir = $dir
CONF
sk() { stowkit --config-file "$dir/stowkit.conf" "$@"; }

server=""
cleanup() {
    if [[ -n "$server" ]]; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
}
trap cleanup EXIT

say "serving on 127.0.0.1:$port (no auth, SQLite in $dir)"
# The server itself in the background: $! is the pid to stop.
stowkit --config-file "$dir/stowkit.conf" catalog serve --no-auth --port "$port" --workers 1 \
    >"$dir/server.log" 2>&1 &
server=$!
url="http://127.0.0.1:$port"
wait_for "catalog API on $url (log: $dir/server.log)" "$server" 150 \
    curl -s -o /dev/null --max-time 5 "$url/"

say "recording a backup"
answer=$(curl -sS --fail-with-body --max-time 30 -X POST "$url/v2/demo/backups" \
    -H 'Content-Type: application/json' -H 'X-User-Id: alice' \
    -d '{"container": "freezer_backups", "hostname": "web-1.example.org", "backup_name": "etc",
         "time_stamp": 1700000000, "curr_backup_level": 0, "path_to_backup": "/etc"}') ||
    fail "POST /v2/demo/backups: $answer"
echo "$answer"
backup_id=$(json "POST /v2/demo/backups" "$answer" 'd["backup_id"]')
[[ -n "$backup_id" ]] || fail "POST /v2/demo/backups answered no backup_id: $answer"
ok "recorded as $backup_id"

say "listing the project's backups over HTTP"
listing=$(curl -sS --fail-with-body --max-time 30 "$url/v2/demo/backups?limit=10") ||
    fail "GET /v2/demo/backups: $listing"
echo "$listing"
expect_eq "backups listed in project demo (id host name)" "$(json "GET /v2/demo/backups" \
    "$listing" '[(b["backup_id"], b["backup_metadata"]["hostname"],
                  b["backup_metadata"]["backup_name"]) for b in d["backups"]]')" \
    "[('$backup_id', 'web-1.example.org', 'etc')]"
other=$(curl -sS --fail-with-body --max-time 30 "$url/v2/other/backups?limit=10") ||
    fail "GET /v2/other/backups: $other"
expect_eq "backups listed in project other" "$(json "GET /v2/other/backups" "$other" \
    'len(d["backups"])')" 0
ok "the backup is listed in project demo, not in project other"

say "stowkit catalog backup list --project demo"
sk catalog backup list --project demo
expect_eq "catalog backup list --project demo" \
    "$(sk catalog backup list --project demo -f value)" "$backup_id web-1.example.org etc 2023-11-14T22:13:20Z 0"
ok "the CLI lists the same backup"

stop_server "$server"
server=""
say "stopped"
