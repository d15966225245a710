#!/usr/bin/env bash
# `make profile`: instructions per request of the service and of the floor (crates/floor) on
# the balance and the orders list, counted by valgrind's callgrind (bench/profile.py). Builds
# the release binaries (the release profile keeps line tables, so the profiles name functions
# and lines), installs Debian's valgrind and python3 when they are missing and this runs as
# root, and runs against a throwaway PostgreSQL cluster (scripts/with-postgres.sh; a
# DATABASE_URI of the caller is ignored: the run rewrites balances and adds rows).
# Results: target/profile/.
#
# Environment: PROFILE_REQUESTS (2000), PROFILE_CONNECTIONS (4), PROFILE_WARMUP (200);
# BENCH_BIN_DIR runs already-built binaries from that folder instead of building.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

install_debian() {
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "profile: installing Debian's $*" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq "$@" >&2
    else
        echo "profile: $* needed (apt-get install $*)" >&2
        exit 1
    fi
}

command -v python3 >/dev/null 2>&1 || install_debian python3
command -v valgrind >/dev/null 2>&1 || install_debian valgrind

if [[ -z "${BENCH_BIN_DIR:-}" ]]; then
    "${CARGO:-cargo}" build --release --bins
fi

echo "profile: load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores before the run" >&2
exec env -u DATABASE_URI scripts/with-postgres.sh python3 bench/profile.py
