"""Phase "freeze": one HTTP worker thread frozen for a second (cgroup v1's freezer) while
balance reads run."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)


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
