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
longest request and the instance's log lines at WARN or above. Exits non-zero on a 500, a lost
write, a wrong balance, a failed audit or a request over the bound; stopped processes are
continued and everything started is ended, however it ends.

Environment: DATABASE_URI, AUTOFAILOVER_* (from scripts/with-auto-failover.sh); BIN
(target/debug), FAILOVER_STEADY_SECONDS (3), FAILOVER_MARGIN_MS (1500).
"""

import os
import signal
import subprocess
import sys
import threading
import time

from experiments import Instance, Workload, psql, warnings

BIN = os.environ.get("BIN", "target/debug")
CUSTOMERS = 8
STEADY = float(os.environ.get("FAILOVER_STEADY_SECONDS", "3"))
CONNECT_MS = 5000
STATEMENT_MS = 2000
MARGIN_MS = int(os.environ.get("FAILOVER_MARGIN_MS", "1500"))
BOUND = (CONNECT_MS + STATEMENT_MS + MARGIN_MS) / 1000
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
    try:
        workload = Workload(instance.base, instance.tokens)
        workload.run()
        log_at = os.path.getsize(instance.log.name)
        print(
            f"failover test: {CUSTOMERS} customers, {BIN}/gophermart, request bound {BOUND:.1f} s "
            f"(DATABASE_TIMEOUT_MS {CONNECT_MS} + DATABASE_STATEMENT_TIMEOUT_MS {STATEMENT_MS} + {MARGIN_MS} ms)",
            flush=True,
        )
        for name, scenario in (("crash", crash), ("rejoin", rejoin), ("switchover", switchover), ("silent", silent)):
            time.sleep(STEADY)
            old = primary_of(nodes)
            watch = PrimaryWatch([n for n in nodes if n is not old])
            started = time.time()
            what, new = scenario(nodes, old)
            if new is not None:
                wait_until(f"{new.name} promoted", lambda: new.name in watch.since, 90)
            wait_until(f"{name}: a write acknowledged", lambda: workload.first_write_after(time.time() - 0.5), 60)
            time.sleep(STEADY)
            watch.stop()
            workload.pause()
            ended = time.time()
            answered, longest, waiting = workload.between(started, ended)
            if new is not None:
                promoted_at = watch.since[new.name]
                written_at = workload.first_write_after(promoted_at)
                recovery = f"{written_at - promoted_at:.2f} s (promoted {promoted_at - started:.1f} s after the start)"
            else:
                recovery = "- (the primary did not change)"
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
                f"{'right' if not wrong else 'WRONG'}; audit exit {audit}; recovery {recovery}; "
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
            for failed, why in (
                (fives, f"{fives} answers 500"),
                (lost_uploads or lost_withdrawals, "acknowledged writes lost"),
                (wrong, "wrong balances"),
                (audit, "the audit failed"),
                (max(longest, waiting) > BOUND, f"a request took {max(longest, waiting):.2f} s > {BOUND:.1f} s"),
                (restarted, "gophermart exited"),
            ):
                if failed:
                    failures.append(f"{name}: {why}")
            if restarted:
                break
            workload.resume()
    finally:
        continue_stopped()
        if workload is not None:
            workload.finish()
        instance.stop()
    if failures:
        print("failover test FAILED:", "; ".join(failures))
        sys.exit(1)
    print("failover test passed")


if __name__ == "__main__":
    main()
