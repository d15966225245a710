#!/usr/bin/env bash
# Starts the whole system: our accrual service on 127.0.0.1:8081 and Gophermart on
# 127.0.0.1:8080 pointed at it, against the database in DATABASE_URI (scripts/with-postgres.sh
# provides a local one). Stops both on Ctrl-C.
#
# Folders: without JWT_SECRET, a secret made once is kept in .run/jwt-secret in the checkout, so
# that tokens survive restarts. `make run`'s database is scripts/with-postgres.sh's kept cluster
# (its header says where the data lives).
#
# Environment: RUN_ADDRESS, ACCRUAL_RUN_ADDRESS, ACCRUAL_SYSTEM_ADDRESS, JWT_SECRET,
# ACCRUAL_RATE_LIMIT and the rest of each program's settings (see README.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile="${PROFILE:-release}"
bin="$root/target/$profile"

accrual_address="${ACCRUAL_RUN_ADDRESS:-127.0.0.1:8081}"
export ACCRUAL_SYSTEM_ADDRESS="${ACCRUAL_SYSTEM_ADDRESS:-http://$accrual_address}"
export RUN_ADDRESS="${RUN_ADDRESS:-127.0.0.1:8080}"
if [[ -z "${JWT_SECRET:-}" ]]; then
    # A local run gets a stable secret so that tokens survive restarts of the service.
    secret_file="$root/.run/jwt-secret"
    mkdir -p "$root/.run"
    [[ -s "$secret_file" ]] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secret_file"
    JWT_SECRET="$(cat "$secret_file")"
    export JWT_SECRET
fi

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

RUN_ADDRESS="$accrual_address" "$bin/accrual" &
pids+=($!)
"$bin/gophermart" &
pids+=($!)
echo "run: accrual on http://$accrual_address, gophermart on http://$RUN_ADDRESS (Ctrl-C stops both)" >&2
wait -n "${pids[@]}"
