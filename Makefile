# Gophermart: `make run` starts the whole system, `make test` runs every check.
# Both use DATABASE_URI when it is set, and a throwaway local PostgreSQL cluster otherwise.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: pooled-tests pooler-experiment abuse-experiment switchover-experiment durability-experiment failover-test debug-bins run build test check-tools fmt fmt-check lint unit-tests clean-db help chaos test-browser test-browser-tmp bench profile fuzz fuzz-short events-experiment

help:
	@echo "make run    - PostgreSQL (throwaway unless DATABASE_URI is set), accrual on :8081, gophermart on :8080"
	@echo "make test   - formatting, clippy -D warnings and every test"
	@echo "make lint   - clippy with warnings as errors"
	@echo "make fmt    - format the code"
	@echo "make test-browser - the Swagger UI page and live updates (EventSource) in headless Chromium (installs it when root)"
	@echo "make chaos  - three instances, accrual faults and SIGKILLs for CHAOS_SECONDS (180), then the ledger audit"
	@echo "make abuse-experiment - brute force, a proxy's clients and a hoarding customer against three instances (release build)"
	@echo "make events-experiment - event stream latency across two instances, and 10,000 open streams on one (release build)"
	@echo "make switchover-experiment - planned switchovers under pg_auto_failover while customers write (release build)"
	@echo "make durability-experiment - acknowledged writes per second without and with DATABASE_REQUIRE_SYNCHRONOUS_STANDBY under pg_auto_failover (release build)"
	@echo "make failover-test - crash and rejoin, switchover and silent primary under pg_auto_failover while customers write, writes confirmed on the standby (debug build; part of make test)"

build:
	$(CARGO) build --release --bins

# The local cluster of `make run` keeps its data in .pgdata between runs; `make clean-db` drops it.
# As root, when the `postgres` user cannot reach the checkout (one in /root, of mode 700), the
# data lives in /var/lib/gophermart/ instead and .pgdata is a link to it (scripts/with-postgres.sh);
# `make clean-db` removes the link and that folder.
run: build
	scripts/with-postgres.sh --keep-dir "$(CURDIR)/.pgdata" scripts/run.sh

clean-db:
	scripts/with-postgres.sh --remove-keep-dir "$(CURDIR)/.pgdata"

check-tools:
	@scripts/check-tools.sh

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-tests:
	scripts/with-postgres.sh $(CARGO) test --workspace --no-fail-fast

test: check-tools fmt-check lint unit-tests pooled-tests test-browser-tmp fuzz-short failover-test

# The end-to-end tests again through PgBouncer in transaction pooling mode (four server
# connections per database, fewer than the instances' clients), with unnamed statements:
# the whole API suite, the accrual flow with three instances, a short chaos run, PgBouncer
# killed and restarted mid-workload, and no named statement left on the server (the unit
# tests of every crate come along; they take seconds). The targets are chosen so that cargo
# resolves the same features as `unit-tests` and builds nothing again: with `-p` or fewer
# targets it would build many crates a second time.
pooled-tests:
	GOPHERMART_E2E_POOLER=1 PGBOUNCER_POOL_SIZE=4 scripts/with-postgres.sh scripts/with-pgbouncer.sh \
		$(CARGO) test --workspace --no-fail-fast --lib --bins \
			--test accrual_flow --test chaos --test pooler --test api

# The operator's experiment: one release instance through PgBouncer (default_pool_size = 4),
# 12 customers, 192 requests; fails on any error. PREPARED=true repeats it with prepared
# statements.
pooler-experiment: build
	PGBOUNCER_POOL_SIZE=4 scripts/with-postgres.sh scripts/with-pgbouncer.sh python3 scripts/pooler-experiment.py

# The abuse limits met as an attacker would meet them (scripts/abuse-experiment.py): three
# release instances behind a trusted proxy on one throwaway PostgreSQL; a brute force through
# one and three instances, 60 failures from one client beside 20 other clients, one customer
# uploading 10,000 unknown numbers.
abuse-experiment: build
	scripts/with-postgres.sh python3 scripts/abuse-experiment.py

# GET /api/user/events on release binaries (scripts/events-experiment.py): delivery latency
# between two instances under upload load, and 10,000 streams open on one instance.
events-experiment: build
	WITH_POSTGRES_SETTINGS="-c track_commit_timestamp=on" scripts/with-postgres.sh python3 scripts/events-experiment.py

# Planned switchovers of the database's primary under load: a throwaway pg_auto_failover
# formation (a monitor and two nodes with synchronous replication; scripts/with-auto-failover.sh
# installs Debian's postgresql-15-auto-failover when root), one release instance following the
# primary, 8 customers uploading and withdrawing, SWITCHOVER_RUNS (5) switchovers. Fails on an
# acknowledged write that is missing afterwards, a 500 or a failed ledger audit.
# SWITCHOVER_STALL_KEEPER=S and SWITCHOVER_SYNC_OFF=1 reproduce the switchover that lost
# acknowledged writes (scripts/switchover-experiment.py).
switchover-experiment: build
	scripts/with-auto-failover.sh python3 scripts/switchover-experiment.py

# What DATABASE_REQUIRE_SYNCHRONOUS_STANDBY costs a pg_auto_failover formation in its steady
# state: 15 s turns without and with it, in alternation, 8 customers writing as fast as they
# can through one release instance (scripts/durability-experiment.py).
durability-experiment: build
	scripts/with-auto-failover.sh python3 scripts/durability-experiment.py

# Three failures of the primary in one throwaway pg_auto_failover formation, while 8 customers
# upload, withdraw and read through one debug instance with DATABASE_REQUIRE_SYNCHRONOUS_STANDBY
# (scripts/failover-test.py): a crash (every process of the node killed; the node started again
# once the standby has taken over alone), a planned switchover, and a silent primary (its
# processes stopped with SIGSTOP until the monitor has failed over). Fails on a 500, a lost
# acknowledged write, a wrong balance, a failed ledger audit or a request held longer than
# DATABASE_TIMEOUT_MS + DATABASE_STATEMENT_TIMEOUT_MS + the 1 s wait for the standby + 1.5 s.
# Reports how long after the new primary first took a durable direct write of the test's own
# Gophermart's first write came. About two minutes with the formation's set-up, on 2 cores.
# AUTOFAILOVER_KEEP_LOGS=DIR keeps the formation's logs, events and a timeline of its
# durability settings when it fails (docs/reliability.md, "The switchover that lost
# acknowledged writes").
failover-test: debug-bins
	BIN=target/debug scripts/with-auto-failover.sh python3 scripts/failover-test.py

# The debug binaries the failover test runs (target/debug/gophermart and accrual), built as
# `unit-tests` builds them for the API tests, with the same features: within `make test` cargo
# finds nothing to do (`cargo build --bins` would resolve other features and build again).
debug-bins:
	$(CARGO) test --workspace --no-run

# The API page in headless Chromium, refreshing docs/screenshots/swagger-ui.png; `make test`
# runs it with its screenshot in target/browser (kept for a look, like target/fuzz's reports;
# nothing outside the work tree). Either installs Debian's chromium, nodejs and npm when
# root and they are missing, and fails naming them otherwise: it is never skipped.
test-browser:
	scripts/test-browser.sh

test-browser-tmp:
	SCREENSHOT=$(CURDIR)/target/browser/swagger-ui.png scripts/test-browser.sh

# The long chaos run; `make test` runs a 15-second version of the same test.
CHAOS_SECONDS ?= 180
CHAOS_RATE_LIMIT ?= 600
chaos:
	CHAOS_SECONDS=$(CHAOS_SECONDS) CHAOS_RATE_LIMIT=$(CHAOS_RATE_LIMIT) scripts/with-postgres.sh \
		$(CARGO) test --release -p gophermart --test chaos -- --nocapture

# Benchmarks, minutes long and not part of `make test`: a throwaway PostgreSQL, our accrual
# system, Gophermart in release mode, wrk, pgbench and crates/loadgen. Results in target/bench/;
# docs/benchmarks.md explains them and keeps the latest.
bench:
	bench/bench.sh

# Instructions per request of the service and of the floor (crates/floor) on the balance and the
# orders list, from valgrind's callgrind; results in target/profile/ (docs/benchmarks.md).
profile:
	bench/profile.sh

# API fuzzing with Schemathesis (installed into target/fuzz-venv) of a throwaway instance with
# our accrual system and a funded customer: FUZZ_EXAMPLES cases per operation and stateful
# sequences (1000), FUZZ_SEED to repeat a run. docs/fuzzing.md explains it.
fuzz:
	scripts/fuzz.sh

# The short fuzzing run of `make test`: 30 cases per operation and 30 stateful sequences (one
# round of the stateful phase is enough), a fixed seed.
fuzz-short:
	FUZZ_EXAMPLES=30 FUZZ_SEED=20261122 scripts/fuzz.sh
