"""A private PgBouncer in transaction mode, for ``nox -s pgbouncer`` and the PgBouncer bench.

``python scripts/pgbouncer_private.py [--upstream HOST:PORT] -- COMMAND...`` installs Debian's
``pgbouncer`` package if it is missing, starts a PgBouncer of its own (its own config folder,
a free loopback port, ``pool_mode = transaction``, 4 server connections per database and user)
in front of the PostgreSQL at ``--upstream``, runs COMMAND with ``MOFA_PGBOUNCER_URL`` (the
admin URL through the pooler, with ``?pgbouncer=transaction``) in its environment, then stops
it. The shared servers' configuration is never touched.

Without pgbouncer (not installable), COMMAND still runs with ``MOFA_PGBOUNCER_URL`` unset,
so the PgBouncer tests can say why they skip, or fail under ``CI=true``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BINARY = "/usr/sbin/pgbouncer"
#: Server connections per (database, user): small, so clients really share them.
POOL_SIZE = 4
#: Ports of the shared servers, never handed out.
SHARED_PORTS = {5432, 3306}


class Unavailable(RuntimeError):
    """PgBouncer is missing and could not be installed, or it would not start."""


def find_binary(install: bool) -> str:
    """The pgbouncer binary; with ``install``, apt-get installs it when missing (as root)."""
    found = shutil.which("pgbouncer") or (BINARY if Path(BINARY).exists() else None)
    if found is not None:
        return found
    if not install:
        raise Unavailable("pgbouncer is not installed")
    if os.geteuid() != 0:
        raise Unavailable("pgbouncer is not installed, and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "pgbouncer"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise Unavailable(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    if not Path(BINARY).exists():
        raise Unavailable("apt-get installed pgbouncer, but /usr/sbin/pgbouncer is missing")
    return BINARY


def free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in SHARED_PORTS:
            return port


class PrivatePgBouncer:
    """One PgBouncer process with a config folder of its own; ``stop`` ends only it."""

    def __init__(self, upstream_host: str, upstream_port: int, *, install: bool = True) -> None:
        self.binary = find_binary(install)
        self.folder = Path(tempfile.mkdtemp(prefix="mofa-pgbouncer-"))
        self.port = free_port()
        self.upstream = (upstream_host, upstream_port)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgres://{user}@127.0.0.1:{self.port}/{database}?pgbouncer=transaction"

    def start(self, timeout: float = 15.0) -> None:
        host, port = self.upstream
        (self.folder / "userlist.txt").write_text('"postgres" ""\n')
        (self.folder / "pgbouncer.ini").write_text(
            f"""[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.folder}/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 1000
server_check_delay = 1
ignore_startup_parameters = extra_float_digits
logfile = {self.folder}/pgbouncer.log
pidfile = {self.folder}/pgbouncer.pid
"""
        )
        # PgBouncer refuses to run as root: run it as postgres then (its files are its own).
        demote: dict[str, int] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (self.folder, *self.folder.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            demote = {"user": entry.pw_uid, "group": entry.pw_gid}
        self.process = subprocess.Popen(
            [self.binary, str(self.folder / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **demote,  # type: ignore[call-overload]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(f"pgbouncer exited with {self.process.returncode}: {self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise Unavailable(f"pgbouncer did not listen on port {self.port}: {self.log()}")

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        """End this PgBouncer (by its own process id) and remove its folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # immediate shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", default="127.0.0.1:5432", help="PostgreSQL HOST:PORT")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    command = command or ["true"]
    host, _, port = args.upstream.rpartition(":")
    env = dict(os.environ)
    env.pop("MOFA_PGBOUNCER_URL", None)
    env["MOFA_PGBOUNCER_SESSION"] = "1"
    try:
        bouncer = PrivatePgBouncer(host or "127.0.0.1", int(port))
        bouncer.start()
    except Unavailable as error:
        print(f"\n*** PgBouncer unavailable: {error} ***\n", file=sys.stderr)
        return subprocess.run(command, env=env, check=False).returncode
    try:
        env["MOFA_PGBOUNCER_URL"] = bouncer.url()
        print(f"private PgBouncer on 127.0.0.1:{bouncer.port} (transaction pooling)")
        code = subprocess.run(command, env=env, check=False).returncode
        if code != 0:
            print(f"--- pgbouncer log ---\n{bouncer.log()}", file=sys.stderr)
        return code
    finally:
        bouncer.stop()


if __name__ == "__main__":
    sys.exit(main())
