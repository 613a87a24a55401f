"""Fixtures of the scale-out suite: a private 3-node Galera cluster, a private PostgreSQL
primary with a streaming replica, and the figures the suite measured.

Both run on loopback ports of their own, never on the shared servers. ``nox -s scaleout``
starts the Galera cluster with ``scripts/galera-cluster`` and passes its folder in
``MOFA_GALERA_DIR``; run alone, this suite starts (and destroys) one itself. Under ``CI=true``
a cluster that cannot start fails the run; elsewhere its tests are skipped loudly.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import figures
import pytest
from rootconf import unavailable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from databases import create_cluster_database, drop_cluster_database  # noqa: E402
from galera import ClusterError, GaleraCluster  # noqa: E402 - scripts/ is not a package
from pg_replica import PrimaryWithReplica, ServerUnavailable  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(scope="session")
def galera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GaleraCluster]:
    """A running 3-node cluster: nox's (``MOFA_GALERA_DIR``) or one of this run's own."""
    given = os.environ.get("MOFA_GALERA_DIR")
    try:
        if given:
            cluster = GaleraCluster.load(Path(given))
            owned = False
        else:
            cluster = GaleraCluster(tmp_path_factory.mktemp("galera"))
            owned = True
            cluster.start()
    except (ClusterError, OSError) as error:
        unavailable("Galera cluster", error)
        raise  # unreachable: unavailable() fails or skips
    try:
        yield cluster
    finally:
        if owned:
            cluster.destroy()


@pytest.fixture
def cluster_db(galera: GaleraCluster) -> Iterator[str]:
    """A database of this test's own on the cluster, dropped afterwards."""
    name = create_cluster_database(galera)
    try:
        yield name
    finally:
        drop_cluster_database(galera, name)


def _started_pair() -> Iterator[PrimaryWithReplica]:
    try:
        pair = PrimaryWithReplica()
    except (ServerUnavailable, OSError) as error:
        unavailable("private PostgreSQL primary + replica", error)
        raise
    try:
        pair.start()
        yield pair
    except ServerUnavailable as error:
        unavailable("private PostgreSQL primary + replica", error)
    finally:
        pair.destroy()


@pytest.fixture(scope="session")
def replica_pair() -> Iterator[PrimaryWithReplica]:
    """A private PostgreSQL primary with one streaming hot standby, shared by the suite."""
    yield from _started_pair()


@pytest.fixture
def doomed_pair() -> Iterator[PrimaryWithReplica]:
    """A primary + standby of this test's own, for a test that kills the primary."""
    yield from _started_pair()


@pytest.fixture
def replicated_db(replica_pair: PrimaryWithReplica) -> Iterator[str]:
    """A database of this test's own on the primary, already present on the replica."""
    name = f"mofa_scale_{uuid.uuid4().hex[:12]}"
    replica_pair.create_database(name)
    replica_pair.wait_replica_has_database(name)
    try:
        yield name
    finally:
        if replica_pair.replay_paused():
            replica_pair.resume_replay()
        replica_pair.psql_primary(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not figures.FIGURES:
        return
    terminalreporter.section("scale-out figures")
    for line in figures.lines():
        terminalreporter.write_line(line)
    target = os.environ.get("MOFA_SCALEOUT_FIGURES")
    if target:
        Path(target).write_text(json.dumps(figures.FIGURES, indent=2, default=str) + "\n")
