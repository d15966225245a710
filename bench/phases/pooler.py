"""Phase "pooler": every endpoint direct with prepared statements, direct with unnamed ones, and
through PgBouncer in transaction pooling mode; then pgbench -M prepared against -M extended."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)
from phases.ceiling import endpoint_ceiling, forget_pgbench_rows


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

    def start(way):
        db, extra = ways[way]
        return Gophermart(accrual.url, log_name=f"gophermart-{way}", extra=extra, db=db)

    out = {"levels": POOLER_LEVELS, "rounds": POOLER_ROUNDS, "kept": "mean",
           "pgbouncer_pool_size": os.environ.get("PGBOUNCER_POOL_SIZE"), "endpoints": {}}
    tag = 0
    for clients in POOLER_LEVELS:
        for endpoint in ENDPOINTS:
            name = endpoint[0]
            point, tag = taking_turns(accrual, tokens, endpoint, clients, tag,
                                      POOLER_PREFIXES, POOLER_ROUNDS, list(ways), "way", start)
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
