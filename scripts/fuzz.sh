#!/usr/bin/env bash
# API fuzzing with Schemathesis: builds the `gophermart` and `accrual` binaries, starts our accrual
# system with a reward rule and gophermart against a throwaway PostgreSQL
# (scripts/with-postgres.sh) with sign-in throttling off, registers a customer, credits it
# FUZZ_POINTS points through the accrual system (an uploaded purchase), and lets Schemathesis
# generate requests from the served OpenAPI document (/api/openapi.json):
#   1. signed in (`Authorization: Bearer <token>`): every operation of the document,
#      FUZZ_EXAMPLES cases each, then the stateful phase: FUZZ_EXAMPLES sequences of calls
#      along the document's links (register/login -> the token; upload -> list; withdraw ->
#      withdrawals), in rounds of one Schemathesis run each (why: see the phase below);
#   2. signed out: the five operations that need a customer, FUZZ_NOAUTH_EXAMPLES cases each
#      (the 401 paths; the other five take no credentials and are covered by the first run).
# Every answer goes through all of Schemathesis' checks: no 5xx, status code, content type,
# headers and body as documented, valid data accepted and invalid data refused, auth not ignored,
# undocumented methods refused with 405 and `Allow`. Prints one summary line (cases, requests,
# failures by check, 5xx answers) and exits non-zero on any failure. docs/fuzzing.md explains it.
#
# Installs Schemathesis (the version pinned below) into target/fuzz-venv when it is missing. The
# database is a throwaway cluster of scripts/with-postgres.sh (its header says where it goes).
# Reports (NDJSON, JUnit), the generated Schemathesis configuration and gophermart's log go to
# FUZZ_REPORT_DIR.
#
# Environment:
#   FUZZ_EXAMPLES         cases per operation, signed in, and stateful sequences (default 1000)
#   FUZZ_NOAUTH_EXAMPLES  cases per operation, signed out (default FUZZ_EXAMPLES/5, at least 10)
#   FUZZ_POINTS           points credited to the fuzzed customer before fuzzing (default 100000)
#   FUZZ_SEED             the seed, to repeat a run (default: a random one, shown in the summary);
#                         stateful round N uses FUZZ_SEED + N
#   FUZZ_WORKERS          concurrent Schemathesis workers (default 2)
#   FUZZ_CHECKS           Schemathesis checks (default all)
#   FUZZ_SCHEMA           the OpenAPI document, a URL or a file (default: the one the service serves;
#                         a file is for trying a change to the document before making it in code)
#   FUZZ_REPORT_DIR       default target/fuzz
#   CARGO                 default cargo
# Relative paths are taken from the repository's root.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

schemathesis_version="4.32.5"
venv="$root/target/fuzz-venv"
st="$venv/bin/schemathesis"

if [[ "${1:-}" != "--with-database" ]]; then
    if ! "$st" --version 2>/dev/null | grep -qx "schemathesis, version $schemathesis_version"; then
        echo "fuzz: installing schemathesis $schemathesis_version into target/fuzz-venv" >&2
        rm -rf "$venv"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            # Debian's python3 keeps venv (ensurepip) in a package of its own.
            if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
                export DEBIAN_FRONTEND=noninteractive
                apt-get update -qq >&2
                apt-get install -y -qq python3-venv >&2
            fi
            rm -rf "$venv"
            python3 -m venv "$venv"
        fi
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "schemathesis==$schemathesis_version" >&2
    fi
    ${CARGO:-cargo} build --quiet --bin gophermart --bin accrual
    exec scripts/with-postgres.sh "$0" --with-database
fi

# From here on DATABASE_URI points at a PostgreSQL server.
started=$SECONDS
examples="${FUZZ_EXAMPLES:-1000}"
points="${FUZZ_POINTS:-100000}"
noauth_default=$((examples / 5))
((noauth_default >= 10)) || noauth_default=10
noauth_examples="${FUZZ_NOAUTH_EXAMPLES:-$noauth_default}"
seed="${FUZZ_SEED:-$((RANDOM * 32768 + RANDOM))}"
workers="${FUZZ_WORKERS:-2}"
report_dir="${FUZZ_REPORT_DIR:-$root/target/fuzz}"
mkdir -p "$report_dir"
report_dir="$(cd "$report_dir" && pwd)"
rm -rf "$report_dir/auth" "$report_dir/stateful" "$report_dir/noauth"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
port="$(free_port)"
accrual_port="$(free_port)"
log="$report_dir/gophermart.log"
pids=()
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Our accrual system, in memory, finishing orders at once; fuzzed uploads it does not know stay
# queued in gophermart and are asked about again, locally.
accrual="http://127.0.0.1:$accrual_port"
"$root/target/debug/accrual" -a "127.0.0.1:$accrual_port" --processing-delay-ms 0 \
    >"$report_dir/accrual.log" 2>&1 &
pids+=($!)
# The fuzzer sends one customer's requests back to back, hundreds a second, and fails sign-ins
# on purpose: the throttle and the request limit would answer most of its cases with 429
# (held a quarter of a second each) instead of letting them reach the code under test.
RUST_LOG="${RUST_LOG:-warn}" "$root/target/debug/gophermart" -a "127.0.0.1:$port" \
    --bcrypt-cost 4 -r "$accrual" --jwt-secret fuzz-secret \
    --login-max-failures-per-login 0 --login-max-failures-per-address 0 \
    --customer-requests-per-second 0 \
    >"$log" 2>&1 &
pid=$!
pids+=("$pid")

base="http://127.0.0.1:$port"
for _ in $(seq 300); do
    if curl -sf "$base/readyz" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "fuzz: gophermart exited; its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
curl -sf "$base/readyz" >/dev/null

# The customer to fuzz as: the token is in the register answer's Authorization header.
login="fuzz-$RANDOM$RANDOM"
token="$(curl -sS -D - -o /dev/null -X POST "$base/api/user/register" \
    -H 'Content-Type: application/json' \
    --data "{\"login\":\"$login\",\"password\":\"fuzz-password\"}" |
    tr -d '\r' | sed -n 's/^[Aa]uthorization: Bearer //p')"
if [[ -z "$token" ]] ||
    ! curl -sf -o /dev/null -H "Authorization: Bearer $token" "$base/api/user/balance"; then
    echo "fuzz: registering $login gave no working token in the Authorization header" >&2
    exit 1
fi

# Credit the customer: a purchase under a flat reward rule, registered at the accrual system,
# uploaded by the customer, then processed by gophermart's worker. Its number (Luhn-valid, 18
# digits starting 9) is one the fuzzing is unlikely to draw.
purchase="$(python3 -c '
import random, sys
digits = [9] + [random.randrange(10) for _ in range(16)]
total = 0
for i, d in enumerate(reversed(digits)):
    d = d * 2 if i % 2 == 0 else d
    total += d - 9 if d > 9 else d
print("".join(map(str, digits)) + str((10 - total % 10) % 10))')"
curl -sf -o /dev/null --retry 30 --retry-delay 1 --retry-connrefused \
    -X POST "$accrual/api/goods" -H 'Content-Type: application/json' \
    --data "{\"match\":\"Fuzz\",\"reward\":$points,\"reward_type\":\"pt\"}"
curl -sf -o /dev/null -X POST "$accrual/api/orders" -H 'Content-Type: application/json' \
    --data "{\"order\":\"$purchase\",\"goods\":[{\"description\":\"Fuzz kit\",\"price\":1}]}"
curl -sf -o /dev/null -X POST "$base/api/user/orders" -H "Authorization: Bearer $token" \
    -H 'Content-Type: text/plain' --data "$purchase"
credited=""
for _ in $(seq 300); do
    credited="$(curl -sf -H "Authorization: Bearer $token" "$base/api/user/balance" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["current"])')"
    [[ "$credited" != 0 ]] && break
    sleep 0.1
done
if [[ "$credited" == 0 ]]; then
    echo "fuzz: the accrual system did not credit $login for order $purchase" >&2
    exit 1
fi

# What may answer a request the document calls valid (positive_data_acceptance) or invalid
# (negative_data_rejection), beyond Schemathesis' defaults; docs/fuzzing.md says why.
config="$report_dir/schemathesis.toml"
cat >"$config" <<'TOML'
# Valid by the schema, refused by a rule no schema can state: 402 not enough points, 409 an order
# number already used, 422 the Luhn checksum, 429 sign-in throttling.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "402", "409", "422", "429", "5xx"]

# Invalid data may also be refused as too large: 413, documented on every operation with a body.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

# The event stream never ends by itself: each case reads its first message (a resumed stream's
# first missed event, or `ready`/`reset`) and checks it against the document, and a stream with
# nothing to send is cut after 2 s, not after the 30 s every other request may take.
[[operations]]
include-path = "/api/user/events"
max-stream-events = 1
request-timeout = 2
TOML

# The document's order numbers have `format: luhn`, a rule JSON Schema cannot state: this
# teaches Schemathesis to draw numbers with a right checksum, so that valid data is valid.
hooks="$report_dir/hooks.py"
cat >"$hooks" <<'PY'
"""Schemathesis hooks of scripts/fuzz.sh: the `luhn` string format of order numbers, the
funded customer's token for the stateful run, and one parse at a time."""
import ast
import os
import threading

import schemathesis
from hypothesis import strategies as st

# Python 3.11's AST constructor keeps its recursion counter in state all threads share: two
# workers in `ast.parse` at once (Hypothesis parses the source of lambdas to describe strategies)
# can fail with "SystemError: AST constructor recursion depth mismatch". Hypothesis then sees a
# flaky test, which Schemathesis takes for a clean end: one run fuzzed the withdrawal with 9 cases
# instead of FUZZ_EXAMPLES. Parsing one at a time costs nothing (Hypothesis caches the trees).
_parse = ast.parse
_parsing = threading.RLock()


def _parse_alone(*args, **kwargs):
    with _parsing:
        return _parse(*args, **kwargs)


ast.parse = _parse_alone


def with_check_digit(payload):
    total = 0
    for i, digit in enumerate(reversed(payload)):
        digit = digit * 2 if i % 2 == 0 else digit
        total += digit - 9 if digit > 9 else digit
    return "".join(map(str, payload)) + str((10 - total % 10) % 10)


schemathesis.openapi.format(
    "luhn", st.lists(st.integers(0, 9), max_size=63).map(with_check_digit)
)

TOKEN = os.environ.get("FUZZ_STATEFUL_TOKEN")

if TOKEN:

    @schemathesis.auth()
    class FundedCustomer:
        """The stateful run: a call that no link gave a token is made as the funded customer (a
        header given on the command line would override the tokens links hand on)."""

        def get(self, case, context):
            return TOKEN

        def set(self, case, data, context):
            headers = dict(case.headers or {})
            if not any(name.lower() == "authorization" for name in headers):
                headers["Authorization"] = f"Bearer {data}"
            case.headers = headers
PY
export SCHEMATHESIS_HOOKS="$hooks"

# shellcheck disable=SC2054 # the commas are in values
common=(
    --checks "${FUZZ_CHECKS:-all}"
    --continue-on-failure
    --workers "$workers"
    --generation-database none
    --request-timeout 30
    --output-sanitize false
    --no-color
)
schema="${FUZZ_SCHEMA:-$base/api/openapi.json}"
schema_args=("$schema")
if [[ "$schema" != http://* && "$schema" != https://* ]]; then
    schema_args=("$(realpath "$schema")" --url "$base")
fi

# Schemathesis and Hypothesis keep their caches (`st replay`'s crash files) in the working
# directory: that is the report directory, not the work tree.
cd "$report_dir"
status=0
echo "fuzz: signed in as $login, $examples cases per operation, seed $seed" >&2
"$st" --config-file "$config" run "${schema_args[@]}" "${common[@]}" --seed "$seed" \
    --max-examples "$examples" \
    --phases examples,coverage,fuzzing \
    -H "Authorization: Bearer $token" \
    --report ndjson,junit --report-dir "$report_dir/auth" || status=$?

# Sequences along the document's links: register/login hand their token on to the customer
# operations, so these calls carry the token of the link when there is one and the funded
# customer's otherwise (the hook above), never one from the command line.
#
# One Schemathesis run ends its stateful phase after some 10 to 60 sequences, whatever
# --max-examples says: the service keeps state, so when Hypothesis replays the start of an earlier
# sequence the answers differ (a login registered once is 409 the second time, a withdrawal that
# was 200 is 402), other links become possible, and Hypothesis stops with "inconsistent data
# generation" (FlakyStrategyDefinition), which Schemathesis 4.32.5 takes for the suite's end.
# So the phase runs in rounds, each a Schemathesis run with the next seed, until FUZZ_EXAMPLES
# sequences have sent requests (a round that sends none ends it too). Each round's output is
# kept in its report folder and shown when the round fails.
sequences_in() {
    "$venv/bin/python" - "$1" <<'PY'
import glob, json, sys

print(sum(
    1
    for path in glob.glob(f"{sys.argv[1]}/*.ndjson")
    for line in open(path, encoding="utf-8")
    if json.loads(line).get("ScenarioFinished", {}).get("recorder", {}).get("cases")
))
PY
}
echo "fuzz: stateful, $examples sequences, seed $seed and on" >&2
sequences=0
round=0
while ((sequences < examples)); do
    round_dir="$report_dir/stateful/round-$round"
    mkdir -p "$round_dir"
    round_status=0
    FUZZ_STATEFUL_TOKEN="$token" "$st" --config-file "$config" run "${schema_args[@]}" \
        "${common[@]}" --seed "$((seed + round))" \
        --max-examples "$examples" \
        --phases stateful \
        --report ndjson,junit --report-dir "$round_dir" >"$round_dir/output.txt" 2>&1 ||
        round_status=$?
    added="$(sequences_in "$round_dir")"
    sequences=$((sequences + added))
    echo "fuzz: stateful round $round, seed $((seed + round)): $added sequences ($sequences)" >&2
    if ((round_status != 0)); then
        status=$round_status
        cat "$round_dir/output.txt"
    fi
    ((added > 0)) || break
    round=$((round + 1))
done

# Signed out every answer is meant to be 401: Schemathesis' warning about that is left out.
all_warnings_but_missing_auth=missing_test_data,base_url_mismatch,validation_mismatch,missing_deserializer,unused_openapi_auth,unsupported_regex,method_not_allowed,constants_extraction,unmatched_filter,unresolvable_reference,low_valid_rate,rate_limited,dictionary_mismatch,timeout_units
echo "fuzz: signed out, $noauth_examples cases per operation, seed $seed" >&2
"$st" --config-file "$config" run "${schema_args[@]}" "${common[@]}" --seed "$seed" \
    --max-examples "$noauth_examples" \
    --phases examples,coverage,fuzzing \
    --include-path-regex '^/api/user/(orders|balance|withdrawals)' \
    --warnings "$all_warnings_but_missing_auth" \
    --report ndjson,junit --report-dir "$report_dir/noauth" || status=$?

curl -sf "$base/metrics" >"$report_dir/metrics.txt" || true
"$venv/bin/python" - "$report_dir" "$status" "$seed" "$((SECONDS - started))" <<'PY' || status=1
"""The summary line: cases from Schemathesis' NDJSON reports (and the stateful rounds' sequences
that sent a request), requests from gophermart's own counter (shrinking included), withdrawals
answered 200, 409 and 402, failures by check, and every 5xx any run saw."""
import collections, glob, json, re, sys

report_dir, status, seed, took = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
cases = {}
failures = collections.Counter()  # check -> failing cases
failing_operations = collections.defaultdict(set)  # check -> operations
answers_5xx = 0
sequences = 0
withdrawals = collections.Counter()  # status -> answers
for run in ("auth", "stateful", "noauth"):
    cases[run] = 0
    for path in glob.glob(f"{report_dir}/{run}/**/*.ndjson", recursive=True):
        for line in open(path, encoding="utf-8"):
            finished = json.loads(line).get("ScenarioFinished")
            if not finished:
                continue
            recorder = finished["recorder"]
            cases[run] += len(recorder.get("cases", {}))
            if finished.get("phase") == "stateful" and recorder.get("cases"):
                sequences += 1
            for interaction in recorder.get("interactions", {}).values():
                response = interaction.get("response")
                if response and response["status_code"] >= 500:
                    answers_5xx += 1
                if response and interaction["request"]["uri"].endswith("/api/user/balance/withdraw"):
                    withdrawals[response["status_code"]] += 1
            for checks in recorder.get("checks", {}).values():
                for check in checks:
                    if check["status"] == "failure":
                        failures[check["name"]] += 1
                        failing_operations[check["name"]].add(recorder["label"])
served = collections.Counter()
try:
    for line in open(f"{report_dir}/metrics.txt", encoding="utf-8"):
        match = re.match(r'gophermart_http_requests_total\{.*status="(\d)\d\d".*\} (\d+)', line)
        if match:
            served[match.group(1) + "xx"] += int(match.group(2))
except OSError:
    pass
answers_5xx = max(answers_5xx, served["5xx"])
by_check = ", ".join(
    f"{name} {count} ({len(failing_operations[name])} operations)"
    for name, count in failures.most_common()
) or "none"
failed = status != 0 or failures or answers_5xx
print(
    f"fuzz: {'FAILED' if failed else 'passed'}: {sum(cases.values())} cases "
    f"({cases['auth']} signed in, {cases['stateful']} in {sequences} stateful sequences, "
    f"{cases['noauth']} signed out), "
    f"{sum(served.values())} requests served "
    f"({', '.join(f'{k} {v}' for k, v in sorted(served.items()))}); "
    f"withdrawals 200 {withdrawals[200]}, 409 {withdrawals[409]}, 402 {withdrawals[402]}; "
    f"failures by check: {by_check}; 5xx answers: {answers_5xx}; seed {seed}; {took} s"
)
sys.exit(1 if failed else 0)
PY
exit "$status"
