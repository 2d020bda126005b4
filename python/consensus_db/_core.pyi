"""Type stubs for the Rust extension module (kept true to it by tests/test_stub.py)."""

import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

_Path = Union[str, bytes, os.PathLike[str], os.PathLike[bytes]]
_Params = Optional[Union[Sequence[Any], Mapping[str, Any]]]

LEGACY_SCHEMA_SQL: str
DEFAULT_SCHEMA_VERSION: int
LATEST_SCHEMA_VERSION: int
__version__: str

def sqlite_version() -> str: ...
def migrations() -> list[tuple[int, str]]: ...
def _panic_for_tests() -> None: ...

class Artifact:
    id: int
    spec_id: str
    stage: str
    agent_name: str
    content_json: str
    response_text: Optional[str]
    run_id: Optional[str]
    created_at: str
    created_at_ms: int
    model_version: Optional[str]
    source: str
    def to_dict(self) -> dict[str, Any]: ...
    def content(self) -> Any: ...

class Synthesis:
    id: int
    spec_id: str
    stage: str
    output_markdown: str
    output_path: Optional[str]
    status: str
    artifacts_count: Optional[int]
    agreements: Optional[str]
    conflicts: Optional[str]
    degraded: bool
    run_id: Optional[str]
    created_at: str
    created_at_ms: int
    source: str
    def to_dict(self) -> dict[str, Any]: ...

class ExtractionFailure:
    agent_id: str
    spec_id: str
    stage: str
    phase_type: str
    agent_name: str
    run_id: Optional[str]
    spawned_at: str
    completed_at: Optional[str]
    response_text: Optional[str]
    extraction_error: str
    def to_dict(self) -> dict[str, Any]: ...

class Savepoint:
    def __enter__(self) -> "Savepoint": ...
    def __exit__(self, exc_type: Any = None, _exc: Any = None, _tb: Any = None) -> bool: ...

class Transaction:
    lastrowid: int
    def __enter__(self) -> "Transaction": ...
    def __exit__(self, exc_type: Any = None, _exc: Any = None, _tb: Any = None) -> bool: ...
    def execute(self, sql: str, params: _Params = None) -> int: ...
    def executemany(self, sql: str, rows: Iterable[Union[Sequence[Any], Mapping[str, Any]]]) -> int: ...
    def query(self, sql: str, params: _Params = None) -> list[tuple[Any, ...]]: ...
    def savepoint(self) -> Savepoint: ...

class Database:
    closed: bool
    path: str
    read_only: bool
    in_memory: bool
    open_report: dict[str, Any]
    schema_version: int
    maintenance_cycles: Optional[int]
    retry_count: int
    def __new__(
        cls,
        path: _Path,
        *,
        pool_size: int = 10,
        min_idle: int = 1,
        checkout_timeout: float = 10.0,
        read_only: bool = False,
        create: bool = True,
        migrate: Union[bool, int, None] = None,
        pragmas: Optional[dict[str, Any]] = None,
        convert_auto_vacuum: bool = True,
        uri: bool = False,
        replicated: bool = False,
        retry: Any = ...,
    ) -> "Database": ...
    def __enter__(self) -> "Database": ...
    def __exit__(self, *_args: Any) -> bool: ...
    def close(self) -> None: ...
    def pragmas(self) -> dict[str, Union[int, str]]: ...
    def verify_pragmas(self) -> None: ...
    def pool_state(self) -> dict[str, int]: ...
    def lane_stats(self) -> dict[str, Any]: ...
    def transaction(self, behavior: str = "immediate") -> Transaction: ...
    def execute(self, sql: str, params: _Params = None) -> int: ...
    def query(self, sql: str, params: _Params = None) -> list[tuple[Any, ...]]: ...
    def migrate(self, target: Optional[int] = None) -> int: ...
    def legacy_row_problems(self) -> list[dict[str, Any]]: ...
    def record_agent_spawn(
        self, agent_id: str, spec_id: str, stage: str, phase_type: str, agent_name: str, run_id: Optional[str] = None
    ) -> None: ...
    def record_agent_spawn_async(
        self,
        on_done: Callable[[Any, Optional[BaseException]], None],
        agent_id: str,
        spec_id: str,
        stage: str,
        phase_type: str,
        agent_name: str,
        run_id: Optional[str] = None,
    ) -> None: ...
    def get_agent_spawn_info(self, agent_id: str) -> Optional[tuple[str, str]]: ...
    def get_agent_name(self, agent_id: str) -> Optional[str]: ...
    def record_agent_completion(self, agent_id: str, response_text: str) -> bool: ...
    def record_agent_completion_async(
        self, on_done: Callable[[Any, Optional[BaseException]], None], agent_id: str, response_text: str
    ) -> None: ...
    def record_extraction_failure(self, agent_id: str, response_text: str, extraction_error: str) -> bool: ...
    def query_extraction_failures(self, spec_id: str) -> list[ExtractionFailure]: ...
    def cleanup_old_executions(self, days: int) -> int: ...
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
    ) -> int: ...
    def store_artifact_async(
        self,
        on_done: Callable[[Any, Optional[BaseException]], None],
        spec_id: str,
        stage: str,
        agent_name: str,
        content_json: Any,
        *,
        response_text: Optional[str] = None,
        run_id: Optional[str] = None,
        model_version: Optional[str] = None,
    ) -> None: ...
    def store_artifacts(self, artifacts: Iterable[Mapping[str, Any]]) -> list[int]: ...
    def query_artifacts(self, spec_id: str, stage: str) -> list[Artifact]: ...
    def delete_spec_artifacts(self, spec_id: str) -> int: ...
    def delete_stage_artifacts(self, spec_id: str, stage: str) -> int: ...
    def delete_runs(self, spec_id: str, stage: Optional[str] = None) -> int: ...
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
    ) -> int: ...
    def query_latest_synthesis(self, spec_id: str, stage: str) -> Optional[Synthesis]: ...
    def reader_stats(self) -> dict[str, int]: ...
    def stats(self) -> dict[str, Any]: ...
    def health(self, threshold: float = 0.5) -> dict[str, Any]: ...
    def vacuum(
        self, *, full: bool = False, pages: Optional[int] = None, progress: Optional[Callable[[int], Any]] = None
    ) -> dict[str, Any]: ...
    def checkpoint(self, mode: Optional[str] = None) -> dict[str, Any]: ...
    @property
    def replicated(self) -> bool: ...
    def integrity_check(self, quick: bool = False) -> list[str]: ...
    def backup(self, dest: Optional[_Path] = None) -> str: ...
    def start_maintenance(
        self,
        interval_s: float = 300.0,
        *,
        retention_days: Optional[int] = 30,
        vacuum_pages: Optional[int] = 1000,
        checkpoint: bool = True,
        on_cycle: Optional[Callable[[dict[str, Any]], None]] = None,
    ) -> None: ...
    def stop_maintenance(self) -> None: ...
