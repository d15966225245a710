#!/usr/bin/env bash
# Runs a command against a throwaway pg_auto_failover formation: a monitor and two PostgreSQL
# nodes with synchronous replication (pg_auto_failover's default for two nodes), all on
# 127.0.0.1, as a deployment that holds money runs its database.
#
# pg_autoctl is found on PATH, and installed from Debian's `postgresql-15-auto-failover`
# package first when missing and this runs as root. Everything runs as the `postgres` user
# (PostgreSQL and pg_autoctl refuse root) in one folder made for it in /tmp, which also holds
# pg_autoctl's configuration, state and pid files (XDG_CONFIG_HOME, XDG_DATA_HOME,
# XDG_RUNTIME_DIR, which otherwise puts them in /tmp/pg_autoctl for good): when the command
# ends, however it ends, the three services are stopped and the folder is removed.
#
# The command sees:
#   DATABASE_URI          both nodes, libpq style, with target_session_attrs=read-write:
#                         whichever node is primary serves it
#   AUTOFAILOVER_NODE1_URI, AUTOFAILOVER_NODE2_URI   each node alone
#   AUTOFAILOVER_CTL      a script: `$AUTOFAILOVER_CTL switchover` (a planned switchover,
#                         waiting until it is done), `$AUTOFAILOVER_CTL state` (the nodes),
#                         `$AUTOFAILOVER_CTL run NODE` (starts `pg_autoctl run` again for a
#                         node whose processes were killed, in the background, ended with the
#                         others), `$AUTOFAILOVER_CTL pg COMMAND...` (as `postgres`)
#   AUTOFAILOVER_DIR      the folder: the nodes' data directories are $AUTOFAILOVER_DIR/node1
#                         and $AUTOFAILOVER_DIR/node2
#   AUTOFAILOVER_MONITOR_URI  the monitor's database, as `postgres` (its pgautofailover tables)
#
# AUTOFAILOVER_KEEP_LOGS=DIR keeps what tells a run's story when the command fails (with
# AUTOFAILOVER_KEEP_ALWAYS=1, whatever its outcome): in a new folder under DIR, outside the
# throwaway one, the monitor's events (`pg_autoctl show events`) and state, pg_autoctl's log
# (both keepers' and the monitor's), every server's PostgreSQL log (their lines start with
# a millisecond timestamp) and whatever the command wrote to $AUTOFAILOVER_DIR/keep/. The
# folder is printed at the end.
#
# A test may stop (SIGSTOP) or kill any of the formation's processes: on exit every process of
# the formation is continued first, then ended.
#
# Usage: scripts/with-auto-failover.sh COMMAND [ARGS...]
set -euo pipefail

if ! command -v pg_autoctl >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "with-auto-failover: installing Debian's postgresql-15-auto-failover package" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql-15-auto-failover >&2
    fi
fi
if ! command -v pg_autoctl >/dev/null 2>&1; then
    echo "with-auto-failover: pg_autoctl not found; install the 'postgresql-15-auto-failover' package" >&2
    exit 1
fi
pg_bin=/usr/lib/postgresql/15/bin
if [[ ! -x "$pg_bin/pg_ctl" ]]; then
    echo "with-auto-failover: $pg_bin/pg_ctl not found; install the 'postgresql-15' package" >&2
    exit 1
fi

if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi
# Always /tmp, never a caller's private TMPDIR: the `postgres` user must reach it.
dir="$(mktemp -d -p /tmp gophermart-autofailover.XXXXXX)"
# pg_autoctl takes XDG_RUNTIME_DIR only when the folder exists.
mkdir "$dir/run"
[[ "$(id -u)" == 0 ]] && chown postgres "$dir" "$dir/run"
chmod 700 "$dir"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
monitor_port="$(free_port)"
node1_port="$(free_port)"
node2_port="$(free_port)"
monitor_uri="postgres://autoctl_node@127.0.0.1:$monitor_port/pg_auto_failover?sslmode=disable"

# The control script runs pg_autoctl as `postgres`, with this formation's configuration.
ctl="$dir/ctl"
cat >"$ctl" <<EOF
#!/usr/bin/env bash
set -euo pipefail
as_pg() {
    if [[ "\$(id -u)" == 0 ]]; then
        runuser -u postgres -- env XDG_CONFIG_HOME="$dir/config" XDG_DATA_HOME="$dir/data" XDG_RUNTIME_DIR="$dir/run" PATH="$pg_bin:\$PATH" "\$@"
    else
        env XDG_CONFIG_HOME="$dir/config" XDG_DATA_HOME="$dir/data" XDG_RUNTIME_DIR="$dir/run" PATH="$pg_bin:\$PATH" "\$@"
    fi
}
case "\${1:-}" in
    switchover) as_pg pg_autoctl perform switchover --monitor "$monitor_uri" --wait 120 ;;
    state) as_pg pg_autoctl show state --monitor "$monitor_uri" ;;
    run)
        # In a process group of its own, like the first start, recorded for the clean-up.
        setsid "\$0" pg pg_autoctl run --pgdata "$dir/\$2" </dev/null >>"$dir/autoctl.log" 2>&1 &
        echo "\$!" >>"$dir/groups"
        ;;
    pg) shift; as_pg "\$@" ;;
    *) echo "usage: \$0 switchover|state|run NODE|pg COMMAND..." >&2; exit 2 ;;
esac
EOF
chmod 755 "$ctl"
[[ "$(id -u)" == 0 ]] && chown postgres "$ctl"

groups=()
status=1
keep_logs() {
    local keep
    [[ -n "${AUTOFAILOVER_KEEP_LOGS:-}" ]] || return 0
    [[ "$status" != 0 || "${AUTOFAILOVER_KEEP_ALWAYS:-}" == 1 ]] || return 0
    mkdir -p "$AUTOFAILOVER_KEEP_LOGS"
    keep="$(mktemp -d -p "$AUTOFAILOVER_KEEP_LOGS" "autofailover-$(date -u +%Y%m%dT%H%M%SZ)-XXXX")"
    # The monitor still runs: its events and the nodes' states as it last saw them.
    timeout 20 "$ctl" pg pg_autoctl show events --count 100000 --monitor "$monitor_uri" \
        >"$keep/events.txt" 2>&1 || true
    timeout 20 "$ctl" pg psql -X -h 127.0.0.1 -p "$monitor_port" -d pg_auto_failover \
        -c "SELECT eventtime, nodename, reportedstate, goalstate, reportedrepstate, reportedlsn, description FROM pgautofailover.event ORDER BY eventid" \
        >"$keep/events-full.txt" 2>&1 || true
    timeout 20 "$ctl" state >"$keep/state.txt" 2>&1 || true
    cp "$dir/autoctl.log" "$keep/" 2>/dev/null || true
    for node in monitor node1 node2; do
        [[ -d "$dir/$node/log" ]] && cp -r "$dir/$node/log" "$keep/$node-postgresql-log"
    done
    [[ -d "$dir/keep" ]] && cp -r "$dir/keep" "$keep/command"
    chmod -R a+rX "$keep"
    echo "with-auto-failover: the formation's logs are kept in $keep" >&2
}
stop_all() {
    local group proc
    keep_logs || true
    [[ -f "$dir/groups" ]] && mapfile -t -O "${#groups[@]}" groups <"$dir/groups"
    # A stopped process ends only once continued: continue the pg_autoctl groups and every
    # PostgreSQL process (a server's processes work in its data directory, each in a process
    # group of its own).
    for group in "${groups[@]}"; do
        kill -CONT -- "-$group" 2>/dev/null || true
    done
    for proc in /proc/[0-9]*; do
        case "$(readlink "$proc/cwd" 2>/dev/null)" in
            "$dir"/*) kill -CONT "${proc#/proc/}" 2>/dev/null || true ;;
        esac
    done
    # Each pg_autoctl runs in a process group of its own with the servers it starts: end the
    # groups, then whatever is left of this folder's servers.
    for group in "${groups[@]}"; do
        kill -TERM -- "-$group" 2>/dev/null || true
    done
    for group in "${groups[@]}"; do
        for _ in $(seq 100); do
            pgrep -g "$group" >/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$group" 2>/dev/null || true
    done
    pkill -KILL -f "$dir/" 2>/dev/null || true
    for proc in /proc/[0-9]*; do
        case "$(readlink "$proc/cwd" 2>/dev/null)" in
            "$dir"/*) kill -KILL "${proc#/proc/}" 2>/dev/null || true ;;
        esac
    done
    rm -rf "$dir"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

start() {
    # pg_autoctl creates the node, then keeps running as its supervisor.
    setsid "$ctl" pg "$@" --run >>"$dir/autoctl.log" 2>&1 &
    groups+=("$!")
}

wait_for() {
    local what="$1" check="$2" deadline=$((SECONDS + 90))
    until eval "$check" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "with-auto-failover: $what did not come up in 90 s; pg_autoctl's log:" >&2
            tail -n 40 "$dir/autoctl.log" >&2
            exit 1
        fi
        sleep 0.5
    done
}

start pg_autoctl create monitor --pgdata "$dir/monitor" --pgport "$monitor_port" \
    --hostname 127.0.0.1 --auth trust --no-ssl --pgctl "$pg_bin/pg_ctl"
wait_for "the monitor" \
    "\"$ctl\" pg psql -h 127.0.0.1 -p $monitor_port -d pg_auto_failover -tAc 'SELECT 1 FROM pgautofailover.formation'"
# Health checks every second, a node judged unhealthy after 5 s of silence: a test's failover
# takes seconds, not the production defaults' tens of seconds.
for setting in "health_check_period = 1000" "health_check_timeout = 1000" \
    "health_check_max_retries = 1" "health_check_retry_delay = 500" \
    "node_considered_unhealthy_timeout = 5000" "primary_demote_timeout = 10000"; do
    "$ctl" pg psql -q -h 127.0.0.1 -p "$monitor_port" -d pg_auto_failover \
        -c "ALTER SYSTEM SET pgautofailover.$setting" >/dev/null
done
"$ctl" pg psql -q -h 127.0.0.1 -p "$monitor_port" -d pg_auto_failover -c "SELECT pg_reload_conf()" >/dev/null

node() {
    start pg_autoctl create postgres --pgdata "$dir/$1" --pgport "$2" --hostname 127.0.0.1 \
        --name "$1" --auth trust --no-ssl --dbname gophermart --monitor "$monitor_uri" \
        --pgctl "$pg_bin/pg_ctl"
}
node node1 "$node1_port"
wait_for "node1 as primary" \
    "$pg_bin/psql -h 127.0.0.1 -p $node1_port -U postgres -d gophermart -tAc 'SELECT NOT pg_is_in_recovery()' | grep -qx t"
# pg_autoctl makes the standby with pg_basebackup, whose spread checkpoint would take
# checkpoint_completion_target x checkpoint_timeout (4.5 minutes) on an idle server.
"$ctl" pg psql -q -h 127.0.0.1 -p "$node1_port" -U postgres -d gophermart \
    -c "ALTER SYSTEM SET checkpoint_completion_target = 0" -c "SELECT pg_reload_conf()" >/dev/null
node node2 "$node2_port"
wait_for "node2 as a synchronous standby" \
    "$pg_bin/psql -h 127.0.0.1 -p $node1_port -U postgres -d gophermart -tAc \"SELECT sync_state FROM pg_stat_replication\" | grep -Eqx 'sync|quorum'"
wait_for "the formation" "\"$ctl\" state | grep -q 'secondary'"

export DATABASE_URI="postgres://postgres@127.0.0.1:$node1_port,127.0.0.1:$node2_port/gophermart?target_session_attrs=read-write"
export AUTOFAILOVER_NODE1_URI="postgres://postgres@127.0.0.1:$node1_port/gophermart"
export AUTOFAILOVER_NODE2_URI="postgres://postgres@127.0.0.1:$node2_port/gophermart"
export AUTOFAILOVER_CTL="$ctl"
export AUTOFAILOVER_DIR="$dir"
export AUTOFAILOVER_MONITOR_URI="postgres://postgres@127.0.0.1:$monitor_port/pg_auto_failover"
mkdir -p "$dir/keep"
echo "with-auto-failover: monitor on :$monitor_port, nodes on :$node1_port (primary) and :$node2_port" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
