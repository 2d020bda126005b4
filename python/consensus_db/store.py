"""The high-level store: :func:`connect` returns a :class:`Store`.

``Store`` is the Rust ``Database`` class with a thin Python layer: the retry policy
is handed to the engine, which retries busy databases and pool timeouts itself on
every write, ``transaction()`` and opening (with the GIL released, never while the
write lane is held); the background maintenance logs through :mod:`logging` and is
stopped at exit. Reads and writes are the Rust methods themselves.
"""

from __future__ import annotations

import atexit
import dataclasses
import inspect
import logging
import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Optional, TypeVar, Union

from . import _core
from .errors import InvalidInputError
from .results import CycleReport
from .retry import RetryPolicy

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Store", "connect", "DEFAULT_RETRY"]

T = TypeVar("T")
PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
WriteMode = Literal["v1", "dual"]
ReadMode = Literal["dual", "v1", "legacy"]
_DEFAULTS: dict[str, Any] = _core.DEFAULTS  # the engine's defaults, defined once in Rust

#: The retry policy the engine uses unless ``connect(..., retry=...)`` says otherwise:
#: 6 attempts, 100 ms doubling to 1.6 s (the cap is reached), full jitter, within the
#: engine's 10 s deadline.
DEFAULT_RETRY = RetryPolicy(max_attempts=6)

_maintenance_log = logging.getLogger("consensus_db.maintenance")
_retry_log = logging.getLogger("consensus_db.retry")


def _takes_operation(fn: Callable[..., Any]) -> bool:
    """Whether ``on_retry`` takes ``(operation, attempt, delay, error)`` rather than the
    helper's ``(attempt, delay, error)``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 4


def _engine_policy(policy: RetryPolicy) -> RetryPolicy:
    """The policy the engine runs: its ``on_retry`` logs on ``consensus_db.retry``,
    counts in ``policy.stats`` and calls the user's hook — with the operation's name
    first when it takes four arguments, else ``(attempt, delay, error)`` with the name
    on ``error.operation``."""
    user = policy.on_retry
    with_op = user is not None and _takes_operation(user)

    def on_retry(operation: str, attempt: int, delay: float, exc: BaseException) -> None:
        policy.stats._add(retries=1, total_delay=delay)
        _retry_log.warning(
            "%s: attempt %d/%d failed (%s: %s); retrying in %.3fs",
            operation,
            attempt,
            policy.max_attempts,
            type(exc).__name__,
            exc,
            delay,
        )
        if user is None:
            return
        if with_op:
            user(operation, attempt, delay, exc)
        else:
            try:
                exc.operation = operation  # type: ignore[attr-defined]
            except Exception:
                pass
            user(attempt, delay, exc)

    return dataclasses.replace(policy, on_retry=on_retry)


def _log_cycle(report: CycleReport) -> None:
    if report.get("error"):
        _maintenance_log.warning("maintenance cycle %(cycle)d failed: %(error)s", dict(report))
    else:
        _maintenance_log.info(
            "maintenance cycle %(cycle)d: %(executions_deleted)d executions deleted, "
            "%(pages_freed)d pages freed, checkpointed=%(checkpointed)s",
            dict(report),
        )


class Store(_core.Database):
    """A consensus-db store. Open it with :func:`connect`; share it between threads.

    Query ordering: ``query_artifacts`` returns newest first (ties by id, newest first);
    ``query_extraction_failures`` newest spawn first; ``order="oldest"`` reverses both;
    ``query_latest_synthesis`` the
    newest synthesis. Reads see both schemas (see the dual-schema reader in docs/how-it-works.md).

    Paging: ``query_artifacts``, ``query_agent_executions`` and
    ``query_extraction_failures`` take ``limit`` and ``after=``/``before=`` a returned
    row's ``cursor`` (keyset pages, stable under concurrent inserts);
    ``iter_artifacts`` streams a stage's artifacts page by page.
    """

    retry_policy: Optional[RetryPolicy]
    """The policy the engine retries with (``None``: retrying is off)."""

    def __new__(cls, path: PathLike, *, retry: Optional[RetryPolicy] = DEFAULT_RETRY, **options: Any) -> Self:
        if retry is not None and not isinstance(retry, RetryPolicy):  # refused before the file is opened
            raise InvalidInputError(f"invalid retry: must be a RetryPolicy or None, got {type(retry).__name__}")
        engine = None if retry is None else _engine_policy(retry)
        return super().__new__(cls, path, retry=engine, **options)

    def __init__(self, path: PathLike, *, retry: Optional[RetryPolicy] = DEFAULT_RETRY, **options: Any) -> None:
        self.retry_policy = retry
        self._stop_at_exit: Optional[Callable[[], None]] = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<consensus_db.Store {self.path!r} ({state})>"

    # ---- listings ------------------------------------------------------------------------

    def iter_artifacts(
        self,
        spec_id: str,
        stage: str,
        *,
        order: Literal["newest", "oldest"] = "newest",
        batch: int = 1000,
    ) -> Iterator[_core.Artifact]:
        """Every artifact of a spec/stage, in ``query_artifacts``' order, read ``batch``
        rows at a time (keyset pages: memory holds one batch, however many rows the stage
        has). Rows inserted meanwhile never make it skip or repeat one: every row present
        when it read its first page comes exactly once. For exports."""
        _check_batch(batch)
        query = self.query_artifacts  # checks spec_id, stage and order on the first page
        return _pages(lambda after: query(spec_id, stage, order=order, limit=batch, after=after), batch)

    # ---- maintenance ---------------------------------------------------------------------

    def start_maintenance(
        self,
        interval_s: float = _DEFAULTS["maintenance_interval_s"],
        *,
        retention_days: Optional[int] = _DEFAULTS["retention_days"],
        vacuum_pages: Optional[int] = _DEFAULTS["vacuum_pages"],
        checkpoint: bool = _DEFAULTS["checkpoint"],
        on_cycle: Optional[Callable[[CycleReport], object]] = None,
    ) -> None:
        """Starts the background thread: every ``interval_s`` seconds it deletes
        executions older than ``retention_days`` (None: keep all), frees up to
        ``vacuum_pages`` free pages (None: all) and checkpoints the WAL. Each cycle is
        logged on ``consensus_db.maintenance`` and passed to ``on_cycle``."""
        if on_cycle is not None and not callable(on_cycle):
            raise InvalidInputError(f"invalid on_cycle: must be callable, got {type(on_cycle).__name__}")

        def report(cycle: CycleReport) -> None:
            _log_cycle(cycle)
            if on_cycle is not None:
                on_cycle(cycle)

        super().start_maintenance(
            interval_s, retention_days=retention_days, vacuum_pages=vacuum_pages, checkpoint=checkpoint, on_cycle=report
        )
        if self._stop_at_exit is None:
            # The thread calls into Python; stop it before the interpreter goes away.
            ref = weakref.ref(self)

            def stop() -> None:
                store = ref()
                if store is not None:
                    _core.Database.stop_maintenance(store)

            self._stop_at_exit = stop
            atexit.register(stop)

    def stop_maintenance(self) -> None:
        """Stops the maintenance thread (waiting for a running cycle); a no-op if none runs."""
        super().stop_maintenance()
        if self._stop_at_exit is not None:
            atexit.unregister(self._stop_at_exit)
            self._stop_at_exit = None

    def close(self) -> None:
        """Stops maintenance and closes every pooled connection before returning: the
        process then holds no handle on the file (a connection in use by a transaction
        still open closes when it ends). Safe to call from ``on_cycle``. Idempotent."""
        self.stop_maintenance()
        super().close()

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False


def _check_batch(batch: object) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidInputError(f"invalid batch: must be an int of 1 or more, got {batch!r}")


def _pages(page: Callable[[Optional[str]], list[Any]], batch: int) -> Iterator[Any]:
    """The rows of successive pages: each after the last row of the one before."""
    after: Optional[str] = None
    while True:
        rows = page(after)
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].cursor


def connect(
    path: PathLike,
    *,
    pool_size: int = _DEFAULTS["pool_size"],
    read_only: bool = _DEFAULTS["read_only"],
    migrate: Union[bool, int] = True,
    pragmas: Optional[Mapping[str, Any]] = None,
    retry: Optional[RetryPolicy] = DEFAULT_RETRY,
    min_idle: int = _DEFAULTS["min_idle"],
    checkout_timeout: float = _DEFAULTS["checkout_timeout"],
    create: bool = _DEFAULTS["create"],
    convert_auto_vacuum: bool = _DEFAULTS["convert_auto_vacuum"],
    uri: bool = _DEFAULTS["uri"],
    replicated: bool = _DEFAULTS["replicated"],
    write_mode: WriteMode = "v1",
    read_mode: ReadMode = "dual",
    idempotency_days: int = _DEFAULTS["idempotency_days"],
) -> Store:
    """Opens (creating if needed) the store at ``path``; ``":memory:"`` is one in-memory
    database shared by the whole pool.

    - ``migrate``: True brings the schema to the default version, an int to that
      version, False leaves it alone. A newer-than-known schema is refused.
    - ``pragmas``: overrides, e.g. ``{"cache_size": -64000}``; ``None`` as a value leaves that
      pragma at SQLite's default. Every pragma set is verified after opening.
    - ``retry``: a :class:`~consensus_db.retry.RetryPolicy` the engine applies to busy
      databases and pool timeouts on every write, ``transaction()`` and opening (its
      ``max_attempts``, ``initial_delay``, ``max_delay``, ``jitter``, ``sleep``, an
      optional ``deadline`` attribute, default 10 s, and ``on_retry``, called with the
      operation's name); ``None`` turns retrying off. ``db.retry_count`` counts retries.
    - ``convert_auto_vacuum``: an existing database without incremental auto-vacuum is
      converted with a VACUUM on open; False refuses it instead.
    - ``create``: False refuses a missing file instead of creating it.
    - ``path`` is opened exactly as given (``bytes`` byte for byte; a ``str`` as
      ``os.fsencode`` encodes it), even a name starting with ``file:``. With
      ``uri=True`` it is an SQLite URI instead (``"file:data.db?mode=ro"``).
    - ``replicated``: a replica (Litestream, :mod:`consensus_db.replication`) streams
      the file's WAL: checkpoints (``checkpoint()``, ``vacuum()``, the maintenance
      thread) are PASSIVE only and ``busy_timeout`` must be 5000 ms or more. A file
      Litestream has replicated (its ``_litestream_seq`` table) is treated the same way
      without the flag; ``db.replicated`` tells which applies.
    - ``write_mode`` and ``read_mode``: the rolling upgrade's switches (see
      docs/rolling-upgrades.md). ``write_mode="dual"`` writes every artifact and synthesis to
      the new tables *and* the legacy ones in one transaction, linked, so an old binary
      on the same file sees everything; turning it on first writes back the rows only
      the new tables hold. It needs the legacy tables (a file at schema version 1).
      ``read_mode``: ``"dual"`` (new tables, then legacy rows without a copy), ``"v1"``
      (no fallback) or ``"legacy"`` (new-schema reads off).
    - ``idempotency_days``: how long an idempotency key (``store_artifact(...,
      idempotency_key=)``, ``store_synthesis``, ``store_artifacts`` items) is kept,
      1 to 36500 days; a repeat within it returns the first write's id (``docs/claims.md``).
    """
    return Store(
        path,
        retry=retry,
        pool_size=pool_size,
        min_idle=min_idle,
        checkout_timeout=checkout_timeout,
        read_only=read_only,
        create=create,
        migrate=migrate,
        pragmas=pragmas,
        convert_auto_vacuum=convert_auto_vacuum,
        uri=uri,
        replicated=replicated,
        write_mode=write_mode,
        read_mode=read_mode,
        idempotency_days=idempotency_days,
    )
