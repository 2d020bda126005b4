"""A PostgreSQL store and its connections, on a real server: a write whose reply is lost
on the wire (a proxy on loopback forwards the request, the server commits, the client
never hears back) is OutcomeUnknownError, never a retryable error that a retry would
store twice; a server refusing the URL's password or database is a permanent error;
and no surface shows a secret of the URL."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import consensus_db
from consensus_db.retry import RetryPolicy, is_retryable
from pg_cluster import CuttingProxy


def executes(kind: bytes, body: bytes) -> bool:
    return kind == b"E"


def commits(kind: bytes, body: bytes) -> bool:
    return kind == b"Q" and body.rstrip(b"\0").strip().upper() == b"COMMIT"


def _in_transaction(db):
    with db.transaction() as tx:
        tx.execute("INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                   "VALUES ('cut', 'S', 'plan', 'quality_gate', 'g', 'x')")


WRITES = {
    "store_artifact": (executes, lambda db: db.store_artifact("S", "plan", "cut", "{}"),
                       "SELECT count(*) FROM agent_outputs WHERE agent_name = 'cut'"),
    "store_artifacts": (commits, lambda db: db.store_artifacts([dict(spec_id="S", stage="plan", agent_name="cut",
                                                                     content_json="{}")]),
                        "SELECT count(*) FROM agent_outputs WHERE agent_name = 'cut'"),
    "store_synthesis": (executes, lambda db: db.store_synthesis("S", "cut", "# m"),
                        "SELECT count(*) FROM consensus_runs WHERE stage = 'cut' AND synthesis_json IS NOT NULL"),
    "record_agent_spawn": (executes, lambda db: db.record_agent_spawn("cut", "S", "plan", "quality_gate", "g"),
                           "SELECT count(*) FROM agent_executions WHERE agent_id = 'cut'"),
    # An INSERT outside a transaction is its own commit.
    "execute": (executes, lambda db: db.execute(
        "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
        "VALUES ('cut', 'S', 'plan', 'quality_gate', 'g', 'x')"),
                "SELECT count(*) FROM agent_executions WHERE agent_id = 'cut'"),
    "transaction COMMIT": (commits, _in_transaction, "SELECT count(*) FROM agent_executions WHERE agent_id = 'cut'"),
}


@pytest.fixture
def proxy(pg_cluster):
    p = CuttingProxy(pg_cluster.port)
    yield p
    p.close()


@pytest.mark.parametrize("write", list(WRITES))
def test_a_committed_write_whose_reply_is_lost_is_outcome_unknown_and_a_retry_stores_it_once(
    pg_cluster, pg_url, proxy, write
):
    """The reply to a write that committed is lost and the server stays unreachable past
    the store's own retries: the call is OutcomeUnknownError (not retryable), so the
    library's RetryPolicy does not repeat it, and the write is stored once."""
    cut_on, call, count_sql = WRITES[write]
    engine_retry = RetryPolicy(max_attempts=3, jitter=False, sleep=lambda _d: None)
    db = consensus_db.connect(proxy.url(pg_url, pg_cluster.port), retry=engine_retry)
    direct = consensus_db.connect(pg_url)
    try:
        # Warm: the store's statements are prepared, its connection pooled.
        db.store_artifact("S", "plan", "warm", "{}")
        db.record_agent_spawn("warm", "S", "plan", "quality_gate", "g")
        proxy.cut_after(cut_on)
        # The server is back by the time the caller's policy would try again.
        caller = RetryPolicy(max_attempts=3, jitter=False, sleep=lambda _d: proxy.up())
        try:
            caller.call(call, db)
            raised = None
        except consensus_db.Error as e:
            raised = e
        assert proxy.cut_done.wait(10), "the server never finished the request the proxy cut off"
        [(stored,)] = direct.query(count_sql)
        assert (type(raised).__name__, stored) == ("OutcomeUnknownError", 1), raised
        assert raised.retryable is False and not is_retryable(raised)
        assert caller.stats.attempts == 1
        # The store goes on once the server is reachable again.
        proxy.up()
        db.store_artifact("S", "plan", "after", "{}")
    finally:
        db.close()
        direct.close()


def test_a_connection_lost_before_commit_in_a_transaction_rolls_back_and_is_not_outcome_unknown(
    pg_cluster, pg_url, proxy
):
    """Inside an explicit transaction, a lost statement provably committed nothing."""
    db = consensus_db.connect(proxy.url(pg_url, pg_cluster.port), retry=None)
    direct = consensus_db.connect(pg_url)
    try:
        db.record_agent_spawn("warm", "S", "plan", "quality_gate", "g")
        proxy.cut_after(executes)
        with pytest.raises(consensus_db.Error) as raised:
            _in_transaction(db)
        assert not isinstance(raised.value, consensus_db.OutcomeUnknownError), raised.value
        assert proxy.cut_done.wait(10)
        assert direct.query("SELECT count(*) FROM agent_executions WHERE agent_id = 'cut'") == [(0,)]
    finally:
        db.close()
        direct.close()
