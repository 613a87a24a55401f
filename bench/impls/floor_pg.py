"""The PostgreSQL floor: asyncpg with hand-written SQL on ``bench_*`` tables.

What a careful programmer writes with no library: a pool, statements asyncpg prepares and
caches itself, an explicit transaction per write (UPDATE ... RETURNING to take the session's row
lock and its next seq, then INSERT), single-statement reads with no transaction, ``executemany``
for batches and a server-side cursor for export.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import asyncpg

from mofa_persist.ids import uuid7

from .base import CONTENT, METADATA, STATE, Impl, Rows, now, seed_times

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator, Sequence

    from ..servers import Target

DDL = [
    """CREATE TABLE IF NOT EXISTS bench_sessions (
        id uuid PRIMARY KEY, user_id uuid, metadata jsonb,
        last_seq integer NOT NULL DEFAULT 0, state_version integer NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS ix_bench_sessions_user ON bench_sessions (user_id, updated_at, id)",
    """CREATE TABLE IF NOT EXISTS bench_messages (
        id uuid PRIMARY KEY,
        session_id uuid NOT NULL REFERENCES bench_sessions (id) ON DELETE CASCADE,
        seq integer NOT NULL, role varchar(20) NOT NULL, content text NOT NULL,
        metadata jsonb NOT NULL, created_at timestamptz NOT NULL, UNIQUE (session_id, seq))""",
    """CREATE TABLE IF NOT EXISTS bench_state (
        id uuid PRIMARY KEY,
        session_id uuid NOT NULL REFERENCES bench_sessions (id) ON DELETE CASCADE,
        version integer NOT NULL, state jsonb NOT NULL, created_at timestamptz NOT NULL,
        UNIQUE (session_id, version))""",
]

BUMP = (
    "UPDATE bench_sessions SET last_seq = last_seq + $2, updated_at = $3 WHERE id = $1 "
    "RETURNING last_seq"
)
BUMP_STATE = (
    "UPDATE bench_sessions SET last_seq = last_seq + $2, state_version = state_version + 1, "
    "updated_at = $3 WHERE id = $1 RETURNING last_seq, state_version"
)
INSERT_MESSAGE = (
    "INSERT INTO bench_messages (id, session_id, seq, role, content, metadata, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
INSERT_STATE = (
    "INSERT INTO bench_state (id, session_id, version, state, created_at) "
    "VALUES ($1, $2, $3, $4, $5)"
)
COLUMNS = "id, session_id, seq, role, content, metadata, created_at"
NEWEST = f"SELECT {COLUMNS} FROM bench_messages WHERE session_id = $1 ORDER BY seq DESC LIMIT $2"
LIST = (
    "SELECT id, user_id, metadata, last_seq, state_version, created_at, updated_at "
    "FROM bench_sessions WHERE user_id = $1 ORDER BY updated_at DESC, id DESC LIMIT $2"
)
ALL = f"SELECT {COLUMNS} FROM bench_messages WHERE session_id = $1 ORDER BY seq"


async def open_pool(target: Target, size: int, ddl: Sequence[str]) -> asyncpg.Pool:
    """An asyncpg pool on ``target`` (the minimal floor's too), with ``ddl`` run first."""
    pool = await asyncpg.create_pool(
        host=target.host,
        port=target.port,
        user=target.user,
        password=target.password or None,
        database=target.database,
        min_size=1,
        max_size=size,
    )
    async with pool.acquire() as conn:
        for statement in ddl:
            await conn.execute(statement)
    return pool


class PostgresFloor(Impl):
    name = "floor"

    def __init__(self, target: Target, pool_size: int = 20) -> None:
        self.target = target
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "open() first"
        return self._pool

    async def open(self) -> None:
        self._pool = await open_pool(self.target, self.pool_size, DDL)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def reset(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("TRUNCATE bench_state, bench_messages, bench_sessions")

    async def create_session(self, user_id: uuid.UUID) -> uuid.UUID:
        sid = uuid7()
        stamp = now()
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO bench_sessions (id, user_id, metadata, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $4)",
                sid,
                user_id,
                "{}",
                stamp,
            )
        return sid

    async def append(self, sid: uuid.UUID, role: str, content: str) -> int:
        stamp = now()
        meta = json.dumps(METADATA)
        async with self.pool.acquire() as conn, conn.transaction():
            seq: int = await conn.fetchval(BUMP, sid, 1, stamp)
            await conn.execute(INSERT_MESSAGE, uuid7(), sid, seq, role, content, meta, stamp)
        return seq

    async def turn(self, sid: uuid.UUID, user: str, assistant: str) -> None:
        stamp = now()
        meta = json.dumps(METADATA)
        async with self.pool.acquire() as conn, conn.transaction():
            last, version = await conn.fetchrow(BUMP_STATE, sid, 2, stamp)
            await conn.executemany(
                INSERT_MESSAGE,
                [
                    (uuid7(), sid, last - 1, "user", user, meta, stamp),
                    (uuid7(), sid, last, "assistant", assistant, meta, stamp),
                ],
            )
            await conn.execute(INSERT_STATE, uuid7(), sid, version, json.dumps(STATE), stamp)

    async def append_batch(self, sid: uuid.UUID, items: Sequence[tuple[str, str]]) -> None:
        stamp = now()
        async with self.pool.acquire() as conn, conn.transaction():
            last = await conn.fetchval(BUMP, sid, len(items), stamp)
            first = last - len(items) + 1
            await conn.executemany(
                INSERT_MESSAGE,
                [
                    (uuid7(), sid, first + i, role, text, json.dumps(METADATA), stamp)
                    for i, (role, text) in enumerate(items)
                ],
            )

    async def newest(self, sid: uuid.UUID, count: int) -> Rows:
        async with self.pool.acquire() as conn:
            records = await conn.fetch(NEWEST, sid, count)
        return [(r["seq"], r["content"]) for r in reversed(records) if _decoded(r)]

    async def list_sessions(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        async with self.pool.acquire() as conn:
            records = await conn.fetch(LIST, user_id, limit)
        return [r["id"] for r in records if _decoded(r)]

    async def export(self, sid: uuid.UUID, page: int) -> AsyncIterator[tuple[int, str]]:
        async with self.pool.acquire() as conn, conn.transaction():
            async for r in conn.cursor(ALL, sid, prefetch=page):
                if _decoded(r):
                    yield r["seq"], r["content"]

    async def read_all(self, sid: uuid.UUID) -> Rows:
        async with self.pool.acquire() as conn:
            return [(r["seq"], r["content"]) for r in await conn.fetch(ALL, sid)]

    async def seed_messages(self, sid: uuid.UUID, count: int) -> None:
        stamps = seed_times(count)
        meta = json.dumps(METADATA)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table(
                "bench_messages",
                columns=["id", "session_id", "seq", "role", "content", "metadata", "created_at"],
                records=[
                    (uuid7(), sid, i + 1, "user", CONTENT, meta, stamps[i]) for i in range(count)
                ],
            )
            await conn.execute("UPDATE bench_sessions SET last_seq = $2 WHERE id = $1", sid, count)

    async def seed_sessions(self, user_ids: Sequence[uuid.UUID]) -> None:
        stamps = seed_times(len(user_ids))
        async with self.pool.acquire() as conn:
            await conn.copy_records_to_table(
                "bench_sessions",
                columns=["id", "user_id", "metadata", "created_at", "updated_at"],
                records=[(uuid7(), u, "{}", t, t) for u, t in zip(user_ids, stamps, strict=True)],
            )


def _decoded(record: Any) -> bool:
    """Decode the JSON column as the library does (asyncpg hands jsonb over as text)."""
    json.loads(record["metadata"])
    return True
