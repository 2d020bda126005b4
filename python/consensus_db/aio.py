"""The async twin: the store's operations as coroutines, for asyncio orchestrators.

    async with consensus_db.aio.connect("consensus.db") as db:   # or: db = await aio.connect(...)
        await db.record_agent_spawn("agent-1", "SPEC-1", "plan", "quality_gate", "gemini")
        async with db.transaction() as tx:
            await tx.execute("DELETE FROM agent_executions WHERE spec_id = ?", ["OLD"])

Every operation of :class:`~consensus_db.Store` has a coroutine twin here, generated
from one list (the class body of :class:`AsyncStore`: one line per operation, each
naming the sync method it mirrors, so its signature and result type are the sync
method's, for type checkers too). Non-blocking attributes (``path``, ``closed``,
``open_report``, ``retry_count``, ...) are plain properties.

``store_artifact`` (its ``idempotency_key`` too), ``record_agent_spawn`` and ``record_agent_completion`` are submitted
to the store's write lane without a thread: the call's arguments are checked on the loop,
the write joins the group commit of whichever writer is front, and the committing thread
completes the call's future (``loop.call_soon_threadsafe``). A thousand waiting writes
hold no thread, and ``asyncio.gather`` over many writes gets group-commit throughput. A
write that fails with a retryable error (``BusyError``, ``PoolTimeoutError``: nothing of it
ran) is tried again in its blocking form on an executor thread, where the engine retries
it under the store's policy. Every other call runs the sync store's
method on a thread of the store's own executor (as many threads as pooled connections).

Cancellation (``task.cancel()``, ``asyncio.wait_for`` timing out) never leaves a call's
outcome unknown: a call still queued on the executor is dropped and never runs; a call
already running on a thread, or a write already submitted to the lane, cannot be stopped,
so the cancellation waits for it to finish (commit or fail) before ``CancelledError``
propagates. When the cancellation reaches you, the write either happened or never will.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, Literal, Optional, ParamSpec, TypeVar

from . import _core
from .errors import ClosedError, InvalidInputError
from .results import Behavior, LaneStats, OpenReport, ReaderStats, Rows, RowsMoved, WaitResult
from .retry import RetryPolicy, is_retryable
from .store import Store, _check_batch
from .store import connect as _connect

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AsyncStore", "AsyncTransaction", "AsyncSavepoint", "Connect", "connect"]

T = TypeVar("T")
P = ParamSpec("P")
_OnDone = Callable[[Any, Optional[BaseException]], None]


async def _call_on(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Runs ``fn`` on ``executor``. A cancelled call has a known outcome: if it had not
    started it never runs; if it was running, the cancellation waits for its end."""
    try:
        running: Future[T] = executor.submit(fn, *args, **kwargs)
    except RuntimeError:  # shut down by a close() racing this call
        raise ClosedError("the store is closed") from None
    outcome = asyncio.wrap_future(running)
    try:
        return await asyncio.shield(outcome)
    except asyncio.CancelledError:
        if running.cancel():  # still queued: it will never run
            raise
        # Running on a thread, where it cannot be stopped: let the cancellation
        # through only once the call has committed or failed.
        while not outcome.done():
            try:
                await asyncio.shield(outcome)
            except asyncio.CancelledError:
                continue
            except BaseException:
                break
        raise


# ---- the generators: one sync method in, its coroutine twin out ---------------------------


def _threaded(
    method: Callable[Concatenate[Store, P], T],
) -> Callable[Concatenate[AsyncStore, P], Coroutine[Any, Any, T]]:
    """The coroutine twin of a sync ``Store`` method: it runs on a thread of the store's
    executor, with the sync method's parameters and result type."""

    async def twin(self: AsyncStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(method, self.sync, *args, **kwargs)

    return _named(twin, method)


def _lane(
    submit: Callable[Concatenate[_core.Database, _OnDone, P], None],
    method: Callable[Concatenate[_core.Database, P], T],
) -> Callable[Concatenate[AsyncStore, P], Coroutine[Any, Any, T]]:
    """The coroutine twin of a write the engine can take without a thread: ``submit``
    (its ``*_async`` entry point) queues it on the write lane; the committing thread
    completes the future. ``method``, the blocking form, retries a retryable failure."""

    async def twin(self: AsyncStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._submit(submit, method, *args, **kwargs)

    return _named(twin, method)


_F = TypeVar("_F", bound=Callable[..., Any])


def _named(twin: _F, method: Callable[..., Any]) -> _F:
    try:  # help() and inspect show the sync method's parameters, not *args/**kwargs
        signature = inspect.signature(method)
        params = list(signature.parameters.values())
        twin.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[params[0].replace(name="self"), *params[1:]], return_annotation=inspect.Signature.empty
        )
    except (TypeError, ValueError):
        pass
    twin.__name__ = method.__name__
    twin.__qualname__ = f"AsyncStore.{method.__name__}"
    twin.__doc__ = f"Coroutine form of :meth:`consensus_db.Store.{method.__name__}`.\n\n{method.__doc__ or ''}".rstrip()
    return twin


# ---- connect --------------------------------------------------------------------------------


class Connect(Coroutine[Any, Any, "AsyncStore"]):
    """What :func:`connect` returns: await it for an :class:`AsyncStore`, or use it
    directly as ``async with aio.connect(path) as db:`` (closed when the block ends).
    It is a coroutine, so ``asyncio.run``/``create_task`` take it too. Opening starts
    only when it is awaited or entered."""

    def __init__(self, opener: Callable[[], Store], pool_size: int) -> None:
        self._opener = opener
        self._pool_size = pool_size
        self._coroutine: Optional[Coroutine[Any, Any, AsyncStore]] = None
        self._store: Optional[AsyncStore] = None

    async def _open(self) -> AsyncStore:
        executor = ThreadPoolExecutor(max_workers=self._pool_size, thread_name_prefix="consensus-db-aio")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(executor, self._opener)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return AsyncStore(store, executor)

    def _started(self) -> Coroutine[Any, Any, AsyncStore]:
        if self._coroutine is None:
            self._coroutine = self._open()
        return self._coroutine

    def __await__(self) -> Generator[Any, None, AsyncStore]:
        return self._started().__await__()

    def send(self, value: Any, /) -> Any:
        return self._started().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Optional[TracebackType] = None, /) -> Any:
        return self._started().throw(typ, val, tb)

    def close(self) -> None:
        if self._coroutine is not None:
            self._coroutine.close()

    async def __aenter__(self) -> AsyncStore:
        self._store = await self
        return self._store

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if self._store is not None and not self._store.closed:
            await self._store.close()


def _async_connect(sync_connect: Callable[P, Store]) -> Callable[P, Connect]:
    def connect(*args: P.args, **kwargs: P.kwargs) -> Connect:
        pool_size = kwargs.get("pool_size", _core.DEFAULTS["pool_size"])
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise InvalidInputError(f"invalid pool_size: must be an int of at least 1, got {pool_size!r}")
        return Connect(functools.partial(sync_connect, *args, **kwargs), pool_size)

    # help() and inspect show the sync connect's parameters, not *args/**kwargs.
    connect.__signature__ = inspect.signature(sync_connect).replace(  # type: ignore[attr-defined]
        return_annotation="Connect"
    )
    connect.__doc__ = """Opens a store without blocking the loop; the arguments are :func:`consensus_db.connect`'s.

    ``async with aio.connect(path) as db:`` opens and closes it; ``db = await aio.connect(path)``
    opens it (close it with ``await db.close()``). The calls run on a thread pool as large
    as the connection pool (``pool_size``); writes go through the write lane without one."""
    return connect


connect = _async_connect(_connect)


# ---- transactions ------------------------------------------------------------------------


class AsyncSavepoint:
    """``async with tx.savepoint():`` undoes only its own part when the block raises."""

    def __init__(self, tx: AsyncTransaction) -> None:
        self._tx = tx
        self._savepoint: Optional[_core.Savepoint] = None

    async def __aenter__(self) -> Self:
        tx = self._tx._sync()
        self._savepoint = await self._tx._call(tx.savepoint)
        await self._tx._call(self._savepoint.__enter__)
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if self._savepoint is not None:
            await self._tx._call(self._savepoint.__exit__, exc_type, exc, tb)


class AsyncTransaction:
    """``async with db.transaction() as tx:`` — commits when the block ends, rolls back
    when it raises. Its statements run, one after the other, on a thread of its own (a
    write transaction holds the write lane until it ends)."""

    def __init__(self, store: AsyncStore, behavior: Behavior) -> None:
        self._store = store
        self._behavior = behavior
        self._tx: Optional[_core.Transaction] = None
        self._executor: Optional[ThreadPoolExecutor] = None

    def _sync(self) -> _core.Transaction:
        if self._tx is None:
            raise InvalidInputError("the transaction is not active: use it inside its `async with` block")
        return self._tx

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise InvalidInputError("the transaction is not active: use it inside its `async with` block")
        return await _call_on(self._executor, fn, *args)

    async def __aenter__(self) -> Self:
        self._store._check_open()
        executor = self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="consensus-db-aio-tx")
        try:
            tx = self._store.sync.transaction(self._behavior)
        except BaseException:
            executor.shutdown(wait=False)
            self._executor = None
            raise
        try:
            self._tx = await self._call(tx.__enter__)
        except BaseException as exc:
            # Cancelled while BEGIN waited (for the write lane, say): the BEGIN may
            # have gone through once it ran. Roll it back on its thread, so the write
            # lane is not left held by a transaction nobody will end (a no-op if it
            # never began).
            ending = asyncio.wrap_future(executor.submit(tx.__exit__, type(exc), exc, exc.__traceback__))
            try:
                await asyncio.shield(ending)
            except BaseException:
                pass
            executor.shutdown(wait=False)
            self._executor = None
            raise
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        tx, executor = self._sync(), self._executor
        try:
            await self._call(tx.__exit__, exc_type, exc, tb)
        finally:
            self._tx = None
            self._executor = None
            if executor is not None:
                executor.shutdown(wait=False)

    async def execute(self, sql: str, params: _core._Params = None) -> int:
        """Runs one statement; returns the number of rows it changed."""
        return await self._call(self._sync().execute, sql, params)

    async def executemany(self, sql: str, rows: Any) -> int:
        """Runs one statement once per parameter row; returns the rows changed in all."""
        return await self._call(self._sync().executemany, sql, list(rows))

    async def query(self, sql: str, params: _core._Params = None) -> Rows:
        """Runs a query; returns :class:`~consensus_db.Rows`."""
        return await self._call(self._sync().query, sql, params)

    @property
    def lastrowid(self) -> int:
        """The rowid of the last row inserted through this transaction."""
        return self._sync().lastrowid

    def savepoint(self) -> AsyncSavepoint:
        """A nested savepoint: ``async with tx.savepoint(): ...``."""
        return AsyncSavepoint(self)


# ---- the store -------------------------------------------------------------------------------


class AsyncStore:
    """Coroutine versions of every :class:`~consensus_db.Store` operation.

    A cancelled call has a known outcome: if it had not started it never runs; if it was
    running, the cancellation waits until it has finished (committed or failed) and then
    raises ``CancelledError``. After :meth:`close`, every call, a second ``close()``
    included, raises :class:`~consensus_db.ClosedError`.
    """

    def __init__(self, store: Store, executor: ThreadPoolExecutor) -> None:
        self.sync = store
        self._executor = executor
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the store is closed")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._check_open()
        return await _call_on(self._executor, fn, *args, **kwargs)

    async def _submit(self, submit: Callable[..., None], raw: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A write through the lane: ``submit(on_done, *args)`` queues it and returns at
        once; the committing thread completes ``outcome``. A retryable failure goes on
        with the store's retry policy on an executor thread."""
        self._check_open()
        if self.sync.backend != "sqlite":
            # No write lane on PostgreSQL: the blocking form, on an executor thread.
            return await self._run(raw, self.sync, *args, **kwargs)
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[T] = loop.create_future()

        def settle(value: Any, error: Optional[BaseException]) -> None:
            if outcome.done():
                return
            if error is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(value)

        def on_done(value: Any, error: Optional[BaseException]) -> None:  # the committing thread
            try:
                loop.call_soon_threadsafe(settle, value, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        submit(self.sync, on_done, *args, **kwargs)  # argument errors are raised here
        try:
            return await asyncio.shield(outcome)
        except asyncio.CancelledError:
            # Submitted: it will commit or fail. Let the cancellation through only once
            # that outcome is known.
            while not outcome.done():
                try:
                    await asyncio.shield(outcome)
                except asyncio.CancelledError:
                    continue
                except BaseException:
                    break
            raise
        except Exception as exc:
            # Nothing of a write that failed with a retryable error ran (its group's
            # BEGIN or checkout failed): the blocking form, on an executor thread, tries
            # again under the store's retry policy.
            if self.sync.retry_policy is None or not is_retryable(exc):
                raise
            return await self._run(raw, self.sync, *args, **kwargs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if not self._closed:
            await self.close()

    def __repr__(self) -> str:
        return f"<consensus_db.aio.AsyncStore {self.sync.path!r}{' (closed)' if self.sync.closed else ''}>"

    # ---- attributes that do no I/O ------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def path(self) -> str:
        """The path as given."""
        return self.sync.path

    @property
    def read_only(self) -> bool:
        """Whether the store was opened read-only."""
        return self.sync.read_only

    @property
    def in_memory(self) -> bool:
        """Whether the store is an in-memory database."""
        return self.sync.in_memory

    @property
    def open_report(self) -> OpenReport:
        """What opening did to the file."""
        return self.sync.open_report

    @property
    def rows_moved(self) -> RowsMoved:
        """What the last migration of this store copied between the schemas."""
        return self.sync.rows_moved

    @property
    def retry_count(self) -> int:
        """Retries the engine made for this store."""
        return self.sync.retry_count

    @property
    def retry_policy(self) -> Optional[RetryPolicy]:
        """The policy the engine retries with (``None``: off)."""
        return self.sync.retry_policy

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        """Which backend serves this store."""
        return self.sync.backend

    @property
    def replicated(self) -> bool:
        """Whether a replica (Litestream) is attached: checkpoints are PASSIVE only then."""
        return self.sync.replicated

    @property
    def writer_queue(self) -> Optional[str]:
        """The host-wide writer queue's sidecar file (``<database>-writer``), or None."""
        return self.sync.writer_queue

    @property
    def write_mode(self) -> Literal["v1", "dual"]:
        """The schemas this store writes: "v1" or "dual" (both, linked)."""
        return self.sync.write_mode

    @property
    def read_mode(self) -> Literal["dual", "v1", "legacy"]:
        """The schemas this store reads: "dual", "v1" or "legacy"."""
        return self.sync.read_mode

    @property
    def maintenance_cycles(self) -> Optional[int]:
        """Cycles completed by the running maintenance thread, or None."""
        return self.sync.maintenance_cycles

    def reader_stats(self) -> ReaderStats:
        """In-memory counters (no I/O, so not a coroutine): see ``Store.reader_stats``."""
        return self.sync.reader_stats()

    def lane_stats(self) -> LaneStats:
        """In-memory counters (no I/O, so not a coroutine): see ``Store.lane_stats``."""
        return self.sync.lane_stats()

    async def close(self) -> None:
        """Closes the store once its running calls have finished; calling it again
        raises :class:`~consensus_db.ClosedError`."""
        await self._run(self.sync.close)
        self._closed = True
        self._executor.shutdown(wait=True)

    def transaction(self, behavior: Behavior = "immediate") -> AsyncTransaction:
        """``async with db.transaction(behavior) as tx:`` (see :class:`AsyncTransaction`)."""
        self._check_open()
        return AsyncTransaction(self, behavior)

    def iter_artifacts(
        self,
        spec_id: str,
        stage: str,
        *,
        order: Literal["newest", "oldest"] = "newest",
        batch: int = 1000,
    ) -> AsyncIterator[_core.Artifact]:
        """``async for a in db.iter_artifacts(spec_id, stage):`` ``Store.iter_artifacts``
        with each page read on a thread of the store's executor."""
        self._check_open()
        _check_batch(batch)
        return self._pages(spec_id, stage, order, batch)

    async def _pages(
        self, spec_id: str, stage: str, order: Literal["newest", "oldest"], batch: int
    ) -> AsyncIterator[_core.Artifact]:
        after: Optional[str] = None
        while True:
            rows = await self._run(self.sync.query_artifacts, spec_id, stage, order=order, limit=batch, after=after)
            for row in rows:
                yield row
            if len(rows) < batch:
                return
            after = rows[-1].cursor

    async def wait_for_agents(
        self,
        spec_id: str,
        stage: str,
        *,
        agent_ids: Optional[list[str]] = None,
        run_id: Optional[str] = None,
        branch_id: Optional[str] = None,
        quorum: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> WaitResult:
        """``Store.wait_for_agents`` without a thread while it waits: each check (one
        query) runs on the store's executor, and between checks the waiter is a future
        that the thread seeing the next commit completes (``loop.call_soon_threadsafe``);
        the timeout is the loop's own timer. A thousand waiters hold no thread beyond the
        store's one watcher. ``close()`` ends every wait with ``ClosedError``."""
        self._check_open()
        if timeout is not None and not isinstance(timeout, bool) and isinstance(timeout, (int, float)):
            if not 0 <= timeout <= 1e9:  # the same bounds as the sync form, checked before anything runs
                raise InvalidInputError(
                    f"invalid timeout: must be None (no limit) or a number of seconds from 0 to 1e9, got {timeout}"
                )
        elif timeout is not None:
            raise InvalidInputError(f"invalid timeout: must be a number of seconds, got {type(timeout).__name__}")
        waiter = self.sync.agents_waiter(
            spec_id, stage, agent_ids=agent_ids, run_id=run_id, branch_id=branch_id, quorum=quorum
        )
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            # The first check before the subscription: a wait over at once (or refused)
            # starts no watcher.
            result = await self._run(waiter.check, timeout == 0)
            if result is not None:
                return result
            await self._run(waiter.start)
            while True:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                result = await self._run(waiter.check, remaining == 0.0)
                if result is not None:
                    return result
                changed: asyncio.Future[None] = loop.create_future()

                def settle(error: Optional[BaseException], changed: asyncio.Future[None] = changed) -> None:
                    if changed.done():
                        return
                    if error is not None:
                        changed.set_exception(error)
                    else:
                        changed.set_result(None)

                def on_change(error: Optional[BaseException], settle: Callable[..., None] = settle) -> None:
                    try:  # the thread that saw the change
                        loop.call_soon_threadsafe(settle, error)
                    except RuntimeError:  # the loop is closed: nobody waits any more
                        pass

                waiter.on_change(on_change)
                try:
                    await asyncio.wait_for(changed, remaining)
                except asyncio.TimeoutError:
                    pass  # the next check says timed_out
        finally:
            waiter.close()

    async def get_schema_version(self) -> int:
        """The schema version (``Store.schema_version`` reads the file: here, a coroutine)."""
        return await self._run(lambda: self.sync.schema_version)

    # ---- the list: every other operation, generated from its sync form ----------------------
    # Writes the engine takes without a thread: submitted to the write lane.
    record_agent_spawn = _lane(_core.Database._record_agent_spawn_async, _core.Database.record_agent_spawn)
    record_agent_completion = _lane(
        _core.Database._record_agent_completion_async, _core.Database.record_agent_completion
    )
    store_artifact = _lane(_core.Database._store_artifact_async, _core.Database.store_artifact)
    # Everything else: on a thread of the store's executor.
    get_agent_spawn_info = _threaded(Store.get_agent_spawn_info)
    get_agent_route = _threaded(Store.get_agent_route)
    query_agent_executions = _threaded(Store.query_agent_executions)
    get_agent_name = _threaded(Store.get_agent_name)
    record_extraction_failure = _threaded(Store.record_extraction_failure)
    expect_agents = _threaded(Store.expect_agents)
    query_extraction_failures = _threaded(Store.query_extraction_failures)
    cleanup_old_executions = _threaded(Store.cleanup_old_executions)
    store_artifacts = _threaded(Store.store_artifacts)
    query_artifacts = _threaded(Store.query_artifacts)
    count_artifacts = _threaded(Store.count_artifacts)
    delete_spec_artifacts = _threaded(Store.delete_spec_artifacts)
    delete_stage_artifacts = _threaded(Store.delete_stage_artifacts)
    delete_runs = _threaded(Store.delete_runs)
    store_synthesis = _threaded(Store.store_synthesis)
    query_latest_synthesis = _threaded(Store.query_latest_synthesis)
    claim_stage = _threaded(Store.claim_stage)
    renew_claim = _threaded(Store.renew_claim)
    release_claim = _threaded(Store.release_claim)
    query_claims = _threaded(Store.query_claims)
    execute = _threaded(Store.execute)
    query = _threaded(Store.query)
    migrate = _threaded(Store.migrate)
    legacy_row_problems = _threaded(Store.legacy_row_problems)
    verify_schemas = _threaded(Store.verify_schemas)
    pragmas = _threaded(Store.pragmas)
    verify_pragmas = _threaded(Store.verify_pragmas)
    pool_state = _threaded(Store.pool_state)
    stats = _threaded(Store.stats)
    health = _threaded(Store.health)
    vacuum = _threaded(Store.vacuum)
    checkpoint = _threaded(Store.checkpoint)
    integrity_check = _threaded(Store.integrity_check)
    backup = _threaded(Store.backup)
    start_maintenance = _threaded(Store.start_maintenance)
    stop_maintenance = _threaded(Store.stop_maintenance)


#: The sync-only members of ``Store`` that have no coroutine twin, and why.
NOT_MIRRORED = {
    "close": "AsyncStore.close is written by hand (it also shuts the executor down)",
    "transaction": "AsyncStore.transaction returns an async context manager, not a coroutine",
    "iter_artifacts": "AsyncStore.iter_artifacts returns an async iterator (`async for`), not a coroutine",
    "wait_for_agents": "AsyncStore.wait_for_agents is written by hand: it waits on a future, not on a thread",
    "agents_waiter": "builds the step-by-step wait AsyncStore.wait_for_agents runs (no I/O): a plain method",
    "schema_version": "a property that reads the file: AsyncStore.get_schema_version()",
    "reader_stats": "in-memory counters, no I/O: a plain method",
    "lane_stats": "in-memory counters, no I/O: a plain method",
}
