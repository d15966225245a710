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

Environment: DATABASE_URI, AUTOFAILOVER_CTL (from scripts/with-auto-failover.sh); BIN
(target/release), SWITCHOVER_RUNS (5), SWITCHOVER_STEADY_SECONDS (3).
"""

import collections
import os
import subprocess
import sys
import time

from experiments import Instance, Workload, psql, warnings

BIN = os.environ.get("BIN", "target/release")
CUSTOMERS = 8
RUNS = int(os.environ.get("SWITCHOVER_RUNS", "5"))
STEADY = float(os.environ.get("SWITCHOVER_STEADY_SECONDS", "3"))
URI = os.environ["DATABASE_URI"]


def primary_port():
    return psql(URI, "SELECT inet_server_port()")[0]


def main():
    instance = Instance(BIN, CUSTOMERS, "switch")
    failed = False
    workload = None
    try:
        # Writes only, as this experiment has always measured.
        workload = Workload(instance.base, instance.tokens, reads=False)
        workload.run()
        log_at = os.path.getsize(instance.log.name)
        print(f"switchover experiment: {CUSTOMERS} customers, {RUNS} switchovers, {BIN}/gophermart")
        for run in range(1, RUNS + 1):
            time.sleep(STEADY)
            old = primary_port()
            started = time.time()
            subprocess.run([os.environ["AUTOFAILOVER_CTL"], "switchover"], check=True, capture_output=True)
            switched = time.time()
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
            failed |= bool(lost_uploads or lost_withdrawals or fives or old == new)
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
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
