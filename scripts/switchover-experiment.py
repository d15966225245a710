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
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

from experiments import call, free_port, luhn, start_accrual

BIN = os.environ.get("BIN", "target/release")
CUSTOMERS = 8
RUNS = int(os.environ.get("SWITCHOVER_RUNS", "5"))
STEADY = float(os.environ.get("SWITCHOVER_STEADY_SECONDS", "3"))


def psql(sql):
    out = subprocess.run(
        ["psql", os.environ["DATABASE_URI"], "-XtA", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.split()


def primary_port():
    return psql("SELECT inet_server_port()")[0]


class Workload:
    """Customers writing until told to stop; what they were told, by number."""

    def __init__(self, base, tokens):
        self.base, self.tokens = base, tokens
        self.lock = threading.Lock()
        self.statuses = collections.Counter()
        self.uploads, self.withdrawals = set(), set()
        self.last_failure = 0.0
        self.first_success_after = {}
        self.stop = threading.Event()
        self.serial = 0

    def next_number(self):
        with self.lock:
            self.serial += 1
            return luhn(str(7_000_000_000 + self.serial))

    def until_answered(self, kind, send):
        while True:
            status, _, _ = send()
            now = time.time()
            with self.lock:
                self.statuses[(kind, status)] += 1
                if status in (503, 0):
                    self.last_failure = now
            if status not in (503, 0) or self.stop.is_set():
                return status
            time.sleep(0.02)

    def customer(self, token):
        while not self.stop.is_set():
            number = self.next_number()
            status = self.until_answered(
                "upload",
                lambda: call("POST", self.base + "/api/user/orders", number, token, "text/plain"),
            )
            if status in (200, 202):
                with self.lock:
                    self.uploads.add(number)
            order = self.next_number()
            status = self.until_answered(
                "withdraw",
                lambda: call(
                    "POST",
                    self.base + "/api/user/balance/withdraw",
                    {"order": order, "sum": 1},
                    token,
                ),
            )
            if status == 200:
                with self.lock:
                    self.withdrawals.add(order)

    def run(self):
        self.threads = [threading.Thread(target=self.customer, args=(t,)) for t in self.tokens]
        for thread in self.threads:
            thread.start()

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join()


def missing(workload):
    with workload.lock:
        uploads, withdrawals = set(workload.uploads), set(workload.withdrawals)
    stored_orders = set(psql("SELECT number FROM orders"))
    stored_withdrawals = set(psql("SELECT order_number FROM withdrawals"))
    return (
        len(uploads),
        len(uploads - stored_orders),
        len(withdrawals),
        len(withdrawals - stored_withdrawals),
    )


def warnings(log_path, start):
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    with open(log_path, encoding="utf-8", errors="replace") as log:
        log.seek(start)
        lines = [ansi.sub("", line) for line in log]
        end = log.tell()
    return [l for l in lines if re.search(r"\b(ERROR|WARN)\b", l)], end


def main():
    accrual, accrual_base = start_accrual(BIN)
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="gophermart-switchover-", suffix=".log", delete=False)
    env = {
        **os.environ,
        "RUN_ADDRESS": f"127.0.0.1:{port}",
        "ACCRUAL_SYSTEM_ADDRESS": accrual_base,
        "JWT_SECRET": "switchover-experiment",
        "BCRYPT_COST": "4",
    }
    gophermart = subprocess.Popen([f"{BIN}/gophermart"], env=env, stdout=log, stderr=log)
    failed = False
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while call("GET", base + "/readyz")[0] != 200:
            if time.time() > deadline:
                sys.exit("gophermart not ready")
            time.sleep(0.1)
        tokens = []
        for c in range(CUSTOMERS):
            status, headers, _ = call(
                "POST", base + "/api/user/register", {"login": f"switch{c}", "password": "secret-pass"}
            )
            assert status == 200, status
            tokens.append((headers.get("Authorization") or "").removeprefix("Bearer "))
        # Points to spend, credited the real way: a purchase the accrual system knows of.
        call("POST", accrual_base + "/api/goods", {"match": "Funding", "reward": 100000, "reward_type": "pt"})
        for c, token in enumerate(tokens):
            number = luhn(str(6_000_000 + c))
            status, _, _ = call(
                "POST", accrual_base + "/api/orders", {"order": number, "goods": [{"description": "Funding", "price": 1}]}
            )
            assert status == 202, f"accrual order: {status}"
            status, _, _ = call("POST", base + "/api/user/orders", number, token, "text/plain")
            assert status == 202, f"funding upload: {status}"
        deadline = time.time() + 60
        while any(
            json.loads(call("GET", base + "/api/user/balance", token=t)[2])["current"] < 100000 for t in tokens
        ):
            if time.time() > deadline:
                sys.exit("the funding orders were not credited in 60 s")
            time.sleep(0.2)
        workload = Workload(base, tokens)
        workload.run()
        log_at = 0
        print(f"switchover experiment: {CUSTOMERS} customers, {RUNS} switchovers, {BIN}/gophermart")
        for run in range(1, RUNS + 1):
            time.sleep(STEADY)
            before = dict(workload.statuses)
            old = primary_port()
            started = time.time()
            subprocess.run([os.environ["AUTOFAILOVER_CTL"], "switchover"], check=True, capture_output=True)
            switched = time.time()
            time.sleep(STEADY)
            new = primary_port()
            with workload.lock:
                after = dict(workload.statuses)
                outage = max(0.0, workload.last_failure - started) if workload.last_failure >= started else 0.0
            answered = collections.Counter(after)
            answered.subtract(before)
            uploads, lost_uploads, withdrawals, lost_withdrawals = missing(workload)
            lines, log_at = warnings(log.name, log_at)
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
        uploads, lost_uploads, withdrawals, lost_withdrawals = missing(workload)
        audit = subprocess.run(
            [f"{BIN}/gophermart", "audit"], env=env, capture_output=True, text=True
        )
        total = collections.Counter()
        for (kind, status), n in workload.statuses.items():
            total[f"{kind} {status}"] += n
        print(
            f"total: {dict(sorted(total.items()))}; acknowledged {uploads} uploads "
            f"({lost_uploads} lost) and {withdrawals} withdrawals ({lost_withdrawals} lost); "
            f"audit exit {audit.returncode}"
        )
        if audit.returncode != 0:
            print(audit.stdout[-2000:], audit.stderr[-2000:])
        failed |= bool(lost_uploads or lost_withdrawals or audit.returncode)
    finally:
        gophermart.terminate()
        gophermart.wait(timeout=30)
        accrual.terminate()
        accrual.wait(timeout=30)
        log.close()
        os.unlink(log.name)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
