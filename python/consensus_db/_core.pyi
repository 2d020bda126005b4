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
    "Claim",
    "AgentsWaiter",
    "sqlite_version",
    "migrations",
    "redact_url",
    "_panic_for_tests",
    "_report_fields",
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
    """A PostgreSQL URL (or `key=value` connection string) with every secret masked:
    the password of `user:password@` and the values of `password`, `sslpassword`,
    `passfile` and `sslkey` become `***`. What the store shows as its `path`."""

def _panic_for_tests() -> None: ...
def _report_fields() -> dict[str, list[str]]: ...

@final
class Artifact:
    """One agent's extracted JSON output for a spec/stage."""

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
        """UTC `YYYY-MM-DD HH:MM:SS`, whichever schema the row came from."""
    @property
    def created_at_ms(self) -> int:
        """When the row was written, Unix milliseconds (UTC); see [`Artifact::created_at`]."""
    @property
    def created_at_datetime(self) -> datetime.datetime:
        """`created_at_ms` as an aware `datetime` in UTC."""
    @property
    def model_version(self) -> str | None: ...
    @property
    def source(self) -> Source:
        """[`SOURCE_V1`] or [`SOURCE_LEGACY`]."""
    @property
    def cursor(self) -> str:
        """This row's position in `query_artifacts`' order: pass it as `after=` (or
        `before=`) for the page that follows (or precedes) it. Opaque."""
    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
    def content(self) -> Any:
        """`content_json` parsed."""
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class Claim:
    """A claim on a stage (`claim_stage`): its owner alone may advance the stage while the
    lease is live. `token` fences it: strictly increasing per (spec_id, stage,
    branch_id), never reused, so a write under an older token is refused."""

    def __new__(
        cls,
        spec_id: str,
        stage: str,
        owner: str,
        token: int,
        *,
        branch_id: str | None = None,
        run_id: str | None = None,
        lease_ms: int = 0,
        claimed_at_ms: int = 0,
        expires_at_ms: int = 0,
        took_over_from: str | None = None,
    ) -> Self: ...
    @property
    def spec_id(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def branch_id(self) -> str | None: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def owner(self) -> str: ...
    @property
    def token(self) -> int:
        """The fencing token: strictly increasing per (spec_id, stage, branch_id)."""
    @property
    def lease_ms(self) -> int:
        """The lease's length, milliseconds (what a renewal without `lease_s` grants)."""
    @property
    def lease_s(self) -> float:
        """The lease's length in seconds."""
    @property
    def claimed_at_ms(self) -> int:
        """When it was taken, Unix milliseconds on the database's clock."""
    @property
    def expires_at_ms(self) -> int:
        """When the lease ends unless renewed, Unix milliseconds on the database's clock."""
    @property
    def took_over_from(self) -> str | None:
        """The owner whose claim this one replaced without a release (its lease had
        expired, or the same owner claimed again), or None."""
    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class Synthesis:
    """The merged result of a consensus run."""

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
        """What the agents agreed on, as stored (JSON text; see `agreement_list()`)."""
    @property
    def conflicts(self) -> str | None:
        """Where the agents disagreed, as stored (JSON text; see `conflict_list()`)."""
    @property
    def degraded(self) -> bool: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def created_at(self) -> str:
        """UTC `YYYY-MM-DD HH:MM:SS`, whichever schema the row came from."""
    @property
    def created_at_ms(self) -> int:
        """When the synthesis was written, Unix milliseconds (UTC); see [`Synthesis::created_at`]."""
    @property
    def created_at_datetime(self) -> datetime.datetime:
        """`created_at_ms` as an aware `datetime` in UTC."""
    @property
    def source(self) -> Source:
        """[`SOURCE_V1`] or [`SOURCE_LEGACY`]."""
    def agreement_list(self) -> list[Any]:
        """`agreements` parsed: a list (`[]` when there are none; legacy free text that is
        not JSON comes back as a one-item list)."""
    def conflict_list(self) -> list[Any]:
        """`conflicts` parsed, as `agreement_list` parses `agreements`."""
    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class AgentExecution:
    """An agent execution as the routing table holds it: the executions of a stage
    (`query_agent_executions`), one branch's or all of them."""

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
        """`spawned_at` (UTC text) as an aware `datetime` in UTC."""
    @property
    def cursor(self) -> str:
        """This row's position in `query_agent_executions`' order (`after=`/`before=`): one
        position among the stage's executions, with or without a `branch_id`. Opaque."""
    @property
    def completed_at_datetime(self) -> datetime.datetime | None:
        """`completed_at` as an aware `datetime` in UTC, or None."""
    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class ExtractionFailure:
    """An agent execution whose output could not be parsed as JSON."""

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
        """When it was spawned, UTC `YYYY-MM-DD HH:MM:SS`."""
    @property
    def spawned_at_datetime(self) -> datetime.datetime:
        """`spawned_at` (UTC text) as an aware `datetime` in UTC."""
    @property
    def completed_at(self) -> str | None: ...
    @property
    def cursor(self) -> str:
        """This row's position in `query_extraction_failures`' order (`after=`/`before=`). Opaque."""
    @property
    def completed_at_datetime(self) -> datetime.datetime | None:
        """`completed_at` as an aware `datetime` in UTC, or None."""
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
    """`with tx.savepoint():` — undoes only its own part of the transaction when the block raises."""

    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: object = None, _exc: object = None, _tb: object = None) -> Literal[False]: ...

@final
class Transaction:
    """`with db.transaction(behavior) as tx:` — commits when the block ends, rolls back
    when it raises; `tx.execute`/`tx.query` run inside it, `tx.savepoint()` nests."""

    @property
    def lastrowid(self) -> int:
        """The rowid of the last row inserted through this transaction."""
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: object = None, _exc: object = None, _tb: object = None) -> Literal[False]: ...
    def execute(self, sql: str, params: _Params = None) -> int:
        """Runs one statement; returns the number of rows it changed."""
    def executemany(self, sql: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> int:
        """Runs one statement for every parameter row (prepared once); returns rows changed."""
    def query(self, sql: str, params: _Params = None) -> Rows:
        """Runs a query; returns `Rows` (a list of tuples with `columns`)."""
    def savepoint(self) -> Savepoint:
        """A nested savepoint: `with tx.savepoint(): ...` undoes only its own part on error."""

@final
class AgentsWaiter:
    """A wait in steps, for the async twin: `start()` (subscribes: the watcher is up),
    then `check(timed_out)` — a `WaitResult` when the wait is over, else None —
    and `on_change(callback)` between checks, until `close()`."""

    def start(self) -> None:
        """Subscribes to the store's changes (starting its watcher if none runs); blocks
        until the watcher has its baseline."""
    def check(self, timed_out: bool) -> WaitResult | None:
        """One check (one query): the `WaitResult` if the wait is over — satisfied, or
        `timed_out` — else None."""
    def on_change(self, callback: Callable[[BaseException | None], object]) -> None:
        """Calls `callback(None)` once the store changed after the last check, or
        `callback(ClosedError(...))` when it closes — on the thread that saw it (at once,
        here, if that already happened). The callback must not block."""
    def close(self) -> None:
        """Ends the subscription (the watcher stops with the last one). Idempotent."""

@disjoint_base
class Database:
    """The engine: a pool of SQLite connections. Use :class:`consensus_db.Store`
    (``consensus_db.connect``), which subclasses it."""

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        """ "sqlite" or "postgresql"."""
    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
    @property
    def path(self) -> str:
        """The path as given (a str; undecodable bytes as surrogate escapes, like os.fsdecode)."""
    @property
    def read_only(self) -> bool:
        """Whether the store was opened read-only."""
    @property
    def in_memory(self) -> bool:
        """Whether the store is an in-memory database (`":memory:"`)."""
    @property
    def writer_queue(self) -> str | None:
        """The host-wide writer queue's file (`<database>-writer`, a str) while this store's
        writes take their turn in it; None in memory, read-only, on PostgreSQL, where the
        file cannot be created, or on a filesystem without OFD locks."""
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
        """The schema version (`PRAGMA user_version`: 0 legacy, 1 both, 2 legacy dropped)."""
    @property
    def maintenance_cycles(self) -> int | None:
        """Cycles completed by the running maintenance thread, or None."""
    @property
    def retry_count(self) -> int:
        """Retries the engine made for this store (busy databases, pool timeouts), opening included."""
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
        idempotency_days: int = 7,
    ) -> Self: ...
    @property
    def write_mode(self) -> Literal["v1", "dual"]:
        """The schemas this store writes: "v1" (the new tables) or "dual" (both, linked)."""
    @property
    def read_mode(self) -> Literal["dual", "v1", "legacy"]:
        """The schemas this store reads: "dual" (new, then legacy rows without a copy),
        "v1" or "legacy"."""
    def __enter__(self) -> Self:
        """`with` returns the store itself; leaving the block closes it."""
    def __exit__(self, *_args: object) -> Literal[False]:
        """Closes the store; never swallows the block's exception."""
    def close(self) -> None:
        """Stops maintenance and closes every pooled connection before returning (one in
        use by a transaction still open closes when it ends). Idempotent."""
    def pragmas(self) -> dict[str, int | str]:
        """Every configured pragma's current value."""
    def verify_pragmas(self) -> None:
        """Re-reads every configured pragma; raises PragmaVerificationError on a mismatch."""
    def pool_state(self) -> PoolState:
        """Connections open and idle in the pool."""
    def lane_stats(self) -> LaneStats:
        """The write lane's counters: group commits, writes they carried, holds
        (transaction blocks, maintenance), callers waiting now, and `sizes`:
        `{group size: commits}`."""
    def transaction(self, behavior: Behavior = "immediate") -> Transaction:
        """A transaction block: `with db.transaction("immediate") as tx:` commits on success
        and rolls back on any exception. `behavior` is deferred, immediate (the default:
        write transactions begin IMMEDIATE) or exclusive."""
    def execute(self, sql: str, params: _Params = None) -> int:
        """Runs one statement in its own IMMEDIATE transaction; returns rows changed."""
    def query(self, sql: str, params: _Params = None) -> Rows:
        """Runs a query outside any transaction; returns `Rows`: a list of tuples whose
        `columns` attribute names the columns."""
    def migrate(
        self,
        target: int | None = None,
        *,
        force: bool = False,
        in_flight_age: float = 3600.0,
        dry_run: bool = False,
        progress: Callable[[int, int], object] | None = None,
    ) -> int:
        """Migrates to `target`, up or down; without one, up to at least the default
        version, as opening does. Returns the version reached. Moving down loses no row.
        A move that drops or downgrades tables refuses while agents are in flight (spawned
        within `in_flight_age` seconds and not completed) unless `force`. With `dry_run`
        (a `target` needed) nothing moves: what the move would refuse is raised, else the
        target returned; a read-only store can check (as the CLI does before its backup).
        A copy between the schemas (the backfill, a write-back) runs in chunks of ~10 ms,
        writers in between; `progress(done, total)` is called after each with the rows gone
        through so far and an estimate of how many (raised as it is passed). Returning False
        or raising stops the move after that chunk (raised here; what was copied stays,
        linked to its original, and the next move copies the rest). PostgreSQL has no
        such copy and never calls it."""
    def verify_schemas(self) -> SchemaReport:
        """The legacy tables against the new ones, per spec/stage: counts, content hashes and
        the rows that differ, with their ids. Reads one snapshot; writes nothing."""
    def legacy_row_problems(self) -> list[LegacyRowProblem]:
        """Legacy rows whose values had to be converted to be read, one dict each
        (table, id, column, problem)."""
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
        """Records a spawned agent (`phase_type` is quality_gate or regular_stage);
        `spawned_at` is now (UTC). A second spawn of the same `agent_id` replaces it,
        branch included. `branch_id`: the pipeline branch the agent serves (the
        predecessor's resume filter); a file without that column (read-only, or opened
        with migrate=False) refuses a branch, naming the column."""
    def _record_agent_spawn_async(
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
        """`record_agent_spawn` without waiting: the arguments are checked now (an error is
        raised here); the result (None) or the error goes to `on_done(value, error)`,
        called by the thread that commits the write. No retry."""
    def get_agent_spawn_info(self, agent_id: str) -> SpawnInfo | None:
        """`SpawnInfo(phase_type, stage)` of a spawned agent (a named 2-tuple), or None."""
    def get_agent_route(self, agent_id: str) -> AgentRoute | None:
        """`AgentRoute(phase_type, stage, branch_id)` of a spawned agent (a named 3-tuple: the
        predecessor's routing read), or None. `branch_id` is None for a spawn without a
        branch, and on a file without the branch column."""
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
        """The executions of a spec's stage as `AgentExecution` records, newest spawn first
        (ties by agent id, last first); `order="oldest"` for the exact reverse; at most
        `limit` (None: all). With a `branch_id`, only that branch's (what a resume on it
        takes: an abandoned run's branch is left out); `branch_id=None` means every
        execution of the stage, whatever its branch or none. `after=` / `before=` a row's
        `cursor`: the page that follows (or precedes) that row in this order (see
        `query_artifacts`)."""
    def get_agent_name(self, agent_id: str) -> str | None:
        """The agent name a spawned agent was recorded with, or None."""
    def record_agent_completion(self, agent_id: str, response_text: str) -> bool:
        """Records an agent's response and completion time; False when the agent is unknown."""
    def _record_agent_completion_async(self, on_done: _OnDone, agent_id: str, response_text: str) -> None:
        """`record_agent_completion` without waiting (see `_record_agent_spawn_async`)."""
    def record_extraction_failure(self, agent_id: str, response_text: str, extraction_error: str) -> bool:
        """Records a completion whose output could not be parsed as JSON, with the parse
        error; False when the agent is unknown."""
    def expect_agents(
        self, spec_id: str, stage: str, run_id: str, agent_ids: Sequence[str], *, branch_id: str | None = None
    ) -> int:
        """Declares the agents a run of a stage waits for (`wait_for_agents(run_id=...)`),
        persisted in the store so a wait started before every agent is spawned, or by
        another process, waits for all of them. Declaring the same agents again writes
        nothing; new agents extend the set; an agent id another set expects is refused
        (`InvalidInputError` naming `agent_ids`), and then nothing is written. Returns
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
        `quorum` — and returns a `WaitResult`: which completed, which failed (a recorded
        extraction failure counts as finished), which are pending, and `timed_out`. The
        agents are `agent_ids=[...]` or the set `expect_agents` declared for `run_id`
        (exactly one of the two; `branch_id` scopes either, and alone is refused).
        `timeout` in seconds: None waits without limit, 0 checks once; on timeout the
        result has `timed_out=True` and the pending agents (no exception). Woken by
        commits of this process and, through one watcher per store (a connection of its
        own, alive while someone waits), of other processes; each wake-up checks with one
        query. `close()` wakes it with `ClosedError`."""
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
        """A wait in steps (`AgentsWaiter`: `start`, `check`, `on_change`, `close`), which
        `AsyncStore.wait_for_agents` runs and another event loop can too; the arguments
        are `wait_for_agents`'s, checked here (no I/O)."""
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
        agent id, last first); `order="oldest"` for oldest first. `limit`, `after=`,
        `before=`: a page, as `query_artifacts` takes them."""
    def cleanup_old_executions(self, days: int, *, progress: Callable[[int, int], object] | None = None) -> int:
        """Deletes executions spawned more than `days` days ago; returns how many. On SQLite
        they go in chunks of ~10 ms each, writers in between; `progress(done, total)` is
        called after each chunk with the rows deleted so far and of how many (counted
        first). Returning False stops after that chunk, an exception stops there too and
        is raised; what was deleted stays deleted, and a later call deletes the rest. On
        PostgreSQL (one DELETE) `progress` is called once, at the end. The expected sets
        (`expect_agents`) declared more than `days` days ago go too (not counted)."""
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
        idempotency_key: str | None = None,
    ) -> int:
        """Stores one agent's output for a spec/stage; `content_json` is a JSON `str`
        (validated) or a dict/list (serialized). Returns the new id. With
        `idempotency_key`, a repeat of the call returns the first write's id and writes
        nothing; the key with other content raises `IdempotencyKeyError` (`docs/claims.md`)."""
    def _store_artifact_async(
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
        idempotency_key: str | None = None,
    ) -> None:
        """`store_artifact` without waiting (see `_record_agent_spawn_async`): the id goes
        to `on_done(id, None)`."""
    def store_artifacts(self, artifacts: Iterable[Mapping[str, Any]]) -> list[int]:
        """Stores many artifacts (mappings with the `store_artifact` argument names,
        `idempotency_key` included) in one transaction: all or none. An item whose key
        was used gets the first write's id."""
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
        time legacy rows before new-schema ones, then by id, last first); `order="oldest"`
        for the exact reverse. A page: at most `limit` rows (None: all), `after=` a row's
        `cursor` for the rows that follow it in this order (the next page), `before=` for
        the `limit` rows that precede it (the previous page, still in this order). Rows
        inserted between pages never shift one: every row present when the first page was
        read comes exactly once. A cursor of another listing or spec/stage, or one this
        store did not make, is an `InvalidInputError` naming it."""
    def count_artifacts(self, spec_id: str, stage: str) -> int:
        """How many artifacts a spec/stage has (what `query_artifacts` returns), counted by
        SQL on the indexes, without reading the rows."""
    def delete_spec_artifacts(self, spec_id: str) -> int:
        """Deletes every artifact of a spec (both schemas); returns how many."""
    def delete_stage_artifacts(self, spec_id: str, stage: str) -> int:
        """Deletes the artifacts of one stage of a spec (both schemas); returns how many."""
    def delete_runs(self, spec_id: str, stage: str | None = None) -> int:
        """Deletes whole runs (syntheses and outputs) of a spec, or of one of its stages."""
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
        claim: Claim | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Stores the merged result of a run; `agreements`/`conflicts` are JSON text or a
        list/dict (serialized). Returns the new id. `claim`: the stage's claim
        (`claim_stage`), refused with `StaleClaimError` unless it is the stage's newest
        live claim; without one, refused while another owner holds a live claim on the
        stage. `idempotency_key`: as `store_artifact`'s."""
    def claim_stage(
        self,
        spec_id: str,
        stage: str,
        run_id: str | None = None,
        *,
        owner: str,
        lease_s: float,
        branch_id: str | None = None,
    ) -> Claim | None:
        """Claims a stage for `lease_s` seconds (on the database's clock): a `Claim` with
        the stage's next fencing token (strictly increasing per spec/stage/branch, never
        reused), or None while another owner's lease is live. Claiming again as the same
        owner while its own lease is live takes a new token (the earlier claim is then
        stale). See `docs/claims.md`."""
    def renew_claim(self, claim: Claim, *, lease_s: float | None = None) -> Claim:
        """Extends a live claim's lease to now + `lease_s` (None: its own length); returns
        the renewed claim. A claim taken over, expired or released raises
        `StaleClaimError`."""
    def release_claim(self, claim: Claim) -> bool:
        """Ends a claim before its lease: the stage is claimable at once. Returns whether it
        was released (False: it had been taken over or released already)."""
    def query_claims(self, spec_id: str | None = None) -> list[Claim]:
        """The live claims, of one spec or of all, by spec, stage and branch."""
    def query_latest_synthesis(self, spec_id: str, stage: str) -> Synthesis | None:
        """The newest synthesis of a spec/stage from either schema, or None."""
    def reader_stats(self) -> ReaderStats:
        """How often each schema served `query_artifacts` / `query_latest_synthesis`."""
    def stats(self) -> Stats:
        """Page size and count, free pages and fraction, file and WAL size."""
    def health(self, threshold: float = 0.5, *, exact: bool = False) -> HealthReport:
        """Statistics, rows per table, journal mode, auto_vacuum, schema version, and
        `needs_vacuum` (the free fraction is above `threshold`). Rows are counted where
        that is cheap and otherwise estimated — the tables named in `rows_estimated`:
        on SQLite an upper bound from the rowid span (`max(rowid) - min(rowid) + 1`), on
        PostgreSQL the planner's `reltuples`; `exact=True` counts every table (a read of
        every page of each table's smallest index: slow on big files)."""
    def vacuum(
        self,
        *,
        full: bool = False,
        pages: int | None = None,
        progress: Callable[[int, int], object] | Callable[[int], object] | None = None,
    ) -> VacuumReport:
        """Reclaims free pages: `pages` of them incrementally (None: all), in chunks of ~10 ms
        each, writers in between; or the whole file rebuilt in one piece with `full=True`
        (also what runs on a file whose auto_vacuum is not incremental). `progress` is
        called after each chunk as `progress(done, total)`, pages freed so far of those
        to free; during a full VACUUM, which knows no total, as `progress(calls)` every
        thousand SQLite steps (a callback for both takes `total=None`). Returning False
        stops the chunks after the current one (what was freed stays freed), or interrupts
        a full VACUUM (nothing changes). An exception stops the chunks and is raised; in a
        full VACUUM it goes to `sys.unraisablehook` and the VACUUM goes on. Returns
        before/after statistics and what they
        mean: `pages_freed` and `bytes_reclaimed` (pages × page size) are never negative;
        `file_bytes_*`/`wal_bytes_*` are the main file and the WAL before and after, and
        `page_count_change`/`disk_bytes_change` are after minus before; `checkpoint` is the
        checkpoint that follows, `checkpoint_blocked` why it left WAL frames (None: it did not)."""
    def checkpoint(self, mode: CheckpointMode | None = None) -> CheckpointReport:
        """`wal_checkpoint(MODE)`: `mode` is "passive", "full", "restart" or "truncate";
        None runs TRUNCATE, or PASSIVE on a replicated store (which refuses the others).
        `blocked` says why it left WAL frames uncopied (another connection's reader, say), or None."""
    @property
    def replicated(self) -> bool:
        """Whether a replica (Litestream) is attached: opened with `replicated=True`, or
        Litestream's tables are in the file. Checkpoints are PASSIVE only then."""
    def integrity_check(self, quick: bool = False) -> list[str]:
        """`PRAGMA integrity_check` (or `quick_check`): `["ok"]` or the problems found."""
    def backup(self, dest: _Path | None = None) -> str:
        """An online backup into the new file `dest` (a str, bytes or os.PathLike, named byte
        for byte as `connect` names files; refused if anything exists there); without
        `dest`, beside the database under a fresh unique name. Returns the path (a str, as
        `os.fsdecode` gives it)."""
    def start_maintenance(
        self,
        interval_s: float = 300.0,
        *,
        retention_days: int | None = 30,
        vacuum_pages: int | None = 1000,
        checkpoint: bool = True,
        on_cycle: Callable[[CycleReport], object] | None = None,
    ) -> None:
        """Starts the background maintenance thread: retention, incremental vacuum and a
        WAL checkpoint every `interval_s` seconds. `on_cycle(report: dict)` is called
        after each cycle (from the maintenance thread).
        `retention_days` and `vacuum_pages` default to 30 and 1000 when omitted; None
        turns retention off and frees every free page."""
    def stop_maintenance(self) -> None:
        """Stops the maintenance thread (waiting for a running cycle); a no-op if none runs."""
