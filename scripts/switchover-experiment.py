#!/usr/bin/env python3
"""Planned switchovers of the database's primary while customers upload and withdraw.

Run it as `make switchover-experiment` (scripts/with-auto-failover.sh: a pg_auto_failover
monitor and two nodes with synchronous replication; release binaries). One release instance
of Gophermart follows the primary through DATABASE_URI's two hosts and
target_session_attrs=read-write. 8 customers upload new order numbers and withdraw 1 point
for new numbers as fast as they can; a 503 is repeated with the same number until it is
answered, as the API asks of clients. Meanwhile `pg_autoctl perform switchover` runs
SWITCHOVER_RUNS times (5), each after a few seconds of steady load.

After each switchover, and at the end, every upload answered 202 or 200 must be in `orders`
and every withdrawal answered 200 in `withdrawals` on whichever node is primary then; nothing
may answer 500; and `gophermart audit` must pass. Prints, per switchover: the requests
answered by status, the acknowledged writes and how many are missing, how long writes failed,
and the instance's log lines at WARN or above. Exits non-zero on a lost write, a 500 or a
failed audit.

With scripts/with-auto-failover.sh's AUTOFAILOVER_KEEP_LOGS the formation's logs are kept when
the experiment fails, and beside them `timeline.txt`: every 0.1 s each node's role,
synchronous_standby_names, default_transaction_read_only, replicas and sessions waiting for a
synchronous standby, and the monitor's states, one line per change, with the experiment's own
steps; and `lost.txt`: each missing write, when it was acknowledged and which node holds it.
SWITCHOVER_STOP_ON_LOSS=1 ends the experiment at the first switchover that lost writes, while
the old primary may still hold them. SWITCHOVER_LOAD=N runs N busy loops beside it (a loaded
machine, as with other builds running), ended with it.

Two faults reproduce the run of the failover test that lost 849 acknowledged uploads and as
many withdrawals (docs/reliability.md, "The switchover that lost acknowledged writes"):
SWITCHOVER_STALL_KEEPER=S stops the old primary's keeper (`pg_autoctl: node active`, SIGSTOP)
for S seconds from each switchover's start, as a keeper starved on a loaded machine, so that it
neither reports `draining` nor stops its PostgreSQL; SWITCHOVER_SYNC_OFF=1 first empties the
old primary's synchronous_standby_names (ALTER SYSTEM and a reload, as pg_autoctl does when it
moves a primary to `wait_primary`), so that its commits no longer wait for the standby.
SWITCHOVER_SYNC_STALE=1 makes the old primary commit without its standby while it still shows
the standby's name: its checkpointer, which alone tells commits to wait, is stopped between
emptying synchronous_standby_names and putting it back, and continued with the keeper (or at
once without SWITCHOVER_STALL_KEEPER).

Environment: DATABASE_URI, AUTOFAILOVER_* (from scripts/with-auto-failover.sh); BIN
(target/release), SWITCHOVER_RUNS (5), SWITCHOVER_STEADY_SECONDS (3), SWITCHOVER_LOAD (0),
SWITCHOVER_STOP_ON_LOSS (0), SWITCHOVER_STALL_KEEPER (0), SWITCHOVER_SYNC_OFF (0),
SWITCHOVER_SYNC_STALE (0).
"""

import collections
import os
import signal
import subprocess
import sys
import time

from experiments import (
    MONITOR_WATCH,
    NODE_WATCH,
    Instance,
    Timeline,
    Workload,
    keeper_processes,
    psql,
    warnings,
)

BIN = os.environ.get("BIN", "target/release")
CUSTOMERS = 8
RUNS = int(os.environ.get("SWITCHOVER_RUNS", "5"))
STEADY = float(os.environ.get("SWITCHOVER_STEADY_SECONDS", "3"))
URI = os.environ["DATABASE_URI"]
LOAD = int(os.environ.get("SWITCHOVER_LOAD", "0"))
STOP_ON_LOSS = os.environ.get("SWITCHOVER_STOP_ON_LOSS") == "1"
STALL = float(os.environ.get("SWITCHOVER_STALL_KEEPER", "0"))
SYNC_OFF = os.environ.get("SWITCHOVER_SYNC_OFF") == "1"
SYNC_STALE = os.environ.get("SWITCHOVER_SYNC_STALE") == "1"
KEEP = os.path.join(os.environ.get("AUTOFAILOVER_DIR", "/nonexistent"), "keep")
NODES = {"node1": os.environ.get("AUTOFAILOVER_NODE1_URI"), "node2": os.environ.get("AUTOFAILOVER_NODE2_URI")}


def busy_loops(count):
    """`count` processes spinning on the CPU, each ended with this one."""
    from experiments import end_with_parent

    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=end_with_parent)
        for _ in range(count)
    ]


def where_missing(missing, timeline):
    """Writes `lost.txt`: each missing number, when it was acknowledged and which nodes hold
    it now (asked directly, whatever their role)."""
    holders = {}
    for name, uri in NODES.items():
        try:
            rows = psql(
                uri,
                "SELECT number || '|' || uploaded_at FROM orders UNION ALL "
                "SELECT order_number || '|' || processed_at FROM withdrawals",
                timeout=20,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            timeline.note(f"{name} not asked: {error}")
            continue
        for row in rows:
            number, _, at = row.partition("|")
            if number in missing:
                holders.setdefault(number, []).append(f"{name}@{at}")
    with open(os.path.join(KEEP, "lost.txt"), "a") as out:
        for number, at in sorted(missing.items(), key=lambda item: item[1] or 0):
            stamp = time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int((at % 1) * 1000):03d}" if at else "?"
            out.write(f"{number} acknowledged {stamp} held by {' '.join(holders.get(number, [])) or 'no node'}\n")
    counts = {}
    for number in missing:
        key = " ".join(h.split("@")[0] for h in holders.get(number, [])) or "no node"
        counts[key] = counts.get(key, 0) + 1
    return counts


def primary_port():
    return psql(URI, "SELECT inet_server_port()")[0]


def stale_sync(uri, name, timeline):
    """SWITCHOVER_SYNC_STALE on the primary at `uri`: its synchronous_standby_names emptied and
    read by its checkpointer, then the checkpointer stopped (SIGSTOP) and the setting put back.
    Every session then shows the standby's name, but commits do not wait for it: only the
    checkpointer tells them to (docs/reliability.md, "The switchover that lost acknowledged
    writes"). Returns the checkpointer's pid, to be continued with the keeper."""
    names = " ".join(psql(uri, "SHOW synchronous_standby_names"))
    psql(uri, "ALTER SYSTEM SET synchronous_standby_names = ''")
    psql(uri, "SELECT pg_reload_conf()")
    time.sleep(1)
    checkpointer = int(psql(uri, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")[0])
    os.kill(checkpointer, signal.SIGSTOP)
    try:
        quoted = names.replace("'", "''")
        psql(uri, f"ALTER SYSTEM SET synchronous_standby_names = '{quoted}'")
        psql(uri, "SELECT pg_reload_conf()")
        time.sleep(1)
    except BaseException:
        os.kill(checkpointer, signal.SIGCONT)
        raise
    if timeline:
        timeline.note(f"{name}: checkpointer {checkpointer} stopped, synchronous_standby_names back to {names!r}")
    return checkpointer


def faults(port, timeline):
    """SWITCHOVER_SYNC_OFF, SWITCHOVER_SYNC_STALE and SWITCHOVER_STALL_KEEPER on the node at
    `port` (the primary); returns the stopped processes' pids and when to continue them."""
    name = next(n for n, uri in NODES.items() if uri and uri.rsplit(":", 1)[1].split("/")[0] == port)
    if SYNC_OFF:
        psql(NODES[name], "ALTER SYSTEM SET synchronous_standby_names = ''")
        psql(NODES[name], "SELECT pg_reload_conf()")
        if timeline:
            timeline.note(f"{name}: synchronous_standby_names emptied")
        time.sleep(1)
    pids = [stale_sync(NODES[name], name, timeline)] if SYNC_STALE else []
    if STALL:
        keeper = keeper_processes(os.path.join(os.environ["AUTOFAILOVER_DIR"], name))
        for pid in keeper:
            os.kill(pid, signal.SIGSTOP)
        pids += keeper
        if timeline:
            timeline.note(f"{name}: keeper {keeper} stopped for {STALL:.0f} s")
    return pids, time.time() + STALL


def resume(pids, at, timeline):
    """Continues the stopped keeper at `at`, in the background."""
    import threading

    def later():
        time.sleep(max(0.0, at - time.time()))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if timeline:
            timeline.note(f"keeper {pids} continued")

    thread = threading.Thread(target=later, daemon=True)
    thread.start()
    return thread


def main():
    loops = busy_loops(LOAD)
    timeline = None
    if os.path.isdir(KEEP) and os.environ.get("AUTOFAILOVER_MONITOR_URI"):
        timeline = Timeline(
            os.path.join(KEEP, "timeline.txt"),
            [(name, uri, NODE_WATCH) for name, uri in NODES.items()]
            + [("monitor", os.environ["AUTOFAILOVER_MONITOR_URI"], MONITOR_WATCH)],
        )
    instance = Instance(BIN, CUSTOMERS, "switch")
    failed = False
    workload = None
    try:
        # Writes only, as this experiment has always measured.
        workload = Workload(instance.base, instance.tokens, reads=False)
        workload.run()
        log_at = os.path.getsize(instance.log.name)
        print(
            f"switchover experiment: {CUSTOMERS} customers, {RUNS} switchovers, {BIN}/gophermart, "
            f"{LOAD} busy loops beside it",
            flush=True,
        )
        for run in range(1, RUNS + 1):
            time.sleep(STEADY)
            old = primary_port()
            stalled, until = faults(old, timeline)
            if timeline:
                timeline.note(f"switchover {run} begins (primary :{old})")
            started = time.time()
            continuing = resume(stalled, until, timeline) if stalled else None
            try:
                subprocess.run([os.environ["AUTOFAILOVER_CTL"], "switchover"], check=True, capture_output=True)
            finally:
                if continuing:
                    continuing.join()
            switched = time.time()
            if timeline:
                timeline.note(f"switchover {run} done")
            time.sleep(STEADY)
            new = primary_port()
            ended = time.time()
            answered, _, _ = workload.between(started, ended)
            failures = workload.failures_between(started, ended)
            outage = max(failures) - started if failures else 0.0
            uploads, lost_uploads, withdrawals, lost_withdrawals = workload.lost(URI)
            lines, log_at = warnings(instance.log.name, log_at)
            fives = sum(n for (kind, status), n in answered.items() if status == 500)
            print(
                f"run {run}: primary :{old} -> :{new}, switchover took {switched - started:.1f} s, "
                f"writes failing for {outage:.2f} s after it began; "
                f"answers {dict(sorted((f'{k} {s}', n) for (k, s), n in answered.items() if n))}; "
                f"acknowledged so far: {uploads} uploads ({lost_uploads} missing), "
                f"{withdrawals} withdrawals ({lost_withdrawals} missing); "
                f"500s {fives}; WARN+ log lines {len(lines)}"
            )
            for line in lines[:3]:
                print("    ", line.rstrip()[:240])
            sys.stdout.flush()
            if (lost_uploads or lost_withdrawals) and timeline:
                missing = workload.missing(URI)
                timeline.note(f"switchover {run}: {len(missing)} acknowledged writes missing")
                print(f"     missing writes by the nodes holding them now: {where_missing(missing, timeline)}", flush=True)
            failed |= bool(lost_uploads or lost_withdrawals or fives or old == new)
            if failed and STOP_ON_LOSS:
                break
        workload.finish()
        uploads, lost_uploads, withdrawals, lost_withdrawals = workload.lost(URI)
        audit, audit_output = instance.audit()
        total = collections.Counter()
        for (kind, status), n in workload.between(0, time.time() + 1)[0].items():
            total[f"{kind} {status}"] += n
        print(
            f"total: {dict(sorted(total.items()))}; acknowledged {uploads} uploads "
            f"({lost_uploads} lost) and {withdrawals} withdrawals ({lost_withdrawals} lost); "
            f"audit exit {audit}"
        )
        if audit:
            print(audit_output)
        failed |= bool(lost_uploads or lost_withdrawals or audit)
    finally:
        if workload is not None:
            workload.finish()
        instance.stop()
        if timeline:
            timeline.stop()
        for loop in loops:
            loop.kill()
            loop.wait()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
