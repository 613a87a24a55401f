"""The PostgreSQL minimal floor: one autocommit asyncpg INSERT per message, nothing else.

What a user compares with first: the same message row (``min_messages``, the floor's columns)
written with one statement and no transaction block, no session counter and no session check
(no foreign key); ``seq`` comes from process memory (:class:`~bench.impls.base.LocalSeq`).
Reads are the same SELECT as the floor's, returning asyncpg's records with no JSON decoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mofa_persist.ids import uuid7

from .base import CONTENT, METADATA_JSON, STATE_JSON, Impl, LocalSeq, Rows, now, seed_times
from .floor_pg import open_pool

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator, Sequence

    import asyncpg

    from ..servers import Target

DDL = [
    """CREATE TABLE IF NOT EXISTS min_sessions (
        id uuid PRIMARY KEY, user_id uuid, metadata jsonb,
        last_seq integer NOT NULL DEFAULT 0, state_version integer NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS ix_min_sessions_user ON min_sessions (user_id, updated_at, id)",
    """CREATE TABLE IF NOT EXISTS min_messages (
        id uuid PRIMARY KEY, session_id uuid NOT NULL, seq integer NOT NULL,
        role varchar(20) NOT NULL, content text NOT NULL, metadata jsonb NOT NULL,
        created_at timestamptz NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS ix_min_messages_seq ON min_messages (session_id, seq)",
    """CREATE TABLE IF NOT EXISTS min_state (
        id uuid PRIMARY KEY, session_id uuid NOT NULL, version integer NOT NULL,
        state jsonb NOT NULL, created_at timestamptz NOT NULL)""",
]
INSERT_MESSAGE = (
    "INSERT INTO min_messages (id, session_id, seq, role, content, metadata, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
INSERT_STATE = (
    "INSERT INTO min_state (id, session_id, version, state, created_at) VALUES ($1, $2, $3, $4, $5)"
)
COLUMNS = "id, session_id, seq, role, content, metadata, created_at"
NEWEST = f"SELECT {COLUMNS} FROM min_messages WHERE session_id = $1 ORDER BY seq DESC LIMIT $2"
LIST = (
    "SELECT id, user_id, metadata, last_seq, state_version, created_at, updated_at "
    "FROM min_sessions WHERE user_id = $1 ORDER BY updated_at DESC, id DESC LIMIT $2"
)
ALL = f"SELECT {COLUMNS} FROM min_messages WHERE session_id = $1 ORDER BY seq, created_at"
NEW_SESSION = (
    "INSERT INTO min_sessions (id, user_id, metadata, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, $4)"
)


class PostgresMinimal(Impl):
    name = "minimal"

    def __init__(self, target: Target, pool_size: int = 20) -> None:
        self.target = target
        self.pool_size = pool_size
        self.seq = LocalSeq()
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
        self.seq.clear()
        await self.pool.execute("TRUNCATE min_state, min_messages, min_sessions")

    async def create_session(self, user_id: uuid.UUID) -> uuid.UUID:
        sid = uuid7()
        await self.pool.execute(NEW_SESSION, sid, user_id, "{}", now())
        return sid

    async def append(self, sid: uuid.UUID, role: str, content: str) -> int:
        seq = self.seq.next(sid)
        await self.pool.execute(
            INSERT_MESSAGE, uuid7(), sid, seq, role, content, METADATA_JSON, now()
        )
        return seq

    async def turn(self, sid: uuid.UUID, user: str, assistant: str) -> None:
        first, stamp = self.seq.next(sid, 2), now()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                INSERT_MESSAGE,
                [
                    (uuid7(), sid, first, "user", user, METADATA_JSON, stamp),
                    (uuid7(), sid, first + 1, "assistant", assistant, METADATA_JSON, stamp),
                ],
            )
            await conn.execute(INSERT_STATE, uuid7(), sid, first, STATE_JSON, stamp)

    async def append_batch(self, sid: uuid.UUID, items: Sequence[tuple[str, str]]) -> None:
        first, stamp = self.seq.next(sid, len(items)), now()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                INSERT_MESSAGE,
                [
                    (uuid7(), sid, first + i, role, text, METADATA_JSON, stamp)
                    for i, (role, text) in enumerate(items)
                ],
            )

    async def newest(self, sid: uuid.UUID, count: int) -> Rows:
        records = await self.pool.fetch(NEWEST, sid, count)
        return [(r[2], r[4]) for r in reversed(records)]

    async def list_sessions(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        return [r[0] for r in await self.pool.fetch(LIST, user_id, limit)]

    async def export(self, sid: uuid.UUID, page: int) -> AsyncIterator[tuple[int, str]]:
        async with self.pool.acquire() as conn, conn.transaction():
            async for r in conn.cursor(ALL, sid, prefetch=page):
                yield r[2], r[4]

    async def read_all(self, sid: uuid.UUID) -> Rows:
        return [(r[2], r[4]) for r in await self.pool.fetch(ALL, sid)]

    async def seed_messages(self, sid: uuid.UUID, count: int) -> None:
        stamps = seed_times(count)
        first = self.seq.next(sid, count)
        async with self.pool.acquire() as conn:
            await conn.copy_records_to_table(
                "min_messages",
                columns=["id", "session_id", "seq", "role", "content", "metadata", "created_at"],
                records=[
                    (uuid7(), sid, first + i, "user", CONTENT, METADATA_JSON, stamps[i])
                    for i in range(count)
                ],
            )

    async def seed_sessions(self, user_ids: Sequence[uuid.UUID]) -> None:
        stamps = seed_times(len(user_ids))
        async with self.pool.acquire() as conn:
            await conn.copy_records_to_table(
                "min_sessions",
                columns=["id", "user_id", "metadata", "created_at", "updated_at"],
                records=[(uuid7(), u, "{}", t, t) for u, t in zip(user_ids, stamps, strict=True)],
            )
