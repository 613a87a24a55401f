"""Reads end their transaction: an idle pooled connection holds no table lock.

The lean reads run without BEGIN/COMMIT; on MySQL the connection is not in autocommit mode,
so a SELECT opens a transaction whose metadata locks stay until it ends (the read's COMMIT
travels with the SELECT, see ``sql.MySqlLane.read``). A lock left behind would make the next
migration or ``LOCK TABLES`` wait on an idle connection.
"""

from __future__ import annotations

import uuid

import pytest

import mofa_persist
from mofa_persist.errors import NotFoundError
from mofa_persist.urls import parse_url


async def _lock_tables_now(url: str, tables: list[str]) -> None:
    """Take an exclusive lock on ``tables`` from another connection, waiting at most 2 s."""
    parts = parse_url(url).sa_url
    if parse_url(url).kind == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(
            host=parts.host,
            port=parts.port or 5432,
            user=parts.username,
            password=parts.password,
            database=parts.database,
            timeout=10,
        )
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '2s'")
                await conn.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
        finally:
            await conn.close()
        return
    import aiomysql

    mconn = await aiomysql.connect(
        host=parts.host or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        db=parts.database,
        connect_timeout=10,
        autocommit=True,
    )
    try:
        async with mconn.cursor() as cursor:
            await cursor.execute("SET SESSION lock_wait_timeout = 2")
            await cursor.execute("LOCK TABLES " + ", ".join(f"{t} WRITE" for t in tables))
            await cursor.execute("UNLOCK TABLES")
    finally:
        mconn.close()


async def test_reads_leave_no_transaction_open(server_url: str) -> None:
    # One pooled connection: every read below runs on it, and it stays idle in the pool.
    async with await mofa_persist.connect(server_url, pool_size=1, max_overflow=0) as store:
        user = uuid.uuid4()
        session = await store.create_session(user_id=user)
        await store.append_messages(session.id, [{"role": "user", "content": "hi"}])
        empty = await store.create_session(user_id=user)
        tables = ["sessions", "messages"]
        await _lock_tables_now(server_url, tables)

        assert (await store.get_session(session.id)).id == session.id
        await _lock_tables_now(server_url, tables)
        page = await store.list_sessions(user_id=user, limit=1)
        assert len(page.items) == 1 and page.next_cursor is not None
        await _lock_tables_now(server_url, tables)
        assert [m.content for m in await store.get_messages(session.id, limit=5)] == ["hi"]
        await _lock_tables_now(server_url, tables)
        # No rows: a second SELECT tells an empty session from a missing one.
        assert await store.get_messages(empty.id, limit=5) == []
        await _lock_tables_now(server_url, tables)
        with pytest.raises(NotFoundError):
            await store.get_session(uuid.uuid4())
        await _lock_tables_now(server_url, tables)
        with pytest.raises(NotFoundError):
            await store.get_messages(uuid.uuid4(), limit=5)
        await _lock_tables_now(server_url, tables)
        # The connection is still usable after the reads and the locks.
        assert (await store.get_session(empty.id)).id == empty.id
