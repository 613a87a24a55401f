"""A private PostgreSQL 15 primary with one streaming hot-standby replica, for read-replica tests.

Each server lives in a temporary folder of its own and listens on 127.0.0.1 on a free port of
its own, never the shared server on 5432 (nor MariaDB's 3306). Replication is asynchronous, as
in production, so tests can observe real lag; the replica can be paused, stopped, crashed,
restarted and frozen. ``destroy()`` always kills both and deletes both folders; the pair is
also a context manager (``with PrimaryWithReplica() as pair:`` starts it and destroys it).

PostgreSQL refuses to run as root, so when we are root the server binaries run as the
``postgres`` user. Stdlib only (and tests/processes.py), so it imports without the package
under test.
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
from typing import TYPE_CHECKING, Literal, TypedDict

from processes import signal_tree  # tests/processes.py

if TYPE_CHECKING:
    from types import TracebackType

PG_BIN = Path(os.environ.get("MOFA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SHARED_PORTS = {5432, 3306}
#: The replica's walreceiver reports this as its application_name to the primary.
REPLICA_NAME = "mofa_replica"
SLOT_NAME = "mofa_replica_slot"
StopMode = Literal["fast", "immediate", "kill"]

_CONF = """
# --- pg_replica.py: a primary with one streaming hot standby (copied to the replica) ---
listen_addresses = '127.0.0.1'
max_connections = 200
shared_buffers = 16MB
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
# Replica queries must not be cancelled by replayed vacuum cleanup in the middle of a test.
hot_standby_feedback = on
# Report replay progress every second so pg_stat_replication's lag columns stay current.
wal_receiver_status_interval = 1s
"""

_HBA = """\
# --- pg_replica.py: trust everything local, replication included ---
local   all             all                     trust
local   replication     all                     trust
host    all             all     127.0.0.1/32    trust
host    replication     all     127.0.0.1/32    trust
"""


class ServerUnavailable(RuntimeError):
    """The binaries are missing or a server would not start, stream or stop."""


class PsqlError(RuntimeError):
    """psql failed; the message carries its stderr so the test failure says why."""


class ReplicationLag(TypedDict):
    """One pg_stat_replication row of the replica, seen from the primary.

    Times are seconds (None once the standby is caught up and idle, or not connected);
    ``byte_lag`` is ``pg_current_wal_lsn() - replay_lsn`` (None when not connected).
    """

    state: str | None
    write_lag: float | None
    flush_lag: float | None
    replay_lag: float | None
    byte_lag: int | None


def free_port(avoid: set[int] | None = None) -> int:
    """A port nothing listens on now; never a shared server's port."""
    avoid = SHARED_PORTS | (avoid or set())
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in avoid:
            return port


def _postgres_ids() -> tuple[int, int] | None:
    """uid/gid to run the server binaries as when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _clean_env() -> dict[str, str]:
    """Our environment without PG* variables, so a stray PGOPTIONS or PGHOST changes nothing."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Node:
    """One PostgreSQL server process in a folder of its own; restartable on the same port."""

    def __init__(self, name: str, ids: tuple[int, int] | None, avoid: set[int]) -> None:
        self.name = name
        # Set only when we are root: then the binaries run as postgres, without root's groups.
        self.uid: int | None = ids[0] if ids is not None else None
        self.gid: int | None = ids[1] if ids is not None else None
        self.extra_groups: list[int] | None = [] if ids is not None else None
        self.root = Path(tempfile.mkdtemp(prefix=f"mofa-pg-{name.removeprefix('mofa_')}-"))
        if ids is not None:
            os.chown(self.root, *ids)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port(avoid)
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self.starts = 0
        #: Wall-clock time of the last start; the walsender of that start began after it.
        self.started_at = 0.0

    def run(self, args: list[str], timeout: float = 180) -> None:
        """Run a server tool (initdb, pg_basebackup) as the postgres user; raise on failure."""
        done = subprocess.run(
            args,
            capture_output=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
            env=_clean_env(),
            user=self.uid,
            group=self.gid,
            extra_groups=self.extra_groups,
        )
        if done.returncode != 0:
            raise ServerUnavailable(f"{Path(args[0]).name} failed: {done.stderr.decode()[-2000:]}")

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server log, for error messages (CI shows nothing else)."""
        try:
            return self.log.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 90) -> None:
        """Start the postmaster and wait until it accepts connections (recovery done)."""
        if self.process is not None:
            raise ServerUnavailable(f"{self.name} is already running")
        args = [
            str(PG_BIN / "postgres"),
            *("-D", str(self.data), "-p", str(self.port), "-c", f"cluster_name={self.name}"),
            # TCP only: a Unix socket path under a long TMPDIR can exceed the 107-byte limit.
            *("-c", "unix_socket_directories="),
        ]
        self.started_at = time.time()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=log,
                cwd=self.root,
                env=_clean_env(),
                start_new_session=True,  # a Ctrl-C at the test run must not reach it
                user=self.uid,
                group=self.gid,
                extra_groups=self.extra_groups,
            )
        deadline = time.monotonic() + timeout
        # Listening is not accepting: pg_isready succeeds only once startup/recovery is done
        # (for a hot standby: once it is consistent and takes read-only queries).
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise ServerUnavailable(f"{self.name} exited with {code}:\n{self.log_tail()}")
            probe = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                capture_output=True,
                check=False,
                env=_clean_env(),
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"{self.name} never became ready:\n{self.log_tail()}")
            time.sleep(0.05)
        self.starts += 1

    def signal_all(self, sig: signal.Signals) -> None:
        """Send SIGSTOP, SIGCONT or SIGKILL to the postmaster and every child it has."""
        if self.process is not None:
            signal_tree(self.process.pid, sig)

    def stop(self, mode: StopMode = "fast", timeout: float = 60) -> None:
        """``fast``: SIGINT (clean); ``immediate``: SIGQUIT (crash-like); ``kill``: SIGKILL all."""
        if self.process is None:
            return
        if mode == "kill":
            self.signal_all(signal.SIGKILL)
        else:
            if self.frozen:  # a stopped process cannot act on SIGINT/SIGQUIT
                self.signal_all(signal.SIGCONT)
            sig = signal.SIGINT if mode == "fast" else signal.SIGQUIT
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            mode = "kill"
            self.signal_all(signal.SIGKILL)
            self.process.wait(timeout=30)
        finally:
            self.process = None
            self.frozen = False
        if mode == "kill":
            self._drop_shared_memory()

    def _drop_shared_memory(self) -> None:
        """Remove the SysV segment a killed postmaster leaves behind, so none leak per test.

        Its id is on line 7 of postmaster.pid. The lock file goes too, so that a PID recycled
        by then cannot make the next start think another postmaster still runs.
        """
        lock = self.data / "postmaster.pid"
        try:
            shmid = int(lock.read_text().splitlines()[6].split()[1])
        except (OSError, IndexError, ValueError):
            shmid = None
        if shmid is not None and shutil.which("ipcrm") is not None:
            subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True, check=False)
        lock.unlink(missing_ok=True)

    def destroy(self) -> None:
        """Stop whatever runs and delete the folder; never raises.

        An immediate shutdown comes first because the postmaster then frees its shared memory;
        SIGKILL is the fallback.
        """
        with contextlib.suppress(Exception):
            self.stop("immediate", timeout=30)
        with contextlib.suppress(Exception):
            self.stop("kill", timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


class PrimaryWithReplica:
    """A private primary and one asynchronous streaming hot standby of it.

    The constructor only runs initdb for the primary; ``start()`` starts it, clones the replica
    with pg_basebackup (through a replication slot, so a replica that was down or frozen can
    always catch up) and waits until the replica streams and answers read-only queries.
    """

    def __init__(self) -> None:
        for tool in ("initdb", "postgres", "pg_basebackup", "pg_isready", "psql"):
            if not (PG_BIN / tool).is_file():
                raise ServerUnavailable(f"{PG_BIN / tool} is missing")
        ids = _postgres_ids()
        self.primary = Node("mofa_primary", ids, set())
        self.replica: Node | None = None
        try:
            self.replica = Node(REPLICA_NAME, ids, {self.primary.port})
            self.primary.run(
                [
                    str(PG_BIN / "initdb"),
                    *("-D", str(self.primary.data), "-U", "postgres", "--auth=trust"),
                    *("-E", "UTF8", "--no-sync"),
                ]
            )
            with (self.primary.data / "postgresql.conf").open("a") as conf:
                conf.write(_CONF)
            (self.primary.data / "pg_hba.conf").write_text(_HBA)
        except BaseException:
            self.destroy()
            raise

    def _replica(self) -> Node:
        if self.replica is None:
            raise ServerUnavailable("the pair was destroyed")
        return self.replica

    # --- URLs -------------------------------------------------------------------------------

    def primary_url(self, db: str) -> str:
        return self.primary.url(db)

    def replica_url(self, db: str) -> str:
        return self._replica().url(db)

    @property
    def primary_admin_url(self) -> str:
        return self.primary.url("postgres")

    @property
    def replica_admin_url(self) -> str:
        return self._replica().url("postgres")

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        """Start the primary, clone and start the replica, wait until it streams."""
        replica = self._replica()
        self.primary.start()
        if not replica.data.exists():
            replica.run(
                [
                    str(PG_BIN / "pg_basebackup"),
                    *("-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"),
                    *("-D", str(replica.data), "-R", "-X", "stream"),
                    # A slot keeps the WAL a stopped or frozen replica still needs; a fast
                    # checkpoint and no fsync keep the clone to about a second on CI.
                    *("-C", "-S", SLOT_NAME, "--checkpoint=fast", "--no-sync"),
                ],
                timeout=timeout,
            )
        self.start_replica(timeout)

    def start_replica(self, timeout: float = 120) -> None:
        """(Re)start the replica on its port; return once it streams and takes queries."""
        replica = self._replica()
        replica.start(timeout)
        deadline = time.monotonic() + timeout
        while self.psql_replica("SELECT pg_is_in_recovery()") != "t":
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"replica is not a standby:\n{replica.log_tail()}")
            time.sleep(0.05)
        self.wait_streaming(timeout=max(1.0, deadline - time.monotonic()))

    def wait_streaming(self, timeout: float = 60) -> None:
        """Wait until the primary has a streaming walsender from the replica's latest start.

        A walsender left from before a kill or a freeze may still be listed; only one that
        began after the replica's last start counts.
        """
        replica = self._replica()
        sql = (
            "SELECT count(*) FROM pg_stat_replication"
            f" WHERE application_name = {_quote_literal(REPLICA_NAME)}"
            " AND state = 'streaming'"
            f" AND backend_start >= to_timestamp({replica.started_at!r})"
        )
        deadline = time.monotonic() + timeout
        while self.psql_primary(sql) == "0":
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"replica never streamed:\n{replica.log_tail()}")
            time.sleep(0.05)

    def stop_replica(self, mode: StopMode = "fast") -> None:
        """``fast``: SIGINT; ``immediate``: SIGQUIT; ``kill``: SIGKILL of every server process."""
        self._replica().stop(mode)

    def freeze_replica(self) -> None:
        """SIGSTOP every replica process: a hung server that keeps its sockets open."""
        replica = self._replica()
        if replica.process is None:
            raise ServerUnavailable("replica is not running")
        replica.frozen = True
        replica.signal_all(signal.SIGSTOP)

    def thaw_replica(self) -> None:
        """SIGCONT every replica process; it carries on where it stopped."""
        replica = self._replica()
        replica.signal_all(signal.SIGCONT)
        replica.frozen = False

    def destroy(self) -> None:
        """Kill both servers and delete both folders; safe to call twice, never raises."""
        if self.replica is not None:
            self.replica.destroy()
        self.primary.destroy()

    def __enter__(self) -> PrimaryWithReplica:
        try:
            if self.primary.process is None:
                self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.destroy()

    # --- admin SQL --------------------------------------------------------------------------

    def _psql(self, node: Node, sql: str, db: str, timeout: float) -> str:
        # The script goes on stdin so each statement commits on its own (-c would wrap
        # several in one transaction, which CREATE DATABASE refuses).
        args = [
            str(PG_BIN / "psql"),
            *("-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres", "-d", db),
            *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"),
        ]
        env = _clean_env() | {"PGCONNECT_TIMEOUT": str(max(2, int(timeout)))}
        try:
            done = subprocess.run(
                args, input=sql.encode(), capture_output=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise PsqlError(f"psql on {node.name} timed out after {timeout}s: {sql}") from error
        if done.returncode != 0:
            raise PsqlError(f"psql on {node.name} failed: {done.stderr.decode().strip()}\n{sql}")
        return done.stdout.decode().strip()

    def psql_primary(self, sql: str, db: str = "postgres", timeout: float = 60) -> str:
        """Run SQL on the primary with psql; unaligned, tuples only ('|' between columns)."""
        return self._psql(self.primary, sql, db, timeout)

    def psql_replica(self, sql: str, db: str = "postgres", timeout: float = 60) -> str:
        """Run SQL on the replica (read-only) with psql; same output as ``psql_primary``."""
        return self._psql(self._replica(), sql, db, timeout)

    def create_database(self, name: str) -> None:
        self.psql_primary(f"CREATE DATABASE {_quote_ident(name)}")

    def wait_replica_has_database(self, name: str, timeout: float = 30) -> None:
        """Wait until the replica has replayed the database's creation and accepts a connection."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(PsqlError):
                if self.psql_replica("SELECT 1", db=name, timeout=10) == "1":
                    return
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"database {name!r} never reached the replica")
            time.sleep(0.05)

    # --- replay control and lag -------------------------------------------------------------

    def pause_replay(self) -> None:
        """Stop applying WAL on the replica: it keeps receiving but shows an old snapshot."""
        self.psql_replica("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.psql_replica("SELECT pg_wal_replay_resume()")

    def replay_paused(self) -> bool:
        """True once a pause is requested (PostgreSQL applies no further WAL from then on)."""
        return self.psql_replica("SELECT pg_is_wal_replay_paused()") == "t"

    def replication_lag(self) -> ReplicationLag:
        """The replica's lag as the primary sees it (pg_stat_replication)."""
        row = self.psql_primary(
            "SELECT state,"
            " extract(epoch FROM write_lag), extract(epoch FROM flush_lag),"
            " extract(epoch FROM replay_lag),"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint"
            " FROM pg_stat_replication"
            f" WHERE application_name = {_quote_literal(REPLICA_NAME)}"
            " ORDER BY backend_start DESC LIMIT 1"
        )
        if not row:
            return ReplicationLag(
                state=None, write_lag=None, flush_lag=None, replay_lag=None, byte_lag=None
            )
        state, write, flush, replay, lag = row.split("|")
        return ReplicationLag(
            state=state,
            write_lag=float(write) if write else None,
            flush_lag=float(flush) if flush else None,
            replay_lag=float(replay) if replay else None,
            byte_lag=int(lag) if lag else None,
        )
