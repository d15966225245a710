"""Phase "pipeline": upload -> PROCESSED latency of a paced stream of uploads (`loadgen stream`)."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)


def pipeline(gm, accrual, tokens, results):
    results["queue_leftovers_removed_before_pipeline"] = clear_queue_leftovers("pipeline")
    with open(tokens["write"]) as f:
        token = f.readline().strip()
    stream = loadgen("stream", "--base", gm.url, "--accrual", accrual.url, "--token", token,
                     "--rate", PIPELINE_RATE, "--count", PIPELINE_COUNT, "--prefix", PIPELINE_PREFIX)
    like = f"{PIPELINE_PREFIX}0%"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pending = int(psql(f"SELECT count(*) FROM orders WHERE number LIKE '{like}' AND status NOT IN ('PROCESSED', 'INVALID')"))
        if pending == 0:
            break
        time.sleep(0.2)
    rows = psql(f"""SELECT count(*) FILTER (WHERE status = 'PROCESSED'),
                           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - uploaded_at)),
                           percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM updated_at - uploaded_at)),
                           max(extract(epoch FROM updated_at - uploaded_at))
                    FROM orders WHERE number LIKE '{like}'""").split("|")
    result = {
        "rate_per_s": PIPELINE_RATE,
        "orders": PIPELINE_COUNT,
        "processed": int(rows[0]),
        "p50_ms": float(rows[1]) * 1000,
        "p99_ms": float(rows[2]) * 1000,
        "max_ms": float(rows[3]) * 1000,
        "upload_latency": stream["uploads"],
    }
    results["pipeline"] = result
    log(f"pipeline: {result['processed']}/{PIPELINE_COUNT} processed, upload->PROCESSED p50 "
        f"{result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms")
