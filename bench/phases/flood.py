"""Phase "flood": quiet customers' reads alone and while one customer floods (`loadgen flood`)."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)


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
