"""The repository layer: the session API that agents use, over one ``AsyncEngine``.

One class does the work for every backend; the MoFA names (``PostgresStore``, ``MySqlStore``,
``SqliteStore``, ``MemoryStore``) only choose which URLs they accept. Dialect differences are
small flags read off the engine's dialect.

Every public method is one unit of work: validate, then one transaction, then translate any
failure into :mod:`mofa_persist.errors`. Writes that lose a lock race (deadlock, serialization
failure, lock timeout, SQLite busy) are retried by :mod:`mofa_persist.runner`, because their
transaction was rolled back whole; a failure while committing is never retried, because the
outcome is unknown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self, cast

from sqlalchemy import and_, delete, exists, func, insert, select, update

from . import lifecycle, runner, sql, writes
from . import migrate as migrations
from .backend import Replica, scope_filter, scope_params, scope_shape, session_filter
from .backend import ReplicaStatus as ReplicaStatus
from .backend import Scope as Scope
from .backend import _Backend as _Backend
from .convert import _loads, _NewMessage, _now, _session_record, _state_record
from .cursor import decode_cursor, encode_cursor
from .engine import create_engine
from .errors import (
    BackendError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PersistenceError,
)
from .ids import uuid7
from .keys import database_key
from .lifecycle import RetentionPolicy, RetentionReport
from .models import agent_state_table, api_calls_table, messages_table, sessions_table
from .records import (
    API_CALL_STATUSES,
    AgentState,
    ApiCall,
    Message,
    Page,
    Session,
    Turn,
    Usage,
)
from .translate import DRIVER_ERRORS, to_backend_error
from .urls import DatabaseUrl, Kind, parse_url, parse_urls
from .validate import (
    EncodedJSON,
    check_limit,
    check_role,
    check_text,
    check_title,
    coerce_uuid,
    encode_document,
    require_uuid,
)

if TYPE_CHECKING:
    import uuid
    from types import TracebackType

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql.elements import ColumnElement

    from .runner import LeanWork, T, Work


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()

_DEFAULT_PAGE = 50

s_t = sessions_table
m_t = messages_table
a_t = agent_state_table
c_t = api_calls_table


class Store:
    """Sessions, messages and agent state in one database.

    Get one with ``await Store.connect(url)`` (or :func:`mofa_persist.connect`); use it as an
    async context manager or call :meth:`close`. It is safe to share between tasks.
    """

    #: Backends this class accepts; ``None`` accepts all.
    accepted_kinds: ClassVar[tuple[Kind, ...] | None] = None
    #: URL used when none is given and ``DATABASE_URL`` is unset.
    default_url: ClassVar[str | None] = "memory://"

    def __init__(
        self,
        backend: _Backend,
        scope: Scope | None = None,
        *,
        owner: bool = True,
        stale_reads: bool = True,
    ):
        self._backend = backend
        self._scope = scope or Scope()
        self._owner = owner
        #: Whether reads that may lag (listings, usage, exports) may use a read replica.
        self._stale_reads = stale_reads
        self._exact_floats = backend.url.kind == "postgresql"

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(
        cls,
        url: str | Sequence[str] | None = None,
        *,
        migrate: bool = True,
        connect_timeout: float = 10.0,
        pool_size: int = 10,
        max_overflow: int = 10,
        call_timeout: float | None = 30.0,
        read_replicas: Sequence[str] | None = None,
    ) -> Self:
        """Connect to ``url`` (default: ``DATABASE_URL``, else ``default_url``).

        With ``migrate=True`` the schema is brought to the newest revision first, under a
        lock, so many processes may connect to a fresh database at once. Raises
        ``InvalidInputError`` for a URL this class does not accept and ``BackendError`` when
        the database cannot be reached within ``connect_timeout`` seconds.

        ``call_timeout`` bounds every later call on a server backend, retries included: a
        server that stops answering makes the call raise ``BackendError`` after that many
        seconds instead of hanging (``None``: no bound).

        ``url`` may name several nodes of a cluster (``mysql://u@n1:3306,n2:3306/db`` or a list
        of URLs): connections go to the first node that answers and move on when it fails.
        ``read_replicas`` (server backends) take the reads that may lag behind the latest
        writes: :meth:`list_sessions`, :meth:`usage`, exports and stats. Reads that must see
        the caller's own writes (messages, state, sessions by id) and all writes stay on
        ``url``; a replica that fails is skipped for a few seconds. See docs/scaling.md.
        """
        if url is None:
            url = os.environ.get("DATABASE_URL") or cls.default_url
            if url is None:
                raise InvalidInputError(f"{cls.__name__}.connect() needs a URL or DATABASE_URL")
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)):
            raise InvalidInputError("connect_timeout must be a number of seconds")
        if connect_timeout <= 0:
            raise InvalidInputError("connect_timeout must be positive")
        if call_timeout is not None and (
            isinstance(call_timeout, bool)
            or not isinstance(call_timeout, (int, float))
            or not call_timeout > 0
        ):
            raise InvalidInputError("call_timeout must be a positive number of seconds or None")
        parsed = parse_urls(url, allowed=cls.accepted_kinds)
        replica_urls = _parse_replicas(parsed, read_replicas)
        store_class = cls if cls.accepted_kinds is not None else _store_class_for(parsed.kind)
        if parsed.kind == "sqlite":
            _ensure_parent_folder(parsed)
        engine = create_engine(
            parsed,
            connect_timeout=float(connect_timeout),
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
        replicas = [
            Replica(
                replica_url,
                create_engine(
                    replica_url,
                    connect_timeout=float(connect_timeout),
                    pool_size=pool_size,
                    max_overflow=max_overflow,
                ),
            )
            for replica_url in replica_urls
        ]
        backend = _Backend(
            parsed,
            engine,
            float(connect_timeout),
            None if call_timeout is None else float(call_timeout),
            replicas,
        )
        store = cast("Self", store_class(backend))
        try:
            await store._open(migrate=migrate, connect_timeout=float(connect_timeout))
        except BaseException:
            await backend.dispose()
            raise
        return store

    async def _open(self, *, migrate: bool, connect_timeout: float) -> None:
        url = self._backend.url
        action = "connect"
        try:
            if url.kind == "memory":
                # StaticPool holds the one connection for the engine's life: keep its driver
                # connection at hand, so lean work skips the pool checkout (see _run).
                async with self._backend.engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    self._backend.pinned = raw.driver_connection
            else:
                # Fail fast on a bad address or credentials, before any migration lock wait.
                async with asyncio.timeout(connect_timeout):
                    async with self._backend.engine.connect() as conn:
                        await conn.exec_driver_sql("SELECT 1")
            if not migrate:
                return
            action = "migrate its schema"
            if url.kind == "memory":
                # The database lives in the store's one connection: migrate on it.
                await migrations.upgrade(self._backend.engine)
                return
            engine = create_engine(
                url,
                connect_timeout=connect_timeout,
                use_null_pool=True,
                enforce_foreign_keys=False,
            )
            try:
                await migrations.upgrade(engine)
            finally:
                await engine.dispose()
        except PersistenceError:
            raise
        except TimeoutError as error:
            raise BackendError(
                f"timed out after {connect_timeout:g}s connecting to the {url.kind} database "
                f"at {url.host}/{url.database}",
                host=url.host,
                database=url.database,
            ) from error
        except DRIVER_ERRORS as error:
            raise to_backend_error(error, url, action) from error

    async def close(self) -> None:
        """Close the store's connections. Views made by :meth:`scoped` share them."""
        if self._owner and not self._backend.closed:
            self._backend.closed = True
            await self._backend.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        scope = f", {self._scope.describe()}" if self._scope.restricted else ""
        return f"{type(self).__name__}({self._backend.url.display!r}{scope})"

    @property
    def url(self) -> DatabaseUrl:
        """Where the store points (``url.display`` masks the password)."""
        return self._backend.url

    @property
    def engine(self) -> AsyncEngine:
        """The underlying SQLAlchemy engine, for tools that need Core access."""
        return self._backend.engine

    @property
    def scope(self) -> Scope:
        return self._scope

    def scoped(
        self,
        *,
        tenant_id: uuid.UUID | str,
        user_id: uuid.UUID | str | None = None,
        agent_id: uuid.UUID | str | None = None,
    ) -> Self:
        """The same API restricted to one tenant (and user, and agent), sharing this store's
        connections.

        A view creates sessions in its scope, lists only them, and answers ``NotFoundError``
        for any other session id; every operation (usage, export, copy, retention, stats,
        erasure) covers only its rows. A view can only be narrowed: naming another tenant,
        user or agent than the one it is restricted to is ``InvalidInputError``.
        """
        wanted = {
            "tenant_id": require_uuid("tenant_id", tenant_id),
            "user_id": coerce_uuid("user_id", user_id, optional=True),
            "agent_id": coerce_uuid("agent_id", agent_id, optional=True),
        }
        for name, current in self._scope.owners():
            if wanted[name] is not None and wanted[name] != current:
                raise InvalidInputError(
                    f"this view is restricted to {name} {current}; a view can only be narrowed"
                )
            wanted[name] = current
        return type(self)(
            self._backend, Scope(**wanted), owner=False, stale_reads=self._stale_reads
        )

    def on_primary(self) -> Self:
        """The same store (and scope) with every read on the primary, never on a replica.

        For the moment a listing must include what the caller just wrote.
        """
        return type(self)(self._backend, self._scope, owner=False, stale_reads=False)

    @property
    def read_replicas(self) -> tuple[ReplicaStatus, ...]:
        """Each read replica: its URL (password masked), whether it is in use, and counts."""
        now = time.monotonic()
        return tuple(
            ReplicaStatus(replica.url.display, replica.is_up(now), replica.reads, replica.failures)
            for replica in self._backend.replicas
        )

    @property
    def stale_reads(self) -> bool:
        """Whether reads that may lag behind (listings, usage, exports) may use a replica."""
        return self._stale_reads and bool(self._backend.replicas)

    # ------------------------------------------------------------------ sessions

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
            await conn.execute(insert(s_t), values)

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
            rows = await lane.fetch(db, text, params)
            if not rows:
                raise self._not_found(sid)
            return lane.sessions(rows)[0]

        return await self._run(work, write=False, action="read a session", one_read=True, lean=True)

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
            stmt = update(s_t).where(*self._session_filter(sid)).values(values)
            if (await conn.execute(stmt)).rowcount == 0:
                raise self._not_found(sid)
            row = (await conn.execute(select(s_t).where(s_t.c.id == sid))).one()
            return _session_record(row)

        return await self._run(work, write=True, action="update a session")

    async def delete_session(self, session_id: uuid.UUID | str) -> None:
        """Delete the session with its messages and states (one statement, cascading)."""
        sid = require_uuid("session_id", session_id)

        async def work(conn: AsyncConnection) -> None:
            result = await conn.execute(delete(s_t).where(*self._session_filter(sid)))
            if result.rowcount == 0:
                raise self._not_found(sid)

        await self._run(work, write=True, action="delete a session")

    async def list_sessions(
        self,
        *,
        user_id: uuid.UUID | str | None = None,
        tenant_id: uuid.UUID | str | None = None,
        agent_id: uuid.UUID | str | None = None,
        limit: int = _DEFAULT_PAGE,
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
        for name, value in (("user_id", user_id), ("tenant_id", tenant_id), ("agent_id", agent_id)):
            checked = coerce_uuid(name, value, optional=True)
            if checked is not None:
                columns.append(name)
                params.append(lane.uuid_in(checked))
                asked.append(f"{name}={checked}")
        page_size = check_limit("limit", limit, optional=False)
        assert page_size is not None
        # What a cursor is bound to: this view and these filters (see mofa_persist.cursor).
        binding = f"list_sessions|{self._scope.describe()}|{','.join(asked)}"
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
            rows = await lane.fetch(db, text, params)
            items = lane.sessions(rows[:page_size])
            next_cursor = None
            if len(rows) > page_size:
                last = items[-1]
                next_cursor = encode_cursor(key, binding, last.updated_at, last.id)
            return Page(items, next_cursor)

        return await self._run(
            work, write=False, action="list sessions", one_read=True, lean=True, stale_ok=True
        )

    # ------------------------------------------------------------------ messages

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
            await self.get_session(sid)
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
            await self.get_session(sid)
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

    # ------------------------------------------------------------------ state

    async def save_state(
        self,
        session_id: uuid.UUID | str,
        state: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> AgentState:
        """Save a new state snapshot as version = previous + 1.

        With ``expected_version``, the save happens only if that is still the current version
        (0 for a session without state); otherwise ``ConflictError``.
        """
        sid = require_uuid("session_id", session_id)
        encoded = self._encode("state", state, allow_none=False)
        expected = check_limit("expected_version", expected_version)
        _, saved = await self._write_turn(sid, [], encoded, expected, "save state")
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
        self, session_id: uuid.UUID | str, *, limit: int | None = _DEFAULT_PAGE
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

    # ------------------------------------------------------------------ turns

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

    # ------------------------------------------------------------------ provider calls

    async def record_api_call(
        self,
        *,
        session_id: uuid.UUID | str | None,
        model: str,
        status: str,
        latency_ms: int,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        total_tokens: int | None = None,
        error: str | None = None,
        provider: str | None = None,
    ) -> ApiCall:
        """Record one LLM provider call, in a transaction of its own (failed calls too).

        ``status`` is one of success, failed, timeout, rate_limited, cancelled. The session's
        tenant, user and agent are copied onto the row so usage survives session deletion.
        """
        sid = coerce_uuid("session_id", session_id, optional=True)
        checked_model = check_text("model", model, max_bytes=800)
        if not checked_model or len(checked_model) > 200:
            raise InvalidInputError("model must be 1 to 200 characters")
        if status not in API_CALL_STATUSES:
            raise InvalidInputError(
                f"status must be one of {', '.join(sorted(API_CALL_STATUSES))}; got {status!r}"
            )
        latency = check_limit("latency_ms", latency_ms, optional=False)
        tokens = {
            name: check_limit(name, value)
            for name, value in (
                ("prompt_tokens", prompt_tokens),
                ("completion_tokens", completion_tokens),
                ("total_tokens", total_tokens),
            )
        }
        if tokens["total_tokens"] is None and None not in (
            tokens["prompt_tokens"],
            tokens["completion_tokens"],
        ):
            tokens["total_tokens"] = (tokens["prompt_tokens"] or 0) + (
                tokens["completion_tokens"] or 0
            )
        error_text = None if error is None else check_text("error", error)[:10_000]
        provider_name = None if provider is None else check_text("provider", provider)[:50]
        call_id = uuid7()
        now = _now()

        async def work(conn: AsyncConnection) -> ApiCall:
            owner: Any = None
            if sid is not None:
                owner = (
                    await conn.execute(
                        select(s_t.c.tenant_id, s_t.c.user_id, s_t.c.agent_id).where(
                            *self._session_filter(sid)
                        )
                    )
                ).first()
                if owner is None:
                    raise self._not_found(sid)
            tenant = owner.tenant_id if owner is not None else self._scope.tenant_id
            user = owner.user_id if owner is not None else self._scope.user_id
            agent = owner.agent_id if owner is not None else self._scope.agent_id
            record = ApiCall(
                id=call_id,
                session_id=sid,
                tenant_id=tenant,
                user_id=user,
                agent_id=agent,
                provider=provider_name,
                model=checked_model,
                status=status,
                prompt_tokens=tokens["prompt_tokens"],
                completion_tokens=tokens["completion_tokens"],
                total_tokens=tokens["total_tokens"],
                latency_ms=latency or 0,
                error=error_text,
                created_at=now,
            )
            await conn.execute(insert(c_t), dataclasses.asdict(record))
            return record

        return await self._run(work, write=True, action="record a provider call")

    async def usage(
        self,
        *,
        session_id: uuid.UUID | str | None = None,
        user_id: uuid.UUID | str | None = None,
        tenant_id: uuid.UUID | str | None = None,
        agent_id: uuid.UUID | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Usage:
        """Calls, failures, token sums and latency percentiles of recorded provider calls.

        Filters combine with AND and with the store's scope; ``since`` is inclusive and
        ``until`` exclusive (timezone-aware datetimes).
        """
        filters: list[ColumnElement[bool]] = []
        for name, value in (
            ("session_id", session_id),
            ("user_id", user_id),
            ("tenant_id", tenant_id),
            ("agent_id", agent_id),
        ):
            checked = coerce_uuid(name, value, optional=True)
            if checked is not None:
                filters.append(c_t.c[name] == checked)
        filters += scope_filter(self._scope, c_t)
        for bound_name, bound in (("since", since), ("until", until)):
            if bound is not None and (not isinstance(bound, datetime) or bound.tzinfo is None):
                raise InvalidInputError(f"{bound_name} must be a timezone-aware datetime")
        if since is not None:
            filters.append(c_t.c.created_at >= since)
        if until is not None:
            filters.append(c_t.c.created_at < until)
        totals = (
            select(
                c_t.c.status,
                func.count(),
                func.coalesce(func.sum(c_t.c.prompt_tokens), 0),
                func.coalesce(func.sum(c_t.c.completion_tokens), 0),
                func.coalesce(func.sum(c_t.c.total_tokens), 0),
            )
            .where(*filters)
            .group_by(c_t.c.status)
        )

        async def work(conn: AsyncConnection) -> Usage:
            by_status: dict[str, int] = {}
            prompt = completion = total = 0
            for status, count, p_tokens, c_tokens, t_tokens in await conn.execute(totals):
                by_status[status] = int(count)
                prompt += int(p_tokens)
                completion += int(c_tokens)
                total += int(t_tokens)
            calls = sum(by_status.values())
            percentiles = await _latency_percentiles(conn, filters, calls, (0.5, 0.95, 0.99))
            return Usage(
                calls=calls,
                failures=calls - by_status.get("success", 0),
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=total,
                latency_p50_ms=percentiles[0],
                latency_p95_ms=percentiles[1],
                latency_p99_ms=percentiles[2],
                by_status=by_status,
            )

        return await self._run(work, write=False, action="read usage", stale_ok=True)

    # ------------------------------------------------------------------ data lifecycle

    async def apply_retention(
        self,
        policy: RetentionPolicy,
        *,
        dry_run: bool = False,
        batch_size: int = 1000,
        on_progress: Callable[[str, int], None] | None = None,
    ) -> RetentionReport:
        """Delete what ``policy`` no longer keeps, within this view, in short batches.

        Safe while agents write; a run that is stopped can simply be run again. The newest
        state of a session is never deleted, and ``seq`` goes on where it was. Returns the
        rows deleted per table (with ``dry_run``: the rows that would be).
        """
        if not isinstance(policy, RetentionPolicy):
            raise InvalidInputError("policy must be a RetentionPolicy")
        return await lifecycle.apply_retention(
            self, policy, dry_run=dry_run, batch_size=batch_size, on_progress=on_progress
        )

    async def erase_user(
        self, user_id: uuid.UUID | str, *, batch_size: int = 1000
    ) -> lifecycle.Erasure:
        """Delete every row of one user (within this view) from every table the library
        owns, in short batches, and leave an audit record. Returns that record."""
        return await lifecycle.erasure.erase(self, "user", user_id, batch_size=batch_size)

    async def erase_tenant(
        self, tenant_id: uuid.UUID | str, *, batch_size: int = 1000
    ) -> lifecycle.Erasure:
        """Delete every row of one tenant from every table the library owns, in short
        batches, and leave an audit record. Returns that record."""
        return await lifecycle.erasure.erase(self, "tenant", tenant_id, batch_size=batch_size)

    async def list_erasures(
        self,
        *,
        user_id: uuid.UUID | str | None = None,
        tenant_id: uuid.UUID | str | None = None,
        limit: int = 100,
    ) -> list[lifecycle.Erasure]:
        """Erasure audit records, newest first (of one user or tenant, if given)."""
        return await lifecycle.list_erasures(
            self, user_id=user_id, tenant_id=tenant_id, limit=limit
        )

    # ------------------------------------------------------------------ internals

    async def _write_turn(
        self,
        sid: uuid.UUID,
        items: Sequence[_NewMessage],
        state: EncodedJSON | None,
        expected_version: int | None,
        action: str,
    ) -> tuple[list[Message], AgentState | None]:
        """Bump the session's counters (taking its row lock), then insert rows: one transaction."""
        backend, scope = self._backend, self._scope
        if backend.one_hop_writes:
            return await self._run(
                functools.partial(
                    writes.sqlite_write, backend, scope, sid, items, state, expected_version
                ),
                write=True,
                action=action,
                lean=True,
                own_transaction=True,
            )
        if backend.lean_writes:
            return await self._run(
                functools.partial(
                    writes.lean_write, backend, scope, sid, items, state, expected_version
                ),
                write=True,
                action=action,
                lean=True,
            )
        return await self._run(
            functools.partial(
                writes.core_write, backend, scope, sid, items, state, expected_version
            ),
            write=True,
            action=action,
        )

    async def _lean_require_session(self, db: Any, sid: uuid.UUID) -> None:
        if await writes.lean_session_version(self._backend, self._scope, db, sid) is None:
            raise self._not_found(sid)

    def _scope_shape(self) -> tuple[str, ...]:
        """The columns the scope restricts; the cache key of scoped SQL."""
        return scope_shape(self._scope)

    def _scope_params(self) -> list[Any]:
        """Bound values of the scope filters, in :meth:`_scope_shape` order."""
        return scope_params(self._backend, self._scope)

    async def _run(
        self,
        work: Work[T] | LeanWork[T],
        *,
        write: bool,
        action: str,
        one_read: bool = False,
        lean: bool = False,
        own_transaction: bool = False,
        stale_ok: bool = False,
    ) -> T:
        """Run ``work`` in one transaction, retrying where that is known to be safe.

        See :func:`mofa_persist.runner.run`; ``stale_ok`` reads may go to a read replica.
        """
        return await runner.run(
            self._backend,
            self,
            work,
            write=write,
            action=action,
            one_read=one_read,
            lean=lean,
            own_transaction=own_transaction,
            stale_ok=stale_ok and self._stale_reads,
        )

    def _check_items(self, items: Iterable[Mapping[str, Any]]) -> list[_NewMessage]:
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
            raise InvalidInputError("messages must be a list of mappings with role and content")
        checked = []
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise InvalidInputError(
                    f"messages[{index}] must be a mapping, not {type(item).__name__}"
                )
            unknown = set(item) - {"role", "content", "metadata"}
            if unknown:
                raise InvalidInputError(
                    f"messages[{index}] has unknown keys {sorted(map(str, unknown))}; "
                    "use role, content and metadata"
                )
            if "role" not in item or "content" not in item:
                raise InvalidInputError(f"messages[{index}] needs role and content")
            checked.append(
                _NewMessage(
                    check_role(item["role"]),
                    check_text(f"messages[{index}].content", item["content"]),
                    self._encode(f"messages[{index}].metadata", item.get("metadata")),
                )
            )
        return checked

    def _encode(self, name: str, value: object, *, allow_none: bool = True) -> EncodedJSON:
        if value is None and not allow_none:
            raise InvalidInputError(f"{name} must be a dict, not None")
        if isinstance(value, Mapping) and not isinstance(value, dict):
            value = dict(value)
        return encode_document(name, value, exact_floats=self._exact_floats)

    def _in_scope(self, name: str, value: uuid.UUID | None) -> uuid.UUID | None:
        scoped: uuid.UUID | None = getattr(self._scope, name)
        if scoped is None:
            return value
        if value is not None and value != scoped:
            raise InvalidInputError(f"{name} {value} is outside this store's scope")
        return scoped

    def _scope_filter(self) -> list[ColumnElement[bool]]:
        return scope_filter(self._scope)

    def _session_filter(self, sid: uuid.UUID) -> list[ColumnElement[bool]]:
        return session_filter(self._scope, sid)

    def _scope_exists(self, sid: uuid.UUID) -> list[ColumnElement[bool]]:
        """For queries on child tables: nothing when unscoped, else an EXISTS on the session."""
        if not self._scope.restricted:
            return []
        return [exists().where(and_(*self._session_filter(sid)))]

    async def _require_session(self, conn: AsyncConnection, sid: uuid.UUID) -> None:
        found = (await conn.execute(select(s_t.c.id).where(*self._session_filter(sid)))).first()
        if found is None:
            raise self._not_found(sid)

    def _not_found(self, sid: uuid.UUID) -> NotFoundError:
        return writes.not_found(sid)


async def _latency_percentiles(
    conn: AsyncConnection,
    filters: list[ColumnElement[bool]],
    calls: int,
    fractions: tuple[float, ...],
) -> list[float | None]:
    """Nearest-rank percentiles of latency_ms, computed in the database on every dialect.

    Each one is an ORDER BY ... LIMIT 1 OFFSET k, so no latency list is sent to Python.
    """
    if calls == 0:
        return [None for _ in fractions]
    results: list[float | None] = []
    for fraction in fractions:
        rank = max(1, math.ceil(fraction * calls))
        stmt = (
            select(c_t.c.latency_ms)
            .where(*filters)
            .order_by(c_t.c.latency_ms)
            .limit(1)
            .offset(rank - 1)
        )
        value = (await conn.execute(stmt)).scalar()
        results.append(None if value is None else float(value))
    return results


def _parse_replicas(primary: DatabaseUrl, urls: Sequence[str] | None) -> list[DatabaseUrl]:
    if urls is None:
        return []
    if isinstance(urls, str) or not isinstance(urls, Sequence):
        raise InvalidInputError("read_replicas must be a list of URLs")
    if urls and primary.kind not in ("postgresql", "mysql"):
        raise InvalidInputError(f"read replicas need a server backend, not {primary.kind}")
    parsed = [parse_url(url, allowed=(primary.kind,)) for url in urls]
    if any(replica.database != primary.database for replica in parsed):
        raise InvalidInputError("a read replica must name the same database as the primary")
    return parsed


def _ensure_parent_folder(url: DatabaseUrl) -> None:
    if url.host is not None:
        Path(url.host).parent.mkdir(parents=True, exist_ok=True)


class PostgresStore(Store):
    """A store on PostgreSQL through asyncpg (``pip install 'mofa-persist[postgres]'``)."""

    accepted_kinds = ("postgresql",)
    default_url = None


class MySqlStore(Store):
    """A store on MySQL or MariaDB through aiomysql (``pip install 'mofa-persist[mysql]'``)."""

    accepted_kinds = ("mysql",)
    default_url = None


class SqliteStore(Store):
    """A store in an embedded SQLite file (created, with its folder, if missing)."""

    accepted_kinds = ("sqlite", "memory")
    default_url = "sqlite://mofa.db"


class MemoryStore(Store):
    """A store in process memory (SQLite ``:memory:``); gone when closed. For tests and demos."""

    accepted_kinds = ("memory",)
    default_url = "memory://"

    @classmethod
    async def connect(
        cls,
        url: str | Sequence[str] | None = "memory://",
        *,
        migrate: bool = True,
        connect_timeout: float = 10.0,
        pool_size: int = 10,
        max_overflow: int = 10,
        call_timeout: float | None = 30.0,
        read_replicas: Sequence[str] | None = None,
    ) -> Self:
        return await super().connect(
            url or "memory://",
            migrate=migrate,
            connect_timeout=connect_timeout,
            pool_size=pool_size,
            max_overflow=max_overflow,
            call_timeout=call_timeout,
            read_replicas=read_replicas,
        )


_CLASSES: dict[Kind, type[Store]] = {
    "postgresql": PostgresStore,
    "mysql": MySqlStore,
    "sqlite": SqliteStore,
    "memory": MemoryStore,
}


def _store_class_for(kind: Kind) -> type[Store]:
    return _CLASSES[kind]


async def connect(
    url: str | Sequence[str] | None = None,
    *,
    migrate: bool = True,
    connect_timeout: float = 10.0,
    pool_size: int = 10,
    max_overflow: int = 10,
    call_timeout: float | None = 30.0,
    read_replicas: Sequence[str] | None = None,
) -> Store:
    """Connect to any backend: ``url``, else ``DATABASE_URL``, else in-memory.

    Returns the store class that matches the URL (``PostgresStore``, ``MySqlStore``,
    ``SqliteStore`` or ``MemoryStore``).
    """
    return await Store.connect(
        url,
        migrate=migrate,
        connect_timeout=connect_timeout,
        pool_size=pool_size,
        max_overflow=max_overflow,
        call_timeout=call_timeout,
        read_replicas=read_replicas,
    )
