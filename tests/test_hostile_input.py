"""Property-based hostile input: arbitrary text and JSON round-trip exactly or are
rejected cleanly, and a rejected call writes nothing. On both backends (PostgreSQL text
and JSONB cannot hold NUL: refused there with InvalidInputError, as any other value the
backend cannot hold)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import consensus_db
from conftest import BACKENDS, ph

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TRIED = {"text": 0, "json": 0, "ints": 0}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


@pytest.fixture(scope="module", params=BACKENDS)
def store(request, tmp_path_factory):
    if request.param == "sqlite":
        target = tmp_path_factory.mktemp("hostile") / "h.db"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        cluster.psql("CREATE SCHEMA hostile")
        target = cluster.url(options="-csearch_path%3Dhostile")
    db = consensus_db.connect(target)
    yield db
    db.close()
    print(f"\nhypothesis inputs tried: {TRIED}")


def nul_refused(db, *values) -> bool:
    """Whether the backend refuses these values: PostgreSQL and NUL characters."""
    def has_nul(v) -> bool:
        if isinstance(v, str):
            return "\x00" in v
        if isinstance(v, list):
            return any(has_nul(x) for x in v)
        if isinstance(v, dict):
            return any(has_nul(k) or has_nul(x) for k, x in v.items())
        return False

    return db.backend == "postgresql" and any(has_nul(v) for v in values)


def rows(db) -> tuple:
    return db.query("SELECT (SELECT count(*) FROM agent_executions), (SELECT count(*) FROM agent_outputs)")[0]


@SETTINGS
@given(text=st.text(alphabet=st.characters(blacklist_categories=()), max_size=300))
def test_arbitrary_text_round_trips_or_is_rejected(store, text):
    TRIED["text"] += 1
    before = rows(store)
    agent_id = f"id:{text}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not representable, must be refused cleanly
        with pytest.raises(consensus_db.InvalidInputError):
            store.record_agent_spawn(agent_id, "S", "plan", "quality_gate", text or "x")
        with pytest.raises(consensus_db.InvalidInputError):
            store.store_artifact("S", "plan", "g", {"t": text})
        assert rows(store) == before
        return
    if nul_refused(store, text):
        before = rows(store)
        with pytest.raises(consensus_db.InvalidInputError, match="NUL"):
            store.record_agent_spawn(agent_id, "S", "plan", "quality_gate", "x")
        with pytest.raises(consensus_db.InvalidInputError, match="NUL"):
            store.store_artifact("TEXT", "plan", "g", json.dumps({"t": text}), response_text=text)
        assert rows(store) == before
        return
    store.record_agent_spawn(agent_id, "S", "plan", "quality_gate", text if text.strip() else "blank")
    assert store.get_agent_name(agent_id) == (text if text.strip() else "blank")
    aid = store.store_artifact("TEXT", "plan", "g", json.dumps({"t": text}), response_text=text)
    got = [a for a in store.query_artifacts("TEXT", "plan") if a.id == aid][0]
    assert json.loads(got.content_json) == {"t": text} and got.response_text == text


@SETTINGS
@given(value=json_values)
def test_arbitrary_json_round_trips(store, value):
    TRIED["json"] += 1
    as_text = json.dumps(value)  # ASCII: non-BMP characters become escaped surrogate pairs
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        before = rows(store)
        with pytest.raises(consensus_db.InvalidInputError):
            store.store_artifact("JSON", "plan", "g", value)
        assert rows(store) == before
        return
    if nul_refused(store, value):
        before = rows(store)
        with pytest.raises(consensus_db.InvalidInputError, match="content_json.*NUL"):
            store.store_artifact("JSON", "plan", "g", as_text)
        assert rows(store) == before
        return
    ids = [store.store_artifact("JSON", "plan", "g", as_text)]
    if isinstance(value, (dict, list)):
        ids.append(store.store_artifact("JSON", "plan", "g", value))
    by_id = {a.id: a for a in store.query_artifacts("JSON", "plan")}
    for i in ids:
        assert json.loads(by_id[i].content_json) == value


def int64(db) -> str:
    """A 64-bit integer column: SQLite's INTEGER, PostgreSQL's BIGINT."""
    return "BIGINT" if db.backend == "postgresql" else "INTEGER"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**63 - 1, -(2**63), 0, -1])))
def test_extreme_integers_round_trip(store, n):
    TRIED["ints"] += 1
    store.execute(f"CREATE TABLE IF NOT EXISTS ints (v {int64(store)})")
    with store.transaction() as tx:
        tx.execute("DELETE FROM ints")
        tx.execute(ph(store, "INSERT INTO ints VALUES (?)"), [n])
        assert tx.query("SELECT v FROM ints") == [(n,)]


@pytest.mark.parametrize("n", [2**63, -(2**63) - 1, 10**30])
def test_integers_beyond_64_bits_are_rejected_and_nothing_written(store, n):
    store.execute(f"CREATE TABLE IF NOT EXISTS big (v {int64(store)})")
    with pytest.raises(consensus_db.InvalidInputError, match="64-bit"):
        store.execute(ph(store, "INSERT INTO big VALUES (?)"), [n])
    assert store.query("SELECT count(*) FROM big") == [(0,)]


def test_a_rejected_batch_writes_nothing(store):
    before = rows(store)
    batch = [{"spec_id": "B", "stage": "s", "agent_name": "g", "content_json": {"i": i}} for i in range(50)]
    batch[37]["content_json"] = "{not: json}"
    with pytest.raises(consensus_db.InvalidInputError, match=r"artifacts\[37\]"):
        store.store_artifacts(batch)
    batch[37]["content_json"] = {"bad": "\ud800"}
    with pytest.raises(consensus_db.InvalidInputError, match=r"artifacts\[37\]"):
        store.store_artifacts(batch)
    assert rows(store) == before
