#!/usr/bin/env bash
# Runs a command with DATABASE_URI pointing at a PostgreSQL server.
#
# When DATABASE_URI is already set, the command runs against that server unchanged. Otherwise
# a cluster is created from the system's PostgreSQL binaries (installing Debian's `postgresql`
# package first when they are missing and this runs as root), started on a free port on
# 127.0.0.1, and stopped when the command ends. A throwaway cluster trades durability for speed
# (fsync, synchronous_commit and full_page_writes off) and is deleted when the command ends; a
# kept one (--keep-dir) runs with PostgreSQL's durable defaults, so that a machine crash cannot
# corrupt it, and keeps its data between runs.
#
# Folders. PostgreSQL refuses to run as root, so as root its programs run as the `postgres`
# user (created when missing), which must be able to reach the cluster's folder. This script
# never opens the caller's folders to it (no chmod of a home or a checkout); it puts the
# cluster where `postgres` can reach it instead:
#   - a throwaway cluster gets a new folder gophermart-pg.XXXXXX in $TMPDIR (/tmp by default);
#     as root, when `postgres` cannot enter $TMPDIR (a private folder), in /tmp (or /var/tmp)
#     instead. It is deleted when the command ends, however the command ends.
#   - a kept cluster lives in DIR; as root, when `postgres` cannot enter the folder that holds
#     DIR (a checkout in /root, of mode 700), it lives in
#     /var/lib/gophermart/<folder>-<name>-<hash of DIR's absolute path> instead, and DIR
#     becomes a symbolic link to it, through which later runs find it again.
# The cluster's own folder is given to `postgres` (as root) and made mode 700. Where no folder
# can be used, the script stops naming the folder, the reason and the fix.
#
# Usage: scripts/with-postgres.sh [--keep-dir DIR] COMMAND [ARGS...]
#        scripts/with-postgres.sh --remove-keep-dir DIR
#   --keep-dir DIR         keep the cluster's data in DIR between runs (used by `make run`).
#   --remove-keep-dir DIR  delete what --keep-dir DIR kept: DIR and, when DIR is a link to a
#                          folder of /var/lib/gophermart, that folder (`make clean-db`). Refuses
#                          while a server runs on it.
# WITH_POSTGRES_SETTINGS (environment): more server settings for a cluster it starts, as
# `postgres` takes them (e.g. "-c track_commit_timestamp=on").
set -euo pipefail

# Where kept clusters go when `postgres` cannot reach the folder asked for.
kept_root=/var/lib/gophermart

is_root() {
    [[ "$(id -u)" == 0 ]]
}

fail() {
    echo "with-postgres: $*" >&2
    exit 1
}

# The data folder a link made by --keep-dir points at (links are made with absolute targets;
# a relative one, made by hand, is taken from the link's folder).
link_target() {
    local target
    target="$(readlink -- "$1")"
    if [[ "$target" != /* ]]; then
        target="$(dirname -- "$1")/$target"
    fi
    echo "$target"
}

# Whether a PostgreSQL server runs on the data folder DIR (its postmaster.pid names a live
# postgres process).
server_runs_on() {
    local pid
    [[ -f "$1/postmaster.pid" ]] || return 1
    pid="$(head -n 1 -- "$1/postmaster.pid" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == postgres ]]
}

remove_keep_dir() {
    local dir="$1" data target
    if [[ -L "$dir" ]]; then
        target="$(link_target "$dir")"
        data="$target"
    elif [[ -d "$dir" ]]; then
        data="$dir"
    elif [[ -e "$dir" ]]; then
        fail "$dir is neither a folder nor a link to one; remove it by hand"
    else
        return 0
    fi
    if server_runs_on "$data"; then
        fail "a PostgreSQL server still runs on $data; stop it first (Ctrl-C in \`make run\`)"
    fi
    if [[ -L "$dir" ]]; then
        # Only a folder this script made is deleted; a link made by hand to some other folder
        # is removed, and the folder left alone.
        if [[ "$target" =~ ^$kept_root/[^/]+$ && "$target" != */. && "$target" != */.. ]]; then
            rm -rf -- "$target"
            # $kept_root goes with its last cluster. Another run removing its own cluster at
            # the same time may have removed it first: that is no failure.
            rmdir --ignore-fail-on-non-empty -- "$kept_root" 2>/dev/null || [[ ! -e "$kept_root" ]]
            echo "with-postgres: removed $target and the link $dir to it" >&2
        else
            echo "with-postgres: removed the link $dir; $target, which it named, is left alone" >&2
        fi
        rm -f -- "$dir"
    else
        rm -rf -- "$dir"
    fi
}

keep_dir=""
case "${1:-}" in
    --keep-dir)
        [[ $# -ge 3 ]] || fail "usage: $0 --keep-dir DIR COMMAND [ARGS...]"
        keep_dir="$2"
        shift 2
        ;;
    --remove-keep-dir)
        [[ $# -eq 2 ]] || fail "usage: $0 --remove-keep-dir DIR"
        remove_keep_dir "$2"
        exit 0
        ;;
esac

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
    if is_root && command -v apt-get >/dev/null 2>&1; then
        echo "with-postgres: installing Debian's postgresql package" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql >&2
        pg_bin="$(find_pg_bin)"
    fi
fi
if [[ -z "$pg_bin" ]]; then
    fail "PostgreSQL server binaries not found; install the 'postgresql' package or set DATABASE_URI"
fi

# PostgreSQL refuses to run as root: run its programs as the `postgres` user then.
if is_root && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi
as_pg() {
    if is_root; then
        # From /: the caller's working folder may be closed to `postgres` (initdb and pg_ctl
        # would complain that they cannot change to it). Every path given is absolute.
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# Whether the server's user can enter FOLDER (and every folder above it).
pg_can_enter() {
    as_pg test -d "$1" && as_pg test -x "$1"
}

# The first folder on the way to FOLDER that the server's user cannot enter, with its mode and
# owner, for messages.
closed_folder() {
    local prefix="" part parts
    IFS=/ read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        [[ -n "$part" ]] || continue
        prefix="$prefix/$part"
        if ! pg_can_enter "$prefix"; then
            stat -c '%n (mode %a, owner %U)' -- "$prefix" 2>/dev/null || echo "$prefix"
            return
        fi
    done
    echo "$1"
}

# A new folder for a throwaway cluster.
throwaway_data_dir() {
    local tmp parent=""
    tmp="$(realpath -m -- "${TMPDIR:-/tmp}")"
    if ! is_root; then
        parent="$tmp"
    else
        for candidate in "$tmp" /tmp /var/tmp; do
            if [[ -d "$candidate" && -w "$candidate" ]] && pg_can_enter "$candidate"; then
                parent="$candidate"
                break
            fi
        done
        if [[ -z "$parent" ]]; then
            fail "the postgres user, which runs PostgreSQL here, cannot enter $(closed_folder "$tmp"), nor /tmp or /var/tmp, to hold a throwaway cluster; set TMPDIR to a folder it can enter, or DATABASE_URI to a server"
        fi
    fi
    mktemp -d -p "$parent" gophermart-pg.XXXXXX
}

# Makes FOLDER in $kept_root ($kept_root too, open to `postgres`, when missing). In a loop:
# another run's --remove-keep-dir may remove an empty $kept_root in between.
make_kept_folder() {
    for _ in 1 2 3; do
        [[ -d "$kept_root" ]] || mkdir -m 755 -- "$kept_root" 2>/dev/null || true
        if mkdir -- "$1" 2>/dev/null || [[ -d "$1" ]]; then
            return 0
        fi
    done
    mkdir -- "$1" # fails again, saying why
}

# The data folder of the kept cluster of DIR, created when missing (see the header).
kept_data_dir() {
    local parent name abs target hash slug real
    parent="$(dirname -- "$1")"
    name="$(basename -- "$1")"
    mkdir -p -- "$parent"
    parent="$(cd -- "$parent" && pwd -P)"
    abs="$parent/$name"
    if [[ -L "$abs" ]]; then
        # A link made by an earlier run (or by hand): the data is where it points. A folder of
        # /var/lib/gophermart deleted since is made again, empty.
        target="$(link_target "$abs")"
        if [[ "$target" == "$kept_root"/* && ! -e "$target" ]]; then
            make_kept_folder "$target"
        fi
        echo "$target"
        return
    fi
    if ! is_root || pg_can_enter "$parent"; then
        mkdir -p -- "$abs"
        echo "$abs"
        return
    fi
    # As root, and `postgres` cannot reach DIR: the data goes to a folder of its own in
    # /var/lib/gophermart, named after DIR's path, and DIR becomes a link to it.
    hash="$(printf '%s' "$abs" | sha256sum | cut -c 1-16)"
    slug="$(basename -- "$parent")-${name#.}"
    slug="$(printf '%s' "$slug" | tr -c 'A-Za-z0-9._-' '_')"
    real="$kept_root/$slug-$hash"
    if [[ -e "$abs" ]]; then
        if [[ -d "$abs" && -z "$(ls -A -- "$abs")" ]]; then
            rmdir -- "$abs" # an empty folder, left by an earlier failed start
        else
            fail "$abs holds files (a cluster?), but the postgres user, which runs PostgreSQL here, cannot reach them: it cannot enter $(closed_folder "$parent"). Either move them where it can and leave a link, as this script does for a new cluster: mkdir -p $kept_root && mv '$abs' '$real' && ln -s '$real' '$abs'; or delete them with \`make clean-db\` (scripts/with-postgres.sh --remove-keep-dir '$abs') to start afresh"
        fi
    fi
    if ! make_kept_folder "$real"; then
        fail "cannot create $real for the kept cluster of $abs (the postgres user cannot enter $(closed_folder "$parent")); set DATABASE_URI to a server, or --keep-dir a folder the postgres user can reach"
    fi
    ln -s -- "$real" "$abs"
    echo "with-postgres: the postgres user cannot enter $(closed_folder "$parent"), so the cluster of $abs is kept in $real, which $abs now links to (\`make clean-db\` removes both)" >&2
    echo "$real"
}

port="${PGPORT_THROWAWAY:-}"
remove_dir=""
data_dir=""
# shellcheck disable=SC2317 # (run by the trap)
stop_cluster() {
    if [[ -n "$data_dir" && -f "$data_dir/postmaster.pid" ]]; then
        as_pg "$pg_bin/pg_ctl" -D "$data_dir" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [[ -n "$remove_dir" ]]; then
        rm -rf -- "$remove_dir"
    fi
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

if [[ -n "$keep_dir" ]]; then
    data_dir="$(kept_data_dir "$keep_dir")"
else
    remove_dir="$(throwaway_data_dir)"
    data_dir="$remove_dir"
fi
cannot_use() {
    fail "the postgres user, which runs PostgreSQL here, cannot use $data_dir: it cannot enter $(closed_folder "$data_dir") or write there. Point --keep-dir at a folder it can reach (or remove the link so that the cluster goes to $kept_root), or set DATABASE_URI to a server"
}
if is_root; then
    # (Checked first, so that a folder it cannot reach anyway is left as it is.)
    pg_can_enter "$(dirname -- "$data_dir")" || cannot_use
    chown postgres -- "$data_dir"
fi
chmod 700 -- "$data_dir"
if ! pg_can_enter "$data_dir" || ! as_pg test -w "$data_dir"; then
    cannot_use
fi

if [[ ! -f "$data_dir/PG_VERSION" ]]; then
    as_pg "$pg_bin/initdb" -D "$data_dir" -U postgres --auth=trust --encoding=UTF8 --no-locale >/dev/null
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
port="${port:-$(free_port)}"

# pg_ctl hands these to a shell: the socket folder is quoted for one (a path with spaces).
printf -v socket_dir '%q' "$data_dir"
settings="-c listen_addresses=127.0.0.1 -p $port -k $socket_dir -c max_connections=300"
if [[ -n "$remove_dir" ]]; then
    # A throwaway cluster: durability is traded for speed. A kept one keeps the defaults.
    settings="$settings -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
fi
settings="$settings ${WITH_POSTGRES_SETTINGS:-}"
as_pg "$pg_bin/pg_ctl" -D "$data_dir" -w -t 60 -l "$data_dir/server.log" -o "$settings" start >/dev/null

export DATABASE_URI="postgres://postgres@127.0.0.1:$port/postgres"
echo "with-postgres: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port, data in $data_dir" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
