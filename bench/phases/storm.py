"""Phase "storm": balance reads alone, then during a storm of sign-ins (bcrypt cost 12)."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)


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
