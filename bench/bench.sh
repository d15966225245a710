#!/usr/bin/env bash
# `make bench`: Gophermart's benchmark. Builds the release binaries (gophermart, accrual, the
# floor server of crates/floor and the loadgen driver), makes sure wrk and Python 3 are there
# (installing Debian's packages when they are missing and this runs as root), then runs
# bench/run.py against a throwaway PostgreSQL cluster (scripts/with-postgres.sh; a DATABASE_URI
# of the caller is ignored on purpose: the benchmark rewrites balances and deletes rows; its
# header says where the cluster's folder goes, and scripts/with-pgbouncer.sh's where
# PgBouncer's does; both are removed afterwards).
# Results: target/bench/.
#
# Environment: see bench/run.py (BENCH_DURATION, BENCH_LEVELS, BENCH_RATE_LIMIT, ...);
# BENCH_BIN_DIR runs already-built binaries from that folder instead of building.
#
# Before and after in one run: BENCH_BASELINE=<git revision> builds that revision's gophermart
# in a detached worktree, target/bench-baseline/src (created once, then checked out at the
# revision asked for; its build goes to target/bench-baseline/target), and run.py measures it
# beside the current build (phase "baseline"). BENCH_BASELINE_BIN_DIR instead names a folder of
# already-built binaries (no build); BENCH_BASELINE_LABEL names the baseline in the report
# (default: the short commit of BENCH_BASELINE, or the folder).
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

# The baseline's revision, checked before anything is built.
if [[ -n "${BENCH_BASELINE:-}" ]]; then
    if [[ -n "${BENCH_BASELINE_BIN_DIR:-}" ]]; then
        echo "bench: set BENCH_BASELINE or BENCH_BASELINE_BIN_DIR, not both" >&2
        exit 1
    fi
    baseline_rev="$(git rev-parse --verify --quiet "${BENCH_BASELINE}^{commit}")" || {
        echo "bench: BENCH_BASELINE=$BENCH_BASELINE is not a revision of this repository" >&2
        exit 1
    }
fi

if [[ -z "${BENCH_BIN_DIR:-}" ]]; then
    "${CARGO:-cargo}" build --release --bins
fi

if [[ -n "${BENCH_BASELINE:-}" ]]; then
    short="$(git rev-parse --short "$baseline_rev")"
    label="$short"
    [[ "$BENCH_BASELINE" == "$short" ]] || label="$short ($BENCH_BASELINE)"
    export BENCH_BASELINE_LABEL="${BENCH_BASELINE_LABEL:-$label}"
    baseline="$root/target/bench-baseline"
    if [[ -e "$baseline/src/.git" ]]; then
        # The worktree of an earlier run: only this script uses it, so local changes go.
        git -C "$baseline/src" checkout --quiet --force --detach "$baseline_rev"
    else
        # (--force: even if a worktree registered there had its folder deleted, by cargo clean)
        mkdir -p "$baseline"
        git worktree add --quiet --force --detach "$baseline/src" "$baseline_rev"
    fi
    echo "bench: building the baseline, $label, in $baseline/src" >&2
    # Only gophermart: the accrual system and loadgen stay the current build's.
    (cd "$baseline/src" && CARGO_TARGET_DIR="$baseline/target" "${CARGO:-cargo}" build --release --bins -p gophermart)
    export BENCH_BASELINE_BIN_DIR="$baseline/target/release"
fi

echo "bench: load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores before the run" >&2
# PgBouncer (transaction pooling) in front of it for the "pooler" phase, with fewer server
# connections (BENCH_PGBOUNCER_POOL_SIZE, 8) than the service's pool (16).
export PGBOUNCER_POOL_SIZE="${BENCH_PGBOUNCER_POOL_SIZE:-8}"
exec env -u DATABASE_URI scripts/with-postgres.sh scripts/with-pgbouncer.sh python3 bench/run.py
