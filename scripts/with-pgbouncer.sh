#!/usr/bin/env bash
# Runs a command with a throwaway PgBouncer in transaction pooling mode in front of the
# PostgreSQL server of DATABASE_URI (run it inside scripts/with-postgres.sh).
#
# PgBouncer is found on PATH or in /usr/sbin, and installed from Debian's `pgbouncer` package
# first when missing and this runs as root. It runs as the `postgres` user, listens on a free
# port of 127.0.0.1, serves every database of the server with PGBOUNCER_POOL_SIZE (2) server
# connections per database, and is stopped and its folder removed when the command ends.
#
# Folders. PgBouncer's folder (configuration, user list, socket, log and pid file) is a new
# /tmp/gophermart-pgbouncer.XXXXXX, whatever TMPDIR and the working folder are, so that the
# `postgres` user can reach it when this runs as root (the caller's own folders, a home of mode
# 700 say, are never opened to it); as root it is given to `postgres`, and its files made
# readable to it. The script stops, naming the folder, when `postgres` cannot use it.
#
# The command sees, besides DATABASE_URI (still direct):
#   DATABASE_POOLER_URI  DATABASE_URI with PgBouncer's host and port
#   PGBOUNCER_CTL        a script: `$PGBOUNCER_CTL kill` (SIGKILL), `$PGBOUNCER_CTL start`
#
# Usage: scripts/with-pgbouncer.sh COMMAND [ARGS...]
set -euo pipefail

if [[ -z "${DATABASE_URI:-}" ]]; then
    echo "with-pgbouncer: DATABASE_URI is not set; run under scripts/with-postgres.sh" >&2
    exit 1
fi

find_pgbouncer() {
    if command -v pgbouncer >/dev/null 2>&1; then
        command -v pgbouncer
    elif [[ -x /usr/sbin/pgbouncer ]]; then
        echo /usr/sbin/pgbouncer
    fi
}

pgbouncer_bin="$(find_pgbouncer)"
if [[ -z "$pgbouncer_bin" ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "with-pgbouncer: installing Debian's pgbouncer package" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq pgbouncer >&2
        # The package may start its own service on port 6432; this script runs its own.
        if command -v service >/dev/null 2>&1; then
            service pgbouncer stop >/dev/null 2>&1 || true
        fi
        pgbouncer_bin="$(find_pgbouncer)"
    fi
fi
if [[ -z "$pgbouncer_bin" ]]; then
    echo "with-pgbouncer: PgBouncer not found; install the 'pgbouncer' package" >&2
    exit 1
fi

# The server's address and the database of DATABASE_URI (postgres://user@host:port/db?...).
read -r pg_user pg_host pg_port pg_rest < <(python3 - "$DATABASE_URI" <<'EOF'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
rest = u.path + (("?" + u.query) if u.query else "")
print(u.username or "postgres", u.hostname or "127.0.0.1", u.port or 5432, rest or "/")
EOF
)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

dir="$(mktemp -d /tmp/gophermart-pgbouncer.XXXXXX)"
port="$(free_port)"
if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    chown postgres "$dir"
    if ! (cd / && runuser -u postgres -- test -x "$dir") || ! (cd / && runuser -u postgres -- test -w "$dir"); then
        rm -rf "$dir"
        echo "with-pgbouncer: the postgres user, which runs PgBouncer here, cannot use $dir ($(stat -c 'mode %a, owner %U' /tmp) for /tmp); make /tmp usable by every user (mode 1777)" >&2
        exit 1
    fi
fi

cat >"$dir/userlist.txt" <<EOF
"$pg_user" ""
EOF
cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=$pg_host port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = $pg_user
pool_mode = transaction
default_pool_size = ${PGBOUNCER_POOL_SIZE:-2}
max_client_conn = 2000
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF

cat >"$dir/ctl" <<EOF
#!/usr/bin/env bash
# kill: SIGKILL PgBouncer; start: start it again (waits until it accepts connections).
set -euo pipefail
as_pg() { if [[ "\$(id -u)" == 0 ]]; then (cd / && runuser -u postgres -- "\$@"); else "\$@"; fi; }
case "\${1:-}" in
    kill)
        if [[ -f "$dir/pgbouncer.pid" ]]; then
            kill -9 "\$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
            rm -f "$dir/pgbouncer.pid"
        fi
        ;;
    start)
        as_pg "$pgbouncer_bin" -d "$dir/pgbouncer.ini"
        for _ in \$(seq 1 100); do
            if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", $port), 0.2)' 2>/dev/null; then
                exit 0
            fi
            sleep 0.05
        done
        echo "PgBouncer did not start; see $dir/pgbouncer.log" >&2
        exit 1
        ;;
    *) echo "usage: \$0 kill|start" >&2; exit 2 ;;
esac
EOF
chmod 755 "$dir/ctl"
chmod -R go+rX "$dir"

# shellcheck disable=SC2317 # (run by the trap)
stop_pgbouncer() {
    "$dir/ctl" kill || true
    rm -rf "$dir"
}
trap stop_pgbouncer EXIT
trap 'exit 130' INT TERM

"$dir/ctl" start

export DATABASE_POOLER_URI="postgres://$pg_user@127.0.0.1:$port$pg_rest"
export PGBOUNCER_CTL="$dir/ctl"
echo "with-pgbouncer: PgBouncer $("$pgbouncer_bin" --version | head -1 | awk '{print $2}') on 127.0.0.1:$port (transaction pooling, ${PGBOUNCER_POOL_SIZE:-2} server connections per database)" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
