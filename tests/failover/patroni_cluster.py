"""A private 2-node PostgreSQL 15 cluster managed by Patroni, with a 1-member etcd as its DCS.

Why Patroni + etcd rather than pg_auto_failover (both are Debian packages that install here):
Patroni's failover rule is one leader key with a TTL in etcd, and with ``synchronous_mode``
only the node named in the DCS as the synchronous standby may take it, so a promotion can
never pick a node that misses an acknowledged commit. pg_auto_failover needs a third
PostgreSQL (its monitor) and a longer chain of state transitions to reach the same place.

Everything lives in one temporary folder: etcd's data, and per node Patroni's YAML, log and
PostgreSQL data directory. Every listener is on 127.0.0.1 on a free port (never 5432 or
3306). PostgreSQL refuses to run as root, so when we are root Patroni (which starts the
postmaster) runs as the ``postgres`` user. ``kill_node`` is a node loss: Patroni and every
PostgreSQL process of that node get SIGKILL together. ``destroy`` ends only what this cluster
started and deletes the folder.

Stdlib only (plus tests/processes.py and tests/scaleout/pg_replica.py), so it imports without
the package under test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from pg_replica import PG_BIN, _clean_env, _postgres_ids, free_port  # tests/scaleout
from processes import signal_tree  # tests/processes.py

PATRONI = "/usr/bin/patroni"
ETCD = "/usr/bin/etcd"
#: Leader key TTL, HA loop period and DCS/PostgreSQL retry budget, in seconds. Patroni's
#: defaults (30/10/10) are tuned for real networks; the rule ttl >= loop_wait + 2 *
#: retry_timeout still holds here, so a healthy leader never loses its key by accident.
TTL_S, LOOP_WAIT_S, RETRY_TIMEOUT_S = 10, 1, 4


class ClusterUnavailable(RuntimeError):
    """Patroni or etcd is missing, or the cluster would not start or elect a leader."""


def _yaml_scalar(value: object) -> str:
    return json.dumps(value)  # JSON scalars are valid YAML


class PatroniNode:
    """One Patroni agent and the PostgreSQL it manages, in a folder of its own."""

    def __init__(self, cluster: PatroniCluster, index: int, avoid: set[int]) -> None:
        self.name = f"node{index}"
        self.folder = cluster.root / self.name
        self.folder.mkdir()
        self.data = self.folder / "data"
        self.log = self.folder / "patroni.log"
        self.port = free_port(avoid)
        avoid.add(self.port)
        self.api_port = free_port(avoid)
        avoid.add(self.api_port)
        self.process: subprocess.Popen[bytes] | None = None
        self.killed = False
        self.config = self.folder / "patroni.yml"
        self.config.write_text(self._config(cluster))

    def _config(self, cluster: PatroniCluster) -> str:
        q = _yaml_scalar
        return f"""scope: {q(cluster.scope)}
namespace: /mofa/
name: {q(self.name)}
log:
  level: INFO
restapi:
  listen: {q(f"127.0.0.1:{self.api_port}")}
  connect_address: {q(f"127.0.0.1:{self.api_port}")}
etcd3:
  hosts: {q(f"127.0.0.1:{cluster.etcd_port}")}
bootstrap:
  dcs:
    ttl: {TTL_S}
    loop_wait: {LOOP_WAIT_S}
    retry_timeout: {RETRY_TIMEOUT_S}
    maximum_lag_on_failover: 1048576
    # A commit is acknowledged once the synchronous standby has flushed it, and only that
    # standby may be promoted. Not strict: a primary left alone keeps taking writes.
    synchronous_mode: true
    synchronous_mode_strict: false
    postgresql:
      use_pg_rewind: false
      use_slots: true
      parameters:
        max_connections: 100
        shared_buffers: 16MB
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_receiver_status_interval: 1s
  initdb:
    - encoding: UTF8
    - no-sync
  pg_hba:
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: {q(f"127.0.0.1:{self.port}")}
  connect_address: {q(f"127.0.0.1:{self.port}")}
  data_dir: {q(str(self.data))}
  bin_dir: {q(str(PG_BIN))}
  pgpass: {q(str(self.folder / "pgpass"))}
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
  parameters:
    # TCP only: a Unix socket path under a long TMPDIR can exceed the 107-byte limit.
    unix_socket_directories: ""
  basebackup:
    - checkpoint: fast
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
"""

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def api(self, path: str, timeout: float = 1.0) -> tuple[int, dict[str, object]]:
        """GET Patroni's REST API: (HTTP status, JSON body); (0, {}) when it does not answer."""
        request = f"http://127.0.0.1:{self.api_port}{path}"
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as error:
            with contextlib.suppress(ValueError):
                return error.code, json.loads(error.read() or b"{}")
            return error.code, {}
        except (OSError, ValueError):
            return 0, {}

    def is_primary(self) -> bool:
        """Patroni says this node holds the leader key and runs a writable primary."""
        return self.api("/primary")[0] == 200

    def is_sync_standby(self) -> bool:
        return self.api("/sync")[0] == 200

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, IndexError, ValueError):
            return None

    def start(self, ids: tuple[int, int] | None) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [PATRONI, str(self.config)],
                stdout=log,
                stderr=log,
                cwd=self.folder,
                env=_clean_env(),
                start_new_session=True,  # a Ctrl-C at the test run must not reach it
                user=None if ids is None else ids[0],
                group=None if ids is None else ids[1],
                extra_groups=None if ids is None else [],
            )

    def kill(self) -> None:
        """A node loss: Patroni frozen first (so it restarts nothing), then the postmaster and
        every child of it, then Patroni itself, all with SIGKILL."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGSTOP)
        postmaster = self.postmaster_pid()
        if postmaster is not None and _runs_on(postmaster, self.data):
            signal_tree(postmaster, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self.killed = True
        deadline = time.monotonic() + 10
        while postmaster is not None and Path(f"/proc/{postmaster}").exists():
            if _zombie(postmaster) or time.monotonic() > deadline:
                break
            time.sleep(0.01)

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Patroni's own shutdown (it stops its PostgreSQL fast), then SIGKILL whatever is left."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        postmaster = self.postmaster_pid()
        if postmaster is not None and _runs_on(postmaster, self.data):
            signal_tree(postmaster, signal.SIGKILL)
        self._drop_shared_memory()

    def _drop_shared_memory(self) -> None:
        """A killed postmaster leaves its SysV segment (id on line 7 of postmaster.pid)."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            shmid = int((self.data / "postmaster.pid").read_text().splitlines()[6].split()[1])
            if shutil.which("ipcrm") is not None:
                subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True, check=False)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rfind(")") + 2 :].startswith("Z")
    return True


def _runs_on(pid: int, data: Path) -> bool:
    """The pid is still a postmaster of ``data`` (not a process that got the number since:
    the shared server's backends come and go all the time)."""
    with contextlib.suppress(OSError):
        return str(data) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    return False


class PatroniCluster:
    """etcd plus two Patroni nodes; ``start()`` returns once one is primary and the other is
    its streaming synchronous standby."""

    def __init__(self, nodes: int = 2) -> None:
        for tool in (PATRONI, ETCD, str(PG_BIN / "postgres"), str(PG_BIN / "initdb")):
            if not Path(tool).is_file():
                raise ClusterUnavailable(
                    f"{tool} is missing (scripts/pg_ha_private.py installs it)"
                )
        self.ids = _postgres_ids()
        self.root = Path(tempfile.mkdtemp(prefix="mofa-patroni-"))
        self.scope = f"mofa-{uuid.uuid4().hex[:8]}"
        used: set[int] = set()
        self.etcd_port = free_port(used)
        used.add(self.etcd_port)
        self.etcd_peer_port = free_port(used)
        used.add(self.etcd_peer_port)
        self.etcd: subprocess.Popen[bytes] | None = None
        self.nodes = [PatroniNode(self, index, used) for index in range(nodes)]
        if self.ids is not None:
            for path in (self.root, *self.root.rglob("*")):
                os.chown(path, *self.ids)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        self._start_etcd(deadline)
        first, *others = self.nodes
        first.start(self.ids)
        self._wait(lambda: first.is_primary(), deadline, f"{first.name} never became primary")
        for node in others:
            node.start(self.ids)
        self._wait(
            lambda: all(node.is_sync_standby() for node in others),
            deadline,
            "the standby never became synchronous",
        )

    def _start_etcd(self, deadline: float) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        with (self.root / "etcd.log").open("ab") as log:
            self.etcd = subprocess.Popen(
                [
                    ETCD,
                    *("--name", "mofa-etcd", "--data-dir", str(self.root / "etcd")),
                    *("--listen-client-urls", client, "--advertise-client-urls", client),
                    *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
                    *("--initial-cluster", f"mofa-etcd={peer}", "--initial-cluster-state", "new"),
                    *("--initial-cluster-token", self.scope),
                ],
                stdout=log,
                stderr=log,
                cwd=self.root,
                env=_clean_env(),
                start_new_session=True,
            )

        def healthy() -> bool:
            if self.etcd is not None and self.etcd.poll() is not None:
                raise ClusterUnavailable(f"etcd exited: {self._tail('etcd.log')}")
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(f"{client}/health", timeout=1) as answer,
            ):
                return bool(json.loads(answer.read()).get("health") == "true")
            return False

        self._wait(healthy, deadline, "etcd never became healthy")

    def _wait(self, condition: object, deadline: float, what: str) -> None:
        assert callable(condition)
        while not condition():
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise ClusterUnavailable(f"{node.name}'s Patroni exited:\n{node.log_tail()}")
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name} ---\n{n.log_tail()}" for n in self.nodes)
                raise ClusterUnavailable(f"{what}\n{logs}")
            time.sleep(0.1)

    def _tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.root / name).read_bytes()[-2000:].decode(errors="replace")
        return ""

    def destroy(self) -> None:
        """Stop both nodes and etcd (only the processes started here), delete the folder."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(15)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- roles ---------------------------------------------------------------------------

    def primary(self) -> PatroniNode:
        """The node Patroni reports as primary (the cluster must have one)."""
        for node in self.nodes:
            if not node.killed and node.is_primary():
                return node
        raise ClusterUnavailable("no node is primary")

    def others(self, node: PatroniNode) -> list[PatroniNode]:
        return [other for other in self.nodes if other is not node]

    def multi_host_url(self, database: str) -> str:
        """``postgresql://postgres@h1:p1,h2:p2/db``: every node, in node order."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"postgresql://postgres@{hosts}/{database}"
