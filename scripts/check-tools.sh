#!/usr/bin/env bash
# Makes sure the tools `make test` needs are present: rustfmt and clippy (through rustup when
# they are missing) and Python 3 (used to find a free port).
set -euo pipefail
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        rustup component add rustfmt clippy
    else
        echo "check-tools: rustfmt and clippy are needed (rustup component add rustfmt clippy)" >&2
        exit 1
    fi
fi
if ! command -v python3 >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3
    else
        echo "check-tools: python3 is needed" >&2
        exit 1
    fi
fi
