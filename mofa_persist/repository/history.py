"""Conversation history: appending messages and turns, reading the context window."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, or_, select, update

from .. import sql
from ..convert import _NewMessage, _now
from ..errors import InvalidInputError
from ..records import Message, RewindResult, Turn
from ..validate import (
    check_limit,
    check_role,
    check_text,
    require_uuid,
)
from . import idempotency
from .core import StoreCore
from .tables import a_t, k_t, m_t, s_t

if TYPE_CHECKING:
    import uuid
    from collections.abc import Iterable, Mapping

    from sqlalchemy.ext.asyncio import AsyncConnection


class HistoryApi(StoreCore):
    """Conversation history: appending messages and turns, reading the context window."""

    async def append_message(
        self,
        session_id: uuid.UUID | str,
        role: str,
        content: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Message:
        """Append one message; it gets the session's next ``seq``.

        With ``idempotency_key``, a retry of this call (same key, same message) stores
        nothing and returns the first call's message; see :mod:`.idempotency`.
        """
        sid = require_uuid("session_id", session_id)
        item = _NewMessage(
            check_role(role), check_text("content", content), self._encode("metadata", metadata)
        )
        key = idempotency.check_key(idempotency_key)
        if key is None:
            return (await self._append(sid, [item], "append a message"))[0]
        messages, _ = await self._write_turn(
            sid, [item], None, None, "append a message", key, "append_message"
        )
        return messages[0]

    async def append_messages(
        self,
        session_id: uuid.UUID | str,
        items: Iterable[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[Message]:
        """Append several messages in one transaction: all of them or none."""
        sid = require_uuid("session_id", session_id)
        checked = self._check_items(items)
        key = idempotency.check_key(idempotency_key)
        if not checked:
            await self._ensure_session(sid)
            return []
        if key is None:
            return await self._append(sid, checked, "append messages")
        messages, _ = await self._write_turn(
            sid, checked, None, None, "append messages", key, "append_messages"
        )
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
            rows = await lane.read(db, text, params)
            if not rows:
                # No rows: an empty session, or none in this view? Also ends what it opened.
                shape = self._scope_shape()
                exists = sql.session_exists_sql(lane.style, shape)
                if not await lane.read(db, exists, [params[0], *self._scope_params()]):
                    raise self._not_found(sid)
                return []
            messages = lane.messages(rows)
            if newest_first:
                messages.reverse()
            return messages

        # SELECTs that end their own transaction (see sql.Lane.read): no BEGIN or COMMIT.
        return await self._run(
            work, write=False, action="read messages", lean=True, own_transaction=True
        )

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
        idempotency_key: str | None = None,
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
        key = idempotency.check_key(idempotency_key)
        if key is None and encoded is None:
            return Turn(await self._append(sid, checked, "record a turn"), None)
        stored, saved = await self._write_turn(
            sid, checked, encoded, expected, "record a turn", key, "record_turn"
        )
        return Turn(stored, saved)

    # ------------------------------------------------------------------ editing history

    async def pop_message(self, session_id: uuid.UUID | str) -> Message | None:
        """Remove and return the newest message (``None`` if there is none).

        The next append gets its ``seq`` again. State snapshots saved after the message was
        written go with it, as in :meth:`rewind`, so history and state agree.
        """
        sid = require_uuid("session_id", session_id)

        async def work(conn: AsyncConnection) -> Message | None:
            await self._lock_session(conn, sid)
            stmt = select(m_t).where(m_t.c.session_id == sid).order_by(m_t.c.seq.desc()).limit(1)
            newest = (await conn.execute(stmt)).first()
            if newest is None:
                return None
            await _cut(conn, sid, newest.seq - 1)
            return Message(**newest._mapping)

        return await self._run(work, write=True, action="pop a message")

    async def rewind(self, session_id: uuid.UUID | str, to_seq: int) -> RewindResult:
        """Delete every message with ``seq > to_seq`` and every state snapshot saved after
        that point, in one transaction; the next append gets ``to_seq + 1``.

        ``to_seq`` above the session's ``last_seq`` is ``InvalidInputError`` (it would leave a
        gap). Appends racing with a rewind wait for it and continue after the cut.
        """
        sid = require_uuid("session_id", session_id)
        cut = check_limit("to_seq", to_seq, optional=False)
        assert cut is not None

        async def work(conn: AsyncConnection) -> RewindResult:
            last_seq = await self._lock_session(conn, sid)
            if cut > last_seq:
                raise InvalidInputError(
                    f"to_seq {cut} is beyond session {sid}'s last seq {last_seq}"
                )
            return await _cut(conn, sid, cut)

        return await self._run(work, write=True, action="rewind a session")

    async def _lock_session(self, conn: AsyncConnection, sid: uuid.UUID) -> int:
        """Lock the session row (appends wait for us) and return its ``last_seq``."""
        stmt = select(s_t.c.last_seq).where(*self._session_filter(sid)).with_for_update()
        last_seq = (await conn.execute(stmt)).scalar()
        if last_seq is None:
            raise self._not_found(sid)
        return int(last_seq)


async def _cut(conn: AsyncConnection, sid: uuid.UUID, cut: int) -> RewindResult:
    """History after ``cut`` goes: messages, the snapshots saved after it, and the keys that
    protected them. The counters step back, so ``seq`` stays gap-free."""
    messages = await conn.execute(delete(m_t).where(m_t.c.session_id == sid, m_t.c.seq > cut))
    states = await conn.execute(delete(a_t).where(a_t.c.session_id == sid, a_t.c.at_seq > cut))
    newest = select(func.coalesce(func.max(a_t.c.version), 0)).where(a_t.c.session_id == sid)
    version = int((await conn.execute(newest)).scalar_one())
    await conn.execute(
        delete(k_t).where(
            k_t.c.session_id == sid, or_(k_t.c.last_seq > cut, k_t.c.state_version > version)
        )
    )
    await conn.execute(
        update(s_t)
        .where(s_t.c.id == sid)
        .values(last_seq=cut, state_version=version, updated_at=_now())
    )
    return RewindResult(sid, cut, version, int(messages.rowcount), int(states.rowcount))
