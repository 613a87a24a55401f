"""A memory service of Google ADK over this library's search index: ``MofaMemoryService(store)``.

It is a ``google.adk.memory.BaseMemoryService``, so ADK's ``load_memory`` and ``preload_memory``
tools search the user's past sessions on any backend::

    runner = Runner(app_name="helpdesk", agent=agent, session_service=MofaSessionService(store),
                    memory_service=MofaMemoryService(store))

Design:

- The memory of an app's user is the events of that user's ADK sessions of that app in the
  store (within the store's view), as :class:`~mofa_persist.integrations.adk.MofaSessionService`
  stores them. A session of that service is stored already, so ``add_session_to_memory`` only
  checks that its newest event is the stored session's newest (one small query); its events are
  searchable as soon as they are appended, the session in progress too.
- A session from another service is stored as that service would store it (same app, user and
  session id; its session-scoped state; app and user state untouched): it then also reads
  through ``MofaSessionService``. Adding it again appends only the events whose ids the stored
  session lacks. ``add_events_to_memory`` does the same for one session (``session_id=None``:
  the session :data:`MEMORY_SESSION`), ``add_memory`` stores each entry as an event there.
- ``search_memory`` works like ADK's ``InMemoryMemoryService``: the query is cut into words
  (runs of letters, digits and ``_``; punctuation and the query language's operators are never
  read, so no text raises), an event matches when its text parts hold any of the words, the
  events holding the most query words come first (ties: newer first), at most
  :data:`MAX_MEMORIES`. Words are whole words, case-insensitive, as in ``search_messages``
  (ADK also matches non-ASCII words inside longer runs, for scripts written without spaces;
  this does not). Each word (the first :data:`MAX_WORDS` distinct ones) asks the native index
  for at most :data:`PER_WORD` events.
- A ``MemoryEntry.id`` is the id of the library message holding the event; ``delete_memory``
  deletes that message (it leaves the session's history too: the memory is the event). Unlike
  ADK's in-memory service, deleted ids are not remembered: adding a session object that still
  holds the event can store it again.

Importing this module needs ADK (``pip install 'mofa-persist[adk]'``).
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

try:
    from google.adk.events.event import Event
    from google.adk.memory import BaseMemoryService
    from google.adk.memory.base_memory_service import SearchMemoryResponse
    from google.adk.memory.memory_entry import MemoryEntry
    from google.adk.sessions._session_util import extract_json_safe_state_delta
except ImportError as error:  # pragma: no cover - exercised in a subprocess without ADK
    raise ImportError(
        "mofa_persist.integrations.adk_memory needs Google ADK: pip install 'mofa-persist[adk]'",
        name=error.name,
    ) from error

from sqlalchemy import delete, insert, select, update

from ..errors import ConflictError, InvalidInputError
from ..ids import uuid7
from ..repository.search import _candidates, _rank_text
from ..searching import fold, parse_query
from ..searching import words as words_of
from .adk import (
    MofaSessionService,
    _at,
    _content_of,
    _event_of,
    _name,
    _role_of,
    a_t,
    m_t,
    s_t,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from google.adk.sessions import Session
    from sqlalchemy import ColumnElement, Row
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..store import Store

__all__ = ["MAX_MEMORIES", "MAX_WORDS", "MEMORY_SESSION", "PER_WORD", "MofaMemoryService"]

#: The most memories one search returns (as ADK's in-memory service).
MAX_MEMORIES = 10
#: The most matching events one query word contributes (the best by the index's rank).
PER_WORD = 100
#: The ADK session id that ``add_events_to_memory`` without a session and ``add_memory`` use.
MEMORY_SESSION = "__mofa_memory__"

#: The most distinct words of one query that are looked up (one index query each).
MAX_WORDS = 64

_BATCH = 500
_WORD = re.compile(r"\w+")


def _text_words(event: Event) -> set[str]:
    """The words of the event's text parts (what ADK's memory matches; not tool calls)."""
    parts = event.content.parts if event.content is not None else None
    text = " ".join(part.text for part in parts or [] if part.text)
    return set(words_of(unicodedata.normalize("NFC", text)))


def _query_words(query: object) -> list[str]:
    """The distinct words of ADK's free text, raw (each parses as a one-word query)."""
    if not isinstance(query, str):
        return []
    text = unicodedata.normalize("NFC", query.replace("\x00", " "))
    seen: dict[str, str] = {}
    for raw in text.split():
        for word in _split_words(raw):
            seen.setdefault(fold(word), word)
    return list(seen.values())[:MAX_WORDS]


def _split_words(text: str) -> list[str]:
    return _WORD.findall(text)


def _timestamp_of(entry: MemoryEntry) -> float:
    """An entry's ISO timestamp (naive: local time, as ADK writes it) as seconds; else now."""
    if entry.timestamp:
        try:
            return datetime.fromisoformat(entry.timestamp).timestamp()
        except (ValueError, OverflowError, OSError):
            pass
    return time.time()


class MofaMemoryService(BaseMemoryService):
    """ADK's ``BaseMemoryService`` over a :class:`mofa_persist.Store` (see the module doc)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._sessions = MofaSessionService(store)

    def __repr__(self) -> str:
        return f"MofaMemoryService({self.store!r})"

    def _owned(self, app: str, user: str) -> list[ColumnElement[bool]]:
        """Messages of the app's user's ADK sessions, within the view."""
        scope = self.store.scope
        tenant = (
            a_t.c.tenant_id.is_(None)
            if scope.tenant_id is None
            else a_t.c.tenant_id == scope.tenant_id
        )
        sessions = (
            select(a_t.c.session_id)
            .join(s_t, s_t.c.id == a_t.c.session_id)
            .where(a_t.c.app_name == app, a_t.c.adk_user_id == user, tenant)
            .where(*self.store._scope_filter())
            .correlate(None)  # its own sessions table, not the enclosing query's
        )
        return [m_t.c.session_id.in_(sessions)]

    # ------------------------------------------------------------------ adding

    async def add_session_to_memory(self, session: Session) -> None:
        """Make the session's events searchable: nothing to write for a session that
        ``MofaSessionService`` stored; another service's session is copied (see module doc)."""
        state = extract_json_safe_state_delta(dict(session.state or {}))["session"]
        await self._ensure(
            session.app_name,
            session.user_id,
            session.id,
            list(session.events),
            state=state,
            update_time=session.last_update_time,
            trust_newest=True,
        )

    async def add_events_to_memory(
        self,
        *,
        app_name: str,
        user_id: str,
        events: Sequence[Event],
        session_id: str | None = None,
        custom_metadata: Mapping[str, object] | None = None,
    ) -> None:
        """Store the events that the session (``None``: :data:`MEMORY_SESSION`) lacks, by
        event id. ``custom_metadata`` is not used."""
        del custom_metadata
        await self._ensure(app_name, user_id, session_id or MEMORY_SESSION, list(events))

    async def add_memory(
        self,
        *,
        app_name: str,
        user_id: str,
        memories: Sequence[MemoryEntry],
        custom_metadata: Mapping[str, object] | None = None,
    ) -> None:
        """Store each entry as an event of :data:`MEMORY_SESSION` (author ``user`` when the
        entry names none), so that searches find it like any other event."""
        del custom_metadata
        events = []
        for entry in memories:
            event = Event(
                invocation_id="",
                author=entry.author or "user",
                content=entry.content.model_copy(deep=True),
                timestamp=_timestamp_of(entry),
            )
            if entry.id:
                event.id = entry.id
            events.append(event)
        await self._ensure(app_name, user_id, MEMORY_SESSION, events)

    async def _ensure(
        self,
        app_name: str,
        user_id: str,
        session_id: str,
        events: list[Event],
        *,
        state: dict[str, Any] | None = None,
        update_time: float | None = None,
        trust_newest: bool = False,
    ) -> None:
        """The stored ADK session holds ``events`` (made when missing, appended to when it
        lacks some). ``trust_newest``: done when its newest event is the given newest."""
        app = _name("app name", app_name)
        user = _name("user id", user_id)
        ident = _name("session id", session_id)
        events = [event for event in events if not event.partial]
        service = self._sessions
        if trust_newest:

            async def look(conn: AsyncConnection) -> tuple[bool, str | None]:
                stored = await service._find(conn, app, user, ident)
                if stored is None:
                    return False, None
                newest = select(m_t.c.metadata).where(m_t.c.session_id == stored.sid)
                row = (await conn.execute(newest.order_by(m_t.c.seq.desc()).limit(1))).first()
                return True, None if row is None else _event_id(row.metadata)

            found, newest_id = await self.store._run(
                look, write=False, action="read an ADK session"
            )
            if found and (not events or events[-1].id == newest_id):
                return
        documents: list[dict[str, Any]] = [
            {
                "role": _role_of(event),
                "content": _content_of(event),
                "metadata": service._encode(
                    "event", {"adk_event": event.model_dump(mode="json", exclude_none=True)}
                ),
                "created_at": _at(event.timestamp),
                "event_id": event.id,
            }
            for event in events
        ]
        encoded_state = service._encode("state", state or {})
        newest_time = max([event.timestamp for event in events], default=None)

        async def work(conn: AsyncConnection) -> None:
            now = datetime.now(UTC)
            stored = await service._find(conn, app, user, ident)
            if stored is None:
                sid = uuid7()
                await service._insert_session_rows(
                    conn,
                    sid,
                    app,
                    user,
                    ident,
                    encoded_state,
                    time.time() if update_time is None else update_time,
                    created_at=now,
                    now=now,
                )
                have: set[str | None] = set()
            else:
                sid = stored.sid
                # The session's row lock first: appends to it wait until this commits.
                lock = update(s_t).where(s_t.c.id == sid).values(last_seq=s_t.c.last_seq)
                await conn.execute(lock)
                rows = await conn.execute(select(m_t.c.metadata).where(m_t.c.session_id == sid))
                have = {_event_id(metadata) for (metadata,) in rows}
            missing = []
            for document in documents:
                if document["event_id"] not in have:
                    have.add(document["event_id"])
                    missing.append(document)
            if not missing:
                return
            bump = update(s_t).where(s_t.c.id == sid)
            await conn.execute(bump.values(last_seq=s_t.c.last_seq + len(missing)))
            last = int(
                (await conn.execute(select(s_t.c.last_seq).where(s_t.c.id == sid))).scalar_one()
            )
            rows_in = [
                {
                    "id": uuid7(),
                    "session_id": sid,
                    "seq": last - len(missing) + offset,
                    **{key: value for key, value in document.items() if key != "event_id"},
                }
                for offset, document in enumerate(missing, 1)
            ]
            for start in range(0, len(rows_in), _BATCH):
                await conn.execute(insert(m_t), rows_in[start : start + _BATCH])
            if newest_time is not None:
                current = select(a_t.c.update_time).where(a_t.c.session_id == sid)
                known = float((await conn.execute(current)).scalar_one())
                if newest_time > known:
                    await conn.execute(
                        update(a_t).where(a_t.c.session_id == sid).values(update_time=newest_time)
                    )

        try:
            await self.store._run(work, write=True, action="add an ADK session to memory")
        except ConflictError:
            # Another caller made the session first: now it is there, append to it.
            await self.store._run(work, write=True, action="add an ADK session to memory")

    # ------------------------------------------------------------------ searching

    async def search_memory(
        self, *, app_name: str, user_id: str, query: str
    ) -> SearchMemoryResponse:
        """The app's user's events holding the most words of ``query`` (any word matches;
        see the module doc). Text that has no words finds nothing; no text raises."""
        app = _name("app name", app_name)
        user = _name("user id", user_id)
        wanted = _query_words(query)
        if not wanted:
            return SearchMemoryResponse()
        parsed_words = []
        for word in wanted:
            try:
                parsed_words.append((fold(word), parse_query(word)))
            except InvalidInputError:  # pragma: no cover - a \w+ run always parses
                continue
        folded = {name for name, _ in parsed_words}
        store = self.store
        ready = await store._search_ready()
        kind = store.url.kind
        filters = self._owned(app, user)

        async def work(conn: AsyncConnection) -> dict[uuid.UUID, tuple[Row[Any], Event, int]]:
            found: dict[uuid.UUID, tuple[Row[Any], Event, int]] = {}
            rejected: set[uuid.UUID] = set()
            for name, parsed in parsed_words:
                kept = 0
                position = None
                batch = 50
                while kept < PER_WORD:
                    stmt = _candidates(kind, parsed, ready, filters, position, batch)
                    rows = (await conn.execute(stmt)).all()
                    for row in rows:
                        position = (_rank_text(row.rank), row.created_at, row.id)
                        if row.id in rejected:
                            continue
                        if row.id in found:
                            kept += 1
                            continue
                        if not parsed.matches(row.content):
                            continue
                        event = _event_of(row)
                        have = _text_words(event)
                        if name not in have:
                            continue
                        count = len(folded & have)
                        if event.content is None or not event.content.parts or not count:
                            rejected.add(row.id)
                            continue
                        found[row.id] = (row, event, count)
                        kept += 1
                        if kept >= PER_WORD:
                            break
                    if len(rows) < batch:
                        break
                    batch = min(batch * 4, 5000)
            return found

        found = await store._run(work, write=False, action="search ADK memory", stale_ok=True)
        best = sorted(
            found.values(),
            key=lambda hit: (-hit[2], -hit[0].created_at.timestamp(), -hit[0].seq),
        )[:MAX_MEMORIES]
        return SearchMemoryResponse(
            memories=[
                MemoryEntry(
                    id=str(row.id),
                    content=event.content,
                    author=event.author,
                    timestamp=datetime.fromtimestamp(event.timestamp).isoformat(),
                )
                for row, event, _ in best
                if event.content is not None
            ]
        )

    # ------------------------------------------------------------------ forgetting

    async def delete_memory(
        self, *, app_name: str, user_id: str, memory_id: str | None = None
    ) -> None:
        """Delete the message a ``MemoryEntry.id`` names, if it is one of the app's user's
        (anything else is no memory of theirs: nothing happens)."""
        app = _name("app name", app_name)
        user = _name("user id", user_id)
        if not memory_id:
            return
        try:
            message_id = uuid.UUID(str(memory_id))
        except ValueError:
            return
        stmt = delete(m_t).where(m_t.c.id == message_id, *self._owned(app, user))

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(stmt)

        await self.store._run(work, write=True, action="delete an ADK memory")


def _event_id(metadata: object) -> str | None:
    stored = metadata.get("adk_event") if isinstance(metadata, dict) else None
    value = stored.get("id") if isinstance(stored, dict) else None
    return value if isinstance(value, str) else None
