#!/usr/bin/env bash
# `make bench`: Gophermart's benchmark. Builds the release binaries (gophermart, accrual, and the
# loadgen driver), makes sure wrk and Python 3 are there (installing Debian's packages when they
# are missing and this runs as root), then runs bench/run.py against a throwaway PostgreSQL
# cluster (scripts/with-postgres.sh; a DATABASE_URI of the caller is ignored on purpose: the
# benchmark rewrites balances and deletes rows). Results: target/bench/.
#
# Environment: see bench/run.py (BENCH_DURATION, BENCH_LEVELS, BENCH_RATE_LIMIT, ...);
# BENCH_BIN_DIR runs already-built binaries from that folder instead of building.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

install_debian() {
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "bench: installing Debian's $*" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq "$@" >&2
    else
        echo "bench: $* needed (apt-get install $*)" >&2
        exit 1
    fi
}

command -v python3 >/dev/null 2>&1 || install_debian python3
command -v wrk >/dev/null 2>&1 || install_debian wrk

if [[ -z "${BENCH_BIN_DIR:-}" ]]; then
    "${CARGO:-cargo}" build --release --bins
fi

echo "bench: load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores before the run" >&2
exec env -u DATABASE_URI scripts/with-postgres.sh python3 bench/run.py
