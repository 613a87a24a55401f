"""Resource hygiene: connect/close cycles and session churn leak no connections (counted on the
server) and no file descriptors (counted by the OS)."""

from __future__ import annotations

import asyncio
import gc
import os
from typing import TYPE_CHECKING

import psutil
import pytest
import tally
from common import backend_of
from rootconf import url_on_server

import mofa_persist
from mofa_persist.urls import parse_url

if TYPE_CHECKING:
    from pathlib import Path

#: Descriptors that may come and go by themselves (the event loop's self-pipe, a lazily
#: opened /dev/urandom, ...). A leak per cycle would show up as hundreds.
FD_SLACK = 3


async def server_connections(url: str) -> int | None:
    """Connections the server holds to this test's database (None for SQLite)."""
    parsed = parse_url(url)
    if parsed.kind == "postgresql":
        admin = url_on_server("postgresql", "postgres")
        query = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{parsed.database}'"
    elif parsed.kind == "mysql":
        admin = url_on_server("mysql", "mysql")
        query = (
            f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{parsed.database}'"
        )
    else:
        return None
    from sqlalchemy import text

    async with (
        await mofa_persist.connect(admin, migrate=False) as store,
        store.engine.connect() as conn,
    ):
        return int((await conn.execute(text(query))).scalar_one())


def open_fds() -> int:
    gc.collect()
    return psutil.Process(os.getpid()).num_fds()


async def _settled_connections(url: str, expected: int) -> int | None:
    """Server-side count, given a moment to notice closed sockets."""
    count = await server_connections(url)
    for _ in range(50):
        if count is None or count <= expected:
            break
        await asyncio.sleep(0.1)
        count = await server_connections(url)
    return count


async def _cycles(url: str, connects: int, sessions: int, check: str) -> None:
    async with await mofa_persist.connect(url):
        pass  # migrate, and warm up imports and caches
    base_fds = open_fds()
    base_conns = await server_connections(url)
    for _ in range(connects):
        store = await mofa_persist.connect(url, migrate=False)
        await store.close()
    async with await mofa_persist.connect(url, migrate=False, pool_size=5) as store:
        for index in range(sessions):
            session = await store.create_session(title=f"churn {index}")
            await store.append_message(session.id, "user", "hi")
            await store.delete_session(session.id)
        pool_conns = await server_connections(url)
        if pool_conns is not None:
            assert base_conns is not None
            assert pool_conns <= base_conns + 5, "the pool holds more than pool_size connections"
    conns = await _settled_connections(url, base_conns or 0)
    fds = open_fds()
    assert conns == base_conns, f"server connections {base_conns} -> {conns}"
    assert fds <= base_fds + FD_SLACK, f"open file descriptors {base_fds} -> {fds}"
    tally.add(
        check,
        backend_of(url),
        connect_close_cycles=connects,
        sessions=sessions,
        leaked_connections=(conns or 0) - (base_conns or 0),
        leaked_fds=max(0, fds - base_fds),
    )


async def test_connect_close_cycles_and_session_churn_leak_nothing(shared_url: str) -> None:
    await _cycles(shared_url, connects=1000, sessions=1000, check="hygiene")


@pytest.mark.soak
async def test_soak_10000_connect_close_cycles(shared_url: str, tmp_path: Path) -> None:
    await _cycles(shared_url, connects=10_000, sessions=10_000, check="hygiene-soak")
