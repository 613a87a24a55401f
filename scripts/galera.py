"""A private MariaDB Galera cluster on loopback, for tests and for humans.

Every node is a plain ``mariadbd --no-defaults`` process with its own data directory, socket,
pid file and error log under one root folder, so neither /etc/mysql nor a shared server on
3306 is ever involved. ``cluster.json`` in the root records ports and pids: a later process
(another test worker, the ``galera-cluster`` command) reattaches to check or stop the cluster.

Nodes run in their own session, so killing the process that started them (a test run that is
interrupted) leaves the cluster running until ``stop()``. Stdlib only: node status is read with
the ``mariadb`` command-line client rather than a Python driver.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["ClusterError", "GaleraCluster", "NodePorts", "format_status"]

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
STATE_FILE = "cluster.json"
# Our own SST method name: the server runs `wsrep_sst_<method>` from PATH, and the wrapper of
# that name (written into <root>/bin) runs the stock rsync script with an rsync that works as
# root. See _write_helpers for why the stock method alone fails when the server runs as root.
SST_METHOD = "mofa_rsync"
# Ports of the shared servers and Galera's defaults (a real cluster on the host) are never used.
RESERVED_PORTS = frozenset({3306, 5432, 4444, 4567, 4568})
# Below the Linux ephemeral range (32768-60999): an outgoing connection cannot grab a port
# between the moment it is picked here and the moment the node binds it.
PORT_RANGE = (20000, 32000)
# Galera's failure detector: the defaults (suspect 5 s, inactive 15 s) make a crashed node stall
# writes on the survivors for a long time; loopback needs less, a loaded 2-core CI box not much.
EVS_OPTIONS = (
    "evs.keepalive_period=PT1S",
    "evs.suspect_timeout=PT3S",
    "evs.inactive_timeout=PT6S",
    "evs.install_timeout=PT5S",
    # Membership changes (every join) retransmit join messages once a second by default.
    "evs.join_retrans_period=PT0.2S",
)
STATUS_VARIABLES = (
    "wsrep_cluster_size",
    "wsrep_local_state_comment",
    "wsrep_ready",
    "wsrep_cluster_status",
)


class ClusterError(RuntimeError):
    """A node did not start, stop or sync; the message carries its error-log tail."""


@dataclass(frozen=True)
class NodePorts:
    """The loopback ports of one node: SQL, group communication, IST and rsync SST."""

    sql: int
    gcomm: int
    ist: int
    sst: int


class GaleraCluster:
    """A cluster of ``nodes`` MariaDB Galera nodes whose state lives under ``root``."""

    def __init__(self, root: Path | str, nodes: int = 3, *, timeout: float = 120.0) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        # Resolved: pids are recognised by the --datadir in their command line, which must
        # read the same whichever spelling of the folder a later process passes.
        self.root = Path(root).resolve()
        self.nodes = nodes
        # How long one node may take to start and sync (SST on a loaded CI box included).
        self.timeout = timeout
        self.cluster_name = "mofa-galera-" + hashlib.sha1(str(self.root).encode()).hexdigest()[:8]
        self._ports: list[NodePorts] = []
        self._pids: list[int | None] = [None] * nodes
        self._lock_depth = 0
        # Where each node's error log stood when we last launched it: errors quote this run.
        self._log_offsets: dict[int, int] = {}
        self._lock_fd: int | None = None
        if self.state_file.exists():
            self._read_state()

    # ----------------------------------------------------------------- construction, state

    @classmethod
    def load(cls, root: Path | str, *, timeout: float = 120.0) -> GaleraCluster:
        """Reattach to a cluster another process started, from its ``cluster.json``."""
        state_file = Path(root) / STATE_FILE
        try:
            nodes = int(json.loads(state_file.read_text())["nodes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ClusterError(f"no Galera cluster state at {state_file}: {exc}") from exc
        return cls(root, nodes, timeout=timeout)

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    def _read_state(self) -> None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError) as exc:
            raise ClusterError(f"unreadable cluster state {self.state_file}: {exc}") from exc
        if state.get("nodes") != self.nodes:
            raise ClusterError(
                f"{self.root} holds a {state.get('nodes')}-node cluster, not {self.nodes}; "
                "use GaleraCluster.load() or destroy it first"
            )
        self._ports = [NodePorts(**p) for p in state.get("ports", [])]
        pids = state.get("pids") or [None] * self.nodes
        self._pids = [int(p) if p else None for p in pids]

    def _write_state(self) -> None:
        """Atomically, so a concurrent reader never sees half a file."""
        state = {
            "nodes": self.nodes,
            "cluster_name": self.cluster_name,
            "ports": [asdict(p) for p in self._ports],
            "pids": self._pids,
            "urls": self.urls("mysql") if self._ports else [],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop across processes (parallel test workers share one cluster)."""
        if self._lock_depth == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
            # Another process may have changed the cluster while we waited for the lock.
            if self.state_file.exists():
                self._read_state()
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # ----------------------------------------------------------------------------- paths

    def node_dir(self, i: int) -> Path:
        return self.root / f"node{i}"

    def datadir(self, i: int) -> Path:
        return self.node_dir(i) / "data"

    def error_log(self, i: int) -> Path:
        return self.node_dir(i) / "error.log"

    def socket_path(self, i: int) -> Path:
        """Under the node dir unless that path is too long for a Unix socket (108 bytes)."""
        path = self.node_dir(i) / "mysqld.sock"
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"mofa-galera-{digest}-{i}.sock"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    # ------------------------------------------------------------------------------ URLs

    def port(self, i: int) -> int:
        self._check_index(i)
        if not self._ports:
            raise ClusterError(f"the cluster at {self.root} has never been started")
        return self._ports[i].sql

    def url(self, i: int, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port(i)}/{database}"

    def admin_url(self, i: int) -> str:
        return self.url(i, "mysql")

    def urls(self, database: str) -> list[str]:
        return [self.url(i, database) for i in range(self.nodes)]

    def multi_host_url(self, database: str) -> str:
        """One URL naming every node, for drivers that fail over between hosts."""
        hosts = ",".join(f"127.0.0.1:{self.port(i)}" for i in range(self.nodes))
        return f"mysql://root@{hosts}/{database}"

    # ---------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start every node that is not running and wait until all are Synced.

        A fresh cluster bootstraps node 0; a stopped one bootstraps the node whose
        grastate.dat is most advanced. On a running cluster this only waits for sync.
        """
        with self._locked():
            self._write_helpers()
            alive = [self.is_alive(i) for i in range(self.nodes)]
            if any(alive):
                self._ensure_primary([i for i in range(self.nodes) if alive[i]])
            else:
                self._pids = [None] * self.nodes
                self._ensure_ports()
                first = self._bootstrap_candidate()
                self._launch(first, bootstrap=True)
                self.wait_synced([first], size=1)
                alive[first] = True
            # One joiner at a time: a donor serves one SST at a time, and starting joiners
            # together was measured slower on a 2-core box, not faster.
            for i in range(self.nodes):
                if not alive[i]:
                    self._launch(i, bootstrap=False)
                    self.wait_synced([i], size=None)
            self.wait_synced()

    def start_node(self, i: int) -> None:
        """Rejoin node ``i`` to the running cluster (after stop_node or kill_node)."""
        self._check_index(i)
        with self._locked():
            if self.is_alive(i):
                self.wait_synced()
                return
            others = [j for j in range(self.nodes) if j != i and self.is_alive(j)]
            if not others:
                raise ClusterError(f"node {i}: no running node to join; use start()")
            self._write_helpers()
            self._ensure_primary(others)
            self._launch(i, bootstrap=False)
            self.wait_synced([i], size=None)
            self.wait_synced()

    def stop_node(self, i: int, timeout: float = 60.0) -> None:
        """Shut node ``i`` down cleanly (SIGTERM): it leaves the cluster gracefully."""
        self._check_index(i)
        with self._locked():
            self._terminate(i, timeout)

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i`` to simulate a crash; the others notice after evs.suspect_timeout."""
        self._check_index(i)
        with self._locked():
            pid = self._live_pid(i)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10.0)
            self._pids[i] = None
            self._write_state()

    def isolate_node(self, i: int, isolated: bool = True) -> None:
        """Cut node ``i`` off the group (it stays up, non-Primary) or let it rejoin.

        A cheap partition: no restart, no SST. While isolated the node accepts connections
        but refuses most statements with 1047 (WSREP has not yet prepared node ...).
        """
        self._check_index(i)
        self.query(i, f"SET GLOBAL wsrep_provider_options='gmcast.isolate={int(isolated)}'")
        if not isolated:
            self.wait_synced()
            return
        others = [j for j in range(self.nodes) if j != i and self.is_alive(j)]
        deadline = time.monotonic() + self.timeout
        while self.status()[i]["wsrep_cluster_status"] == "Primary":
            if time.monotonic() > deadline:
                raise ClusterError(f"node {i} still Primary after gmcast.isolate=1")
            time.sleep(0.2)
        if others:
            self.wait_synced(others, size=len(others))

    def stop(self, timeout: float = 60.0) -> None:
        """Stop every node cleanly, then kill whatever is left (stuck nodes, SST helpers).

        ``timeout`` is per node; a node that outlives it is killed.
        """
        if not self.root.exists():
            return
        with self._locked():
            # One at a time, node 0 last: each leaves a healthy cluster (about 0.1 s each,
            # where all at once was measured to take 3 s about every other time), and node 0
            # ends up marked safe_to_bootstrap for the next start().
            for i in reversed(range(self.nodes)):
                self._terminate(i, timeout)
            self._kill_leftovers()

    def destroy(self) -> None:
        """Stop the cluster and delete its root folder."""
        if not self.root.exists():
            return
        with self._locked():
            self.stop()
            for i in range(self.nodes):
                sock = self.socket_path(i)
                if not sock.is_relative_to(self.root):
                    sock.unlink(missing_ok=True)
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------------- status

    def is_alive(self, i: int) -> bool:
        return self._live_pid(i) is not None

    def status(self) -> list[dict[str, Any]]:
        """Per node: port, pid, alive and the wsrep status variables (None when unreachable)."""
        result: list[dict[str, Any]] = []
        for i in range(self.nodes):
            entry: dict[str, Any] = {
                "node": i,
                "port": self._ports[i].sql if self._ports else None,
                "pid": self._live_pid(i),
                "alive": self.is_alive(i),
                "wsrep_cluster_size": None,
                "wsrep_local_state_comment": None,
                "wsrep_ready": None,
                "wsrep_cluster_status": None,
                "error": None,
            }
            if entry["alive"]:
                names = ",".join(f"'{v}'" for v in STATUS_VARIABLES)
                try:
                    rows = self.query(i, f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})")
                except ClusterError as exc:
                    entry["error"] = str(exc)
                else:
                    values = {row[0].lower(): row[1] for row in rows if len(row) >= 2}
                    for name in STATUS_VARIABLES:
                        entry[name] = values.get(name)
                    size = entry["wsrep_cluster_size"]
                    entry["wsrep_cluster_size"] = int(size) if size else None
            result.append(entry)
        return result

    def healthy(self, status: list[dict[str, Any]] | None = None) -> bool:
        """Whether every node is alive, Synced, ready and sees the full cluster."""
        return all(self._node_ok(s, self.nodes) for s in status or self.status())

    @staticmethod
    def _node_ok(s: dict[str, Any], size: int | None) -> bool:
        return bool(
            s["alive"]
            and s["wsrep_local_state_comment"] == "Synced"
            and s["wsrep_ready"] == "ON"
            and s["wsrep_cluster_status"] == "Primary"
            and (size is None or s["wsrep_cluster_size"] == size)
        )

    def wait_synced(
        self,
        nodes: Iterable[int] | None = None,
        size: int | None = -1,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Wait until ``nodes`` (default all) are Synced, ready, Primary, of cluster ``size``.

        ``size=-1`` (the default) means the full cluster, ``None`` any size. A node that dies
        meanwhile fails at once, with its error-log tail.
        """
        wanted = list(range(self.nodes)) if nodes is None else list(nodes)
        want_size = self.nodes if size == -1 else size
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            status = self.status()
            for i in wanted:
                if not status[i]["alive"]:
                    raise ClusterError(f"node {i} is not running{self._log_tail(i)}")
            if all(self._node_ok(status[i], want_size) for i in wanted):
                return status
            if time.monotonic() > deadline:
                lines = "\n".join(_format_status(status[i]) for i in wanted)
                tails = "".join(
                    self._log_tail(i) for i in wanted if not self._node_ok(status[i], want_size)
                )
                raise ClusterError(f"nodes {wanted} not Synced (size {want_size}):\n{lines}{tails}")
            time.sleep(0.2)

    def query(self, i: int, sql: str, database: str | None = None) -> list[list[str]]:
        """Run ``sql`` on node ``i`` with the mariadb client; rows as lists of strings."""
        self._check_index(i)
        cmd = [
            _which("mariadb", "mysql"),
            "--no-defaults",
            "-h127.0.0.1",
            f"-P{self.port(i)}",
            "-uroot",
            "--connect-timeout=3",
            "-N",
            "-B",
            "-e",
            sql,
        ]
        if database:
            cmd.append(database)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"node {i}: client timed out on {sql!r}") from exc
        if done.returncode != 0:
            raise ClusterError(f"node {i}: {done.stderr.strip() or 'mariadb client failed'}")
        return [line.split("\t") for line in done.stdout.splitlines()]

    # ------------------------------------------------------------------------ internals

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.nodes:
            raise IndexError(f"node {i} out of range 0..{self.nodes - 1}")

    def _live_pid(self, i: int) -> int | None:
        """The recorded pid if it is still this node's mariadbd (pids get reused)."""
        pid = self._pids[i] if i < len(self._pids) else None
        if pid is None:
            return None
        return pid if _is_our_server(pid, self.datadir(i)) else None

    def _ensure_ports(self) -> None:
        """Keep the recorded ports (stable URLs across restarts) while they are free."""
        if len(self._ports) == self.nodes and all(
            _port_free(p) for ports in self._ports for p in asdict(ports).values()
        ):
            return
        taken: set[int] = set()
        self._ports = [NodePorts(*(_free_port(taken) for _ in range(4))) for _ in range(self.nodes)]
        self._write_state()

    def _write_helpers(self) -> None:
        """Write the SST wrappers the nodes find on PATH.

        wsrep_sst_rsync starts an ``rsync --daemon`` on the joiner; run by root, rsync drops
        to uid ``nobody``, which cannot write the root-owned datadir ("cannot stat destination
        ... Permission denied"). The rsync wrapper keeps the daemon's uid. mariadbd puts its
        own bin dir (/usr/bin) first on the SST script's PATH, so a wrapper simply named
        rsync is not enough: the SST method has a name of its own whose script puts our bin
        dir first again before running the stock script.
        """
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        rsync = _which("rsync")
        sst = _which("wsrep_sst_rsync")
        dparams = ""
        if os.geteuid() == 0:
            dparams = f'set -- "$@" --dparam=uid={os.getuid()} --dparam=gid={os.getgid()}'
        _write_script(
            self.bin_dir / "rsync",
            f"""\
# Generated by galera.py: keep an SST rsync daemon from dropping root to uid nobody.
for arg in "$@"; do
    if [ "$arg" = "--daemon" ]; then
        first=1
        for a in "$@"; do
            if [ "$first" = 1 ]; then set --; first=0; fi
            set -- "$@" "$a"
            if [ "$a" = "--daemon" ]; then {dparams or ":"}; fi
        done
        break
    fi
done
exec {rsync} "$@"
""",
        )
        _write_script(
            self.bin_dir / f"wsrep_sst_{SST_METHOD}",
            f"""\
# Generated by galera.py: the stock rsync SST, with the rsync wrapper first on PATH.
PATH="{self.bin_dir}:$PATH"
export PATH
exec {sst} "$@"
""",
        )

    def _gcomm(self, i: int) -> str:
        return f"127.0.0.1:{self._ports[i].gcomm}"

    def _command(self, i: int, bootstrap: bool) -> list[str]:
        ports = self._ports[i]
        others = [self._gcomm(j) for j in range(self.nodes) if j != i]
        address = "gcomm://" if bootstrap else "gcomm://" + ",".join(others)
        provider_options = ";".join(
            (
                "base_host=127.0.0.1",
                f"base_port={ports.gcomm}",
                f"gmcast.listen_addr=tcp://127.0.0.1:{ports.gcomm}",
                f"ist.recv_addr=127.0.0.1:{ports.ist}",
                "gcache.size=32M",
                "pc.recovery=FALSE",
                *EVS_OPTIONS,
            )
        )
        cmd = [
            _which("mariadbd", "mysqld"),
            "--no-defaults",
            f"--user={pwd.getpwuid(os.getuid()).pw_name}",
            f"--datadir={self.datadir(i)}",
            f"--socket={self.socket_path(i)}",
            f"--pid-file={self.node_dir(i) / 'mysqld.pid'}",
            f"--log-error={self.error_log(i)}",
            f"--tmpdir={self.node_dir(i) / 'tmp'}",
            "--bind-address=127.0.0.1",
            f"--port={ports.sql}",
            "--skip-name-resolve",
            # Like the Debian server on 3306: utf8mb4 unless a table says otherwise.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            # Small: three of these share a 2-core CI box.
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=8M",
            "--innodb-log-buffer-size=4M",
            "--key-buffer-size=1M",
            "--aria-pagecache-buffer-size=8M",
            "--performance-schema=OFF",
            "--max-connections=300",
            # Durability comes from replication; no fsync per commit keeps tests fast.
            "--innodb-flush-log-at-trx-commit=2",
            # What Galera requires.
            "--binlog-format=ROW",
            "--default-storage-engine=InnoDB",
            "--innodb-autoinc-lock-mode=2",
            "--wsrep-on=ON",
            f"--wsrep-provider={PROVIDER}",
            f"--wsrep-cluster-name={self.cluster_name}",
            f"--wsrep-cluster-address={address}",
            f"--wsrep-node-name=node{i}",
            "--wsrep-node-address=127.0.0.1",
            f"--wsrep-node-incoming-address=127.0.0.1:{ports.sql}",
            f"--wsrep-sst-method={SST_METHOD}",
            f"--wsrep-sst-receive-address=127.0.0.1:{ports.sst}",
            f"--wsrep-provider-options={provider_options}",
        ]
        if bootstrap:
            cmd.append("--wsrep-new-cluster")
        return cmd

    def _initialised(self, i: int) -> bool:
        return (self.datadir(i) / "mysql").is_dir()

    def _launch(self, i: int, bootstrap: bool) -> None:
        """Start node ``i`` detached: own session, not our child, so it outlives us."""
        datadir = self.datadir(i)
        (self.node_dir(i) / "tmp").mkdir(parents=True, exist_ok=True)
        if bootstrap:
            if not self._initialised(i):
                self._install_db(i)
            _set_safe_to_bootstrap(datadir, True)
        else:
            # A joiner's datadir may stay empty: the rsync SST fills it.
            datadir.mkdir(parents=True, exist_ok=True)
        (datadir / "gvwstate.dat").unlink(missing_ok=True)
        for port in asdict(self._ports[i]).values():
            if not _port_free(port):
                raise ClusterError(f"node {i}: port {port} on 127.0.0.1 is already in use")
        env = dict(os.environ)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
        console = self.node_dir(i) / "console.log"
        try:
            self._log_offsets[i] = self.error_log(i).stat().st_size
        except OSError:
            self._log_offsets[i] = 0
        # `sh` forks the server into the background and exits: the server is reparented away
        # from us (no zombie to reap, no "still running" warning) and keeps the new session.
        script = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
        launcher = subprocess.run(
            ["/bin/sh", "-c", script, "sh", str(console), *self._command(i, bootstrap)],
            capture_output=True,
            start_new_session=True,
            env=env,
            cwd=self.node_dir(i),
            check=True,
            text=True,
        )
        self._pids[i] = int(launcher.stdout.strip())
        self._write_state()
        # Wait for the exec so is_alive() recognises the server by its command line.
        deadline = time.monotonic() + 5
        while not self.is_alive(i) and time.monotonic() < deadline:
            if not _pid_running(self._pids[i] or 0):
                raise ClusterError(f"node {i} exited at once{self._log_tail(i)}")
            time.sleep(0.01)

    def _install_db(self, i: int) -> None:
        datadir = self.datadir(i)
        datadir.mkdir(parents=True, exist_ok=True)
        log = self.node_dir(i) / "install-db.log"
        with log.open("wb") as out:
            done = subprocess.run(
                [
                    _which("mariadb-install-db", "mysql_install_db"),
                    "--no-defaults",
                    f"--datadir={datadir}",
                    f"--user={pwd.getpwuid(os.getuid()).pw_name}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                    # Passed through to mariadbd: create the redo log at the size nodes use.
                    "--innodb-log-file-size=8M",
                    "--innodb-buffer-pool-size=32M",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if done.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise ClusterError(f"mariadb-install-db failed for node {i}:\n{tail}")

    def _bootstrap_candidate(self) -> int:
        """The node to bootstrap a stopped cluster from: safe_to_bootstrap, else newest."""
        best, best_key = 0, (-1, -2)
        for i in range(self.nodes):
            state = _read_grastate(self.datadir(i))
            if not state:
                continue
            key = (int(state.get("safe_to_bootstrap", "0") == "1"), int(state.get("seqno", -1)))
            if key > best_key:
                best, best_key = i, key
        return best

    def _ensure_primary(self, alive: list[int]) -> None:
        """If the surviving nodes lost quorum (non-Primary), re-bootstrap the first of them."""
        status = self.status()
        if any(status[i]["wsrep_cluster_status"] == "Primary" for i in alive):
            return
        with contextlib.suppress(ClusterError):
            self.query(alive[0], "SET GLOBAL wsrep_provider_options='pc.bootstrap=YES'")
        self.wait_synced(alive, size=None)

    def _terminate(self, i: int, timeout: float) -> None:
        """SIGTERM node ``i`` and wait; SIGKILL it if it outlives ``timeout``."""
        pid = self._live_pid(i)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10.0)
        self._pids[i] = None
        self._write_state()

    def _kill_leftovers(self) -> None:
        """SIGKILL servers, SST scripts and rsync daemons still working under our root."""
        marker = str(self.root) + "/"
        names = ("mariadbd", "mysqld", "rsync", "wsrep_sst_")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                comm = (entry / "comm").read_text().strip()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if comm.startswith(names) and marker in cmdline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def _log_tail(self, i: int, lines: int = 30) -> str:
        """The end of node ``i``'s error log since its last launch, its ERROR lines first."""
        try:
            with self.error_log(i).open("rb") as log:
                log.seek(self._log_offsets.get(i, 0))
                text = log.read().decode(errors="replace").splitlines()
        except OSError:
            return f"\n(no error log at {self.error_log(i)})"
        tail = text[-lines:]
        errors = [line for line in text[:-lines] if "[ERROR]" in line][-10:]
        body = "\n".join([*errors, "...", *tail] if errors else tail)
        return f"\n--- {self.error_log(i)} ---\n{body}"


# ------------------------------------------------------------------------------ helpers


def _format_status(s: dict[str, Any]) -> str:
    return (
        f"node {s['node']}: port={s['port']} pid={s['pid']} alive={s['alive']} "
        f"size={s['wsrep_cluster_size']} state={s['wsrep_local_state_comment']} "
        f"ready={s['wsrep_ready']} status={s['wsrep_cluster_status']}"
        + (f" error={s['error']}" if s["error"] else "")
    )


def format_status(status: list[dict[str, Any]]) -> str:
    """One line per node, for humans."""
    return "\n".join(_format_status(s) for s in status)


def _which(*names: str) -> str:
    for name in names:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if path:
            return path
    raise ClusterError(f"{' or '.join(names)} not found; install the MariaDB/Galera packages")


def _write_script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _port_free(port: int) -> bool:
    """Free to listen on; SO_REUSEADDR as the servers use it, so TIME_WAIT does not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port(taken: set[int]) -> int:
    for _ in range(1000):
        port = random.randrange(*PORT_RANGE)
        if port not in taken and port not in RESERVED_PORTS and _port_free(port):
            taken.add(port)
            return port
    raise ClusterError(f"no free port on 127.0.0.1 in {PORT_RANGE}")


def _proc_state(pid: int) -> str | None:
    """The /proc state letter, None if the pid does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _pid_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may linger as one if PID 1 does not reap)."""
    return _proc_state(pid) not in (None, "Z", "X")


def _is_our_server(pid: int, datadir: Path) -> bool:
    if not _pid_running(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"--datadir={datadir}".encode() in args


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _read_grastate(datadir: Path) -> dict[str, str]:
    try:
        text = (datadir / "grastate.dat").read_text()
    except OSError:
        return {}
    state = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            state[key.strip()] = value.strip()
    return state


def _set_safe_to_bootstrap(datadir: Path, safe: bool) -> None:
    """Galera refuses --wsrep-new-cluster from a node not marked safe; we chose it already."""
    path = datadir / "grastate.dat"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return
    out = [
        f"safe_to_bootstrap: {int(safe)}" if line.startswith("safe_to_bootstrap:") else line
        for line in lines
    ]
    path.write_text("\n".join(out) + "\n")
