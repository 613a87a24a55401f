"""Private PostgreSQL and MariaDB instances for tests that stop and restart their server.

Each instance lives in a temporary folder of its own, listens on 127.0.0.1 on a free port of
its own, and is never the shared server on 5432/3306. ``stop(mode)`` and ``start()`` may be
called any number of times; ``destroy()`` kills the process and deletes the folder (the
fixtures call it even when a test fails).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from processes import signal_tree  # tests/processes.py

PG_BIN = Path(os.environ.get("MOFA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
MARIADBD = os.environ.get("MOFA_TEST_MARIADBD", "/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = os.environ.get("MOFA_TEST_MARIADB_INSTALL_DB", "mariadb-install-db")
SHARED_PORTS = {5432, 3306}


class ServerUnavailable(RuntimeError):
    """The binaries to run a private server are missing or it would not start."""


def free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in SHARED_PORTS:
            return port


def _wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerUnavailable(f"server exited with {process.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ServerUnavailable(f"nothing listens on port {port} after {timeout}s")


def _demote_to(user: str) -> tuple[int, int] | None:
    """uid/gid to run as when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


class PrivatePostgres:
    kind = "postgresql"

    def __init__(self) -> None:
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not (PG_BIN / tool).is_file():
                raise ServerUnavailable(f"{PG_BIN / tool} is missing")
        self.ids = _demote_to("postgres")
        self.root = Path(tempfile.mkdtemp(prefix="mofa-pg-"))
        if self.ids is not None:
            os.chown(self.root, *self.ids)
        self.data = self.root / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._run(
            [
                str(PG_BIN / "initdb"),
                *("-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
                *("--no-sync", "-N"),
            ]
        )

    def _run(self, args: list[str]) -> None:
        done = subprocess.run(
            args, capture_output=True, timeout=120, check=False, **self._as_user()
        )
        if done.returncode != 0:
            raise ServerUnavailable(f"{args[0]} failed: {done.stderr.decode()[-2000:]}")

    def _as_user(self) -> dict[str, object]:
        if self.ids is None:
            return {}
        return {"user": self.ids[0], "group": self.ids[1], "extra_groups": []}

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        args = [
            str(PG_BIN / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.root),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=16MB",
        ]
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(
            args, stdout=log, stderr=log, start_new_session=True, **self._as_user()
        )
        log.close()
        _wait_for_port(self.port, 60, self.process)
        # Listening is not accepting: wait until the startup (and any crash recovery) is done.
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise ServerUnavailable("private PostgreSQL never became ready")
            time.sleep(0.05)
        self.starts += 1

    def stop(self, mode: str = "fast") -> None:
        """``fast``: SIGINT (clean shutdown); ``immediate``: SIGQUIT; ``kill``: SIGKILL."""
        if self.process is None:
            return
        if mode == "kill":
            # Every server process, not just the postmaster (see tests/processes.py).
            signal_tree(self.process.pid, signal.SIGKILL)
        else:
            sig = signal.SIGINT if mode == "fast" else signal.SIGQUIT
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
        try:
            self.process.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None
        if mode == "kill":
            (self.data / "postmaster.pid").unlink(missing_ok=True)

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: TCP stays open, nothing answers."""
        assert self.process is not None
        signal_tree(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        signal_tree(self.process.pid, signal.SIGCONT)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateMariaDB:
    kind = "mysql"

    def __init__(self) -> None:
        if not Path(MARIADBD).is_file() or shutil.which(MARIADB_INSTALL_DB) is None:
            raise ServerUnavailable(f"{MARIADBD} or {MARIADB_INSTALL_DB} is missing")
        self.root = Path(tempfile.mkdtemp(prefix="mofa-mariadb-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.user = "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        done = subprocess.run(
            [
                MARIADB_INSTALL_DB,
                "--no-defaults",
                f"--datadir={self.data}",
                f"--user={self.user}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            capture_output=True,
            timeout=180,
            check=False,
        )
        if done.returncode != 0:
            raise ServerUnavailable(f"mariadb-install-db failed: {done.stderr.decode()[-2000:]}")

    @property
    def admin_url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/mysql"

    def url(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        args = [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.data}",
            f"--socket={self.root / 'mysqld.sock'}",
            f"--pid-file={self.root / 'mysqld.pid'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--user={self.user}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--max-connections=300",
            f"--log-error={self.root / 'error.log'}",
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_for_port(self.port, 60, self.process)
        self.starts += 1

    def stop(self, mode: str = "fast") -> None:
        """``fast``: SIGTERM (clean shutdown); ``immediate``/``kill``: SIGKILL (crash)."""
        if self.process is None:
            return
        sig = signal.SIGTERM if mode == "fast" else signal.SIGKILL
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def freeze(self) -> None:
        """SIGSTOP the server (one process): TCP stays open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def destroy(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.process.wait(timeout=30)
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)


def private_server(kind: str) -> PrivatePostgres | PrivateMariaDB:
    return PrivatePostgres() if kind == "postgresql" else PrivateMariaDB()
