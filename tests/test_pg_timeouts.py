"""No unbounded waits on PostgreSQL: every connection has a ``statement_timeout`` (30 s
unless the URL's ``options`` set one), a statement past it is a typed BusyError that kept
nothing, and a COMMIT left waiting for a synchronous standby that is gone raises
NotReplicatedError (an OutcomeUnknownError: it committed on the primary) instead of
hanging."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

import consensus_db
from pg_cluster import Cluster, workdir

pytestmark = pytest.mark.usefixtures("pg_cluster")  # skips where PostgreSQL is missing


def with_timeout(url: str, ms: int) -> str:
    """`url` with `-c statement_timeout=ms` added to its `options` (a second `options`
    parameter would replace the first, the fixture's search_path)."""
    timeout = f"-cstatement_timeout%3D{ms}"
    if "options=" in url:
        return url.replace("options=", f"options={timeout}%20", 1)
    return f"{url}{'&' if '?' in url else '?'}options={timeout}"


def test_every_connection_has_a_statement_timeout_the_url_can_set(pg_url):
    with consensus_db.connect(pg_url) as db:
        assert db.query("SHOW statement_timeout") == [("30s",)]
    with consensus_db.connect(with_timeout(pg_url, 1500)) as db:
        assert db.query("SHOW statement_timeout") == [("1500ms",)]
        assert db.query("SELECT current_schema()") != [("public",)]  # the fixture's own schema kept


def test_a_statement_past_the_timeout_is_a_busy_error_that_kept_nothing(pg_url):
    with consensus_db.connect(with_timeout(pg_url, 300)) as db:
        db.record_agent_spawn("kept", "S", "plan", "regular_stage", "gemini")
        started = time.monotonic()
        with pytest.raises(consensus_db.BusyError, match="statement_timeout"):
            with db.transaction() as tx:
                tx.execute(
                    "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at)"
                    " VALUES ('lost', 'S', 'plan', 'regular_stage', 'gemini', '2026-01-01 00:00:00')"
                )
                tx.query("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 4
        assert db.get_agent_spawn_info("lost") is None
        assert db.get_agent_spawn_info("kept") == ("regular_stage", "plan")


@pytest.fixture
def lone_primary():
    """A primary of its own whose synchronous standby can be made to vanish."""
    root = workdir()
    cluster = Cluster(root, "primary").init(synchronous_commit="on").start()
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def reload(cluster: Cluster, standby: str) -> None:
    """Sets synchronous_standby_names and waits until new sessions see it."""
    cluster.psql(f"ALTER SYSTEM SET synchronous_standby_names = '{standby}'")
    cluster.psql("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while cluster.psql("SHOW synchronous_standby_names") != standby:
        assert time.monotonic() < deadline, "the server did not reload its configuration"


def test_a_commit_waiting_for_a_missing_synchronous_standby_raises_not_replicated(lone_primary):
    url = with_timeout(lone_primary.url(), 1000)
    with consensus_db.connect(url) as db:  # opened (and migrated) while commits need no standby
        db.record_agent_spawn("before", "S", "plan", "regular_stage", "gemini")
        reload(lone_primary, "standby_that_is_gone")
        outcomes: dict[str, object] = {}

        def write(name: str, call) -> None:
            started = time.monotonic()
            try:
                call()
                outcomes[name] = "returned"
            except consensus_db.Error as exc:
                outcomes[name] = exc
            outcomes[name + "_s"] = time.monotonic() - started

        def in_a_block() -> None:
            with db.transaction() as tx:
                tx.execute(
                    "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at)"
                    " VALUES ('block', 'S', 'plan', 'regular_stage', 'gemini', '2026-01-01 00:00:00')"
                )

        calls = {
            "spawn": lambda: db.record_agent_spawn("during", "S", "plan", "regular_stage", "gemini"),
            "artifact": lambda: db.store_artifact("S", "plan", "gemini", {"x": 1}),
            "block": in_a_block,
        }
        threads = [threading.Thread(target=write, args=item) for item in calls.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a commit hung"
        print({k: v for k, v in outcomes.items()})
        for name in calls:
            assert isinstance(outcomes[name], consensus_db.NotReplicatedError), (name, outcomes[name])
            assert isinstance(outcomes[name], consensus_db.OutcomeUnknownError)  # never retried
            assert "synchronous standby" in str(outcomes[name])
            assert outcomes[name + "_s"] < 10
        reload(lone_primary, "")
        # They committed on the primary ("may still land" — here they did).
        assert db.get_agent_spawn_info("during") == ("regular_stage", "plan")
        assert db.get_agent_spawn_info("block") == ("regular_stage", "plan")
        assert db.count_artifacts("S", "plan") == 1


def test_an_opening_whose_migration_commits_several_times_is_bounded_at_each_commit(lone_primary):
    """The migration at opening commits once per revision in one call: after the first
    COMMIT's wait is cancelled the next one must be bounded too, not wait forever."""
    reload(lone_primary, "standby_that_is_gone")
    outcome: list[object] = []

    def open_store() -> None:
        try:
            # 2 s: long enough for the migration's own statements on a loaded machine (at
            # 500 ms one ran past it under load), short beside the 30 s that says it hung.
            consensus_db.connect(with_timeout(lone_primary.url(), 2000)).close()
            outcome.append("opened")
        except consensus_db.Error as exc:
            outcome.append(exc)

    opener = threading.Thread(target=open_store)
    started = time.monotonic()
    opener.start()
    opener.join(30)
    took = time.monotonic() - started
    hung = opener.is_alive()  # asked before the standby requirement goes, which would free it
    reload(lone_primary, "")
    opener.join(30)
    assert not hung, f"an opening hung on a commit for {took:.0f} s"
    print(f"opening gave {outcome} after {took:.1f} s")
    assert len(outcome) == 1 and isinstance(outcome[0], consensus_db.NotReplicatedError), outcome
    with consensus_db.connect(lone_primary.url()) as db:  # the primary has the schema
        db.record_agent_spawn("after", "S", "plan", "regular_stage", "gemini")
        assert db.get_agent_spawn_info("after") == ("regular_stage", "plan")
