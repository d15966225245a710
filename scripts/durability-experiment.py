#!/usr/bin/env python3
"""What DATABASE_REQUIRE_SYNCHRONOUS_STANDBY costs a formation in its steady state.

Run it as `make durability-experiment` (scripts/with-auto-failover.sh: a pg_auto_failover
monitor and two nodes with synchronous replication; release binaries). Turns of
DURABILITY_SECONDS (15) each, alternately without and with the option (DURABILITY_TURNS pairs,
3), one release instance at a time following the primary through DATABASE_URI: 8 customers
upload new order numbers and withdraw 1 point for new numbers as fast as they can (no reads).
Prints per turn the writes acknowledged per second and the 503s, then each side's median.
Exits non-zero on a 500 or an acknowledged write missing from the primary.

Environment: DATABASE_URI, AUTOFAILOVER_* (from scripts/with-auto-failover.sh); BIN
(target/release), DURABILITY_SECONDS (15), DURABILITY_TURNS (3).
"""

import os
import statistics
import sys
import time

from experiments import Instance, Workload

BIN = os.environ.get("BIN", "target/release")
CUSTOMERS = 8
SECONDS = float(os.environ.get("DURABILITY_SECONDS", "15"))
TURNS = int(os.environ.get("DURABILITY_TURNS", "3"))
URI = os.environ["DATABASE_URI"]


def turn(number, required):
    instance = Instance(
        BIN,
        CUSTOMERS,
        f"durability{number}",
        {"DATABASE_REQUIRE_SYNCHRONOUS_STANDBY": "true" if required else "false"},
        # Numbers of their own: every turn writes to the same database.
        funding=6_000_000 + 100 * number,
    )
    try:
        workload = Workload(instance.base, instance.tokens, reads=False, first=10_000_000 * number)
        workload.run()
        time.sleep(1)
        started = time.time()
        time.sleep(SECONDS)
        ended = time.time()
        answered, _, _ = workload.between(started, ended)
        workload.finish()
        _, lost_uploads, _, lost_withdrawals = workload.lost(URI)
    finally:
        instance.stop()
    acknowledged = sum(
        n for (kind, status), n in answered.items() if (kind, status) in (("upload", 200), ("upload", 202), ("withdraw", 200))
    )
    refused = sum(n for (_, status), n in answered.items() if status == 503)
    fives = sum(n for (_, status), n in answered.items() if status == 500)
    rate = acknowledged / (ended - started)
    print(
        f"turn {number}: {'with' if required else 'without'} the option: {rate:.0f} acknowledged writes/s, "
        f"{refused} × 503, {fives} × 500, {lost_uploads + lost_withdrawals} lost",
        flush=True,
    )
    return rate, fives + lost_uploads + lost_withdrawals


def main():
    rates = {False: [], True: []}
    failed = 0
    for pair in range(TURNS):
        for required in (False, True):
            rate, bad = turn(2 * pair + int(required), required)
            rates[required].append(rate)
            failed += bad
    without, with_option = statistics.median(rates[False]), statistics.median(rates[True])
    print(
        f"durability experiment: median {without:.0f} acknowledged writes/s without the option, "
        f"{with_option:.0f} with it ({with_option / without:.2f}×), {SECONDS:.0f} s turns, {CUSTOMERS} customers"
    )
    if failed:
        print("durability experiment FAILED: a 500 or a lost write")
        sys.exit(1)


if __name__ == "__main__":
    main()
