"""The MySQL/MariaDB floor: aiomysql with hand-written SQL on ``bench_*`` tables.

Writes run on non-autocommit connections (the first statement opens the transaction, no BEGIN
round trip) at READ COMMITTED like the library; MariaDB has no UPDATE ... RETURNING, so the
bumped counter is read back with a SELECT in the same transaction. Reads use a second pool in
autocommit mode: one round trip per query, and no open transaction left behind.
"""

from __future__ import annotations

import json
import uuid
import warnings
from typing import TYPE_CHECKING, Any

import aiomysql

from mofa_persist.ids import uuid7

from .base import CONTENT, METADATA, STATE, Impl, Rows, now, seed_times

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from datetime import datetime

    from ..servers import Target

TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
DDL = [
    f"""CREATE TABLE IF NOT EXISTS bench_sessions (
        id CHAR(32) PRIMARY KEY, user_id CHAR(32), metadata JSON,
        last_seq INT NOT NULL DEFAULT 0, state_version INT NOT NULL DEFAULT 0,
        created_at DATETIME(6) NOT NULL, updated_at DATETIME(6) NOT NULL,
        INDEX ix_bench_sessions_user (user_id, updated_at, id)) {TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS bench_messages (
        id CHAR(32) PRIMARY KEY, session_id CHAR(32) NOT NULL, seq INT NOT NULL,
        role VARCHAR(20) NOT NULL, content LONGTEXT NOT NULL, metadata JSON NOT NULL,
        created_at DATETIME(6) NOT NULL, UNIQUE KEY uq_bench_messages (session_id, seq),
        FOREIGN KEY (session_id) REFERENCES bench_sessions (id) ON DELETE CASCADE) {TABLE}""",
    f"""CREATE TABLE IF NOT EXISTS bench_state (
        id CHAR(32) PRIMARY KEY, session_id CHAR(32) NOT NULL, version INT NOT NULL,
        state JSON NOT NULL, created_at DATETIME(6) NOT NULL,
        UNIQUE KEY uq_bench_state (session_id, version),
        FOREIGN KEY (session_id) REFERENCES bench_sessions (id) ON DELETE CASCADE) {TABLE}""",
]

BUMP = "UPDATE bench_sessions SET last_seq = last_seq + %s, updated_at = %s WHERE id = %s"
BUMP_STATE = (
    "UPDATE bench_sessions SET last_seq = last_seq + %s, state_version = state_version + 1, "
    "updated_at = %s WHERE id = %s"
)
COUNTERS = "SELECT last_seq, state_version FROM bench_sessions WHERE id = %s"
INSERT_MESSAGE = (
    "INSERT INTO bench_messages (id, session_id, seq, role, content, metadata, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
INSERT_STATE = (
    "INSERT INTO bench_state (id, session_id, version, state, created_at) "
    "VALUES (%s, %s, %s, %s, %s)"
)
COLUMNS = "id, session_id, seq, role, content, metadata, created_at"
NEWEST = f"SELECT {COLUMNS} FROM bench_messages WHERE session_id = %s ORDER BY seq DESC LIMIT %s"
LIST = (
    "SELECT id, user_id, metadata, last_seq, state_version, created_at, updated_at "
    "FROM bench_sessions WHERE user_id = %s ORDER BY updated_at DESC, id DESC LIMIT %s"
)
ALL = f"SELECT {COLUMNS} FROM bench_messages WHERE session_id = %s ORDER BY seq"


def _stamp() -> datetime:
    return now().replace(tzinfo=None)  # DATETIME(6) holds the UTC wall clock


class MySqlFloor(Impl):
    name = "floor"

    def __init__(self, target: Target, pool_size: int = 20) -> None:
        self.target = target
        self.pool_size = pool_size
        self._writes: aiomysql.Pool | None = None
        self._reads: aiomysql.Pool | None = None

    async def _pool(self, autocommit: bool) -> aiomysql.Pool:
        t = self.target
        return await aiomysql.create_pool(
            host=t.host,
            port=t.port,
            user=t.user,
            password=t.password or "",
            db=t.database,
            charset="utf8mb4",
            autocommit=autocommit,
            minsize=1,
            maxsize=self.pool_size,
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )

    async def open(self) -> None:
        self._writes = await self._pool(autocommit=False)
        self._reads = await self._pool(autocommit=True)
        async with self._reads.acquire() as conn, conn.cursor() as cur:
            with warnings.catch_warnings():  # "already exists", from the W5 child processes
                warnings.simplefilter("ignore")
                for statement in DDL:
                    await cur.execute(statement)

    async def close(self) -> None:
        for pool in (self._writes, self._reads):
            if pool is not None:
                pool.close()
                await pool.wait_closed()

    @property
    def writes(self) -> aiomysql.Pool:
        assert self._writes is not None, "open() first"
        return self._writes

    @property
    def reads(self) -> aiomysql.Pool:
        assert self._reads is not None, "open() first"
        return self._reads

    async def reset(self) -> None:
        async with self.reads.acquire() as conn, conn.cursor() as cur:
            for table in ("bench_state", "bench_messages", "bench_sessions"):
                await cur.execute(f"DELETE FROM {table}")

    async def create_session(self, user_id: uuid.UUID) -> uuid.UUID:
        sid = uuid7()
        stamp = _stamp()
        async with self.reads.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO bench_sessions (id, user_id, metadata, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                (sid.hex, user_id.hex, "{}", stamp, stamp),
            )
        return sid

    async def _write(self, sid: uuid.UUID, items: Sequence[tuple[str, str]], state: bool) -> int:
        stamp = _stamp()
        key = sid.hex
        async with self.writes.acquire() as conn:
            try:
                async with conn.cursor() as cur:
                    await cur.execute(BUMP_STATE if state else BUMP, (len(items), stamp, key))
                    await cur.execute(COUNTERS, (key,))
                    last, version = await cur.fetchone()
                    first = last - len(items) + 1
                    rows = [
                        (uuid7().hex, key, first + i, role, text, json.dumps(METADATA), stamp)
                        for i, (role, text) in enumerate(items)
                    ]
                    if len(rows) == 1:
                        await cur.execute(INSERT_MESSAGE, rows[0])
                    else:
                        await cur.executemany(INSERT_MESSAGE, rows)
                    if state:
                        await cur.execute(
                            INSERT_STATE, (uuid7().hex, key, version, json.dumps(STATE), stamp)
                        )
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise
        return int(last)

    async def append(self, sid: uuid.UUID, role: str, content: str) -> int:
        return await self._write(sid, [(role, content)], False)

    async def turn(self, sid: uuid.UUID, user: str, assistant: str) -> None:
        await self._write(sid, [("user", user), ("assistant", assistant)], True)

    async def append_batch(self, sid: uuid.UUID, items: Sequence[tuple[str, str]]) -> None:
        await self._write(sid, items, False)

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        async with self.reads.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

    async def newest(self, sid: uuid.UUID, count: int) -> Rows:
        rows = await self._fetch(NEWEST, (sid.hex, count))
        return [(r[2], r[4]) for r in reversed(rows) if json.loads(r[5]) is not None]

    async def list_sessions(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        rows = await self._fetch(LIST, (user_id.hex, limit))
        return [_uuid(r[0]) for r in rows if json.loads(r[2]) is not None]

    async def export(self, sid: uuid.UUID, page: int) -> AsyncIterator[tuple[int, str]]:
        async with self.reads.acquire() as conn, conn.cursor(aiomysql.SSCursor) as cur:
            await cur.execute(ALL, (sid.hex,))
            while rows := await cur.fetchmany(page):
                for r in rows:
                    json.loads(r[5])
                    yield r[2], r[4]

    async def read_all(self, sid: uuid.UUID) -> Rows:
        return [(r[2], r[4]) for r in await self._fetch(ALL, (sid.hex,))]

    async def seed_messages(self, sid: uuid.UUID, count: int) -> None:
        stamps = [t.replace(tzinfo=None) for t in seed_times(count)]
        meta = json.dumps(METADATA)
        key = sid.hex
        async with self.writes.acquire() as conn:
            async with conn.cursor() as cur:
                for start in range(0, count, 2_000):
                    await cur.executemany(
                        INSERT_MESSAGE,
                        [
                            (uuid7().hex, key, i + 1, "user", CONTENT, meta, stamps[i])
                            for i in range(start, min(count, start + 2_000))
                        ],
                    )
                await cur.execute(
                    "UPDATE bench_sessions SET last_seq = %s WHERE id = %s", (count, key)
                )
            await conn.commit()

    async def seed_sessions(self, user_ids: Sequence[uuid.UUID]) -> None:
        stamps = [t.replace(tzinfo=None) for t in seed_times(len(user_ids))]
        rows = [(uuid7().hex, u.hex, "{}", t, t) for u, t in zip(user_ids, stamps, strict=True)]
        sql = (
            "INSERT INTO bench_sessions (id, user_id, metadata, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s)"
        )
        async with self.writes.acquire() as conn:
            async with conn.cursor() as cur:
                for start in range(0, len(rows), 5_000):
                    await cur.executemany(sql, rows[start : start + 5_000])
            await conn.commit()


def _uuid(text: str) -> uuid.UUID:
    return uuid.UUID(hex=text)
