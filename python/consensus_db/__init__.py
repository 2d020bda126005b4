"""consensus-db: a durable, fast local store for multi-agent LLM consensus workflows.

    import consensus_db
    with consensus_db.connect("consensus.db") as db:
        db.record_agent_spawn("agent-1", "SPEC-1", "plan", "quality_gate", "gemini")
        db.store_artifact("SPEC-1", "plan", "gemini", {"verdict": "ok"})
        db.query_artifacts("SPEC-1", "plan")

The engine is Rust (SQLite through a connection pool); this package is its typed Python face.
"""

import logging as _logging

from . import errors, results, retry
from ._core import (
    DEFAULT_SCHEMA_VERSION,
    DEFAULTS,
    LATEST_SCHEMA_VERSION,
    AgentExecution,
    Artifact,
    Claim,
    Database,
    ExtractionFailure,
    Savepoint,
    Synthesis,
    Transaction,
    __version__,
    migrations,
    sqlite_version,
)
from .errors import *  # noqa: F403  (the exception tree is part of the top-level API)
from .errors import __all__ as _error_names
from .results import (
    AgentRoute,
    CheckpointReport,
    CycleReport,
    HealthReport,
    LaneStats,
    OpenReport,
    PoolState,
    ReaderStats,
    Rows,
    RowsMoved,
    SchemaReport,
    SpawnInfo,
    Stats,
    VacuumReport,
    WaitResult,
)
from .store import DEFAULT_RETRY, Store, connect

# A library logs; the application decides where it goes.
_logging.getLogger("consensus_db").addHandler(_logging.NullHandler())

__all__ = [
    "connect",
    "Store",
    "Database",
    "Transaction",
    "Savepoint",
    "Artifact",
    "Synthesis",
    "Claim",
    "ExtractionFailure",
    "AgentExecution",
    "SpawnInfo",
    "AgentRoute",
    "Rows",
    "Stats",
    "HealthReport",
    "VacuumReport",
    "CheckpointReport",
    "PoolState",
    "OpenReport",
    "RowsMoved",
    "LaneStats",
    "WaitResult",
    "ReaderStats",
    "SchemaReport",
    "CycleReport",
    "DEFAULTS",
    "DEFAULT_RETRY",
    "DEFAULT_SCHEMA_VERSION",
    "LATEST_SCHEMA_VERSION",
    "migrations",
    "sqlite_version",
    "errors",
    "results",
    "retry",
    "__version__",
    *_error_names,
]
