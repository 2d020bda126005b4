"""Idempotent writes (issue 32 item 3), on both backends: a write given an idempotency
key that is repeated — after a timeout, a crash, a retried request — returns the first
write's id and writes nothing; the same key with other content is a typed error naming
the key, nothing written. Keys are store-wide, outlive the row they name, and are kept
``idempotency_days``; retention prunes the expired. A keyed call whose outcome is
unknown (PostgreSQL) is repeated by ``RetryPolicy``; an unkeyed one never is.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

import consensus_db
from consensus_db import aio
from consensus_db.retry import RetryPolicy

from conftest import ph


def outputs(db, agent_name: str | None = None) -> int:
    sql = "SELECT count(*) FROM agent_outputs" + ("" if agent_name is None else " WHERE agent_name = ?")
    return int(db.query(ph(db, sql), () if agent_name is None else (agent_name,))[0][0])


def keys(db) -> int:
    return int(db.query("SELECT count(*) FROM consensus_idempotency")[0][0])


def test_a_repeat_with_the_same_key_returns_the_first_id_and_writes_nothing(store_target):
    with consensus_db.connect(store_target) as db:
        first = db.store_artifact("S", "plan", "gemini", {"b": 1, "a": [1, 2]}, idempotency_key="art-1")
        # The same content as canonical JSON: key order and whitespace do not matter.
        assert db.store_artifact("S", "plan", "gemini", '{ "a": [1, 2], "b": 1 }', idempotency_key="art-1") == first
        assert outputs(db) == 1
        batch = [
            dict(spec_id="S", stage="plan", agent_name="claude", content_json="{}", idempotency_key="art-2"),
            dict(spec_id="S", stage="plan", agent_name="gemini", content_json={"a": [1, 2], "b": 1},
                 idempotency_key="art-1"),
            dict(spec_id="S", stage="plan", agent_name="code", content_json="{}"),  # no key: always written
        ]
        ids = db.store_artifacts(batch)
        assert ids[1] == first and outputs(db) == 3
        again = db.store_artifacts(batch)
        assert again[:2] == ids[:2] and again[2] != ids[2] and outputs(db) == 4
        # One key twice in a batch, the same content: one row, one id.
        twice = db.store_artifacts([dict(spec_id="S", stage="plan", agent_name="x", content_json="[1]",
                                         idempotency_key="art-3")] * 2)
        assert twice[0] == twice[1] and outputs(db, "x") == 1
        synthesis = db.store_synthesis("S", "plan", "# merged", agreements=["a"], idempotency_key="syn-1")
        assert db.store_synthesis("S", "plan", "# merged", agreements='["a"]', idempotency_key="syn-1") == synthesis
        n = int(db.query("SELECT count(*) FROM consensus_runs WHERE synthesis_json IS NOT NULL")[0][0])
        assert n == 1


def test_the_same_key_with_other_content_is_a_typed_error_naming_the_key_and_nothing_is_written(store_target):
    with consensus_db.connect(store_target) as db:
        db.store_artifact("S", "plan", "gemini", {"a": 1}, idempotency_key="k-1")
        with pytest.raises(consensus_db.IdempotencyKeyError, match='idempotency key "k-1"') as e:
            db.store_artifact("S", "plan", "gemini", {"a": 2}, idempotency_key="k-1")
        assert e.value.idempotency_key == "k-1" and isinstance(e.value, consensus_db.InvalidInputError)
        # Store-wide: another operation under the key is refused too.
        with pytest.raises(consensus_db.IdempotencyKeyError, match="store_artifact"):
            db.store_synthesis("S", "plan", "# m", idempotency_key="k-1")
        # A batch with one conflicting item writes none of its items.
        with pytest.raises(consensus_db.IdempotencyKeyError, match='"k-1"'):
            db.store_artifacts([
                dict(spec_id="S", stage="plan", agent_name="fresh", content_json="{}", idempotency_key="k-2"),
                dict(spec_id="S", stage="plan", agent_name="gemini", content_json={"a": 3}, idempotency_key="k-1"),
            ])
        with pytest.raises(consensus_db.IdempotencyKeyError, match='"k-3"'):
            db.store_artifacts([
                dict(spec_id="S", stage="plan", agent_name="fresh", content_json="[1]", idempotency_key="k-3"),
                dict(spec_id="S", stage="plan", agent_name="fresh", content_json="[2]", idempotency_key="k-3"),
            ])
        assert outputs(db) == 1 and keys(db) == 1
        assert db.query("SELECT count(*) FROM consensus_runs WHERE synthesis_json IS NOT NULL") == [(0,)]
        with pytest.raises(consensus_db.InvalidInputError, match="idempotency_key"):
            db.store_artifact("S", "plan", "gemini", "{}", idempotency_key=" ")
        with pytest.raises(consensus_db.InvalidInputError, match=r"artifacts\[0\]\.idempotency_key"):
            db.store_artifacts([dict(spec_id="S", stage="plan", agent_name="g", content_json="{}",
                                     idempotency_key="")])


def test_keys_outlive_a_deleted_row_expire_after_their_days_and_retention_prunes_them(store_target):
    with consensus_db.connect(store_target, idempotency_days=2) as db:
        first = db.store_artifact("S", "plan", "gemini", "{}", idempotency_key="k")
        db.delete_runs("S")
        assert outputs(db) == 0
        # The row is gone, the key is not: a late repeat still writes nothing.
        assert db.store_artifact("S", "plan", "gemini", "{}", idempotency_key="k") == first
        assert outputs(db) == 0
        # Past its days the key no longer answers: the write is a new one.
        db._set_clock_offset(2 * 86_400 + 60)
        second = db.store_artifact("S", "plan", "gemini", "{}", idempotency_key="k")
        assert second != first and outputs(db) == 1
        db._set_clock_offset(0)
        db.store_artifact("S", "plan", "gemini", "{}", idempotency_key="young")
        # Retention deletes the expired keys (the key, recorded two days ahead, made five days older), keeps the young.
        db.execute(ph(db, "UPDATE consensus_idempotency SET created_at_ms = created_at_ms - ? WHERE key = 'k'"),
                   (5 * 86_400_000,))
        db.cleanup_old_executions(30)
        assert db.query("SELECT key FROM consensus_idempotency") == [("young",)]
    with pytest.raises(consensus_db.InvalidInputError, match="idempotency_days"):
        consensus_db.connect(store_target, idempotency_days=0)


def test_the_async_twins_take_the_key_through_the_write_lane(store_target):
    async def main() -> None:
        async with aio.connect(store_target) as db:
            ids = await asyncio.gather(
                *(db.store_artifact("S", "plan", "gemini", "{}", idempotency_key="a-1") for _ in range(8))
            )
            assert len(set(ids)) == 1
            with pytest.raises(consensus_db.IdempotencyKeyError):
                await db.store_artifact("S", "plan", "gemini", "[]", idempotency_key="a-1")
            s = await db.store_synthesis("S", "plan", "# m", idempotency_key="a-2")
            assert await db.store_synthesis("S", "plan", "# m", idempotency_key="a-2") == s
        with consensus_db.connect(store_target) as sync:
            assert outputs(sync) == 1

    asyncio.run(main())


# ---- a repeat after the first attempt's process was killed -------------------------------

WRITER = r"""
import sys
import consensus_db
db = consensus_db.connect(sys.argv[1])
n, hold = int(sys.argv[2]), sys.argv[3] == "hold"
for i in range(n):
    id = db.store_artifact("S", "plan", f"agent-{i}", {"i": i}, idempotency_key=f"write-{i}")
    if hold and i == 30:  # committed, and the reply never reaches the caller: killed before it
        print(f"{i} ?", flush=True)
        sys.stdin.read()
    print(f"{i} {id}", flush=True)
"""


@pytest.mark.parametrize("kill", ["after_commit", "mid_stream"])
def test_an_idempotent_write_repeated_after_sigkill_of_the_first_attempts_process_gives_one_row(store_target, kill):
    """A process writes keyed artifacts and is SIGKILLed: right after a write committed,
    before its caller heard the id (``after_commit``), or at any point of a stream of
    writes, one of them perhaps in flight (``mid_stream``). A new process repeating every
    write with the same keys ends with one row per key, the ids heard back unchanged."""
    n = 200
    consensus_db.connect(store_target).close()
    first = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store_target), str(n), "hold" if kill == "after_commit" else "run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    heard: dict[int, int] = {}
    while len(heard) < 31:
        line = first.stdout.readline()
        assert line, "the writer exited before it was killed"
        i, id = line.split()
        if id == "?":
            break
        heard[int(i)] = int(id)
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    with consensus_db.connect(store_target) as db:
        before = outputs(db)
        if kill == "after_commit":
            assert before == 31 and len(heard) == 30, "write 30 committed, its id never reported"
            [(lost_id,)] = db.query(ph(db, "SELECT id FROM agent_outputs WHERE agent_name = ?"), ("agent-30",))
        ids = [db.store_artifact("S", "plan", f"agent-{i}", {"i": i}, idempotency_key=f"write-{i}") for i in range(n)]
        print(f"\n[{kill}] killed after {len(heard)} acknowledged writes, {before} rows committed; "
              f"after the repeat: {outputs(db)} rows for {n} keys")
        assert before >= len(heard)
        assert outputs(db) == n and len(set(ids)) == n
        assert all(ids[i] == id for i, id in heard.items())
        if kill == "after_commit":
            assert ids[30] == lost_id
        for i in range(n):  # every key once
            assert outputs(db, f"agent-{i}") == 1


# ---- retrying an outcome left unknown ----------------------------------------------------


def test_retry_policy_repeats_an_outcome_unknown_only_for_a_call_carrying_a_key():
    keyed = consensus_db.OutcomeUnknownError("lost")
    keyed.idempotency_key = "k"
    unreplicated = consensus_db.NotReplicatedError("standby gone")
    unreplicated.idempotency_key = "k"
    for error, attempts in [(consensus_db.OutcomeUnknownError("lost"), 1), (keyed, 2), (unreplicated, 1)]:
        policy = RetryPolicy(max_attempts=3, jitter=False, sleep=lambda _d: None)
        calls = []

        def write():
            calls.append(1)
            if len(calls) == 1:
                raise error
            return 7

        if attempts == 1:
            with pytest.raises(type(error)):
                policy.call(write)
        else:
            assert policy.call(write) == 7
        assert len(calls) == attempts, error


def test_a_keyed_write_whose_reply_is_lost_is_repeated_by_the_policy_and_stored_once(pg_cluster, pg_url):
    """PostgreSQL: the reply to a keyed write that committed is lost and the server stays
    unreachable past the store's own retries. The OutcomeUnknownError names the key, the
    caller's RetryPolicy repeats the call once the server is back, and the repeat returns
    the first write's id: one row. (Without a key the same cut is never repeated:
    ``test_pg_connections.py``.)"""
    from pg_cluster import CuttingProxy

    proxy = CuttingProxy(pg_cluster.port)
    engine_retry = RetryPolicy(max_attempts=3, jitter=False, sleep=lambda _d: None)
    db = consensus_db.connect(proxy.url(pg_url, pg_cluster.port), retry=engine_retry)
    direct = consensus_db.connect(pg_url)
    try:
        for write, count_sql in [
            (lambda: db.store_artifact("S", "plan", "cut", "{}", idempotency_key="cut-1"),
             "SELECT count(*) FROM agent_outputs WHERE agent_name = 'cut'"),
            (lambda: db.store_synthesis("S", "cut", "# m", idempotency_key="cut-2"),
             "SELECT count(*) FROM consensus_runs WHERE stage = 'cut' AND synthesis_json IS NOT NULL"),
        ]:
            db.store_artifact("S", "plan", "warm", "{}")  # its statements prepared, its connection pooled
            proxy.cut_after(lambda kind, body: kind == b"E")
            seen = []
            caller = RetryPolicy(max_attempts=3, jitter=False, sleep=lambda _d: proxy.up(),
                                 on_retry=lambda _a, _d, e: seen.append(e))
            id = caller.call(write)
            assert proxy.cut_done.wait(10)
            assert [type(e).__name__ for e in seen] == ["OutcomeUnknownError"] and seen[0].idempotency_key
            assert direct.query(count_sql) == [(1,)] and caller.stats.attempts == 2
            assert write() == id
    finally:
        db.close()
        direct.close()
        proxy.close()
