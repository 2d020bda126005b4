#!/usr/bin/env bash
# Installs everything the tests need and runs every test: Rust (engine, no Python) and
# Python (the built wheel, installed into .venv). This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# A real (non-editable) install: the tests exercise the wheel users get.
.venv/bin/python -m pip install --quiet --force-reinstall --no-deps .
.venv/bin/python -m pip install --quiet '.[test,lint]'

echo "== Python gates: ruff (lint, format), mypy --strict (package + example), stubtest (_core.pyi), API docs"
.venv/bin/ruff check python tests benches examples docs
.venv/bin/ruff format --check python examples docs
# [tool.mypy] in pyproject.toml: strict, on python/consensus_db and examples/.
.venv/bin/python -m mypy
# The stub against the compiled module of the installed wheel. No allowlist: every
# runtime default, class and member is visible to stubtest (text signatures carry the
# defaults); add tests/stubtest_allowlist.txt only for what it cannot see, each line
# with a comment saying why.
.venv/bin/python -m mypy.stubtest consensus_db._core
# docs/api.md is generated from the docstrings; a stale page fails here.
.venv/bin/python docs/gen_api.py --check

echo "== Rust: cargo test --no-default-features (the engine without Python)"
cargo test --no-default-features --locked

echo "== Python: pytest (against the installed wheel: python/ is not on sys.path)"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
