"""Typed results: what the store's reports and lookups return.

The reports (``health()``, ``vacuum()``, ``checkpoint()``, ``pool_state()``,
``open_report``, ...) are plain ``dict`` objects at runtime, typed here as
:class:`~typing.TypedDict` so a type checker knows every key. Lookups return
:class:`SpawnInfo` (a named tuple) and :class:`Rows` (a list of tuples that knows its
column names).
"""

from __future__ import annotations

import datetime as _dt
import json as _json
from typing import Any, Literal, NamedTuple, Optional, TypedDict

__all__ = [
    "PhaseType",
    "Behavior",
    "Source",
    "AutoVacuum",
    "CheckpointMode",
    "SpawnInfo",
    "AgentRoute",
    "Rows",
    "Stats",
    "HealthReport",
    "PostgresHealthReport",
    "VacuumReport",
    "PostgresVacuumReport",
    "CheckpointReport",
    "PoolState",
    "OpenReport",
    "RowsMoved",
    "LaneStats",
    "WaitResult",
    "ReaderStats",
    "ReadPathLatency",
    "PathLatency",
    "CycleReport",
    "LegacyRowProblem",
    "SchemaReport",
    "SchemaGroup",
    "SchemaMismatch",
    "auto_vacuum_name",
]

#: ``phase_type`` of an agent execution (anything else is refused by ``record_agent_spawn``).
PhaseType = Literal["quality_gate", "regular_stage"]
#: How a transaction begins (``db.transaction(behavior)``; case-insensitive at runtime).
Behavior = Literal["deferred", "immediate", "exclusive"]
#: Which schema a returned row was read from.
Source = Literal["v1", "legacy"]
#: SQLite's ``auto_vacuum`` modes: 0 none, 1 full, 2 incremental.
AutoVacuum = Literal[0, 1, 2]
#: ``checkpoint(mode)``: SQLite's ``wal_checkpoint`` modes (case-insensitive at runtime).
CheckpointMode = Literal["passive", "full", "restart", "truncate"]

_AUTO_VACUUM_NAMES = {0: "none", 1: "full", 2: "incremental"}


def auto_vacuum_name(mode: int) -> str:
    """``"none"``, ``"full"`` or ``"incremental"`` for SQLite's ``auto_vacuum`` 0, 1, 2;
    any other value as its number. The command line prints it this way everywhere."""
    return _AUTO_VACUUM_NAMES.get(mode, str(mode))


class SpawnInfo(NamedTuple):
    """What ``get_agent_spawn_info`` returns: still a 2-tuple ``(phase_type, stage)``."""

    phase_type: str
    stage: str


class AgentRoute(NamedTuple):
    """What ``get_agent_route`` returns: the predecessor's routing read, a 3-tuple
    ``(phase_type, stage, branch_id)``; ``branch_id`` is None for a spawn without one."""

    phase_type: str
    stage: str
    branch_id: Optional[str]


class Rows(list[tuple[Any, ...]]):
    """The rows of ``query()``: a list of tuples (index them by position as before),
    with the statement's column names in :attr:`columns`."""

    __slots__ = ("columns",)

    columns: tuple[str, ...]

    def __init__(self, rows: Any = (), columns: Any = ()) -> None:
        super().__init__(rows)
        self.columns = tuple(columns)

    def dicts(self) -> list[dict[str, Any]]:
        """Each row as ``{column: value}`` (a later duplicate column name wins)."""
        return [dict(zip(self.columns, row, strict=False)) for row in self]

    def __repr__(self) -> str:
        return f"Rows({list.__repr__(self)}, columns={self.columns!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Rows, (list(self), self.columns))


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _utc_from_ms(ms: int) -> _dt.datetime:
    """An aware UTC datetime from Unix milliseconds (exact: no float rounding)."""
    return _EPOCH + _dt.timedelta(milliseconds=ms)


def _utc_from_text(text: Optional[str]) -> Optional[_dt.datetime]:
    """An aware UTC datetime from the legacy ``YYYY-MM-DD HH:MM:SS`` text (ISO 8601
    variants too); ``None`` for ``None``. A value that is no date raises ValueError."""
    if text is None:
        return None
    value = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value.replace(tzinfo=_dt.timezone.utc) if value.tzinfo is None else value.astimezone(_dt.timezone.utc)


def _json_items(text: Optional[str]) -> list[Any]:
    """A synthesis's ``agreements``/``conflicts`` as a list: ``None`` is ``[]``, a JSON
    array its items, any other JSON value a one-item list; legacy free text that is not
    JSON comes back as ``[text]`` (as the predecessor stored it)."""
    if text is None:
        return []
    try:
        value = _json.loads(text)
    except ValueError:
        return [text]
    return value if isinstance(value, list) else [value]


class Stats(TypedDict):
    """File statistics (``stats()``; also the ``before``/``after`` of a vacuum)."""

    page_size: int
    page_count: int
    freelist_count: int
    free_fraction: float
    file_size: int
    wal_size: int


class HealthReport(Stats):
    """``health()``: statistics plus rows per table, modes and ``needs_vacuum``."""

    rows: dict[str, int]
    rows_estimated: list[str]
    """The tables whose figure in ``rows`` is an estimate (``health(exact=True)`` counts)."""
    journal_mode: str
    auto_vacuum: int
    schema_version: int
    shape: str
    needs_vacuum: bool
    vacuum_threshold: float
    path: str
    reader: Optional[ReaderStats]
    """The dual-schema reader's counters since this store opened (None on PostgreSQL)."""


class PostgresHealthReport(TypedDict):
    """``health()`` on PostgreSQL: rows per table, the database's size and server version,
    and the SQLite report's keys where they mean something. ``needs_vacuum`` is False
    (autovacuum reclaims space); ``journal_mode``, ``auto_vacuum`` and ``reader`` are None."""

    backend: Literal["postgresql"]
    rows: dict[str, int]
    rows_estimated: list[str]
    """The tables whose figure in ``rows`` is the planner's estimate (``exact=True`` counts)."""
    database_size: int
    server_version: str
    schema_version: int
    layout_revision: int
    shape: Literal["postgresql"]
    needs_vacuum: bool
    vacuum_threshold: float
    journal_mode: None
    auto_vacuum: None
    path: str
    """The URL, its secrets masked."""
    reader: None


class CheckpointReport(TypedDict):
    """``checkpoint()``: the mode run, ``PRAGMA wal_checkpoint``'s three numbers, and
    ``blocked``: why it left WAL frames uncopied (another connection's reader), or None."""

    mode: str
    busy: int
    log_frames: int
    checkpointed_frames: int
    blocked: Optional[str]


class VacuumReport(TypedDict):
    """``vacuum()``: what an incremental or full vacuum did. No field is negative unless
    its name says it is a change (after minus before)."""

    full: bool
    before: Stats
    after: Stats
    pages_freed: int
    """Pages the database gave up; never negative."""
    page_count_change: int
    bytes_reclaimed: int
    """``pages_freed`` × page size: what the main file gives back once the WAL is checkpointed."""
    file_bytes_before: int
    file_bytes_after: int
    wal_bytes_before: int
    wal_bytes_after: int
    disk_bytes_change: int
    """Main file plus WAL, after minus before."""
    checkpoint: Optional[CheckpointReport]
    """The checkpoint run after the vacuum (None in memory)."""
    checkpoint_blocked: Optional[str]
    """Why that checkpoint left WAL frames (the file keeps its size until a later one), or None."""


class PostgresVacuumReport(TypedDict):
    """``vacuum()`` on PostgreSQL: ``VACUUM (ANALYZE)`` ran, ``FULL`` when ``full``."""

    full: bool
    backend: Literal["postgresql"]


class PoolState(TypedDict):
    """``pool_state()``: connections open and idle, and the pool's maximum size."""

    connections: int
    idle: int
    max_size: int


class OpenReport(TypedDict):
    """``open_report``: what opening did to the file."""

    auto_vacuum_converted: Optional[tuple[str, str]]
    journal_mode_changed: Optional[tuple[str, str]]
    migrated: Optional[tuple[int, int]]
    shape: str
    layout_updated: bool
    rows_moved: RowsMoved
    layout_steps: list[str]


class RowsMoved(TypedDict):
    """``rows_moved``: what a migration copied between the schemas (rows, per kind)."""

    artifacts_backfilled: int
    syntheses_backfilled: int
    artifacts_written_back: int
    syntheses_written_back: int


class LaneStats(TypedDict):
    """``lane_stats()``: the write lane's counters; ``sizes`` maps group size to commits."""

    groups: int
    members: int
    holds: int
    queued: int
    sizes: dict[int, int]


class WaitResult(TypedDict):
    """``wait_for_agents()``: the agents waited for, each list in the set's order.

    ``completed`` recorded a completion, ``failed`` an extraction failure (finished
    too), ``pending`` neither yet (not spawned, running, or an execution of another
    stage or branch). ``quorum`` is how many finished agents the wait needed (all of
    ``expected`` without one); ``timed_out`` says the timeout came first."""

    spec_id: str
    stage: str
    run_id: Optional[str]
    branch_id: Optional[str]
    expected: list[str]
    completed: list[str]
    failed: list[str]
    pending: list[str]
    quorum: int
    timed_out: bool


class PathLatency(TypedDict):
    """One read path's latency in microseconds: percentiles are histogram estimates
    (within 12.5%), ``max`` is exact."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float


class ReadPathLatency(TypedDict):
    """``reader_stats()["latency_us"]``: per read path — ``v1`` (the new tables alone),
    ``legacy`` (legacy rows returned: the fallback), ``empty`` (nothing found)."""

    v1: PathLatency
    legacy: PathLatency
    empty: PathLatency


class ReaderStats(TypedDict):
    """``reader_stats()``: which schema served the dual-schema reads (a read with rows
    from both counts in ``v1`` and ``legacy``), every read once in ``reads``, the share
    that fell back to legacy rows, and each path's latency."""

    v1: int
    legacy: int
    empty: int
    reads: int
    fallback_rate: float
    latency_us: ReadPathLatency


class CycleReport(TypedDict):
    """One background maintenance cycle, as passed to ``on_cycle``."""

    cycle: int
    executions_deleted: int
    pages_freed: int
    checkpointed: bool
    checkpoint_mode: Optional[CheckpointMode]
    """The checkpoint's mode: ``"truncate"``, or ``"passive"`` while a replica is attached."""
    error: Optional[str]


class SchemaGroup(TypedDict):
    """One spec/stage's rows of one kind in ``verify_schemas()``: counts and SHA-256
    hashes (hex) of each side's rows as the API returns them, sorted."""

    kind: Literal["artifacts", "syntheses"]
    spec_id: str
    stage: str
    legacy_count: int
    v1_count: int
    legacy_hash: str
    v1_hash: str
    matches: bool


class SchemaMismatch(TypedDict):
    """A row of ``verify_schemas()`` without its copy on the other side, or a pair whose
    ``fields`` differ."""

    kind: Literal["artifacts", "syntheses"]
    spec_id: str
    stage: str
    problem: Literal["legacy_only", "v1_only", "differs"]
    legacy_id: Optional[int]
    v1_id: Optional[int]
    fields: list[str]


class SchemaReport(TypedDict):
    """``verify_schemas()``: the legacy tables against the new ones. ``comparable`` is
    False (and ``reason`` says why) when the file has only one schema."""

    comparable: bool
    reason: Optional[str]
    consistent: bool
    groups: list[SchemaGroup]
    mismatches: list[SchemaMismatch]


class LegacyRowProblem(TypedDict):
    """``legacy_row_problems()``: a legacy value that had to be converted to be read."""

    table: str
    id: int
    column: str
    problem: str
