#!/usr/bin/env bash
# The browsable API page and the live updates in a real headless browser: builds the
# `gophermart` and `accrual` binaries, runs our accrual system and gophermart against a
# throwaway PostgreSQL (scripts/with-postgres.sh), and drives Chromium
# (scripts/browser/swagger-ui.mjs, then scripts/browser/events.mjs):
#   - /swagger-ui/ lists the eight customer operations (GET /api/user/events among them);
#     "Try it out" registers a customer and the page shows the 200; a screenshot is saved to
#     docs/screenshots/swagger-ui.png;
#   - in that page, with the customer signed in (the `token` cookie), an
#     EventSource('/api/user/events') starts with `ready`, and an order registered with the
#     accrual system and uploaded from the page arrives as `order` events up to PROCESSED (as
#     GET /api/user/orders lists it) and its credit as a `balance` event;
#   - the service restarts: the driver writes "LOGIN NUMBER" to a request file and sends
#     SIGTERM to gophermart; once gophermart has exited, this script inserts order NUMBER for
#     LOGIN straight into the database with psql (a trigger writes its event, as another
#     instance's upload would) and, 3 s later (the page's reconnection attempts in between find
#     no server), starts gophermart again on the same port and database. The
#     page's EventSource must reconnect by itself with Last-Event-ID and receive the missed
#     `order` event, after the last id it had, with no event twice.
# Each step prints what was seen.
#
# Installs what it needs when missing: Debian's `chromium`, `nodejs` and `npm` (when running as
# root; otherwise it fails naming them), and the Node driver's packages
# (scripts/browser/node_modules, from the committed package-lock.json).
#
# Folders: the screenshot's folder is made when missing; a temporary /tmp/gophermart-browser.XXXXXX
# holds the logs of gophermart and accrual, the restart request and the browser's profile (TMPDIR
# of the driver), and is removed at the end; the database is a throwaway cluster of
# scripts/with-postgres.sh (its header says where). Whatever this starts (accrual, gophermart,
# the driver and its Chromium) is stopped when it ends, also on failure.
#
# Environment: CHROMIUM (the browser, default: chromium on the PATH), SCREENSHOT (default
# docs/screenshots/swagger-ui.png), CARGO (default cargo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ "${1:-}" != "--with-database" ]]; then
    find_chromium() {
        local name
        for name in "${CHROMIUM:-}" chromium chromium-browser; do
            if [[ -n "$name" ]] && command -v "$name" >/dev/null 2>&1; then
                command -v "$name"
                return
            fi
        done
    }
    chromium_bin="$(find_chromium)"
    if [[ -z "$chromium_bin" ]]; then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "test-browser: installing Debian's chromium package" >&2
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >&2
            apt-get install -y -qq -o DPkg::Lock::Timeout=600 chromium >&2
            chromium_bin="$(find_chromium)"
        fi
    fi
    if [[ -z "$chromium_bin" ]]; then
        echo "test-browser: Chromium not found; install the 'chromium' package or set CHROMIUM" >&2
        exit 1
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "test-browser: installing Debian's nodejs and npm packages" >&2
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >&2
            apt-get install -y -qq -o DPkg::Lock::Timeout=600 nodejs npm >&2
        fi
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "test-browser: Node.js and npm not found; install the 'nodejs' and 'npm' packages" >&2
        exit 1
    fi
    lock="scripts/browser/package-lock.json"
    installed="scripts/browser/node_modules/.package-lock.json"
    if [[ ! -f "$installed" || "$lock" -nt "$installed" ]]; then
        echo "test-browser: installing the driver's packages (npm ci)" >&2
        (cd scripts/browser && npm ci --no-audit --no-fund --loglevel=error >&2)
    fi
    ${CARGO:-cargo} build --quiet --bin gophermart --bin accrual
    export CHROMIUM="$chromium_bin"
    exec scripts/with-postgres.sh "$0" --with-database
fi

# From here on DATABASE_URI points at a PostgreSQL server.
started=$SECONDS
screenshot="${SCREENSHOT:-$root/docs/screenshots/swagger-ui.png}"
mkdir -p "$(dirname "$screenshot")"
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
port="$(free_port)"
accrual_port="$(free_port)"
work="$(mktemp -d /tmp/gophermart-browser.XXXXXX)"
pid=""
accrual_pid=""
node_pid=""
stop() {
    if [[ -n "$1" ]]; then
        kill -TERM "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
cleanup() {
    stop "$node_pid"
    stop "$pid"
    stop "$accrual_pid"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "test-browser: $*; the logs of gophermart and accrual:" >&2
    cat "$work/gophermart.log" "$work/accrual.log" >&2 || true
    exit 1
}

# Waits until URL answers, failing when the process PID exits first.
wait_ready() {
    local url="$1" process="$2" name="$3"
    for _ in $(seq 300); do
        if curl -sf "$url" >/dev/null 2>&1; then
            return
        fi
        if ! kill -0 "$process" 2>/dev/null; then
            fail "$name exited while starting"
        fi
        sleep 0.1
    done
    fail "$name did not answer $url within 30 s"
}

RUST_LOG="${RUST_LOG:-warn}" "$root/target/debug/accrual" -a "127.0.0.1:$accrual_port" \
    >"$work/accrual.log" 2>&1 &
accrual_pid=$!
wait_ready "http://127.0.0.1:$accrual_port/healthz" "$accrual_pid" accrual

jwt_secret="browser-test-$RANDOM$RANDOM"
# gophermart on $port against $DATABASE_URI, the same each time it starts.
start_gophermart() {
    JWT_SECRET="$jwt_secret" RUST_LOG="${RUST_LOG:-warn}" \
        "$root/target/debug/gophermart" -a "127.0.0.1:$port" --bcrypt-cost 4 \
        -r "http://127.0.0.1:$accrual_port" >>"$work/gophermart.log" 2>&1 &
    pid=$!
    wait_ready "$base/readyz" "$pid" gophermart
}
base="http://127.0.0.1:$port"
start_gophermart

GOPHERMART_URL="$base" SCREENSHOT="$screenshot" ACCRUAL_URL="http://127.0.0.1:$accrual_port" \
    GOPHERMART_PID="$pid" RESTART_REQUEST="$work/restart" TMPDIR="$work" \
    node scripts/browser/swagger-ui.mjs &
node_pid=$!

# Until the driver ends: when gophermart exits, it is the restart the driver asked for (once),
# and the change it missed is made before it starts again.
restarted=false
downtime=3
while :; do
    status=0
    wait -n -p exited "$node_pid" "$pid" || status=$?
    if [[ "$exited" == "$node_pid" ]]; then
        node_pid=""
        if [[ "$status" != 0 ]]; then
            fail "FAILED (the driver exited with $status)"
        fi
        break
    fi
    pid=""
    if $restarted || [[ ! -s "$work/restart" ]]; then
        fail "gophermart exited ($status) without being asked to"
    fi
    read -r login number <"$work/restart"
    inserted="$(psql "$DATABASE_URI" -X -q -t -A -v ON_ERROR_STOP=1 \
        -v login="$login" -v number="$number" <<'SQL'
INSERT INTO orders (number, user_id, status, uploaded_at)
SELECT :'number', id, 'NEW', now() FROM users WHERE login = :'login'
RETURNING number;
SQL
)"
    if [[ "$inserted" != "$number" ]]; then
        fail "inserting order $number of $login answered '$inserted'"
    fi
    echo "test-browser: gophermart exited ($status); order $number of $login inserted" \
        "into the database while it is down" >&2
    # Down for a few of the page's reconnection attempts (one a second), which find no server.
    sleep "$downtime"
    start_gophermart
    restarted=true
    echo "test-browser: gophermart started again on the same port and database (pid $pid)" >&2
done
if ! $restarted; then
    fail "the driver ended without restarting gophermart"
fi
echo "test-browser: passed in $((SECONDS - started)) s" >&2
