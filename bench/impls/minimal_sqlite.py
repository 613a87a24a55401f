"""The SQLite minimal floor: one autocommit aiosqlite INSERT per message on one connection.

Same file, pragmas (WAL, ``synchronous=FULL``) and value formats as the floor, and the same
message row (``min_messages``), but no ``BEGIN IMMEDIATE``, no counter, no session check and no
lock around a single-statement write (aiosqlite's thread runs the statements one at a time);
``seq`` comes from process memory. Batches and turns are one transaction under a lock.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import aiosqlite

from mofa_persist.ids import uuid7

from .base import CONTENT, METADATA_JSON, STATE_JSON, Impl, LocalSeq, Rows, now, seed_times

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from datetime import datetime

    from ..servers import Target

DDL = [
    """CREATE TABLE IF NOT EXISTS min_sessions (
        id CHAR(32) PRIMARY KEY, user_id CHAR(32), metadata JSON,
        last_seq INTEGER NOT NULL DEFAULT 0, state_version INTEGER NOT NULL DEFAULT 0,
        created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS ix_min_sessions_user ON min_sessions (user_id, updated_at, id)",
    """CREATE TABLE IF NOT EXISTS min_messages (
        id CHAR(32) PRIMARY KEY, session_id CHAR(32) NOT NULL, seq INTEGER NOT NULL,
        role VARCHAR(20) NOT NULL, content TEXT NOT NULL, metadata JSON NOT NULL,
        created_at DATETIME NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS ix_min_messages_seq ON min_messages (session_id, seq)",
    """CREATE TABLE IF NOT EXISTS min_state (
        id CHAR(32) PRIMARY KEY, session_id CHAR(32) NOT NULL, version INTEGER NOT NULL,
        state JSON NOT NULL, created_at DATETIME NOT NULL)""",
]
INSERT_MESSAGE = (
    "INSERT INTO min_messages (id, session_id, seq, role, content, metadata, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
INSERT_STATE = (
    "INSERT INTO min_state (id, session_id, version, state, created_at) VALUES (?, ?, ?, ?, ?)"
)
COLUMNS = "id, session_id, seq, role, content, metadata, created_at"
NEWEST = f"SELECT {COLUMNS} FROM min_messages WHERE session_id = ? ORDER BY seq DESC LIMIT ?"
LIST = (
    "SELECT id, user_id, metadata, last_seq, state_version, created_at, updated_at "
    "FROM min_sessions WHERE user_id = ? ORDER BY updated_at DESC, id DESC LIMIT ?"
)
ALL = f"SELECT {COLUMNS} FROM min_messages WHERE session_id = ? ORDER BY seq, created_at"
NEW_SESSION = (
    "INSERT INTO min_sessions (id, user_id, metadata, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?)"
)


def _text(stamp: datetime) -> str:
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")


class SqliteMinimal(Impl):
    name = "minimal"

    def __init__(self, target: Target) -> None:
        self.target = target
        self.seq = LocalSeq()
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "open() first"
        return self._db

    async def open(self) -> None:
        assert self.target.path is not None
        self._db = await aiosqlite.connect(self.target.path, isolation_level=None)
        if self.target.path != ":memory:":
            await self.db.execute("PRAGMA journal_mode=WAL")
            await self.db.execute("PRAGMA synchronous=FULL")
            await self.db.execute("PRAGMA busy_timeout=10000")
        for statement in DDL:
            await self.db.execute(statement)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()

    async def _transaction(self, statements: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    await self.db.executemany(sql, rows)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    async def reset(self) -> None:
        self.seq.clear()
        for table in ("min_state", "min_messages", "min_sessions"):
            await self.db.execute(f"DELETE FROM {table}")

    async def create_session(self, user_id: uuid.UUID) -> uuid.UUID:
        sid, stamp = uuid7(), _text(now())
        await self.db.execute(NEW_SESSION, (sid.hex, user_id.hex, "{}", stamp, stamp))
        return sid

    async def append(self, sid: uuid.UUID, role: str, content: str) -> int:
        seq = self.seq.next(sid)
        row = (uuid7().hex, sid.hex, seq, role, content, METADATA_JSON, _text(now()))
        await self.db.execute(INSERT_MESSAGE, row)
        return seq

    async def turn(self, sid: uuid.UUID, user: str, assistant: str) -> None:
        first, stamp, key = self.seq.next(sid, 2), _text(now()), sid.hex
        rows = [
            (uuid7().hex, key, first, "user", user, METADATA_JSON, stamp),
            (uuid7().hex, key, first + 1, "assistant", assistant, METADATA_JSON, stamp),
        ]
        state = [(uuid7().hex, key, first, STATE_JSON, stamp)]
        await self._transaction([(INSERT_MESSAGE, rows), (INSERT_STATE, state)])

    async def append_batch(self, sid: uuid.UUID, items: Sequence[tuple[str, str]]) -> None:
        first, stamp, key = self.seq.next(sid, len(items)), _text(now()), sid.hex
        rows = [
            (uuid7().hex, key, first + i, role, text, METADATA_JSON, stamp)
            for i, (role, text) in enumerate(items)
        ]
        await self._transaction([(INSERT_MESSAGE, rows)])

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        return list(await self.db.execute_fetchall(sql, args))

    async def newest(self, sid: uuid.UUID, count: int) -> Rows:
        return [(r[2], r[4]) for r in reversed(await self._fetch(NEWEST, (sid.hex, count)))]

    async def list_sessions(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        return [uuid.UUID(hex=r[0]) for r in await self._fetch(LIST, (user_id.hex, limit))]

    async def export(self, sid: uuid.UUID, page: int) -> AsyncIterator[tuple[int, str]]:
        async with self.db.execute(ALL, (sid.hex,)) as cursor:
            while rows := await cursor.fetchmany(page):
                for r in rows:
                    yield r[2], r[4]

    async def read_all(self, sid: uuid.UUID) -> Rows:
        return [(r[2], r[4]) for r in await self._fetch(ALL, (sid.hex,))]

    async def seed_messages(self, sid: uuid.UUID, count: int) -> None:
        stamps = seed_times(count)
        first, key = self.seq.next(sid, count), sid.hex
        rows = [
            (uuid7().hex, key, first + i, "user", CONTENT, METADATA_JSON, _text(stamps[i]))
            for i in range(count)
        ]
        await self._transaction([(INSERT_MESSAGE, rows)])

    async def seed_sessions(self, user_ids: Sequence[uuid.UUID]) -> None:
        stamps = seed_times(len(user_ids))
        rows = [
            (uuid7().hex, u.hex, "{}", _text(t), _text(t))
            for u, t in zip(user_ids, stamps, strict=True)
        ]
        await self._transaction([(NEW_SESSION, rows)])
