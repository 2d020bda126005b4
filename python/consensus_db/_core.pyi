"""Type stubs for the Rust extension module ``consensus_db._core``.

Kept true to the compiled module by ``stubtest`` (``tests/run_all.sh``; allowlist in
``tests/stubtest_allowlist.txt``) and ``tests/test_stub.py``. Defaults shown here are the
runtime's (``DEFAULTS`` holds them; the text signatures of the Rust methods carry them).
"""

import datetime
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias, final

from typing_extensions import Self, disjoint_base

from consensus_db.results import (
    AgentRoute,
    Behavior,
    CheckpointMode,
    CheckpointReport,
    CycleReport,
    HealthReport,
    LaneStats,
    LegacyRowProblem,
    OpenReport,
    PhaseType,
    PoolState,
    ReaderStats,
    Rows,
    RowsMoved,
    SchemaReport,
    Source,
    SpawnInfo,
    Stats,
    VacuumReport,
    WaitResult,
)

__all__ = [
    "Database",
    "Transaction",
    "Savepoint",
    "Artifact",
    "Synthesis",
    "ExtractionFailure",
    "AgentExecution",
    "AgentsWaiter",
    "sqlite_version",
    "migrations",
    "redact_url",
    "_panic_for_tests",
    "LEGACY_SCHEMA_SQL",
    "DEFAULT_SCHEMA_VERSION",
    "LATEST_SCHEMA_VERSION",
    "__version__",
    "DEFAULTS",
]

_Path: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]
_Params: TypeAlias = Sequence[Any] | Mapping[str, Any] | None
_OnDone: TypeAlias = Callable[[Any, BaseException | None], object]

LEGACY_SCHEMA_SQL: Final[str]
DEFAULT_SCHEMA_VERSION: Final[int]
LATEST_SCHEMA_VERSION: Final[int]
DEFAULTS: Final[dict[str, Any]]
__version__: Final[str]

def sqlite_version() -> str:
    """The SQLite library version linked into the extension."""

def migrations() -> list[tuple[int, str]]:
    """(version, description) of every known migration, in order."""

def redact_url(url: str) -> str:
    """A PostgreSQL URL (or ``key=value`` connection string) with every secret masked:
    the password of ``user:password@`` and the values of ``password``, ``sslpassword``,
    ``passfile`` and ``sslkey`` become ``***``. What the store shows as its ``path``."""

def _panic_for_tests() -> None: ...

@final
class Artifact:
    """One agent's extracted JSON output for a spec/stage (immutable, picklable)."""

    def __new__(
        cls,
        id: int,
        spec_id: str,
        stage: str,
        agent_name: str,
        content_json: str,
        response_text: str | None = None,
        run_id: str | None = None,
        created_at_ms: int = 0,
        model_version: str | None = None,
        source: Source = "v1",
    ) -> Self: ...
    @property
    def id(self) -> int: ...
    @property
    def spec_id(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def agent_name(self) -> str: ...
    @property
    def content_json(self) -> str: ...
    @property
    def response_text(self) -> str | None: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def created_at(self) -> str:
        """UTC ``YYYY-MM-DD HH:MM:SS``, whichever schema the row came from."""
    @property
    def created_at_ms(self) -> int:
        """When the row was written, Unix milliseconds (UTC)."""
    @property
    def created_at_datetime(self) -> datetime.datetime:
        """``created_at_ms`` as an aware ``datetime`` in UTC."""
    @property
    def model_version(self) -> str | None: ...
    @property
    def source(self) -> Source:
        """Which schema the row was read from: ``"v1"`` or ``"legacy"``."""
    @property
    def cursor(self) -> str:
        """This row's position in ``query_artifacts``' order: pass it as ``after=`` (or
        ``before=``) for the page that follows (or precedes) it. Opaque."""
    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
    def content(self) -> Any:
        """``content_json`` parsed."""
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class Synthesis:
    """The merged result of a consensus run (immutable, picklable)."""

    def __new__(
        cls,
        id: int,
        spec_id: str,
        stage: str,
        output_markdown: str,
        output_path: str | None = None,
        status: str = "success",
        artifacts_count: int | None = None,
        agreements: str | None = None,
        conflicts: str | None = None,
        degraded: bool = False,
        run_id: str | None = None,
        created_at_ms: int = 0,
        source: Source = "v1",
    ) -> Self: ...
    @property
    def id(self) -> int: ...
    @property
    def spec_id(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def output_markdown(self) -> str: ...
    @property
    def output_path(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def artifacts_count(self) -> int | None: ...
    @property
    def agreements(self) -> str | None:
        """The agreements as stored (JSON text); see :meth:`agreement_list`."""
    @property
    def conflicts(self) -> str | None:
        """The conflicts as stored (JSON text); see :meth:`conflict_list`."""
    @property
    def degraded(self) -> bool: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def created_at(self) -> str:
        """UTC ``YYYY-MM-DD HH:MM:SS``, whichever schema the row came from."""
    @property
    def created_at_ms(self) -> int:
        """When the synthesis was written, Unix milliseconds (UTC)."""
    @property
    def created_at_datetime(self) -> datetime.datetime:
        """``created_at_ms`` as an aware ``datetime`` in UTC."""
    @property
    def source(self) -> Source:
        """Which schema the row was read from: ``"v1"`` or ``"legacy"``."""
    def agreement_list(self) -> list[Any]:
        """``agreements`` parsed: a list (``[]`` when there are none; legacy free text
        that is not JSON comes back as a one-item list)."""
    def conflict_list(self) -> list[Any]:
        """``conflicts`` parsed, as :meth:`agreement_list` parses ``agreements``."""
    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class AgentExecution:
    """An agent execution as the routing table holds it (immutable, picklable)."""

    def __new__(
        cls,
        agent_id: str,
        spec_id: str,
        stage: str,
        phase_type: str,
        agent_name: str,
        run_id: str | None,
        branch_id: str | None,
        spawned_at: str,
        completed_at: str | None,
        response_text: str | None,
    ) -> Self: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def spec_id(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def phase_type(self) -> str: ...
    @property
    def agent_name(self) -> str: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def branch_id(self) -> str | None: ...
    @property
    def spawned_at(self) -> str: ...
    @property
    def completed_at(self) -> str | None: ...
    @property
    def response_text(self) -> str | None: ...
    @property
    def spawned_at_datetime(self) -> datetime.datetime:
        """``spawned_at`` (UTC text) as an aware ``datetime`` in UTC."""
    @property
    def cursor(self) -> str:
        """This row's position in ``query_agent_executions``' order (``after=``/``before=``):
        one position among the stage's executions, with or without a ``branch_id``. Opaque."""
    @property
    def completed_at_datetime(self) -> datetime.datetime | None:
        """``completed_at`` as an aware ``datetime`` in UTC, or None."""
    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class ExtractionFailure:
    """An agent execution whose output could not be parsed as JSON (immutable, picklable)."""

    def __new__(
        cls,
        agent_id: str,
        spec_id: str,
        stage: str,
        phase_type: str,
        agent_name: str,
        run_id: str | None,
        spawned_at: str,
        completed_at: str | None,
        response_text: str | None,
        extraction_error: str,
    ) -> Self: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def spec_id(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def phase_type(self) -> str: ...
    @property
    def agent_name(self) -> str: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def spawned_at(self) -> str:
        """UTC ``YYYY-MM-DD HH:MM:SS``."""
    @property
    def spawned_at_datetime(self) -> datetime.datetime:
        """``spawned_at`` as an aware ``datetime`` in UTC."""
    @property
    def completed_at(self) -> str | None: ...
    @property
    def cursor(self) -> str:
        """This row's position in ``query_extraction_failures``' order (``after=``/``before=``). Opaque."""
    @property
    def completed_at_datetime(self) -> datetime.datetime | None:
        """``completed_at`` as an aware ``datetime`` in UTC, or None."""
    @property
    def response_text(self) -> str | None: ...
    @property
    def extraction_error(self) -> str: ...
    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class Savepoint:
    """``with tx.savepoint():`` undoes only its own part when the block raises."""

    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: object = None, _exc: object = None, _tb: object = None) -> Literal[False]: ...

@final
class Transaction:
    """``with db.transaction() as tx:`` commits on success, rolls back on any exception."""

    @property
    def lastrowid(self) -> int:
        """The rowid of the last row inserted through this transaction."""
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: object = None, _exc: object = None, _tb: object = None) -> Literal[False]: ...
    def execute(self, sql: str, params: _Params = None) -> int:
        """Runs one statement; returns the number of rows it changed."""
    def executemany(self, sql: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> int:
        """Runs one statement once per parameter row; returns the rows changed in all."""
    def query(self, sql: str, params: _Params = None) -> Rows:
        """Runs a query; returns :class:`~consensus_db.Rows` (tuples with ``columns``)."""
    def savepoint(self) -> Savepoint:
        """A nested savepoint."""

@final
class AgentsWaiter:
    """A wait in steps, for the async twin: ``start()`` (subscribes: the watcher is up),
    then ``check(timed_out)`` — a ``WaitResult`` when the wait is over, else None —
    and ``on_change(callback)`` between checks, until ``close()``."""

    def start(self) -> None:
        """Subscribes to the store's changes (starting its watcher if none runs); blocks
        until the watcher has its baseline."""
    def check(self, timed_out: bool) -> WaitResult | None:
        """One check (one query): the ``WaitResult`` if the wait is over — satisfied, or
        ``timed_out`` — else None."""
    def on_change(self, callback: Callable[[BaseException | None], object]) -> None:
        """Calls ``callback(None)`` once the store changed after the last check, or
        ``callback(ClosedError(...))`` when it closes — on the thread that saw it (at once,
        here, if that already happened). The callback must not block."""
    def close(self) -> None:
        """Ends the subscription (the watcher stops with the last one). Idempotent."""

@disjoint_base
class Database:
    """The engine: a pool of SQLite connections. Use :class:`consensus_db.Store`
    (``consensus_db.connect``), which subclasses it."""

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        """Which backend serves this store: ``"sqlite"`` (a file) or ``"postgresql"`` (a ``postgresql://`` URL)."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    @property
    def path(self) -> str:
        """The path as given (undecodable bytes as surrogate escapes, like ``os.fsdecode``)."""
    @property
    def read_only(self) -> bool:
        """Whether the store was opened read-only."""
    @property
    def in_memory(self) -> bool:
        """Whether the store is an in-memory database (``":memory:"``)."""
    @property
    def writer_queue(self) -> str | None:
        """The host-wide writer queue's file (``<database>-writer``) while this store's writes
        take their turn in it; None in memory, read-only, on PostgreSQL, where the file cannot
        be created, or on a filesystem without OFD locks."""
    @property
    def open_report(self) -> OpenReport:
        """What opening did: auto_vacuum conversion, journal mode change, migration."""
    @property
    def rows_moved(self) -> RowsMoved:
        """What the last migration of this store (opening's, or `migrate()`'s) copied between
        the schemas: legacy rows backfilled into the new tables and new rows written back
        into the legacy ones, per kind, counted inside each step's transaction (never the
        runs made to hold them, nor rows other writers added meanwhile). All zero on
        PostgreSQL, which has no legacy tables."""
    @property
    def schema_version(self) -> int:
        """``PRAGMA user_version``: 0 legacy, 1 legacy and new tables, 2 legacy dropped."""
    @property
    def maintenance_cycles(self) -> int | None:
        """Cycles completed by the running maintenance thread, or None."""
    @property
    def retry_count(self) -> int:
        """Retries the engine made for this store (busy databases, pool timeouts)."""
    def __new__(
        cls,
        path: _Path,
        *,
        pool_size: int = 10,
        min_idle: int = 1,
        checkout_timeout: float = 10.0,
        read_only: bool = False,
        create: bool = True,
        migrate: bool | int = True,
        pragmas: Mapping[str, Any] | None = None,
        convert_auto_vacuum: bool = True,
        uri: bool = False,
        replicated: bool = False,
        retry: Any = ...,
        write_mode: Literal["v1", "dual"] = "v1",
        read_mode: Literal["dual", "v1", "legacy"] = "dual",
    ) -> Self: ...
    @property
    def write_mode(self) -> Literal["v1", "dual"]:
        """The schemas this store writes: "v1" (the new tables) or "dual" (both, linked)."""
    @property
    def read_mode(self) -> Literal["dual", "v1", "legacy"]:
        """The schemas this store reads: "dual" (new, then legacy rows without a copy), "v1" or "legacy"."""
    def __enter__(self) -> Self:
        """``with`` returns the store itself; leaving the block closes it."""
    def __exit__(self, *_args: object) -> Literal[False]:
        """Closes the store; never swallows the block's exception."""
    def close(self) -> None:
        """Stops maintenance and closes every pooled connection. Idempotent."""
    def pragmas(self) -> dict[str, int | str]:
        """Every configured pragma's current value."""
    def verify_pragmas(self) -> None:
        """Re-reads every configured pragma; raises ``PragmaVerificationError`` on a mismatch."""
    def pool_state(self) -> PoolState:
        """Connections open and idle in the pool, and its maximum size."""
    def lane_stats(self) -> LaneStats:
        """The write lane's counters: group commits, writes they carried, holds, queued."""
    def transaction(self, behavior: Behavior = "immediate") -> Transaction:
        """A transaction block: commits on success, rolls back on any exception."""
    def execute(self, sql: str, params: _Params = None) -> int:
        """Runs one statement in its own IMMEDIATE transaction; returns rows changed."""
    def query(self, sql: str, params: _Params = None) -> Rows:
        """Runs a query outside any transaction; returns :class:`~consensus_db.Rows`."""
    def migrate(
        self, target: int | None = None, *, force: bool = False, in_flight_age: float = 3600.0, dry_run: bool = False
    ) -> int:
        """Migrates to ``target`` (up or down); without one, up to the default version.
        Returns the version reached. Moving down loses no row: rows only the new tables
        hold are written back into the legacy tables first. A move that drops or
        downgrades tables raises ``ExecutionsInFlightError`` while agents spawned within
        ``in_flight_age`` seconds have not completed, unless ``force``. With ``dry_run``
        (a ``target`` needed) nothing moves: what the move would refuse is raised, else
        ``target`` returned; a read-only store can check."""
    def verify_schemas(self) -> SchemaReport:
        """The legacy tables against the new ones, per spec/stage: counts, content hashes
        and the rows that differ, with their ids. Reads one snapshot; writes nothing."""
    def legacy_row_problems(self) -> list[LegacyRowProblem]:
        """Legacy rows whose values had to be converted to be read."""
    def record_agent_spawn(
        self,
        agent_id: str,
        spec_id: str,
        stage: str,
        phase_type: PhaseType,
        agent_name: str,
        run_id: str | None = None,
        branch_id: str | None = None,
    ) -> None:
        """Records a spawned agent; ``spawned_at`` is now (UTC). ``branch_id``: the
        pipeline branch it serves; a file without that column refuses one, naming it."""
    def record_agent_spawn_async(
        self,
        on_done: _OnDone,
        agent_id: str,
        spec_id: str,
        stage: str,
        phase_type: PhaseType,
        agent_name: str,
        run_id: str | None = None,
        branch_id: str | None = None,
    ) -> None:
        """``record_agent_spawn`` without waiting: ``on_done(None, error)`` is called by
        the thread that commits the write. No retry."""
    def get_agent_spawn_info(self, agent_id: str) -> SpawnInfo | None:
        """``SpawnInfo(phase_type, stage)`` of a spawned agent, or None."""
    def get_agent_route(self, agent_id: str) -> AgentRoute | None:
        """``AgentRoute(phase_type, stage, branch_id)`` of a spawned agent, or None
        (``branch_id`` None: spawned without one, or the file has no branch column)."""
    def query_agent_executions(
        self,
        spec_id: str,
        stage: str,
        branch_id: str | None = None,
        *,
        order: Literal["newest", "oldest"] = "newest",
        limit: int | None = None,
        after: str | None = None,
        before: str | None = None,
    ) -> list[AgentExecution]:
        """The executions of a spec's stage, newest spawn first (ties by agent id, last
        first; ``order="oldest"`` reverses both), at most ``limit``. With a
        ``branch_id``, only that branch's; None: every execution of the stage.
        ``after=``/``before=`` a row's ``cursor``: a page, as ``query_artifacts`` takes it."""
    def get_agent_name(self, agent_id: str) -> str | None:
        """The agent name a spawned agent was recorded with, or None."""
    def record_agent_completion(self, agent_id: str, response_text: str) -> bool:
        """Records an agent's response and completion time; False when the agent is unknown."""
    def record_agent_completion_async(self, on_done: _OnDone, agent_id: str, response_text: str) -> None:
        """``record_agent_completion`` without waiting (see ``record_agent_spawn_async``)."""
    def record_extraction_failure(self, agent_id: str, response_text: str, extraction_error: str) -> bool:
        """Records a completion whose output could not be parsed; False when unknown."""
    def expect_agents(
        self, spec_id: str, stage: str, run_id: str, agent_ids: Sequence[str], *, branch_id: str | None = None
    ) -> int:
        """Declares the agents a run of a stage waits for (``wait_for_agents(run_id=...)``),
        persisted in the store so a wait started before every agent is spawned, or by
        another process, waits for all of them. Declaring the same agents again writes
        nothing; new agents extend the set; an agent id another set expects is refused
        (``InvalidInputError`` naming ``agent_ids``), and then nothing is written. Returns
        how many agents were added."""
    def wait_for_agents(
        self,
        spec_id: str,
        stage: str,
        *,
        agent_ids: Sequence[str] | None = None,
        run_id: str | None = None,
        branch_id: str | None = None,
        quorum: int | None = None,
        timeout: float | None = None,
    ) -> WaitResult:
        """Waits until the agents' executions of the stage are finished — all of them, or
        ``quorum`` — and returns a ``WaitResult``: which completed, which failed (a recorded
        extraction failure counts as finished), which are pending, and ``timed_out``. The
        agents are ``agent_ids=[...]`` or the set ``expect_agents`` declared for ``run_id``
        (exactly one of the two; ``branch_id`` scopes either, and alone is refused).
        ``timeout`` in seconds: None waits without limit, 0 checks once; on timeout the
        result has ``timed_out=True`` and the pending agents (no exception). Woken by
        commits of this process and, through one watcher per store (a connection of its
        own, alive while someone waits), of other processes; each wake-up checks with one
        query. ``close()`` wakes it with ``ClosedError``."""
    def agents_waiter(
        self,
        spec_id: str,
        stage: str,
        *,
        agent_ids: Sequence[str] | None = None,
        run_id: str | None = None,
        branch_id: str | None = None,
        quorum: int | None = None,
    ) -> AgentsWaiter:
        """A wait in steps (``AgentsWaiter``: ``start``, ``check``, ``on_change``, ``close``), which
        ``AsyncStore.wait_for_agents`` runs and another event loop can too; the arguments
        are ``wait_for_agents``'s, checked here (no I/O)."""
    def query_extraction_failures(
        self,
        spec_id: str,
        *,
        order: Literal["newest", "oldest"] = "newest",
        limit: int | None = None,
        after: str | None = None,
        before: str | None = None,
    ) -> list[ExtractionFailure]:
        """The spec's executions with an extraction error, newest spawn first (ties by
        agent id, last first); ``order="oldest"`` for oldest first. ``limit``,
        ``after=``, ``before=``: a page, as ``query_artifacts`` takes them."""
    def cleanup_old_executions(self, days: int, *, progress: Callable[[int, int], object] | None = None) -> int:
        """Deletes executions spawned more than ``days`` days ago; returns how many. On SQLite
        in chunks of ~10 ms, writers in between: ``progress(done, total)`` after each chunk
        (rows deleted so far, of how many); returning False stops after that chunk, an
        exception stops there and is raised (what was deleted stays deleted). The expected
        sets (``expect_agents``) declared more than ``days`` days ago go too (not counted)."""
    def store_artifact(
        self,
        spec_id: str,
        stage: str,
        agent_name: str,
        content_json: str | Mapping[str, Any] | Sequence[Any],
        *,
        response_text: str | None = None,
        run_id: str | None = None,
        model_version: str | None = None,
    ) -> int:
        """Stores one agent's output; ``content_json`` is JSON text (validated) or a
        dict/list (serialized). Returns the new id."""
    def store_artifact_async(
        self,
        on_done: _OnDone,
        spec_id: str,
        stage: str,
        agent_name: str,
        content_json: str | Mapping[str, Any] | Sequence[Any],
        *,
        response_text: str | None = None,
        run_id: str | None = None,
        model_version: str | None = None,
    ) -> None:
        """``store_artifact`` without waiting: ``on_done(id, None)`` or ``on_done(None, error)``."""
    def store_artifacts(self, artifacts: Iterable[Mapping[str, Any]]) -> list[int]:
        """Stores many artifacts (mappings with ``store_artifact``'s argument names) in
        one transaction: all or none. Returns their ids."""
    def query_artifacts(
        self,
        spec_id: str,
        stage: str,
        *,
        order: Literal["newest", "oldest"] = "newest",
        limit: int | None = None,
        after: str | None = None,
        before: str | None = None,
    ) -> list[Artifact]:
        """The artifacts of a spec/stage from both schemas, newest first (by time; at one
        time legacy rows before new-schema ones, then by id); ``order="oldest"`` for the
        exact reverse. A page: at most ``limit`` rows (None: all; 0: none), ``after=`` a
        row's ``cursor`` for the rows that follow it in this order, ``before=`` for the
        ``limit`` rows that precede it (still in this order). Every row present when a
        first page was read comes exactly once, whatever is inserted between pages. A
        foreign or garbled cursor, or both ``after`` and ``before``, is an
        ``InvalidInputError`` naming it."""
    def count_artifacts(self, spec_id: str, stage: str) -> int:
        """How many artifacts a spec/stage has: the rows ``query_artifacts`` returns
        (a legacy row with a new-schema twin counts once), counted by SQL on the indexes."""
    def delete_spec_artifacts(self, spec_id: str) -> int:
        """Deletes every artifact of a spec; returns how many."""
    def delete_stage_artifacts(self, spec_id: str, stage: str) -> int:
        """Deletes the artifacts of one stage of a spec; returns how many."""
    def delete_runs(self, spec_id: str, stage: str | None = None) -> int:
        """Deletes whole runs (syntheses and outputs) of a spec, or of one stage."""
    def store_synthesis(
        self,
        spec_id: str,
        stage: str,
        output_markdown: str,
        *,
        output_path: str | None = None,
        status: str = "success",
        artifacts_count: int | None = None,
        agreements: str | Sequence[Any] | Mapping[str, Any] | None = None,
        conflicts: str | Sequence[Any] | Mapping[str, Any] | None = None,
        degraded: bool = False,
        run_id: str | None = None,
    ) -> int:
        """Stores the merged result of a run; returns the new id."""
    def query_latest_synthesis(self, spec_id: str, stage: str) -> Synthesis | None:
        """The newest synthesis of a spec/stage from either schema, or None."""
    def reader_stats(self) -> ReaderStats:
        """How often each schema served the dual-schema reads."""
    def stats(self) -> Stats:
        """Page size and count, free pages and fraction, file and WAL size."""
    def health(self, threshold: float = 0.5, *, exact: bool = False) -> HealthReport:
        """Statistics, rows per table, modes, schema version and ``needs_vacuum``. Rows
        are estimated where counting is dear (the tables in ``rows_estimated``);
        ``exact=True`` counts every one."""
    def vacuum(
        self,
        *,
        full: bool = False,
        pages: int | None = None,
        progress: Callable[[int, int], object] | Callable[[int], object] | None = None,
    ) -> VacuumReport:
        """Reclaims free pages (``pages`` of them, None: all, in chunks; or ``full=True``:
        VACUUM). ``progress(done, total)`` after each chunk (pages freed of those to free);
        ``progress(calls)`` during a full VACUUM, which knows no total. Returning False stops
        the chunks after the current one, or interrupts a full VACUUM."""
    def checkpoint(self, mode: CheckpointMode | None = None) -> CheckpointReport:
        """``PRAGMA wal_checkpoint(MODE)``: None runs TRUNCATE, or PASSIVE on a replicated
        store (which refuses the other modes)."""
    @property
    def replicated(self) -> bool:
        """Whether a replica (Litestream) is attached: checkpoints are PASSIVE only then."""
    def integrity_check(self, quick: bool = False) -> list[str]:
        """``["ok"]`` or the problems found."""
    def backup(self, dest: _Path | None = None) -> str:
        """An online backup into the new file ``dest`` (a str, bytes or os.PathLike, named
        byte for byte as ``connect`` names files; refused if it exists); without ``dest``,
        beside the database under a unique name. Returns the path (``os.fsdecode``'s str)."""
    def start_maintenance(
        self,
        interval_s: float = 300.0,
        *,
        retention_days: int | None = 30,
        vacuum_pages: int | None = 1000,
        checkpoint: bool = True,
        on_cycle: Callable[[CycleReport], object] | None = None,
    ) -> None:
        """Starts the background maintenance thread (retention, incremental vacuum,
        checkpoint every ``interval_s`` seconds)."""
    def stop_maintenance(self) -> None:
        """Stops the maintenance thread; a no-op if none runs."""
