"""Phase "baseline": a "before" build (BENCH_BASELINE_BIN_DIR) beside the current one, the two
taking turns on the same database, users and accrual system."""

from common import *  # noqa: F401,F403 (the shared plumbing and settings)
from phases.storm import storm


def baseline_phase(accrual, tokens, results):
    """The baseline build's gophermart beside the current one, on the same database, users and
    accrual system (the current build's). The builds take turns, a fresh service for each run
    (current, baseline, current, baseline, ...), so that the drift of a shared machine falls on
    both alike; per build, the mean of its runs is kept (mean_of_runs)."""
    builds = {"current": BIN, "baseline": BASELINE_BIN}
    out = {"label": BASELINE_LABEL, "bin_dir": BASELINE_BIN, "current_bin_dir": BIN,
           "levels": BASELINE_LEVELS, "rounds": BASELINE_ROUNDS, "kept": "mean",
           "ready_s": {build: [] for build in builds}, "endpoints": {}}

    def start(build, **kwargs):
        return Gophermart(accrual.url, log_name=f"gophermart-{build}", bin_dir=builds[build],
                          **kwargs)

    # Time to ready on the migrated database, three starts each, alternating.
    for _ in range(3):
        for build in builds:
            gm = start(build)
            out["ready_s"][build].append(gm.ready_seconds)
            gm.stop()
    out["ready_median_s"] = {build: statistics.median(v) for build, v in out["ready_s"].items()}
    log(f"baseline: ready after {out['ready_median_s']['baseline'] * 1000:.0f} ms (baseline), "
        f"{out['ready_median_s']['current'] * 1000:.0f} ms (current)")

    tag = 0  # one per run, for its order numbers
    for clients in BASELINE_LEVELS:
        for endpoint in ENDPOINTS:
            name = endpoint[0]
            point, tag = taking_turns(accrual, tokens, endpoint, clients, tag,
                                      BASELINE_PREFIXES, BASELINE_ROUNDS, list(builds), "build",
                                      start)
            out["endpoints"].setdefault(name, []).append(point)

    # The login storm once per build (without the nice experiment).
    if "storm" not in SKIP:
        out["storm"] = {}
        for build in builds:
            log(f"baseline: login storm, {build} build")
            gm = start(build)
            try:
                out["storm"][build] = storm(gm, tokens)
            finally:
                gm.stop()
    results["baseline"] = out
