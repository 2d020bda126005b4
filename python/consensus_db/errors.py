"""The exception tree: every error the library raises is a :class:`Error`.

The Rust core has one error enum; the bindings map each variant onto exactly one of
these classes. ``retryable`` tells :mod:`consensus_db.retry` (and you) whether trying
the same call again later can succeed.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "Error",
    "BusyError",
    "PoolTimeoutError",
    "IntegrityError",
    "InvalidInputError",
    "SchemaVersionError",
    "MigrationError",
    "ExecutionsInFlightError",
    "PragmaVerificationError",
    "CorruptDatabaseError",
    "ReadOnlyError",
    "ClosedError",
    "ForkedProcessError",
    "DiskFullError",
    "CircuitOpenError",
    "ReplicationError",
    "DatabaseError",
    "TransactionError",
    "InternalError",
    "NotSupportedError",
    "ConnectionLostError",
    "OutcomeUnknownError",
    "NotReplicatedError",
    "StaleClaimError",
    "IdempotencyKeyError",
]


class Error(Exception):
    """Base class of every consensus-db error."""

    retryable = False


class BusyError(Error):
    """The database is busy or locked by another connection or process (retryable)."""

    retryable = True


class PoolTimeoutError(Error):
    """No pooled connection became free within the checkout timeout (retryable)."""

    retryable = True


class IntegrityError(Error):
    """A constraint was violated (unique, not-null, foreign key, check)."""


class InvalidInputError(Error, ValueError):
    """An argument was rejected before anything was written; the message names it."""


class SchemaVersionError(Error):
    """The database's schema version is newer than this library understands."""


class MigrationError(Error):
    """A migration failed or was refused; the database stays at its previous version."""


class ExecutionsInFlightError(MigrationError):
    """A move that drops or downgrades tables was refused because agents are running:
    executions spawned within the guard's age and not completed (the message says how
    many). Wait for them, or pass ``force=True``."""


class PragmaVerificationError(Error):
    """A pragma did not read back as configured; the message names pragma, wanted and actual."""


class CorruptDatabaseError(Error):
    """The file is not a SQLite database, or it is damaged."""


class ReadOnlyError(Error):
    """A write was attempted through a read-only store or on a read-only file; or SQLite
    must write where it cannot (a hot rollback journal a read-only store cannot roll back,
    a directory where ``-wal``/``-shm``/``-journal`` cannot be created): the message says which."""


class ClosedError(Error):
    """The store was used after ``close()``."""


class ForkedProcessError(Error):
    """The store was opened before ``fork()`` and used in the child; open a new one there."""


class DiskFullError(Error):
    """The disk, the file-size limit or ``max_page_count`` was reached; nothing was written."""


class CircuitOpenError(Error):
    """A circuit breaker is open and fails fast without calling through."""


class ReplicationError(Error):
    """Litestream (:mod:`consensus_db.replication`) could not be found or started, exited
    with an error, or a restore failed or gave a file that fails its integrity check;
    the message says which, with what Litestream said."""


class DatabaseError(Error):
    """Any other SQLite failure (syntax errors, missing tables, I/O errors)."""


class TransactionError(DatabaseError):
    """A transaction block cannot go on: SQLite ended its transaction by itself (an
    ``INSERT OR ROLLBACK`` conflict, a rollback after a full disk), or a statement run
    through ``tx.execute`` tried to (``COMMIT``, ``ROLLBACK``, ``BEGIN``, ``SAVEPOINT``,
    ``RELEASE``: use the ``with`` block and ``tx.savepoint()``). Nothing after that
    point runs or persists."""


class InternalError(Error):
    """A bug inside consensus-db (a Rust panic caught at the boundary). Please report it."""


class NotSupportedError(Error):
    """The operation or option does not apply to this backend: a SQLite-only surface
    (``pragmas()``, ``verify_pragmas()``, journal mode, ``"immediate"``/``"exclusive"``
    transactions, backups, checkpoints, ...) called on a PostgreSQL store. The message
    names it."""


class ConnectionLostError(Error):
    """The connection to the PostgreSQL server was lost, or none could be made, before
    anything that could commit was sent — or in a call that only reads or applies
    migrations (retryable: the next call reconnects, following a failover when the URL
    lists several hosts with ``target_session_attrs=read-write``). A server that refuses
    the URL's password, role or database raises :class:`InvalidInputError` instead."""

    retryable = True


class OutcomeUnknownError(Error):
    """A write was sent to PostgreSQL and the connection was lost before its outcome
    was known: it may or may not have committed. Not retryable: repeating it blindly
    could write it twice. Check the data before writing again. Every write raises it
    once its statement (or ``COMMIT``) may have reached the server: raw
    ``execute``/``query``, a transaction's ``COMMIT``, and the store's own writes. Those
    the store can repeat safely within the call — spawns, completions, artifacts and
    syntheses (by a write token) — are repeated first, and raise this only when no
    repetition got through. A call that carried an idempotency key is safe to repeat
    with the same key (the repeat returns the first write's id): ``idempotency_key``
    names it, and :class:`~consensus_db.retry.RetryPolicy` repeats such a call; without
    a key (``idempotency_key`` None) it never retries it."""

    #: The key of the call that raised it (a batch: its first item's, set only when
    #: every item has one), or None: then repeating could write it twice.
    idempotency_key: Optional[str] = None


class NotReplicatedError(OutcomeUnknownError):
    """A COMMIT on PostgreSQL that waited for a synchronous standby past its deadline
    (the connection's ``statement_timeout``) and stopped waiting: the primary has the
    write, the standby a failover would promote may not. Do not write it again (the
    primary has it); a failover before the standby catches up could lose it. Never
    retried: it is an :class:`OutcomeUnknownError`."""


class StaleClaimError(Error):
    """A write that advances a stage (``store_synthesis``), or a ``renew_claim``, under a
    claim that is no longer the stage's newest live claim — taken over by another owner,
    expired or released — or a ``store_synthesis`` without ``claim=`` on a stage another
    owner holds a live claim on. Nothing was written. Not retryable: claim the stage again.
    The message names the stage and the newest token; so do the attributes."""

    spec_id: str
    stage: str
    branch_id: Optional[str]
    #: The claim's token given with the write (None: no claim was given).
    token: Optional[int]
    #: The stage's newest token (None: no claim of it was ever taken).
    newest_token: Optional[int]


class IdempotencyKeyError(InvalidInputError):
    """An idempotency key already used by an earlier write with other content (or by
    another operation: keys are store-wide). Nothing was written. ``idempotency_key``
    names it."""

    idempotency_key: str
