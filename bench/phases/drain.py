"""Phase "drain": a backlog of BENCH_DRAIN_COUNT orders worked off by one fresh instance."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)


def drain(accrual, ids, results):
    """The worker alone: a backlog of DRAIN_COUNT orders, every one registered in an accrual
    system that answers at once and has no limit, queued while no instance runs; then one
    instance starts and the queue is timed until it is empty. Compared with the upload rate
    at 64 clients of the same run: the pipeline keeps up when it drains at least as fast."""
    results["queue_leftovers_removed_before_drain"] = clear_queue_leftovers("drain")
    loadgen("prereg", "--accrual", accrual.url, "--prefix", DRAIN_PREFIX, "--streams", 0,
            "--count", DRAIN_COUNT)
    lo, hi = ids["write"]
    numbers = ",".join(f"'{luhn(f'{DRAIN_PREFIX}0{k:08d}')}'" for k in range(DRAIN_COUNT))
    psql_script(f"""
        WITH n AS (SELECT number, row_number() OVER () AS k FROM unnest(ARRAY[{numbers}]) AS number),
        o AS (INSERT INTO orders (number, user_id, status, uploaded_at)
              SELECT number, {lo} + k % {hi - lo + 1}, 'NEW', now() FROM n
              RETURNING number, user_id)
        INSERT INTO accrual_queue (order_number, user_id) SELECT number, user_id FROM o;
        VACUUM ANALYZE accrual_queue;
    """)
    before = accrual.stats()
    # Timed from the start of the process: its start-up (tens of milliseconds) counts too.
    started = time.monotonic()
    gm = Gophermart(accrual.url, log_name="gophermart-drain")
    cpu = CpuMeter(gm.proc.pid, accrual.proc.pid)
    cpu.start()
    deadline = started + 600
    # The backlog's numbers exactly, by prefix and length: other phases' numbers may begin with
    # the same digits (they are longer).
    mine = f"LIKE '{DRAIN_PREFIX}0%' AND length({{}}) = {len(DRAIN_PREFIX) + 10}"
    # Polled with a question that stops at the first entry left: a count would scan the whole
    # queue every time, on the cores the drain is measured on.
    while time.monotonic() < deadline:
        if psql("SELECT NOT EXISTS (SELECT 1 FROM accrual_queue WHERE order_number "
                + mine.format("order_number") + ")") == "t":
            break
        time.sleep(0.05)
    seconds = time.monotonic() - started
    cpu_seconds = cpu.stop()
    gm.stop()
    processed = int(psql("SELECT count(*) FROM orders WHERE number " + mine.format("number")
                         + " AND status = 'PROCESSED'"))
    after = accrual.stats()
    upload64 = next((r["rps"] for r in results["grid"].get("upload", []) if r.get("clients") == 64), None)
    result = {
        "orders": DRAIN_COUNT,
        "processed": processed,
        "seconds": round(seconds, 3),
        "per_second": round(processed / seconds, 1),
        "accrual_requests": after["answered"] - before["answered"],
        "upload_rps_64_clients_same_run": upload64,
        "drain_to_upload": round(processed / seconds / upload64, 3) if upload64 else None,
        "cpu_seconds": cpu_seconds,
    }
    results["drain"] = result
    ratio = f" = {result['drain_to_upload']:.2f} x the upload rate at 64 clients ({upload64:.0f}/s)" if upload64 else ""
    log(f"drain: {processed}/{DRAIN_COUNT} processed in {seconds:.2f} s = {result['per_second']:.0f}/s{ratio}")
    psql("DELETE FROM orders WHERE number " + mine.format("number"))
