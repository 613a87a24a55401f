"""Databases of the scale-out suite's own on the Galera cluster, created and dropped by tests."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from galera import GaleraCluster


async def _mysql_admin(url: str, statements: list[str]) -> list[tuple[object, ...]]:
    """Run ``statements`` in autocommit on the server of ``url``; the last one's rows."""
    import aiomysql

    from mofa_persist.urls import parse_url

    sa_url = parse_url(url).sa_url
    conn = await aiomysql.connect(
        host=sa_url.host, port=sa_url.port, user=sa_url.username, autocommit=True
    )
    try:
        async with conn.cursor() as cursor:
            for statement in statements:
                await cursor.execute(statement)
            return list(await cursor.fetchall())
    finally:
        conn.close()


async def certification_failures(cluster: GaleraCluster) -> dict[str, int]:
    """The cluster's conflict counters, summed over nodes: transactions that failed
    certification at commit, and local transactions aborted by a replicated write (one
    conflict may count in both). Each such abort reached the store as a deadlock."""
    statement = (
        "SHOW GLOBAL STATUS WHERE Variable_name IN "
        "('wsrep_local_cert_failures', 'wsrep_local_bf_aborts')"
    )
    totals = {"wsrep_local_cert_failures": 0, "wsrep_local_bf_aborts": 0}
    for node in range(cluster.nodes):
        for name, value in await _mysql_admin(cluster.admin_url(node), [statement]):
            totals[str(name)] += int(str(value))
    return totals


def create_cluster_database(cluster: GaleraCluster) -> str:
    """A fresh database (created on node 0; DDL reaches every node); returns its name."""
    name = f"mofa_scale_{uuid.uuid4().hex[:12]}"
    statement = f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    asyncio.run(_mysql_admin(cluster.admin_url(0), [statement]))
    return name


def drop_cluster_database(cluster: GaleraCluster, name: str) -> None:
    for node in range(cluster.nodes):  # the first node that is up drops it everywhere
        try:
            asyncio.run(
                _mysql_admin(cluster.admin_url(node), [f"DROP DATABASE IF EXISTS `{name}`"])
            )
            return
        except Exception:  # that node is down: try the next
            continue
