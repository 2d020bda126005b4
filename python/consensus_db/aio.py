"""The async twin: the store's operations as coroutines, for asyncio orchestrators.

    db = await consensus_db.aio.connect("consensus.db")
    async with db:
        await db.record_agent_spawn("agent-1", "SPEC-1", "plan", "quality_gate", "gemini")

``store_artifact``, ``record_agent_spawn`` and ``record_agent_completion`` are submitted
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar

from . import _core
from .errors import ClosedError, InvalidInputError
from .retry import is_retryable
from .store import PathLike, Store, connect as _connect

__all__ = ["AsyncStore", "connect"]

T = TypeVar("T")


async def connect(path: PathLike, *, pool_size: int = 10, **options: Any) -> "AsyncStore":
    """Opens a store without blocking the loop; same arguments as :func:`consensus_db.connect`."""
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise InvalidInputError(f"invalid pool_size: must be an int of at least 1, got {pool_size!r}")
    executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="consensus-db-aio")
    loop = asyncio.get_running_loop()
    try:
        store = await loop.run_in_executor(executor, functools.partial(_connect, path, pool_size=pool_size, **options))
    except BaseException:
        executor.shutdown(wait=False)
        raise
    return AsyncStore(store, executor)


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

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise ClosedError("the store is closed")
        try:
            running = self._executor.submit(fn, *args, **kwargs)
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

    async def _submit(self, submit: Callable[..., None], raw: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A write through the lane: ``submit(on_done, *args)`` queues it and returns at
        once; the committing thread completes ``outcome``. A retryable failure goes on
        with the store's retry policy on an executor thread."""
        if self._closed:
            raise ClosedError("the store is closed")
        loop = asyncio.get_running_loop()
        outcome = loop.create_future()

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

    async def __aenter__(self) -> "AsyncStore":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if not self._closed:
            await self.close()

    def __repr__(self) -> str:
        return f"<consensus_db.aio.AsyncStore {self.sync.path!r}{' (closed)' if self.sync.closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Closes the store once its running calls have finished; calling it again
        raises :class:`~consensus_db.ClosedError`."""
        await self._run(self.sync.close)
        self._closed = True
        self._executor.shutdown(wait=True)

    # ---- executions ------------------------------------------------------------------

    async def record_agent_spawn(
        self, agent_id: str, spec_id: str, stage: str, phase_type: str, agent_name: str, run_id: Optional[str] = None
    ) -> None:
        await self._submit(
            _core.Database.record_agent_spawn_async, _core.Database.record_agent_spawn,
            agent_id, spec_id, stage, phase_type, agent_name, run_id,
        )

    async def get_agent_spawn_info(self, agent_id: str) -> Optional[tuple]:
        return await self._run(self.sync.get_agent_spawn_info, agent_id)

    async def get_agent_name(self, agent_id: str) -> Optional[str]:
        return await self._run(self.sync.get_agent_name, agent_id)

    async def record_agent_completion(self, agent_id: str, response_text: str) -> bool:
        return await self._submit(
            _core.Database.record_agent_completion_async, _core.Database.record_agent_completion, agent_id, response_text
        )

    async def record_extraction_failure(self, agent_id: str, response_text: str, extraction_error: str) -> bool:
        return await self._run(self.sync.record_extraction_failure, agent_id, response_text, extraction_error)

    async def query_extraction_failures(self, spec_id: str) -> list:
        return await self._run(self.sync.query_extraction_failures, spec_id)

    async def cleanup_old_executions(self, days: int) -> int:
        return await self._run(self.sync.cleanup_old_executions, days)

    # ---- artifacts and synthesis -----------------------------------------------------------

    async def store_artifact(
        self,
        spec_id: str,
        stage: str,
        agent_name: str,
        content_json: Any,
        *,
        response_text: Optional[str] = None,
        run_id: Optional[str] = None,
        model_version: Optional[str] = None,
    ) -> int:
        return await self._submit(
            _core.Database.store_artifact_async, _core.Database.store_artifact, spec_id, stage, agent_name,
            content_json, response_text=response_text, run_id=run_id, model_version=model_version,
        )

    async def store_artifacts(self, artifacts: Iterable[Mapping[str, Any]]) -> list:
        return await self._run(self.sync.store_artifacts, list(artifacts))

    async def query_artifacts(self, spec_id: str, stage: str) -> list:
        return await self._run(self.sync.query_artifacts, spec_id, stage)

    async def delete_spec_artifacts(self, spec_id: str) -> int:
        return await self._run(self.sync.delete_spec_artifacts, spec_id)

    async def delete_stage_artifacts(self, spec_id: str, stage: str) -> int:
        return await self._run(self.sync.delete_stage_artifacts, spec_id, stage)

    async def delete_runs(self, spec_id: str, stage: Optional[str] = None) -> int:
        return await self._run(self.sync.delete_runs, spec_id, stage)

    async def store_synthesis(
        self,
        spec_id: str,
        stage: str,
        output_markdown: str,
        *,
        output_path: Optional[str] = None,
        status: str = "success",
        artifacts_count: Optional[int] = None,
        agreements: Any = None,
        conflicts: Any = None,
        degraded: bool = False,
        run_id: Optional[str] = None,
    ) -> int:
        return await self._run(
            self.sync.store_synthesis, spec_id, stage, output_markdown, output_path=output_path, status=status,
            artifacts_count=artifacts_count, agreements=agreements, conflicts=conflicts, degraded=degraded,
            run_id=run_id,
        )

    async def query_latest_synthesis(self, spec_id: str, stage: str) -> Any:
        return await self._run(self.sync.query_latest_synthesis, spec_id, stage)

    def reader_stats(self) -> dict:
        return self.sync.reader_stats()

    def lane_stats(self) -> dict:
        return self.sync.lane_stats()

    # ---- schema, health, maintenance ----------------------------------------------------

    async def get_schema_version(self) -> int:
        return await self._run(lambda: self.sync.schema_version)

    async def migrate(self, target: Optional[int] = None) -> int:
        return await self._run(self.sync.migrate, target)

    async def pragmas(self) -> dict:
        return await self._run(self.sync.pragmas)

    async def verify_pragmas(self) -> None:
        await self._run(self.sync.verify_pragmas)

    async def health(self, threshold: float = 0.5) -> dict:
        return await self._run(self.sync.health, threshold)

    async def vacuum(self, *, full: bool = False, pages: Optional[int] = None) -> dict:
        return await self._run(self.sync.vacuum, full=full, pages=pages)

    async def checkpoint(self, mode: Optional[str] = None) -> dict:
        return await self._run(self.sync.checkpoint, mode)

    async def integrity_check(self, quick: bool = False) -> list:
        return await self._run(self.sync.integrity_check, quick)

    async def backup(self, dest: Optional[PathLike] = None) -> str:
        return await self._run(self.sync.backup, dest)
