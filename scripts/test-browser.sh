#!/usr/bin/env bash
# The browsable API page in a real headless browser: builds the `gophermart` binary, runs it
# against a throwaway PostgreSQL (scripts/with-postgres.sh), opens /swagger-ui/ in Chromium,
# checks that the page lists the seven customer operations, registers a customer with
# "Try it out" and sees the 200 in the page, and saves a screenshot to
# docs/screenshots/swagger-ui.png.
#
# Installs what it needs when missing: Debian's `chromium`, `nodejs` and `npm` (when running as
# root; otherwise it fails naming them), and the Node driver's packages
# (scripts/browser/node_modules, from the committed package-lock.json).
#
# Folders: the screenshot's folder is made when missing; gophermart's log is a temporary
# /tmp/gophermart-browser.XXXXXX.log, removed at the end; the database is a throwaway cluster
# of scripts/with-postgres.sh (its header says where).
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
    ${CARGO:-cargo} build --quiet --bin gophermart
    export CHROMIUM="$chromium_bin"
    exec scripts/with-postgres.sh "$0" --with-database
fi

# From here on DATABASE_URI points at a PostgreSQL server.
started=$SECONDS
screenshot="${SCREENSHOT:-$root/docs/screenshots/swagger-ui.png}"
mkdir -p "$(dirname "$screenshot")"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
log="$(mktemp /tmp/gophermart-browser.XXXXXX.log)"
JWT_SECRET="browser-test-$RANDOM$RANDOM" RUST_LOG="${RUST_LOG:-warn}" \
    "$root/target/debug/gophermart" -a "127.0.0.1:$port" --bcrypt-cost 4 -r http://127.0.0.1:9 \
    >"$log" 2>&1 &
pid=$!
cleanup() {
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

base="http://127.0.0.1:$port"
for _ in $(seq 300); do
    if curl -sf "$base/readyz" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "test-browser: gophermart exited; its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done

if ! GOPHERMART_URL="$base" SCREENSHOT="$screenshot" node scripts/browser/swagger-ui.mjs; then
    echo "test-browser: FAILED; gophermart's log:" >&2
    cat "$log" >&2
    exit 1
fi
echo "test-browser: passed in $((SECONDS - started)) s" >&2
