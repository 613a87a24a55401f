"""Databases of the scale-out suite's own on the Galera cluster, created and dropped by tests,
and the cluster's conflict counters; all through ``GaleraCluster.query`` (the mariadb client)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from galera import ClusterError

if TYPE_CHECKING:
    from galera import GaleraCluster


def certification_failures(cluster: GaleraCluster) -> dict[str, int]:
    """The cluster's conflict counters, summed over nodes: transactions that failed
    certification at commit, and local transactions aborted by a replicated write (one
    conflict may count in both). Each such abort reached the store as a deadlock."""
    statement = (
        "SHOW GLOBAL STATUS WHERE Variable_name IN "
        "('wsrep_local_cert_failures', 'wsrep_local_bf_aborts')"
    )
    totals = {"wsrep_local_cert_failures": 0, "wsrep_local_bf_aborts": 0}
    for node in range(cluster.nodes):
        for name, value in cluster.query(node, statement):
            totals[name] += int(value)
    return totals


def create_cluster_database(cluster: GaleraCluster) -> str:
    """A fresh database (created on node 0; DDL reaches every node); returns its name."""
    name = f"mofa_scale_{uuid.uuid4().hex[:12]}"
    cluster.query(0, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    return name


def drop_cluster_database(cluster: GaleraCluster, name: str) -> None:
    for node in range(cluster.nodes):  # the first node that is up drops it everywhere
        try:
            cluster.query(node, f"DROP DATABASE IF EXISTS `{name}`")
            return
        except ClusterError:  # that node is down: try the next
            continue
