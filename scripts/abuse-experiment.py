#!/usr/bin/env python3
"""The abuse limits as an attacker with one valid account meets them, on release binaries.

Run it as `make abuse-experiment` (a throwaway PostgreSQL; BIN=target/release). Three
instances of Gophermart share the database, each with TRUSTED_PROXIES=127.0.0.1, as behind a
reverse proxy on this host that sets X-Forwarded-For; BCRYPT_COST=4 (the counts do not depend
on it). Prints, with the defaults of every limit:

1. brute force of one login from one client: the wrong passwords answered 401 before the
   first 429, through one instance and round robin through three;
2. 60 wrong sign-ins from one client behind the proxy, then 20 other clients' correct
   sign-ins: how many answered 200;
3. one customer uploading 10,000 numbers no shop registered, 16 at a time, on an instance
   whose request limit is off (CUSTOMER_REQUESTS_PER_SECOND=0, so that only the pending cap is
   measured): answers by status, and the customer's queue entries afterwards.
"""

import collections
import concurrent.futures
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from experiments import end_with_parent, free_port, luhn

BIN = os.environ.get("BIN", "target/release")


def request(method, url, body=None, token=None, forwarded_for=None, content_type="application/json"):
    headers = {}
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = "Bearer " + token
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers


def start(extra_env=None):
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="gophermart-abuse-", suffix=".log", delete=False)
    env = {
        **os.environ,
        "RUN_ADDRESS": f"127.0.0.1:{port}",
        "ACCRUAL_SYSTEM_ADDRESS": "http://127.0.0.1:9",
        "JWT_SECRET": "abuse-experiment",
        "BCRYPT_COST": "4",
        "TRUSTED_PROXIES": "127.0.0.1",
        **(extra_env or {}),
    }
    process = subprocess.Popen([f"{BIN}/gophermart"], env=env, stdout=log, stderr=log,
                               preexec_fn=end_with_parent)
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as r:
                if r.status == 200:
                    return process, base
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"gophermart did not start; log in {log.name}")


def register(base, login):
    status, headers = request("POST", f"{base}/api/user/register", {"login": login, "password": "right"})
    assert status == 200, (login, status)
    return headers["Authorization"].split(" ", 1)[1]


def wrong_until_refused(bases, login, client):
    for n in range(1, 200):
        base = bases[(n - 1) % len(bases)]
        status, _ = request("POST", f"{base}/api/user/login", {"login": login, "password": "wrong"},
                            forwarded_for=client)
        if status == 429:
            return n - 1
        assert status == 401, status
    return None


def main():
    processes = []
    try:
        for _ in range(3):
            processes.append(start())
        bases = [base for _, base in processes]
        register(bases[0], "victim-one")
        register(bases[0], "victim-three")
        one = wrong_until_refused(bases[:1], "victim-one", "203.0.113.1")
        three = wrong_until_refused(bases, "victim-three", "203.0.113.3")
        print(f"1. brute force: {one} wrong passwords before the first 429 with one instance, "
              f"{three} round robin over three")

        for i in range(20):
            register(bases[0], f"bystander{i}")
        for i in range(60):
            request("POST", f"{bases[i % 3]}/api/user/login", {"login": f"nobody{i}", "password": "x"},
                    forwarded_for="203.0.113.66")
        answers = collections.Counter(
            request("POST", f"{bases[i % 3]}/api/user/login", {"login": f"bystander{i}", "password": "right"},
                    forwarded_for=f"198.51.100.{i + 1}")[0]
            for i in range(20))
        attacker = request("POST", f"{bases[0]}/api/user/login", {"login": "bystander0", "password": "right"},
                           forwarded_for="203.0.113.66")[0]
        print(f"2. after 60 failures from one client behind the proxy: other clients' correct "
              f"sign-ins {dict(answers)}; the attacking client's own correct sign-in {attacker}")

        capped, capped_base = start({"CUSTOMER_REQUESTS_PER_SECOND": "0"})
        processes.append((capped, capped_base))
        token = register(capped_base, "hoarder")
        numbers = [luhn(f"77{k:012d}") for k in range(10_000)]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = collections.Counter(pool.map(
                lambda n: request("POST", f"{capped_base}/api/user/orders", n, token=token,
                                  content_type="text/plain")[0], numbers))
        took = time.monotonic() - started
        queued = subprocess.run(
            ["psql", os.environ["DATABASE_URI"], "-XtA", "-c",
             "SELECT count(*) FROM accrual_queue q JOIN users u ON u.id = q.user_id WHERE u.login = 'hoarder'"],
            check=True, capture_output=True, text=True).stdout.strip()
        print(f"3. 10,000 unknown numbers from one customer in {took:.1f} s: {dict(statuses)}; "
              f"the customer's queue entries afterwards: {queued}")
    finally:
        for process, _ in processes:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
