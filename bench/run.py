#!/usr/bin/env python3
"""Gophermart's benchmark: drives the release build against a throwaway PostgreSQL and writes
target/bench/results.json, results.md and throughput.svg.

Run it through `make bench` (bench/bench.sh), which builds the binaries, provides the database
(scripts/with-postgres.sh exports DATABASE_URI) and installs wrk when it is missing.

Layout: this file runs the phases in order (main below); bench/common.py holds what they share
(settings, processes, wrk, pgbench, the users and data, one measured point, CPU accounting);
bench/phases/<name>.py holds each phase, named as BENCH_SKIP names it.

Phases, in order (see docs/benchmarks.md for what each figure means):
  1. start-up: time from spawning gophermart to the first 200 of /readyz, on an empty database
     (migrations applied by that start) and on a migrated one; RSS when idle;
  2. setup: users signed up through the API (bcrypt cost 4, for speed), accounts funded and
     ten processed orders per "read" user inserted with SQL;
  3. endpoints: wrk against upload, balance, orders list and withdraw at each concurrency;
  3b. baseline (only with BENCH_BASELINE_BIN_DIR): a "before" build of gophermart measured
     beside the current one on the same database, users and accrual system, the two taking
     turns: the same endpoints at BENCH_BASELINE_LEVELS, ready time, and the login storm;
  3c. floor: the service beside crates/floor, a hand-written server on the same stack with the
     same token check, SQL and JSON bytes (compared first), for the balance and the orders list
     (20 items) at BENCH_FLOOR_CLIENTS (64), BENCH_FLOOR_SECONDS (8) per run, in both orders;
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
baseline's included), BENCH_SKIP (comma-separated phases to skip: grid, baseline, floor,
ceiling, mixed, pipeline, storm, freeze, flood, drain, ratelimit, pooler, eventwrites; storm leaves out
the baseline's storms too),
BENCH_DRAIN_COUNT (the drain phase's backlog, 50000). The floor phase: BENCH_FLOOR_CLIENTS (64),
BENCH_FLOOR_SECONDS (8), BENCH_FLOOR_ROUNDS (runs per server and endpoint, 2). The eventwrites
phase: BENCH_EVENTWRITES_CLIENTS (64), BENCH_EVENTWRITES_ROUNDS (runs per mode and endpoint, 2).
Before and after: BENCH_BASELINE_BIN_DIR (the baseline build's binaries; only its gophermart
is used), BENCH_BASELINE_LABEL (its name in the report; default the folder),
BENCH_BASELINE_LEVELS ("64"), BENCH_BASELINE_ROUNDS (runs per build and point, 2).
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

from common import (BASELINE, BASELINE_BIN, BENCH, BIN, DB, DURATION, EXTRA_FLAGS, FLOOD_ROUNDS,
                    FLOOD_SECONDS, LEVELS, MIXED_CLIENTS, MIXED_SECONDS, OUT, PIPELINE_COUNT,
                    PIPELINE_RATE, POOLER_DB, RATE_N, RATE_SECONDS, SKIP, STORM_SECONDS, USERS,
                    WARMUP, Accrual, Gophermart, log, machine_info, setup_users)
from phases.baseline import baseline_phase
from phases.ceiling import ceilings
from phases.drain import drain
from phases.eventwrites import eventwrites_phase
from phases.flood import flood
from phases.floor import floor_phase
from phases.freeze import frozen_worker
from phases.grid import grid
from phases.mixed import mixed
from phases.pipeline import pipeline
from phases.pooler import pooler_phase
from phases.ratelimit import rate_limited
from phases.storm import storm


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

        if "floor" not in SKIP:
            floor_phase(accrual, tokens, ids, results)

        if "eventwrites" not in SKIP:
            eventwrites_phase(accrual, tokens, results)

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
