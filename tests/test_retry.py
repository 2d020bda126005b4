"""Retry classification, backoff, the circuit breaker, and retries wired into writes."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import sqlite3
import time

import pytest

import consensus_db
from consensus_db import errors
from consensus_db.retry import (
    CircuitBreaker,
    Classification,
    RetryPolicy,
    classify,
    is_retryable,
    retry,
    retry_after,
)
from conftest import Backend


class HTTPError(Exception):
    def __init__(self, status_code, headers=None):
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.headers = headers or {}


class Response:
    def __init__(self, status_code, headers=None):
        self.status_code = status_code
        self.headers = headers or {}


class RequestsStyleError(Exception):
    def __init__(self, status_code, headers=None):
        super().__init__(f"status {status_code}")
        self.response = Response(status_code, headers)


class AiohttpStyleError(Exception):
    def __init__(self, status):
        super().__init__(f"status {status}")
        self.status = status


def real_sqlite_errors(tmp_path):
    """A real 'database is locked' and a real constraint violation from stdlib sqlite3."""
    path = tmp_path / "stdlib.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    holder.execute("INSERT INTO t VALUES (1)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0)
    try:
        other.execute("SELECT * FROM t")
    except sqlite3.OperationalError as exc:
        locked = exc
    holder.execute("ROLLBACK")
    try:
        other.execute("INSERT INTO t VALUES (1)")
    except sqlite3.IntegrityError as exc:
        constraint = exc
    try:
        other.execute("SELEC nonsense")
    except sqlite3.OperationalError as exc:
        syntax = exc
    holder.close()
    other.close()
    return locked, constraint, syntax


CASES = [
    (errors.BusyError("locked"), True),
    (errors.PoolTimeoutError("no connection"), True),
    (errors.IntegrityError("unique"), False),
    (errors.InvalidInputError("bad"), False),
    (errors.DiskFullError("full"), False),
    (errors.CorruptDatabaseError("junk"), False),
    (errors.SchemaVersionError("future"), False),
    (errors.ClosedError("closed"), False),
    (sqlite3.OperationalError("database is locked"), True),
    (sqlite3.OperationalError("database table is locked"), True),
    (sqlite3.OperationalError("no such table: t"), False),
    (TimeoutError("slow"), True),
    (asyncio.TimeoutError(), True),
    (socket.timeout("slow socket"), True),
    (ConnectionResetError("reset"), True),
    (ConnectionRefusedError("refused"), True),
    (HTTPError(408), True),
    (HTTPError(429), True),
    (HTTPError(500), True),
    (HTTPError(502), True),
    (HTTPError(503), True),
    (HTTPError(504), True),
    (HTTPError(400), False),
    (HTTPError(401), False),
    (HTTPError(403), False),
    (HTTPError(404), False),
    (HTTPError(422), False),
    (RequestsStyleError(503), True),
    (RequestsStyleError(401), False),
    (AiohttpStyleError(429), True),
    (errors.OutcomeUnknownError("lost during COMMIT"), False),
    (ValueError("bad value"), False),
    (KeyError("k"), False),
    (RuntimeError("unknown"), False),
]


@pytest.mark.parametrize("exc, retryable", CASES, ids=[f"{type(e).__name__}-{i}" for i, (e, _) in enumerate(CASES)])
def test_classification_table(exc, retryable):
    assert is_retryable(exc) is retryable
    assert classify(exc) is (Classification.RETRYABLE if retryable else Classification.PERMANENT)


def test_real_stdlib_sqlite_errors_are_classified(tmp_path):
    locked, constraint, syntax = real_sqlite_errors(tmp_path)
    assert is_retryable(locked)
    assert not is_retryable(constraint)
    assert not is_retryable(syntax)


def failing(n_failures, exc_factory, result="ok"):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= n_failures:
            raise exc_factory()
        return result

    return fn, calls


def test_delays_without_jitter_are_exact():
    slept = []
    policy = RetryPolicy(jitter=False, sleep=slept.append)
    assert policy.delays() == [0.1, 0.2, 0.4, 0.8, 1.6]  # the default schedule reaches its cap
    fn, calls = failing(10, lambda: errors.BusyError("busy"))
    with pytest.raises(errors.BusyError):
        policy.call(fn)
    assert len(calls) == 6
    assert slept == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert RetryPolicy(jitter=False, max_attempts=8).delays()[-3:] == [1.6, 1.6, 1.6]


class SleepClock:
    """Time that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay


def test_no_retry_sleeps_past_the_deadline():
    clock = SleepClock()
    policy = RetryPolicy(max_attempts=20, jitter=False, deadline=2.0, sleep=clock.sleep, clock=clock)
    fn, calls = failing(100, lambda: errors.BusyError("busy"))
    with pytest.raises(errors.BusyError):
        policy.call(fn)
    # 0.1 + 0.2 + 0.4 + 0.8 = 1.5 s slept; the next 1.6 s would end past 2.0 s.
    assert clock.slept == [0.1, 0.2, 0.4, 0.8] and len(calls) == 5
    assert policy.stats.failures == 1
    unbounded = RetryPolicy(max_attempts=8, jitter=False, deadline=None, sleep=clock.sleep, clock=clock)
    fn, calls = failing(100, lambda: errors.BusyError("busy"))
    with pytest.raises(errors.BusyError):
        unbounded.call(fn)
    assert len(calls) == 8
    for bad in (0, -1.0, "10", True):
        with pytest.raises(errors.InvalidInputError, match="deadline"):
            RetryPolicy(deadline=bad)


def test_jittered_delays_vary_and_never_pass_the_cap():
    rng = random.Random(7)
    slept = []
    policy = RetryPolicy(max_attempts=8, sleep=slept.append, random=rng.random)
    for _ in range(50):
        fn, _ = failing(100, lambda: errors.BusyError("busy"))
        with pytest.raises(errors.BusyError):
            policy.call(fn)
    assert len(slept) == 50 * 7
    assert all(0 <= d <= 1.6 for d in slept)
    assert len(set(slept)) > 300
    assert max(slept) > 1.0  # late retries do reach towards the cap


def test_success_after_retries_and_the_last_error_is_reraised():
    slept = []
    policy = RetryPolicy(jitter=False, sleep=slept.append)
    fn, calls = failing(2, lambda: TimeoutError("slow"))
    assert policy.call(fn) == "ok" and len(calls) == 3 and slept == [0.1, 0.2]
    last = []

    def always():
        last.append(ConnectionResetError(len(last)))
        raise last[-1]

    with pytest.raises(ConnectionResetError) as err:
        RetryPolicy(jitter=False, sleep=lambda d: None).call(always)
    assert err.value is last[-1] and len(last) == 6


def test_permanent_errors_are_tried_once():
    slept = []
    fn, calls = failing(1, lambda: errors.IntegrityError("unique"))
    with pytest.raises(errors.IntegrityError):
        RetryPolicy(sleep=slept.append).call(fn)
    assert len(calls) == 1 and slept == []


def test_a_write_whose_outcome_is_unknown_is_never_retried_whatever_the_classifier_says():
    """It may have committed: repeating it could store it twice."""
    for policy in (RetryPolicy, lambda **kw: RetryPolicy(classifier=lambda exc: True, **kw)):
        slept = []
        fn, calls = failing(1, lambda: errors.OutcomeUnknownError("lost during COMMIT"))
        with pytest.raises(errors.OutcomeUnknownError):
            policy(sleep=slept.append).call(fn)
        assert len(calls) == 1 and slept == []

        async def main():
            afn, acalls = failing(1, lambda: errors.OutcomeUnknownError("lost during COMMIT"))

            async def call():
                return afn()

            async def no_sleep(_delay):
                raise AssertionError("slept")

            with pytest.raises(errors.OutcomeUnknownError):
                await policy(sleep=no_sleep).acall(call)
            return len(acalls)

        assert asyncio.run(main()) == 1


def test_retry_after_is_honoured_and_clamped():
    assert retry_after(HTTPError(429, {"Retry-After": "3"})) == 3.0
    assert retry_after(RequestsStyleError(503, {"retry-after": "2.5"})) == 2.5
    assert retry_after(HTTPError(429)) is None
    slept = []
    policy = RetryPolicy(jitter=False, sleep=slept.append, max_retry_after=10, deadline=None)
    fn, _ = failing(2, lambda: HTTPError(429, {"Retry-After": "4"}))
    policy.call(fn)
    assert slept == [4.0, 4.0]
    slept.clear()
    fn, _ = failing(1, lambda: HTTPError(503, {"Retry-After": "3600"}))
    policy.call(fn)
    assert slept == [10]
    # Within the default 10 s deadline, a 10 s hint cannot be waited for: the error is raised.
    slept.clear()
    fn, _ = failing(1, lambda: HTTPError(503, {"Retry-After": "3600"}))
    with pytest.raises(HTTPError):
        RetryPolicy(jitter=False, sleep=slept.append, max_retry_after=10).call(fn)
    assert slept == []


def test_on_retry_hook_logging_and_stats(caplog):
    seen = []
    policy = RetryPolicy(jitter=False, sleep=lambda d: None, on_retry=lambda a, d, e: seen.append((a, d, type(e))))
    fn, _ = failing(2, lambda: errors.BusyError("busy"))
    with caplog.at_level(logging.WARNING, logger="consensus_db.retry"):
        policy.call(fn)
    assert seen == [(1, 0.1, errors.BusyError), (2, 0.2, errors.BusyError)]
    assert len([r for r in caplog.records if "retrying in" in r.getMessage()]) == 2
    assert (policy.stats.calls, policy.stats.attempts, policy.stats.retries) == (1, 3, 2)
    assert policy.stats.total_delay == pytest.approx(0.3)


def test_async_functions_retry_with_an_async_sleeper():
    slept = []

    async def fake_sleep(delay):
        slept.append(delay)

    calls = []

    @retry(RetryPolicy(jitter=False, sleep=fake_sleep))
    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise errors.PoolTimeoutError("pool")
        return "done"

    assert asyncio.run(flaky()) == "done"
    assert slept == [0.1, 0.2] and len(calls) == 3


def test_decorator_forms():
    calls = []

    @retry(max_attempts=2, jitter=False, sleep=lambda d: None)
    def twice():
        calls.append(1)
        raise TimeoutError

    with pytest.raises(TimeoutError):
        twice()
    assert len(calls) == 2 and twice.retry_policy.max_attempts == 2


@pytest.mark.parametrize("kwargs, name", [({"max_attempts": 0}, "max_attempts"), ({"initial_delay": -1}, "initial_delay"),
                                          ({"max_delay": 0.01}, "max_delay")])
def test_invalid_policies_are_rejected(kwargs, name):
    with pytest.raises(errors.InvalidInputError, match=name):
        RetryPolicy(**kwargs)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_breaker_opens_fails_fast_half_opens_and_closes():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10, clock=clock)
    fn, calls = failing(100, lambda: HTTPError(503))
    for _ in range(3):
        with pytest.raises(HTTPError):
            breaker.call(fn)
    assert breaker.state == "open" and len(calls) == 3
    with pytest.raises(errors.CircuitOpenError, match="next trial in 10.0s"):
        breaker.call(fn)
    assert len(calls) == 3  # failed fast, not called through
    clock.now += 9.9
    with pytest.raises(errors.CircuitOpenError):
        breaker.call(fn)
    clock.now += 0.2
    assert breaker.state == "half_open"
    with pytest.raises(HTTPError):
        breaker.call(fn)  # the trial fails: open again
    assert breaker.state == "open" and len(calls) == 4
    clock.now += 10
    assert breaker.call(lambda: "recovered") == "recovered"
    assert breaker.state == "closed" and breaker.failures == 0


def test_breaker_as_async_decorator():
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5, clock=FakeClock())

    @breaker
    async def down():
        raise ConnectionResetError

    async def main():
        with pytest.raises(ConnectionResetError):
            await down()
        with pytest.raises(errors.CircuitOpenError):
            await down()

    asyncio.run(main())


def sqlite_lock(path, seconds):
    """Another process holding SQLite's EXCLUSIVE lock on ``path`` (for SQLite-only tests)."""
    return Backend("sqlite", path).hold_lock(seconds)


# The store's retries over a real lock held by another process: on SQLite a write meets
# `busy_timeout`, on PostgreSQL `lock_timeout` (conftest.Backend), both a BusyError.


def test_store_writes_retry_through_a_lock_held_by_another_process(backend):
    backend.connect().close()
    slept = []

    def sleeper(delay):  # real waiting is the point here: the other process must let go
        slept.append(delay)
        time.sleep(delay)

    policy = RetryPolicy(max_attempts=20, initial_delay=0.1, max_delay=0.3, jitter=False, sleep=sleeper)
    with backend.connect(busy_ms=50, retry=policy) as db:
        holder = backend.hold_lock(1.0)
        try:
            artifact_id = db.store_artifact("S", "plan", "gemini", {"ok": True})
        finally:
            holder.wait(timeout=30)
        assert slept, "the write should have met the lock and retried"
        assert [a.id for a in db.query_artifacts("S", "plan")] == [artifact_id]


def test_without_retry_the_busy_error_is_retryable(backend):
    backend.connect().close()
    with backend.connect(busy_ms=50, retry=None) as db:
        holder = backend.hold_lock(1.0)
        try:
            with pytest.raises(consensus_db.BusyError) as err:
                db.store_artifact("S", "plan", "gemini", {"ok": True})
        finally:
            holder.wait(timeout=30)
        assert is_retryable(err.value)
        assert db.query_artifacts("S", "plan") == []


def test_store_retries_in_the_engine_and_the_hook_hears_the_operation(backend):
    backend.connect().close()
    slept, seen = [], []

    def sleeper(delay):  # the other process must let go: wait for real, briefly
        slept.append(delay)
        time.sleep(delay)

    policy = RetryPolicy(max_attempts=40, initial_delay=0.05, max_delay=0.1, jitter=False, sleep=sleeper,
                         on_retry=lambda op, attempt, delay, exc: seen.append((op, attempt, type(exc))))
    with backend.connect(busy_ms=20, retry=policy) as db:
        assert db.retry_count == 0
        holder = backend.hold_lock(0.5)
        try:
            db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini")
        finally:
            holder.wait(timeout=30)
        assert seen and all(op == "record_agent_spawn" and kind is errors.BusyError for op, _, kind in seen)
        assert [a for _, a, _ in seen] == list(range(1, len(seen) + 1))
        assert db.retry_count == len(seen) == len(slept)
        assert policy.stats.retries == len(seen)
        assert db.get_agent_name("a1") == "gemini"
    assert not hasattr(consensus_db.Store, "_write")  # no per-method Python wrappers


# SQLite only: a transaction's BEGIN IMMEDIATE waits for the file's lock; PostgreSQL's BEGIN takes none.
def test_three_argument_on_retry_gets_the_operation_on_the_error(db_path):
    consensus_db.connect(db_path).close()
    seen = []
    policy = RetryPolicy(max_attempts=40, initial_delay=0.05, max_delay=0.1, jitter=False, sleep=time.sleep,
                         on_retry=lambda attempt, delay, exc: seen.append(exc.operation))
    with consensus_db.connect(db_path, pragmas={"busy_timeout": 20}, retry=policy) as db:
        holder = sqlite_lock(db_path, 0.4)
        try:
            with db.transaction() as tx:
                tx.execute("DELETE FROM agent_executions")
        finally:
            holder.wait(timeout=30)
    assert seen and set(seen) == {"begin"}


def legacy_file(path):
    """A file the store has never opened: rollback journal, no incremental auto-vacuum."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()


# SQLite only: a rollback-journal file's bootstrap; PostgreSQL's migrations wait on an advisory lock.
def test_opening_retries_a_busy_bootstrap(db_path, caplog):
    legacy_file(db_path)  # rollback journal: the holder's EXCLUSIVE lock blocks readers too
    seen = []
    policy = RetryPolicy(max_attempts=40, initial_delay=0.05, max_delay=0.1, jitter=False, sleep=time.sleep,
                         on_retry=lambda op, attempt, delay, exc: seen.append(op))
    holder = sqlite_lock(db_path, 0.4)
    try:
        with caplog.at_level(logging.WARNING, logger="consensus_db"):
            db = consensus_db.connect(db_path, pragmas={"busy_timeout": 20}, retry=policy)
    finally:
        holder.wait(timeout=30)
    with db:
        assert seen and set(seen) == {"open"}
        assert db.retry_count == len(seen)
    assert any(r.name == "consensus_db.retry" and "open" in r.getMessage() for r in caplog.records)


# SQLite only: a junk file and a file's auto_vacuum (PostgreSQL's refused credentials:
# test_pg_connections.py).
def test_opening_does_not_retry_what_no_retry_can_fix(tmp_path, db_path):
    slept = []
    policy = RetryPolicy(max_attempts=10, jitter=False, sleep=slept.append)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(consensus_db.Error) as err:
        consensus_db.connect(junk, retry=policy)
    assert not err.value.retryable
    legacy_file(db_path)
    with pytest.raises(consensus_db.PragmaVerificationError) as err:
        consensus_db.connect(db_path, convert_auto_vacuum=False, retry=policy)
    assert not err.value.retryable
    assert slept == []


def test_retry_none_does_not_retry_and_counts_nothing(backend):
    backend.connect().close()
    with backend.connect(busy_ms=20, retry=None) as db:
        holder = backend.hold_lock(0.5)
        try:
            with pytest.raises(consensus_db.BusyError):
                db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini")
            if backend.name == "sqlite":  # BEGIN IMMEDIATE waits for the lock; PostgreSQL's BEGIN takes none
                with pytest.raises(consensus_db.BusyError):
                    db.transaction().__enter__()
        finally:
            holder.wait(timeout=30)
        assert db.retry_count == 0


def test_the_consensus_db_logger_has_a_null_handler():
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("consensus_db").handlers)
    assert consensus_db.DEFAULT_RETRY.delays()[-1] == consensus_db.DEFAULT_RETRY.max_delay == 1.6
