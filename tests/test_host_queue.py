"""The host-wide writer queue (``<db>-writer``, src/sqlite/host_queue.rs) and the busy
handler (src/sqlite/busy.rs), with real processes: the queue is held from BEGIN to
COMMIT and seen from another process, SIGKILLed holders lose nothing and block nobody,
a stdlib ``sqlite3`` writer beside the store still works, the wait is bounded by
``busy_timeout`` with a typed error naming it, the sidecar gets the database file's
mode and is never followed through a symbolic link, and backup/restore leave it alone."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

import consensus_db
from consensus_db.retry import RetryPolicy

DEADLINE = 30.0  # seconds a child gets to do what it is waited for


def sidecar(path: Path) -> Path:
    return Path(f"{path}-writer")


def flock(kind: int) -> bytes:
    """A ``struct flock`` (x86-64/aarch64 layout) for byte 0 of the file, one byte long."""
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 1, 0)


def queue_held(path: Path) -> bool:
    """Whether some open file description holds the queue (F_OFD_GETLK, from this process)."""
    fd = os.open(sidecar(path), os.O_RDWR | os.O_NOFOLLOW)
    try:
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, flock(fcntl.F_WRLCK))
    finally:
        os.close(fd)
    return struct.unpack("hhqqi4x", got)[0] != fcntl.F_UNLCK


def wait_for(what: str, predicate, timeout: float = DEADLINE) -> None:
    until = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < until, f"timed out waiting for {what}"
        time.sleep(0.005)


class Writer:
    """A child process writing through the store, one acknowledged line per write."""

    CODE = """
import sys, consensus_db
db = consensus_db.connect(sys.argv[1])
name = sys.argv[2]
print("open", flush=True)
i = 0
while True:
    db.record_agent_spawn(f"{name}-{i}", "S", "plan", "quality_gate", "gemini")
    print(f"{name}-{i}", flush=True)
    i += 1
    if i == int(sys.argv[3]):
        break
"""

    def __init__(self, path: Path, name: str, count: int = -1) -> None:
        self.child = subprocess.Popen([sys.executable, "-c", self.CODE, str(path), name, str(count)],
                                      stdout=subprocess.PIPE, text=True)
        self.acked: list = []
        self.lock = threading.Lock()
        assert self.child.stdout is not None
        assert self.child.stdout.readline().strip() == "open"
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.child.stdout is not None
        for line in self.child.stdout:
            with self.lock:
                self.acked.append(line.strip())

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def kill(self) -> list:
        self.child.send_signal(signal.SIGKILL)
        self.child.wait(timeout=DEADLINE)
        self.reader.join(timeout=DEADLINE)
        return list(self.acked)

    def finish(self) -> list:
        assert self.child.wait(timeout=DEADLINE) == 0
        self.reader.join(timeout=DEADLINE)
        return list(self.acked)


class StdlibLock:
    """Another process (stdlib ``sqlite3``, which knows nothing of the queue) holding
    SQLite's write lock (BEGIN IMMEDIATE) until :meth:`end`. (In this process it would
    not block the store: POSIX locks of one process never conflict, and the store has
    its own SQLite.)"""

    CODE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
how = sys.stdin.readline().strip()
conn.execute(how)
print(time.monotonic(), flush=True)
"""

    def __init__(self, path: Path) -> None:
        self.child = subprocess.Popen([sys.executable, "-c", self.CODE, str(path)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        assert self.child.stdout is not None and self.child.stdout.readline().strip() == "locked"

    def end(self, how: str = "ROLLBACK") -> float:
        """Ends the transaction; returns when (time.monotonic, the same clock here) it ended."""
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write(how + "\n")
        self.child.stdin.flush()
        ended = float(self.child.stdout.readline())
        assert self.child.wait(timeout=DEADLINE) == 0
        return ended


def spawned_ids(path: Path) -> set:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT agent_id FROM agent_executions")}


def test_the_queue_is_held_from_begin_to_commit_and_released(db_path):
    with consensus_db.connect(db_path) as db:
        assert sidecar(db_path).is_file(), "opening a writable store creates the sidecar"
        assert db.writer_queue == str(sidecar(db_path))
    assert not sidecar(db_path).exists(), "the last store to close removes it, like -wal and -shm"
    keeper = consensus_db.connect(db_path)
    blocker = StdlibLock(db_path)
    # The child's front writer takes the queue, then waits in BEGIN IMMEDIATE for the stdlib lock.
    writer = Writer(db_path, "held", count=1)
    wait_for("the child to take the queue", lambda: queue_held(db_path))
    time.sleep(0.05)
    assert queue_held(db_path) and writer.count() == 0, "held for the whole wait for SQLite's lock"
    blocker.end()
    assert writer.finish() == ["held-0"]
    assert not queue_held(db_path), "released after COMMIT"
    assert sidecar(db_path).exists(), "the child's close left it to the store still open here"
    keeper.close()
    assert not sidecar(db_path).exists()


def test_sigkilled_queue_holders_lose_nothing_and_block_nobody(db_path):
    """Rounds: a holder is killed while it holds the queue (waiting in BEGIN behind a
    stdlib lock), and writers are killed at random moments while others (and a stdlib
    writer) keep writing: every acknowledged row is in the file, the queue is free the
    moment its holder dies, the others go on."""
    keeper = consensus_db.connect(db_path)
    rng = random.Random(31)
    acknowledged: list = []
    stats = {"holders_killed": 0, "random_kills": 0, "stdlib_rows": 0}
    for r in range(5):
        blocker = StdlibLock(db_path)
        holder = Writer(db_path, f"h{r}")
        wait_for("the holder to take the queue", lambda: queue_held(db_path))
        acknowledged += holder.kill()
        assert not queue_held(db_path), "the kernel dropped the lock with its holder"
        stats["holders_killed"] += holder.child.returncode == -signal.SIGKILL
        blocker.end()
    survivors = [Writer(db_path, f"s{w}") for w in range(2)]
    stdlib = sqlite3.connect(db_path, isolation_level=None, timeout=DEADLINE)
    for r in range(12):
        victim = Writer(db_path, f"k{r}")
        time.sleep(rng.uniform(0.0, 0.05))
        before = [w.count() for w in survivors]
        acknowledged += victim.kill()
        stats["random_kills"] += victim.child.returncode == -signal.SIGKILL
        stdlib.execute("INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                       "VALUES (?, 'S', 'plan', 'quality_gate', 'stdlib', datetime('now'))", (f"std-{r}",))
        acknowledged.append(f"std-{r}")
        stats["stdlib_rows"] += 1
        wait_for("the other writers to go on after the kill",
                 lambda: all(w.count() > b for w, b in zip(survivors, before)))
    stdlib.close()
    for w in survivors:
        acknowledged += w.kill()
    print(f"\nSIGKILL rounds: {stats}, acknowledged rows {len(acknowledged)}")
    assert stats == {"holders_killed": 5, "random_kills": 12, "stdlib_rows": 12}
    missing = set(acknowledged) - spawned_ids(db_path)
    assert not missing, f"{len(missing)} acknowledged rows lost, e.g. {sorted(missing)[:5]}"
    keeper.close()
    with consensus_db.connect(db_path) as db:
        assert db.integrity_check() == ["ok"]


FORKING_WRITER = """
import os, sys, time, consensus_db
db = consensus_db.connect(sys.argv[1])
child = os.fork()  # multiprocessing's default on Linux: the child shares every open file description
if child == 0:
    fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")]
    print("child", os.getpid(), any(name.endswith("-writer") for name in fds), flush=True)
    time.sleep(60)
    os._exit(0)
print(sys.stdin.readline().strip(), flush=True)
db.record_agent_spawn("forked-parent", "S", "plan", "quality_gate", "gemini")
"""


def test_a_forked_child_does_not_keep_a_dead_parents_turn(db_path):
    """The child of a fork would share the sidecar's open file description, and with it
    a turn its parent holds when killed: the at-fork handler closes it in the child."""
    keeper = consensus_db.connect(db_path)
    parent = subprocess.Popen([sys.executable, "-c", FORKING_WRITER, str(db_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdin is not None and parent.stdout is not None
    _, child, has_sidecar = parent.stdout.readline().split()
    try:
        assert has_sidecar == "False", "the child closed its copy of the sidecar"
        blocker = StdlibLock(db_path)
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "go"
        wait_for("the parent to take the queue", lambda: queue_held(db_path))
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=DEADLINE)
        assert not queue_held(db_path), "free the moment its holder died, the forked child still alive"
        blocker.end()
    finally:
        os.kill(int(child), signal.SIGKILL)
        keeper.close()


def test_a_stdlib_writer_beside_store_processes_still_works(db_path):
    consensus_db.connect(db_path).close()
    writers = [Writer(db_path, f"p{w}", count=150) for w in range(2)]
    with sqlite3.connect(db_path, isolation_level=None, timeout=DEADLINE) as conn:
        for i in range(150):
            conn.execute("INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                         "VALUES (?, 'S', 'plan', 'quality_gate', 'stdlib', datetime('now'))", (f"std-{i}",))
    acked = [a for w in writers for a in w.finish()]
    assert len(acked) == 300
    assert set(acked) | {f"std-{i}" for i in range(150)} <= spawned_ids(db_path)


def hold_queue_from_here(path: Path) -> int:
    fd = os.open(sidecar(path), os.O_RDWR | os.O_NOFOLLOW)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, flock(fcntl.F_WRLCK))
    return fd


def test_the_queue_wait_is_bounded_by_busy_timeout_with_an_error_naming_it(db_path):
    with consensus_db.connect(db_path, pragmas={"busy_timeout": 300}, retry=None) as db:
        fd = hold_queue_from_here(db_path)
        try:
            started = time.monotonic()
            with pytest.raises(consensus_db.BusyError, match=r"writer queue.*-writer.*busy_timeout") as caught:
                db.record_agent_spawn("bounded", "S", "plan", "quality_gate", "gemini")
            waited = time.monotonic() - started
        finally:
            os.close(fd)
        print(f"\nqueue held elsewhere: gave up after {waited:.3f} s: {caught.value}")
        assert 0.29 <= waited < 2.0, waited
        db.record_agent_spawn("after", "S", "plan", "quality_gate", "gemini")
        assert db.get_agent_spawn_info("bounded") is None and db.get_agent_spawn_info("after") is not None


def test_the_retry_deadline_bounds_the_queue_wait_too(db_path):
    policy = RetryPolicy(max_attempts=100, initial_delay=0.01, max_delay=0.05, deadline=0.8)
    with consensus_db.connect(db_path, pragmas={"busy_timeout": 300}, retry=policy) as db:
        fd = hold_queue_from_here(db_path)
        try:
            started = time.monotonic()
            with pytest.raises(consensus_db.BusyError, match="writer queue"):
                db.record_agent_spawn("bounded", "S", "plan", "quality_gate", "gemini")
            waited = time.monotonic() - started
        finally:
            os.close(fd)
        assert 0.6 <= waited < 2.5, waited
        assert db.retry_count >= 1


def test_the_sidecar_gets_the_database_files_mode_whatever_the_umask(tmp_path):
    path = tmp_path / "shared.db"
    sqlite3.connect(path).close()
    path.chmod(0o664)
    old = os.umask(0o077)
    try:
        with consensus_db.connect(path):
            assert (sidecar(path).stat().st_mode & 0o777) == 0o664
    finally:
        os.umask(old)


def test_a_symlinked_sidecar_is_refused_and_not_followed(tmp_path):
    path, target = tmp_path / "s.db", tmp_path / "elsewhere"
    sqlite3.connect(path).close()
    sidecar(path).symlink_to(target)
    with pytest.raises(consensus_db.InvalidInputError, match=r"-writer.*symbolic link"):
        consensus_db.connect(path)
    assert not target.exists(), "the link was not followed"
    assert sidecar(path).is_symlink()


def test_read_only_and_in_memory_stores_have_no_sidecar(tmp_path):
    path = tmp_path / "ro.db"
    consensus_db.connect(path).close()
    with consensus_db.connect(path, read_only=True) as db:
        assert db.get_agent_spawn_info("x") is None and db.writer_queue is None
        assert not sidecar(path).exists()
    os.chdir(tmp_path)
    with consensus_db.connect(":memory:") as db:
        db.record_agent_spawn("m", "S", "plan", "quality_gate", "gemini")
        assert db.writer_queue is None
        assert not any(p.name.endswith("-writer") for p in tmp_path.iterdir())


UNPRIVILEGED_WRITER = """
import os, sys, consensus_db
if os.geteuid() == 0:  # root ignores directory permissions: play an ordinary user
    os.setgid(65534)
    os.setuid(65534)
with consensus_db.connect(sys.argv[1]) as db:
    db.record_agent_spawn("no-queue", "S", "plan", "quality_gate", "gemini")
    print(db.writer_queue, os.path.exists(sys.argv[1] + "-writer"), flush=True)
"""


def test_an_unwritable_directory_runs_without_the_queue():
    directory = Path(tempfile.mkdtemp(prefix="consensus-db-ro-"))  # reachable by any user
    try:
        path = directory / "s.db"
        consensus_db.connect(path).close()
        # A stdlib connection keeps the -wal and -shm in place: SQLite needs to create nothing.
        keeper = sqlite3.connect(path)
        keeper.execute("SELECT count(*) FROM agent_executions").fetchall()
        if os.geteuid() == 0:
            for p in directory.iterdir():
                os.chown(p, 65534, 65534)
        directory.chmod(0o555)
        done = subprocess.run([sys.executable, "-c", UNPRIVILEGED_WRITER, str(path)], capture_output=True,
                              text=True, timeout=DEADLINE)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["None", "False"], "no queue, no sidecar, and the write went through"
        keeper.close()
        assert "no-queue" in spawned_ids(path)
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)


def test_backup_creates_no_sidecar_and_keeps_the_stores(db_path, tmp_path):
    with consensus_db.connect(db_path) as db:
        db.record_agent_spawn("b", "S", "plan", "quality_gate", "gemini")
        inode = sidecar(db_path).stat().st_ino
        dest = Path(db.backup(str(tmp_path / "copy.db")))
        assert dest.exists() and not sidecar(dest).exists()
        assert sidecar(db_path).stat().st_ino == inode


def test_a_restore_over_a_live_store_leaves_its_sidecar_alone(tmp_path):
    test_replication = pytest.importorskip("test_replication")
    if test_replication.LITESTREAM is None:
        pytest.skip("litestream binary unavailable")
    from consensus_db import replication

    path, replica = test_replication.private_replica(tmp_path)
    with consensus_db.connect(path):
        inode = sidecar(path).stat().st_ino
        replication.restore(replica, path, env=test_replication.litestream_env(), force=True)
        assert sidecar(path).stat().st_ino == inode, "the live store's queue is the same file"
    fresh = tmp_path / "fresh.db"
    replication.restore(replica, fresh, env=test_replication.litestream_env())
    assert not sidecar(fresh).exists(), "a restore brings no sidecar"


# ---- the busy handler --------------------------------------------------------------------------


WAITER = """
import sys, time, consensus_db
with consensus_db.connect(sys.argv[1]) as db:
    print("open", flush=True)
    db.record_agent_spawn(f"late-{time.monotonic()}", "S", "plan", "quality_gate", "gemini")
    print(time.monotonic(), flush=True)
"""


def wake_up_late(path: Path, hold: float) -> float:
    """How long after a stdlib writer releases SQLite's lock (held ``hold`` s while a
    store write in a third process waits for it) that write returns."""
    blocker = StdlibLock(path)
    waiter = subprocess.Popen([sys.executable, "-c", WAITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert waiter.stdout is not None and waiter.stdout.readline().strip() == "open"
    time.sleep(hold)
    released = blocker.end()
    done = float(waiter.stdout.readline())
    assert waiter.wait(timeout=DEADLINE) == 0
    return done - released


def test_the_busy_handler_does_not_oversleep(db_path):
    """SQLite's handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50 ... ms: a lock freed
    130 ms into the wait is seen at 178 ms. Ours looks again within a millisecond."""
    consensus_db.connect(db_path).close()
    late = [wake_up_late(db_path, 0.13) for _ in range(5)]
    print(f"\nwoke after the release: {', '.join(f'{x * 1000:.1f}' for x in late)} ms")
    assert statistics.median(late) < 0.015, late


def pragma_busy_timeout(db) -> Optional[str]:
    return dict(db.pragmas()).get("busy_timeout")


def test_busy_timeout_is_reported_and_verified_as_configured(db_path):
    with consensus_db.connect(db_path, pragmas={"busy_timeout": 1234}) as db:
        assert str(pragma_busy_timeout(db)) == "1234"
        db.verify_pragmas()


def test_the_busy_handler_gives_up_at_busy_timeout(db_path):
    consensus_db.connect(db_path).close()
    blocker = StdlibLock(db_path)
    try:
        with consensus_db.connect(db_path, pragmas={"busy_timeout": 250}, retry=None) as db:
            started = time.monotonic()
            with pytest.raises(consensus_db.BusyError):
                db.execute("INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, "
                           "spawned_at) VALUES ('x', 'S', 'plan', 'quality_gate', 'g', datetime('now'))")
            waited = time.monotonic() - started
    finally:
        blocker.end()
    assert 0.24 <= waited < 1.0, waited
