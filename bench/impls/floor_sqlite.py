"""The SQLite floor (file and in-memory): aiosqlite with hand-written SQL on ``bench_*`` tables.

Same pragmas as the library (WAL, synchronous=FULL, foreign keys, busy timeout) and the same
``BEGIN IMMEDIATE`` per write. One connection, writers queued on an asyncio lock: SQLite has
one writer at a time, so this is the fastest a process can go. Values are stored in
SQLAlchemy's formats (UUID as 32 hex characters, UTC datetimes as text) so the rows are
equivalent to the library's.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import TYPE_CHECKING, Any

import aiosqlite

from mofa_persist.ids import uuid7

from .base import CONTENT, METADATA, STATE, Impl, Rows, now, seed_times

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from datetime import datetime

    from ..servers import Target

DDL = [
    """CREATE TABLE IF NOT EXISTS bench_sessions (
        id CHAR(32) PRIMARY KEY, user_id CHAR(32), metadata JSON,
        last_seq INTEGER NOT NULL DEFAULT 0, state_version INTEGER NOT NULL DEFAULT 0,
        created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS ix_bench_sessions_user ON bench_sessions (user_id, updated_at, id)",
    """CREATE TABLE IF NOT EXISTS bench_messages (
        id CHAR(32) PRIMARY KEY,
        session_id CHAR(32) NOT NULL REFERENCES bench_sessions (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL, role VARCHAR(20) NOT NULL, content TEXT NOT NULL,
        metadata JSON NOT NULL, created_at DATETIME NOT NULL, UNIQUE (session_id, seq))""",
    """CREATE TABLE IF NOT EXISTS bench_state (
        id CHAR(32) PRIMARY KEY,
        session_id CHAR(32) NOT NULL REFERENCES bench_sessions (id) ON DELETE CASCADE,
        version INTEGER NOT NULL, state JSON NOT NULL, created_at DATETIME NOT NULL,
        UNIQUE (session_id, version))""",
]

BUMP = (
    "UPDATE bench_sessions SET last_seq = last_seq + ?, updated_at = ? WHERE id = ? "
    "RETURNING last_seq"
)
BUMP_STATE = (
    "UPDATE bench_sessions SET last_seq = last_seq + ?, state_version = state_version + 1, "
    "updated_at = ? WHERE id = ? RETURNING last_seq, state_version"
)
INSERT_MESSAGE = (
    "INSERT INTO bench_messages (id, session_id, seq, role, content, metadata, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
INSERT_STATE = (
    "INSERT INTO bench_state (id, session_id, version, state, created_at) VALUES (?, ?, ?, ?, ?)"
)
COLUMNS = "id, session_id, seq, role, content, metadata, created_at"
NEWEST = f"SELECT {COLUMNS} FROM bench_messages WHERE session_id = ? ORDER BY seq DESC LIMIT ?"
LIST = (
    "SELECT id, user_id, metadata, last_seq, state_version, created_at, updated_at "
    "FROM bench_sessions WHERE user_id = ? ORDER BY updated_at DESC, id DESC LIMIT ?"
)
ALL = f"SELECT {COLUMNS} FROM bench_messages WHERE session_id = ? ORDER BY seq"


def _text(stamp: datetime) -> str:
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")


class SqliteFloor(Impl):
    name = "floor"

    def __init__(self, target: Target) -> None:
        self.target = target
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "open() first"
        return self._db

    async def open(self) -> None:
        assert self.target.path is not None
        self._db = await aiosqlite.connect(self.target.path, isolation_level=None)
        await self.db.execute("PRAGMA foreign_keys=ON")
        if self.target.path != ":memory:":
            await self.db.execute("PRAGMA journal_mode=WAL")
            await self.db.execute("PRAGMA synchronous=FULL")
            await self.db.execute("PRAGMA busy_timeout=10000")
        for statement in DDL:
            await self.db.execute(statement)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()

    async def reset(self) -> None:
        async with self._lock:
            for table in ("bench_state", "bench_messages", "bench_sessions"):
                await self.db.execute(f"DELETE FROM {table}")

    async def _transaction(self, statements: list[tuple[str, Any]]) -> None:
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                await self.db.execute(sql, args)
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise

    async def create_session(self, user_id: uuid.UUID) -> uuid.UUID:
        sid = uuid7()
        stamp = _text(now())
        sql = (
            "INSERT INTO bench_sessions (id, user_id, metadata, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)"
        )
        async with self._lock:
            await self._transaction([(sql, (sid.hex, user_id.hex, "{}", stamp, stamp))])
        return sid

    async def _write(self, sid: uuid.UUID, items: Sequence[tuple[str, str]], state: bool) -> int:
        stamp = _text(now())
        key = sid.hex
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                bumped = await self.db.execute_fetchall(
                    BUMP_STATE if state else BUMP, (len(items), stamp, key)
                )
                last = int(next(iter(bumped))[0])
                first = last - len(items) + 1
                rows = [
                    (uuid7().hex, key, first + i, role, text, json.dumps(METADATA), stamp)
                    for i, (role, text) in enumerate(items)
                ]
                if len(rows) == 1:
                    await self.db.execute(INSERT_MESSAGE, rows[0])
                else:
                    await self.db.executemany(INSERT_MESSAGE, rows)
                if state:
                    version = int(next(iter(bumped))[1])
                    await self.db.execute(
                        INSERT_STATE, (uuid7().hex, key, version, json.dumps(STATE), stamp)
                    )
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return last

    async def append(self, sid: uuid.UUID, role: str, content: str) -> int:
        return await self._write(sid, [(role, content)], False)

    async def turn(self, sid: uuid.UUID, user: str, assistant: str) -> None:
        await self._write(sid, [("user", user), ("assistant", assistant)], True)

    async def append_batch(self, sid: uuid.UUID, items: Sequence[tuple[str, str]]) -> None:
        await self._write(sid, items, False)

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        async with self._lock:
            return list(await self.db.execute_fetchall(sql, args))

    async def newest(self, sid: uuid.UUID, count: int) -> Rows:
        rows = await self._fetch(NEWEST, (sid.hex, count))
        return [(r[2], r[4]) for r in reversed(rows) if json.loads(r[5]) is not None]

    async def list_sessions(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        rows = await self._fetch(LIST, (user_id.hex, limit))
        return [uuid.UUID(hex=r[0]) for r in rows if json.loads(r[2]) is not None]

    async def export(self, sid: uuid.UUID, page: int) -> AsyncIterator[tuple[int, str]]:
        async with self._lock, self.db.execute(ALL, (sid.hex,)) as cursor:
            while rows := await cursor.fetchmany(page):
                for r in rows:
                    json.loads(r[5])
                    yield r[2], r[4]

    async def read_all(self, sid: uuid.UUID) -> Rows:
        return [(r[2], r[4]) for r in await self._fetch(ALL, (sid.hex,))]

    async def seed_messages(self, sid: uuid.UUID, count: int) -> None:
        stamps = seed_times(count)
        meta = json.dumps(METADATA)
        key = sid.hex
        rows = [
            (uuid7().hex, key, i + 1, "user", CONTENT, meta, _text(stamps[i])) for i in range(count)
        ]
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            await self.db.executemany(INSERT_MESSAGE, rows)
            await self.db.execute(
                "UPDATE bench_sessions SET last_seq = ? WHERE id = ?", (count, key)
            )
            await self.db.execute("COMMIT")

    async def seed_sessions(self, user_ids: Sequence[uuid.UUID]) -> None:
        stamps = seed_times(len(user_ids))
        sql = (
            "INSERT INTO bench_sessions (id, user_id, metadata, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)"
        )
        rows = [
            (uuid7().hex, u.hex, "{}", _text(t), _text(t))
            for u, t in zip(user_ids, stamps, strict=True)
        ]
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            await self.db.executemany(sql, rows)
            await self.db.execute("COMMIT")
