"""The MySQL/MariaDB minimal floor: one INSERT per message on an autocommit aiomysql pool.

The same message row as the floor's (``min_messages``), no counter, no session check (no
foreign key), ``seq`` from process memory; reads are the floor's SELECT returning aiomysql's
tuples with no JSON decoding. Batches and turns are one transaction on a connection of the same
pool (BEGIN ... COMMIT), since autocommit is the pool's mode.
"""

from __future__ import annotations

import uuid
import warnings
from typing import TYPE_CHECKING, Any

import aiomysql

from mofa_persist.ids import uuid7

from .base import CONTENT, METADATA_JSON, STATE_JSON, Impl, LocalSeq, Rows, now, seed_times

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from datetime import datetime

    from ..servers import Target

TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
DDL = [
    f"""CREATE TABLE IF NOT EXISTS min_sessions (
        id CHAR(32) PRIMARY KEY, user_id CHAR(32), metadata JSON,
        last_seq INT NOT NULL DEFAULT 0, state_version INT NOT NULL DEFAULT 0,
        created_at DATETIME(6) NOT NULL, updated_at DATETIME(6) NOT NULL,
        INDEX ix_min_sessions_user (user_id, updated_at, id)) {TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS min_messages (
        id CHAR(32) PRIMARY KEY, session_id CHAR(32) NOT NULL, seq INT NOT NULL,
        role VARCHAR(20) NOT NULL, content LONGTEXT NOT NULL, metadata JSON NOT NULL,
        created_at DATETIME(6) NOT NULL, INDEX ix_min_messages_seq (session_id, seq)) {TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS min_state (
        id CHAR(32) PRIMARY KEY, session_id CHAR(32) NOT NULL, version INT NOT NULL,
        state JSON NOT NULL, created_at DATETIME(6) NOT NULL) {TABLE}""",
]
INSERT_MESSAGE = (
    "INSERT INTO min_messages (id, session_id, seq, role, content, metadata, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
INSERT_STATE = (
    "INSERT INTO min_state (id, session_id, version, state, created_at) VALUES (%s, %s, %s, %s, %s)"
)
COLUMNS = "id, session_id, seq, role, content, metadata, created_at"
NEWEST = f"SELECT {COLUMNS} FROM min_messages WHERE session_id = %s ORDER BY seq DESC LIMIT %s"
LIST = (
    "SELECT id, user_id, metadata, last_seq, state_version, created_at, updated_at "
    "FROM min_sessions WHERE user_id = %s ORDER BY updated_at DESC, id DESC LIMIT %s"
)
ALL = f"SELECT {COLUMNS} FROM min_messages WHERE session_id = %s ORDER BY seq, created_at"
NEW_SESSION = (
    "INSERT INTO min_sessions (id, user_id, metadata, created_at, updated_at) "
    "VALUES (%s, %s, %s, %s, %s)"
)


def _stamp() -> datetime:
    return now().replace(tzinfo=None)  # DATETIME(6) holds the UTC wall clock


class MySqlMinimal(Impl):
    name = "minimal"

    def __init__(self, target: Target, pool_size: int = 20) -> None:
        self.target = target
        self.pool_size = pool_size
        self.seq = LocalSeq()
        self._pool: aiomysql.Pool | None = None

    @property
    def pool(self) -> aiomysql.Pool:
        assert self._pool is not None, "open() first"
        return self._pool

    async def open(self) -> None:
        t = self.target
        self._pool = await aiomysql.create_pool(
            host=t.host,
            port=t.port,
            user=t.user,
            password=t.password or "",
            db=t.database,
            charset="utf8mb4",
            autocommit=True,
            minsize=1,
            maxsize=self.pool_size,
        )
        with warnings.catch_warnings():  # "already exists", from the W5 child processes
            warnings.simplefilter("ignore")
            for statement in DDL:
                await self._run(statement, ())

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()

    async def _run(self, sql: str, args: tuple[Any, ...]) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, args)

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

    async def _transaction(self, sql: str, rows: list[tuple[Any, ...]], extra: Any = None) -> None:
        async with self.pool.acquire() as conn:
            await conn.begin()
            try:
                async with conn.cursor() as cur:
                    await cur.executemany(sql, rows)
                    if extra is not None:
                        await cur.execute(*extra)
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise

    async def reset(self) -> None:
        self.seq.clear()
        for table in ("min_state", "min_messages", "min_sessions"):
            await self._run(f"DELETE FROM {table}", ())

    async def create_session(self, user_id: uuid.UUID) -> uuid.UUID:
        sid, stamp = uuid7(), _stamp()
        await self._run(NEW_SESSION, (sid.hex, user_id.hex, "{}", stamp, stamp))
        return sid

    async def append(self, sid: uuid.UUID, role: str, content: str) -> int:
        seq = self.seq.next(sid)
        row = (uuid7().hex, sid.hex, seq, role, content, METADATA_JSON, _stamp())
        await self._run(INSERT_MESSAGE, row)
        return seq

    async def turn(self, sid: uuid.UUID, user: str, assistant: str) -> None:
        first, stamp, key = self.seq.next(sid, 2), _stamp(), sid.hex
        rows = [
            (uuid7().hex, key, first, "user", user, METADATA_JSON, stamp),
            (uuid7().hex, key, first + 1, "assistant", assistant, METADATA_JSON, stamp),
        ]
        state = (INSERT_STATE, (uuid7().hex, key, first, STATE_JSON, stamp))
        await self._transaction(INSERT_MESSAGE, rows, state)

    async def append_batch(self, sid: uuid.UUID, items: Sequence[tuple[str, str]]) -> None:
        first, stamp, key = self.seq.next(sid, len(items)), _stamp(), sid.hex
        rows = [
            (uuid7().hex, key, first + i, role, text, METADATA_JSON, stamp)
            for i, (role, text) in enumerate(items)
        ]
        await self._transaction(INSERT_MESSAGE, rows)

    async def newest(self, sid: uuid.UUID, count: int) -> Rows:
        return [(r[2], r[4]) for r in reversed(await self._fetch(NEWEST, (sid.hex, count)))]

    async def list_sessions(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        return [uuid.UUID(hex=r[0]) for r in await self._fetch(LIST, (user_id.hex, limit))]

    async def export(self, sid: uuid.UUID, page: int) -> AsyncIterator[tuple[int, str]]:
        async with self.pool.acquire() as conn, conn.cursor(aiomysql.SSCursor) as cur:
            await cur.execute(ALL, (sid.hex,))
            while rows := await cur.fetchmany(page):
                for r in rows:
                    yield r[2], r[4]

    async def read_all(self, sid: uuid.UUID) -> Rows:
        return [(r[2], r[4]) for r in await self._fetch(ALL, (sid.hex,))]

    async def seed_messages(self, sid: uuid.UUID, count: int) -> None:
        stamps = [t.replace(tzinfo=None) for t in seed_times(count)]
        first, key = self.seq.next(sid, count), sid.hex
        for start in range(0, count, 2_000):
            rows = [
                (uuid7().hex, key, first + i, "user", CONTENT, METADATA_JSON, stamps[i])
                for i in range(start, min(count, start + 2_000))
            ]
            await self._transaction(INSERT_MESSAGE, rows)

    async def seed_sessions(self, user_ids: Sequence[uuid.UUID]) -> None:
        stamps = [t.replace(tzinfo=None) for t in seed_times(len(user_ids))]
        rows = [(uuid7().hex, u.hex, "{}", t, t) for u, t in zip(user_ids, stamps, strict=True)]
        for start in range(0, len(rows), 5_000):
            await self._transaction(NEW_SESSION, rows[start : start + 5_000])
