#!/usr/bin/env bash
# Runs a command with DATABASE_URI pointing at a PostgreSQL server.
#
# When DATABASE_URI is already set, the command runs against that server unchanged. Otherwise
# a throwaway cluster is created from the system's PostgreSQL binaries (installing Debian's
# `postgresql` package first when they are missing and this runs as root), started on a free
# port on 127.0.0.1, and stopped and deleted when the command ends (its folder is made in
# $TMPDIR, /tmp by default). A throwaway cluster trades durability for speed (fsync,
# synchronous_commit and full_page_writes off); a kept one runs with PostgreSQL's durable
# defaults, so that a machine crash cannot corrupt it.
#
# Usage: scripts/with-postgres.sh [--keep-dir DIR] COMMAND [ARGS...]
#   --keep-dir DIR  keep the cluster's data in DIR between runs (used by `make run`).
set -euo pipefail

keep_dir=""
if [[ "${1:-}" == "--keep-dir" ]]; then
    keep_dir="$2"
    shift 2
fi

if [[ -n "${DATABASE_URI:-}" ]]; then
    exec "$@"
fi

find_pg_bin() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return
    fi
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            echo "$dir"
            return
        fi
    done
}

pg_bin="$(find_pg_bin)"
if [[ -z "$pg_bin" ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "with-postgres: installing Debian's postgresql package" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql >&2
        pg_bin="$(find_pg_bin)"
    fi
fi
if [[ -z "$pg_bin" ]]; then
    echo "with-postgres: PostgreSQL server binaries not found; install the 'postgresql' package or set DATABASE_URI" >&2
    exit 1
fi

# PostgreSQL refuses to run as root: run its programs as the `postgres` user then.
as_pg() {
    if [[ "$(id -u)" == 0 ]]; then
        if ! id postgres >/dev/null 2>&1; then
            useradd --system --no-create-home --shell /usr/sbin/nologin postgres
        fi
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

if [[ -n "$keep_dir" ]]; then
    data_dir="$keep_dir"
    mkdir -p "$data_dir"
    remove_dir=""
else
    data_dir="$(mktemp -d -p "${TMPDIR:-/tmp}" gophermart-pg.XXXXXX)"
    remove_dir="$data_dir"
fi
if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    chown postgres "$data_dir"
fi
chmod 700 "$data_dir"

if [[ ! -f "$data_dir/PG_VERSION" ]]; then
    as_pg "$pg_bin/initdb" -D "$data_dir" -U postgres --auth=trust --encoding=UTF8 --no-locale >/dev/null
fi

port="${PGPORT_THROWAWAY:-$(free_port)}"
stop_cluster() {
    as_pg "$pg_bin/pg_ctl" -D "$data_dir" -m fast -w stop >/dev/null 2>&1 || true
    if [[ -n "$remove_dir" ]]; then
        rm -rf "$remove_dir"
    fi
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

settings="-c listen_addresses=127.0.0.1 -p $port -k $data_dir -c max_connections=300"
if [[ -n "$remove_dir" ]]; then
    # A throwaway cluster: durability is traded for speed. A kept one keeps the defaults.
    settings="$settings -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
fi
as_pg "$pg_bin/pg_ctl" -D "$data_dir" -w -t 60 -l "$data_dir/server.log" -o "$settings" start >/dev/null

export DATABASE_URI="postgres://postgres@127.0.0.1:$port/postgres"
echo "with-postgres: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
