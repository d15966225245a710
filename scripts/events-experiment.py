#!/usr/bin/env python3
"""GET /api/user/events (Server-Sent Events) measured on release binaries.

Run it as `make events-experiment` (cargo build --release --bins, then
`scripts/with-postgres.sh python3 scripts/events-experiment.py`: a throwaway PostgreSQL;
BIN=target/release). BCRYPT_COST=4 (sign-ups only), the per-customer limits off
(CUSTOMER_REQUESTS_PER_SECOND=0, MAX_PENDING_ORDERS=0: each customer here uploads hundreds of
numbers a second), every other setting at its default. Prints, with the machine (cores, load
average, CPU busy over each measured window):

1. delivery latency: two instances A and B on one database, 200 customers with one stream each
   (100 on A, 100 on B). For each `order` event with status NEW received: the time it was
   received less the upload's commit time (pg_xact_commit_timestamp of the event's
   transaction, kept by the server with track_commit_timestamp=on, which `make
   events-experiment` sets; without it, the order's `uploaded_at`, set by the server just
   before the insert, an upper bound; both read from the database, to the microsecond, as the
   API's is whole seconds), split by whether the upload went to the instance the stream is on
   or to the other one; and whether every stored upload (every acknowledged one is stored, and
   more may be: those wrk left unanswered when it stopped) arrived exactly once, on its
   customer's stream. Twice:
   a. paced: 100 uploads one at a time, every 50 ms, alternately to A and B (also the time
      from each 202 to its event);
   b. under load: wrk runs bench/wrk/upload.lua, the script of `make bench`'s upload phase,
      against A and B at once (EVENTS_UPLOAD_CONNECTIONS connections each, 16 by default, for
      EVENTS_UPLOAD_SECONDS, 20), each upload for a customer of the 200 picked at random (A's
      numbers begin with 41, B's with 42): the uploads a second, and, sampled from
      pg_stat_activity, the transactions holding an xid (events committed after the oldest
      running one are delivered ahead of it: their ids list them).
2. 10,000 streams on one instance: 2,000 customers x 5 streams (EVENT_STREAMS_PER_CUSTOMER's
   default), opened by asyncio and kept reading, then closed, EVENTS_ROUNDS times (3); the
   instance's RSS before, with them open and after closing them in each round (memory that
   grows round by round is a leak; memory kept but reused is the allocator's), and
   GET /api/user/balance throughput (wrk, bench/wrk/balance.lua, 64 connections, 8 s) without
   the streams and with them in turn: each run with them against the mean of the runs without
   on either side, and the median of those ratios.

The 10,000 streams are measured first, on the fresh database (no orders for the accrual worker
to chase yet), then the delivery latency. Settings (environment): BIN, EVENTS_STREAMS (10000),
EVENTS_UPLOAD_CONNECTIONS (16 per instance), EVENTS_UPLOAD_SECONDS (20), EVENTS_WRK_SECONDS (8),
EVENTS_ROUNDS (3),
EVENTS_READER_PRIORITY (10: the stream reader runs at nice -10 below the caller, so that its own wait
for a core on the saturated machine does not count as delivery latency; 0 to measure without);
the service's own (DATABASE_POOL_SIZE, ACCRUAL_CONCURRENCY...) reach every instance started.
"""

import asyncio
import collections
import concurrent.futures
import datetime
import json
import math
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ left in scripts/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experiments import call, end_with_parent, free_port, luhn, psql, start_accrual  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(os.environ.get("BIN", os.path.join(ROOT, "target", "release")))
WRK_DIR = os.path.join(ROOT, "bench", "wrk")
DB = os.environ.get("DATABASE_URI")

STREAMS = int(os.environ.get("EVENTS_STREAMS", "10000"))
PER_CUSTOMER = 5
UPLOAD_CONNECTIONS = int(os.environ.get("EVENTS_UPLOAD_CONNECTIONS", "16"))
UPLOAD_SECONDS = int(os.environ.get("EVENTS_UPLOAD_SECONDS", "20"))
WRK_SECONDS = int(os.environ.get("EVENTS_WRK_SECONDS", "8"))
ROUNDS = int(os.environ.get("EVENTS_ROUNDS", "3"))
WRK_CONNECTIONS = 64
LATENCY_CUSTOMERS = 200
PACED = 100
PREFIXES = {"A": "41", "B": "42"}
JWT_SECRET = "events-experiment"


# How much higher than the caller's the stream reader's (this script's) priority is: on a
# saturated machine its own wait for a core would otherwise count as delivery latency. The
# servers, wrk and psql run at the caller's priority.
READER_PRIORITY = int(os.environ.get("EVENTS_READER_PRIORITY", "10"))
CALLER_NICE = os.getpriority(os.PRIO_PROCESS, 0)


def child_setup():
    """For each program this script starts: ends with it, at the caller's priority."""
    end_with_parent()
    os.setpriority(os.PRIO_PROCESS, 0, CALLER_NICE)


def raise_reader_priority():
    """Raises this script's priority by READER_PRIORITY (root may); what it runs at."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, CALLER_NICE - READER_PRIORITY)
    except PermissionError:
        pass
    return os.getpriority(os.PRIO_PROCESS, 0)


def log(message):
    print(f"events-experiment: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The machine


def cpu_times():
    """(busy, total) jiffies of the whole machine (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_cpu(pid):
    """User + system CPU seconds of `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Window:
    """The machine's load over a measured window: load averages at its start and end, the
    share of all cores busy, and the CPU each of `pids` used."""

    def __init__(self, pids=()):
        self.pids = dict(pids)
        self.load_start = os.getloadavg()
        self.cpu_start = cpu_times()
        self.proc_start = {name: process_cpu(pid) for name, pid in self.pids.items()}
        self.started = time.monotonic()

    def end(self):
        self.seconds = time.monotonic() - self.started
        busy, total = cpu_times()
        self.busy = (busy - self.cpu_start[0]) / max(1, total - self.cpu_start[1])
        self.load_end = os.getloadavg()
        self.proc_cpu = {name: process_cpu(pid) - self.proc_start[name] for name, pid in self.pids.items()}
        return self

    def text(self):
        cores = os.cpu_count()
        procs = ", ".join(f"{name} {cpu / self.seconds:.2f}" for name, cpu in self.proc_cpu.items())
        return (f"load {self.load_start[0]:.2f} -> {self.load_end[0]:.2f}, machine busy "
                f"{self.busy * cores:.2f} of {cores} cores" + (f" (cores used: {procs})" if procs else ""))


# ---------------------------------------------------------------------------------------------
# Processes


class Gophermart:
    def __init__(self, name, accrual_base, tmp):
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(tmp, f"gophermart-{name}.log")
        self.log = open(self.log_path, "w")
        env = {
            **os.environ,
            "RUN_ADDRESS": f"127.0.0.1:{self.port}",
            "DATABASE_URI": DB,
            "ACCRUAL_SYSTEM_ADDRESS": accrual_base,
            "JWT_SECRET": JWT_SECRET,
            "BCRYPT_COST": "4",
            "CUSTOMER_REQUESTS_PER_SECOND": "0",
            "MAX_PENDING_ORDERS": "0",
        }
        self.process = subprocess.Popen([os.path.join(BIN, "gophermart")], env=env, stdout=self.log,
                                        stderr=self.log, preexec_fn=child_setup)
        deadline = time.time() + 60
        while call("GET", self.base + "/readyz")[0] != 200:
            if time.time() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"gophermart {name} not ready:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines=20):
        self.log.flush()
        with open(self.log_path, errors="replace") as log_file:
            return "".join(log_file.readlines()[-lines:])

    def warnings(self):
        ansi = re.compile(r"\x1b\[[0-9;]*m")
        with open(self.log_path, errors="replace") as log_file:
            return [ansi.sub("", l).strip() for l in log_file if re.search(r"\b(ERROR|WARN)\b", ansi.sub("", l))]

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def sign_up(base, logins):
    """The tokens of `logins`, registered through the API, in order."""

    def one(login):
        status, headers, body = call("POST", base + "/api/user/register", {"login": login, "password": "secret-pass"})
        if status != 200:
            raise RuntimeError(f"registration of {login}: {status} {body[:200]!r}")
        return (headers.get("Authorization") or "").removeprefix("Bearer ")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, logins))


async def wrk(url, script, connections, seconds, args):
    """bench/wrk/`script` against `url`, as bench/run.py runs it: its WRKJSON figures."""
    threads = 1 if connections == 1 else 2
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "30s",
           "-s", os.path.join(WRK_DIR, script), url, "--", *map(str, args)]
    process = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                   preexec_fn=child_setup)
    try:
        stdout, stderr = await process.communicate()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    match = re.search(r"^WRKJSON (.*)$", stdout.decode(), re.M)
    if process.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed: {stdout.decode()[-1000:]} {stderr.decode()[-1000:]}")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


# ---------------------------------------------------------------------------------------------
# Streams


class Stream:
    """One open GET /api/user/events over a raw connection: reads the chunked body, splits it
    into SSE messages and hands each (receive time, event, id, data) to `on_message`."""

    def __init__(self, port, token, on_message):
        self.port, self.token, self.on_message = port, token, on_message
        self.ready = asyncio.get_running_loop().create_future()
        self.writer = None
        self.task = None

    async def open(self):
        """Connects and waits for the `ready` message; raises on a refusal or an error."""
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write((f"GET /api/user/events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                           f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"status {status}")
        chunked = b"transfer-encoding: chunked" in head.lower()
        self.task = asyncio.create_task(self.read(reader, chunked))
        await self.ready

    async def read(self, reader, chunked):
        buffer = b""
        try:
            while True:
                if chunked:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        break
                    data = await reader.readexactly(size + 2)
                    data = data[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        break
                received = time.time()
                buffer += data
                while b"\n\n" in buffer:
                    message, buffer = buffer.split(b"\n\n", 1)
                    self.message(received, message)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            if not self.ready.done():
                self.ready.set_exception(RuntimeError(f"stream ended: {error!r}"))
            return
        if not self.ready.done():
            self.ready.set_exception(RuntimeError("stream ended before ready"))

    def message(self, received, message):
        event, ident, data = "message", "", []
        for line in message.decode().split("\n"):
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "id":
                ident = value
            elif field == "data":
                data.append(value)
        if not data:
            return
        if event == "ready" and not self.ready.done():
            self.ready.set_result(ident)
        self.on_message(received, event, ident, "\n".join(data))

    def close(self):
        if self.task:
            self.task.cancel()
        if self.writer:
            self.writer.close()


async def open_streams(port, tokens, on_message, at_once=100):
    """Opens a stream for each token, `at_once` at a time: (the open streams, the failures by
    reason)."""
    gate = asyncio.Semaphore(at_once)
    failures = collections.Counter()

    async def one(index, token):
        async with gate:
            stream = Stream(port, token, lambda *m: on_message(index, *m))
            try:
                await asyncio.wait_for(stream.open(), 30)
                return stream
            except Exception as error:  # noqa: BLE001 - every reason is counted and printed
                stream.close()
                failures[f"{type(error).__name__}: {error}"[:120]] += 1
                return None

    opened = await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens)))
    return [s for s in opened if s is not None], failures


def close_streams(streams):
    for stream in streams:
        stream.close()


# ---------------------------------------------------------------------------------------------
# 2. 10,000 streams on one instance


async def streams_gone(base, seconds=60):
    """Waits until the instance counts no open stream (it learns that a client went away when a
    write to it fails: within two heartbeats); how long that took, or None if it did not."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        status, _, body = await asyncio.to_thread(call, "GET", base + "/metrics")
        if status == 200 and "\ngophermart_event_streams_open 0\n" in body.decode():
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    return None


async def many_streams(accrual_base, tmp):
    customers = -(-STREAMS // PER_CUSTOMER)
    instance = Gophermart("S", accrual_base, tmp)
    streams = []
    try:
        log(f"signing up {customers} customers")
        tokens = sign_up(instance.base, [f"crowd{c}" for c in range(customers)])
        tokens_file = os.path.join(tmp, "crowd-tokens")
        with open(tokens_file, "w") as out:
            out.write("\n".join(tokens) + "\n")
        pids = {"gophermart": instance.process.pid}

        async def balance_run(label):
            window = Window(pids)
            result = await wrk(instance.base, "balance.lua", WRK_CONNECTIONS, WRK_SECONDS, [tokens_file])
            window.end()
            log(f"balance {label}: {result['rps']:.0f}/s")
            return result, window

        await wrk(instance.base, "balance.lua", WRK_CONNECTIONS, 2, [tokens_file])  # warm-up
        runs = [("without",) + await balance_run("without streams")]
        rss = [("before", rss_kb(instance.process.pid))]
        received = collections.Counter()

        def on_message(index, received_at, event, ident, data):
            received[event] += 1

        want = [t for t in tokens for _ in range(PER_CUSTOMER)][:STREAMS]
        rounds = []
        idle = None
        for round_ in range(1, ROUNDS + 1):
            log(f"round {round_} of {ROUNDS}: opening {STREAMS} streams")
            started = time.monotonic()
            streams, failures = await open_streams(instance.port, want, on_message)
            open_seconds = time.monotonic() - started
            await asyncio.sleep(2)
            rss.append((f"{round_}: open", rss_kb(instance.process.pid)))
            if idle is None:
                idle = Window(pids)
                await asyncio.sleep(5)
                idle.end()
            runs.append(("with",) + await balance_run(f"with {len(streams)} streams"))
            still_open = sum(1 for s in streams if not s.task.done())
            close_streams(streams)
            streams = []
            gone = await streams_gone(instance.base)
            rss.append((f"{round_}: closed", rss_kb(instance.process.pid)))
            runs.append(("without",) + await balance_run("without streams"))
            rounds.append({"opened": still_open, "failures": failures, "open_seconds": open_seconds,
                           "gone_seconds": gone})
        return {
            "customers": customers, "asked": len(want), "rounds": rounds, "rss": rss, "idle": idle,
            "runs": runs, "messages": dict(received), "warnings": instance.warnings(),
        }
    finally:
        close_streams(streams)
        instance.stop()


def print_many(r):
    print(f"\n2. {r['asked']:,} streams on one instance ({r['customers']:,} customers x {PER_CUSTOMER}), "
          f"opened and closed {len(r['rounds'])} times")
    for n, round_ in enumerate(r["rounds"], 1):
        failed = f"; refused or failed: {dict(round_['failures'])}" if round_["failures"] else ""
        gone = round_["gone_seconds"]
        gone = "still counted after 60 s" if gone is None else f"counted no more {gone:.1f} s after they closed"
        print(f"   round {n}: opened and open through the 'with' run: {round_['opened']:,} of {r['asked']:,} "
              f"(in {round_['open_seconds']:.1f} s){failed}; {gone}")
    rss = dict(r["rss"])
    opened = max(1, r["rounds"][0]["opened"])
    print(f"   RSS: {rss['before'] / 1024:.1f} MiB before, {rss['1: open'] / 1024:.1f} MiB with the streams open "
          f"= {(rss['1: open'] - rss['before']) / opened:.1f} KiB per stream; by round, open / once counted closed: "
          + ", ".join(f"{rss[f'{n}: open'] / 1024:.1f} / {rss[f'{n}: closed'] / 1024:.1f}"
                      for n in range(1, len(r["rounds"]) + 1)) + " MiB")
    idle = r["idle"]
    print(f"   idle with the streams open (5 s): gophermart {idle.proc_cpu['gophermart'] / idle.seconds:.3f} cores; "
          f"{idle.text()}")
    print(f"   GET /api/user/balance, wrk {WRK_CONNECTIONS} connections, {WRK_SECONDS} s (bench/wrk/balance.lua), "
          f"without and with the streams in turn:")
    for label, result, window in r["runs"]:
        lat = result["latency_us"]
        errors = sum(result["errors"].values())
        print(f"     {label:8} {result['rps']:9.0f} req/s  p50 {lat['p50'] / 1000:.2f} ms  p99 "
              f"{lat['p99'] / 1000:.2f} ms  errors {errors}   [{window.text()}]")
    rps = [result["rps"] for _, result, _ in r["runs"]]
    ratios = [rps[i] / ((rps[i - 1] + rps[i + 1]) / 2) for i in range(1, len(rps) - 1, 2)]
    print(f"   each 'with' run / the mean of the runs without on either side: "
          f"{', '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f}")
    print(f"   messages received on the streams: {r['messages']}")
    if r["warnings"]:
        print(f"   gophermart warnings: {len(r['warnings'])}, e.g. {r['warnings'][:3]}")


# ---------------------------------------------------------------------------------------------
# 1. Delivery latency


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def cursor(ident):
    """The positions an event id names: what the stream delivered through, then the later
    transactions it delivered ahead of an older one still running."""
    return [tuple(int(x) for x in part.split("-")) for part in ident.split(".")]


def beyond(later, earlier):
    """Whether cursor `later` covers everything `earlier` does, and more."""
    def covered(p):
        return p <= later[0] or any(t == p[0] and p[1] <= m for t, m in later[1:])
    return later != earlier and all(covered(p) for p in earlier)


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]


def analyse(messages, stored, stream_on, acknowledged=None):
    """What the streams received (`messages`: (customer, time, event, id, data)) against the
    uploads stored (`stored`: number -> (customer, instance uploaded to, uploaded_at, commit
    time or None)), and,
    for `acknowledged` ({number: when its 202 came}), the time from the 202 to the event."""
    new_events = collections.defaultdict(list)  # number -> [(customer, latency)]
    statuses = collections.Counter()
    out_of_order = 0
    ahead = 0  # the most transactions an id listed as delivered ahead
    last_position = {}
    for customer, at, event, ident, data in messages:
        if ident:
            pos = cursor(ident)
            ahead = max(ahead, len(pos) - 1)
            if customer in last_position and not beyond(pos, last_position[customer]):
                out_of_order += 1
            last_position[customer] = pos
        if event != "order":
            statuses[event] += 1
            continue
        body = json.loads(data)
        statuses[f"order {body['status']}"] += 1
        if body["status"] == "NEW":
            new_events[body["number"]].append((customer, at, parse_time(body["uploaded_at"])))
    split = {"same": [], "other": []}  # from the commit (else from uploaded_at)
    from_upload = []  # from uploaded_at, both instances
    by_upload = []  # (uploaded_at, latency)
    from_ack = []
    # Events whose uploaded_at is not the database's, truncated to the second.
    other_time = 0
    missing, duplicated, wrong_stream = [], [], []
    for number, (customer, uploaded_to, uploaded_at, committed_at) in stored.items():
        got = new_events.get(number, [])
        if not got:
            missing.append(number)
            continue
        if len(got) > 1:
            duplicated.append(number)
        for c, at, said in got:
            if said != float(int(uploaded_at)):
                other_time += 1
            if c != customer:
                wrong_stream.append(number)
                continue
            kind = "same" if uploaded_to == stream_on[customer] else "other"
            since = uploaded_at if committed_at is None else committed_at
            split[kind].append(at - since)
            from_upload.append(at - uploaded_at)
            by_upload.append((uploaded_at, at - since))
            if acknowledged and number in acknowledged:
                from_ack.append(at - acknowledged[number])
    return {
        "stored": len(stored), "split": split, "missing": missing, "duplicated": duplicated,
        "wrong_stream": wrong_stream, "unknown": [n for n in new_events if n not in stored],
        "statuses": statuses, "out_of_order": out_of_order, "ahead": ahead, "from_ack": from_ack,
        "other_time": other_time, "by_upload": by_upload, "from_upload": from_upload,
        "from_commit": any(c is not None for *_, c in stored.values()),
    }


def stored_orders(logins, prefixes):
    """The orders stored for `logins` whose numbers begin with one of `prefixes` ({prefix:
    instance}): number -> (customer, instance uploaded to, uploaded_at as a Unix time, the
    upload's commit time or None). The database's uploaded_at, to the microsecond: the API's
    (the events' too) is whole seconds; the commit time when the server keeps them
    (track_commit_timestamp, which `make events-experiment` turns on)."""
    index = {login: c for c, login in enumerate(logins)}
    kept = psql(DB, "SHOW track_commit_timestamp") == ["on"]
    committed = ("extract(epoch FROM pg_xact_commit_timestamp((e.tx::text::int8 % 4294967296)::text::xid))::float8"
                 if kept else "NULL")
    rows = psql(DB, f"SELECT o.number, u.login, extract(epoch FROM o.uploaded_at)::float8, "
                    f"coalesce({committed}::text, '-') FROM orders o JOIN users u ON u.id = o.user_id "
                    "LEFT JOIN events e ON e.order_number = o.number AND e.status = 'NEW'")
    stored = {}
    for row in rows:
        number, login, uploaded_at, committed_at = row.split("|")
        if login in index and number[:2] in prefixes:
            stored[number] = (index[login], prefixes[number[:2]], float(uploaded_at),
                              None if committed_at == "-" else float(committed_at))
    return stored


async def sample_transactions(samples, stop):
    """Every 0.25 s until `stop`: the age of the oldest transaction holding a transaction id
    (events committed after it are delivered ahead of it), and how many hold one."""
    sql = ("SELECT coalesce(extract(epoch FROM max(now() - xact_start)), 0)::float8 || ' ' || count(*) || ' ' || "
           "coalesce((SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 60) FROM pg_stat_activity "
           "WHERE backend_xid IS NOT NULL ORDER BY xact_start LIMIT 1), '-') "
           "FROM pg_stat_activity WHERE backend_xid IS NOT NULL")
    while not stop.is_set():
        process = await asyncio.create_subprocess_exec("psql", DB, "-XtA", "-c", sql, stdout=subprocess.PIPE,
                                                       stderr=subprocess.DEVNULL, preexec_fn=child_setup)
        out, _ = await process.communicate()
        parts = out.decode().strip().split(" ", 2)
        if len(parts) == 3:
            samples.append((float(parts[0]), int(parts[1]), parts[2]))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass


async def wait_for_events(seen, stored, seconds=15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(n in seen for n in stored):
        await asyncio.sleep(0.5)
    # Anything late or twice.
    await asyncio.sleep(1.5)


async def latency(accrual_base, tmp):
    instances = {}
    streams = []
    try:
        instances["A"] = Gophermart("A", accrual_base, tmp)
        instances["B"] = Gophermart("B", accrual_base, tmp)
        logins = [f"watcher{c}" for c in range(LATENCY_CUSTOMERS)]
        tokens = sign_up(instances["A"].base, logins)
        tokens_file = os.path.join(tmp, "watcher-tokens")
        with open(tokens_file, "w") as out:
            out.write("\n".join(tokens) + "\n")
        half = LATENCY_CUSTOMERS // 2
        # Customer c streams on A for c < half, on B otherwise.
        stream_on = ["A" if c < half else "B" for c in range(LATENCY_CUSTOMERS)]
        received = []  # (customer, time, event, id, data)
        seen = set()  # the numbers of the `order` events received

        def on_message(index, received_at, event, ident, data):
            received.append((index, received_at, event, ident, data))
            if event == "order":
                seen.add(json.loads(data).get("number"))

        a_streams, a_fail = await open_streams(instances["A"].port, tokens[:half], on_message)
        b_streams, b_fail = await open_streams(instances["B"].port, tokens[half:],
                                               lambda i, *m: on_message(half + i, *m))
        streams = a_streams + b_streams
        if a_fail or b_fail or len(streams) != LATENCY_CUSTOMERS:
            raise RuntimeError(f"streams not opened: {dict(a_fail)} {dict(b_fail)}")
        received.clear()

        # Paced: one upload at a time, every 50 ms, alternately to A and B.
        log(f"{len(streams)} streams open; {PACED} paced uploads")
        paced_prefixes = {"51": "A", "52": "B"}
        window = Window({name: i.process.pid for name, i in instances.items()})
        acknowledged = {}
        for k in range(PACED):
            name = "A" if k % 2 == 0 else "B"
            number = luhn(f"{'51' if name == 'A' else '52'}{k:09d}")
            status, _, _ = await asyncio.to_thread(
                call, "POST", instances[name].base + "/api/user/orders", number,
                tokens[(k * 7) % LATENCY_CUSTOMERS], "text/plain")
            if status != 202:
                raise RuntimeError(f"paced upload: {status}")
            acknowledged[number] = time.time()
            await asyncio.sleep(0.05)
        window.end()
        stored = stored_orders(logins, paced_prefixes)
        await wait_for_events(seen, stored)
        paced = analyse(list(received), stored, stream_on, acknowledged)
        paced["window"] = window
        received.clear()

        log(f"uploading with wrk for {UPLOAD_SECONDS} s")
        pids = {name: i.process.pid for name, i in instances.items()}
        window = Window(pids)
        rusage = resource.getrusage(resource.RUSAGE_SELF)
        samples, stop = [], asyncio.Event()
        sampler = asyncio.create_task(sample_transactions(samples, stop))
        try:
            results = await asyncio.gather(*(
                wrk(instances[name].base, "upload.lua", UPLOAD_CONNECTIONS, UPLOAD_SECONDS,
                    [tokens_file, PREFIXES[name]]) for name in ("A", "B")))
        finally:
            stop.set()
            await sampler
        window.end()
        own = resource.getrusage(resource.RUSAGE_SELF)
        reader_cpu = (own.ru_utime + own.ru_stime - rusage.ru_utime - rusage.ru_stime) / window.seconds
        stored = stored_orders(logins, {prefix: name for name, prefix in PREFIXES.items()})
        await wait_for_events(seen, stored)
        streams_alive = sum(1 for s in streams if not s.task.done())
        loaded = analyse(list(received), stored, stream_on)
        close_streams(streams)
        streams = []
        loaded.update({
            "wrk": dict(zip(("A", "B"), results)), "window": window, "reader_cpu": reader_cpu,
            "streams_alive": streams_alive, "transactions": samples,
        })
        return {"paced": paced, "loaded": loaded,
                "warnings": {name: i.warnings() for name, i in instances.items()}}
    finally:
        close_streams(streams)
        for instance in instances.values():
            instance.stop()


def print_split(r):
    for kind, label in (("same", "same instance "), ("other", "other instance")):
        values = r["split"][kind]
        if values:
            ms = [v * 1000 for v in values]
            print(f"     {label}: n={len(ms):6,}  p50 {percentile(ms, 50):7.1f} ms  p90 {percentile(ms, 90):7.1f} ms  "
                  f"p99 {percentile(ms, 99):7.1f} ms  max {max(ms):7.1f} ms")
        else:
            print(f"     {label}: none")
    if r["from_commit"] and r["from_upload"]:
        ms = [v * 1000 for v in r["from_upload"]]
        print(f"     from uploaded_at instead, both instances: p50 {percentile(ms, 50):.1f} ms  "
              f"p90 {percentile(ms, 90):.1f} ms  p99 {percentile(ms, 99):.1f} ms  max {max(ms):.1f} ms")
    if r["from_ack"]:
        ms = [v * 1000 for v in r["from_ack"]]
        print(f"     from the 202 (client) to the event, both instances: p50 {percentile(ms, 50):.1f} ms  "
              f"p90 {percentile(ms, 90):.1f} ms  p99 {percentile(ms, 99):.1f} ms  max {max(ms):.1f} ms")
    ok = not (r["missing"] or r["duplicated"] or r["wrong_stream"])
    print(f"     every stored upload's NEW event exactly once on its customer's stream: {'yes' if ok else 'NO'} "
          f"(stored {r['stored']:,}; missing {len(r['missing'])}, duplicated {len(r['duplicated'])}, on another "
          f"customer's stream {len(r['wrong_stream'])}, NEW events of numbers not stored {len(r['unknown'])})")
    if r["missing"] or r["duplicated"]:
        print(f"     e.g. missing {r['missing'][:5]}, duplicated {r['duplicated'][:5]}")
    print(f"     messages: {dict(r['statuses'])}; ids not covering more than the one before on a stream: "
          f"{r['out_of_order']}; most transactions an id listed as delivered ahead: {r['ahead']}; "
          f"uploaded_at not the database's (to the second): {r['other_time']}")


def print_latency(result):
    print(f"\n1. Delivery latency: instances A and B on one database, {LATENCY_CUSTOMERS} customers with one "
          f"stream each ({LATENCY_CUSTOMERS // 2} on A, {LATENCY_CUSTOMERS // 2} on B); latency = received - "
          f"the upload's commit (pg_xact_commit_timestamp; without track_commit_timestamp, uploaded_at, set "
          f"just before the insert) of each `order` event with status NEW")
    r = result["paced"]
    print(f"   a. paced, no other load: {PACED} uploads one at a time every 50 ms, alternately to A and B "
          f"[{r['window'].text()}]")
    print_split(r)
    r = result["loaded"]
    print(f"   b. under load: wrk bench/wrk/upload.lua (make bench's upload script), {UPLOAD_CONNECTIONS} "
          f"connections on each instance ({2 * UPLOAD_CONNECTIONS} in all), {UPLOAD_SECONDS} s, each upload for "
          f"one of the {LATENCY_CUSTOMERS} customers at random")
    total = 0.0
    for name, w in r["wrk"].items():
        lat = w["latency_us"]
        total += w["rps"]
        errors = {k: v for k, v in w["errors"].items() if v}
        print(f"     uploads to {name}: {w['requests']:,} answered, {w['rps']:.0f}/s, p50 {lat['p50'] / 1000:.2f} ms, "
              f"p99 {lat['p99'] / 1000:.2f} ms, errors {errors or 'none'}")
    acknowledged = sum(x["requests"] - sum(x["errors"].values()) for x in r["wrk"].values())
    print(f"     uploads/s, both instances: {total:.0f}; acknowledged (2xx) {acknowledged:,}, stored {r['stored']:,}")
    print(f"     [{r['window'].text()}; the stream reader (this script) {r['reader_cpu']:.2f} cores]")
    print_split(r)
    print(f"     streams still open at the end: {r['streams_alive']} of {LATENCY_CUSTOMERS}")
    if r["by_upload"]:
        first = min(u for u, _ in r["by_upload"])
        quarters = [[] for _ in range(4)]
        for u, seconds in r["by_upload"]:
            quarters[min(3, int((u - first) / UPLOAD_SECONDS * 4))].append(seconds * 1000)
        print("     latency p50 / p99 by quarter of the load (when uploaded): " + ", ".join(
            f"{percentile(q, 50):.0f} / {percentile(q, 99):.0f} ms" for q in quarters if q))
    samples = r["transactions"]
    if samples:
        ages = [a * 1000 for a, _, _ in samples]
        counts = [c for _, c, _ in samples]
        oldest = max(samples, key=lambda s: s[0])
        print(f"     transactions holding an xid (pg_stat_activity, {len(samples)} samples): the oldest's age "
              f"p50 {percentile(ages, 50):.1f} ms, max {max(ages):.1f} ms ({oldest[2]!r}); "
              f"how many at once p50 {percentile(counts, 50)}, max {max(counts)}")
    for name, warnings in result["warnings"].items():
        if warnings:
            print(f"   gophermart {name} warnings: {len(warnings)}, e.g. {warnings[:3]}")


# ---------------------------------------------------------------------------------------------


async def main():
    if not DB:
        sys.exit("events-experiment: DATABASE_URI is not set (run it through scripts/with-postgres.sh)")
    for tool in (os.path.join(BIN, "gophermart"), os.path.join(BIN, "accrual")):
        if not os.access(tool, os.X_OK):
            sys.exit(f"events-experiment: {tool} missing: cargo build --release --bins")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = STREAMS + 1000
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):
            pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    print(f"events-experiment: {command} (through scripts/with-postgres.sh)")
    print(f"machine: {os.cpu_count()} cores (nproc), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"at the start; open files limit {fds} (this script and the servers it starts)")
    print(f"binaries: {BIN}/gophermart, modified "
          f"{datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(BIN, 'gophermart')), datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    with tempfile.TemporaryDirectory(prefix="events-experiment-") as tmp:
        accrual, accrual_base = start_accrual(BIN)
        try:
            reader_nice = raise_reader_priority()
            print(f"the stream reader (this script) runs at nice {reader_nice}, the servers, wrk and psql at "
                  f"{CALLER_NICE} (EVENTS_READER_PRIORITY={READER_PRIORITY})")
            many = await many_streams(accrual_base, tmp)
            delivery = await latency(accrual_base, tmp)
        finally:
            if accrual.poll() is None:
                accrual.terminate()
                accrual.wait()
    print_latency(delivery)
    print_many(many)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())
