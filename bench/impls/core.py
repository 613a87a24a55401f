"""Plain SQLAlchemy Core: the same transactions written directly against an ``AsyncEngine``.

The engine comes from :func:`mofa_persist.engine.create_engine`, so pool, pragmas and
``BEGIN IMMEDIATE`` match the library's; the difference library/Core is then the repository
layer itself (validation, records, retries), and Core/floor is SQLAlchemy plus the engine setup.
Tables are a minimal copy of the library's (``core_*``), in the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    delete,
    insert,
    select,
    update,
)

from mofa_persist.engine import create_engine
from mofa_persist.ids import uuid7
from mofa_persist.types import JSONDocument, LongText, UTCDateTime
from mofa_persist.urls import parse_url

from .base import CONTENT, METADATA, STATE, Impl, Rows, now, seed_times

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator, Sequence

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ..servers import Target

metadata = MetaData()
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}

sessions = Table(
    "core_sessions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Uuid),
    Column("metadata", JSONDocument),
    Column("last_seq", Integer, nullable=False, server_default="0"),
    Column("state_version", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_core_sessions_user", "user_id", "updated_at", "id"),
    **MYSQL,
)
messages = Table(
    "core_messages",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("session_id", Uuid, ForeignKey("core_sessions.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("role", String(20), nullable=False),
    Column("content", LongText, nullable=False),
    Column("metadata", JSONDocument, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("session_id", "seq"),
    **MYSQL,
)
states = Table(
    "core_state",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("session_id", Uuid, ForeignKey("core_sessions.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("state", JSONDocument, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("session_id", "version"),
    **MYSQL,
)


class CoreImpl(Impl):
    name = "core"

    def __init__(self, target: Target) -> None:
        self.target = target
        self.url = parse_url(target.url)
        self._engine: AsyncEngine | None = None
        # SQLite: one writer at a time (and one shared connection in memory), as in the store.
        self._lock = asyncio.Lock() if self.url.kind in ("sqlite", "memory") else None
        self._memory = self.url.kind == "memory"

    @property
    def engine(self) -> AsyncEngine:
        assert self._engine is not None, "open() first"
        return self._engine

    async def open(self) -> None:
        self._engine = create_engine(self.url)
        self._returning = bool(self._engine.dialect.update_returning)
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._lock, self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        if self._memory:
            assert self._lock is not None
            async with self._lock, self.engine.connect() as conn:
                yield conn
            return
        async with self.engine.connect() as conn:
            yield conn

    async def reset(self) -> None:
        async with self._write() as conn:
            for table in (states, messages, sessions):
                await conn.execute(delete(table))

    async def create_session(self, user_id: uuid.UUID) -> uuid.UUID:
        sid = uuid7()
        stamp = now()
        async with self._write() as conn:
            await conn.execute(
                insert(sessions),
                {
                    "id": sid,
                    "user_id": user_id,
                    "metadata": {},
                    "created_at": stamp,
                    "updated_at": stamp,
                },
            )
        return sid

    async def _bump(
        self, conn: AsyncConnection, sid: uuid.UUID, count: int, state: bool
    ) -> tuple[int, int]:
        values: dict[str, Any] = {"last_seq": sessions.c.last_seq + count, "updated_at": now()}
        if state:
            values["state_version"] = sessions.c.state_version + 1
        stmt = update(sessions).where(sessions.c.id == sid).values(values)
        if self._returning:
            result = await conn.execute(
                stmt.returning(sessions.c.last_seq, sessions.c.state_version)
            )
            row = result.one()
        else:
            await conn.execute(stmt)
            counters = select(sessions.c.last_seq, sessions.c.state_version)
            row = (await conn.execute(counters.where(sessions.c.id == sid))).one()
        return int(row[0]), int(row[1])

    def _rows(self, sid: uuid.UUID, first: int, items: Sequence[tuple[str, str]]) -> list[Any]:
        stamp = now()
        return [
            {
                "id": uuid7(),
                "session_id": sid,
                "seq": first + offset,
                "role": role,
                "content": text,
                "metadata": METADATA,
                "created_at": stamp,
            }
            for offset, (role, text) in enumerate(items)
        ]

    async def append(self, sid: uuid.UUID, role: str, content: str) -> int:
        async with self._write() as conn:
            seq, _ = await self._bump(conn, sid, 1, False)
            await conn.execute(insert(messages), self._rows(sid, seq, [(role, content)])[0])
        return seq

    async def turn(self, sid: uuid.UUID, user: str, assistant: str) -> None:
        async with self._write() as conn:
            last, version = await self._bump(conn, sid, 2, True)
            rows = self._rows(sid, last - 1, [("user", user), ("assistant", assistant)])
            await conn.execute(insert(messages), rows)
            await conn.execute(
                insert(states),
                {
                    "id": uuid7(),
                    "session_id": sid,
                    "version": version,
                    "state": STATE,
                    "created_at": now(),
                },
            )

    async def append_batch(self, sid: uuid.UUID, items: Sequence[tuple[str, str]]) -> None:
        async with self._write() as conn:
            last, _ = await self._bump(conn, sid, len(items), False)
            await conn.execute(insert(messages), self._rows(sid, last - len(items) + 1, items))

    async def newest(self, sid: uuid.UUID, count: int) -> Rows:
        stmt = (
            select(messages)
            .where(messages.c.session_id == sid)
            .order_by(messages.c.seq.desc())
            .limit(count)
        )
        async with self._read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(row.seq, row.content) for row in reversed(rows)]

    async def list_sessions(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        stmt = (
            select(sessions)
            .where(sessions.c.user_id == user_id)
            .order_by(sessions.c.updated_at.desc(), sessions.c.id.desc())
            .limit(limit)
        )
        async with self._read() as conn:
            return [row.id for row in await conn.execute(stmt)]

    async def export(self, sid: uuid.UUID, page: int) -> AsyncIterator[tuple[int, str]]:
        stmt = select(messages).where(messages.c.session_id == sid).order_by(messages.c.seq)
        async with self._read() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=page))
            async for row in result:
                yield row.seq, row.content

    async def read_all(self, sid: uuid.UUID) -> Rows:
        stmt = select(messages.c.seq, messages.c.content).where(messages.c.session_id == sid)
        async with self._read() as conn:
            rows = await conn.execute(stmt.order_by(messages.c.seq))
            return [(int(row[0]), str(row[1])) for row in rows]

    async def seed_messages(self, sid: uuid.UUID, count: int) -> None:
        for start in range(0, count, 1_000):
            await self.append_batch(sid, [("user", CONTENT)] * min(1_000, count - start))

    async def seed_sessions(self, user_ids: Sequence[uuid.UUID]) -> None:
        stamps = seed_times(len(user_ids))
        rows = [
            {"id": uuid7(), "user_id": user, "metadata": {}, "created_at": t, "updated_at": t}
            for user, t in zip(user_ids, stamps, strict=True)
        ]
        async with self._write() as conn:
            for start in range(0, len(rows), 5_000):
                await conn.execute(insert(sessions), rows[start : start + 5_000])
