"""Sessions: create, read, update, delete and list (keyset pages bound to the view)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select, update

from .. import sql, writes
from ..convert import _loads, _now, _session_record
from ..cursor import decode_cursor, encode_cursor
from ..errors import ConflictError, InvalidInputError
from ..ids import uuid7
from ..keys import database_key
from ..records import Page, Session
from ..validate import (
    check_limit,
    check_title,
    coerce_uuid,
    encode_document,
    require_uuid,
)
from .core import UNSET, StoreCore, _Unset
from .tables import DEFAULT_PAGE, a_t, m_t, s_t

if TYPE_CHECKING:
    import uuid
    from collections.abc import Mapping

    from sqlalchemy import Table
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..backend import _Backend


class SessionsApi(StoreCore):
    """Sessions: create, read, update, delete and list (keyset pages bound to the view)."""

    async def create_session(
        self,
        *,
        user_id: uuid.UUID | str | None = None,
        tenant_id: uuid.UUID | str | None = None,
        agent_id: uuid.UUID | str | None = None,
        session_id: uuid.UUID | str | None = None,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Session:
        """Create a session (id: ``session_id`` or a new UUIDv7).

        Raises ``ConflictError`` if ``session_id`` is already taken (anywhere: session ids are
        global, so this is the one thing a view learns about ids outside it).
        """
        tenant = self._in_scope("tenant_id", coerce_uuid("tenant_id", tenant_id, optional=True))
        user = self._in_scope("user_id", coerce_uuid("user_id", user_id, optional=True))
        agent = self._in_scope("agent_id", coerce_uuid("agent_id", agent_id, optional=True))
        new_id = coerce_uuid("session_id", session_id, optional=True) or uuid7()
        checked_title = check_title(title)
        meta = self._encode("metadata", metadata)
        now = _now()
        values = {
            "id": new_id,
            "user_id": user,
            "tenant_id": tenant,
            "agent_id": agent,
            "title": checked_title,
            "metadata": meta,
            "last_seq": 0,
            "state_version": 0,
            "created_at": now,
            "updated_at": now,
        }

        async def work(conn: AsyncConnection) -> None:
            await writes.execute_fitted(self._backend, conn, insert(s_t), values)

        try:
            await self._run(work, write=True, action="create a session")
        except ConflictError:
            # The same answer inside a view or not: see docs/lifecycle.md, "What a view learns".
            raise ConflictError(f"session id {new_id} is taken") from None
        return Session(
            id=new_id,
            user_id=user,
            tenant_id=tenant,
            agent_id=agent,
            title=checked_title,
            metadata=_loads(meta),
            created_at=now,
            updated_at=now,
        )

    async def get_session(self, session_id: uuid.UUID | str) -> Session:
        """The session; ``NotFoundError`` if it does not exist or is outside the scope."""
        sid = require_uuid("session_id", session_id)

        lane = self._backend.lane
        text = sql.get_session_sql(lane.style, self._scope_shape())
        params = [lane.uuid_in(sid), *self._scope_params()]

        async def work(db: Any) -> Session:
            rows = await lane.read(db, text, params)
            if not rows:
                raise self._not_found(sid)
            return lane.sessions(rows)[0]

        # One SELECT that ends its own transaction (see sql.Lane.read): no BEGIN or COMMIT.
        return await self._run(
            work, write=False, action="read a session", lean=True, own_transaction=True
        )

    async def update_session(
        self,
        session_id: uuid.UUID | str,
        *,
        title: str | _Unset | None = UNSET,
        metadata: Mapping[str, Any] | _Unset = UNSET,
    ) -> Session:
        """Change the title and/or replace the metadata; ``updated_at`` moves.

        An argument left out (its default, :data:`UNSET`) is not changed. ``title=None``
        removes the title; metadata is replaced whole by the dict given (``{}`` empties it),
        and ``metadata=None`` is refused, so that nothing is cleared by accident.
        """
        sid = require_uuid("session_id", session_id)
        values: dict[str, Any] = {"updated_at": _now()}
        if not isinstance(title, _Unset):
            values["title"] = check_title(title)
        if not isinstance(metadata, _Unset):
            if metadata is None:
                raise InvalidInputError(
                    "metadata=None is refused: pass {} to empty the metadata, or leave the "
                    "argument out to keep it"
                )
            values["metadata"] = self._encode("metadata", metadata)

        async def work(conn: AsyncConnection) -> Session:
            stmt = update(s_t).where(*self._session_filter(sid))
            if (await writes.execute_fitted(self._backend, conn, stmt, values)).rowcount == 0:
                await self._require_locked(conn, sid)
                await writes.execute_fitted(self._backend, conn, stmt, values)
            row = (await conn.execute(select(s_t).where(s_t.c.id == sid))).one()
            return _session_record(row)

        return await self._run(work, write=True, action="update a session")

    async def _require_locked(self, conn: AsyncConnection, sid: uuid.UUID) -> None:
        """After a statement on one session matched no row: ``NotFoundError`` unless the
        session exists in the view, whose row lock this transaction then holds. MariaDB under
        READ COMMITTED can skip a row another writer holds and report 0 rows; the locking read
        waits for that writer instead, so the statement can be run again."""
        found = select(s_t.c.id).where(*self._session_filter(sid)).with_for_update()
        if (await conn.execute(found)).first() is None:
            raise self._not_found(sid)

    async def delete_session(self, session_id: uuid.UUID | str) -> None:
        """Delete the session with its messages and states (one statement, cascading)."""
        sid = require_uuid("session_id", session_id)

        async def work(conn: AsyncConnection) -> None:
            stmt = delete(s_t).where(*self._session_filter(sid))
            if (await conn.execute(stmt)).rowcount == 0:
                await self._require_locked(conn, sid)
                await conn.execute(stmt)

        await self._run(work, write=True, action="delete a session")

    async def list_sessions(
        self,
        *,
        user_id: uuid.UUID | str | None = None,
        tenant_id: uuid.UUID | str | None = None,
        agent_id: uuid.UUID | str | None = None,
        parent_session_id: uuid.UUID | str | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page[Session]:
        """Sessions newest ``updated_at`` first, one page at a time (keyset pagination).

        Filters combine with AND and with the store's scope. ``next_cursor`` is ``None`` on
        the last page. A page costs the same however many sessions are stored.
        """
        lane = self._backend.lane
        columns: list[str] = []
        params: list[Any] = []
        for name, scoped in self._scope.owners():
            columns.append(name)
            params.append(lane.uuid_in(scoped))
        asked: list[str] = []
        for name, value in (
            ("user_id", user_id),
            ("tenant_id", tenant_id),
            ("agent_id", agent_id),
            ("parent_session_id", parent_session_id),  # the forks of one session
        ):
            checked = coerce_uuid(name, value, optional=True)
            if checked is not None:
                columns.append(name)
                params.append(lane.uuid_in(checked))
                asked.append(f"{name}={checked}")
        page_size = check_limit("limit", limit, optional=False)
        assert page_size is not None
        # What a cursor is bound to: this view and these filters (see mofa_persist.cursor).
        binding = f"list_sessions|{self._scope.describe()}|{','.join(asked)}"
        # The key is cached on the backend after the first call: no coroutine then.
        key = self._backend.key
        if key is None:
            key = await database_key(self) if cursor is not None or page_size > 0 else b""
        if cursor is not None:
            after_updated, after_id = decode_cursor(key, binding, cursor)
            stamp = lane.time_in(after_updated)
            params += [stamp, stamp, lane.uuid_in(after_id)]
        if page_size == 0:
            return Page([], None)
        params.append(page_size + 1)
        text = sql.list_sessions_sql(lane.style, tuple(columns), cursor is not None)

        async def work(db: Any) -> Page[Session]:
            rows = await lane.read(db, text, params)
            items = lane.sessions(rows[:page_size])
            next_cursor = None
            if len(rows) > page_size:
                last = items[-1]
                next_cursor = encode_cursor(key, binding, last.updated_at, last.id)
            return Page(items, next_cursor)

        return await self._run(
            work,
            write=False,
            action="list sessions",
            lean=True,
            own_transaction=True,  # one SELECT that ends its own transaction (sql.Lane.read)
            stale_ok=True,
        )

    async def fork_session(
        self,
        session_id: uuid.UUID | str,
        *,
        at_seq: int | None = None,
        title: str | None = None,
        user_id: uuid.UUID | str | None = None,
        agent_id: uuid.UUID | str | None = None,
        batch_size: int = 1000,
    ) -> Session:
        """A new session holding copies of the messages up to ``at_seq`` (default: all) and
        the state snapshots saved by then; it records ``parent_session_id`` and
        ``forked_at_seq``. Same tenant, user and agent unless ``user_id``/``agent_id`` say
        otherwise (within the view). One transaction; one read and one insert per batch of
        ``batch_size`` messages, however long the history.
        """
        sid = require_uuid("session_id", session_id)
        wanted = check_limit("at_seq", at_seq)
        checked_title = None if title is None else check_title(title)
        user = self._in_scope("user_id", coerce_uuid("user_id", user_id, optional=True))
        agent = self._in_scope("agent_id", coerce_uuid("agent_id", agent_id, optional=True))
        batch = check_limit("batch_size", batch_size, optional=False)
        if not batch:
            raise InvalidInputError("batch_size must be a positive integer")
        new_id = uuid7()
        exact = self._backend.url.kind == "postgresql"

        async def work(conn: AsyncConnection) -> Session:
            stmt = select(s_t).where(*self._session_filter(sid)).with_for_update()
            parent = (await conn.execute(stmt)).first()
            if parent is None:
                raise self._not_found(sid)
            cut = parent.last_seq if wanted is None else wanted
            if cut > parent.last_seq:
                raise InvalidInputError(
                    f"at_seq {cut} is beyond session {sid}'s last seq {parent.last_seq}"
                )
            now = _now()
            newest = select(func.coalesce(func.max(a_t.c.version), 0)).where(
                a_t.c.session_id == sid, a_t.c.at_seq <= cut
            )
            version = int((await conn.execute(newest)).scalar_one())
            values = {
                "id": new_id,
                "tenant_id": parent.tenant_id,
                "user_id": user if user is not None else parent.user_id,
                "agent_id": agent if agent is not None else parent.agent_id,
                "title": checked_title if title is not None else parent.title,
                "metadata": encode_document("metadata", parent.metadata, exact_floats=exact),
                "last_seq": cut,
                "state_version": version,
                "created_at": now,
                "updated_at": now,
                "parent_session_id": sid,
                "forked_at_seq": cut,
            }
            await writes.execute_fitted(self._backend, conn, insert(s_t), values)
            for table, order, bound in (
                (m_t, m_t.c.seq, m_t.c.seq),
                (a_t, a_t.c.version, a_t.c.at_seq),
            ):
                await _copy_rows(
                    self._backend,
                    conn,
                    table,
                    order,
                    [table.c.session_id == sid, bound <= cut],
                    new_id,
                    batch,
                    exact,
                )
            row = (await conn.execute(select(s_t).where(s_t.c.id == new_id))).one()
            return _session_record(row)

        return await self._run(work, write=True, action="fork a session")


async def _copy_rows(
    backend: _Backend,
    conn: AsyncConnection,
    table: Table,
    order: Any,
    where: list[Any],
    new_session: uuid.UUID,
    batch: int,
    exact: bool,
) -> None:
    """Copy rows to ``new_session`` with new ids, a keyset page per round trip."""
    after: Any = None
    while True:
        stmt = select(table).where(*where)
        if after is not None:
            stmt = stmt.where(order > after)
        rows = (await conn.execute(stmt.order_by(order).limit(batch))).mappings().all()
        if not rows:
            return
        copies = []
        for row in rows:
            copy = dict(row)
            copy["id"] = uuid7()
            copy["session_id"] = new_session
            for name in ("metadata", "state"):
                if name in copy:
                    copy[name] = encode_document(name, copy[name], exact_floats=exact)
            copies.append(copy)
        await writes.insert_rows(backend, conn, table, copies)
        after = rows[-1][order.key]
