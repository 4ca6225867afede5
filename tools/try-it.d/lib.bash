# Sourced by the demos in tools/try-it.d: each demo checks what it shows and fails
# loudly (a message on stderr, exit 1) when something is not as it should be.
#
#   say TEXT...                  a heading ("-- TEXT")
#   fail TEXT...                 print "try-it: DEMO: FAILED: TEXT" and exit 1
#   expect_eq WHAT GOT WANT      fail unless GOT is WANT
#   expect_has WHAT TEXT NEEDLE  fail unless TEXT contains the fixed string NEEDLE
#   expect_lacks WHAT TEXT NEEDLE
#   ok TEXT...                   print "   ok: TEXT" (what was just checked)
#   fields CMD...                run CMD, its output lines joined by spaces (the values
#                                of `stowkit ... show -f value -c A -c B` on one line)
#   json WHAT JSON EXPR          print the Python expression EXPR of the parsed JSON
#                                (named d), e.g. json answer "$a" 'd["Err"]'; fails
#                                when JSON does not parse or EXPR raises
#   wait_for WHAT PID TRIES CMD...  poll CMD every 0.2 s until it succeeds; fail when
#                                the process PID is gone or after TRIES tries
#   stop_server PID              SIGTERM the server itself (never a wrapper), wait for
#                                it, fail unless it exits 0

set -euo pipefail # as every script that sources this runs

demo_name=$(basename "$0" .sh)

say() { echo "-- $*"; }

fail() {
    echo "try-it: $demo_name: FAILED: $*" >&2
    exit 1
}

ok() { echo "   ok: $*"; }

fields() {
    local out
    out=$("$@") || fail "$* exited $?"
    paste -sd' ' - <<<"$out"
}

expect_eq() {
    [[ "$2" == "$3" ]] || fail "$1: got '$2', want '$3'"
}

expect_has() {
    [[ "$2" == *"$3"* ]] || fail "$1: '$3' is not in: $2"
}

expect_lacks() {
    [[ "$2" != *"$3"* ]] || fail "$1: '$3' should not be in: $2"
}

json() {
    local out
    out=$(python3 -c '
import json, sys
d = json.loads(sys.argv[1])
print(eval(sys.argv[2], {"d": d}))
' "$2" "$3" 2>&1) || fail "$1: cannot evaluate $3 on: $2 (${out##*$'\n'})"
    echo "$out"
}

wait_for() {
    local what=$1 pid=$2 tries=$3 try
    shift 3
    for ((try = 0; try < tries; try++)); do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || fail "$what: the process $pid exited"
        sleep 0.2
    done
    fail "$what: not ready after $((tries / 5)) s"
}

stop_server() {
    local pid=$1 rc=0
    kill -TERM "$pid" 2>/dev/null || fail "server $pid is not running any more"
    wait "$pid" || rc=$?
    expect_eq "exit status of server $pid after SIGTERM" "$rc" 0
}
