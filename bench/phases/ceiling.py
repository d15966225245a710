"""Phase "ceiling": pgbench running each endpoint's SQL (bench/pgbench/*.sql) at the same
concurrencies, gophermart stopped; at 64 clients also with the pool's SELECT 1, and the upload
with its old pg_notify."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)


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
