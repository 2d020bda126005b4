"""Retry classification, exponential backoff with full jitter, and a circuit breaker.

- :func:`classify` / :func:`is_retryable` decide whether trying again can help.
- :class:`RetryPolicy` runs a sync (``policy.call``) or async (``await policy.acall``)
  callable, sleeping ``min(max_delay, initial_delay * 2**n)`` between attempts — or a
  uniform random delay in ``[0, that]`` with ``jitter=True`` ("full jitter").
  ``sleep`` and ``random`` are injectable so tests never wait.
- :func:`retry` is the decorator form; :class:`CircuitBreaker` fails fast while a
  dependency keeps failing.

This module stands alone rather than building on tenacity: the API it has to offer is
small, it needs an injectable sleeper and clock for sync and async callables, and a
~200-line module is easier to read and test than tenacity's callback configuration.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import random as _random
import socket
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, ParamSpec, TypeVar, cast, overload

from .errors import CircuitOpenError, Error, InvalidInputError, NotReplicatedError, OutcomeUnknownError

__all__ = [
    "Classification",
    "classify",
    "is_retryable",
    "retry_after",
    "RetryPolicy",
    "RetryStats",
    "retry",
    "CircuitBreaker",
]

T = TypeVar("T")
P = ParamSpec("P")
CircuitState = Literal["closed", "open", "half_open"]
log = logging.getLogger("consensus_db.retry")

RETRYABLE_HTTP = frozenset({408, 429, 500, 502, 503, 504})
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_BUSY_MESSAGES = ("database is locked", "database table is locked", "database is busy", "busy")


class Classification(str, enum.Enum):
    """Whether trying a failed call again can succeed."""

    RETRYABLE = "retryable"
    PERMANENT = "permanent"


def _http_status(exc: BaseException) -> Optional[int]:
    for holder in (exc, getattr(exc, "response", None)):
        if holder is None:
            continue
        for name in ("status_code", "status"):
            value = getattr(holder, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
    return None


def classify(exc: BaseException) -> Classification:
    """Retryable: busy/locked databases, pool timeouts, timeouts, connection resets,
    HTTP 408/429/500/502/503/504. Everything else — constraints, validation, syntax,
    auth, other 4xx, disk full, unknown exceptions — is permanent, and so is
    :class:`~consensus_db.errors.OutcomeUnknownError` (a write that may have committed)."""
    if isinstance(exc, Error):
        return Classification.RETRYABLE if exc.retryable else Classification.PERMANENT
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return (
                Classification.RETRYABLE if code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED) else Classification.PERMANENT
            )
        if isinstance(exc, sqlite3.OperationalError) and any(m in str(exc).lower() for m in _BUSY_MESSAGES):
            return Classification.RETRYABLE
        return Classification.PERMANENT
    status = _http_status(exc)
    if status is not None:
        return Classification.RETRYABLE if status in RETRYABLE_HTTP else Classification.PERMANENT
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, socket.timeout, ConnectionError)):
        return Classification.RETRYABLE
    return Classification.PERMANENT


def _repeatable_under_key(exc: BaseException) -> bool:
    """An outcome left unknown of a call that carried an idempotency key: repeating the
    same call (the same key) returns the first write's id instead of writing twice."""
    return (
        isinstance(exc, OutcomeUnknownError)
        and not isinstance(exc, NotReplicatedError)
        and exc.idempotency_key is not None
    )


def is_retryable(exc: BaseException) -> bool:
    """``classify(exc) is Classification.RETRYABLE``."""
    return classify(exc) is Classification.RETRYABLE


def retry_after(exc: BaseException) -> Optional[float]:
    """A server's Retry-After hint in seconds, from ``exc.retry_after`` or the headers
    of ``exc`` / ``exc.response``; ``None`` when absent or unreadable."""
    hint = getattr(exc, "retry_after", None)
    if hint is None:
        for holder in (exc, getattr(exc, "response", None)):
            headers = getattr(holder, "headers", None) if holder is not None else None
            if headers:
                hint = next((v for k, v in dict(headers).items() if str(k).lower() == "retry-after"), None)
                if hint is not None:
                    break
    try:
        seconds = float(hint) if hint is not None else None
    except (TypeError, ValueError):
        return None
    return seconds if seconds is not None and seconds >= 0 else None


@dataclass
class RetryStats:
    """What a policy has done (shared by every call through it; thread-safe)."""

    calls: int = 0
    attempts: int = 0
    retries: int = 0
    failures: int = 0
    total_delay: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``initial_delay`` doubling to ``max_delay`` (the defaults
    reach the cap: 0.1, 0.2, 0.4, 0.8, 1.6 s), ``max_attempts`` tries in all, and no
    retry that would sleep past ``deadline`` seconds after the first attempt started
    (None: no deadline). ``sleep`` replaces ``time.sleep`` (or ``asyncio.sleep`` for
    ``acall``; then it must be a coroutine function) and ``clock`` replaces
    ``time.monotonic``, so tests need not wait. ``on_retry(attempt, delay, exc)`` is
    called before each sleep. Retry-After hints are honoured up to ``max_retry_after``
    seconds. Given to ``connect(retry=...)``, the engine runs the same schedule.
    :class:`~consensus_db.errors.OutcomeUnknownError` is retried only for a call that
    carried an idempotency key (the error's ``idempotency_key``: the repeat returns the
    first write's id), never otherwise, even by a ``classifier`` that says it may be:
    repeating the write could store it twice; a
    :class:`~consensus_db.errors.NotReplicatedError` never."""

    max_attempts: int = 6
    initial_delay: float = 0.1
    max_delay: float = 1.6
    jitter: bool = True
    sleep: Optional[Callable[[float], Any]] = None
    #: ``(attempt, delay, exc)``; the engine also accepts ``(operation, attempt, delay, exc)``.
    on_retry: Optional[Callable[..., object]] = None
    classifier: Callable[[BaseException], bool] = is_retryable
    max_retry_after: float = 30.0
    random: Callable[[], float] = _random.random
    deadline: Optional[float] = 10.0
    clock: Callable[[], float] = time.monotonic
    stats: RetryStats = field(default_factory=RetryStats, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidInputError(f"invalid max_attempts: must be an int >= 1, got {self.max_attempts!r}")
        for name in ("initial_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise InvalidInputError(f"invalid {name}: must be a number >= 0, got {value!r}")
        if self.deadline is not None and (
            isinstance(self.deadline, bool) or not isinstance(self.deadline, (int, float)) or self.deadline <= 0
        ):
            raise InvalidInputError(f"invalid deadline: must be a number of seconds > 0 or None, got {self.deadline!r}")
        if self.max_delay < self.initial_delay:
            raise InvalidInputError(
                f"invalid max_delay: {self.max_delay!r} is below initial_delay {self.initial_delay!r}"
            )

    def backoff(self, retry_number: int) -> float:
        """The capped exponential delay before retry ``retry_number`` (1-based), no jitter."""
        return min(self.max_delay, self.initial_delay * 2.0 ** (retry_number - 1))

    def delays(self) -> list[float]:
        """The planned delays between attempts, without jitter."""
        return [self.backoff(n) for n in range(1, self.max_attempts)]

    def delay_for(self, retry_number: int, exc: BaseException) -> float:
        """The delay before retry ``retry_number`` after ``exc``: the backoff, jittered,
        raised to a Retry-After hint (clamped to ``max_retry_after``)."""
        delay = self.backoff(retry_number)
        if self.jitter:
            delay = self.random() * delay
        hint = retry_after(exc)
        if hint is not None:
            delay = max(delay, min(hint, self.max_retry_after))
        return delay

    def _next_delay(self, attempt: int, exc: BaseException, started: float) -> Optional[float]:
        """The delay before the next attempt, or None when ``exc`` must be raised."""
        # A write that may have committed is repeated only under its idempotency key.
        keyed = _repeatable_under_key(exc)
        if (
            attempt >= self.max_attempts
            or (isinstance(exc, OutcomeUnknownError) and not keyed)
            or not (keyed or self.classifier(exc))
        ):
            self.stats._add(failures=1)
            return None
        delay = self.delay_for(attempt, exc)
        if self.deadline is not None and self.clock() - started + delay >= self.deadline:
            self.stats._add(failures=1)
            return None
        self.stats._add(retries=1, total_delay=delay)
        log.warning(
            "attempt %d/%d failed (%s: %s); retrying in %.3fs",
            attempt,
            self.max_attempts,
            type(exc).__name__,
            exc,
            delay,
        )
        if self.on_retry is not None:
            self.on_retry(attempt, delay, exc)
        return delay

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Calls ``fn`` until it succeeds, raises a permanent error, or attempts run out
        (then the last exception is re-raised as it was)."""
        sleep = self.sleep or time.sleep
        self.stats._add(calls=1)
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            self.stats._add(attempts=1)
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                delay = self._next_delay(attempt, exc, started)
                if delay is None:
                    raise
            sleep(delay)

    async def acall(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """The coroutine form of :meth:`call`; ``sleep`` must be a coroutine function."""
        sleep = self.sleep or asyncio.sleep
        self.stats._add(calls=1)
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            self.stats._add(attempts=1)
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                delay = self._next_delay(attempt, exc, started)
                if delay is None:
                    raise
            await sleep(delay)


@overload
def retry(policy: Callable[P, T], /) -> Callable[P, T]: ...


@overload
def retry(policy: Optional[RetryPolicy] = None, /, **options: Any) -> Callable[[Callable[P, T]], Callable[P, T]]: ...


def retry(policy: Any = None, /, **options: Any) -> Any:
    """Decorates a sync or async function with a retry policy; the decorated function
    keeps its exact signature for type checkers (``ParamSpec``, as stamina does).

    ``@retry`` uses the defaults, ``@retry(policy)`` a given policy, ``@retry(max_attempts=3)``
    a policy built from keyword arguments. The policy is exposed as ``fn.retry_policy``."""
    if callable(policy) and not isinstance(policy, RetryPolicy):
        return retry()(policy)
    if policy is not None and not isinstance(policy, RetryPolicy):
        raise InvalidInputError(
            f"invalid policy: must be a RetryPolicy, None or a function, got {type(policy).__name__}"
        )
    chosen: RetryPolicy = policy if policy is not None else RetryPolicy(**options)

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await chosen.acall(afn, *args, **kwargs)

            async_wrapper.retry_policy = chosen  # type: ignore[attr-defined]
            return cast(Callable[P, T], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return chosen.call(fn, *args, **kwargs)

        wrapper.retry_policy = chosen  # type: ignore[attr-defined]
        return wrapper

    return decorate


class CircuitBreaker:
    """Closed → (``failure_threshold`` consecutive failures) → open: calls fail fast with
    :class:`~consensus_db.errors.CircuitOpenError` → after ``reset_timeout`` seconds of
    ``clock`` → half-open: one trial call; success closes, failure reopens. Every
    exception counts as a failure unless ``classifier`` says otherwise."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        clock: Optional[Callable[[], float]] = None,
        classifier: Optional[Callable[[BaseException], bool]] = None,
    ) -> None:
        if not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise InvalidInputError(f"invalid failure_threshold: must be an int >= 1, got {failure_threshold!r}")
        if reset_timeout < 0:
            raise InvalidInputError(f"invalid reset_timeout: must be >= 0, got {reset_timeout!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.clock = clock or time.monotonic
        self.classifier = classifier or (lambda exc: True)
        self.failures = 0
        self._opened_at: Optional[float] = None
        self._trial_running = False
        self._lock = threading.Lock()

    @property
    def state(self) -> CircuitState:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        with self._lock:
            return self._state()

    def _state(self) -> CircuitState:
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at >= self.reset_timeout:
            return "half_open"
        return "open"

    def _before(self) -> None:
        with self._lock:
            state = self._state()
            if state == "open" or (state == "half_open" and self._trial_running):
                assert self._opened_at is not None
                wait = max(0.0, self.reset_timeout - (self.clock() - self._opened_at))
                raise CircuitOpenError(
                    f"circuit open after {self.failures} consecutive failures; next trial in {wait:.1f}s"
                )
            if state == "half_open":
                self._trial_running = True

    def _after(self, exc: Optional[BaseException]) -> None:
        with self._lock:
            self._trial_running = False
            if exc is None or not self.classifier(exc):
                self.failures = 0
                self._opened_at = None
                return
            self.failures += 1
            if self._opened_at is not None or self.failures >= self.failure_threshold:
                self._opened_at = self.clock()

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Calls ``fn`` through the breaker: fails fast with ``CircuitOpenError`` while open."""
        self._before()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._after(exc)
            raise
        self._after(None)
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """The coroutine form of :meth:`call`."""
        self._before()
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            self._after(exc)
            raise
        self._after(None)
        return result

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorates a sync or async function so every call goes through the breaker."""
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.acall(afn, *args, **kwargs)

            return cast(Callable[P, T], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.call(fn, *args, **kwargs)

        return wrapper
