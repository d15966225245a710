#!/usr/bin/env python3
"""Instructions per request of the service and of the floor (crates/floor) on the same request,
counted by valgrind's callgrind (instruction counts hold still on a shared machine where
throughput does not; this machine's kernel offers no hardware counters to `perf stat`).

Run it through `make profile` (bench/profile.sh: release build, valgrind, a throwaway database).
For each server and endpoint (the balance; the orders list of 20 items): the server starts
under callgrind and is warmed up (PROFILE_WARMUP requests, which open the pool's connections
and prepare the statements); then its counters are zeroed, PROFILE_REQUESTS requests are sent
over PROFILE_CONNECTIONS keep-alive connections, and the counters are dumped; then zeroed again,
the same wall time passes without a request, and they are dumped again: the idle cost (timers,
the service's accrual worker, its metrics) taken off. Results: target/profile/ (the callgrind
files, `callgrind_annotate --inclusive=yes` of each, profile.json, and table.md: where the
instructions go, by component, from bench/profile_table.py).

Settings (environment): PROFILE_REQUESTS (2000), PROFILE_CONNECTIONS (4), PROFILE_WARMUP (200),
BENCH_BIN_DIR (target/release), PROFILE_OUT (target/profile).
"""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("BENCH_OUT", os.environ.get("PROFILE_OUT", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "profile")))

from common import (BIN, DB, JWT_SECRET, OUT, STARTED, Accrual, Gophermart, free_port,  # noqa: E402
                    log, setup_users, wait_http_ok)
from phases.floor import add_orders, wait_http_answer  # noqa: E402

REQUESTS = int(os.environ.get("PROFILE_REQUESTS", "2000"))
CONNECTIONS = int(os.environ.get("PROFILE_CONNECTIONS", "4"))
WARMUP_REQUESTS = int(os.environ.get("PROFILE_WARMUP", "200"))
PATHS = {"balance": "/api/user/balance", "orders": "/api/user/orders"}


def send(port, path, tokens, count, connections):
    """count GETs of path over `connections` keep-alive connections, each for the next token in
    turn; every answer must be 200."""
    failures = []

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for i in range(k, count, connections):
            conn.request("GET", path, headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(f"profile: {len(failures)} answers were not 200: {failures[:5]}")
    return time.monotonic() - started


def callgrind_control(*args):
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, text=True)


def total_instructions(path):
    """The Ir total of a callgrind dump."""
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    sys.exit(f"profile: no totals in {path}")


def dumps(prefix):
    folder = os.path.dirname(prefix)
    base = os.path.basename(prefix)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.startswith(base + ".") and re.search(r"\.\d+$", n))


def profile(server, endpoint, tokens, accrual):
    port = free_port()
    prefix = os.path.join(OUT, f"callgrind.{server}.{endpoint}")
    for old in dumps(prefix) + [prefix]:
        if os.path.exists(old):
            os.remove(old)
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}",
                "--collect-atstart=yes"]
    log_file = open(os.path.join(OUT, f"{server}-{endpoint}.log"), "w")
    if server == "service":
        cmd = [*valgrind, os.path.join(BIN, "gophermart"), "-a", f"127.0.0.1:{port}", "-d", DB,
               "-r", accrual.url, "--jwt-secret", JWT_SECRET,
               # Only its start-up's dummy hash is cheaper: the reads never hash.
               "--bcrypt-cost", "4"]
        env = dict(os.environ)
    else:
        cmd = [*valgrind, os.path.join(BIN, "floor")]
        env = dict(os.environ, DATABASE_URI=DB, RUN_ADDRESS=f"127.0.0.1:{port}",
                   JWT_SECRET=JWT_SECRET)
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=log_file, env=env)
    STARTED.append(proc)
    try:
        url = f"http://127.0.0.1:{port}"
        ready = (wait_http_ok(url + "/readyz", 300, 0.2) if server == "service"
                 else wait_http_answer(url + PATHS[endpoint], 300, 0.2))
        if ready is None:
            sys.exit(f"profile: {server} did not start under valgrind (see {log_file.name})")
        send(port, PATHS[endpoint], tokens, WARMUP_REQUESTS, CONNECTIONS)
        pid = str(proc.pid)
        callgrind_control("-z", pid)
        seconds = send(port, PATHS[endpoint], tokens, REQUESTS, CONNECTIONS)
        callgrind_control("-d", "load", pid)
        callgrind_control("-z", pid)
        time.sleep(seconds)
        callgrind_control("-d", "idle", pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
    found = dumps(prefix)
    # callgrind numbers its dumps: .1 the load, .2 the idle time (the final one at exit is
    # the file without a number).
    load, idle = found[0], found[1]
    load_ir, idle_ir = total_instructions(load), total_instructions(idle)
    annotated = os.path.join(OUT, f"annotate.{server}.{endpoint}.txt")
    with open(annotated, "w") as f:
        subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=99.5", "--auto=no",
                        load], stdout=f, check=True)
    per_request = (load_ir - idle_ir) / REQUESTS
    log(f"{server:8} {endpoint:8} {per_request:12,.0f} instructions per request "
        f"(load {load_ir:,} over {seconds:.1f} s, idle {idle_ir:,})")
    return {"requests": REQUESTS, "connections": CONNECTIONS, "seconds": round(seconds, 2),
            "load_instructions": load_ir, "idle_instructions": idle_ir,
            "per_request": round(per_request), "callgrind": load, "annotated": annotated}


def main():
    if not DB:
        sys.exit("profile: DATABASE_URI is not set (run through make profile)")
    os.makedirs(OUT, exist_ok=True)
    accrual = Accrual()
    results = {"requests": REQUESTS, "connections": CONNECTIONS, "warmup": WARMUP_REQUESTS}
    try:
        setup = Gophermart(accrual.url, bcrypt_cost=4, log_name="gophermart-setup")
        token_files, ids = setup_users(setup)
        setup.stop()
        add_orders(ids)
        with open(token_files["read"]) as f:
            tokens = [line.strip() for line in f if line.strip()]
        for endpoint in PATHS:
            for server in ("service", "floor"):
                results.setdefault(endpoint, {})[server] = profile(server, endpoint, tokens, accrual)
            s, fl = results[endpoint]["service"]["per_request"], results[endpoint]["floor"]["per_request"]
            results[endpoint]["service_over_floor"] = round(s / fl, 3)
            log(f"{endpoint}: service / floor = {s / fl:.2f}")
    finally:
        accrual.stop()
    with open(os.path.join(OUT, "profile.json"), "w") as f:
        json.dump(results, f, indent=2)
    # Where the instructions go, by component (bench/profile_table.py).
    table = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                         "profile_table.py"), OUT],
                           check=True, capture_output=True, text=True).stdout
    with open(os.path.join(OUT, "table.md"), "w") as f:
        f.write(table)
    print(table)
    log(f"done: {OUT}/profile.json, table.md, annotate.*.txt")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
