"""Fixtures of the failover suite: a private Patroni cluster per test, and the figures.

``nox -s failover`` installs Patroni and etcd first (scripts/pg_ha_private.py). Each test that
kills a node gets a cluster of its own (etcd + 2 Patroni nodes on free loopback ports, in a
temporary folder), destroyed afterwards. Under ``CI=true`` a cluster that cannot start fails
the run; elsewhere the test is skipped loudly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from rootconf import unavailable

# The scale-out suite's helpers: free ports, running servers as postgres, the figures table.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scaleout"))

import figures
from patroni_cluster import ClusterUnavailable, PatroniCluster

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def ha_cluster() -> Iterator[PatroniCluster]:
    """etcd and two Patroni nodes: a primary and its synchronous standby, this test's own."""
    try:
        cluster = PatroniCluster()
    except (ClusterUnavailable, OSError) as error:
        unavailable("private Patroni cluster", error)
        raise  # unreachable: unavailable() fails or skips
    try:
        try:
            cluster.start()
        except ClusterUnavailable as error:
            unavailable("private Patroni cluster", error)
        yield cluster
    finally:
        cluster.destroy()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not figures.FIGURES:
        return
    terminalreporter.section("failover figures")
    for line in figures.lines():
        terminalreporter.write_line(line)
    target = os.environ.get("MOFA_FAILOVER_FIGURES")
    if target:
        Path(target).write_text(json.dumps(figures.FIGURES, indent=2, default=str) + "\n")
