"""Small helpers shared by the reliability tests."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text

from mofa_persist.models import agent_state_table, messages_table
from mofa_persist.urls import parse_url

if TYPE_CHECKING:
    import uuid
    from pathlib import Path

    import mofa_persist


def backend_of(url: str) -> str:
    return parse_url(url).kind


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def raw_rows(store: mofa_persist.Store, sql: str, **params: Any) -> list[Any]:
    """Rows of a plain SQL query on the store's engine: checks that bypass the API."""
    async with store.engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def message_rows(store: mofa_persist.Store, sid: uuid.UUID) -> list[Any]:
    """(seq, content, metadata) of the session's messages by seq, read past the store API."""
    m = messages_table
    stmt = select(m.c.seq, m.c.content, m.c.metadata).where(m.c.session_id == sid).order_by(m.c.seq)
    async with store.engine.connect() as conn:
        return list((await conn.execute(stmt)).all())


async def state_rows(store: mofa_persist.Store, sid: uuid.UUID) -> list[Any]:
    """(version, state) of the session's saved states by version, read past the store API."""
    a = agent_state_table
    stmt = select(a.c.version, a.c.state).where(a.c.session_id == sid).order_by(a.c.version)
    async with store.engine.connect() as conn:
        return list((await conn.execute(stmt)).all())
