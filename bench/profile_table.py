#!/usr/bin/env python3
"""Where a request's instructions go: the callgrind dumps of bench/profile.py, each function's
own instructions (exclusive, so nothing is counted twice) grouped by the source file they come
from (a crate of the registry, a crate of the workspace, Rust's standard library, the C
library), per request, for the service and the floor side by side.

Usage: bench/profile_table.py [target/profile]   (after `make profile`; prints Markdown)
"""

import json
import os
import re
import subprocess
import sys

# Component, and the source paths (regular expressions) whose instructions count to it; the
# first that matches wins.
COMPONENTS = [
    ("tracing: spans, their fields formatted by the log layer (ANSI colours included)",
     r"/(tracing|tracing-core|tracing-subscriber|tracing-actix-web|nu-ansi-term|sharded-slab|"
     r"thread_local|tracing-log)-[\d.]+/"),
    ("token check: jsonwebtoken, HMAC-SHA256, base64", r"/(jsonwebtoken|sha2|hmac|digest|base64|"
     r"subtle|block-buffer|generic-array|crypto-common|signature|cpufeatures)-[\d.]+/"),
    ("HTTP: actix-web, actix-http (parsing, routing, middleware plumbing, writing)",
     r"/(actix-[a-z-]+|http|httparse|bytes|bytestring|language-tags|mime|smallvec|"
     r"percent-encoding|form_urlencoded|cookie|url|time|derive_more|flate2|pin-project-lite|"
     r"futures-[a-z-]+|futures)-[\d.]+/"),
    ("tokio: the runtimes, timers, cross-thread wake-ups", r"/(tokio|tokio-util|mio|parking_lot|"
     r"parking_lot_core|lock_api|socket2|signal-hook-registry)-[\d.]+/"),
    ("tokio-postgres: the protocol, row decoding", r"/(tokio-postgres|postgres-protocol|"
     r"postgres-types|fallible-iterator|phf|phf_shared|siphasher|stringprep)-[\d.]+/"),
    ("diesel, diesel-async: query building, binds, row decoding", r"/(diesel|diesel-async|"
     r"diesel_derives|diesel-derive-enum)-[\d.]+/"),
    ("deadpool: the pool's checkout and return", r"/(deadpool|deadpool-postgres|"
     r"deadpool-runtime)-[\d.]+/"),
    ("JSON, decimals, times: serde, serde_json, rust_decimal, chrono, itoa",
     r"/(serde|serde_core|serde_json|rust_decimal|chrono|itoa|ryu|memchr)-[\d.]+/"),
    ("request limit: governor, dashmap, quanta", r"/(governor|dashmap|quanta|nonzero_ext|"
     r"hashbrown|crossbeam-utils)-[\d.]+/|/rust/deps/hashbrown"),
    ("metrics: prometheus", r"/(prometheus|protobuf)-[\d.]+/"),
    ("request ids: uuid, rand", r"/(uuid|rand|rand_core|rand_chacha|getrandom|ppv-lite86)-[\d.]+/"),
    ("the service's own code: adapters-http (middleware, extractors, handlers, ETag)",
     r"crates/adapters-http/"),
    ("the service's own code: adapters-postgres (connection, statements, timeouts)",
     r"crates/adapters-postgres/"),
    ("the service's own code: the rest (application, domain, crypto, gophermart)",
     r"crates/(application|domain|adapters-crypto|adapters-accrual|gophermart)/"),
    ("the floor's own code", r"crates/floor/"),
    ("Rust's formatting machinery (core::fmt, String writes)",
     r"library/(core|alloc)/src/(fmt|str|string)"),
    ("memory: malloc, free, memcpy, Rust's allocator shims",
     r"malloc|memcpy|memmove|memset|strlen|__rust_alloc|__rust_dealloc|__rust_realloc|"
     r"__rdl_|library/std/src/(alloc|sys/alloc)|library/alloc/src/(alloc|raw_vec)"),
    ("system calls' user side (libc), threads", r"libc\.so|libpthread|ld-linux|nptl|sysdeps"),
    ("Rust's standard library, the rest", r"/rustc/|library/"),
]
STACK_FRAMES = re.compile(
    r"clone|start_thread|thread_start|call_once\{\{vtable.shim\}\}|__rust_begin_short_backtrace|"
    r"block_on|worker::run|blocking::pool::Inner::run|enter_runtime|Scoped<T>::set|BlockingTask|"
    r"Harness<T,S>::poll|Core<T,S>::poll|task::raw::poll|Context::run")
# Selected functions, inclusive (with everything they call), per request: a label, the service's
# function(s) and the floor's counterpart (regular expressions on callgrind_annotate's
# "file:function [object]"; a second pattern after " minus " is subtracted).
SELECTED = [
    ("tracing: the request's root span opened (its fields formatted by the log layer)",
     r"ClientAddressSpan as tracing_actix_web::root_span_builder::RootSpanBuilder>::on_request_start", None),
    ("tracing: the root span closed (status and latency recorded)",
     r"ClientAddressSpan as tracing_actix_web::root_span_builder::RootSpanBuilder>::on_request_end", None),
    ("tracing: every span's fields formatted by the log layer (opened and recorded later)",
     r"fmt_layer::Layer<S,N,E,W> as tracing_subscriber::layer::Layer<S>>::on_new_span \[ plus "
     r"fmt_layer::Layer<S,N,E,W> as tracing_subscriber::layer::Layer<S>>::on_record \[", None),
    ("token check (jsonwebtoken decode and HMAC)",
     r"JwtTokens as application::ports::security::TokenService>::verify \[", r"floor::user \["),
    ("the authentication extractor besides the token (request limit, span field)",
     r"AuthenticatedUser as actix_web::extract::FromRequest>::from_request \[ minus "
     r"JwtTokens as application::ports::security::TokenService>::verify \[", None),
    ("request-limit response fields (RateLimit headers)", r"limits::insert_fields \[", None),
    ("metrics (Prometheus observation)", r"metrics::Metrics::observe \[", None),
    ("request id (UUID made and written)", r"RequestId::generate \[ plus RequestId as core::fmt::Display>::fmt \[", None),
    ("pool checkout", r"PgStore::conn::\{\{closure\}\} \[", r"deadpool::managed::pool::Pool<M,W>::get::\{\{closure\}\} \["),
    ("the read: checkout, diesel's statement, the round trip, rows decoded into domain types",
     r"PgStore>::(balance|list)::\{\{closure\}\} \[", None),
    ("rows decoded by diesel (its row and value plumbing, rust_decimal's diesel conversion)",
     r"FromStaticSqlRow<\(ST1,ST2,ST3,ST\),__DB> for \(T1,T2,T3,T\)>::build_from_row \[|"
     r"FromStaticSqlRow<\(ST1,ST\),__DB> for \(T1,T\)>::build_from_row \[", None),
    ("the body: JSON and ETag (json_or_not_modified)", r"conditional::json_or_not_modified \[", None),
    ("  of which the ETag's hash (the items hashed, their decimals normalised)",
     r"core::hash::Hash::hash_slice \[", None),
    ("HTTP request parsing (actix-http's decoder)",
     r"Codec as tokio_util::codec::decoder::Decoder>::decode \[", None),
    ("the database connection's driver task (tokio-postgres Connection::poll)",
     r"tokio_postgres::connection::Connection<S,T> as core::future::future::Future>::poll \[", None),
]
LINE = re.compile(r"^\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)$")


def annotate(dump, *flags):
    """callgrind_annotate's list of functions. It runs in the dump's folder: from the workspace
    it would find the sources of relative paths and list some functions differently."""
    return subprocess.run(["callgrind_annotate", *flags, "--threshold=100", "--auto=no",
                           os.path.abspath(dump)], cwd=os.path.dirname(os.path.abspath(dump)),
                          check=True, capture_output=True, text=True).stdout


def own_costs(dump):
    """(cost, file:function [object]) of every function in a callgrind dump, exclusive.

    A dump taken while the program runs (callgrind_control -d) charges the threads' outermost
    frames, on the stack at that moment (thread start, the runtimes' block_on), with about
    everything below them, as if it were their own: those rows (the frames of STACK_FRAMES with
    more than 1 % of the total) are left out; the table says how much is counted against the
    total, which should be about equal."""
    out = annotate(dump)
    rows = []
    started = False
    total = None
    for line in out.splitlines():
        if "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
        if "file:function" in line:
            started = True
            continue
        if not started:
            continue
        m = LINE.match(line)
        if not m:
            continue
        cost = int(m.group(1).replace(",", ""))
        if cost < total / 2 and not (cost > total / 100 and STACK_FRAMES.search(m.group(2))):
            rows.append((int(m.group(1).replace(",", "")), m.group(2)))
    return rows


def by_component(dump, requests, idle_dump=None):
    totals = {name: 0 for name, _ in COMPONENTS}
    totals["other"] = 0
    for sign, path in ((1, dump), (-1, idle_dump)):
        if not path:
            continue
        for cost, where in own_costs(path):
            for name, pattern in COMPONENTS:
                if re.search(pattern, where):
                    totals[name] += sign * cost
                    break
            else:
                totals["other"] += sign * cost
    return {k: v / requests for k, v in totals.items()}


def inclusive_costs(dump):
    out = annotate(dump, "--inclusive=yes")
    return [(int(m.group(1).replace(",", "")), m.group(2))
            for m in map(LINE.match, out.splitlines()) if m]


def function_cost(rows, pattern):
    """A function's inclusive cost: the largest entry that matches (callgrind_annotate lists a
    function once per source file its inlined code comes from; the largest holds its calls)."""
    return max((cost for cost, where in rows if re.search(pattern, where)), default=0)


def selected(rows, pattern, requests):
    if pattern is None:
        return None
    plus, _, minus = pattern.partition(" minus ")
    total = sum(function_cost(rows, p) for p in plus.split(" plus "))
    if minus:
        total -= function_cost(rows, minus)
    return total / requests


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "profile")
    with open(os.path.join(folder, "profile.json")) as f:
        profile = json.load(f)
    for endpoint in ("balance", "orders"):
        figures = {}
        for server in ("service", "floor"):
            p = profile[endpoint][server]
            load = p["callgrind"]
            idle = re.sub(r"\.1$", ".2", load)
            figures[server] = by_component(load, p["requests"], idle)
        s_total = profile[endpoint]["service"]["per_request"]
        f_total = profile[endpoint]["floor"]["per_request"]
        print(f"#### {endpoint}: {s_total:,} instructions per request in the service, "
              f"{f_total:,} in the floor ({s_total / f_total:.2f} ×)")
        print()
        counted = {server: sum(figures[server].values()) for server in figures}
        print(f"(Functions' own instructions counted: {counted['service']:,.0f} of the service's, "
              f"{counted['floor']:,.0f} of the floor's.)")
        print()
        print("| component | service | floor | difference | share of the difference |")
        print("|---|---:|---:|---:|---:|")
        names = [n for n, _ in COMPONENTS] + ["other"]
        diff_total = s_total - f_total
        for name in sorted(names, key=lambda n: -(figures["service"][n] - figures["floor"][n])):
            s, f = figures["service"][name], figures["floor"][name]
            if abs(s) < 50 and abs(f) < 50:
                continue
            print(f"| {name} | {s:,.0f} | {f:,.0f} | {s - f:+,.0f} | {(s - f) / diff_total:.0%} |")
        print(f"| **total** (load minus idle) | **{s_total:,}** | **{f_total:,}** | "
              f"**{diff_total:+,}** | 100% |")
        print()
        rows = {server: inclusive_costs(profile[endpoint][server]["callgrind"])
                for server in ("service", "floor")}
        print(f"Selected parts of the {endpoint} request, inclusive (with what they call), "
              f"instructions per request:")
        print()
        print("| part | service | floor |")
        print("|---|---:|---:|")
        n = profile[endpoint]["service"]["requests"]
        for label, service_pattern, floor_pattern in SELECTED:
            sv = selected(rows["service"], service_pattern, n)
            fl = selected(rows["floor"], floor_pattern, n)
            if not sv and not fl:
                continue
            cell = lambda x: "–" if x is None else f"{x:,.0f}"
            print(f"| {label} | {cell(sv)} | {cell(fl)} |")
        print()


if __name__ == "__main__":
    main()
