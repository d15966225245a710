"""The endpoint grid: wrk against upload, balance, orders list and withdraw at each of
BENCH_LEVELS, on the one running instance."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)


def grid(gm, accrual, tokens, results):
    for li, clients in enumerate(LEVELS):
        for endpoint in ENDPOINTS:
            result = endpoint_point(gm, accrual, tokens, endpoint, clients, li, GRID_PREFIXES)
            results["grid"].setdefault(endpoint[0], []).append(result)
            log_point(f"{endpoint[0]:8} c={clients:<3}", result)
    # Let the accrual worker finish the last uploads before the next phase.
    wait_queue_empty(60)
