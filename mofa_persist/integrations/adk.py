"""A session service of Google ADK kept in a store of this library: ``MofaSessionService(store)``.

It is a ``google.adk.sessions.BaseSessionService``, so it goes wherever ADK takes one::

    runner = Runner(app_name="helpdesk", agent=agent, session_service=MofaSessionService(store))

Mapping:

- An ADK session ``(app_name, user_id, session_id)`` is an ordinary session of this library,
  named through the external-key design (:meth:`mofa_persist.Store.session_for`, namespace
  ``"adk"``, within the store's view). ADK's names are kept exactly (up to 128 characters each,
  as in ADK's own tables) in ``adk_sessions``, with the session-scoped state and ADK's
  ``last_update_time``.
- Each event is one message: role ``user`` for the user's events, ``tool`` for function calls
  and responses, else ``assistant``; the text parts as content (so the CLI shows it); the whole
  event (``model_dump(mode="json", exclude_none=True)``) in ``metadata["adk_event"]``; the
  event's timestamp as ``created_at``. ``seq`` is the order of the session's events.
- App state (``app:`` keys) and user state (``user:`` keys) are rows of ``adk_states``, owned by
  the view; a user-state row belongs to the library user :meth:`MofaSessionService.user_uuid`
  of the ADK user, so ``store.erase_user(service.user_uuid("alice"))`` removes her sessions and
  her ADK user state. ``temp:`` keys are never stored.
- Writers: by default a caller holding an out-of-date copy of a session (another writer
  appended since it was read) gets ADK's ``StaleSessionError``, never a silent merge. With
  ``ordered=True`` every append succeeds and lands after the ones before it (the library's
  gap-free ``seq`` under the session's row lock); state deltas are merged in that order.

Importing this module needs ADK (``pip install 'mofa-persist[adk]'``); the rest of the package
never imports it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

try:
    from google.adk.errors import StaleSessionError
    from google.adk.errors.already_exists_error import AlreadyExistsError
    from google.adk.errors.session_not_found_error import SessionNotFoundError
    from google.adk.events.event import Event
    from google.adk.sessions import BaseSessionService, Session, State
    from google.adk.sessions._session_util import extract_json_safe_state_delta
    from google.adk.sessions.base_session_service import GetSessionConfig, ListSessionsResponse
    from google.genai import types as genai_types
except ImportError as error:  # pragma: no cover - exercised in a subprocess without ADK
    raise ImportError(
        "mofa_persist.integrations.adk needs Google ADK: pip install 'mofa-persist[adk]'",
        name=error.name,
    ) from error

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from ..errors import ConflictError, InvalidInputError
from ..ids import uuid7
from ..keys import adk_state_key, database_key, keyed_digest
from ..models import (
    adk_sessions_table,
    adk_states_table,
    external_keys_table,
    messages_table,
    sessions_table,
)
from ..validate import check_text

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy import ColumnElement, Row
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..store import Store
    from ..validate import EncodedJSON

__all__ = ["CONTENT_PREVIEW_CHARS", "NAMESPACE", "MofaSessionService", "SessionPage"]

T = TypeVar("T")

#: The namespace of :meth:`mofa_persist.Store.session_for` that ADK sessions live in.
NAMESPACE = "adk"
#: Longest app name, user id and session id (ADK's own tables hold 128 characters).
MAX_NAME = 128
#: A message's content shows at most this many characters of the event's text.
CONTENT_PREVIEW_CHARS = 100_000
#: Where ADK user ids become library user ids (when the view names no user): uuid5 of the id.
USER_NAMESPACE = uuid.UUID("6f1c2d9e-4b7a-5e3f-8a1d-0c9b8e7f6a5d")

s_t = sessions_table
m_t = messages_table
x_t = external_keys_table
a_t = adk_sessions_table
st_t = adk_states_table

#: A page of sessions (rows), the app state and the user states of the page's users.
_Listing = tuple[list[Any], dict[str, Any], dict[str, Any]]

_MARKER = "mofa-seq:"
_CURSOR_PREFIX = "adk1."


@dataclass(frozen=True, slots=True)
class SessionPage:
    """One page of :meth:`MofaSessionService.list_sessions_page`: sessions without events, in
    ADK's order, and the cursor of the next page (``None`` after the last)."""

    sessions: list[Session]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class _Stored:
    """A session's row: its library id, seq, session-scoped state and ADK update time."""

    sid: uuid.UUID
    last_seq: int
    state: dict[str, Any]
    update_time: float


def _name(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"an ADK {what} must be a str, not {type(value).__name__}")
    text = check_text(f"ADK {what}", value)
    if not 1 <= len(text) <= MAX_NAME:
        raise InvalidInputError(f"an ADK {what} must be 1 to {MAX_NAME} characters")
    return text


def _external_id(app_name: str, user_id: str, session_id: str) -> str:
    return json.dumps([app_name, user_id, session_id], ensure_ascii=False)


def _marker(last_seq: int) -> str:
    return f"{_MARKER}{last_seq}"


def _seq_of_marker(marker: str | None) -> int | None:
    if marker is None or not marker.startswith(_MARKER):
        return None
    try:
        return int(marker[len(_MARKER) :])
    except ValueError:
        return None


def _at(timestamp: float) -> datetime:
    """An event's timestamp as the message's ``created_at`` (microseconds, UTC)."""
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        raise InvalidInputError(
            f"an event timestamp must be seconds since 1970 within year 1 to 9999, not "
            f"{timestamp!r}"
        ) from None


def _role_of(event: Event) -> str:
    if event.author == "user":
        return "user"
    if event.get_function_calls() or event.get_function_responses():
        return "tool"
    return "assistant"


def _content_of(event: Event) -> str:
    """The event's text for people (CLI, search); the event itself is kept whole elsewhere."""
    said: list[str] = []
    parts = event.content.parts if event.content is not None else None
    for part in parts or []:
        if part.text:
            said.append(part.text)
        elif part.function_call is not None:
            args = json.dumps(part.function_call.args or {}, ensure_ascii=False, default=str)
            said.append(f"{part.function_call.name}({args})")
        elif part.function_response is not None:
            response = json.dumps(
                part.function_response.response or {}, ensure_ascii=False, default=str
            )
            said.append(f"{part.function_response.name} -> {response}")
    text = "\n".join(said)
    if not text:
        text = "[event]" if event.content is None else "[parts]"
    if len(text) > CONTENT_PREVIEW_CHARS:
        text = text[: CONTENT_PREVIEW_CHARS - 1] + "\N{HORIZONTAL ELLIPSIS}"
    return text


def _event_of(row: Row[Any]) -> Event:
    """The event a message stands for; a message written through this library's own API
    reads as an event of its role with its content as text."""
    metadata = row.metadata
    stored = metadata.get("adk_event") if isinstance(metadata, dict) else None
    if isinstance(stored, dict):
        return Event.model_validate(stored)
    role = "user" if row.role == "user" else "model"
    return Event(
        id=str(row.id),
        invocation_id="",
        author="user" if row.role == "user" else str(row.role),
        content=genai_types.Content(role=role, parts=[genai_types.Part(text=row.content)]),
        timestamp=row.created_at.timestamp(),
    )


def _merged(
    session_state: dict[str, Any], app_state: dict[str, Any], user_state: dict[str, Any]
) -> dict[str, Any]:
    merged = dict(session_state)
    for key, value in app_state.items():
        merged[State.APP_PREFIX + key] = value
    for key, value in user_state.items():
        merged[State.USER_PREFIX + key] = value
    return merged


class MofaSessionService(BaseSessionService):
    """ADK's ``BaseSessionService`` over a :class:`mofa_persist.Store` (see the module doc).

    ``ordered=False`` (ADK's behaviour): an append from an out-of-date copy of a session raises
    ``StaleSessionError``. ``ordered=True``: concurrent writers to one session all succeed, in
    the order their transactions take the session's row lock.
    """

    def __init__(self, store: Store, *, ordered: bool = False) -> None:
        self.store = store
        self.ordered = bool(ordered)
        self._kind = store.url.kind

    def __repr__(self) -> str:
        mode = ", ordered=True" if self.ordered else ""
        return f"MofaSessionService({self.store!r}{mode})"

    # ------------------------------------------------------------------ names and owners

    def user_uuid(self, user_id: str) -> uuid.UUID:
        """The library user id that an ADK user's sessions and user state belong to: the
        view's user when the store is a view of one user, else a UUIDv5 of the ADK id (so
        ``store.erase_user(service.user_uuid(id))`` erases that ADK user)."""
        scoped = self.store.scope.user_id
        if scoped is not None:
            return scoped
        return uuid.uuid5(USER_NAMESPACE, _name("user id", user_id))

    def _session_hash(self, app_name: str, user_id: str, session_id: str) -> str:
        return self.store._key_hash(NAMESPACE, _external_id(app_name, user_id, session_id))

    def _state_owner(self, app_name: str, user_id: str | None) -> dict[str, Any]:
        """Owner columns and key of an app-state (``user_id`` None) or user-state row."""
        scope = self.store.scope
        owner = self.user_uuid(user_id) if user_id is not None else scope.user_id
        kind = "app" if user_id is None else "user"
        key_hash = adk_state_key(kind, (scope.tenant_id, owner, scope.agent_id), app_name, user_id)
        return {
            "key_hash": key_hash,
            "kind": kind,
            "tenant_id": scope.tenant_id,
            "user_id": owner,
            "agent_id": scope.agent_id,
            "app_name": app_name,
            "adk_user_id": user_id,
        }

    def _encode(self, name: str, value: dict[str, Any]) -> EncodedJSON:
        return self.store._encode(name, value)

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[T]], action: str) -> T:
        return await self.store._run(work, write=False, action=action)

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[T]], action: str) -> T:
        return await self.store._run(work, write=True, action=action)

    # ------------------------------------------------------------------ SQL pieces

    async def _find(
        self, conn: AsyncConnection, app_name: str, user_id: str, session_id: str
    ) -> _Stored | None:
        stmt = (
            select(s_t.c.id, s_t.c.last_seq, a_t.c.state, a_t.c.update_time)
            .join(x_t, x_t.c.session_id == s_t.c.id)
            .join(a_t, a_t.c.session_id == s_t.c.id)
            .where(
                x_t.c.key_hash == self._session_hash(app_name, user_id, session_id),
                *self.store._scope_filter(),
            )
        )
        row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        return _Stored(row.id, int(row.last_seq), dict(row.state), float(row.update_time))

    async def _read_state(
        self, conn: AsyncConnection, app_name: str, user_id: str | None
    ) -> dict[str, Any]:
        key_hash = self._state_owner(app_name, user_id)["key_hash"]
        stmt = select(st_t.c.state).where(st_t.c.key_hash == key_hash)
        found = (await conn.execute(stmt)).scalar_one_or_none()
        return {} if found is None else dict(found)

    async def _read_states(
        self, conn: AsyncConnection, app_name: str, user_id: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The app's and the user's state, in one query."""
        app_hash = self._state_owner(app_name, None)["key_hash"]
        user_hash = self._state_owner(app_name, user_id)["key_hash"]
        stmt = select(st_t.c.key_hash, st_t.c.state).where(
            st_t.c.key_hash.in_([app_hash, user_hash])
        )
        found = {row.key_hash: dict(row.state) for row in await conn.execute(stmt)}
        return found.get(app_hash, {}), found.get(user_hash, {})

    async def _insert_session_rows(
        self,
        conn: AsyncConnection,
        sid: uuid.UUID,
        app: str,
        user: str,
        ident: str,
        encoded_state: Any,
        update_time: float,
        *,
        created_at: datetime,
        now: datetime,
        last_seq: int = 0,
    ) -> None:
        """An ADK session's three rows: the library session, its external key (unique: a second
        session of one id fails here) and its ``adk_sessions`` row. One shape for
        :meth:`create_session`, the importer and the memory service's copies."""
        scope = self.store.scope
        external = _external_id(app, user, ident)
        await conn.execute(
            insert(s_t),
            {
                "id": sid,
                "user_id": self.user_uuid(user),
                "tenant_id": scope.tenant_id,
                "agent_id": scope.agent_id,
                "title": f"{app}/{user}/{ident}"[:500],
                "metadata": self._encode("metadata", {"adk": {"app_name": app}}),
                "last_seq": last_seq,
                "state_version": 0,
                "created_at": created_at,
                "updated_at": now,
            },
        )
        await conn.execute(
            insert(x_t),
            {
                "id": uuid7(),
                "key_hash": self.store._key_hash(NAMESPACE, external),
                "namespace": NAMESPACE,
                "external_id": external,
                "session_id": sid,
                "created_at": now,
            },
        )
        await conn.execute(
            insert(a_t),
            {
                "id": uuid7(),
                "session_id": sid,
                "tenant_id": scope.tenant_id,
                "app_name": app,
                "adk_user_id": user,
                "adk_session_id": ident,
                "state": encoded_state,
                "update_time": update_time,
                "created_at": now,
            },
        )

    async def _merge_state(
        self,
        conn: AsyncConnection,
        app_name: str,
        user_id: str | None,
        delta: dict[str, Any],
        now: datetime,
    ) -> None:
        """Apply ``delta`` to an app- or user-state row (made on first use), under its lock."""
        owner = self._state_owner(app_name, user_id)
        values = {**owner, "id": uuid7(), "state": self._encode("state", {}), "updated_at": now}
        if self._kind == "postgresql":
            await conn.execute(pg_dialect.insert(st_t).values(values).on_conflict_do_nothing())
        elif self._kind == "mysql":
            await conn.execute(mysql_dialect.insert(st_t).values(values).prefix_with("IGNORE"))
        else:
            await conn.execute(sqlite_dialect.insert(st_t).values(values).on_conflict_do_nothing())
        stmt = select(st_t.c.state).where(st_t.c.key_hash == owner["key_hash"]).with_for_update()
        current = dict((await conn.execute(stmt)).scalar_one())
        current.update(delta)
        await conn.execute(
            update(st_t)
            .where(st_t.c.key_hash == owner["key_hash"])
            .values(state=self._encode("state", current), updated_at=now)
        )

    def _session(
        self,
        app_name: str,
        user_id: str,
        session_id: str,
        state: dict[str, Any],
        update_time: float,
        last_seq: int,
        events: list[Event] | None = None,
    ) -> Session:
        session = Session(
            id=session_id,
            app_name=app_name,
            user_id=user_id,
            state=state,
            events=events or [],
            last_update_time=update_time,
        )
        session._storage_update_marker = _marker(last_seq)
        return session

    # ------------------------------------------------------------------ the service

    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        """A new session; an id is made when none is given. An id in use is
        ``AlreadyExistsError``, also when two callers race for it."""
        app = _name("app name", app_name)
        user = _name("user id", user_id)
        ident = _name("session id", session_id) if session_id is not None else str(uuid.uuid4())
        if state is not None and not isinstance(state, dict):
            raise InvalidInputError(f"state must be a dict, not {type(state).__name__}")
        deltas = extract_json_safe_state_delta(state or {})
        session_state = self._encode("state", deltas["session"])
        for scope_name in ("app", "user"):
            self._encode(f"{scope_name} state", deltas[scope_name])
        now = datetime.now(UTC)
        update_time = time.time()
        sid = uuid7()

        async def work(conn: AsyncConnection) -> tuple[dict[str, Any], dict[str, Any]]:
            # The unique external key: a second session of this id loses here (ConflictError).
            await self._insert_session_rows(
                conn, sid, app, user, ident, session_state, update_time, created_at=now, now=now
            )
            if deltas["app"]:
                await self._merge_state(conn, app, None, deltas["app"], now)
            if deltas["user"]:
                await self._merge_state(conn, app, user, deltas["user"], now)
            return await self._read_states(conn, app, user)

        if session_id is not None:
            existing = await self._read(
                lambda conn: self._find(conn, app, user, ident), "read an ADK session"
            )
            if existing is not None:
                raise AlreadyExistsError(f"Session with id {ident} already exists.")
        try:
            app_state, user_state = await self._write(work, "create an ADK session")
        except ConflictError:
            raise AlreadyExistsError(f"Session with id {ident} already exists.") from None
        return self._session(
            app, user, ident, _merged(deltas["session"], app_state, user_state), update_time, 0
        )

    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> Session | None:
        """The session with its events and merged state; ``None`` when there is none (or it
        belongs to another user or app). ``config`` limits the events in the query."""
        app = _name("app name", app_name)
        user = _name("user id", user_id)
        ident = _name("session id", session_id)
        newest = config.num_recent_events if config is not None else None
        after = config.after_timestamp if config is not None else None
        after_at: datetime | None = None
        if after is not None:
            try:
                after_at = _at(after)
            except InvalidInputError:
                if not after < 0:  # later than any stored event (or NaN, as ADK compares)
                    newest = 0

        async def work(conn: AsyncConnection) -> Session | None:
            # The row first: events read after it are never older than its marker.
            stored = await self._find(conn, app, user, ident)
            if stored is None:
                return None
            events: list[Event] = []
            if newest != 0:
                stmt = select(m_t.c.id, m_t.c.role, m_t.c.content, m_t.c.metadata, m_t.c.created_at)
                stmt = stmt.where(m_t.c.session_id == stored.sid)
                if after_at is not None:
                    stmt = stmt.where(m_t.c.created_at >= after_at)
                stmt = stmt.order_by(m_t.c.seq.desc())
                if newest is not None:
                    stmt = stmt.limit(newest)
                rows = list(await conn.execute(stmt))
                events = [_event_of(row) for row in reversed(rows)]
            app_state, user_state = await self._read_states(conn, app, user)
            return self._session(
                app,
                user,
                ident,
                _merged(stored.state, app_state, user_state),
                stored.update_time,
                stored.last_seq,
                events,
            )

        return await self._read(work, "read an ADK session")

    async def list_sessions(
        self, *, app_name: str, user_id: str | None = None
    ) -> ListSessionsResponse:
        """All sessions of the app (of one user, or of all users with ``user_id=None``),
        oldest update first, with merged state and no events. For many sessions use
        :meth:`list_sessions_page`."""
        sessions: list[Session] = []
        cursor: str | None = None
        while True:
            page = await self.list_sessions_page(
                app_name=app_name, user_id=user_id, limit=1000, cursor=cursor
            )
            sessions.extend(page.sessions)
            if page.next_cursor is None:
                return ListSessionsResponse(sessions=sessions)
            cursor = page.next_cursor

    async def list_sessions_page(
        self,
        *,
        app_name: str,
        user_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page of :meth:`list_sessions`, by keyset: each page is one index range scan, so
        its cost does not grow with the number of sessions. Pass ``next_cursor`` unchanged."""
        app = _name("app name", app_name)
        user = None if user_id is None else _name("user id", user_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidInputError("limit must be an integer from 1 to 10000")
        key = await database_key(self.store)
        binding = self._cursor_binding(app, user)
        after = None if cursor is None else _decode_cursor(key, binding, cursor)
        filters: list[ColumnElement[bool]] = [a_t.c.app_name == app, *self.store._scope_filter()]
        scope = self.store.scope
        # The sessions this view can name (a store with no tenant: those made without one),
        # and the leading column of the listing indexes.
        if scope.tenant_id is not None:
            filters.append(a_t.c.tenant_id == scope.tenant_id)
        else:
            filters.append(a_t.c.tenant_id.is_(None))
        if user is not None:
            filters.append(a_t.c.adk_user_id == user)
        if after is not None:
            at, after_user, after_id = after
            # The first condition alone bounds the index range; the second picks within it.
            filters.append(a_t.c.update_time >= at)
            filters.append(
                or_(
                    a_t.c.update_time > at,
                    and_(
                        a_t.c.update_time == at,
                        or_(
                            a_t.c.adk_user_id > after_user,
                            and_(a_t.c.adk_user_id == after_user, a_t.c.adk_session_id > after_id),
                        ),
                    ),
                )
            )
        stmt = (
            select(
                a_t.c.adk_user_id,
                a_t.c.adk_session_id,
                a_t.c.state,
                a_t.c.update_time,
                s_t.c.last_seq,
            )
            .join(s_t, s_t.c.id == a_t.c.session_id)
            .where(*filters)
            .order_by(a_t.c.update_time, a_t.c.adk_user_id, a_t.c.adk_session_id)
            .limit(limit + 1)
        )

        async def work(conn: AsyncConnection) -> _Listing:
            rows = list(await conn.execute(stmt))
            app_state = await self._read_state(conn, app, None)
            users = sorted({str(row.adk_user_id) for row in rows[:limit]})
            hashes = {self._state_owner(app, name)["key_hash"]: name for name in users}
            user_states: dict[str, Any] = {}
            if hashes:
                found = select(st_t.c.key_hash, st_t.c.state).where(st_t.c.key_hash.in_(hashes))
                for row in await conn.execute(found):
                    user_states[hashes[row.key_hash]] = dict(row.state)
            return rows, app_state, user_states

        rows, app_state, user_states = await self.store._run(
            work, write=False, action="list ADK sessions", stale_ok=True
        )
        more = len(rows) > limit
        rows = rows[:limit]
        sessions = [
            self._session(
                app,
                str(row.adk_user_id),
                str(row.adk_session_id),
                _merged(dict(row.state), app_state, user_states.get(str(row.adk_user_id), {})),
                float(row.update_time),
                int(row.last_seq),
            )
            for row in rows
        ]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = _encode_cursor(
                key,
                binding,
                float(last.update_time),
                str(last.adk_user_id),
                str(last.adk_session_id),
            )
        return SessionPage(sessions, next_cursor)

    def _cursor_binding(self, app_name: str, user_id: str | None) -> str:
        scope = self.store.scope
        view = "|".join(
            "" if value is None else value.hex
            for value in (scope.tenant_id, scope.user_id, scope.agent_id)
        )
        return json.dumps([view, app_name, user_id], ensure_ascii=False)

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        """Delete the session and its events (nothing happens when there is none). App and
        user state stay."""
        app = _name("app name", app_name)
        user = _name("user id", user_id)
        ident = _name("session id", session_id)

        async def work(conn: AsyncConnection) -> None:
            stored = await self._find(conn, app, user, ident)
            if stored is not None:
                await conn.execute(delete(s_t).where(s_t.c.id == stored.sid))

        await self._write(work, "delete an ADK session")

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        """The user's state in the app, without the ``user:`` prefix (``{}`` when none)."""
        app = _name("app name", app_name)
        user = _name("user id", user_id)
        return await self._read(
            lambda conn: self._read_state(conn, app, user), "read ADK user state"
        )

    async def append_event(self, session: Session, event: Event) -> Event:
        """Store ``event`` (a partial one is not stored) and apply it to ``session``.

        ``temp:`` keys reach the in-memory session only. An unknown session is
        ``SessionNotFoundError``; a ``session`` read before another writer's append is
        ``StaleSessionError`` (unless the service is ``ordered``).
        """
        if event.partial:
            return event
        app = _name("app name", session.app_name)
        user = _name("user id", session.user_id)
        ident = _name("session id", session.id)
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        deltas = extract_json_safe_state_delta(event.actions.state_delta or {})
        for scope_name in ("app", "user", "session"):
            self._encode(f"{scope_name} state", deltas[scope_name])
        document = self._encode(
            "event", {"adk_event": event.model_dump(mode="json", exclude_none=True)}
        )
        role = _role_of(event)
        content = check_text("event text", _content_of(event))
        created_at = _at(event.timestamp)
        expected = None if self.ordered else _seq_of_marker(session._storage_update_marker)
        check_last_event = not self.ordered and expected is None
        last_event_id = session.events[-1].id if session.events else None
        now = datetime.now(UTC)

        async def work(conn: AsyncConnection) -> int:
            stored = await self._find(conn, app, user, ident)
            if stored is None:
                raise SessionNotFoundError(f"Session {ident} not found.")
            # The session's row lock, held until commit: appends to one session queue here.
            # A locking read, then the update: MariaDB's conditional UPDATE under READ
            # COMMITTED can skip a row another writer holds and report 0 rows, which would
            # be a false StaleSessionError; a locking read waits instead.
            locked = select(s_t.c.last_seq).where(s_t.c.id == stored.sid).with_for_update()
            last_seq = int((await conn.execute(locked)).scalar_one())
            wanted = expected
            if check_last_event:
                wanted = await self._seq_of_event(conn, stored.sid, last_event_id)
            if wanted is not None and wanted != last_seq:
                raise StaleSessionError(
                    "The session has been modified in storage since it was loaded. "
                    "Please reload the session before appending more events."
                )
            seq = last_seq + 1
            bump = update(s_t).where(s_t.c.id == stored.sid)
            await conn.execute(bump.values(last_seq=seq, updated_at=now))
            await conn.execute(
                insert(m_t),
                {
                    "id": uuid7(),
                    "session_id": stored.sid,
                    "seq": seq,
                    "role": role,
                    "content": content,
                    "metadata": document,
                    "created_at": created_at,
                },
            )
            # Read again under the lock: in ordered mode another writer may have changed it.
            state_of = select(a_t.c.state).where(a_t.c.session_id == stored.sid)
            current = (await conn.execute(state_of.with_for_update())).scalar_one()
            values: dict[str, Any] = {"update_time": event.timestamp}
            if deltas["session"]:
                values["state"] = self._encode("state", {**dict(current), **deltas["session"]})
            await conn.execute(update(a_t).where(a_t.c.session_id == stored.sid).values(values))
            if deltas["app"]:
                await self._merge_state(conn, app, None, deltas["app"], now)
            if deltas["user"]:
                await self._merge_state(conn, app, user, deltas["user"], now)
            return seq

        seq = await self._write(work, "append an ADK event")
        session.last_update_time = event.timestamp
        session._storage_update_marker = _marker(seq)
        return self._commit_event_to_session(session, event)

    async def _seq_of_event(
        self, conn: AsyncConnection, sid: uuid.UUID, event_id: str | None
    ) -> int:
        """For a session object this service did not make (no marker): the seq its newest
        event was stored at, so that the append goes through only if nothing came after."""
        newest = select(m_t.c.seq, m_t.c.metadata).where(m_t.c.session_id == sid)
        row = (await conn.execute(newest.order_by(m_t.c.seq.desc()).limit(1))).first()
        if row is None:
            return 0 if event_id is None else -1
        stored = row.metadata.get("adk_event") if isinstance(row.metadata, dict) else None
        if event_id is not None and isinstance(stored, dict) and stored.get("id") == event_id:
            return int(row.seq)
        return -1

    # ------------------------------------------------------------------ helpers for callers

    async def library_session_id(
        self, *, app_name: str, user_id: str, session_id: str
    ) -> uuid.UUID | None:
        """The id of this library's session that holds an ADK session (``None``: none)."""
        app = _name("app name", app_name)
        user = _name("user id", user_id)
        ident = _name("session id", session_id)
        stored = await self._read(lambda conn: self._find(conn, app, user, ident), "find")
        return None if stored is None else stored.sid


def _encode_cursor(key: bytes, binding: str, at: float, user_id: str, session_id: str) -> str:
    position = json.dumps([at.hex(), user_id, session_id], ensure_ascii=False)
    mac = keyed_digest(key, "adk-cursor", binding, position)[:32]
    raw = json.dumps([position, mac]).encode()
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(key: bytes, binding: str, cursor: object) -> tuple[float, str, str]:
    malformed = "cursor is malformed: pass a page's next_cursor unchanged"
    if not isinstance(cursor, str) or not cursor.startswith(_CURSOR_PREFIX):
        raise InvalidInputError(malformed)
    body = cursor[len(_CURSOR_PREFIX) :]
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        if base64.urlsafe_b64encode(data).decode().rstrip("=") != body:
            raise ValueError("not the canonical encoding")
        position, mac = json.loads(data)
        expected = keyed_digest(key, "adk-cursor", binding, position)[:32]
        if not isinstance(mac, str) or not hmac.compare_digest(mac, expected):
            raise InvalidInputError(
                "cursor does not belong to this listing: pass a page's next_cursor unchanged, "
                "to the same view with the same app and user"
            )
        at_hex, user_id, session_id = json.loads(position)
        return float.fromhex(at_hex), str(user_id), str(session_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as error:
        if isinstance(error, InvalidInputError):
            raise
        raise InvalidInputError(malformed) from None
