#!/usr/bin/env python3
"""Turns target/bench/results.json (bench/run.py) into a Markdown report.

Usage: bench/report.py RESULTS.json OUT.md
"""

import json
import math
import statistics
import sys

LABELS = {
    "upload": "POST /api/user/orders (upload)",
    "balance": "GET /api/user/balance",
    "orders": "GET /api/user/orders (10 orders)",
    "withdraw": "POST /api/user/balance/withdraw",
}
ORDER = ["upload", "balance", "orders", "withdraw"]
HANDFUL = 8  # the default accrual concurrency: requests already in flight when a 429 comes


def fmt(value, digits=1):
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def mib(kb):
    return None if kb is None else kb / 1024


def mark(ok):
    return "**met**" if ok else "**missed**"


def ceiling_at(r, name, clients):
    """The same run's pgbench ceiling of an endpoint at that concurrency, or None."""
    return next((c for c in r["ceiling"].get(name, []) if c["clients"] == clients), None)


def cpu_per_request(row, process):
    """Milliseconds of CPU a process spent per request of a point, or None."""
    cpu = row.get("cpu_seconds")
    if not cpu or not row["requests"]:
        return None
    return cpu.get(process, 0) / (row["requests"] / 1000.0)


def before_and_after(r):
    """The section "Before and after (same run)", from results["baseline"] (bench/run.py's
    baseline phase), as a list of lines."""
    b = r["baseline"]
    s = r["settings"]
    out = []
    w = out.append
    w("### Before and after (same run)")
    w("")
    w(f"Before: the baseline build, `{b['label']}`; after: the current build, {r['machine'].get('commit', '?')}. "
      f"Both ran on the same database, users and accrual system (the current build's), taking turns: "
      f"for each endpoint current, baseline, current, baseline… ({b['rounds']} runs each), every run "
      f"on a freshly started service, {s['warmup_s']:g} s of warm-up then {s['duration_s']:g} s "
      f"measured, so that the drift of the shared machine falls on both builds alike. Each build's "
      f"figures are the **mean of its {b['rounds']} runs** (req/s and the latency percentiles; errors "
      f"summed; other load: the most disturbed of its runs, in cores). The ratio is to the pgbench "
      f"ceiling of this run at the same concurrency (the current build's statements) for both builds. "
      f"Latencies are wrk's, in milliseconds; CPU is milliseconds per request, gophermart / PostgreSQL.")
    w("")
    w("| endpoint | clients | before req/s | after req/s | × | p99 before | p99 after | ratio before | ratio after | errors before / after | CPU before → after | other load before / after |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for name in ORDER:
        for point in b["endpoints"].get(name, []):
            old, new = point["baseline"], point["current"]
            c = ceiling_at(r, name, point["clients"])
            factor = new["rps"] / old["rps"] if old["rps"] else None
            cpu = " → ".join(
                f"{fmt(cpu_per_request(x, 'gophermart'), 3)} / {fmt(cpu_per_request(x, 'postgres'), 3)}"
                for x in (old, new))
            w(f"| {LABELS[name]} | {point['clients']} | {fmt(old['rps'], 0)} | {fmt(new['rps'], 0)} | "
              f"×{fmt(factor, 2)} | {fmt(old['p99_ms'], 2)} | {fmt(new['p99_ms'], 2)} | "
              f"{fmt(old['rps'] / c['rps'] if c else None, 2)} | {fmt(new['rps'] / c['rps'] if c else None, 2)} | "
              f"{old['errors']} / {new['errors']} | {cpu} | "
              f"{fmt(old.get('other_cores'), 2)} / {fmt(new.get('other_cores'), 2)} |")
    w("")
    w("Every run, req/s in the order measured (B: before, A: after):")
    w("")
    for name in ORDER:
        for point in b["endpoints"].get(name, []):
            runs = " · ".join(f"{'A' if x['build'] == 'current' else 'B'} {fmt(x['rps'], 0)}" for x in point["runs"])
            w(f"- {LABELS[name]}, {point['clients']} clients: {runs}")
    w("")
    ready = b["ready_s"]
    w(f"Ready on the migrated database (first 200 of `/readyz`, median of {len(ready['current'])} "
      f"starts, alternating): before {b['ready_median_s']['baseline'] * 1000:.0f} ms "
      f"(runs: {', '.join(f'{x * 1000:.0f}' for x in ready['baseline'])} ms), after "
      f"{b['ready_median_s']['current'] * 1000:.0f} ms (runs: {', '.join(f'{x * 1000:.0f}' for x in ready['current'])} ms).")
    storm = b.get("storm")
    if storm:
        old, new = storm["baseline"], storm["current"]
        w("")
        w(f"Login storm, once per build (the current build first; {new['logins']['clients']} clients signing in, "
          f"{new['balance_clients']} reading their balance, {new['seconds']:g} s; balance alone just before):")
        w("")
        w("| balance | req/s before | req/s after | p99 before | p99 after | errors before / after |")
        w("|---|---:|---:|---:|---:|---:|")
        for key, label in (("baseline", "alone"), ("during", "during the storm")):
            w(f"| {label} | {fmt(old[key]['rps'], 0)} | {fmt(new[key]['rps'], 0)} | {fmt(old[key]['p99_ms'], 2)} | "
              f"{fmt(new[key]['p99_ms'], 2)} | {old[key]['errors']} / {new[key]['errors']} |")
        w("")
        served = new["logins"].get("served_per_second", new["logins"]["rps"])
        w(f"Sign-ins meanwhile: before {old['logins']['rps']:.1f}/s (p99 {old['logins']['p99_ms']:.0f} ms), "
          f"after {served:.1f}/s served and {new['logins'].get('refused', 0)} refused with 503 at once "
          f"(p99 of all answers {new['logins']['p99_ms']:.0f} ms).")
    w("")
    return out


def eventwrites_section(r):
    """The section "What the event writes cost (same run)", from results["eventwrites"]."""
    ev = r["eventwrites"]
    out = []
    w = out.append
    w("### What the event writes cost (same run)")
    w("")
    w(f"The same build on the same database, with the event log's triggers (migration "
      f"2026-12-03-000002_events) on and off, taking turns (on, off, off, on, ...), a fresh "
      f"service for each run; {ev['clients']} connections, {ev['rounds']} runs per mode; the "
      f"mean is kept.")
    w("")
    w("| endpoint | with req/s | without req/s | with / without | with p99 | without p99 | runs (with; without) |")
    w("|---|---:|---:|---:|---:|---:|---|")
    for name, point in ev["endpoints"].items():
        on, off = point["on"], point["off"]
        runs = "; ".join(", ".join(f"{x['rps']:,.0f}" for x in point["runs"] if x["events"] == mode)
                         for mode in ("on", "off"))
        w(f"| {LABELS[name]} | {fmt(on['rps'], 0)} | {fmt(off['rps'], 0)} | **{point['ratio']:.3f}** | "
          f"{fmt(on['p99_ms'], 2)} | {fmt(off['p99_ms'], 2)} | {runs} |")
    w("")
    return out


def floor_section(r):
    """The section "Against the floor (same run)", from results["floor"] (phase floor)."""
    fl = r["floor"]
    out = []
    w = out.append
    w("### Against the floor (same run)")
    w("")
    w(f"The floor is `crates/floor`: actix-web, deadpool-postgres (pool of 16), tokio-postgres with "
      f"named prepared statements and jsonwebtoken, checking the same token, running the same SQL "
      f"and writing the same JSON, and nothing else. Both on the same database and users "
      f"({fl['orders_per_user']} orders each for the list), {fl['clients']} connections, "
      f"{fl['seconds']:g} s per run after the warm-up, a fresh process for each run; "
      f"{fl['rounds']} runs per server and endpoint, taking turns in both orders; the mean is kept. "
      f"CPU per request in milliseconds.")
    w("")
    same = fl.get("bytes_identical")
    w(f"Answers compared before the runs: {fl.get('answers_compared', 0)}, status and body bytes "
      + ("**identical**." if same else "**different**: no ratio is reported (see `results.json`, `floor.differences`)."))
    w("")
    w("| endpoint | service req/s | floor req/s | service / floor | service p99 | floor p99 | "
      "service CPU/req | floor CPU/req | runs (service; floor) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, point in fl["endpoints"].items():
        sv, fr = point["service"], point["floor"]
        runs = "; ".join(", ".join(f"{x['rps']:,.0f}" for x in point["runs"] if x["server"] == server)
                         for server in ("service", "floor"))
        ratio = f"**{point['ratio']:.3f}**" if point.get("ratio") is not None else "–"
        label = LABELS[name].replace("10 orders", f"{fl['orders_per_user']} orders")
        w(f"| {label} | {fmt(sv['rps'], 0)} | {fmt(fr['rps'], 0)} | {ratio} | {fmt(sv['p99_ms'], 2)} | "
          f"{fmt(fr['p99_ms'], 2)} | {fmt(cpu_per_request(sv, 'gophermart'), 3)} | "
          f"{fmt(cpu_per_request(fr, 'gophermart'), 3)} | {runs} |")
    w("")
    return out


def pooler_section(r):
    """The section "Through PgBouncer (same run)", from results["pooler"]."""
    p = r["pooler"]
    out = []
    w = out.append
    w("## Through PgBouncer (same run)")
    w("")
    w(f"Each endpoint with a fresh service per run, in turn: direct with prepared statements (the default), "
      f"direct with unnamed statements (`DATABASE_PREPARED_STATEMENTS=false`), and through PgBouncer in "
      f"transaction pooling mode (default_pool_size {p.get('pgbouncer_pool_size') or '?'}, the service's pool 16) "
      f"with unnamed statements; {p['rounds']} runs each, the mean kept. CPU is milliseconds per request, "
      f"gophermart / PostgreSQL. \"unnamed cost\" is the unnamed mode's PostgreSQL CPU per request over the "
      f"prepared mode's, direct (target: at most 1.20).")
    w("")
    w("| endpoint | clients | prepared req/s | unnamed req/s | PgBouncer req/s | p99 prepared / unnamed / PgBouncer | CPU prepared | CPU unnamed | CPU PgBouncer | unnamed cost | errors |")
    w("|---|---:|---:|---:|---:|---|---|---|---|---:|---:|")
    for name in ORDER:
        for point in p["endpoints"].get(name, []):
            a, b, c = point["prepared"], point["unnamed"], point["pgbouncer"]
            pa, pb = cpu_per_request(a, "postgres"), cpu_per_request(b, "postgres")
            cost = pb / pa if pa and pb else None
            cpu = lambda x: f"{fmt(cpu_per_request(x, 'gophermart'), 3)} / {fmt(cpu_per_request(x, 'postgres'), 3)}"
            w(f"| {LABELS[name]} | {point['clients']} | {fmt(a['rps'], 0)} | {fmt(b['rps'], 0)} | {fmt(c['rps'], 0)} | "
              f"{fmt(a['p99_ms'], 2)} / {fmt(b['p99_ms'], 2)} / {fmt(c['p99_ms'], 2)} | {cpu(a)} | {cpu(b)} | {cpu(c)} | "
              f"{fmt(cost, 2)} {mark(cost is not None and cost <= 1.2)} | {a['errors']} / {b['errors']} / {c['errors']} |")
    w("")
    if p.get("pgbench"):
        w("PostgreSQL's own price of unnamed statements: each endpoint's SQL under pgbench with named prepared "
          "statements (`-M prepared`, what the service keeps on each direct connection) and with unnamed ones "
          "(`-M extended`: parsed and planned for every execution, what the unnamed mode sends), the service stopped, "
          "same database. PostgreSQL's ratio is pgbench's unnamed throughput over its prepared throughput: "
          "what PostgreSQL itself keeps when every statement is parsed and planned again; the service, where "
          "PostgreSQL is one part of a request's cost, loses less.")
        w("")
        w("| endpoint | clients | pgbench prepared tx/s | pgbench unnamed tx/s | PostgreSQL's ratio | service's ratio (req/s, unnamed / prepared) | PostgreSQL CPU per tx prepared / unnamed |")
        w("|---|---:|---:|---:|---:|---:|---|")
        for name in ORDER:
            modes = p["pgbench"].get(name)
            if not modes:
                continue
            for a, b in zip(modes["prepared"], modes["extended"]):
                service = next((pt for pt in p["endpoints"].get(name, []) if pt["clients"] == a["clients"]), None)
                ratio = b["rps"] / a["rps"] if a["rps"] else None
                served = (service["unnamed"]["rps"] / service["prepared"]["rps"]
                          if service and service["prepared"]["rps"] else None)
                w(f"| {LABELS[name]} | {a['clients']} | {fmt(a['rps'], 0)} | {fmt(b['rps'], 0)} | {fmt(ratio, 2)} | "
                  f"{fmt(served, 2)} | {fmt(cpu_per_request(a, 'postgres'), 3)} / {fmt(cpu_per_request(b, 'postgres'), 3)} |")
        w("")
    return out


def flood_section(fl):
    """The section "Flood: one customer against sixteen", from results["flood"] (bench/run.py's
    flood phase), as a list of lines."""
    out = []
    w = out.append
    times = lambda x: "–" if x is None else f"{x:.2f}"
    w("### Flood: one customer against sixteen")
    w("")
    w(f"{fl['quiet_clients']} quiet customers (their own accounts, ten orders each; one connection "
      f"each) read their balance and orders in turn, closed loop, in windows of "
      f"{fl['window_seconds']:g} s: alone, then while one more customer sends the same reads flat out "
      f"over {fl['flood_connections']} connections ignoring `Retry-After` (started "
      f"{fl['ramp_seconds']:g} s before its window); windows in turns, alone then flood, "
      f"{fl['rounds']} × (`loadgen flood`). "
      f"Latencies in milliseconds; failures: answers other than 200 (204 for an empty orders list), "
      f"429s included, and requests not answered.")
    w("")
    w("| window | quiet req/s | p50 | p99 | p99.9 | failures | flooder req/s | flooder by status |")
    w("|---|---:|---:|---:|---:|---:|---:|---|")

    def by_status(f):
        return ", ".join(f"{status}: {fmt(rps, 0)}/s" for status, rps in f["rps_by_status"].items())

    for i, window in enumerate(fl["windows"], 1):
        q, f = window["quiet"], window["flooder"]
        w(f"| {i}. {window['kind']} | {fmt(q['rps'], 0)} | {fmt(q['p50_ms'], 2)} | {fmt(q['p99_ms'], 2)} | "
          f"{fmt(q['p999_ms'], 2)} | {q['errors']} | {fmt(f['rps'], 0) if f else '–'} | "
          f"{by_status(f) if f else '–'} |")
    a, d, f = fl["alone"], fl["flood"], fl["flooder"]
    for label, q, flooder in (("**alone**", a, None), ("**during the flood**", d, f)):
        w(f"| {label} | {fmt(q['rps'], 0)} | {fmt(q['p50_ms'], 2)} | {fmt(q['p99_ms'], 2)} | "
          f"{fmt(q['p999_ms'], 2)} | {q['errors']} | {fmt(flooder['rps'], 0) if flooder else '–'} | "
          f"{by_status(flooder) if flooder else '–'} |")
    w("")
    w(f"Quiet customers during the flood against alone: throughput **× {times(fl['throughput_ratio'])}** "
      f"(target ≥ 0.8), p50 × {times(fl['p50_ratio'])}, p99 **× {times(fl['p99_ratio'])}** (target ≤ 2); "
      f"429s to quiet customers: {fl['quiet_429']}. Connections opened: quiet "
      f"{fl['quiet_connections_opened']}, flooder {fl['flood_connections_opened']}. Other load "
      f"{fmt(fl.get('other_cores'), 2)} cores over the phase.")
    w("")
    return out


def report(r):
    m = r["machine"]
    s = r["settings"]
    out = []
    w = out.append
    w(f"Measured {m['date']} on commit {m.get('commit', '?')}.")
    w("")
    w(f"- Machine: {m['cores']} cores ({m.get('cpu', '?')}), {m['memory_gib']} GiB memory, "
      f"Linux {m['kernel']}; load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}, "
      f"at end {', '.join(f'{x:.2f}' for x in m.get('load_average_at_end', []))}.")
    pg = m["postgresql_settings"]
    w(f"- PostgreSQL {m['postgresql']} from scripts/with-postgres.sh (max_connections {pg['max_connections']}, "
      f"shared_buffers {pg['shared_buffers']}, fsync {pg['fsync']}, synchronous_commit {pg['synchronous_commit']}); "
      f"{m['wrk']}; pgbench -M prepared.")
    w(f"- Gophermart: {s['gophermart_flags']}. Everything (service, database, load tool) shares the "
      f"{m['cores']} cores.")
    w(f"- {s['duration_s']:g} s per point after a {s['warmup_s']:g} s warm-up; {s['users_per_set']} users "
      f"per set; total run {r.get('total_seconds', 0):.0f} s.")
    w("")

    w("### Endpoints against their pgbench ceiling")
    w("")
    w("Throughput is requests (or pgbench transactions) per second; the ratio is Gophermart's "
      "throughput over the ceiling's at the same concurrency. Latencies are wrk's (pgbench's for the "
      "ceiling), in milliseconds. Errors: socket errors, timeouts and unexpected statuses. \"Other "
      "load\" is the CPU (in cores) that processes outside the benchmark used during the point, "
      "Gophermart's run / pgbench's run: a point above 0.25 was measured again, up to twice.")
    w("")
    w("| endpoint | clients | req/s | ceiling tx/s | ratio | p50 | p99 | p99.9 | errors | ceiling p50 | ceiling p99 | other load |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ORDER:
        rows = r["grid"].get(name, [])
        for row in rows:
            c = ceiling_at(r, name, row["clients"])
            ratio = row["rps"] / c["rps"] if c else None
            w(f"| {LABELS[name]} | {row['clients']} | {fmt(row['rps'], 0)} | {fmt(c['rps'], 0) if c else '–'} | "
              f"{fmt(ratio, 2)} | {fmt(row['p50_ms'], 2)} | {fmt(row['p99_ms'], 2)} | {fmt(row['p999_ms'], 2)} | "
              f"{row['errors']} | {fmt(c['p50_ms'], 2) if c else '–'} | {fmt(c['p99_ms'], 2) if c else '–'} | "
              f"{fmt(row.get('other_cores'), 2)} / {fmt(c.get('other_cores') if c else None, 2)} |")
    w("")
    if r.get("ceiling_with_checkout"):
        w("The same ceiling with a `SELECT 1` before each statement, the round trip deadpool's "
          "default connection recycling (`RecyclingMethod::Verified`) adds to every checkout; the "
          "service recycles with `RecyclingMethod::Fast` and no longer pays it:")
        w("")
        w("| endpoint | clients | ceiling tx/s | with checkout tx/s | req/s | ratio to the ceiling with checkout |")
        w("|---|---:|---:|---:|---:|---:|")
        for name in ORDER:
            wc = r["ceiling_with_checkout"].get(name)
            if not wc:
                continue
            base = ceiling_at(r, name, wc["clients"])
            row = next((g for g in r["grid"].get(name, []) if g["clients"] == wc["clients"]), None)
            w(f"| {LABELS[name]} | {wc['clients']} | {fmt(base['rps'], 0) if base else '–'} | {fmt(wc['rps'], 0)} | "
              f"{fmt(row['rps'], 0) if row else '–'} | {fmt(row['rps'] / wc['rps'], 2) if row else '–'} |")
        w("")

    wn = r.get("upload_with_notify")
    if wn:
        up = ceiling_at(r, "upload", wn["clients"])
        w(f"The upload's SQL with a `pg_notify` in its transaction (`upload-notify.sql`, as the upload "
          f"was before the NOTIFY moved out of it) at {wn['clients']} clients: {fmt(wn['rps'], 0)} tx/s "
          f"(p99 {fmt(wn['p99_ms'], 2)} ms), against {fmt(up['rps'], 0) if up else '–'} tx/s "
          f"(p99 {fmt(up['p99_ms'], 2) if up else '–'} ms) without: a transaction that ran NOTIFY holds a "
          f"database-wide lock while committing, so such uploads commit one at a time.")
        w("")
    w("CPU time per request at each point (milliseconds of CPU, from /proc; \"other\" is the rest "
      "of the machine, other users' work included):")
    w("")
    w("| endpoint | clients | gophermart | accrual | PostgreSQL | wrk | other | machine busy |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ORDER:
        for row in r["grid"].get(name, []):
            cpu = row.get("cpu_seconds")
            if not cpu or not row["requests"]:
                continue
            n = row["requests"] / 1000.0
            known = cpu.get("gophermart", 0) + cpu.get("accrual", 0) + cpu.get("postgres", 0) + cpu.get("load tool", 0)
            other = max(0.0, cpu["machine"] - known)
            w(f"| {LABELS[name]} | {row['clients']} | {cpu.get('gophermart', 0) / n:.3f} | {cpu.get('accrual', 0) / n:.3f} | "
              f"{cpu['postgres'] / n:.3f} | {cpu['load tool'] / n:.3f} | {other / n:.3f} | "
              f"{cpu['machine'] / cpu['wall']:.2f} of {m['cores']} cores |")
    w("")
    w("pgbench, same units (PostgreSQL and pgbench per transaction):")
    w("")
    w("| script | clients | PostgreSQL | pgbench | machine busy |")
    w("|---|---:|---:|---:|---:|")
    for name in ORDER:
        for row in r["ceiling"].get(name, []):
            cpu = row.get("cpu_seconds")
            if not cpu or not row["requests"]:
                continue
            n = row["requests"] / 1000.0
            w(f"| {name}.sql | {row['clients']} | {cpu['postgres'] / n:.3f} | {cpu['load tool'] / n:.3f} | "
              f"{cpu['machine'] / cpu['wall']:.2f} of {m['cores']} cores |")
    w("")

    if r.get("baseline"):
        out.extend(before_and_after(r))

    if r.get("floor"):
        out.extend(floor_section(r))
    if r.get("eventwrites"):
        out.extend(eventwrites_section(r))

    if r.get("pooler"):
        out.extend(pooler_section(r))

    if "mixed" in r:
        mx = r["mixed"]
        w(f"### Mixed customer workload ({mx['clients']} clients, {mx['seconds']:.0f} s)")
        w("")
        w("Each request is drawn from the mix below for a random user of 1000 (each with 10+ orders "
          "and a funded account); uploads are of numbers registered in the accrual system, so the "
          "accrual worker processes them during the run.")
        w("")
        w("| operation | share | req/s | p50 | p99 | p99.9 | errors |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for op, st in mx["ops"].items():
            w(f"| {op} | {mx['mix_percent'].get(op, '')} % | {fmt(st['rps'], 0)} | {fmt(st['p50_ms'], 2)} | "
              f"{fmt(st['p99_ms'], 2)} | {fmt(st['p999_ms'], 2)} | {st['errors']} |")
        t = mx["total"]
        w(f"| **all** | 100 % | {fmt(t['rps'], 0)} | {fmt(t['p50_ms'], 2)} | {fmt(t['p99_ms'], 2)} | "
          f"{fmt(t['p999_ms'], 2)} | {t['errors']} |")
        w("")

    w("### Start-up and memory")
    w("")
    st = r["startup"]
    rss = r["rss_kb"]
    restarts = st.get("restarts_s", [])
    w(f"- Ready (first 200 of `/readyz`, counted from spawning the process): "
      f"{st['first_start_with_migrations_s'] * 1000:.0f} ms on an empty database (the start applies "
      f"the migrations); on the migrated database median {st['restart_median_s'] * 1000:.0f} ms "
      f"(runs: {', '.join(f'{x * 1000:.0f}' for x in restarts)} ms).")
    cheap = st.get("restarts_bcrypt_cost_4_s")
    if cheap:
        w(f"  With `--bcrypt-cost 4` instead of 12: {', '.join(f'{x * 1000:.0f}' for x in cheap)} ms "
          f"(the dummy bcrypt hash for unknown logins is made in the background, so the cost "
          f"should make no difference).")
    peaks = [v for k, v in rss.items() if k.startswith("peak") and v]
    w(f"- RSS idle: {fmt(mib(rss.get('idle_measured_instance')))} MiB; peak (VmHWM) after the endpoint "
      f"grid: {fmt(mib(rss.get('peak_after_endpoints')))} MiB; after the mixed workload, pipeline and "
      f"login storm: {fmt(mib(rss.get('peak_after_mixed_pipeline_storm')))} MiB.")
    w("")

    for name, point in r.get("eventwrites", {}).get("endpoints", {}).items():
        w(f"| {name} loses at most 3 % to the event writes | {point['ratio']:.3f} | "
          f"{mark(point['ratio'] >= 0.97)} |")
    if "pipeline" in r:
        p = r["pipeline"]
        w("### Accrual pipeline")
        w("")
        w(f"- Upload → `PROCESSED` with our accrual system answering at once (processing delay 0, no "
          f"limit), {p['orders']} orders uploaded at {p['rate_per_s']:g}/s: p50 {p['p50_ms']:.1f} ms, "
          f"p99 {p['p99_ms']:.1f} ms, max {p['max_ms']:.1f} ms ({p['processed']} processed). Measured "
          f"in the database: `orders.updated_at` (set by the crediting transaction) minus "
          f"`orders.uploaded_at` (the upload's time).")
    uploads = [g for g in r["grid"].get("upload", []) if g.get("uploaded")]
    if uploads:
        w("- While uploads arrive (the endpoint grid's upload runs; every number registered in the "
          "accrual system, which answers at once): this run's orders credited when the run ended, of "
          "those uploaded. The worker, the accrual system and PostgreSQL's crediting share the cores "
          "with the uploads, so the upload figures include that work: "
          + "; ".join(f"{g['clients']} clients {g['credited_by_end']:,} of {g['uploaded']:,} "
                      f"({g['credited_by_end'] / g['uploaded']:.0%})" for g in uploads) + ".")
    if "drain" in r:
        dr = r["drain"]
        cpu = dr.get("cpu_seconds") or {}
        per = lambda k: f"{cpu[k] * 1000 / dr['processed']:.3f}" if cpu.get(k) and dr["processed"] else "?"
        up = dr.get("upload_rps_64_clients_same_run")
        w(f"- Drain: a backlog of {dr['orders']:,} orders queued while no instance ran, then one instance "
          f"started: {dr['processed']:,} processed in {dr['seconds']:.2f} s = **{dr['per_second']:,.0f} "
          f"orders/s**" + (f", {dr['drain_to_upload']:.2f} × the upload rate at 64 clients of this run "
                            f"({up:,.0f}/s)" if up else "")
          + f"; CPU per order (ms) gophermart {per('gophermart')}, accrual {per('accrual')}, "
          f"PostgreSQL {per('postgres')}.")
    if "rate_limit" in r:
        q = r["rate_limit"]
        steady = q.get("steady")
        if q.get("instances"):
            w(f"- {q['instances']} instances under one limit: after the first minute "
              f"{q['after_first_minute_per_minute']:.1f} per minute = **{q['after_first_minute_fraction_of_limit']:.2f} N**.")
        w(f"- Accrual limit N = {q['limit_per_minute']} per minute, a backlog of {q['backlog']} orders "
          f"uploaded in {q['upload_seconds']:.1f} s, counted over {q['window_seconds']:.0f} s: "
          f"{q['completed_in_window']} completed = {q['per_minute']:.1f} per minute = "
          f"**{q['fraction_of_limit']:.3f} N**; 429s received: **{q['rate_limited_429']}**.")
        if steady:
            w(f"  After the first 429 the worker paused {steady['pause_seconds']:.1f} s; from "
              f"{steady['from_seconds']:.0f} s on it completed {steady['per_minute']:.1f} per minute = "
              f"{q['steady_fraction_of_limit']:.3f} N (steady state).")
    w("")

    if "storm" in r:
        sm = r["storm"]
        b, d, lg = sm["baseline"], sm["during"], sm["logins"]
        w("### Login storm")
        w("")
        w(f"{lg['clients']} clients sign in flat out (bcrypt cost 12, {sm['storm_users']} users) while "
          f"{sm['balance_clients']} clients read their balance, {sm['seconds']:g} s:")
        w("")
        w("| balance | req/s | p50 | p99 | p99.9 | errors | other load |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        w(f"| alone | {fmt(b['rps'], 0)} | {fmt(b['p50_ms'], 2)} | {fmt(b['p99_ms'], 2)} | {fmt(b['p999_ms'], 2)} | {b['errors']} | {fmt(b.get('other_cores'), 2)} |")
        w(f"| during the storm | {fmt(d['rps'], 0)} | {fmt(d['p50_ms'], 2)} | {fmt(d['p99_ms'], 2)} | {fmt(d['p999_ms'], 2)} | {d['errors']} | {fmt(d.get('other_cores'), 2)} |")
        w("")
        served = lg.get("served_per_second")
        if served is None:
            w(f"Sign-ins meanwhile: {lg['rps']:.1f}/s, p50 {lg['p50_ms']:.0f} ms, p99 {lg['p99_ms']:.0f} ms, "
              f"errors {lg['errors']}.")
        else:
            w(f"Sign-ins meanwhile: {served:.1f} served per second; {lg['refused']} refused with 503 "
              f"(too many waiting for a hashing thread; answered after a pause) out of "
              f"{lg['requests']} ({lg['rps']:.0f} answers/s); latency of all answers p50 "
              f"{lg['p50_ms']:.1f} ms, p99 {lg['p99_ms']:.0f} ms; other errors "
              f"{lg['errors'] - lg['refused']}.")
        if "served_of_allowed" in lg:
            w("")
            w(f"The hasher allows {lg['allowed_per_second']:.2f} sign-ins per second "
              f"({lg['hashing_threads']} hashing threads ÷ "
              f"{statistics.median(lg['sign_in_alone_ms']):.0f} ms, the median of "
              f"{len(lg['sign_in_alone_ms'])} sign-ins of one client alone just before the storm): "
              f"served **{lg['served_of_allowed']:.2f}** of it.")
        w("")

    if "freeze" in r:
        fz = r["freeze"]
        w("### One HTTP worker frozen")
        w("")
        w(f"{fz['clients']} clients read their balance (`loadgen probe`, one connection each) for "
          f"{fz['seconds']:.0f} s; 2 s in, one of the {fz['http_workers']} HTTP worker threads is "
          f"frozen for {fz['frozen_seconds']:g} s (cgroup freezer). **{fz['stalled_clients']} of "
          f"{fz['clients']} clients** waited for it (longest request {fz['stalled_longest_ms']:.0f} ms); "
          f"the other clients had {fz['others_slower_than_100ms']} requests over 100 ms"
          + (f" (longest {fz['others_longest_ms']:.0f} ms)" if fz['others_slower_than_100ms'] else "")
          + f". All requests: {fmt(fz['rps'], 0)} req/s, p50 {fz['p50_ms']:.2f} ms, "
          f"p99 {fz['p99_ms']:.2f} ms, max {fz['max_ms']:.0f} ms.")
        w("")

    if "flood" in r:
        out.extend(flood_section(r["flood"]))

    w("### Targets")
    w("")
    w("| target | measured | |")
    w("|---|---|---|")
    at64 = {}
    for name in ORDER:
        row = next((g for g in r["grid"].get(name, []) if g["clients"] == 64), None)
        c = ceiling_at(r, name, 64)
        at64[name] = (row, c)
    for name in ORDER:
        row, c = at64[name]
        if row and c:
            ratio = row["rps"] / c["rps"]
            w(f"| {name} ≥ 0.8 × pgbench ceiling at 64 clients | {ratio:.2f} | {mark(ratio >= 0.8)} |")
    for name in ORDER:
        row, _ = at64[name]
        if row:
            w(f"| {name} p99 < 10 ms at 64 clients | {row['p99_ms']:.2f} ms | {mark(row['p99_ms'] < 10)} |")
    for name, point in r.get("floor", {}).get("endpoints", {}).items():
        if point.get("ratio") is not None:
            w(f"| {name} ≥ 0.95 × the floor at {r['floor']['clients']} clients | {point['ratio']:.3f} | "
              f"{mark(point['ratio'] >= 0.95)} |")
    if "pipeline" in r:
        p = r["pipeline"]
        w(f"| upload → PROCESSED p50 < 50 ms | {p['p50_ms']:.1f} ms (p99 {p['p99_ms']:.1f} ms) | {mark(p['p50_ms'] < 50)} |")
    if "rate_limit" in r:
        q = r["rate_limit"]
        w(f"| ≥ 0.95 N completed per minute under a limit of N | {q['fraction_of_limit']:.3f} N | {mark(q['fraction_of_limit'] >= 0.95)} |")
        w(f"| at most a handful (≤ {HANDFUL}) of 429s | {q['rate_limited_429']} | {mark(q['rate_limited_429'] <= HANDFUL)} |")
        if q.get("after_first_minute_fraction_of_limit") is not None:
            f = q["after_first_minute_fraction_of_limit"]
            w(f"| {q.get('instances', 1)} instances: ≥ 0.9 N useful requests a minute after the first minute | {f:.2f} N | {mark(f >= 0.9)} |")
            n = q["rate_limited_429"]
            w(f"| {q.get('instances', 1)} instances: at most 5 × 429 in a {q['window_seconds']:.0f} s run | {n} | {mark(n <= 5)} |")
    if "drain" in r and r["drain"].get("drain_to_upload") is not None:
        x = r["drain"]["drain_to_upload"]
        w(f"| drain of the backlog ≥ the upload rate at 64 clients | {x:.2f} × | {mark(x >= 1)} |")
    if peaks:
        peak = max(peaks)
        w(f"| peak RSS under load < 60 MB | {peak / 1024:.1f} MiB ({peak * 1024 / 1e6:.1f} MB) | {mark(peak * 1024 < 60e6)} |")
    first = st["first_start_with_migrations_s"] * 1000
    warm = st["restart_median_s"] * 1000
    w(f"| ready < 300 ms after start, migrations applied | {first:.0f} ms applying them, {warm:.0f} ms when applied | {mark(first < 300 and warm < 300)} |")
    if "storm" in r:
        d = r["storm"]["during"]
        w(f"| balance p99 < 20 ms during a login storm | {d['p99_ms']:.2f} ms | {mark(d['p99_ms'] < 20)} |")
        lg = r["storm"]["logins"]
        if "served_of_allowed" in lg:
            w(f"| sign-ins served during the storm ≥ 0.9 of what the hasher allows | "
              f"{lg['served_of_allowed']:.2f} | {mark(lg['served_of_allowed'] >= 0.9)} |")
    if "flood" in r:
        fl = r["flood"]
        if fl.get("throughput_ratio") is not None:
            w(f"| quiet customers' throughput during a flood ≥ 0.8 × alone | {fl['throughput_ratio']:.2f} | "
              f"{mark(fl['throughput_ratio'] >= 0.8)} |")
        if fl.get("p99_ratio") is not None:
            w(f"| quiet customers' p99 during a flood ≤ 2 × alone | {fl['p99_ratio']:.2f} | "
              f"{mark(fl['p99_ratio'] <= 2)} |")
        w(f"| quiet customers never refused (no 429) | {fl['quiet_429']} | {mark(fl['quiet_429'] == 0)} |")
    if "freeze" in r:
        fz = r["freeze"]
        # actix hands new connections to its workers in turn: a worker serves clients / workers.
        own = math.ceil(fz['clients'] / fz['http_workers'])
        w(f"| a frozen HTTP worker holds up only its own clients (≤ {own} of {fz['clients']}) | "
          f"{fz['stalled_clients']} of {fz['clients']} clients waited | "
          f"{mark(fz['stalled_clients'] <= own)} |")
    w("")
    return "\n".join(out)


def main():
    with open(sys.argv[1]) as f:
        results = json.load(f)
    text = report(results)
    with open(sys.argv[2], "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
