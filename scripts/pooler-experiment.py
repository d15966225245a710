#!/usr/bin/env python3
"""One release instance through PgBouncer in transaction pooling mode, as an operator would try it.

12 customers at once, each registering and then, five times, uploading an order and reading
its balance and its orders: 192 requests. Prints the answers by status, and exits non-zero on
any 5xx or unexpected answer, or an error line in the instance's log.

Run it as `make pooler-experiment` (a throwaway PostgreSQL, PgBouncer with
default_pool_size = 4, release binaries). It reads DATABASE_POOLER_URI, DATABASE_URI and,
when PREPARED=true, runs the instance with prepared statements (which fails through the
pooler: the experiment before unnamed statements existed).
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
CUSTOMERS = 12
ORDERS = 5


def wait_ready(base, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        try:
            status, _, body = call("GET", base + "/readyz")
            if status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("gophermart not ready")


def main():
    prepared = os.environ.get("PREPARED", "false")
    accrual, accrual_base = start_accrual(BIN)
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="gophermart-pooler-", suffix=".log", delete=False)
    env = {
        **os.environ,
        "RUN_ADDRESS": f"127.0.0.1:{port}",
        "DATABASE_URI": os.environ["DATABASE_POOLER_URI"],
        "ACCRUAL_SYSTEM_ADDRESS": accrual_base,
        "DATABASE_PREPARED_STATEMENTS": prepared,
        "JWT_SECRET": "pooler-experiment",
        "BCRYPT_COST": "4",
    }
    env.pop("DATABASE_LISTEN_URI", None)
    gophermart = subprocess.Popen([f"{BIN}/gophermart"], env=env, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = wait_ready(base)
        counts = collections.Counter()
        lock = threading.Lock()

        def customer(c):
            answers = []
            status, headers, _ = call(
                "POST", base + "/api/user/register", {"login": f"operator{c}", "password": "secret-pass"}
            )
            answers.append(("register", status))
            token = (headers.get("Authorization") or "").removeprefix("Bearer ")
            for n in range(ORDERS):
                number = luhn(str(9_100_000 + c * 100 + n))
                answers.append(("upload", call("POST", base + "/api/user/orders", number, token, "text/plain")[0]))
                answers.append(("balance", call("GET", base + "/api/user/balance", token=token)[0]))
                answers.append(("orders", call("GET", base + "/api/user/orders", token=token)[0]))
            with lock:
                counts.update(answers)

        started = time.time()
        threads = [threading.Thread(target=customer, args=(c,)) for c in range(CUSTOMERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.time() - started
    finally:
        gophermart.terminate()
        gophermart.wait(timeout=30)
        accrual.terminate()
        accrual.wait(timeout=30)
    log.close()
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    lines = (ansi.sub("", l) for l in open(log.name, encoding="utf-8", errors="replace"))
    errors = [l for l in lines if re.search(r"\b(ERROR|WARN)\b", l)]
    os.unlink(log.name)
    total = sum(counts.values())
    expected = {"register": {200}, "upload": {202}, "balance": {200}, "orders": {200}}
    bad = {k: v for k, v in counts.items() if k[1] not in expected[k[0]]}
    print(f"pooler experiment: prepared statements {prepared}, readyz {json.dumps(ready)}")
    print(f"{total} requests from {CUSTOMERS} customers in {took:.2f} s")
    for (kind, status), n in sorted(counts.items()):
        print(f"  {kind:8} {status}: {n}")
    print(f"  unexpected answers: {sum(bad.values())}; error or warning log lines: {len(errors)}")
    for line in errors[:5]:
        print("   ", line.rstrip()[:300])
    sys.exit(1 if bad or errors or total != CUSTOMERS * (1 + 3 * ORDERS) else 0)


if __name__ == "__main__":
    main()
