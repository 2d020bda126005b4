"""Issue 28 item 3: counting and paging without materialising. `count_artifacts` by SQL
with the twin rule, and keyset pages (`limit`, `after=`/`before=` a row's `cursor`) of
`query_artifacts`, `query_agent_executions` and `query_extraction_failures` — on a real
dual-schema file an old binary wrote (twins, legacy-only rows, new-only rows, ties of
one second), with rows inserted between pages, on both backends, sync and async."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import pytest

import consensus_db
from consensus_db import aio
from conftest import ph

import predecessor

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC, in ms


def legacy_at(second: int) -> str:
    return f"2026-01-01 00:00:{second:02d}"


def dual_file(tmp_path) -> tuple:
    """A file at schema version 1 as the field has them: rows an old binary wrote and the
    migration copied (linked), rows only this store wrote, and — written behind the
    store's back — twins a predecessor's dual-write build left unlinked, two legacy rows
    competing for one twin, legacy rows without a copy sharing one second with a
    new-schema row of that very millisecond, and a same-content pair too far apart to be
    twins. Returns the path and the number of artifacts the reader shows."""
    path = tmp_path / "dual.db"
    predecessor.run(path, "create_legacy")
    items = [{"spec_id": "S", "stage": "plan", "agent_name": f"old-{n}", "content": json.dumps({"old": n})}
             for n in range(4)]
    predecessor.run(path, "artifacts", build="legacy", items=items)
    with consensus_db.connect(path) as db:  # version 1: the four are copied, linked
        db.store_artifacts([{"spec_id": "S", "stage": "plan", "agent_name": "new", "content_json": {"new": n}}
                            for n in range(3)])
    conn = sqlite3.connect(path)
    run = conn.execute("INSERT INTO consensus_runs (spec_id, stage, run_timestamp, consensus_ok)"
                       " VALUES ('S', 'plan', ?, 1)", (T0,)).lastrowid

    def legacy(agent: str, content: str, second: int) -> None:
        conn.execute("INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, response_text,"
                     " run_id, created_at) VALUES ('S', 'plan', ?, ?, ?, 'run-old', ?)",
                     (agent, content, f"raw {agent}", legacy_at(second)))

    def output(agent: str, content: str, at_ms: int) -> None:
        conn.execute("INSERT INTO agent_outputs (run_id, agent_name, content, output_timestamp) VALUES (?, ?, ?, ?)",
                     (run, agent, content, at_ms))

    legacy("gemini", '{"t": 1}', 1)  # a twin pair: one artifact
    output("gemini", '{"t": 1}', T0 + 1400)
    legacy("claude", '{"t": 2}', 5)  # two legacy rows, one twin: the older takes it
    legacy("claude", '{"t": 2}', 6)
    output("claude", '{"t": 2}', T0 + 5600)
    for n in range(3):  # legacy rows without a copy, all of one second ...
        legacy("code", json.dumps({"tie": n}), 10)
    output("code", '{"tie": "v1"}', T0 + 10_000)  # ... and a new-schema row of its first millisecond
    legacy("gpt_pro", '{"t": 3}', 20)  # same content 3 s apart: no twins
    output("gpt_pro", '{"t": 3}', T0 + 23_000)
    # One stage further: its rows must never leak into S/plan.
    conn.execute("INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, created_at)"
                 " VALUES ('S', 'tasks', 'gemini', '{}', ?)", (legacy_at(1),))
    conn.commit()
    conn.close()
    return path, 4 + 3 + 1 + 2 + 4 + 2


def keys(rows) -> list:
    return [(a.source, a.id) for a in rows]


def all_pages(fetch, limit: int, after=None) -> list:
    """Every page (from `after`), each `after=` the last row of the one before."""
    out = []
    while True:
        page = fetch(limit=limit, after=after)
        assert len(page) <= limit
        out.extend(page)
        if len(page) < limit:
            return out
        after = page[-1].cursor


def test_count_artifacts_is_what_query_artifacts_returns_twins_once(tmp_path):
    path, expected = dual_file(tmp_path)
    with consensus_db.connect(path, migrate=False) as db:
        rows = db.query_artifacts("S", "plan")
        print(sorted((a.source, a.agent_name, a.created_at_ms - T0) for a in rows if a.created_at_ms >= T0))
        assert db.count_artifacts("S", "plan") == len(rows) == expected
        assert db.count_artifacts("S", "tasks") == len(db.query_artifacts("S", "tasks")) == 1
        assert db.count_artifacts("S", "nothing") == 0
        by_agent = {}
        for a in rows:
            by_agent.setdefault(a.agent_name, []).append(a.source)
        assert by_agent["gemini"] == ["v1"]  # the twin, once
        assert sorted(by_agent["claude"]) == ["legacy", "v1"]  # the younger legacy row had no twin left
        assert sorted(by_agent["code"]) == ["legacy"] * 3 + ["v1"]
        assert sorted(by_agent["gpt_pro"]) == ["legacy", "v1"]
        twin = next(a for a in rows if a.agent_name == "gemini")
        assert (twin.response_text, twin.run_id) == ("raw gemini", "run-old")  # what only the legacy copy kept
        # The same rule wherever the reader takes it: read-only, and legacy or new reads only.
    with consensus_db.connect(path, read_only=True) as db:
        assert db.count_artifacts("S", "plan") == expected
    for mode in ("legacy", "v1"):
        with consensus_db.connect(path, migrate=False, read_mode=mode) as db:
            assert db.count_artifacts("S", "plan") == len(db.query_artifacts("S", "plan"))


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_pages_in_either_order_return_every_row_once_across_the_union(tmp_path, order):
    path, expected = dual_file(tmp_path)
    with consensus_db.connect(path, migrate=False) as db:
        full = db.query_artifacts("S", "plan", order=order)
        assert len(full) == expected
        for limit in (1, 2, 3, 5, expected, 100):
            pages = all_pages(lambda **kw: db.query_artifacts("S", "plan", order=order, **kw), limit)
            assert keys(pages) == keys(full), limit
            assert pages == full  # the twin's fields too
        # Backwards: before= the first row of each page gives the page before it.
        back, before = [], full[-1].cursor
        while True:
            page = db.query_artifacts("S", "plan", order=order, limit=3, before=before)
            back[:0] = page
            if len(page) < 3:
                break
            before = page[0].cursor
        assert keys(back) == keys(full[:-1])
        # after= without a limit: the rest.
        assert keys(db.query_artifacts("S", "plan", order=order, after=full[6].cursor)) == keys(full[7:])
        assert db.query_artifacts("S", "plan", order=order, limit=0) == []


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_rows_inserted_between_pages_are_neither_skipped_nor_repeated(tmp_path, order):
    path, expected = dual_file(tmp_path)
    with consensus_db.connect(path, migrate=False) as db:
        present = keys(db.query_artifacts("S", "plan", order=order))
        run = db.query("SELECT id FROM consensus_runs WHERE spec_id = 'S' AND stage = 'plan' ORDER BY id LIMIT 1")[0][0]
        seen, after, round_ = [], None, 0
        while True:
            page = db.query_artifacts("S", "plan", order=order, limit=2, after=after)
            seen.extend(keys(page))
            if len(page) < 2:
                break
            after = page[-1].cursor
            round_ += 1
            if round_ > 5:  # oldest first, a newer row per page would never let it end
                continue
            # Between pages: a newer row, new-schema rows of the tied millisecond and of the
            # cursor's own, and legacy rows of the tied second — ids above every existing one.
            db.store_artifact("S", "plan", "late", {"round": round_})
            db.execute("INSERT INTO agent_outputs (run_id, agent_name, content, output_timestamp) VALUES (?, ?, ?, ?)",
                       [run, "late-tie", json.dumps({"round": round_}), T0 + 10_000])
            db.execute("INSERT INTO agent_outputs (run_id, agent_name, content, output_timestamp) VALUES (?, ?, ?, ?)",
                       [run, "late-cursor", json.dumps({"round": round_}), page[-1].created_at_ms])
            db.execute("INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, created_at)"
                       " VALUES ('S', 'plan', 'late-legacy', ?, ?)", [json.dumps({"round": round_}), legacy_at(10)])
        assert len(seen) == len(set(seen)), "a row came twice"
        assert [k for k in seen if k in set(present)] == present, "a row present at the first page was skipped"
        assert len(seen) > len(present)  # some of the rows inserted after the cursor came too
        assert db.count_artifacts("S", "plan") == len(db.query_artifacts("S", "plan"))


def test_a_foreign_or_garbled_cursor_and_a_negative_limit_are_refused_by_name(tmp_path):
    path, _ = dual_file(tmp_path)
    with consensus_db.connect(path, migrate=False) as db:
        db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini")
        token = db.query_artifacts("S", "plan", limit=1)[0].cursor
        execution = db.query_agent_executions("S", "plan")[0].cursor
        cases = [
            (dict(after="nope"), "invalid after: \"nope\" is not a cursor this store returned"),
            (dict(before=token[:-2]), "invalid before: "),
            (dict(after=token.upper()), "is not a cursor"),
            (dict(after=execution), "is a cursor of query_agent_executions, not of query_artifacts"),
            (dict(after=token, before=token), "not both"),
            (dict(after=17), "invalid after: must be a str, got int"),
            (dict(limit=-1), "invalid limit"),
            (dict(limit="3"), "invalid limit"),
        ]
        for kwargs, message in cases:
            with pytest.raises(consensus_db.InvalidInputError, match=None) as caught:
                db.query_artifacts("S", "plan", **kwargs)
            assert message in str(caught.value), (kwargs, str(caught.value))
        with pytest.raises(consensus_db.InvalidInputError, match="a cursor of another spec/stage than S/tasks"):
            db.query_artifacts("S", "tasks", after=token)
        with pytest.raises(consensus_db.InvalidInputError, match="not of query_agent_executions"):
            db.query_agent_executions("S", "plan", after=token)
        with pytest.raises(consensus_db.InvalidInputError, match="not of query_extraction_failures"):
            db.query_extraction_failures("S", before=execution)
        with pytest.raises(consensus_db.InvalidInputError, match="invalid batch"):
            db.iter_artifacts("S", "plan", batch=0)


def test_iter_artifacts_streams_the_stage_in_batches_and_tolerates_inserts(tmp_path):
    path, expected = dual_file(tmp_path)
    with consensus_db.connect(path, migrate=False) as db:
        for order in ("newest", "oldest"):
            full = db.query_artifacts("S", "plan", order=order)
            assert keys(db.iter_artifacts("S", "plan", order=order, batch=3)) == keys(full)
        streamed = []
        for a in db.iter_artifacts("S", "plan", order="oldest", batch=2):
            streamed.append((a.source, a.id))
            if len(streamed) == 3:
                db.store_artifact("S", "plan", "late", {"late": True})  # newer than all: comes at the end
        assert streamed[:expected] == keys(full) and len(streamed) == expected + 1


def spawn_at(db, agent_id: str, spawned_at: str, stage: str = "plan") -> None:
    db.record_agent_spawn(agent_id, "S", stage, "quality_gate", "gemini")
    db.execute(ph(db, "UPDATE agent_executions SET spawned_at = ? WHERE agent_id = ?"), [spawned_at, agent_id])


@pytest.fixture
def store(store_target):
    db = consensus_db.connect(store_target)
    yield db
    db.close()


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_executions_and_failures_page_with_ties_and_inserts_on_both_backends(store, order):
    db = store
    for n in range(7):  # three share a second: the agent id settles their order
        spawn_at(db, f"a{n}", f"2026-01-01 00:00:{min(n, 3):02d}")
        if n % 2 == 0:
            db.record_extraction_failure(f"a{n}", "raw", f"bad {n}")
    spawn_at(db, "other-stage", "2026-01-01 00:00:02", stage="tasks")
    db.record_extraction_failure("other-stage", "raw", "bad")
    listings = {
        "executions": lambda **kw: db.query_agent_executions("S", "plan", order=order, **kw),
        "failures": lambda **kw: db.query_extraction_failures("S", order=order, **kw),
    }
    assert (len(listings["executions"]()), len(listings["failures"]())) == (7, 5)  # a failure of another stage too
    for name, fetch in listings.items():
        full = [r.agent_id for r in fetch()]
        for limit in (1, 2, 3, 10):
            assert [r.agent_id for r in all_pages(fetch, limit)] == full, (name, limit)
        page = fetch(limit=2)
        spawn_at(db, f"z-{name}", "2026-01-01 00:00:03")  # the tied second, after every id there
        spawn_at(db, f"0-{name}", "2026-01-01 00:00:03")  # ... and before every id there
        if name == "failures":
            for agent_id in (f"z-{name}", f"0-{name}"):
                db.record_extraction_failure(agent_id, "raw", "late")
        rest = all_pages(fetch, 2, after=page[-1].cursor)
        got = [r.agent_id for r in page + rest]
        assert len(got) == len(set(got)) and [a for a in got if a in full] == full, (name, got)
        now = [r.agent_id for r in fetch()]
        at = now.index(page[-1].agent_id)
        assert [r.agent_id for r in fetch(limit=2, before=page[-1].cursor)] == now[max(0, at - 2):at]
    # The existing forms are unchanged: a limit alone, and limit=0.
    assert [e.agent_id for e in db.query_agent_executions("S", "plan", order=order, limit=3)] == [
        e.agent_id for e in db.query_agent_executions("S", "plan", order=order)][:3]
    assert db.query_agent_executions("S", "plan", limit=0) == []


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_artifact_pages_on_both_backends_ties_of_one_millisecond(store, order):
    db = store
    db.store_artifacts([{"spec_id": "S", "stage": "plan", "agent_name": f"g{n}", "content_json": {"n": n}}
                        for n in range(9)])
    db.store_artifact("S", "tasks", "other", {})
    db.execute(ph(db, "UPDATE agent_outputs SET output_timestamp = ? WHERE id % 3 = 0"), [T0])  # a tie of three
    full = db.query_artifacts("S", "plan", order=order)
    assert len(full) == db.count_artifacts("S", "plan") == 9
    for limit in (1, 2, 4, 9):
        assert keys(all_pages(lambda **kw: db.query_artifacts("S", "plan", order=order, **kw), limit)) == keys(full)
    first = db.query_artifacts("S", "plan", order=order, limit=4)
    db.store_artifacts([{"spec_id": "S", "stage": "plan", "agent_name": "late", "content_json": {}}])
    db.execute(ph(db, "UPDATE agent_outputs SET output_timestamp = ? WHERE agent_name = 'late'"), [T0])
    rest = db.query_artifacts("S", "plan", order=order, after=first[-1].cursor)
    got = keys(first + rest)
    assert len(got) == len(set(got)) and [k for k in got if k in set(keys(full))] == keys(full)
    assert keys(db.query_artifacts("S", "plan", order=order, limit=2, before=full[5].cursor)) == keys(full[3:5])
    with pytest.raises(consensus_db.InvalidInputError, match="another spec/stage"):
        db.query_artifacts("S", "tasks", after=full[0].cursor)


def test_the_async_twins_page_and_stream(tmp_path):
    path, expected = dual_file(tmp_path)

    async def main():
        async with aio.connect(path, migrate=False) as db:
            first = await db.query_artifacts("S", "plan", limit=5)
            rest = await db.query_artifacts("S", "plan", after=first[-1].cursor)
            streamed = [a async for a in db.iter_artifacts("S", "plan", batch=4)]
            with pytest.raises(consensus_db.InvalidInputError, match="invalid batch"):
                db.iter_artifacts("S", "plan", batch=-1)
            full = await db.query_artifacts("S", "plan")
            return first + rest, streamed, full, await db.count_artifacts("S", "plan")

    paged, streamed, full, count = asyncio.run(main())
    assert keys(paged) == keys(streamed) == keys(full) and count == expected == len(full)


def test_count_artifacts_reads_no_row(tmp_path):
    # 300 artifacts of 256 KB: reading them is tens of MB, counting them is two index
    # walks. The old count was the length of that read: no faster than it.
    path = tmp_path / "big.db"
    with consensus_db.connect(path) as db:
        blob = json.dumps({"text": "x" * (256 << 10)})
        for _ in range(3):
            db.store_artifacts([{"spec_id": "S", "stage": "plan", "agent_name": "g", "content_json": blob}] * 100)

        def best_of(fn, n=3) -> float:
            times = []
            for _ in range(n):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return min(times)

        read = best_of(lambda: db.query_artifacts("S", "plan"))
        count = best_of(lambda: db.count_artifacts("S", "plan"))
        print(f"query_artifacts {read * 1e3:.1f} ms, count_artifacts {count * 1e3:.3f} ms")
        assert db.count_artifacts("S", "plan") == 300
        assert count * 20 < read, (count, read)


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_a_stage_of_many_runs_pages_the_same(store, order):
    # Past 64 runs a stage's pages walk the outputs by time instead of seeking run by
    # run, or go run by run where the walk would pass too many other rows: the same rows,
    # the same order, ties across runs included.
    db = store
    for run in range(70):
        db.store_artifacts([{"spec_id": "S", "stage": "plan", "agent_name": f"g{n}", "content_json": {"run": run}}
                            for n in range(2)])
        db.store_synthesis("S", "plan", f"# run {run}")
        db.store_artifact("S", "tasks", "other", {"run": run})  # another stage, interleaved in time
        if run == 35:  # a gap no walk by time crosses within its budget: those pages go run by run
            db.store_artifacts([{"spec_id": "S", "stage": "tasks", "agent_name": "gap", "content_json": {}}] * 5000)
    db.execute(ph(db, "UPDATE agent_outputs SET output_timestamp = ? WHERE id % 7 = 0"), [T0])  # ties across runs
    full = db.query_artifacts("S", "plan", order=order)
    assert len(full) == db.count_artifacts("S", "plan") == 140
    for limit in (1, 3, 7, 50):
        assert keys(all_pages(lambda **kw: db.query_artifacts("S", "plan", order=order, **kw), limit)) == keys(full)
    assert keys(db.query_artifacts("S", "plan", order=order, limit=5, before=full[20].cursor)) == keys(full[15:20])
    assert keys(db.iter_artifacts("S", "plan", order=order, batch=9)) == keys(full)
