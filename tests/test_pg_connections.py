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


# ---- secrets of the URL ------------------------------------------------------------------------

SECRET = "sekrit-9f3"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "consensus_db", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("spelling", ["query", "encoded key", "user:password@"])
def test_no_surface_shows_the_password_of_a_url(pg_cluster, pg_url, spelling):
    """repr, path, health()["path"], the command line's health (table and JSON) and its
    errors: the password is masked however the URL spells it (the server trusts the
    loopback, so the store opens with any password)."""
    url = {
        "query": f"{pg_url}&password={SECRET}",
        "encoded key": f"{pg_url}&%70assword={SECRET}",
        "user:password@": pg_url.replace("cdb@", f"cdb:{SECRET}@", 1),
    }[spelling]
    with consensus_db.connect(url) as db:
        shown = [repr(db), db.path, db.health()["path"]]
        assert db.path.startswith("postgresql://cdb") and "***" in db.path, db.path
    table, as_json = _cli("health", url), _cli("health", url, "--json")
    assert table.returncode == 0 and as_json.returncode == 0, (table.stderr, as_json.stderr)
    assert json.loads(as_json.stdout)["path"] == db.path
    refused = _cli("verify", url)  # a file command given the URL: its error quotes it
    assert refused.returncode != 0 and "***" in refused.stderr, refused.stderr
    shown += [table.stdout, table.stderr, as_json.stdout, as_json.stderr, refused.stdout, refused.stderr]
    assert not [s for s in shown if SECRET in s], shown


@pytest.mark.parametrize("param", ["sslpassword", "passfile", "sslkey"])
def test_a_url_the_driver_refuses_is_not_quoted_with_its_secrets(pg_url, param):
    with pytest.raises(consensus_db.InvalidInputError) as raised:
        consensus_db.connect(f"{pg_url}&{param}={SECRET}")
    assert SECRET not in str(raised.value)
    assert consensus_db._core.redact_url(f"{pg_url}&{param}={SECRET}").endswith(f"&{param}=***")


# ---- a server refusing the URL -----------------------------------------------------------------

PW_ROLE, PW = "cdb_pw", "right-pw-7"


@pytest.fixture(scope="module")
def password_role(pg_cluster):
    """A role the server lets in by password only (scram-sha-256, ahead of the trust lines)."""
    pg_cluster.psql(f"DO $$ BEGIN CREATE ROLE {PW_ROLE} LOGIN PASSWORD '{PW}'; "
                    "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    pg_cluster.psql(f"CREATE SCHEMA IF NOT EXISTS {PW_ROLE} AUTHORIZATION {PW_ROLE}")  # its search_path's "$user"
    hba = pg_cluster.data / "pg_hba.conf"
    hba.write_text(f"host all {PW_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    pg_cluster.psql("SELECT pg_reload_conf()")
    return f"postgresql://{PW_ROLE}:{{pw}}@127.0.0.1:{pg_cluster.port}/postgres"


@pytest.mark.parametrize(
    "what, url, named",
    [
        ("wrong password", lambda base, port: base.format(pw=SECRET), f'password authentication failed for user "{PW_ROLE}"'),
        ("no password", lambda base, port: base.replace(":{pw}", ""), "password missing"),
        ("unknown role", lambda base, port: f"postgresql://nobody_here:{SECRET}@127.0.0.1:{port}/postgres",
         'role "nobody_here" does not exist'),
        ("missing database", lambda base, port: f"postgresql://cdb:{SECRET}@127.0.0.1:{port}/no_such_db",
         'database "no_such_db" does not exist'),
    ],
)
def test_a_server_refusing_the_urls_credentials_or_database_is_permanent_and_not_retried(
    pg_cluster, password_role, what, url, named
):
    retried = []
    engine_retry = RetryPolicy(max_attempts=4, jitter=False, sleep=lambda _d: None,
                               on_retry=lambda *args: retried.append(args))
    caller = RetryPolicy(max_attempts=3, jitter=False, sleep=lambda _d: None)
    with pytest.raises(consensus_db.Error) as raised:
        caller.call(consensus_db.connect, url(password_role, pg_cluster.port), retry=engine_retry)
    e = raised.value
    assert (type(e).__name__, e.retryable, is_retryable(e)) == ("InvalidInputError", False, False), e
    assert str(e).startswith("invalid url: ") and named in str(e), e
    assert SECRET not in str(e)
    assert (retried, caller.stats.attempts) == ([], 1)


def test_the_right_password_gets_in(pg_cluster, password_role):
    with consensus_db.connect(password_role.format(pw=PW)) as db:
        assert db.get_agent_name("nobody") is None
        assert PW not in repr(db)
