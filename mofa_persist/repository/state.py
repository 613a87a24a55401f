"""Agent state: versioned snapshots with compare-and-set saves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ..convert import _state_record
from ..errors import NotFoundError
from ..validate import check_limit, require_uuid
from . import idempotency
from .core import StoreCore
from .tables import DEFAULT_PAGE, a_t

if TYPE_CHECKING:
    import uuid
    from collections.abc import Mapping

    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..records import (
        AgentState,
    )


class StateApi(StoreCore):
    """Agent state: versioned snapshots with compare-and-set saves."""

    async def save_state(
        self,
        session_id: uuid.UUID | str,
        state: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> AgentState:
        """Save a new state snapshot as version = previous + 1.

        With ``expected_version``, the save happens only if that is still the current version
        (0 for a session without state); otherwise ``ConflictError``. With
        ``idempotency_key``, a retry returns the first call's snapshot and saves nothing.
        """
        sid = require_uuid("session_id", session_id)
        encoded = self._encode("state", state, allow_none=False)
        expected = check_limit("expected_version", expected_version)
        key = idempotency.check_key(idempotency_key)
        _, saved = await self._write_turn(
            sid, [], encoded, expected, "save state", key, "save_state"
        )
        assert saved is not None
        return saved

    async def load_state(
        self, session_id: uuid.UUID | str, *, version: int | None = None
    ) -> AgentState | None:
        """The newest state (or ``version``); ``None`` if the session has no state yet.

        ``NotFoundError`` if an explicitly requested ``version`` does not exist.
        """
        sid = require_uuid("session_id", session_id)
        wanted = check_limit("version", version)
        stmt = select(a_t).where(a_t.c.session_id == sid, *self._scope_exists(sid))
        if wanted is not None:
            stmt = stmt.where(a_t.c.version == wanted)
        stmt = stmt.order_by(a_t.c.version.desc()).limit(1)

        async def work(conn: AsyncConnection) -> AgentState | None:
            row = (await conn.execute(stmt)).first()
            if row is not None:
                return _state_record(row)
            await self._require_session(conn, sid)
            if wanted is not None:
                raise NotFoundError(f"session {sid} has no state version {wanted}")
            return None

        return await self._run(work, write=False, action="load state", one_read=True)

    async def list_states(
        self, session_id: uuid.UUID | str, *, limit: int | None = DEFAULT_PAGE
    ) -> list[AgentState]:
        """Saved states, newest version first."""
        sid = require_uuid("session_id", session_id)
        count = check_limit("limit", limit)
        stmt = (
            select(a_t)
            .where(a_t.c.session_id == sid, *self._scope_exists(sid))
            .order_by(a_t.c.version.desc())
        )
        if count is not None:
            stmt = stmt.limit(count)

        async def work(conn: AsyncConnection) -> list[AgentState]:
            rows = (await conn.execute(stmt)).all()
            if not rows:
                await self._require_session(conn, sid)
            return [_state_record(row) for row in rows]

        return await self._run(work, write=False, action="list states", one_read=True)
