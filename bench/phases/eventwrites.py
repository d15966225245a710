"""Phase "eventwrites": what the event log's writes cost each endpoint. The triggers of
migration 2026-12-03-000002_events (an event per order uploaded or changed, a version and an
event per balance changed) are switched off and on between runs of the same build on the same
database, taking turns, so that the difference is theirs alone."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)

CLIENTS = int(os.environ.get("BENCH_EVENTWRITES_CLIENTS", "64"))
ROUNDS = int(os.environ.get("BENCH_EVENTWRITES_ROUNDS", "2"))
# Order-number prefixes: longer than the baseline phase's ("2", "3") followed by its tags, so
# that no number repeats one of its (see endpoint_point).
PREFIXES = {"upload": "20", "withdraw": "30"}
TRIGGERS = [
    ("orders", "orders_uploaded"),
    ("orders", "orders_changed"),
    ("accounts", "accounts_versioned"),
    ("accounts", "accounts_changed"),
]


def set_event_writes(enabled):
    verb = "ENABLE" if enabled else "DISABLE"
    psql("; ".join(f"ALTER TABLE {table} {verb} TRIGGER {name}" for table, name in TRIGGERS))


def eventwrites_phase(accrual, tokens, results):
    """Each endpoint at CLIENTS connections, ROUNDS runs with the event writes and as many
    without, a fresh service for each run, in the order on, off, off, on, ...; per mode the mean
    of its runs is kept. The triggers are on again when the phase ends, however it ends."""
    out = {"clients": CLIENTS, "rounds": ROUNDS, "endpoints": {}}
    tag = 0

    def start(mode):
        set_event_writes(mode == "on")
        return Gophermart(accrual.url, log_name=f"gophermart-events-{mode}")

    try:
        for endpoint in ENDPOINTS:
            name = endpoint[0]
            point, tag = taking_turns(accrual, tokens, endpoint, CLIENTS, tag, PREFIXES, ROUNDS,
                                      ["on", "off"], "events", start, alternate=True)
            point["ratio"] = point["on"]["rps"] / point["off"]["rps"]
            out["endpoints"][name] = point
            log(f"eventwrites: {name} {point['on']['rps']:.0f} req/s with the event writes, "
                f"{point['off']['rps']:.0f} without: {point['ratio']:.3f}")
    finally:
        set_event_writes(True)
    results["eventwrites"] = out
