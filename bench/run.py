#!/usr/bin/env python3
"""Gophermart's benchmark: drives the release build against a throwaway PostgreSQL and writes
target/bench/results.json, results.md and throughput.svg.

Run it through `make bench` (bench/bench.sh), which builds the binaries, provides the database
(scripts/with-postgres.sh exports DATABASE_URI) and installs wrk when it is missing.

Phases, in order (see docs/benchmarks.md for what each figure means):
  1. start-up: time from spawning gophermart to the first 200 of /readyz, on an empty database
     (migrations applied by that start) and on a migrated one; RSS when idle;
  2. setup: users signed up through the API (bcrypt cost 4, for speed), accounts funded and
     ten processed orders per "read" user inserted with SQL;
  3. endpoints: wrk against upload, balance, orders list and withdraw at each concurrency;
  3b. baseline (only with BENCH_BASELINE_BIN_DIR): a "before" build of gophermart measured
     beside the current one on the same database, users and accrual system, the two taking
     turns: the same endpoints at BENCH_BASELINE_LEVELS, ready time, and the login storm;
  4. ceilings: gophermart stopped, pgbench runs the SQL of each endpoint at the same
     concurrencies (the baseline's included) on the same database (bench/pgbench/*.sql); at 64
     clients, also with the pool's SELECT 1, and the upload with its old pg_notify;
  5. mixed customer workload (crates/loadgen);
  6. accrual pipeline: upload -> PROCESSED latency with an accrual system that answers at once;
     then the drain: a backlog of BENCH_DRAIN_COUNT orders worked off by one fresh instance,
     against the upload rate at 64 clients of the same run;
  7. login storm: balance latency while sign-ins (bcrypt cost 12) run flat out;
  7b. frozen worker: one HTTP worker thread frozen for a second while balance reads run, to see
     that only the requests of that worker wait (needs cgroup v1's freezer, as root);
  7c. flood: 16 quiet customers' reads alone and while one customer floods the same reads over
     64 connections, in turns (crates/loadgen, `loadgen flood`);
  8. accrual rate limit: orders completed per minute under a limit of N per minute, and 429s.

Settings (environment): BENCH_DURATION (s per point, 5), BENCH_WARMUP (s, 1), BENCH_LEVELS
("1,16,64,256"), BENCH_RATE_LIMIT (N per minute, 120), BENCH_RATE_SECONDS (180),
BENCH_RATE_INSTANCES (3, sharing the limit), BENCH_STORM_SECONDS (10), BENCH_MIXED_SECONDS (10), BENCH_PIPELINE_RATE (per s, 50),
BENCH_PIPELINE_COUNT (500), BENCH_FLOOD_SECONDS (s per window, 10), BENCH_FLOOD_ROUNDS (pairs of
windows, alone then flood, 2), BENCH_USERS (per set, 1000), BENCH_BIN_DIR (target/release),
BENCH_OUT (target/bench), BENCH_GOPHERMART_FLAGS (extra flags for every gophermart, the
baseline's included), BENCH_SKIP (comma-separated phases to skip: grid, baseline, ceiling,
mixed, pipeline, storm, freeze, flood, drain, ratelimit, pooler; storm leaves out the baseline's
storms too),
BENCH_DRAIN_COUNT (the drain phase's backlog, 50000).
Before and after: BENCH_BASELINE_BIN_DIR (the baseline build's binaries; only its gophermart
is used), BENCH_BASELINE_LABEL (its name in the report; default the folder),
BENCH_BASELINE_LEVELS ("64"), BENCH_BASELINE_ROUNDS (runs per build and point, 2).
"""

import atexit
import datetime
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
BIN = os.environ.get("BENCH_BIN_DIR", os.path.join(ROOT, "target", "release"))
OUT = os.path.abspath(os.environ.get("BENCH_OUT", os.path.join(ROOT, "target", "bench")))
DB = os.environ.get("DATABASE_URI")

DURATION = float(os.environ.get("BENCH_DURATION", "5"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "1"))
LEVELS = [int(x) for x in os.environ.get("BENCH_LEVELS", "1,16,64,256").split(",")]
RATE_N = int(os.environ.get("BENCH_RATE_LIMIT", "120"))
RATE_SECONDS = float(os.environ.get("BENCH_RATE_SECONDS", "180"))
RATE_INSTANCES = int(os.environ.get("BENCH_RATE_INSTANCES", "3"))
STORM_SECONDS = float(os.environ.get("BENCH_STORM_SECONDS", "10"))
MIXED_SECONDS = float(os.environ.get("BENCH_MIXED_SECONDS", "10"))
MIXED_CLIENTS = int(os.environ.get("BENCH_MIXED_CLIENTS", "64"))
PIPELINE_RATE = float(os.environ.get("BENCH_PIPELINE_RATE", "50"))
PIPELINE_COUNT = int(os.environ.get("BENCH_PIPELINE_COUNT", "500"))
DRAIN_COUNT = int(os.environ.get("BENCH_DRAIN_COUNT", "50000"))
USERS = int(os.environ.get("BENCH_USERS", "1000"))
SKIP = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))
# The "before" build measured beside the current one (phase "baseline"), when given.
BASELINE_BIN = os.environ.get("BENCH_BASELINE_BIN_DIR") or None
BASELINE_LABEL = os.environ.get("BENCH_BASELINE_LABEL") or BASELINE_BIN
BASELINE_LEVELS = [int(x) for x in os.environ.get("BENCH_BASELINE_LEVELS", "64").split(",")]
BASELINE_ROUNDS = int(os.environ.get("BENCH_BASELINE_ROUNDS", "2"))
BASELINE = BASELINE_BIN is not None and "baseline" not in SKIP
# Extra flags for every gophermart started (experiments: "--http-workers 1", ...).
EXTRA_FLAGS = os.environ.get("BENCH_GOPHERMART_FLAGS", "").split()
# Phase "pooler": every endpoint direct with prepared statements, direct with unnamed ones, and
# through PgBouncer (transaction pooling, scripts/with-pgbouncer.sh) with unnamed ones.
POOLER_DB = os.environ.get("DATABASE_POOLER_URI")
POOLER_LEVELS = [int(x) for x in os.environ.get("BENCH_POOLER_LEVELS", "16,64").split(",")]
POOLER_ROUNDS = int(os.environ.get("BENCH_POOLER_ROUNDS", "2"))
POOLER_PREFIXES = {"upload": "9", "withdraw": "1"}
JWT_SECRET = "gophermart-benchmark-secret"
STORM_USERS = 16
STORM_LOGIN_CLIENTS = 64
STORM_BALANCE_CLIENTS = 16
STORM_HASH_SAMPLES = 7
# Phase "freeze": balance readers, and how long one HTTP worker thread is frozen among them.
FREEZE_CLIENTS = 16
FREEZE_SECONDS = 1.0
FREEZER = "/sys/fs/cgroup/freezer"
# Phase "flood": quiet customers (read users, one connection each) alone and while one other
# read user floods over FLOOD_CONNECTIONS, in windows of FLOOD_SECONDS, FLOOD_ROUNDS pairs.
FLOOD_SECONDS = float(os.environ.get("BENCH_FLOOD_SECONDS", "10"))
FLOOD_ROUNDS = int(os.environ.get("BENCH_FLOOD_ROUNDS", "2"))
FLOOD_QUIET = 16
FLOOD_CONNECTIONS = 64
# The per-customer request limit of the flood phase's second run (requests a second, and burst).
FLOOD_LIMIT = int(os.environ.get("BENCH_FLOOD_LIMIT", "1500"))

# The endpoints of the grid: wrk script, tokens set, pgbench script.
ENDPOINTS = [
    ("upload", "POST /api/user/orders", "upload.lua", "write"),
    ("balance", "GET /api/user/balance", "balance.lua", "read"),
    ("orders", "GET /api/user/orders", "orders.lua", "read"),
    ("withdraw", "POST /api/user/balance/withdraw", "withdraw.lua", "write"),
]
# Order-number prefixes (crates/loadgen and bench/wrk/common.lua append a stream digit, eight
# digits and the check digit). Fixture orders have 11 digits, pgbench's 15. The grid's and the
# baseline phase's upload and withdraw numbers: the prefix, a tag of the point, then the run
# (see endpoint_point).
GRID_PREFIXES = {"upload": "4", "withdraw": "5"}
BASELINE_PREFIXES = {"upload": "2", "withdraw": "3"}
MIXED_PREFIX = "6"
PIPELINE_PREFIX = "7"
RATE_PREFIX = "8"
DRAIN_PREFIX = "9"


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def find_pg_tool(name):
    found = shutil.which(name)
    if found:
        return found
    dirs = sorted(
        (d for d in os.listdir("/usr/lib/postgresql") if d.replace(".", "").isdigit()),
        key=lambda v: [int(p) for p in v.split(".")],
        reverse=True,
    ) if os.path.isdir("/usr/lib/postgresql") else []
    for d in dirs:
        path = os.path.join("/usr/lib/postgresql", d, "bin", name)
        if os.access(path, os.X_OK):
            return path
    sys.exit(f"bench: {name} not found (install the postgresql package)")


PSQL = find_pg_tool("psql")
PGBENCH = find_pg_tool("pgbench")


def psql_script(sql):
    subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", DB, "-f", "-"], input=sql,
                   check=True, capture_output=True, text=True)


def luhn(payload):
    """payload followed by its Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return payload + str((10 - total % 10) % 10)


def psql(sql):
    out = subprocess.run(
        [PSQL, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", DB, "-c", sql],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


# ---------------------------------------------------------------------------------------------
# Processes and their resources

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def postgres_cpu_seconds():
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        name = data[data.find("(") + 1:data.rfind(")")]
        if name == "postgres":
            # Own time, and that of exited children the postmaster reaped (pgbench's backends
            # end with the run).
            fields = data.rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / CLK_TCK
    return total


def machine_busy_seconds():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    values = [int(x) for x in parts]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


def rss_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class CpuMeter:
    """CPU seconds spent by gophermart, PostgreSQL, the load tool and the whole machine."""

    def __init__(self, gophermart=None, accrual=None):
        self.pids = {"gophermart": gophermart, "accrual": accrual}

    def start(self, tool_pid=None):
        self.t0 = time.monotonic()
        self.before = self._sample()

    def _sample(self):
        sample = {name: proc_cpu_seconds(pid) for name, pid in self.pids.items() if pid}
        sample["postgres"] = postgres_cpu_seconds()
        sample["machine"] = machine_busy_seconds()
        # The load tool is a child that has exited (and been waited for) by stop().
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        sample["load tool"] = children.ru_utime + children.ru_stime
        return sample

    def stop(self):
        after = self._sample()
        wall = time.monotonic() - self.t0
        used = {k: round(after[k] - self.before.get(k, 0.0), 2) for k in after}
        used["wall"] = round(wall, 2)
        return used


# The machine is shared: a point during which other processes used more than this many cores
# is measured again (at most MAX_RETRIES times in the whole run); the least disturbed is kept.
OTHER_CORES_LIMIT = float(os.environ.get("BENCH_OTHER_CORES_LIMIT", "0.25"))
MAX_RETRIES = int(os.environ.get("BENCH_MAX_RETRIES", "20"))
retries_left = [MAX_RETRIES]


def other_cores(result):
    cpu = result.get("cpu_seconds")
    if not cpu or not cpu.get("wall"):
        return 0.0
    known = sum(cpu.get(k, 0.0) for k in ("gophermart", "accrual", "postgres", "load tool"))
    return max(0.0, cpu["machine"] - known) / cpu["wall"]


def measured(run):
    """run() until a result is not disturbed by other processes, within the retry budget."""
    best = None
    attempts = 0
    while True:
        attempts += 1
        result = run()
        result["other_cores"] = round(other_cores(result), 3)
        if best is None or result["other_cores"] < best["other_cores"]:
            best = result
        if best["other_cores"] <= OTHER_CORES_LIMIT or retries_left[0] <= 0 or attempts >= 3:
            break
        retries_left[0] -= 1
        log(f"  other processes used {result['other_cores']:.2f} cores: measuring again")
    best["attempts"] = attempts
    return best


def wait_http_ok(url, timeout, interval=0.002):
    """Polls url until it answers 200; returns the seconds it took, or None."""
    host, port, path = parse_url(url)
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                head = s.recv(64)
                if head.startswith(b"HTTP/1.1 200"):
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(interval)
    return None


def parse_url(url):
    m = re.match(r"http://([^:/]+):(\d+)(/.*)?$", url)
    return m.group(1), int(m.group(2)), m.group(3) or "/"


# Every service process started, so that none outlives the benchmark whatever ends it.
STARTED = []


def stop_all():
    for proc in STARTED:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


atexit.register(stop_all)


class Accrual:
    def __init__(self, rate_limit=0, log_name="accrual"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(OUT, f"{log_name}.log"), "w")
        args = [os.path.join(BIN, "accrual"), "-a", f"127.0.0.1:{self.port}",
                "--processing-delay-ms", "0", "--rate-limit", str(rate_limit)]
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, env=env)
        STARTED.append(self.proc)
        if wait_http_ok(self.url + "/healthz", 30) is None:
            sys.exit("bench: the accrual system did not start")

    def stats(self):
        with urllib.request.urlopen(self.url + "/api/stats") as r:
            return json.load(r)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Gophermart:
    """A gophermart started from bin_dir (the current build's, or the baseline's), ready."""

    def __init__(self, accrual_url, bcrypt_cost=12, log_name="gophermart", extra=(), bin_dir=BIN,
                 db=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(OUT, f"{log_name}.log"), "a")
        self.args = [os.path.join(bin_dir, "gophermart"), "-a", f"127.0.0.1:{self.port}",
                     "-d", db or DB, "-r", accrual_url, "--jwt-secret", JWT_SECRET,
                     "--bcrypt-cost", str(bcrypt_cost), *EXTRA_FLAGS, *extra]
        started = time.monotonic()
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log)
        STARTED.append(self.proc)
        ready = wait_http_ok(self.url + "/readyz", 60)
        if ready is None:
            sys.exit(f"bench: gophermart did not become ready (see {self.log.name})")
        self.ready_seconds = time.monotonic() - started

    def rss_kb(self):
        return rss_kb(self.proc.pid, "VmRSS")

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


def loadgen(*args, capture=True):
    cmd = [os.path.join(BIN, "loadgen"), *map(str, args)]
    out = subprocess.run(cmd, check=True, capture_output=capture, text=True)
    if capture:
        if out.stderr.strip():
            log(out.stderr.strip())
        return json.loads(out.stdout) if out.stdout.strip() else None
    return None


# ---------------------------------------------------------------------------------------------
# Load tools

def run_wrk(url, script, clients, seconds, args, cpu=None):
    threads = 1 if clients == 1 else 2
    # wrk takes whole seconds.
    cmd = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--timeout", "30s",
           "-s", os.path.join(BENCH, "wrk", script), url, "--", *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if cpu:
        cpu.start(proc.pid)
        # The tool's own CPU time is read at the end from its rusage (below).
    stdout, stderr = proc.communicate()
    used = cpu.stop() if cpu else None
    if proc.returncode != 0:
        sys.exit(f"bench: wrk failed: {stdout}\n{stderr}")
    line = next((l for l in stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        sys.exit(f"bench: no figures from wrk: {stdout} {stderr}")
    raw = json.loads(line[len("WRKJSON "):])
    seconds_run = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values())
    result = {
        "clients": clients,
        "requests": raw["requests"],
        "seconds": round(seconds_run, 3),
        "rps": raw["requests"] / seconds_run,
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
        "p999_ms": raw["latency_us"]["p999"] / 1000,
        "max_ms": raw["latency_us"]["max"] / 1000,
        "errors": errors,
        "error_detail": raw["errors"],
        "generated_per_thread": raw["generated_per_thread"],
    }
    if used:
        result["cpu_seconds"] = used
    return result


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def run_pgbench(script_path, clients, seconds, variables, sample_rate=None, cpu=None,
                mode="prepared"):
    workdir = tempfile.mkdtemp(prefix="pgbench-", dir=OUT)
    cmd = [PGBENCH, "-n", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)),
           "-T", str(int(round(seconds))), "-f", script_path, "-l", "--log-prefix",
           os.path.join(workdir, "tx")]
    if sample_rate is None:
        # Enough samples for p99.9 without writing a line per transaction of a fast script.
        sample_rate = 0.2
    cmd += ["--sampling-rate", str(sample_rate)]
    for k, v in variables.items():
        cmd += ["-D", f"{k}={v}"]
    cmd.append(DB)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=workdir)
    if cpu:
        cpu.start(proc.pid)
    stdout, stderr = proc.communicate()
    used = cpu.stop() if cpu else None
    if proc.returncode != 0:
        sys.exit(f"bench: pgbench failed: {stdout}\n{stderr}")
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", stdout).group(1))
    processed = int(re.search(r"number of transactions actually processed: (\d+)", stdout).group(1))
    failed_m = re.search(r"number of failed transactions: (\d+)", stdout)
    latencies = []
    for name in os.listdir(workdir):
        with open(os.path.join(workdir, name)) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    latencies.append(int(parts[2]))
    shutil.rmtree(workdir, ignore_errors=True)
    latencies.sort()
    result = {
        "clients": clients,
        "requests": processed,
        "rps": tps,
        "p50_ms": percentile(latencies, 0.5) / 1000,
        "p99_ms": percentile(latencies, 0.99) / 1000,
        "p999_ms": percentile(latencies, 0.999) / 1000,
        "errors": int(failed_m.group(1)) if failed_m else 0,
        "samples": len(latencies),
    }
    if used:
        result["cpu_seconds"] = used
    return result


# ---------------------------------------------------------------------------------------------
# Phases

def machine_info():
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cores": os.cpu_count(), "kernel": platform.release()}
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    info["load_average_at_start"] = os.getloadavg()
    info["postgresql"] = psql("SHOW server_version")
    info["postgresql_settings"] = {
        k: psql(f"SHOW {k}") for k in
        ["max_connections", "shared_buffers", "fsync", "synchronous_commit", "full_page_writes"]}
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    info["wrk"] = (wrk_version.stdout or wrk_version.stderr).split("[")[0].strip()
    try:
        info["commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        if dirty:
            info["commit"] += " (with uncommitted changes)"
    except OSError:
        pass
    return info


def setup_users(gm):
    tokens = {}
    for group in ("read", "write"):
        path = os.path.join(OUT, f"tokens-{group}.txt")
        loadgen("register", "--base", gm.url, "--prefix", f"{group}-", "--count", USERS,
                "--concurrency", 8, "--out", path)
        tokens[group] = path
    ids = {}
    for group in ("read", "write"):
        lo, hi, n = psql(f"SELECT min(id), max(id), count(*) FROM users WHERE login LIKE '{group}-%'").split("|")
        if int(hi) - int(lo) + 1 != int(n):
            log(f"warning: the {group} users' ids are not contiguous")
        ids[group] = (int(lo), int(hi))
    # Funds for every withdrawal of the run, and ten processed orders per read user (11 digits,
    # Luhn-valid as the service checks what it reads back, PROCESSED, credited) so that the
    # orders list has something to show.
    psql("UPDATE accounts SET balance = 1000000000")
    lo, hi = ids["read"]
    rows = []
    for u in range(lo, hi + 1):
        for i in range(10):
            number = luhn("1" + f"{u * 10 + i:09d}")
            rows.append(f"('{number}', {u}, 'PROCESSED', {5 + i}.00, now() - interval '{i} hours', now())")
    psql_script("INSERT INTO orders (number, user_id, status, accrual, uploaded_at, updated_at) VALUES\n"
                + ",\n".join(rows) + ";")
    psql("VACUUM ANALYZE")
    return tokens, ids


# The highest upload rate seen so far (per second), to size the numbers registered in the
# accrual system before each upload run.
upload_rate_guess = [15000.0]


def endpoint_run(gm, accrual, tokens, endpoint, clients, seconds, prefix, cpu=None):
    """One wrk run of an endpoint of ENDPOINTS against gm. prefix: the order numbers' prefix of
    this run (upload and withdraw), unique to it."""
    name, _label, script, group = endpoint
    threads = 1 if clients == 1 else 2
    extra = []
    if name == "upload":
        # Register in the accrual system every number this run may upload (1.5x a generous
        # guess), so the worker finds each order at once, as in production.
        per_thread = int(upload_rate_guess[0] * 1.5 * seconds / threads) + 1000
        loadgen("prereg", "--accrual", accrual.url, "--prefix", prefix,
                "--streams", threads, "--count", per_thread)
        extra = [prefix]
    elif name == "withdraw":
        extra = [prefix]
    result = run_wrk(gm.url, script, clients, seconds, [tokens[group], *extra], cpu)
    if name == "upload":
        # How far the accrual worker, which shares the cores, kept up during the run: this
        # run's orders credited by its end, against those uploaded (upload.lua's numbers: the
        # prefix, a stream digit, eight digits, the check digit).
        counts = psql(f"""SELECT count(*), count(*) FILTER (WHERE status = 'PROCESSED')
                          FROM orders WHERE number LIKE '{prefix}%'
                          AND length(number) = {len(prefix) + 10}""").split("|")
        result["uploaded"], result["credited_by_end"] = int(counts[0]), int(counts[1])
        generated = sum(result["generated_per_thread"])
        result["uploads_not_registered_in_accrual"] = max(
            0, sum(max(0, g - per_thread) for g in result["generated_per_thread"]))
        upload_rate_guess[0] = max(upload_rate_guess[0], generated / seconds)
    return result


def endpoint_point(gm, accrual, tokens, endpoint, clients, tag, prefixes, retry=True):
    """One point: a warm-up run, then the measured one, with the CPU of every process.

    With retry, a disturbed point is measured again (measured()), except uploads: an upload run
    consumes its pre-registered numbers. Order numbers: prefixes[endpoint], the tag (unique to
    the point), then 0 for the warm-up and the attempt (1, 2, ...) for the measured run.
    """
    name = endpoint[0]
    prefix = f"{prefixes.get(name, '')}{tag}"
    if WARMUP > 0:
        endpoint_run(gm, accrual, tokens, endpoint, clients, WARMUP, f"{prefix}0")
    cpu = CpuMeter(gm.proc.pid, accrual.proc.pid)
    attempt = [0]

    def run_point():
        attempt[0] += 1
        return endpoint_run(gm, accrual, tokens, endpoint, clients, DURATION,
                            f"{prefix}{attempt[0]}", cpu)

    if retry and name != "upload":
        result = measured(run_point)
    else:
        result = run_point()
        result["other_cores"] = round(other_cores(result), 3)
    result["peak_rss_kb_so_far"] = gm.peak_rss_kb()
    return result


def log_point(title, result):
    log(f"{title} {result['rps']:8.0f} req/s  p50 {result['p50_ms']:.2f} ms  "
        f"p99 {result['p99_ms']:.2f} ms  p99.9 {result['p999_ms']:.2f} ms  errors {result['errors']}")


def grid(gm, accrual, tokens, results):
    for li, clients in enumerate(LEVELS):
        for endpoint in ENDPOINTS:
            result = endpoint_point(gm, accrual, tokens, endpoint, clients, li, GRID_PREFIXES)
            results["grid"].setdefault(endpoint[0], []).append(result)
            log_point(f"{endpoint[0]:8} c={clients:<3}", result)
    # Let the accrual worker finish the last uploads before the next phase.
    wait_queue_empty(60)


def mean_of_runs(runs):
    """One figure per build from its runs of a point: throughput and latency percentiles are the
    means of the runs', requests, errors and CPU seconds their sums, other load the highest."""
    kept = {"clients": runs[0]["clients"], "runs": len(runs)}
    for key in ("rps", "p50_ms", "p99_ms", "p999_ms"):
        kept[key] = statistics.mean(r[key] for r in runs)
    for key in ("requests", "errors"):
        kept[key] = sum(r[key] for r in runs)
    kept["max_ms"] = max(r["max_ms"] for r in runs)
    kept["other_cores"] = max(r["other_cores"] for r in runs)
    cpu = [r["cpu_seconds"] for r in runs if r.get("cpu_seconds")]
    if cpu:
        kept["cpu_seconds"] = {k: round(sum(c.get(k, 0.0) for c in cpu), 2) for k in cpu[0]}
    return kept


def baseline_phase(accrual, tokens, results):
    """The baseline build's gophermart beside the current one, on the same database, users and
    accrual system (the current build's). The builds take turns, a fresh service for each run
    (current, baseline, current, baseline, ...), so that the drift of a shared machine falls on
    both alike; per build, the mean of its runs is kept (mean_of_runs)."""
    builds = {"current": BIN, "baseline": BASELINE_BIN}
    out = {"label": BASELINE_LABEL, "bin_dir": BASELINE_BIN, "current_bin_dir": BIN,
           "levels": BASELINE_LEVELS, "rounds": BASELINE_ROUNDS, "kept": "mean",
           "ready_s": {build: [] for build in builds}, "endpoints": {}}

    def start(build, **kwargs):
        return Gophermart(accrual.url, log_name=f"gophermart-{build}", bin_dir=builds[build],
                          **kwargs)

    # Time to ready on the migrated database, three starts each, alternating.
    for _ in range(3):
        for build in builds:
            gm = start(build)
            out["ready_s"][build].append(gm.ready_seconds)
            gm.stop()
    out["ready_median_s"] = {build: statistics.median(v) for build, v in out["ready_s"].items()}
    log(f"baseline: ready after {out['ready_median_s']['baseline'] * 1000:.0f} ms (baseline), "
        f"{out['ready_median_s']['current'] * 1000:.0f} ms (current)")

    tag = 0  # one per run, for its order numbers
    for clients in BASELINE_LEVELS:
        for endpoint in ENDPOINTS:
            name = endpoint[0]
            runs = []  # (build, result), in the order measured
            for _ in range(BASELINE_ROUNDS):
                for build in builds:
                    gm = start(build)
                    try:
                        result = endpoint_point(gm, accrual, tokens, endpoint, clients, tag,
                                                BASELINE_PREFIXES, retry=False)
                        # This build's worker finishes this build's uploads.
                        wait_queue_empty(60)
                    finally:
                        gm.stop()
                    tag += 1
                    result["build"] = build
                    runs.append(result)
                    log_point(f"{name:8} c={clients:<3} {build:8}", result)
            point = {"clients": clients, "runs": runs}
            for build in builds:
                point[build] = mean_of_runs([r for r in runs if r["build"] == build])
            out["endpoints"].setdefault(name, []).append(point)

    # The login storm once per build (without the nice experiment).
    if "storm" not in SKIP:
        out["storm"] = {}
        for build in builds:
            log(f"baseline: login storm, {build} build")
            gm = start(build)
            try:
                out["storm"][build] = storm(gm, tokens)
            finally:
                gm.stop()
    results["baseline"] = out


def pooler_phase(accrual, tokens, ids, results):
    """Every endpoint in three ways, on the same database, users and accrual system: direct with
    prepared statements (the default), direct with unnamed statements, and through PgBouncer
    with unnamed statements. They take turns, a fresh service for each run, as in the baseline
    phase; per way, the mean of its runs is kept. Then PostgreSQL's own price of unnamed
    statements: each endpoint's SQL under pgbench with named prepared statements (`-M
    prepared`) and with unnamed ones (`-M extended`, what the unnamed mode sends), the service
    stopped."""
    unnamed = ["--database-prepared-statements", "false"]
    ways = {
        "prepared": (DB, []),
        "unnamed": (DB, unnamed),
        "pgbouncer": (POOLER_DB, unnamed + ["--database-listen-uri", DB]),
    }
    out = {"levels": POOLER_LEVELS, "rounds": POOLER_ROUNDS, "kept": "mean",
           "pgbouncer_pool_size": os.environ.get("PGBOUNCER_POOL_SIZE"), "endpoints": {}}
    tag = 0
    for clients in POOLER_LEVELS:
        for endpoint in ENDPOINTS:
            name = endpoint[0]
            runs = []
            for _ in range(POOLER_ROUNDS):
                for way, (db, extra) in ways.items():
                    gm = Gophermart(accrual.url, log_name=f"gophermart-{way}", extra=extra, db=db)
                    try:
                        result = endpoint_point(gm, accrual, tokens, endpoint, clients, tag,
                                                POOLER_PREFIXES, retry=False)
                        wait_queue_empty(60)
                    finally:
                        gm.stop()
                    tag += 1
                    result["way"] = way
                    runs.append(result)
                    log_point(f"{name:8} c={clients:<3} {way:9}", result)
            point = {"clients": clients, "runs": runs}
            for way in ways:
                point[way] = mean_of_runs([r for r in runs if r["way"] == way])
            out["endpoints"].setdefault(name, []).append(point)
    cpu = CpuMeter()
    for clients in POOLER_LEVELS:
        for name, _label, _script, group in ENDPOINTS:
            for mode in ("prepared", "extended"):
                result = endpoint_ceiling(name, group, clients, ids, cpu, mode)
                out.setdefault("pgbench", {}).setdefault(name, {}).setdefault(mode, []).append(result)
                log(f"pgbench -M {mode:8} {name:8} c={clients:<3} {result['rps']:8.0f} tx/s")
    forget_pgbench_rows()
    results["pooler"] = out


def wait_queue_empty(timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if psql("SELECT count(*) FROM accrual_queue") == "0":
            return True
        time.sleep(0.5)
    log("warning: the accrual queue did not drain")
    return False


def endpoint_ceiling(name, group, clients, ids, cpu, mode="prepared"):
    """pgbench running endpoint `name`'s SQL at `clients` for a point, after the warm-up."""
    lo, hi = ids[group]
    script = os.path.join(BENCH, "pgbench", f"{name}.sql")
    variables = {"umin": lo, "umax": hi}
    if WARMUP > 0:
        run_pgbench(script, clients, max(1, WARMUP), variables, mode=mode)
    return measured(lambda: run_pgbench(script, clients, DURATION, variables, cpu=cpu, mode=mode))


def forget_pgbench_rows():
    """pgbench's orders and withdrawals (15 digits) go, so that no worker ever asks about them."""
    psql("DELETE FROM orders WHERE length(number) = 15")
    psql("DELETE FROM withdrawals WHERE length(order_number) = 15")


def ceilings(ids, results):
    cpu = CpuMeter()
    # The baseline phase's concurrencies too, for its ratios to the ceiling.
    levels = sorted(set(LEVELS) | set(BASELINE_LEVELS if BASELINE else ()))
    for clients in levels:
        for name, _label, _script, group in ENDPOINTS:
            result = endpoint_ceiling(name, group, clients, ids, cpu)
            results["ceiling"].setdefault(name, []).append(result)
            log(f"pgbench {name:8} c={clients:<3} {result['rps']:8.0f} tx/s  p50 {result['p50_ms']:.2f} ms  "
                f"p99 {result['p99_ms']:.2f} ms")
    # The same SQL preceded by the pool's per-checkout `SELECT 1`, at 64 clients (or the
    # highest level below): what the service's two round trips per request cost the database.
    level = 64 if 64 in LEVELS else LEVELS[-1]
    for name, _label, _script, group in ENDPOINTS:
        lo, hi = ids[group]
        combined = os.path.join(OUT, f"checkout+{name}.sql")
        with open(combined, "w") as f:
            for part in ("checkout", name):
                with open(os.path.join(BENCH, "pgbench", f"{part}.sql")) as src:
                    f.write(src.read())
        result = measured(lambda: run_pgbench(combined, level, DURATION, {"umin": lo, "umax": hi}, cpu=cpu))
        results["ceiling_with_checkout"][name] = result
        log(f"pgbench checkout+{name:8} c={level:<3} {result['rps']:8.0f} tx/s")
    # For comparison: the upload with a pg_notify in its transaction, as it was before the
    # NOTIFY moved out of it (the NOTIFY lock serialises commits).
    lo, hi = ids["write"]
    result = measured(lambda: run_pgbench(os.path.join(BENCH, "pgbench", "upload-notify.sql"),
                                          level, DURATION, {"umin": lo, "umax": hi}, cpu=cpu))
    results["upload_with_notify"] = result
    log(f"pgbench upload-notify c={level:<3} {result['rps']:8.0f} tx/s  p99 {result['p99_ms']:.2f} ms")
    forget_pgbench_rows()
    psql("VACUUM ANALYZE")


def mixed(gm, accrual, tokens, results):
    cpu = CpuMeter(gm.proc.pid, accrual.proc.pid)
    cpu.start()
    result = loadgen("mixed", "--base", gm.url, "--accrual", accrual.url, "--tokens",
                     tokens["read"], "--clients", MIXED_CLIENTS, "--duration", MIXED_SECONDS,
                     "--warmup", 2, "--prefix", MIXED_PREFIX)
    result["cpu_seconds"] = cpu.stop()
    result["peak_rss_kb_so_far"] = gm.peak_rss_kb()
    results["mixed"] = result
    log(f"mixed c={MIXED_CLIENTS}: {result['total']['rps']:.0f} req/s p99 {result['total']['p99_ms']:.2f} ms "
        f"errors {result['total']['errors']}")
    wait_queue_empty(60)


def pipeline(gm, accrual, tokens, results):
    results["queue_leftovers_removed_before_pipeline"] = clear_queue_leftovers("pipeline")
    with open(tokens["write"]) as f:
        token = f.readline().strip()
    stream = loadgen("stream", "--base", gm.url, "--accrual", accrual.url, "--token", token,
                     "--rate", PIPELINE_RATE, "--count", PIPELINE_COUNT, "--prefix", PIPELINE_PREFIX)
    like = f"{PIPELINE_PREFIX}0%"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pending = int(psql(f"SELECT count(*) FROM orders WHERE number LIKE '{like}' AND status NOT IN ('PROCESSED', 'INVALID')"))
        if pending == 0:
            break
        time.sleep(0.2)
    rows = psql(f"""SELECT count(*) FILTER (WHERE status = 'PROCESSED'),
                           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - uploaded_at)),
                           percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - uploaded_at)),
                           max(extract(epoch FROM updated_at - uploaded_at))
                    FROM orders WHERE number LIKE '{like}'""").split("|")
    result = {
        "rate_per_s": PIPELINE_RATE,
        "orders": PIPELINE_COUNT,
        "processed": int(rows[0]),
        "p50_ms": float(rows[1]) * 1000,
        "p99_ms": float(rows[2]) * 1000,
        "max_ms": float(rows[3]) * 1000,
        "upload_latency": stream["uploads"],
    }
    results["pipeline"] = result
    log(f"pipeline: {result['processed']}/{PIPELINE_COUNT} processed, upload->PROCESSED p50 "
        f"{result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms")


def drain(accrual, ids, results):
    """The worker alone: a backlog of DRAIN_COUNT orders, every one registered in an accrual
    system that answers at once and has no limit, queued while no instance runs; then one
    instance starts and the queue is timed until it is empty. Compared with the upload rate
    at 64 clients of the same run: the pipeline keeps up when it drains at least as fast."""
    results["queue_leftovers_removed_before_drain"] = clear_queue_leftovers("drain")
    loadgen("prereg", "--accrual", accrual.url, "--prefix", DRAIN_PREFIX, "--streams", 0,
            "--count", DRAIN_COUNT)
    lo, hi = ids["write"]
    numbers = ",".join(f"'{luhn(f'{DRAIN_PREFIX}0{k:08d}')}'" for k in range(DRAIN_COUNT))
    psql_script(f"""
        WITH n AS (SELECT number, row_number() OVER () AS k FROM unnest(ARRAY[{numbers}]) AS number),
        o AS (INSERT INTO orders (number, user_id, status, uploaded_at)
              SELECT number, {lo} + k % {hi - lo + 1}, 'NEW', now() FROM n
              RETURNING number, user_id)
        INSERT INTO accrual_queue (order_number, user_id) SELECT number, user_id FROM o;
        VACUUM ANALYZE accrual_queue;
    """)
    before = accrual.stats()
    # Timed from the start of the process: its start-up (tens of milliseconds) counts too.
    started = time.monotonic()
    gm = Gophermart(accrual.url, log_name="gophermart-drain")
    cpu = CpuMeter(gm.proc.pid, accrual.proc.pid)
    cpu.start()
    deadline = started + 600
    # The backlog's numbers exactly, by prefix and length: other phases' numbers may begin with
    # the same digits (they are longer).
    mine = f"LIKE '{DRAIN_PREFIX}0%' AND length({{}}) = {len(DRAIN_PREFIX) + 10}"
    # Polled with a question that stops at the first entry left: a count would scan the whole
    # queue every time, on the cores the drain is measured on.
    while time.monotonic() < deadline:
        if psql("SELECT NOT EXISTS (SELECT 1 FROM accrual_queue WHERE order_number "
                + mine.format("order_number") + ")") == "t":
            break
        time.sleep(0.05)
    seconds = time.monotonic() - started
    cpu_seconds = cpu.stop()
    gm.stop()
    processed = int(psql("SELECT count(*) FROM orders WHERE number " + mine.format("number")
                         + " AND status = 'PROCESSED'"))
    after = accrual.stats()
    upload64 = next((r["rps"] for r in results["grid"].get("upload", []) if r.get("clients") == 64), None)
    result = {
        "orders": DRAIN_COUNT,
        "processed": processed,
        "seconds": round(seconds, 3),
        "per_second": round(processed / seconds, 1),
        "accrual_requests": after["answered"] - before["answered"],
        "upload_rps_64_clients_same_run": upload64,
        "drain_to_upload": round(processed / seconds / upload64, 3) if upload64 else None,
        "cpu_seconds": cpu_seconds,
    }
    results["drain"] = result
    ratio = f" = {result['drain_to_upload']:.2f} x the upload rate at 64 clients ({upload64:.0f}/s)" if upload64 else ""
    log(f"drain: {processed}/{DRAIN_COUNT} processed in {seconds:.2f} s = {result['per_second']:.0f}/s{ratio}")
    psql("DELETE FROM orders WHERE number " + mine.format("number"))


def sign_in_seconds(gm, login, count):
    """Times `count` sign-ins of `login` one after the other (each one bcrypt verification)."""
    body = json.dumps({"login": login, "password": "bench-password"}).encode()
    times = []
    for _ in range(count):
        request = urllib.request.Request(gm.url + "/api/user/login", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        started = time.monotonic()
        with urllib.request.urlopen(request) as response:
            response.read()
        times.append(time.monotonic() - started)
    return times


def hashing_threads():
    """The service's bcrypt concurrency: --bcrypt-concurrency if given, else cores - 1."""
    if "--bcrypt-concurrency" in EXTRA_FLAGS:
        return int(EXTRA_FLAGS[EXTRA_FLAGS.index("--bcrypt-concurrency") + 1])
    return max(1, (os.cpu_count() or 2) - 1)


def storm(gm, tokens):
    """Balance reads alone, then during a login storm against gm. Returns the figures."""
    # Users whose hashes have the service's default cost (12), made by this instance (or signed
    # in, when an earlier storm made them).
    started = time.monotonic()
    storm_tokens = os.path.join(OUT, "tokens-storm.txt")
    loadgen("register", "--base", gm.url, "--prefix", "storm-", "--count", STORM_USERS,
            "--concurrency", 4, "--out", storm_tokens)
    register_seconds = time.monotonic() - started
    hash_alone = sign_in_seconds(gm, "storm-0", STORM_HASH_SAMPLES)
    cpu = CpuMeter(gm.proc.pid)
    # The same warm-up as the endpoint grid's, so "alone" compares with its figures.
    run_wrk(gm.url, "balance.lua", STORM_BALANCE_CLIENTS, max(1, WARMUP), [tokens["read"]])
    baseline = run_wrk(gm.url, "balance.lua", STORM_BALANCE_CLIENTS, STORM_SECONDS,
                       [tokens["read"]], cpu)
    # The sign-ins last as long as the balance runs during them, and some more.
    login_cmd = ["wrk", "-t", "1", "-c", str(STORM_LOGIN_CLIENTS),
                 "-d", f"{round(STORM_SECONDS) + 4}s",
                 "--timeout", "60s", "-s", os.path.join(BENCH, "wrk", "login.lua"), gm.url,
                 "--", tokens["read"], "storm-", str(STORM_USERS)]
    login = subprocess.Popen(login_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the hashing queue fills up first
    during = run_wrk(gm.url, "balance.lua", STORM_BALANCE_CLIENTS, STORM_SECONDS,
                     [tokens["read"]], cpu)
    stdout, stderr = login.communicate()
    line = next((l for l in stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        sys.exit(f"bench: no figures from the login wrk: {stdout} {stderr}")
    raw = json.loads(line[len("WRKJSON "):])
    login_result = {
        "clients": STORM_LOGIN_CLIENTS,
        "requests": raw["requests"],
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
        "errors": sum(raw["errors"].values()),
        "error_detail": raw["errors"],
    }
    # The service answers a sign-in it cannot hash soon with 503 at once: wrk counts those
    # (every answer but 2xx and 3xx) as status errors; the others are sign-ins served.
    login_result["refused"] = raw["errors"].get("status", 0)
    login_result["served_per_second"] = ((raw["requests"] - login_result["refused"])
                                         / (raw["duration_us"] / 1e6))
    for result in (baseline, during):
        result["other_cores"] = round(other_cores(result), 3)
    # What the hasher's concurrency allows: its threads, each one hash per (median) sign-in time
    # of one client alone, measured just before the storm.
    threads = hashing_threads()
    login_result["hashing_threads"] = threads
    login_result["sign_in_alone_ms"] = [round(t * 1000, 1) for t in hash_alone]
    login_result["allowed_per_second"] = threads / statistics.median(hash_alone)
    login_result["served_of_allowed"] = (login_result["served_per_second"]
                                         / login_result["allowed_per_second"])
    log(f"storm: balance p99 {baseline['p99_ms']:.2f} ms alone, {during['p99_ms']:.2f} ms during "
        f"{login_result['rps']:.1f} logins/s")
    figures = {
        "balance_clients": STORM_BALANCE_CLIENTS,
        "seconds": STORM_SECONDS,
        "baseline": baseline,
        "during": during,
        "logins": login_result,
        "register_seconds_for_cost_12": round(register_seconds, 2),
        "storm_users": STORM_USERS,
        "peak_rss_kb_so_far": gm.peak_rss_kb(),
    }
    return figures


def http_worker_threads(pid):
    """The thread ids of gophermart's HTTP workers (actix names them "actix-server worker N")."""
    tids = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().startswith("actix-server wo"):
                tids.append(tid)
    return tids


# The freezer group of the "freeze" phase while it exists: thawed and removed at exit whatever
# ends the run (a frozen thread cannot even be killed).
FROZEN_GROUP = []


def thaw():
    for group in FROZEN_GROUP:
        try:
            with open(os.path.join(group, "freezer.state"), "w") as f:
                f.write("THAWED")
            with open(os.path.join(group, "tasks")) as f:
                tasks = f.read().split()
            for task in tasks:
                with open(os.path.join(FREEZER, "tasks"), "w") as f:
                    f.write(task)
            os.rmdir(group)
        except OSError as e:
            log(f"bench: could not remove the freezer group {group}: {e}")
    FROZEN_GROUP.clear()


atexit.register(thaw)


def frozen_worker(accrual, tokens):
    """Balance reads by FREEZE_CLIENTS clients (loadgen probe: every request's connection and
    duration) while one HTTP worker thread of a fresh gophermart is frozen for FREEZE_SECONDS,
    as a thread the kernel (or the hypervisor) does not run for a while. The clients that worker
    serves wait; the others must not, whatever they share with it (the database connections'
    I/O ran on the worker that opened each one, which made every client wait). Returns the
    figures, or None when the freezer is not available."""
    if not (os.path.isfile(os.path.join(FREEZER, "tasks")) and os.access(FREEZER, os.W_OK)):
        log("frozen worker: skipped (needs cgroup v1's freezer at /sys/fs/cgroup/freezer, as root)")
        return None
    gm = Gophermart(accrual.url, log_name="gophermart-freeze")
    try:
        # Warm up, as the grid does: the pool opens its connections.
        run_wrk(gm.url, "balance.lua", FREEZE_CLIENTS, max(1, WARMUP), [tokens["read"]])
        workers = http_worker_threads(gm.proc.pid)
        seconds = 2.0 + FREEZE_SECONDS + 2.0
        probe = subprocess.Popen(
            [os.path.join(BIN, "loadgen"), "probe", "--base", gm.url, "--tokens", tokens["read"],
             "--clients", str(FREEZE_CLIENTS), "--duration", str(seconds), "--slow-ms", "100"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        group = os.path.join(FREEZER, f"gophermart-bench-{os.getpid()}")
        os.mkdir(group)
        FROZEN_GROUP.append(group)
        with open(os.path.join(group, "tasks"), "w") as f:
            f.write(workers[0])
        with open(os.path.join(group, "freezer.state"), "w") as f:
            f.write("FROZEN")
        time.sleep(FREEZE_SECONDS)
        thaw()
        stdout, stderr = probe.communicate()
        if probe.returncode != 0:
            sys.exit(f"bench: loadgen probe failed: {stderr}")
        raw = json.loads(stdout)
    finally:
        thaw()
        gm.stop()
    # A client of the frozen worker waits about the whole freeze; one of another worker not at
    # all, or as long as that worker waits on the frozen one.
    longest = {}
    for request in raw["slow"]:
        longest[request["client"]] = max(longest.get(request["client"], 0.0), request["ms"])
    stalled = sorted(c for c, ms in longest.items() if ms >= FREEZE_SECONDS * 1000 / 2)
    others = [ms for c, ms in longest.items() if c not in stalled]
    figures = {
        "clients": FREEZE_CLIENTS,
        "http_workers": len(workers),
        "frozen_seconds": FREEZE_SECONDS,
        "seconds": raw["seconds"],
        "requests": raw["requests"],
        "rps": raw["rps"],
        "p50_ms": raw["p50_ms"],
        "p99_ms": raw["p99_ms"],
        "max_ms": raw["max_ms"],
        "connections_opened": raw["connections_opened"],
        "stalled_clients": len(stalled),
        "stalled_longest_ms": max((longest[c] for c in stalled), default=0.0),
        "others_slower_than_100ms": len(others),
        "others_longest_ms": max(others, default=0.0),
    }
    log(f"frozen worker: {len(stalled)} of {FREEZE_CLIENTS} clients waited for the frozen one of "
        f"{len(workers)} workers (longest {figures['stalled_longest_ms']:.0f} ms); the others' "
        f"longest request {figures['others_longest_ms']:.0f} ms (0: none over 100 ms)")
    return figures


def flood(accrual, tokens, results):
    """FLOOD_QUIET quiet customers (read users: their own accounts, ten orders and a balance
    each; one connection each) read their balance and orders on a fresh instance, in windows
    that take turns: alone, then while one more read user sends the same reads flat out over
    FLOOD_CONNECTIONS connections, ignoring Retry-After (`loadgen flood`). The quiet customers'
    throughput and p99 during the flood are compared with alone; the flooder's answers are
    counted by status, and a 429 to a quiet customer is a failure."""
    with open(tokens["read"]) as f:
        read = [line.strip() for line in f if line.strip()]
    if len(read) <= FLOOD_QUIET:
        log(f"flood: skipped (needs {FLOOD_QUIET + 1} read users, BENCH_USERS={USERS})")
        return
    quiet = os.path.join(OUT, "tokens-flood-quiet.txt")
    with open(quiet, "w") as f:
        f.write("\n".join(read[:FLOOD_QUIET]) + "\n")
    # Twice, side by side: without the per-customer request limit (what a flood does to an
    # instance that lets it), then with a limit of FLOOD_LIMIT requests a second (and as many
    # at once) per customer, above what any quiet customer asks for alone (under a thousand a
    # second each here) and far below what the flooder asks for.
    for name, limit in (("flood_unlimited", 0), ("flood", FLOOD_LIMIT)):
        gm = Gophermart(accrual.url, log_name=f"gophermart-{name}",
                        extra=("--customer-requests-per-second", str(limit),
                               "--customer-request-burst", str(max(1, limit))))
        try:
            cpu = CpuMeter(gm.proc.pid, accrual.proc.pid)
            cpu.start()
            result = loadgen("flood", "--base", gm.url, "--quiet-tokens", quiet,
                             "--flood-token", read[FLOOD_QUIET],
                             "--flood-connections", FLOOD_CONNECTIONS, "--seconds", FLOOD_SECONDS,
                             "--rounds", FLOOD_ROUNDS, "--warmup", max(1, WARMUP))
            result["cpu_seconds"] = cpu.stop()
            result["other_cores"] = round(other_cores(result), 3)
            result["peak_rss_kb"] = gm.peak_rss_kb()
            result["customer_requests_per_second"] = limit
        finally:
            gm.stop()
        results[name] = result
        log_flood(name, result)


def log_flood(name, result):
    """The log lines of one flood run."""
    for i, window in enumerate(result["windows"], 1):
        q = window["quiet"]
        log(f"{name}: window {i} {window['kind']:5} quiet {q['rps']:6.0f} req/s  p50 {q['p50_ms']:.2f} ms  "
            f"p99 {q['p99_ms']:.2f} ms  failures {q['errors']}"
            + (f"; flooder {window['flooder']['rps']:.0f} req/s" if window["flooder"] else ""))
    alone, during, flooder = result["alone"], result["flood"], result["flooder"]
    by_status = ", ".join(f"{status} {rps:.0f}/s" for status, rps in flooder["rps_by_status"].items())
    times = lambda x: "–" if x is None else f"x{x:.2f}"
    log(f"{name}: quiet {alone['rps']:.0f} req/s alone, {during['rps']:.0f} during the flood "
        f"({times(result['throughput_ratio'])}); p99 {alone['p99_ms']:.2f} -> {during['p99_ms']:.2f} ms "
        f"({times(result['p99_ratio'])}); quiet failures {alone['errors'] + during['errors']} "
        f"(429: {result['quiet_429']}); flooder {by_status}")


def clear_queue_leftovers(phase):
    """Removes queue entries that earlier phases left (orders the accrual system did not know),
    which would otherwise take the worker's requests in `phase`; says how many there were."""
    left = int(psql("SELECT count(*) FROM accrual_queue"))
    if left:
        log(f"warning: {left} queue entries left by earlier phases removed before the {phase}")
        psql("DELETE FROM accrual_queue")
    return left


def rate_limited(tokens, results):
    results["queue_leftovers_removed_before_ratelimit"] = clear_queue_leftovers("rate-limit phase")
    accrual = Accrual(rate_limit=RATE_N, log_name="accrual-limited")
    # Several instances on one database share the accrual system's one limit. One customer
    # uploads the whole backlog at 500/s here, past any customer's request limit: the phase
    # measures the accrual budget, so that limit is off.
    instances = [Gophermart(accrual.url, log_name=f"gophermart-limited-{i}",
                            extra=("--customer-requests-per-second", "0"))
                 for i in range(max(1, RATE_INSTANCES))]
    gm = instances[0]
    try:
        with open(tokens["write"]) as f:
            token = f.readlines()[1].strip()
        backlog = int(RATE_N * (RATE_SECONDS / 60 + 1))
        loadgen("prereg", "--accrual", accrual.url, "--prefix", RATE_PREFIX, "--count", backlog)
        t0 = time.time()
        loadgen("stream", "--base", gm.url, "--accrual", accrual.url, "--token", token,
                "--rate", 500, "--count", backlog, "--prefix", RATE_PREFIX, "--no-prereg")
        uploaded = time.time() - t0
        seconds_left = RATE_SECONDS - (time.time() - t0)
        if seconds_left > 0:
            time.sleep(seconds_left)
        end = t0 + RATE_SECONDS
        stats = accrual.stats()
        like = f"{RATE_PREFIX}0%"
        times = [float(x) for x in psql(
            f"SELECT extract(epoch FROM updated_at) FROM orders WHERE number LIKE '{like}' "
            f"AND status = 'PROCESSED' ORDER BY updated_at").split()]
        in_window = [t for t in times if t0 <= t <= end]
        per_minute = len(in_window) / (RATE_SECONDS / 60)
        after_first = [t for t in in_window if t >= t0 + 60]
        after_first_minute = (len(after_first) / ((RATE_SECONDS - 60) / 60)
                              if RATE_SECONDS > 60 else None)
        # Steady state: after the longest gap (the pause the first 429 imposes).
        steady = None
        if len(in_window) > 2:
            gaps = [(in_window[i + 1] - in_window[i], i + 1) for i in range(len(in_window) - 1)]
            gap, index = max(gaps)
            resume = in_window[index]
            if end - resume > 10:
                steady = {"pause_seconds": round(gap, 2),
                          "from_seconds": round(resume - t0, 1),
                          "per_minute": (len(in_window) - index) / (end - resume) * 60}
        result = {
            "limit_per_minute": RATE_N,
            "instances": len(instances),
            "window_seconds": RATE_SECONDS,
            "after_first_minute_per_minute": after_first_minute,
            "after_first_minute_fraction_of_limit": (after_first_minute / RATE_N
                                                     if after_first_minute is not None else None),
            "backlog": backlog,
            "upload_seconds": round(uploaded, 2),
            "completed_in_window": len(in_window),
            "per_minute": per_minute,
            "fraction_of_limit": per_minute / RATE_N,
            "steady": steady,
            "steady_fraction_of_limit": steady["per_minute"] / RATE_N if steady else None,
            "rate_limited_429": stats["rate_limited"],
            "accrual_stats": stats,
        }
        results["rate_limit"] = result
        after = (f", after the first minute {after_first_minute:.1f}/min ({after_first_minute / RATE_N:.2f} N)"
                 if after_first_minute is not None else "")
        log(f"rate limit {RATE_N}/min, {len(instances)} instances: {len(in_window)} completed in "
            f"{RATE_SECONDS:.0f} s = {per_minute:.1f}/min ({per_minute / RATE_N:.2f} N){after}, "
            f"429s: {stats['rate_limited']}")
    finally:
        for instance in instances:
            instance.stop()
        accrual.stop()


def main():
    if not DB:
        sys.exit("bench: DATABASE_URI is not set (run through make bench)")
    if BASELINE and not os.access(os.path.join(BASELINE_BIN, "gophermart"), os.X_OK):
        sys.exit(f"bench: no gophermart in BENCH_BASELINE_BIN_DIR={BASELINE_BIN}")
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        if name.endswith(".log"):
            os.remove(os.path.join(OUT, name))
    started = time.monotonic()
    results = {"machine": machine_info(), "settings": {
        "duration_s": DURATION, "warmup_s": WARMUP, "levels": LEVELS, "users_per_set": USERS,
        "rate_limit_per_minute": RATE_N, "rate_window_s": RATE_SECONDS,
        "storm_s": STORM_SECONDS, "mixed_s": MIXED_SECONDS, "mixed_clients": MIXED_CLIENTS,
        "pipeline_rate_per_s": PIPELINE_RATE, "pipeline_orders": PIPELINE_COUNT,
        "flood_window_s": FLOOD_SECONDS, "flood_rounds": FLOOD_ROUNDS,
        "gophermart_flags": "defaults (pool 16, one HTTP worker per core, bcrypt cost 12, RUST_LOG unset = info)"
                            + (f"; plus {' '.join(EXTRA_FLAGS)}" if EXTRA_FLAGS else ""),
        "binaries": BIN,
        "baseline_binaries": BASELINE_BIN if BASELINE else None,
    }, "grid": {}, "ceiling": {}, "ceiling_with_checkout": {}, "startup": {}, "rss_kb": {}}
    log(f"machine: {results['machine']['cores']} cores, {results['machine']['memory_gib']} GiB, "
        f"load {results['machine']['load_average_at_start']}")

    accrual = Accrual()
    try:
        # Start-up on an empty database: the migrations are applied by this start.
        setup_gm = Gophermart(accrual.url, bcrypt_cost=4, log_name="gophermart-setup")
        results["startup"]["first_start_with_migrations_s"] = setup_gm.ready_seconds
        time.sleep(1)
        results["rss_kb"]["idle_after_start"] = setup_gm.rss_kb()
        tokens, ids = setup_users(setup_gm)
        setup_gm.stop()
        warm = []
        for _ in range(4):
            gm = Gophermart(accrual.url, log_name="gophermart-restarts")
            warm.append(gm.ready_seconds)
            gm.stop()
        # The same with bcrypt cost 4: BcryptHasher computes a dummy hash of the configured cost
        # before the server starts, so the difference is that hash's time.
        cheap = []
        for _ in range(2):
            gm = Gophermart(accrual.url, bcrypt_cost=4, log_name="gophermart-restarts")
            cheap.append(gm.ready_seconds)
            gm.stop()
        results["startup"]["restarts_bcrypt_cost_4_s"] = cheap
        gm = Gophermart(accrual.url)
        warm.append(gm.ready_seconds)
        results["startup"]["restarts_s"] = warm
        results["startup"]["restart_median_s"] = statistics.median(warm)
        time.sleep(1)
        results["rss_kb"]["idle_measured_instance"] = gm.rss_kb()
        log(f"ready after {results['startup']['first_start_with_migrations_s'] * 1000:.0f} ms (empty database), "
            f"median {results['startup']['restart_median_s'] * 1000:.0f} ms (migrated); "
            f"idle RSS {results['rss_kb']['idle_measured_instance'] / 1024:.1f} MiB")

        if "grid" not in SKIP:
            grid(gm, accrual, tokens, results)
        results["rss_kb"]["peak_after_endpoints"] = gm.peak_rss_kb()
        gm.stop()

        if BASELINE:
            baseline_phase(accrual, tokens, results)

        if "pooler" not in SKIP and POOLER_DB:
            pooler_phase(accrual, tokens, ids, results)

        if "ceiling" not in SKIP:
            ceilings(ids, results)

        gm = Gophermart(accrual.url)
        results["startup"]["restarts_s"].append(gm.ready_seconds)
        if "mixed" not in SKIP:
            mixed(gm, accrual, tokens, results)
        if "pipeline" not in SKIP:
            pipeline(gm, accrual, tokens, results)
        if "storm" not in SKIP:
            results["storm"] = storm(gm, tokens)
        results["rss_kb"]["peak_after_mixed_pipeline_storm"] = gm.peak_rss_kb()
        gm.stop()
        if "freeze" not in SKIP:
            frozen = frozen_worker(accrual, tokens)
            if frozen:
                results["freeze"] = frozen
        if "flood" not in SKIP:
            flood(accrual, tokens, results)
        if "drain" not in SKIP:
            drain(accrual, ids, results)
    finally:
        accrual.stop()

    if "ratelimit" not in SKIP:
        rate_limited(tokens, results)

    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["total_seconds"] = round(time.monotonic() - started, 1)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    subprocess.run([sys.executable, os.path.join(BENCH, "report.py"), os.path.join(OUT, "results.json"),
                    os.path.join(OUT, "results.md")], check=True)
    subprocess.run([sys.executable, os.path.join(BENCH, "plot.py"), os.path.join(OUT, "results.json"),
                    os.path.join(OUT, "throughput.svg")], check=True)
    log(f"done in {results['total_seconds']:.0f} s: {OUT}/results.md, results.json, throughput.svg")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
