"""Real PostgreSQL clusters for the tests: ``initdb`` in a temporary directory, started
with ``pg_ctl`` on a free loopback port, stopped at the end. No mocks. ``CuttingProxy``
stands between a store and a server to lose a reply on the wire.

PostgreSQL refuses to run as root; as root (CI, these machines) every server command
runs as the unprivileged ``postgres`` system user through ``runuser``, in a directory
that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

SUPERUSER = "cdb"


def bindir() -> Optional[Path]:
    """The directory of ``initdb``/``pg_ctl``, or None when PostgreSQL is not installed."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def why_unavailable() -> Optional[str]:
    """None when clusters can be started here, else the reason they cannot."""
    if bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed (apt-get install postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no unprivileged 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(argv: list) -> list:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def workdir(prefix: str = "cdb-pg-") -> Path:
    """A temporary directory the server user can use (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    _own(d)
    return d


class Cluster:
    """One PostgreSQL server: ``data`` directory, loopback ``port``, trust auth for
    the superuser ``cdb`` over TCP (and replication, for standbys)."""

    def __init__(self, root: Path, name: str, port: Optional[int] = None):
        self.bin = bindir()
        self.root = root
        self.data = root / name
        self.port = port or free_port()
        self.log = root / f"{name}.log"

    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = _as_server_user([str(self.bin / argv[0]), *argv[1:]])
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def init(self, **settings: str) -> "Cluster":
        self.run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",
            "fsync": "off",  # test clusters: speed; kill -9 of a server keeps the OS cache anyway
            "shared_buffers": "32MB",
            "wal_level": "replica",
            "max_wal_senders": "4",
        }
        conf.update(settings)
        with open(self.data / "postgresql.auto.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        with open(self.data / "pg_hba.conf", "a") as f:
            f.write("host replication all 127.0.0.1/32 trust\n")
        return self

    def start(self) -> "Cluster":
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def pid(self) -> int:
        with open(self.data / "postmaster.pid") as f:
            return int(f.readline())

    def url(self, database: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}" + (f"?{query}" if query else "")

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )
        return out.stdout.strip()

    def standby_of(self, primary: "Cluster", name: str) -> "Cluster":
        """A streaming standby made by ``pg_basebackup -R``, named ``name`` for
        ``synchronous_standby_names``."""
        self.run("pg_basebackup", "-D", str(self.data), "-h", "127.0.0.1", "-p", str(primary.port), "-U", SUPERUSER,
                 "-R", "-X", "stream", "--no-sync")
        with open(self.data / "postgresql.auto.conf", "a") as f:
            f.write(f"port = {self.port}\n")
            f.write(f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user={SUPERUSER} application_name={name}'\n")
            # Promoted, it runs alone: it must not wait for a synchronous standby of its own.
            f.write("synchronous_standby_names = ''\n")
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL on port {self.port} not ready after {timeout}s")


# Frontend messages without a type byte, told apart by their code.
_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104


class _Link:
    """One proxied connection: the client's socket, the server's, and whether it was cut."""

    def __init__(self, client: socket.socket, server: socket.socket):
        self.client = client
        self.server = server
        self.cut = False
        # The server's answer to an SSL/GSS request is one byte without a header.
        self.bare_bytes_due = 0


class CuttingProxy:
    """A TCP proxy on loopback in front of one server. ``cut_after(matches)`` loses the
    reply to the next client message for which ``matches(type_byte, body)`` is true: the
    proxy forwards that message and the rest of its request (up to the ``Sync`` or
    simple ``Query`` that makes the server act on it), then drops the client's side at
    once; the server runs the request to its end (a COMMIT commits) and its answer is
    discarded (``cut_done`` is set when it has arrived). From then on, with
    ``then_down``, new connections are closed as soon as they come (the server is
    unreachable) until ``up()``."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = False
        self.cut_done = threading.Event()
        self._matches: Optional[Callable[[bytes, bytes], bool]] = None
        self._then_down = False
        self._lock = threading.Lock()
        self._links: list = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str, cluster_port: int) -> str:
        """``url`` (of the server on ``cluster_port``) through the proxy."""
        return url.replace(f":{cluster_port}/", f":{self.port}/", 1)

    def cut_after(self, matches: Callable[[bytes, bytes], bool], then_down: bool = True) -> None:
        with self._lock:
            self._matches, self._then_down = matches, then_down
            self.cut_done.clear()

    def up(self) -> None:
        self.down = False

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for link in self._links:
            for s in (link.client, link.server):
                s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.target_port))
            link = _Link(client, server)
            self._links.append(link)
            threading.Thread(target=self._client_to_server, args=(link,), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(link,), daemon=True).start()

    def _claim(self, kind: bytes, body: bytes) -> bool:
        with self._lock:
            if self._matches is not None and self._matches(kind, body):
                self._matches = None
                return True
            return False

    def _client_to_server(self, link: _Link) -> None:
        buf, started, cutting = b"", False, False
        try:
            while True:
                data = link.client.recv(65536)
                if not data:
                    break
                buf += data
                out = b""
                while True:
                    header = 4 if not started else 5
                    if len(buf) < header:
                        break
                    kind = b"" if not started else buf[:1]
                    (length,) = struct.unpack("!I", buf[header - 4 : header])
                    end = header - 4 + length
                    if len(buf) < end:
                        break
                    message, buf = buf[:end], buf[end:]
                    out += message
                    if not started:
                        (code,) = struct.unpack("!I", message[4:8])
                        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                            link.bare_bytes_due += 1
                        else:
                            started = True  # the startup message: typed messages follow
                        continue
                    cutting = cutting or self._claim(kind, message[5:])
                    if cutting and kind in (b"S", b"Q"):
                        # Nothing the server says from here on reaches the client.
                        link.cut = True
                        link.server.sendall(out)
                        if self._then_down:
                            self.down = True
                        link.client.shutdown(socket.SHUT_RDWR)
                        link.client.close()
                        return
                link.server.sendall(out)
        except OSError:
            pass
        if not link.cut:
            link.server.close()

    def _server_to_client(self, link: _Link) -> None:
        buf = b""
        try:
            while True:
                data = link.server.recv(65536)
                if not data:
                    break
                buf += data
                while True:
                    if link.bare_bytes_due and buf:
                        link.bare_bytes_due -= 1
                        message, buf = buf[:1], buf[1:]
                    elif len(buf) >= 5 and len(buf) >= 1 + struct.unpack("!I", buf[1:5])[0]:
                        end = 1 + struct.unpack("!I", buf[1:5])[0]
                        message, buf = buf[:end], buf[end:]
                    else:
                        break
                    if not link.cut:
                        link.client.sendall(message)
                    elif message[:1] == b"Z":
                        # ReadyForQuery: the server finished the request the client lost.
                        self.cut_done.set()
                        link.server.close()
                        return
        except OSError:
            pass
        if not link.cut:
            link.client.close()
