"""The plumbing every phase of Gophermart's benchmark shares (bench/run.py runs the phases,
bench/phases/ holds one module each): the settings read from the environment, PostgreSQL's
tools (psql, pgbench), the processes started (the accrual system, gophermart, loadgen) and
their CPU and memory, the load tools (wrk, pgbench) and their figures, the users and data
every phase reads, and one measured point of an endpoint.

A phase module takes these names with `from common import *`; see bench/run.py for the
settings and the phases' order.
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
# Shared by the phases: the machine, the users and their data, one point of an endpoint

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


def wait_queue_empty(timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if psql("SELECT count(*) FROM accrual_queue") == "0":
            return True
        time.sleep(0.5)
    log("warning: the accrual queue did not drain")
    return False


def taking_turns(accrual, tokens, endpoint, clients, tag, prefixes, rounds, kinds, key, start,
                 alternate=False):
    """One point of `endpoint` at `clients` connections for each of `kinds` (builds, ways of
    connecting, settings), measured taking turns, `rounds` runs each, a fresh service from
    `start(kind)` for every run (stopped once the accrual worker has finished the run's
    uploads), so that the drift of a shared machine falls on all alike; with `alternate` every
    other round goes in the reverse order. Each run records its kind under `key`. Returns the
    point (its runs and, per kind, the mean of its runs: mean_of_runs) and the next tag."""
    name = endpoint[0]
    runs = []
    for round_ in range(rounds):
        for kind in (kinds[::-1] if alternate and round_ % 2 else kinds):
            gm = start(kind)
            try:
                result = endpoint_point(gm, accrual, tokens, endpoint, clients, tag, prefixes,
                                        retry=False)
                wait_queue_empty(60)
            finally:
                gm.stop()
            tag += 1
            result[key] = kind
            runs.append(result)
            log_point(f"{name:8} c={clients:<3} {key} {kind:9}", result)
    point = {"clients": clients, "runs": runs}
    for kind in kinds:
        point[kind] = mean_of_runs([r for r in runs if r[key] == kind])
    return point, tag


def clear_queue_leftovers(phase):
    """Removes queue entries that earlier phases left (orders the accrual system did not know),
    which would otherwise take the worker's requests in `phase`; says how many there were."""
    left = int(psql("SELECT count(*) FROM accrual_queue"))
    if left:
        log(f"warning: {left} queue entries left by earlier phases removed before the {phase}")
        psql("DELETE FROM accrual_queue")
    return left
