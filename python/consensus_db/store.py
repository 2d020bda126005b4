"""The high-level store: :func:`connect` returns a :class:`Store`.

``Store`` is the Rust ``Database`` class with the Python-side policy on top: writes
go through the retry policy (busy/locked and pool timeouts are retried with backoff),
the background maintenance logs through :mod:`logging` and is stopped at exit.
Reads are the Rust methods themselves: no Python frame on the hot path.
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar, Union

from . import _core
from .errors import InvalidInputError
from .retry import RetryPolicy

__all__ = ["Store", "connect", "DEFAULT_RETRY"]

T = TypeVar("T")
PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

#: The retry policy writes use unless ``connect(..., retry=...)`` says otherwise.
DEFAULT_RETRY = RetryPolicy()

_maintenance_log = logging.getLogger("consensus_db.maintenance")


def _log_cycle(report: dict) -> None:
    if report.get("error"):
        _maintenance_log.warning("maintenance cycle %(cycle)d failed: %(error)s", report)
    else:
        _maintenance_log.info(
            "maintenance cycle %(cycle)d: %(executions_deleted)d executions deleted, "
            "%(pages_freed)d pages freed, checkpointed=%(checkpointed)s",
            report,
        )


class Store(_core.Database):
    """A consensus-db store. Open it with :func:`connect`; share it between threads.

    Query ordering: ``query_artifacts`` returns oldest first (ties by id);
    ``query_extraction_failures`` oldest spawn first; ``query_latest_synthesis`` the
    newest synthesis. Reads see both schemas (see the README's dual-schema reader).
    """

    def __new__(cls, path: PathLike, *, retry: Optional[RetryPolicy] = DEFAULT_RETRY, **options: Any) -> "Store":
        if retry is not None and not isinstance(retry, RetryPolicy):  # refused before the file is opened
            raise InvalidInputError(f"invalid retry: must be a RetryPolicy or None, got {type(retry).__name__}")
        return super().__new__(cls, path, **options)

    def __init__(self, path: PathLike, *, retry: Optional[RetryPolicy] = DEFAULT_RETRY, **options: Any) -> None:
        self.retry_policy = retry
        self._stop_at_exit: Optional[Callable[[], None]] = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<consensus_db.Store {self.path!r} ({state})>"

    def _write(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.retry_policy is None:
            return method(self, *args, **kwargs)
        return self.retry_policy.call(method, self, *args, **kwargs)

    # ---- writes (retried) -------------------------------------------------------------

    def record_agent_spawn(
        self, agent_id: str, spec_id: str, stage: str, phase_type: str, agent_name: str, run_id: Optional[str] = None
    ) -> None:
        """Records a spawned agent (``phase_type``: ``quality_gate`` or ``regular_stage``).
        Recording the same ``agent_id`` again starts it afresh."""
        return self._write(_core.Database.record_agent_spawn, agent_id, spec_id, stage, phase_type, agent_name, run_id)

    def record_agent_completion(self, agent_id: str, response_text: str) -> bool:
        """Marks an agent completed; returns whether the agent was known."""
        return self._write(_core.Database.record_agent_completion, agent_id, response_text)

    def record_extraction_failure(self, agent_id: str, response_text: str, extraction_error: str) -> bool:
        """Marks an agent completed with unparseable output; returns whether it was known."""
        return self._write(_core.Database.record_extraction_failure, agent_id, response_text, extraction_error)

    def cleanup_old_executions(self, days: int) -> int:
        """Deletes executions spawned more than ``days`` days ago; returns how many."""
        return self._write(_core.Database.cleanup_old_executions, days)

    def store_artifact(
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
        """Stores one agent output; ``content_json`` is a JSON ``str`` (validated) or a
        JSON-serializable value. Returns the artifact's id."""
        return self._write(
            _core.Database.store_artifact,
            spec_id,
            stage,
            agent_name,
            content_json,
            response_text=response_text,
            run_id=run_id,
            model_version=model_version,
        )

    def store_artifacts(self, artifacts: Iterable[Mapping[str, Any]]) -> list:
        """Stores many artifacts (mappings with ``store_artifact``'s argument names) in
        one transaction: all or none. Returns their ids in order."""
        batch = list(artifacts)  # an iterator must survive a retry
        return self._write(_core.Database.store_artifacts, batch)

    def delete_spec_artifacts(self, spec_id: str) -> int:
        return self._write(_core.Database.delete_spec_artifacts, spec_id)

    def delete_stage_artifacts(self, spec_id: str, stage: str) -> int:
        return self._write(_core.Database.delete_stage_artifacts, spec_id, stage)

    def delete_runs(self, spec_id: str, stage: Optional[str] = None) -> int:
        return self._write(_core.Database.delete_runs, spec_id, stage)

    def store_synthesis(
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
        """Stores a run's merged result; ``agreements`` / ``conflicts`` are text or
        JSON-serializable values. Returns the run's id."""
        return self._write(
            _core.Database.store_synthesis,
            spec_id,
            stage,
            output_markdown,
            output_path=output_path,
            status=status,
            artifacts_count=artifacts_count,
            agreements=agreements,
            conflicts=conflicts,
            degraded=degraded,
            run_id=run_id,
        )

    # ---- maintenance ---------------------------------------------------------------------

    def start_maintenance(
        self,
        interval_s: float = 300.0,
        *,
        retention_days: Optional[int] = 30,
        vacuum_pages: Optional[int] = 1000,
        checkpoint: bool = True,
        on_cycle: Optional[Callable[[dict], None]] = None,
    ) -> None:
        """Starts the background thread: every ``interval_s`` seconds it deletes
        executions older than ``retention_days`` (None: keep all), frees up to
        ``vacuum_pages`` free pages (None: all) and checkpoints the WAL. Each cycle is
        logged on ``consensus_db.maintenance`` and passed to ``on_cycle``."""
        if on_cycle is not None and not callable(on_cycle):
            raise InvalidInputError(f"invalid on_cycle: must be callable, got {type(on_cycle).__name__}")

        def report(cycle: dict) -> None:
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

    def __exit__(self, *exc: Any) -> bool:
        self.close()
        return False


def connect(
    path: PathLike,
    *,
    pool_size: int = 10,
    read_only: bool = False,
    migrate: Union[bool, int] = True,
    pragmas: Optional[Mapping[str, Any]] = None,
    retry: Optional[RetryPolicy] = DEFAULT_RETRY,
    min_idle: int = 1,
    checkout_timeout: float = 10.0,
    create: bool = True,
    convert_auto_vacuum: bool = True,
    uri: bool = False,
) -> Store:
    """Opens (creating if needed) the store at ``path``; ``":memory:"`` is one in-memory
    database shared by the whole pool.

    - ``migrate``: True brings the schema to the default version, an int to that
      version, False leaves it alone. A newer-than-known schema is refused.
    - ``pragmas``: overrides, e.g. ``{"mmap_size": 0}``; ``None`` as a value leaves that
      pragma at SQLite's default. Every pragma set is verified after opening.
    - ``retry``: the policy for writes; ``None`` turns retrying off.
    - ``convert_auto_vacuum``: an existing database without incremental auto-vacuum is
      converted with a VACUUM on open; False refuses it instead.
    - ``create``: False refuses a missing file instead of creating it.
    - ``path`` is opened exactly as given (``bytes`` byte for byte; a ``str`` as
      ``os.fsencode`` encodes it), even a name starting with ``file:``. With
      ``uri=True`` it is an SQLite URI instead (``"file:data.db?mode=ro"``).
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
    )
