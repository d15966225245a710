"""Phase "mixed": the mixed customer workload (`loadgen mixed`)."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)


def mixed(gm, accrual, tokens, results):
    cpu = CpuMeter(gm.proc.pid, accrual.proc.pid)
    cpu.start()
    result = loadgen("mixed", "--base", gm.url, "--accrual", accrual.url, "--tokens",
                     tokens["read"], "--clients", MIXED_CLIENTS, "--duration", MIXED_SECONDS,
                     "--warmup", 2, "--prefix", MIXED_PREFIX)
    result["cpu_seconds"] = cpu.stop()
    result["peak_rss_kb_so_far"] = gm.peak_rss_kb()
    results["mixed"] = result
    log(f"mixed c={MIXED_CLIENTS}: {result['total']['rps']:.0f} req/s p99 {result['total']['p99_ms']:.2f} ms "
        f"errors {result['total']['errors']}")
    wait_queue_empty(60)
