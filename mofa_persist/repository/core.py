"""What every part of the store API shares: the backend, the view, the unit-of-work runner
and input checks. Each aggregate (sessions, history, state, usage, lifecycle) is a class on
top of :class:`StoreCore`; :class:`mofa_persist.store.Store` combines them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import and_, exists, select

from .. import grouping, runner, telemetry, writes
from ..backend import ReplicaStatus as ReplicaStatus
from ..backend import Scope as Scope
from ..backend import _Backend as _Backend
from ..backend import scope_filter, scope_params, scope_shape, session_filter
from ..convert import _NewMessage
from ..errors import ConflictError, InvalidInputError, NotFoundError
from ..validate import (
    EncodedJSON,
    check_role,
    check_text,
    encode_document,
)
from . import idempotency
from .tables import s_t

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.sql.elements import ColumnElement

    from ..records import (
        AgentState,
        Message,
    )
    from ..runner import LeanWork, T, Work
    from ..urls import DatabaseUrl


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: The default of arguments that may be left out (``update_session``): "do not change".
UNSET: Final = _Unset()


class StoreCore:
    """State and helpers shared by every aggregate of the store API."""

    _backend: _Backend
    _scope: Scope

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

    # ------------------------------------------------------------------ internals

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
        """The tenant, user and agent this view is restricted to (all ``None``: the whole
        database)."""
        return self._scope

    @property
    def stale_reads(self) -> bool:
        """Whether reads that may lag behind (listings, usage, exports) may use a replica."""
        return self._stale_reads and bool(self._backend.replicas)

    async def _ensure_session(self, sid: uuid.UUID) -> None:
        """``NotFoundError`` unless the session exists in this view (for calls with no rows)."""

        async def work(db: Any) -> None:
            await self._lean_require_session(db, sid)

        await self._run(work, write=False, action="read a session", one_read=True, lean=True)

    async def _append(
        self, sid: uuid.UUID, items: Sequence[_NewMessage], action: str
    ) -> list[Message]:
        """Messages only, no key, state or version check: shares a transaction with
        concurrent appends to the session when one is in flight (see :mod:`..grouping`)."""
        backend = self._backend
        # SQLite: one writer at a time whatever the session, so appends to any session share.
        many = self._write_sessions if backend.one_hop_writes else None
        return await grouping.append(
            backend, self._scope, sid, items, action, self._write_messages, many
        )

    async def _write_sessions(
        self, parts: list[tuple[Scope, uuid.UUID, list[_NewMessage]]]
    ) -> list[list[Message] | None]:
        """The multi-session group write :func:`grouping.append` runs on SQLite."""
        return await self._run(
            functools.partial(writes.sqlite_write_sessions, self._backend, parts),
            write=True,
            action=grouping.GROUP_ACTION,
            lean=True,
            own_transaction=True,
        )

    async def _write_messages(
        self, sid: uuid.UUID, items: Sequence[_NewMessage], action: str, span: bool
    ) -> list[Message]:
        """The plain write :func:`grouping.append` runs for one call or for a group."""
        stored, _ = await self._write_turn(sid, items, None, None, action, span=span)
        return stored

    async def _write_turn(
        self,
        sid: uuid.UUID,
        items: Sequence[_NewMessage],
        state: EncodedJSON | None,
        expected_version: int | None,
        action: str,
        idempotency_key: str | None = None,
        operation: str = "",
        *,
        span: bool = True,
    ) -> tuple[list[Message], AgentState | None]:
        """Bump the session's counters (taking its row lock), then insert rows: one transaction.

        ``span=False``: the caller's span already covers this write (see :mod:`..grouping`).
        """
        backend, scope = self._backend, self._scope
        if idempotency_key is not None:
            payload = {
                "messages": [
                    [item.role, item.content, json.loads(item.metadata)] for item in items
                ],
                "state": None if state is None else json.loads(state),
                "expected_version": expected_version,
            }
            call = idempotency.KeyedCall.of(
                idempotency_key, idempotency.session_scope(sid), operation, payload
            )
            return await self._keyed_write(sid, items, state, expected_version, action, call)
        if backend.lean_writes:
            # SQLite hands the whole transaction to its driver thread in one hop; PostgreSQL
            # runs the turn as one statement in autocommit, and redoes it in BEGIN ... COMMIT
            # when the session's row is locked (see writes.lean_turn); MySQL writes in
            # BEGIN ... COMMIT.
            write, own_transaction = writes.lean_turn(backend)
            args = (backend, scope, sid, items, state, expected_version)
            run = functools.partial(self._run, write=True, action=action, lean=True, span=span)
            try:
                return await run(functools.partial(write, *args), own_transaction=own_transaction)
            except writes.RedoInTransaction:
                return await run(functools.partial(writes.lean_write, *args))
        return await self._run(
            functools.partial(
                writes.core_write, backend, scope, sid, items, state, expected_version
            ),
            write=True,
            action=action,
            span=span,
        )

    async def _keyed_write(
        self,
        sid: uuid.UUID,
        items: Sequence[_NewMessage],
        state: EncodedJSON | None,
        expected_version: int | None,
        action: str,
        call: idempotency.KeyedCall,
    ) -> tuple[list[Message], AgentState | None]:
        """A write with an idempotency key: the key row commits with the rows it protects."""
        backend, scope = self._backend, self._scope

        async def replay(conn: AsyncConnection) -> tuple[list[Message], AgentState | None] | None:
            await self._require_session(conn, sid)  # never replay across views
            found = await idempotency.find(conn, call)
            return None if found is None else await idempotency.replay_turn(conn, call, found)

        async def work(conn: AsyncConnection) -> tuple[list[Message], AgentState | None]:
            replayed = await replay(conn)
            if replayed is not None:
                return replayed
            stored, saved = await writes.core_write(
                backend, scope, sid, items, state, expected_version, conn
            )
            await idempotency.remember(
                conn,
                call,
                idempotency.turn_result(stored, saved),
                session_id=sid,
                seqs=[message.seq for message in stored],
                state_version=None if saved is None else saved.version,
            )
            return stored, saved

        try:
            return await self._run(work, write=True, action=action)
        except ConflictError:
            # Lost the race for this key (its unique index) to a call that committed first:
            # answer with the winner's rows. Any other conflict is the caller's to see.
            replayed = await self._run(replay, write=False, action=action)
            if replayed is None:
                raise
            return replayed

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
        span: bool = True,
    ) -> T:
        """Run ``work`` in one transaction, retrying where that is known to be safe.

        See :func:`mofa_persist.runner.run`; ``stale_ok`` reads may go to a read replica.
        Each call is one OpenTelemetry span named ``action`` (see :mod:`..telemetry`), unless
        ``span`` is false.
        """
        call = runner.run(
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
        if not span:
            return await call
        return await telemetry.observe(self._backend, action, call)

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
