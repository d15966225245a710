#!/usr/bin/env python3
"""Four failures of the database's primary, one after the other in one pg_auto_failover
formation, while customers upload, withdraw and read through one Gophermart instance.

Run it as `make failover-test` (part of `make test`): scripts/with-auto-failover.sh starts a
monitor and two nodes with synchronous replication; debug binaries from target/debug (BIN).
The instance follows the primary through DATABASE_URI's two hosts and
target_session_attrs=read-write, with DATABASE_STATEMENT_TIMEOUT_MS=2000. 8 customers upload
new order numbers, withdraw 1 point for new numbers and read their balance and orders; a write
answered 503 is repeated with the same number until it is answered. The scenarios:

  crash     every process of the primary node (its pg_autoctl and its PostgreSQL) killed
            with SIGKILL at once; the monitor promotes the standby
  rejoin    the crashed node's `pg_autoctl run` started again: it comes back as the standby
  switchover  `pg_autoctl perform switchover`
  silent    the primary node's processes stopped with SIGSTOP (a partition without FIN or
            RST: connections stay open and nothing answers); once the monitor has failed over
            (the standby promoted and taking writes alone) they are continued, and the node
            rejoins as the standby

After each, with the customers held between two rounds: no 500; every upload answered 200 or
202 in `orders` and every withdrawal answered 200 in `withdrawals` on the current primary;
every customer's balance equal to the funds less the withdrawals stored, with each stored
withdrawal one it sent; `gophermart audit` passes; the instance still the one started. Every
request must be answered within DATABASE_TIMEOUT_MS + DATABASE_STATEMENT_TIMEOUT_MS +
FAILOVER_MARGIN_MS (1500). Prints per scenario the answers by status, the writes acknowledged
and lost, the recovery time (from the new primary's first answer that it is not in recovery,
polled every 0.1 s on each node, to the instance's first acknowledged write after it), the
longest request and the instance's log lines at WARN or above.

It also measures when the new primary took writes at all: from the failure's start a direct
write probe sends each node that may become primary an INSERT of its own into a table beside
Gophermart's (failover_probe, created before the scenarios and dropped after them; the audit
reads only Gophermart's tables) every FAILOVER_PROBE_MS, each in its own connection with
statement_timeout at FAILOVER_PROBE_WAIT_MS. A write is taken only when answered without an
error or a warning within FAILOVER_PROBE_WAIT_MS + 1 s (a read-only node refuses it; a commit
still waiting for the synchronous standby is given up then: statement_timeout does not end
that wait; a commit whose wait is cancelled, as pg_autoctl does when it disables synchronous
replication, is answered with a WARNING). Per scenario with a new primary it
prints the promotion, the first direct write taken and the instance's first acknowledged
write, from the failure's start, the gap between the last two (the time Gophermart itself
adds once the database takes writes), and what the customers' writes were doing then.

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
BOUND = (CONNECT_MS + STATEMENT_MS + MARGIN_MS) / 1000
PROBE_MS = int(os.environ.get("FAILOVER_PROBE_MS", "100"))
PROBE_WAIT_MS = int(os.environ.get("FAILOVER_PROBE_WAIT_MS", "500"))
PROBE_TABLE = "failover_probe"
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
    comes after the statement); and one whose wait is cancelled (pg_cancel_backend, as
    pg_autoctl does when it disables synchronous replication) is committed locally but
    answered with a WARNING, which is not taken. As the
    writes overlap, one held at its commit is answered when the commit is released; a node
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
        sql = f"INSERT INTO {PROBE_TABLE} (node) VALUES ('{node.name}')"
        sent = time.time()
        try:
            out = subprocess.run(
                ["psql", node.uri, "-Xqt", "-v", "ON_ERROR_STOP=1", "-c", sql],
                env={**os.environ, "PGOPTIONS": f"-c statement_timeout={PROBE_WAIT_MS}"},
                capture_output=True,
                text=True,
                # A stopped node holds the connection: give up on it.
                timeout=PROBE_WAIT_MS / 1000 + 1,
            )
            taken = out.returncode == 0 and "WARNING" not in out.stderr
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
    killed = old.signal_all(signal.SIGKILL)
    return f"{killed} processes of {old.name} killed", other(nodes, old)


def rejoin(nodes, old):
    crashed = other(nodes, old)
    subprocess.run([CTL, "run", crashed.name], check=True)
    wait_until(f"{crashed.name} back as the standby", healthy, 90)
    return f"{crashed.name} back as the standby", None


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
        {"DATABASE_TIMEOUT_MS": str(CONNECT_MS), "DATABASE_STATEMENT_TIMEOUT_MS": str(STATEMENT_MS)},
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
            f"failover test: {CUSTOMERS} customers, {BIN}/gophermart, request bound {BOUND:.1f} s "
            f"(DATABASE_TIMEOUT_MS {CONNECT_MS} + DATABASE_STATEMENT_TIMEOUT_MS {STATEMENT_MS} + {MARGIN_MS} ms); "
            f"a direct write to each candidate node every {PROBE_MS} ms, taken within {PROBE_WAIT_MS} ms "
            f"(synchronous_commit, synchronous_standby_names: {' '.join(durability)})",
            flush=True,
        )
        for name, scenario in (("crash", crash), ("rejoin", rejoin), ("switchover", switchover), ("silent", silent)):
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
