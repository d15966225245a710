# Gophermart: `make run` starts the whole system, `make test` runs every check.
# Both use DATABASE_URI when it is set, and a throwaway local PostgreSQL cluster otherwise.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run build test check-tools fmt fmt-check lint unit-tests clean-db help

help:
	@echo "make run    - PostgreSQL (throwaway unless DATABASE_URI is set), accrual on :8081, gophermart on :8080"
	@echo "make test   - formatting, clippy -D warnings and every test"
	@echo "make lint   - clippy with warnings as errors"
	@echo "make fmt    - format the code"

build:
	$(CARGO) build --release --bins

# The local cluster of `make run` keeps its data in .pgdata between runs; `make clean-db` drops it.
run: build
	scripts/with-postgres.sh --keep-dir "$(CURDIR)/.pgdata" scripts/run.sh

clean-db:
	rm -rf .pgdata

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

test: check-tools fmt-check lint unit-tests
