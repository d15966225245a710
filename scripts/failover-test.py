#!/usr/bin/env python3
"""Three failures of the database's primary, one after the other in one pg_auto_failover
formation, while customers upload, withdraw and read through one Gophermart instance.

Run it as `make failover-test` (part of `make test`): scripts/with-auto-failover.sh starts a
monitor and two nodes with synchronous replication; debug binaries from target/debug (BIN).
The instance follows the primary through DATABASE_URI's two hosts and
target_session_attrs=read-write, with DATABASE_STATEMENT_TIMEOUT_MS=2000 and
DATABASE_REQUIRE_SYNCHRONOUS_STANDBY=true, as docs/deployment.md ("High availability") has a
deployment that must lose no acknowledged write: a write is answered only once a synchronous
standby has flushed it. 8 customers upload new order numbers, withdraw 1 point for new
numbers and read their balance and orders; a write answered 503 is repeated with the same
number until it is answered. The scenarios:

  crash     every process of the primary node (its pg_autoctl and its PostgreSQL) killed
            with SIGKILL at once; the monitor promotes the standby, which takes writes alone
            (wait_primary: Gophermart refuses them) until the killed node's `pg_autoctl run`,
            started again FAILOVER_STEADY_SECONDS later, has it back as the standby
  switchover  `pg_autoctl perform switchover`
  silent    the primary node's processes stopped with SIGSTOP (a partition without FIN or
            RST: connections stay open and nothing answers); once the monitor has failed over
            (the standby promoted and taking writes alone) they are continued, and the node
            rejoins as the standby

After each, with the customers held between two rounds: no 500; every upload answered 200 or
202 in `orders` and every withdrawal answered 200 in `withdrawals` on the current primary;
every customer's balance equal to the funds less the withdrawals stored, with each stored
withdrawal one it sent; `gophermart audit` passes; the instance still the one started. Every
request must be answered within DATABASE_TIMEOUT_MS + DATABASE_STATEMENT_TIMEOUT_MS + the
option's wait for the standby (1 s) + FAILOVER_MARGIN_MS (1500). Prints per scenario the
answers by status, the writes acknowledged and lost, the recovery time (from the new primary's
first answer that it is not in recovery, polled every 0.1 s on each node, to the instance's
first acknowledged write after it), the longest request and the instance's log lines at WARN
or above.

It also measures when the new primary took durable writes at all: from the failure's start a
direct write probe sends each node that may become primary an INSERT of its own into a table
beside Gophermart's (failover_probe, created before the scenarios and dropped after them; the
audit reads only Gophermart's tables) every FAILOVER_PROBE_MS, each in its own connection with
statement_timeout at FAILOVER_PROBE_WAIT_MS. A write is taken only when answered without an
error or a warning within FAILOVER_PROBE_WAIT_MS + 1 s and a synchronous standby has it, asked
as Gophermart asks (a read-only node refuses it; a commit still waiting for the synchronous
standby is given up then: statement_timeout does not end that wait; a commit whose wait is
cancelled, as pg_autoctl does when it disables synchronous replication, is answered with a
WARNING; a node without a synchronous standby commits it alone). Per scenario it prints the
promotion, the first direct write taken and the instance's first acknowledged write, from the
failure's start, the gap between the last two (the time Gophermart itself adds once the
database takes durable writes), and what the customers' writes were doing then.

Exits non-zero on a 500, a lost write, a wrong balance, a failed audit, a request over the
bound or a gap over the bound; stopped processes are continued and everything started is
ended, however it ends.

Environment: DATABASE_URI, AUTOFAILOVER_* (from scripts/with-auto-failover.sh); BIN
(target/debug), FAILOVER_STEADY_SECONDS (3), FAILOVER_MARGIN_MS (1500), FAILOVER_PROBE_MS
(100), FAILOVER_PROBE_WAIT_MS (500).
"""

import os
import signal
import subprocess
import sys
import threading
import time

from experiments import MONITOR_WATCH, NODE_WATCH, Instance, Timeline, Workload, psql, warnings

BIN = os.environ.get("BIN", "target/debug")
CUSTOMERS = 8
STEADY = float(os.environ.get("FAILOVER_STEADY_SECONDS", "3"))
CONNECT_MS = 5000
STATEMENT_MS = 2000
MARGIN_MS = int(os.environ.get("FAILOVER_MARGIN_MS", "1500"))
# DATABASE_REQUIRE_SYNCHRONOUS_STANDBY's longest wait for a standby to have a write
# (STANDBY_CONFIRMATION_WAIT in crates/adapters-postgres/src/pool.rs).
STANDBY_MS = 1000
BOUND = (CONNECT_MS + STATEMENT_MS + STANDBY_MS + MARGIN_MS) / 1000
PROBE_MS = int(os.environ.get("FAILOVER_PROBE_MS", "100"))
PROBE_WAIT_MS = int(os.environ.get("FAILOVER_PROBE_WAIT_MS", "500"))
PROBE_TABLE = "failover_probe"
# A direct write counts once a synchronous standby has it, as Gophermart's do with
# DATABASE_REQUIRE_SYNCHRONOUS_STANDBY: the server still names a standby and one has flushed
# the WAL to where the server had flushed it after the write (asked PROBE_STANDBY_MS later).
PROBE_STANDBY_MS = 20
ON_STANDBY = (
    "SELECT current_setting('synchronous_standby_names') <> '' "
    "AND current_setting('synchronous_commit') IN ('on', 'remote_write', 'remote_apply') "
    "AND EXISTS (SELECT FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum') "
    "AND flush_lsn >= :'here')"
)
CTL = os.environ["AUTOFAILOVER_CTL"]
URI = os.environ["DATABASE_URI"]

# Every process this test stopped, continued however the test ends.
stopped = set()


class Node:
    """One node of the formation: its URI, data directory and processes."""

    def __init__(self, name, uri):
        self.name, self.uri = name, uri
        self.port = uri.rsplit(":", 1)[1].split("/")[0]
        self.pgdata = os.path.join(os.environ["AUTOFAILOVER_DIR"], name)

    def is_primary(self, timeout=1.0):
        try:
            return psql(self.uri, "SELECT NOT pg_is_in_recovery()", timeout=timeout) == ["t"]
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False

    def processes(self):
        """The node's pg_autoctl (the process groups whose command names its data directory)
        and its PostgreSQL (every process working in the data directory: the server's
        children each have a process group of their own), with their descendants."""
        table = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().decode(errors="replace").split("\0")
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            table[int(entry)] = (int(fields[1]), int(fields[2]), args, cwd)
        groups = {pgid for _, pgid, args, _ in table.values() if self.pgdata in args}
        found = {pid for pid, (_, pgid, _, cwd) in table.items() if pgid in groups or cwd == self.pgdata}
        found.discard(os.getpid())
        while True:
            children = {pid for pid, (ppid, *_) in table.items() if ppid in found} - found
            if not children:
                return found
            found |= children

    def signal_all(self, sig):
        """Sends `sig` to every process of the node, again to those forked meanwhile."""
        done = set()
        for _ in range(10):
            todo = self.processes() - done
            if not todo:
                break
            for pid in todo:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                if sig == signal.SIGSTOP:
                    stopped.add(pid)
            done |= todo
        if sig == signal.SIGCONT:
            stopped.difference_update(done)
        return len(done)


def continue_stopped():
    for pid in list(stopped):
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    stopped.clear()


class WriteProbe:
    """Sends each node a write of its own every PROBE_MS ms from the failure's start, each in
    its own connection without waiting for the one before: when each node first took one.

    A write is one autocommit INSERT into PROBE_TABLE through psql, with statement_timeout at
    PROBE_WAIT_MS, so its commit waits for the synchronous standby as any other. It is taken
    only when psql ends without an error and without a warning within PROBE_WAIT_MS + 1 s: a
    read-only node refuses it; a commit still waiting for a standby (none named, or one gone)
    is given up then (statement_timeout does not end a wait for the synchronous standby, which
    comes after the statement); one whose wait is cancelled (pg_cancel_backend, as
    pg_autoctl does when it disables synchronous replication) is committed locally but
    answered with a WARNING, which is not taken; and one committed without a wait is taken
    only if, PROBE_STANDBY_MS after it, the node still names a synchronous standby and one has
    flushed the WAL to where the node had flushed it after the write (ON_STANDBY, Gophermart's
    own question). As the writes overlap, one held at its commit is answered when the commit is released; a node
    that refuses writes at once (pg_autoctl's stop_replication sets
    default_transaction_read_only) is known to take them within one attempt. Each write is
    recorded as (sent, answered, taken): the time that counts is the answer, as for a
    customer's write."""

    def __init__(self, nodes):
        self.writes = {n.name: [] for n in nodes}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.sent = []
        self.threads = [threading.Thread(target=self.poll, args=(n,), daemon=True) for n in nodes]
        for thread in self.threads:
            thread.start()

    def write(self, node):
        script = (
            f"INSERT INTO {PROBE_TABLE} (node) VALUES ('{node.name}');\n"
            "SELECT pg_current_wal_flush_lsn() AS here \\gset\n"
            f"SELECT pg_sleep({PROBE_STANDBY_MS / 1000});\n"
            f"{ON_STANDBY};\n"
        )
        sent = time.time()
        try:
            out = subprocess.run(
                ["psql", node.uri, "-XqAt", "-v", "ON_ERROR_STOP=1"],
                input=script,
                env={**os.environ, "PGOPTIONS": f"-c statement_timeout={PROBE_WAIT_MS}"},
                capture_output=True,
                text=True,
                # A stopped node holds the connection: give up on it.
                timeout=PROBE_WAIT_MS / 1000 + 1,
            )
            taken = out.returncode == 0 and "WARNING" not in out.stderr and out.stdout.split()[-1:] == ["t"]
        except subprocess.TimeoutExpired:
            taken = False
        with self.lock:
            self.writes[node.name].append((sent, time.time(), taken))

    def poll(self, node):
        while not self.done.is_set():
            tick = time.time()
            thread = threading.Thread(target=self.write, args=(node,), daemon=True)
            thread.start()
            self.sent.append(thread)
            time.sleep(max(0.0, tick + PROBE_MS / 1000 - time.time()))

    def stop(self):
        self.done.set()
        for thread in self.threads + self.sent:
            thread.join()

    def first(self, node):
        """(sent, answered, taken after, not taken after): when the first write `node` took
        was sent and answered, and how many of the writes sent after that answer it took and
        did not; None when it took none."""
        writes = self.writes[node.name]
        taken = [(answered, sent) for sent, answered, ok in writes if ok]
        if not taken:
            return None
        answered, sent = min(taken)
        later = [ok for s, _, ok in writes if s > answered]
        return sent, answered, later.count(True), later.count(False)


class PrimaryWatch:
    """Polls each node every 0.1 s: when each first said it was not in recovery."""

    def __init__(self, nodes):
        self.since = {}
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.poll, args=(n,), daemon=True) for n in nodes]
        for thread in self.threads:
            thread.start()

    def poll(self, node):
        while not self.done.is_set():
            if node.is_primary(timeout=1.0):
                self.since.setdefault(node.name, time.time())
            time.sleep(0.1)

    def stop(self):
        self.done.set()
        for thread in self.threads:
            thread.join()


def wait_until(what, check, seconds=120):
    deadline = time.time() + seconds
    while not check():
        if time.time() > deadline:
            state = subprocess.run([CTL, "state"], capture_output=True, text=True).stdout
            raise RuntimeError(f"{what}: not within {seconds} s\n{state}")
        time.sleep(0.2)


def states():
    """{node name: (reported state, assigned state)} as the monitor tells them."""
    out = subprocess.run([CTL, "state"], capture_output=True, text=True).stdout
    rows = [[c.strip() for c in line.split("|")] for line in out.splitlines()[2:] if line.count("|") >= 6]
    return {row[0]: (row[-2], row[-1]) for row in rows}


def healthy():
    """One node primary and the other secondary, as reported and as assigned."""
    return sorted(states().values()) == [("primary", "primary"), ("secondary", "secondary")]


def primary_of(nodes):
    """The node that DATABASE_URI reaches, as soon as one accepts writes."""
    found = []

    def reached():
        try:
            found.append(psql(URI, "SELECT inet_server_port()", timeout=10)[0])
            return True
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False

    wait_until("a writable node", reached, 90)
    return next(n for n in nodes if n.port == found[-1])


def crash(nodes, old):
    """Kills the primary; once the standby, promoted, takes writes alone (wait_primary, no
    synchronous standby: Gophermart refuses writes) for STEADY seconds, starts the killed
    node's `pg_autoctl run` again and waits until it is back as the standby."""
    new = other(nodes, old)
    killed = old.signal_all(signal.SIGKILL)
    wait_until(f"{new.name} taking writes alone", lambda: states().get(new.name, ("",))[0] == "wait_primary", 90)
    alone = time.time()
    time.sleep(STEADY)
    subprocess.run([CTL, "run", old.name], check=True)
    wait_until(f"{old.name} back as the standby", healthy, 90)
    return (
        f"{killed} processes of {old.name} killed; {new.name} alone, then {old.name} back as the "
        f"standby {time.time() - alone:.1f} s later",
        new,
    )


def switchover(nodes, old):
    subprocess.run([CTL, "switchover"], check=True, capture_output=True)
    return "switchover done", other(nodes, old)


def silent(nodes, old):
    new = other(nodes, old)
    count = old.signal_all(signal.SIGSTOP)
    stopped_at = time.time()
    # Promoted, the standby still refuses writes until pgautofailover.primary_demote_timeout
    # has passed (the old primary cannot confirm its demotion): the failover is over once the
    # monitor has it take writes alone (wait_primary).
    wait_until(f"{new.name} taking writes", lambda: states().get(new.name, ("",))[0] == "wait_primary", 90)
    promoted = time.time() - stopped_at
    old.signal_all(signal.SIGCONT)
    continue_stopped()
    wait_until(f"{old.name} back as the standby", healthy, 90)
    return f"{count} processes of {old.name} stopped for {promoted:.1f} s", new


def in_flight(workload, moment):
    """What the customers' writes were doing at `moment`: those in flight then, how long they
    had been sent and how they were answered."""
    with workload.lock:
        writes = [
            (end - seconds, end, status)
            for end, kind, status, seconds in workload.events
            if kind in ("upload", "withdraw") and end - seconds <= moment < end
        ]
    if not writes:
        return "no write in flight then"
    answers = {}
    for _, _, status in writes:
        answers[status] = answers.get(status, 0) + 1
    return (
        f"{len(writes)} writes in flight then, sent {min(moment - s for s, _, _ in writes):.2f}–"
        f"{max(moment - s for s, _, _ in writes):.2f} s before, answered "
        f"{', '.join(f'{status} × {n}' for status, n in sorted(answers.items()))} "
        f"{min(e - moment for _, e, _ in writes):.2f}–{max(e - moment for _, e, _ in writes):.2f} s after"
    )


def other(nodes, node):
    return next(n for n in nodes if n is not node)


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    nodes = [Node("node1", os.environ["AUTOFAILOVER_NODE1_URI"]), Node("node2", os.environ["AUTOFAILOVER_NODE2_URI"])]
    instance = Instance(
        BIN,
        CUSTOMERS,
        "failover",
        {
            "DATABASE_TIMEOUT_MS": str(CONNECT_MS),
            "DATABASE_STATEMENT_TIMEOUT_MS": str(STATEMENT_MS),
            "DATABASE_REQUIRE_SYNCHRONOUS_STANDBY": "true",
        },
    )
    workload = None
    failures = []
    timeline = None
    keep = os.path.join(os.environ["AUTOFAILOVER_DIR"], "keep")
    if os.path.isdir(keep) and os.environ.get("AUTOFAILOVER_MONITOR_URI"):
        timeline = Timeline(
            os.path.join(keep, "timeline.txt"),
            [(n.name, n.uri, NODE_WATCH) for n in nodes]
            + [("monitor", os.environ["AUTOFAILOVER_MONITOR_URI"], MONITOR_WATCH)],
        )
    try:
        # The direct write probe's table, beside Gophermart's (the audit reads only its own).
        psql(
            URI,
            f"CREATE TABLE {PROBE_TABLE} (id bigserial PRIMARY KEY, node text NOT NULL, "
            "at timestamptz NOT NULL DEFAULT clock_timestamp())",
            timeout=30,
        )
        durability = psql(
            URI, "SELECT current_setting('synchronous_commit') || ',' || current_setting('synchronous_standby_names')", timeout=30
        )
        workload = Workload(instance.base, instance.tokens)
        workload.run()
        log_at = os.path.getsize(instance.log.name)
        print(
            f"failover test: {CUSTOMERS} customers, {BIN}/gophermart with DATABASE_REQUIRE_SYNCHRONOUS_STANDBY, "
            f"request bound {BOUND:.1f} s (DATABASE_TIMEOUT_MS {CONNECT_MS} + DATABASE_STATEMENT_TIMEOUT_MS "
            f"{STATEMENT_MS} + the standby's {STANDBY_MS} + {MARGIN_MS} ms); "
            f"a direct write to each candidate node every {PROBE_MS} ms, taken within {PROBE_WAIT_MS} ms "
            f"(synchronous_commit, synchronous_standby_names: {' '.join(durability)})",
            flush=True,
        )
        for name, scenario in (("crash", crash), ("switchover", switchover), ("silent", silent)):
            time.sleep(STEADY)
            old = primary_of(nodes)
            candidates = [n for n in nodes if n is not old]
            watch = PrimaryWatch(candidates)
            probe = WriteProbe(candidates)
            started = time.time()
            if timeline:
                timeline.note(f"{name} begins (primary {old.name})")
            what, new = scenario(nodes, old)
            if timeline:
                timeline.note(f"{name}: {what}")
            if new is not None:
                wait_until(f"{new.name} promoted", lambda: new.name in watch.since, 90)
            wait_until(f"{name}: a write acknowledged", lambda: workload.first_write_after(time.time() - 0.5), 60)
            time.sleep(STEADY)
            watch.stop()
            probe.stop()
            workload.pause()
            ended = time.time()
            answered, longest, waiting = workload.between(started, ended)
            gap = None
            if new is not None:
                promoted_at = watch.since[new.name]
                written_at = workload.first_write_after(promoted_at)
                recovery = f"{written_at - promoted_at:.2f} s (promoted {promoted_at - started:.1f} s after the start)"
                first = probe.first(new)
                if first is None:
                    direct = f"no direct write taken by {new.name}"
                else:
                    sent_at, direct_at, taken, refused = first
                    gap = written_at - direct_at
                    direct = (
                        f"promoted {promoted_at - started:.2f} s, first direct write {direct_at - started:.2f} s "
                        f"(sent {direct_at - sent_at:.2f} s before), first instance write {written_at - started:.2f} s "
                        f"after the start: gap {gap:+.2f} s (direct writes sent after the first: "
                        f"{taken} taken, {refused} not); {in_flight(workload, direct_at)}"
                    )
            else:
                recovery = "- (the primary did not change)"
                direct = "-"
            uploads, lost_uploads, withdrawals, lost_withdrawals = workload.lost(URI)
            wrong = workload.wrong_balances(instance, URI)
            audit, audit_output = instance.audit()
            lines, log_at = warnings(instance.log.name, log_at)
            fives = sum(n for (_, status), n in answered.items() if status == 500)
            acknowledged = sum(
                n for (kind, status), n in answered.items() if (kind, status) in (("upload", 200), ("upload", 202), ("withdraw", 200))
            )
            restarted = instance.process.poll() is not None
            print(
                f"{name}: {what} ({ended - started:.1f} s); primary {old.name} -> {primary_of(nodes).name}; "
                f"answers {dict(sorted((f'{k} {s}', n) for (k, s), n in answered.items()))}; "
                f"500s {fives}; writes acknowledged {acknowledged}; "
                f"acknowledged so far {uploads} uploads ({lost_uploads} lost), "
                f"{withdrawals} withdrawals ({lost_withdrawals} lost); balances "
                f"{'right' if not wrong else 'WRONG'}; audit exit {audit}; recovery {recovery}; {direct}; "
                f"longest request {max(longest, waiting):.2f} s; WARN+ log lines {len(lines)}",
                flush=True,
            )
            for line in lines[:4]:
                # The time and level, then the message without its request's span.
                line = line.rstrip()
                print("    ", line if len(line) <= 240 else line[:38] + " … " + line[-200:])
            for problem in wrong[:4]:
                print("    ", problem)
            if audit:
                print(audit_output)
            if (lost_uploads or lost_withdrawals) and timeline:
                missing = workload.missing(URI)
                timeline.note(f"{name}: {len(missing)} acknowledged writes missing")
                with open(os.path.join(keep, "lost.txt"), "a") as out:
                    for number, at in sorted(missing.items(), key=lambda item: item[1] or 0):
                        out.write(f"{name} {number} acknowledged {time.strftime('%H:%M:%S', time.gmtime(at or 0))}.{int(((at or 0) % 1) * 1000):03d}\n")
            for failed, why in (
                (fives, f"{fives} answers 500"),
                (lost_uploads or lost_withdrawals, "acknowledged writes lost"),
                (wrong, "wrong balances"),
                (audit, "the audit failed"),
                (max(longest, waiting) > BOUND, f"a request took {max(longest, waiting):.2f} s > {BOUND:.1f} s"),
                (restarted, "gophermart exited"),
                (gap is not None and gap > BOUND, f"first write {gap or 0:.2f} s after the first direct write"),
            ):
                if failed:
                    failures.append(f"{name}: {why}")
            if restarted:
                break
            workload.resume()
    finally:
        if timeline:
            timeline.stop()
        continue_stopped()
        if workload is not None:
            workload.finish()
        instance.stop()
        try:
            psql(URI, f"DROP TABLE IF EXISTS {PROBE_TABLE}", timeout=30)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            print(f"failover test: {PROBE_TABLE} not dropped ({error}); it goes with the formation")
    if failures:
        print("failover test FAILED:", "; ".join(failures))
        sys.exit(1)
    print("failover test passed")


if __name__ == "__main__":
    main()
