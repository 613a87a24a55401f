"""The library itself, through its public API only (setup aside)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import delete, insert

import mofa_persist
from mofa_persist.ids import uuid7
from mofa_persist.models import (
    agent_state_table,
    api_calls_table,
    messages_table,
    sessions_table,
)

from .base import CONTENT, METADATA, STATE, Impl, Rows, seed_times

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator, Sequence

    from ..servers import Target


class LibraryImpl(Impl):
    name = "library"

    def __init__(self, target: Target) -> None:
        self.target = target
        self._store: mofa_persist.Store | None = None

    @property
    def store(self) -> mofa_persist.Store:
        assert self._store is not None, "open() first"
        return self._store

    async def open(self) -> None:
        self._store = await mofa_persist.connect(self.target.url)

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()

    async def reset(self) -> None:
        async with self.store.engine.begin() as conn:
            for table in (api_calls_table, agent_state_table, messages_table, sessions_table):
                await conn.execute(delete(table))

    async def create_session(self, user_id: uuid.UUID) -> uuid.UUID:
        return (await self.store.create_session(user_id=user_id)).id

    async def append(self, sid: uuid.UUID, role: str, content: str) -> int:
        return (await self.store.append_message(sid, role, content, metadata=METADATA)).seq

    async def turn(self, sid: uuid.UUID, user: str, assistant: str) -> None:
        await self.store.record_turn(
            sid,
            [
                {"role": "user", "content": user, "metadata": METADATA},
                {"role": "assistant", "content": assistant, "metadata": METADATA},
            ],
            state=STATE,
        )

    async def append_batch(self, sid: uuid.UUID, items: Sequence[tuple[str, str]]) -> None:
        await self.store.append_messages(
            sid, [{"role": role, "content": text, "metadata": METADATA} for role, text in items]
        )

    async def newest(self, sid: uuid.UUID, count: int) -> Rows:
        return [(m.seq, m.content) for m in await self.store.get_messages(sid, limit=count)]

    async def list_sessions(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        page = await self.store.list_sessions(user_id=user_id, limit=limit)
        return [session.id for session in page.items]

    async def export(self, sid: uuid.UUID, page: int) -> AsyncIterator[tuple[int, str]]:
        after = 0
        while True:
            messages = await self.store.get_messages(sid, after_seq=after, limit=page)
            for message in messages:
                yield message.seq, message.content
            if len(messages) < page:
                return
            after = messages[-1].seq

    async def read_all(self, sid: uuid.UUID) -> Rows:
        return [(m.seq, m.content) for m in await self.store.get_messages(sid)]

    async def seed_messages(self, sid: uuid.UUID, count: int) -> None:
        # The library's own batch path: there is no faster public way in.
        for start in range(0, count, 1_000):
            size = min(1_000, count - start)
            await self.append_batch(sid, [("user", CONTENT)] * size)

    async def seed_sessions(self, user_ids: Sequence[uuid.UUID]) -> None:
        # No bulk-create API: write rows straight into the library's table with Core.
        stamps = seed_times(len(user_ids))
        rows = [
            {
                "id": uuid7(),
                "user_id": user,
                "tenant_id": None,
                "agent_id": None,
                "title": None,
                "metadata": {},
                "last_seq": 0,
                "state_version": 0,
                "created_at": stamp,
                "updated_at": stamp,
            }
            for user, stamp in zip(user_ids, stamps, strict=True)
        ]
        async with self.store.engine.begin() as conn:
            for start in range(0, len(rows), 5_000):
                await conn.execute(insert(sessions_table), rows[start : start + 5_000])
