"""What the operator's experiments (scripts/*-experiment.py) share: a free port, order numbers
with their Luhn check digit, and an HTTP call that returns whatever the server answered."""

import json
import socket
import urllib.error
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def luhn(prefix):
    """`prefix` with the digit that makes it pass the Luhn check."""
    total = 0
    for i, d in enumerate(reversed([int(c) for c in prefix])):
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return prefix + str((10 - total % 10) % 10)


def call(method, url, body=None, token=None, content_type="application/json"):
    """(status, headers, body) of one request; status 0 when no answer came (the error's text
    is the body)."""
    data, headers = None, {}
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()
    except OSError as error:
        return 0, {}, str(error).encode()


def end_with_parent():
    """For Popen's preexec_fn: the child gets SIGTERM when this process dies, however it dies
    (Linux's PR_SET_PDEATHSIG), so that no server outlives a killed experiment."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def start_accrual(bin_dir):
    """Our accrual system from `bin_dir` on a free port, silent: (process, its base URL)."""
    import os
    import subprocess

    port = free_port()
    process = subprocess.Popen(
        [f"{bin_dir}/accrual"],
        env={**os.environ, "RUN_ADDRESS": f"127.0.0.1:{port}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=end_with_parent,
    )
    return process, f"http://127.0.0.1:{port}"


def psql(uri, sql, timeout=None):
    """The words of `sql`'s result on `uri` (psql, unaligned, tuples only); raises
    subprocess.CalledProcessError on an error and subprocess.TimeoutExpired after `timeout`."""
    import subprocess

    out = subprocess.run(
        ["psql", uri, "-XtA", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out.stdout.split()


def warnings(log_path, start):
    """The log lines at WARN or above from byte `start` of `log_path`, and where they end."""
    import re

    ansi = re.compile(r"\x1b\[[0-9;]*m")
    with open(log_path, encoding="utf-8", errors="replace") as log:
        log.seek(start)
        lines = [ansi.sub("", line) for line in log]
        end = log.tell()
    return [l for l in lines if re.search(r"\b(ERROR|WARN)\b", l)], end


FUNDS = 100000


class Instance:
    """One Gophermart from `bin_dir` with our accrual system, its log in a temporary file, and
    `customers` customers registered and funded with FUNDS points each, credited the real
    way: a purchase the accrual system knows of. `stop()` ends both processes."""

    def __init__(self, bin_dir, customers, prefix, extra_env=None, funding=6_000_000):
        import os
        import subprocess
        import tempfile

        self.bin_dir = bin_dir
        self.accrual, self.accrual_base = start_accrual(bin_dir)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"gophermart-{prefix}-", suffix=".log", delete=False)
        self.env = {
            **os.environ,
            "RUN_ADDRESS": f"127.0.0.1:{port}",
            "ACCRUAL_SYSTEM_ADDRESS": self.accrual_base,
            "JWT_SECRET": f"{prefix}-experiment",
            "BCRYPT_COST": "4",
            # The customers here write as fast as they can, hundreds of requests a second each,
            # with thousands of numbers no shop knows: they stand for the load of many, so the
            # per-customer limits (docs/reliability.md, "Abuse limits") are off.
            "CUSTOMER_REQUESTS_PER_SECOND": "0",
            "MAX_PENDING_ORDERS": "0",
            **(extra_env or {}),
        }
        self.process = subprocess.Popen(
            [f"{bin_dir}/gophermart"], env=self.env, stdout=self.log, stderr=self.log, preexec_fn=end_with_parent
        )
        self.tokens = []
        self.logins = []
        self.funding = funding
        try:
            self._start(customers, prefix)
        except BaseException:
            self.stop()
            raise

    def _start(self, customers, prefix):
        import json
        import time

        deadline = time.time() + 60
        while call("GET", self.base + "/readyz")[0] != 200:
            if time.time() > deadline or self.process.poll() is not None:
                raise RuntimeError("gophermart not ready")
            time.sleep(0.1)
        for c in range(customers):
            login = f"{prefix}{c}"
            status, headers, _ = call(
                "POST", self.base + "/api/user/register", {"login": login, "password": "secret-pass"}
            )
            if status != 200:
                raise RuntimeError(f"registration: {status}")
            self.logins.append(login)
            self.tokens.append((headers.get("Authorization") or "").removeprefix("Bearer "))
        call("POST", self.accrual_base + "/api/goods", {"match": "Funding", "reward": FUNDS, "reward_type": "pt"})
        for c, token in enumerate(self.tokens):
            number = luhn(str(self.funding + c))
            status, _, _ = call(
                "POST",
                self.accrual_base + "/api/orders",
                {"order": number, "goods": [{"description": "Funding", "price": 1}]},
            )
            if status != 202:
                raise RuntimeError(f"accrual order: {status}")
            status, _, _ = call("POST", self.base + "/api/user/orders", number, token, "text/plain")
            if status != 202:
                raise RuntimeError(f"funding upload: {status}")
        deadline = time.time() + 60
        while any(self.balance(t)[0] < FUNDS for t in self.tokens):
            if time.time() > deadline:
                raise RuntimeError("the funding orders were not credited in 60 s")
            time.sleep(0.2)

    def balance(self, token):
        """(current, withdrawn) as the API tells them; (-1, -1) without a 200."""
        import json

        status, _, body = call("GET", self.base + "/api/user/balance", token=token)
        if status != 200:
            return -1, -1
        balance = json.loads(body)
        return balance["current"], balance["withdrawn"]

    def audit(self):
        """`gophermart audit`: (exit code, its output)."""
        import subprocess

        audit = subprocess.run([f"{self.bin_dir}/gophermart", "audit"], env=self.env, capture_output=True, text=True)
        return audit.returncode, audit.stdout[-2000:] + audit.stderr[-2000:]

    def stop(self):
        import os

        for process in (self.process, self.accrual):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except Exception:
                    process.kill()
                    process.wait()
        self.log.close()
        os.unlink(self.log.name)


class Workload:
    """Customers uploading new order numbers, withdrawing 1 point for new numbers and reading
    their balance (and every tenth round their orders) until told to stop. A write answered
    503 or not answered is repeated with the same number until it is answered, as the API
    asks of clients. Every answer is recorded with its kind, status, end and duration."""

    def __init__(self, base, tokens, reads=True, first=0):
        import threading

        self.base, self.tokens, self.reads = base, tokens, reads
        self.lock = threading.Lock()
        # (end, kind, status, seconds)
        self.events = []
        self.uploads, self.withdrawals = set(), set()
        # When each acknowledged write was answered, by number.
        self.acknowledged_at = {}
        # By customer: every withdrawal number tried, and those answered 200.
        self.tried = {t: set() for t in tokens}
        self.withdrawn = {t: set() for t in tokens}
        # When each customer's request in flight began (None: none).
        self.in_flight = {}
        self.stop = threading.Event()
        # Order numbers are 7_000_000_000 + serial (with a check digit), serial from `first`.
        self.serial = first
        # pause() holds the customers between rounds; `parked` counts those held.
        self.held = threading.Condition()
        self.paused, self.parked = False, 0

    def next_number(self):
        with self.lock:
            self.serial += 1
            return luhn(str(7_000_000_000 + self.serial))

    def pause(self):
        """Returns once every customer has finished its round and waits for resume()."""
        with self.held:
            self.paused = True
            self.held.wait_for(lambda: self.parked == len(self.tokens))

    def resume(self):
        with self.held:
            self.paused = False
            self.held.notify_all()

    def request(self, token, kind, send):
        import time

        started = time.time()
        with self.lock:
            self.in_flight[token] = started
        status, _, _ = send()
        now = time.time()
        with self.lock:
            self.in_flight[token] = None
            self.events.append((now, kind, status, now - started))
        return status

    def until_answered(self, token, kind, send):
        import time

        while True:
            status = self.request(token, kind, send)
            if status not in (503, 0) or self.stop.is_set():
                return status
            time.sleep(0.02)

    def customer(self, token):
        import time

        rounds = 0
        while not self.stop.is_set():
            with self.held:
                self.parked += 1
                self.held.notify_all()
                self.held.wait_for(lambda: not self.paused or self.stop.is_set())
                self.parked -= 1
            number = self.next_number()
            status = self.until_answered(
                token,
                "upload",
                lambda: call("POST", self.base + "/api/user/orders", number, token, "text/plain"),
            )
            if status in (200, 202):
                with self.lock:
                    self.uploads.add(number)
                    self.acknowledged_at[number] = time.time()
            order = self.next_number()
            with self.lock:
                self.tried[token].add(order)
            status = self.until_answered(
                token,
                "withdraw",
                lambda: call(
                    "POST", self.base + "/api/user/balance/withdraw", {"order": order, "sum": 1}, token
                ),
            )
            if status == 200:
                with self.lock:
                    self.withdrawals.add(order)
                    self.acknowledged_at[order] = time.time()
                    self.withdrawn[token].add(order)
            if self.reads:
                self.request(token, "balance", lambda: call("GET", self.base + "/api/user/balance", token=token))
                if rounds % 10 == 0:
                    self.request(token, "orders", lambda: call("GET", self.base + "/api/user/orders", token=token))
            rounds += 1

    def run(self):
        import threading

        self.threads = [threading.Thread(target=self.customer, args=(t,)) for t in self.tokens]
        for thread in self.threads:
            thread.start()

    def finish(self):
        self.stop.set()
        self.resume()
        for thread in self.threads:
            thread.join()

    def between(self, start, end):
        """The answers that came between `start` and `end`: {(kind, status): count}, the
        longest request, and the longest still unanswered at `end`."""
        import collections

        with self.lock:
            events = [e for e in self.events if start <= e[0] < end]
            waiting = [end - s for s in self.in_flight.values() if s is not None]
        answered = collections.Counter((kind, status) for _, kind, status, _ in events)
        longest = max((seconds for *_, seconds in events), default=0.0)
        return answered, longest, max(waiting, default=0.0)

    def failures_between(self, start, end):
        """When the writes answered 503 or not answered between `start` and `end` were."""
        with self.lock:
            return [
                e
                for e, kind, status, _ in self.events
                if start <= e < end and kind in ("upload", "withdraw") and status in (503, 0)
            ]

    def first_write_after(self, moment):
        """When the first write acknowledged after `moment` was answered (None: none yet)."""
        with self.lock:
            return min(
                (
                    end
                    for end, kind, status, _ in self.events
                    if end >= moment and (kind, status) in (("upload", 202), ("upload", 200), ("withdraw", 200))
                ),
                default=None,
            )

    def missing(self, uri):
        """The acknowledged uploads and withdrawals missing on `uri`'s primary, by number, with
        when each was acknowledged."""
        with self.lock:
            uploads, withdrawals = set(self.uploads), set(self.withdrawals)
            at = dict(self.acknowledged_at)
        gone = (uploads - set(psql(uri, "SELECT number FROM orders"))) | (
            withdrawals - set(psql(uri, "SELECT order_number FROM withdrawals"))
        )
        return {number: at.get(number) for number in gone}

    def lost(self, uri):
        """(acknowledged uploads, missing, acknowledged withdrawals, missing) on `uri`'s primary."""
        with self.lock:
            uploads, withdrawals = set(self.uploads), set(self.withdrawals)
        stored_orders = set(psql(uri, "SELECT number FROM orders"))
        stored_withdrawals = set(psql(uri, "SELECT order_number FROM withdrawals"))
        return (
            len(uploads),
            len(uploads - stored_orders),
            len(withdrawals),
            len(withdrawals - stored_withdrawals),
        )

    def wrong_balances(self, instance, uri):
        """What is wrong with the customers' balances, with the workload paused: each
        customer's withdrawals on `uri`'s primary must include every one answered 200 and
        only numbers it sent, and the API's balance must be FUNDS less them."""
        rows = psql(
            uri, "SELECT u.login || '|' || w.order_number FROM withdrawals w JOIN users u ON u.id = w.user_id"
        )
        stored = collections_by_login(rows)
        problems = []
        for login, token in zip(instance.logins, self.tokens):
            mine = stored.get(login, set())
            with self.lock:
                acknowledged, tried = set(self.withdrawn[token]), set(self.tried[token])
            current, withdrawn = instance.balance(token)
            if not acknowledged <= mine or not mine <= tried:
                problems.append(
                    f"{login}: {len(acknowledged - mine)} acknowledged withdrawals missing, "
                    f"{len(mine - tried)} never sent"
                )
            if (current, withdrawn) != (FUNDS - len(mine), len(mine)):
                problems.append(
                    f"{login}: balance {current}, withdrawn {withdrawn}; "
                    f"{len(mine)} withdrawals of 1 stored"
                )
        return problems


def collections_by_login(rows):
    """`login|number` rows as {login: {number, ...}}."""
    by_login = {}
    for row in rows:
        login, number = row.split("|", 1)
        by_login.setdefault(login, set()).add(number)
    return by_login


NODE_WATCH = (
    "SELECT to_char(clock_timestamp(), 'HH24:MI:SS.MS'), "
    "CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary' END, "
    "'sync_names=' || quote_literal(current_setting('synchronous_standby_names')), "
    "'read_only=' || current_setting('default_transaction_read_only'), "
    "'replicas=' || coalesce((SELECT string_agg(application_name || ':' || state || ':' || sync_state, ',') "
    "FROM pg_stat_replication), '-'), "
    "'sync_waits=' || (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep')"
)
MONITOR_WATCH = (
    "SELECT to_char(clock_timestamp(), 'HH24:MI:SS.MS'), "
    "string_agg(nodename || ':' || reportedstate || '/' || goalstate || ':health=' || health, ' ' ORDER BY nodeid) "
    "FROM pgautofailover.node"
)


class Timeline:
    """Records, every `period` seconds, what each server says of itself (primary or standby,
    synchronous_standby_names, default_transaction_read_only, its replicas and the sessions
    waiting for a synchronous standby) and the monitor's reported and assigned states: one
    line per change, with the server's clock, in `path`. One psql per server repeats its
    query (`\\watch`); a server that goes away is asked again every 0.2 s."""

    def __init__(self, path, sources, period=0.1):
        import threading

        self.path, self.period = path, period
        self.file = open(path, "a", buffering=1)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.processes = {}
        self.threads = [
            threading.Thread(target=self.watch, args=(name, uri, sql), daemon=True) for name, uri, sql in sources
        ]
        for thread in self.threads:
            thread.start()

    def note(self, text):
        """A line of the caller's own (what it did, and when by this machine's clock)."""
        import datetime

        now = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        with self.lock:
            self.file.write(f"{now} test: {text}\n")

    def watch(self, name, uri, sql):
        import subprocess
        import time

        last = None
        while not self.done.is_set():
            process = subprocess.Popen(
                ["psql", uri, "-XAtq", "-F", " ", "-v", "ON_ERROR_STOP=1"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**__import__("os").environ, "PGCONNECT_TIMEOUT": "2"},
            )
            self.processes[name] = process
            process.stdin.write(f"{sql}\n\\watch {self.period}\n")
            process.stdin.flush()
            for line in process.stdout:
                line = line.rstrip("\n")
                # Only the query's rows: psql's complaints end in "no answer" below.
                if len(line) < 13 or line[2] != ":" or line[8] != ".":
                    continue
                at, _, state = line.partition(" ")
                if state != last:
                    last = state
                    with self.lock:
                        self.file.write(f"{at} {name}: {state}\n")
            process.wait()
            if last != "(no answer)":
                last = "(no answer)"
                self.note(f"{name}: no answer")
            time.sleep(0.2)

    def stop(self):
        self.done.set()
        for process in list(self.processes.values()):
            if process.poll() is None:
                process.terminate()
        for thread in self.threads:
            thread.join(timeout=5)
        self.file.close()


def keeper_processes(pgdata):
    """The pid of the `pg_autoctl: node active` process (the keeper that talks to the monitor
    and runs the node's transitions) of the node whose data directory is `pgdata`: in the
    process group of the `pg_autoctl ... --pgdata PGDATA` that supervises it."""
    import os

    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                pgid = int(f.read().rsplit(")", 1)[1].split()[2])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        table[int(entry)] = (pgid, args)
    groups = {pgid for pgid, args in table.values() if pgdata in args}
    return [pid for pid, (pgid, args) in table.items() if pgid in groups and " ".join(args).strip() == "pg_autoctl: node active"]
