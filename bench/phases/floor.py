"""Phase "floor": the service against the floor (crates/floor), a hand-written server on the same
stack (actix-web, deadpool-postgres, tokio-postgres, jsonwebtoken) that checks the same token,
runs the same SQL and writes the same JSON for the balance and the orders list, and does nothing
else. Same database, users and data; the two take turns, a fresh process for each run, in both
orders (service, floor, floor, service, ...), so that the drift of a shared machine falls on both
alike. Before any figure, both answer the same requests of FLOOR_CHECK_USERS read users and
their status and body bytes are compared: when they differ, no ratio is reported."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)

# 64 connections, 8 s per run, two runs per server and endpoint (BENCH_FLOOR_*).
FLOOR_CLIENTS = int(os.environ.get("BENCH_FLOOR_CLIENTS", "64"))
FLOOR_SECONDS = float(os.environ.get("BENCH_FLOOR_SECONDS", "8"))
FLOOR_ROUNDS = int(os.environ.get("BENCH_FLOOR_ROUNDS", "2"))
FLOOR_CHECK_USERS = 20
# The orders list is measured at 20 items: the setup's ten orders per read user and ten more,
# added for this phase (11 digits beginning with 3; the setup's begin with 1) and removed after.
FLOOR_EXTRA_ORDERS = 10
FLOOR_ORDER_PREFIX = "3"
FLOOR_ENDPOINTS = [e for e in ENDPOINTS if e[0] in ("balance", "orders")]


class Floor:
    """The floor server (BIN/floor) on a free port, configured as the service is (DATABASE_URI,
    RUN_ADDRESS, JWT_SECRET, its pool of 16 and one HTTP worker per core), answering."""

    def __init__(self, log_name="floor"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(OUT, f"{log_name}.log"), "a")
        env = dict(os.environ, DATABASE_URI=DB, RUN_ADDRESS=f"127.0.0.1:{self.port}",
                   JWT_SECRET=JWT_SECRET)
        self.proc = subprocess.Popen([os.path.join(BIN, "floor")], stdout=self.log,
                                     stderr=self.log, env=env)
        STARTED.append(self.proc)
        # It has no readiness endpoint: any answer to a request without a token (401) will do.
        if wait_http_answer(self.url + "/api/user/balance", 30) is None:
            sys.exit(f"bench: the floor server did not start (see {self.log.name})")

    def peak_rss_kb(self):
        return rss_kb(self.proc.pid, "VmHWM")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def wait_http_answer(url, timeout, interval=0.01):
    """Polls url until it answers anything over HTTP; the seconds it took, or None."""
    host, port, path = parse_url(url)
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 "):
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(interval)
    return None


def answer(url, token):
    """The status and body bytes of a GET with the token."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def compare_answers(service, floor, tokens):
    """The same requests to both: the differences (none when the bytes are identical), and how
    many answers were compared."""
    with open(tokens["read"]) as f:
        users = [line.strip() for line in f if line.strip()][:FLOOR_CHECK_USERS]
    differences = []
    compared = 0
    for i, token in enumerate(users):
        for path in ("/api/user/balance", "/api/user/orders"):
            mine, theirs = answer(service.url + path, token), answer(floor.url + path, token)
            compared += 1
            if mine != theirs:
                differences.append({"user": i, "path": path,
                                    "service": [mine[0], mine[1].decode(errors="replace")[:400]],
                                    "floor": [theirs[0], theirs[1].decode(errors="replace")[:400]]})
    # A refused token too: both must refuse it (the bodies differ: the floor writes none).
    for path in ("/api/user/balance", "/api/user/orders"):
        mine, theirs = answer(service.url + path, "x"), answer(floor.url + path, "x")
        compared += 1
        if mine[0] != 401 or theirs[0] != 401:
            differences.append({"path": path, "token": "invalid", "service": [mine[0], ""],
                                "floor": [theirs[0], ""]})
    return differences, compared


def add_orders(ids):
    lo, hi = ids["read"]
    rows = []
    for u in range(lo, hi + 1):
        for i in range(FLOOR_EXTRA_ORDERS):
            number = luhn(FLOOR_ORDER_PREFIX + f"{u * 10 + i:09d}")
            rows.append(f"('{number}', {u}, 'PROCESSED', {15 + i}.50, "
                        f"now() - interval '{10 + i} hours', now())")
    psql_script("INSERT INTO orders (number, user_id, status, accrual, uploaded_at, updated_at) VALUES\n"
                + ",\n".join(rows) + ";\nVACUUM ANALYZE orders;")


def remove_orders():
    psql_script(f"DELETE FROM orders WHERE number LIKE '{FLOOR_ORDER_PREFIX}%' AND length(number) = 11;\n"
                "VACUUM ANALYZE orders;")


def floor_phase(accrual, tokens, ids, results):
    out = {"clients": FLOOR_CLIENTS, "seconds": FLOOR_SECONDS, "rounds": FLOOR_ROUNDS,
           "orders_per_user": 10 + FLOOR_EXTRA_ORDERS, "kept": "mean", "endpoints": {}}
    add_orders(ids)
    try:
        service = Gophermart(accrual.url, log_name="gophermart-floor")
        floor = Floor()
        try:
            differences, compared = compare_answers(service, floor, tokens)
        finally:
            floor.stop()
            service.stop()
        out["answers_compared"] = compared
        out["bytes_identical"] = not differences
        out["differences"] = differences[:10]
        if differences:
            log(f"floor: {len(differences)} of {compared} answers differ from the service's, e.g. "
                f"{json.dumps(differences[0])[:600]}: no ratio will be reported")
        else:
            log(f"floor: {compared} answers compared, status and body bytes identical to the service's")

        starts = {"service": lambda: Gophermart(accrual.url, log_name="gophermart-floor"),
                  "floor": Floor}
        for endpoint in FLOOR_ENDPOINTS:
            name = endpoint[0]
            runs = []
            for round_ in range(FLOOR_ROUNDS):
                # Both orders: service first in even rounds, the floor first in odd ones.
                order = ["service", "floor"] if round_ % 2 == 0 else ["floor", "service"]
                for server in order:
                    process = starts[server]()
                    try:
                        if WARMUP > 0:
                            endpoint_run(process, accrual, tokens, endpoint, FLOOR_CLIENTS,
                                         WARMUP, "")
                        cpu = CpuMeter(process.proc.pid, accrual.proc.pid)
                        result = endpoint_run(process, accrual, tokens, endpoint, FLOOR_CLIENTS,
                                              FLOOR_SECONDS, "", cpu)
                        result["other_cores"] = round(other_cores(result), 3)
                        result["peak_rss_kb"] = process.peak_rss_kb()
                    finally:
                        process.stop()
                    result["server"] = server
                    runs.append(result)
                    log_point(f"{name:8} c={FLOOR_CLIENTS:<3} {server:8}", result)
            point = {"runs": runs}
            for server in starts:
                point[server] = mean_of_runs([r for r in runs if r["server"] == server])
            point["ratio"] = (point["service"]["rps"] / point["floor"]["rps"]
                              if out["bytes_identical"] and point["floor"]["rps"] else None)
            out["endpoints"][name] = point
            if point["ratio"] is not None:
                log(f"floor: {name} service {point['service']['rps']:.0f} req/s, floor "
                    f"{point['floor']['rps']:.0f} req/s: {point['ratio']:.3f} of the floor")
    finally:
        remove_orders()
    results["floor"] = out
