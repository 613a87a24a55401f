"""Conversation history: appending messages and turns, reading the context window."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from .. import sql
from ..backend import ReplicaStatus as ReplicaStatus
from ..backend import Scope as Scope
from ..backend import _Backend as _Backend
from ..convert import _NewMessage
from ..errors import (
    InvalidInputError,
)
from ..models import agent_state_table, api_calls_table, messages_table, sessions_table
from ..records import (
    Message,
    Turn,
)
from ..validate import (
    check_limit,
    check_role,
    check_text,
    require_uuid,
)

if TYPE_CHECKING:
    import uuid
    from collections.abc import Iterable, Mapping

    from sqlalchemy.ext.asyncio import AsyncConnection

from .core import StoreCore

_DEFAULT_PAGE = 50

s_t = sessions_table
m_t = messages_table
a_t = agent_state_table
c_t = api_calls_table


class HistoryApi(StoreCore):
    """Conversation history: appending messages and turns, reading the context window."""

    async def append_message(
        self,
        session_id: uuid.UUID | str,
        role: str,
        content: str,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> Message:
        """Append one message; it gets the session's next ``seq``."""
        sid = require_uuid("session_id", session_id)
        item = _NewMessage(
            check_role(role), check_text("content", content), self._encode("metadata", metadata)
        )
        messages, _ = await self._write_turn(sid, [item], None, None, "append a message")
        return messages[0]

    async def append_messages(
        self, session_id: uuid.UUID | str, items: Iterable[Mapping[str, Any]]
    ) -> list[Message]:
        """Append several messages in one transaction: all of them or none."""
        sid = require_uuid("session_id", session_id)
        checked = self._check_items(items)
        if not checked:
            await self._ensure_session(sid)
            return []
        messages, _ = await self._write_turn(sid, checked, None, None, "append messages")
        return messages

    async def get_messages(
        self,
        session_id: uuid.UUID | str,
        *,
        limit: int | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> list[Message]:
        """Messages in ascending ``seq``.

        With ``limit`` and no ``after_seq`` these are the newest ``limit`` messages (before
        ``before_seq`` if given): an agent's context window, read from the index's end, so
        the cost does not grow with the history. With ``after_seq`` they are the oldest
        ``limit`` messages after it, for paging forward.
        """
        sid = require_uuid("session_id", session_id)
        count = check_limit("limit", limit)
        before = check_limit("before_seq", before_seq)
        after = check_limit("after_seq", after_seq)
        if count == 0:
            await self._ensure_session(sid)
            return []
        lane = self._backend.lane
        newest_first = count is not None and after is None
        text = sql.messages_sql(
            lane.style,
            self._scope_shape(),
            before is not None,
            after is not None,
            newest_first,
            count is not None,
        )
        params: list[Any] = [lane.uuid_in(sid)]
        if self._scope.restricted:
            params += [lane.uuid_in(sid), *self._scope_params()]
        params += [bound for bound in (before, after, count) if bound is not None]

        async def work(db: Any) -> list[Message]:
            rows = await lane.fetch(db, text, params)
            if not rows:
                await self._lean_require_session(db, sid)
                return []
            messages = lane.messages(rows)
            if newest_first:
                messages.reverse()
            return messages

        return await self._run(work, write=False, action="read messages", one_read=True, lean=True)

    async def count_messages(self, session_id: uuid.UUID | str) -> int:
        sid = require_uuid("session_id", session_id)
        stmt = select(func.count()).where(m_t.c.session_id == sid, *self._scope_exists(sid))

        async def work(conn: AsyncConnection) -> int:
            count = int((await conn.execute(stmt)).scalar_one())
            if count == 0:
                await self._require_session(conn, sid)
            return count

        return await self._run(work, write=False, action="count messages", one_read=True)

    async def record_turn(
        self,
        session_id: uuid.UUID | str,
        messages: Iterable[Mapping[str, Any]],
        *,
        state: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
    ) -> Turn:
        """Store a turn's messages and state snapshot in ONE transaction: all or nothing.

        ``expected_version`` guards the state save as in :meth:`save_state`.
        """
        sid = require_uuid("session_id", session_id)
        checked = self._check_items(messages)
        encoded = None if state is None else self._encode("state", state, allow_none=False)
        expected = check_limit("expected_version", expected_version)
        if expected is not None and encoded is None:
            raise InvalidInputError("expected_version needs a state to save")
        if not checked and encoded is None:
            raise InvalidInputError("a turn needs at least one message or a state")
        stored, saved = await self._write_turn(sid, checked, encoded, expected, "record a turn")
        return Turn(stored, saved)
