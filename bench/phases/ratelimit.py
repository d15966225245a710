"""Phase "ratelimit": orders completed per minute under the accrual system's limit of N per
minute, shared by several instances."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)


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
