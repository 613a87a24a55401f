"""The turn writes: bump the session's counters (taking its row lock), then insert the
messages and the state, in one transaction, per dialect.

``core_write`` goes through SQLAlchemy Core (SQLite builds without RETURNING); the lean paths
run :mod:`mofa_persist.sql` statements on the driver connection: ``lean_write`` (MySQL and
SQLite), ``sqlite_write`` (SQLite in one hop to aiosqlite's thread) and ``pg_write``
(PostgreSQL, the whole turn as one statement).

On MySQL a row too large for one max_allowed_packet once escaped is written in pieces
(:class:`PacketPlan`, ``execute_fitted`` for Core statements); ordinary rows never pay for it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import insert, literal_column, select, update

from . import sql
from .backend import Scope, _Backend, scope_params, scope_shape, session_filter
from .convert import _loads, _NewMessage, _now, _turn_records
from .errors import ConflictError, NotFoundError, PersistenceError
from .ids import uuid7
from .models import agent_state_table, messages_table, sessions_table
from .records import AgentState, Message

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence
    from datetime import datetime

    from sqlalchemy import CursorResult, Table
    from sqlalchemy.ext.asyncio import AsyncConnection
    from sqlalchemy.sql.dml import ValuesBase

    from .sql import MySqlLane
    from .validate import EncodedJSON

s_t = sessions_table
m_t = messages_table
a_t = agent_state_table


def not_found(sid: uuid.UUID) -> NotFoundError:
    return NotFoundError(f"session {sid} not found")


async def core_write(
    backend: _Backend,
    scope: Scope,
    sid: uuid.UUID,
    items: Sequence[_NewMessage],
    state: EncodedJSON | None,
    expected_version: int | None,
    conn: AsyncConnection,
) -> tuple[list[Message], AgentState | None]:
    """:meth:`Store._write_turn` through SQLAlchemy Core: bump, then insert the rows."""
    count = len(items)
    now = _now()
    ids = [uuid7() for _ in items]
    state_id = None if state is None else uuid7()
    plan = None
    if isinstance(backend.lane, sql.MySqlLane) and oversized(items, state):
        # Keyed writes come here on MySQL too: see lean_write.
        db = (await conn.get_raw_connection()).driver_connection
        plan = await PacketPlan.make(backend.lane, db, items, state)
    last_seq, version = await bump(
        backend, scope, conn, sid, count, state is not None, expected_version, now
    )
    first = last_seq - count + 1
    stored = [
        Message(
            id=message_id,
            session_id=sid,
            seq=first + offset,
            role=item.role,
            content=item.content,
            metadata=_loads(item.metadata),
            created_at=now,
        )
        for offset, (message_id, item) in enumerate(zip(ids, items, strict=True))
    ]
    rows = [
        {
            "id": message.id,
            "session_id": sid,
            "seq": message.seq,
            "role": message.role,
            "content": message.content,
            "metadata": item.metadata,
            "created_at": now,
        }
        for message, item in zip(stored, items, strict=True)
    ]
    saved = state_row = None
    if state is not None:
        assert state_id is not None
        saved = AgentState(state_id, sid, version, _loads(state), now, last_seq)
        state_row = {
            "id": state_id,
            "session_id": sid,
            "version": version,
            "state": state,
            "created_at": now,
            "at_seq": last_seq,
        }
    if plan is not None:
        await plan.insert_core(conn, rows, state_row)
        return stored, saved
    if rows:
        await conn.execute(insert(m_t), rows)
    if state_row is not None:
        await conn.execute(insert(a_t), state_row)
    return stored, saved


#: Reruns of a MySQL bump that matched no row of an existing session (see lean_write).
_UNMATCHED_RETRIES = 5


async def lean_write(
    backend: _Backend,
    scope: Scope,
    sid: uuid.UUID,
    items: Sequence[_NewMessage],
    state: EncodedJSON | None,
    expected_version: int | None,
    db: Any,
) -> tuple[list[Message], AgentState | None]:
    """:meth:`Store._write_turn` in driver-level SQL: bump, insert the messages, insert the state
    (PostgreSQL: all three in one statement, see :func:`pg_write`)."""
    if backend.one_statement:
        return await pg_turn(backend, scope, sid, items, state, expected_version, db)
    lane = backend.lane
    now = _now()
    ids = [uuid7() for _ in items]
    state_id = uuid7()
    counters: tuple[int, int] | None
    packed = not backend.update_returning  # MySQL/MariaDB: see sql.bump_sql
    # MySQL: a row too large for one packet is planned before the bump, so a value that
    # cannot be stored at all is refused before anything is written.
    plan = (
        await PacketPlan.make(lane, db, items, state)
        if packed and oversized(items, state)
        else None
    )
    bump, params = bump_statement(
        backend, scope, sid, len(items), state, expected_version, now, packed
    )
    if packed:
        counters = await lane.bump_packed(db, bump, params, lane.uuid_in(sid))
        for _ in range(_UNMATCHED_RETRIES):
            if counters is not None:
                break
            # MariaDB under READ COMMITTED: an UPDATE that met the row locked by a concurrent
            # bump can report 0 rows (its semi-consistent read skips the row; seen about once
            # in ten bumps with 8 writers on one session, and six times in a row on Galera
            # with writers on three nodes). Nothing was written: the row is read with FOR
            # UPDATE, which waits for the lock instead of skipping it, and the bump is rerun
            # under the lock this transaction then holds.
            version = await lean_session_version(backend, scope, db, sid, lock=True)
            if version is None or expected_version not in (None, version):
                break
            counters = await lane.bump_packed(db, bump, params, lane.uuid_in(sid))
    else:
        found = await lane.fetch(db, bump, params)
        counters = (int(found[0][0]), int(found[0][1])) if found else None
    if counters is None:
        raise await lean_unmatched(backend, scope, db, sid, expected_version)
    stored, saved = _turn_records(sid, items, ids, state, state_id, counters, now)
    key, stamp = lane.uuid_in(sid), lane.time_in(now)
    rows = [
        (lane.uuid_in(message.id), key, message.seq, message.role, message.content,
         str(item.metadata), stamp)
        for message, item in zip(stored, items, strict=True)
    ]  # fmt: skip
    state_row = None
    if saved is not None:
        state_row = (lane.uuid_in(state_id), key, saved.version, str(state), stamp, saved.at_seq)
    if plan is not None:
        await plan.insert(db, rows, state_row)
        return stored, saved
    if len(rows) == 1:
        await lane.execute(db, sql.insert_message_sql(lane.style), rows[0])
    elif rows:
        await lane.execute_many(db, sql.insert_message_sql(lane.style), rows)
    if state_row is not None:
        await lane.execute(db, sql.insert_state_sql(lane.style), state_row)
    return stored, saved


LeanTurn = Callable[
    [
        _Backend,
        Scope,
        "uuid.UUID",
        "Sequence[_NewMessage]",
        "EncodedJSON | None",
        "int | None",
        Any,
    ],
    Awaitable[tuple[list[Message], AgentState | None]],
]


class RedoInTransaction(Exception):
    """A one-trip write did nothing and must be redone by :func:`lean_write` in an explicit
    transaction: the session's row was locked by another transaction."""


def lean_turn(backend: _Backend) -> tuple[LeanTurn, bool]:
    """The driver-level turn write of ``backend``, and whether it ends its transaction itself
    (the runner's ``own_transaction``): SQLite's in one hop to its thread, PostgreSQL's as one
    statement in autocommit (one round trip instead of BEGIN, statement, COMMIT).

    The PostgreSQL one never waits for a lock: it takes the session's row with ``FOR UPDATE
    NOWAIT`` first and raises :class:`RedoInTransaction` if another transaction holds it. A
    statement that cannot wait cannot be left behind, still waiting, by a caller that gave up
    (a call timeout): it would commit after the caller was told it failed. The redo runs in
    BEGIN ... COMMIT, where a caller that gives up before COMMIT leaves nothing behind.
    MySQL keeps BEGIN ... COMMIT for every write: sending the statements and COMMIT as one
    text saved 0.2 ms of a 1.4 ms append here, the server's work being the rest, and there
    a connection found dead at its first use would be an unknown outcome, not a retry.
    """
    if backend.one_hop_writes:
        return sqlite_write, True
    if backend.one_statement:
        return pg_one_trip, True
    return lean_write, False


async def pg_one_trip(
    backend: _Backend,
    scope: Scope,
    sid: uuid.UUID,
    items: Sequence[_NewMessage],
    state: EncodedJSON | None,
    expected_version: int | None,
    db: Any,
) -> tuple[list[Message], AgentState | None]:
    """:func:`pg_turn` in autocommit, its row lock taken with NOWAIT (see :func:`lean_turn`)."""
    try:
        return await pg_turn(backend, scope, sid, items, state, expected_version, db, nowait=True)
    except Exception as error:
        if getattr(error, "sqlstate", None) == _PG_LOCK_NOT_AVAILABLE:
            raise RedoInTransaction from error
        raise


async def pg_turn(
    backend: _Backend,
    scope: Scope,
    sid: uuid.UUID,
    items: Sequence[_NewMessage],
    state: EncodedJSON | None,
    expected_version: int | None,
    db: Any,
    *,
    nowait: bool = False,
) -> tuple[list[Message], AgentState | None]:
    """A turn on PostgreSQL as the one statement of :func:`pg_write`, and its records."""
    now = _now()
    ids = [uuid7() for _ in items]
    state_id = uuid7()
    counters = await pg_write(
        backend, scope, db, sid, items, ids, state, state_id, expected_version, now,
        nowait=nowait,
    )  # fmt: skip
    return _turn_records(sid, items, ids, state, state_id, counters, now)


_PG_LOCK_NOT_AVAILABLE = "55P03"


def oversized(items: Sequence[_NewMessage], state: EncodedJSON | None) -> bool:
    """Whether a row of this turn may not fit in one MySQL packet (see sql.FAST_CHARS):
    a few ``len`` calls, all that the large-value path costs an ordinary write."""
    limit = sql.FAST_CHARS
    if state is not None and len(state) > limit:
        return True
    for item in items:  # noqa: SIM110  (a loop costs a third of any() over a generator)
        if len(item.content) + len(item.metadata) > limit:
            return True
    return False


@dataclass(slots=True)
class PacketPlan:
    """How one MySQL turn writes rows too large for max_allowed_packet once escaped.

    ``messages`` says per message whether its content and its metadata are staged in user
    variables (:func:`sql.staging_statements`), ``state`` the same for the state document;
    the rows that fit go as usual, in batches cut to the packet. Everything runs in the
    turn's transaction, so a failure part way leaves nothing behind.
    """

    lane: MySqlLane
    packet: int
    messages: list[tuple[bool, ...]]
    state: bool

    @classmethod
    async def make(
        cls, lane: sql.Lane, db: Any, items: Sequence[_NewMessage], state: EncodedJSON | None
    ) -> PacketPlan:
        """Plan the turn for ``db``'s max_allowed_packet; refuses what can never fit."""
        assert isinstance(lane, sql.MySqlLane)  # the packed bump is MySQL's
        packet = await lane.max_packet(db)
        messages = [
            sql.plan_row(
                (f"messages[{index}].content", f"messages[{index}].metadata"),
                (item.content, item.metadata),
                packet,
            )
            for index, item in enumerate(items)
        ]
        staged_state = state is not None and sql.plan_row(("state",), (state,), packet)[0]
        return cls(lane, packet, messages, staged_state)

    async def insert(
        self, db: Any, rows: Sequence[tuple[Any, ...]], state_row: tuple[Any, ...] | None
    ) -> None:
        """Insert the message rows and the state row as lean_write built them."""
        lane = self.lane
        plain = [row for row, staged in zip(rows, self.messages, strict=True) if not any(staged)]
        if plain:
            batch = min(sql.BATCH_BYTES, self.packet - sql.STATEMENT_SLACK)
            await lane.execute_many(db, sql.insert_message_sql(lane.style), plain, batch)
        staged_count = 0
        for row, (content, metadata) in zip(rows, self.messages, strict=True):
            if content or metadata:
                # (id, session, seq, role, content, metadata, created_at)
                flags = (False, False, False, False, content, metadata, False)
                staged_count = max(staged_count, await self._insert(db, "messages", row, flags))
        if state_row is not None:
            if self.state:
                # (id, session, version, state, created_at, at_seq)
                state_flags = (False, False, False, True, False, False)
                used = await self._insert(db, "agent_state", state_row, state_flags)
                staged_count = max(staged_count, used)
            else:
                await lane.execute(db, sql.insert_state_sql(lane.style), state_row)
        if staged_count:
            await lane.execute(db, sql.unstage_sql(staged_count), ())

    async def insert_core(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], state_row: dict[str, Any] | None
    ) -> None:
        """:meth:`insert` through SQLAlchemy Core, for rows as core_write built them."""
        plain = [row for row, staged in zip(rows, self.messages, strict=True) if not any(staged)]
        if plain:
            await conn.execute(insert(m_t), plain)
        used = 0
        for row, staged in zip(rows, self.messages, strict=True):
            names = [n for n, flag in zip(("content", "metadata"), staged, strict=True) if flag]
            if names:
                fitted = await _stage_core(conn, self.packet, row, names)
                await conn.execute(insert(m_t).values(fitted))
                used = max(used, len(names))
        if state_row is not None:
            if self.state:
                fitted = await _stage_core(conn, self.packet, state_row, ["state"])
                await conn.execute(insert(a_t).values(fitted))
                used = max(used, 1)
            else:
                await conn.execute(insert(a_t), state_row)
        if used:
            await conn.exec_driver_sql(sql.unstage_sql(used))

    async def _insert(
        self, db: Any, table: str, row: tuple[Any, ...], staged: tuple[bool, ...]
    ) -> int:
        """Insert ``row`` with the values flagged in ``staged`` built in user variables
        first; returns how many variables it used."""
        names: list[str | None] = []
        params = []
        used = 0
        for value, flag in zip(row, staged, strict=True):
            if flag:
                name = sql.stage_variable(used)
                used += 1
                await self.lane.stage(db, name, value.encode("utf-8"), self.packet)
                names.append(name)
            else:
                names.append(None)
                params.append(value)
        await self.lane.execute(db, sql.staged_insert_sql(table, tuple(names)), params)
        return used


async def execute_fitted(
    backend: _Backend, conn: AsyncConnection, statement: ValuesBase, values: dict[str, Any]
) -> CursorResult[Any]:
    """``conn.execute(statement, values)`` for a one-row INSERT or UPDATE through Core,
    with any str value too large for one MySQL packet staged first (as in
    :class:`PacketPlan`). Elsewhere, and for values that fit unmeasured, it is that call.
    """
    lane = backend.lane
    if not isinstance(lane, sql.MySqlLane) or not _large_row(values):
        return await conn.execute(statement, values)
    texts = [name for name, value in values.items() if isinstance(value, str)]
    packet = await lane.max_packet((await conn.get_raw_connection()).driver_connection)
    flags = sql.plan_row(texts, [values[name] for name in texts], packet)
    staged = [name for name, flag in zip(texts, flags, strict=True) if flag]
    if not staged:
        return await conn.execute(statement, values)
    result = await conn.execute(statement.values(await _stage_core(conn, packet, values, staged)))
    await conn.exec_driver_sql(sql.unstage_sql(len(staged)))
    return result


async def insert_rows(
    backend: _Backend, conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]
) -> None:
    """``conn.execute(insert(table), rows)``, except that on MySQL a row too large for one
    packet goes alone through :func:`execute_fitted` (copies of rows: forks, imports)."""
    plain, large = list(rows), []
    if isinstance(backend.lane, sql.MySqlLane):
        plain = [row for row in rows if not _large_row(row)]
        large = [row for row in rows if _large_row(row)]
    if plain:
        await conn.execute(insert(table), plain)
    for row in large:
        await execute_fitted(backend, conn, insert(table), row)


def _large_row(values: dict[str, Any]) -> bool:
    """Whether a row's INSERT may not fit in one MySQL packet (see sql.FAST_CHARS)."""
    return sum(len(value) for value in values.values() if isinstance(value, str)) > sql.FAST_CHARS


async def _stage_core(
    conn: AsyncConnection, packet: int, values: dict[str, Any], staged: Sequence[str]
) -> dict[str, Any]:
    """Build the ``staged`` values in user variables; ``values`` with those named instead."""
    fitted = dict(values)
    for index, name in enumerate(staged):
        variable = sql.stage_variable(index)
        for text in sql.staging_statements(variable, values[name].encode("utf-8"), packet):
            await conn.exec_driver_sql(text)
        fitted[name] = literal_column(sql.staged_value(variable))
    return fitted


async def sqlite_write(
    backend: _Backend,
    scope: Scope,
    sid: uuid.UUID,
    items: Sequence[_NewMessage],
    state: EncodedJSON | None,
    expected_version: int | None,
    db: Any,
) -> tuple[list[Message], AgentState | None]:
    """:func:`lean_write` on SQLite as one hop to aiosqlite's thread (sql.sqlite_write)."""
    lane = backend.lane
    now = _now()
    bump, params = bump_statement(
        backend, scope, sid, len(items), state, expected_version, now, False
    )
    ids = [uuid7() for _ in items]
    state_id = uuid7()
    key, stamp = lane.uuid_in(sid), lane.time_in(now)
    rows = [
        (lane.uuid_in(message_id), key, item.role, item.content, str(item.metadata), stamp)
        for message_id, item in zip(ids, items, strict=True)
    ]
    state_row = None if state is None else (lane.uuid_in(state_id), key, str(state), stamp)
    counters = await sql.sqlite_in_thread(db, sql.sqlite_write, bump, params, rows, state_row)
    if counters is None:
        raise await lean_unmatched(backend, scope, db, sid, expected_version)
    return _turn_records(sid, items, ids, state, state_id, counters, now)


async def sqlite_write_sessions(
    backend: _Backend,
    parts: Sequence[tuple[Scope, uuid.UUID, Sequence[_NewMessage]]],
    db: Any,
) -> list[list[Message] | None]:
    """Plain appends to several sessions as ONE SQLite transaction, in one hop (the group of
    :func:`grouping.append` on SQLite): per part, its records, or ``None`` when that part
    stored nothing (its session matched no row, or the database refused a row: the part's
    savepoint was rolled back) and is to be rerun on its own, which reports why."""
    lane = backend.lane
    now = _now()
    stamp = lane.time_in(now)
    jobs: list[sql.SqliteJob] = []
    ids = []
    for scope, sid, items in parts:
        bump, params = bump_statement(backend, scope, sid, len(items), None, None, now, False)
        key = lane.uuid_in(sid)
        part_ids = [uuid7() for _ in items]
        rows = [
            (lane.uuid_in(message_id), key, item.role, item.content, str(item.metadata), stamp)
            for message_id, item in zip(part_ids, items, strict=True)
        ]
        jobs.append((bump, params, rows))
        ids.append(part_ids)
    counters = await sql.sqlite_in_thread(db, sql.sqlite_write_parts, jobs)
    return [
        None
        if found is None
        else _turn_records(sid, items, part_ids, None, part_ids[0], found, now)[0]
        for (_, sid, items), part_ids, found in zip(parts, ids, counters, strict=True)
    ]


def bump_statement(
    backend: _Backend,
    scope: Scope,
    sid: uuid.UUID,
    messages: int,
    state: EncodedJSON | None,
    expected_version: int | None,
    now: datetime,
    packed: bool,
) -> tuple[str, list[Any]]:
    """:func:`bump` in driver-level SQL (SQLite and MySQL): its text and parameters."""
    lane = backend.lane
    text = sql.bump_sql(lane.style, expected_version is not None, scope_shape(scope), packed)
    params = sql.bump_params(packed, lane.time_in(now), messages, int(state is not None))
    params.append(lane.uuid_in(sid))
    if expected_version is not None:
        params.append(expected_version)
    return text, params + scope_params(backend, scope)


async def lean_unmatched(
    backend: _Backend, scope: Scope, db: Any, sid: uuid.UUID, expected_version: int | None
) -> PersistenceError:
    """The bump matched no row: say whether the session is missing or at another version."""
    version = await lean_session_version(backend, scope, db, sid)
    if version is None:
        return not_found(sid)
    return ConflictError(
        f"session {sid} is at state version {version}, not the expected {expected_version}"
    )


async def lean_session_version(
    backend: _Backend, scope: Scope, db: Any, sid: uuid.UUID, lock: bool = False
) -> int | None:
    """The session's state_version, ``None`` if it does not exist or is out of scope;
    ``lock`` takes the row lock (SELECT ... FOR UPDATE, MySQL only)."""
    lane = backend.lane
    text = sql.session_exists_sql(lane.style, scope_shape(scope), lock)
    rows = await lane.fetch(db, text, [lane.uuid_in(sid), *scope_params(backend, scope)])
    return int(rows[0][0]) if rows else None


async def bump(
    backend: _Backend,
    scope: Scope,
    conn: AsyncConnection,
    sid: uuid.UUID,
    messages: int,
    with_state: bool,
    expected_version: int | None,
    now: datetime,
) -> tuple[int, int]:
    """Reserve ``messages`` seq numbers (and a state version); returns the new counters.

    The Core fallback of :func:`bump_statement`, for SQLite builds without RETURNING.
    The UPDATE locks the session row until commit, so concurrent writers to one session
    queue here and seq stays gap-free; a rolled-back turn releases its numbers.
    """
    values: dict[str, Any] = {"updated_at": now}
    if messages:
        values["last_seq"] = s_t.c.last_seq + messages
    if with_state:
        values["state_version"] = s_t.c.state_version + 1
    stmt = update(s_t).where(*session_filter(scope, sid)).values(values)
    if expected_version is not None:
        stmt = stmt.where(s_t.c.state_version == expected_version)
    row: Any
    if backend.update_returning:
        result = await conn.execute(stmt.returning(s_t.c.last_seq, s_t.c.state_version))
        row = result.first()
    else:
        row = None
        matched = (await conn.execute(stmt)).rowcount
        for _ in range(_UNMATCHED_RETRIES):  # MariaDB's skipped row: see lean_write
            if matched:
                break
            current = select(s_t.c.state_version).where(*session_filter(scope, sid))
            version = (await conn.execute(current.with_for_update())).scalar()
            if version is None or expected_version not in (None, version):
                break
            matched = (await conn.execute(stmt)).rowcount
        if matched:
            counters = select(s_t.c.last_seq, s_t.c.state_version).where(s_t.c.id == sid)
            row = (await conn.execute(counters)).first()
    if row is None:
        await raise_unmatched(scope, conn, sid, expected_version)
    return int(row.last_seq), int(row.state_version)


async def pg_write(
    backend: _Backend,
    scope: Scope,
    db: Any,
    sid: uuid.UUID,
    items: Sequence[_NewMessage],
    ids: Sequence[uuid.UUID],
    state: EncodedJSON | None,
    state_id: uuid.UUID | None,
    expected_version: int | None,
    now: datetime,
    *,
    nowait: bool = False,
) -> tuple[int, int]:
    """:func:`bump` and the inserts as ONE statement (data-modifying CTEs): one round
    trip instead of three. The UPDATE still takes the session's row lock first, and the
    inserts read the bumped counters, so the result is the same rows as the slow path."""
    sql = _pg_write_sql(
        bool(items), state is not None, expected_version is not None, scope_shape(scope), nowait
    )
    params: list[Any] = [sid, now]
    if items:
        params += [
            len(items),
            list(ids),
            [item.role for item in items],
            [item.content for item in items],
            [str(item.metadata) for item in items],
        ]
    if state is not None:
        params += [state_id, str(state)]
    if expected_version is not None:
        params.append(expected_version)
    params += [value for _, value in scope.owners()]
    rows = await backend.lane.fetch(db, sql, params)
    if not rows:
        raise await lean_unmatched(backend, scope, db, sid, expected_version)
    return int(rows[0][0]), int(rows[0][1])


async def raise_unmatched(
    scope: Scope, conn: AsyncConnection, sid: uuid.UUID, expected_version: int | None
) -> NoReturn:
    """The bump matched no row: say whether the session is missing or at another version."""
    current = (
        await conn.execute(select(s_t.c.state_version).where(*session_filter(scope, sid)))
    ).first()
    if current is None:
        raise not_found(sid)
    raise ConflictError(
        f"session {sid} is at state version {current.state_version}, "
        f"not the expected {expected_version}"
    )


@functools.cache
def _pg_write_sql(
    messages: bool, state: bool, expected: bool, scoped: tuple[str, ...], nowait: bool
) -> str:
    """The one-statement turn of :func:`pg_write` for one shape of call.

    ``nowait``: the session's row is locked first by a ``FOR UPDATE NOWAIT`` read (55P03 if
    another transaction holds it, see :func:`lean_turn`), which the bump then joins.

    Parameters are numbered in the order pg_write appends them. The messages travel as four
    arrays (``unnest ... WITH ORDINALITY`` numbers them), so the text, and with it asyncpg's
    prepared statement, is the same for any number of messages.
    """
    number = iter(range(3, 100))
    assignments = ["updated_at = $2"]
    inserts = []
    if messages:
        count, ids, roles, contents, metas = (next(number) for _ in range(5))
        assignments.append(f"last_seq = last_seq + ${count}")
        inserts.append(
            "added AS (INSERT INTO messages "
            "(id, session_id, seq, role, content, metadata, created_at) "
            f"SELECT m.id, $1, bumped.last_seq - ${count} + m.ord::integer, m.role, m.content, "
            "m.metadata::jsonb, $2 FROM bumped, "
            f"unnest(${ids}::uuid[], ${roles}::text[], ${contents}::text[], ${metas}::text[]) "
            "WITH ORDINALITY AS m(id, role, content, metadata, ord))"
        )
    if state:
        state_id, document = next(number), next(number)
        assignments.append("state_version = state_version + 1")
        inserts.append(
            "saved AS (INSERT INTO agent_state "
            "(id, session_id, version, state, created_at, at_seq) "
            f"SELECT ${state_id}::uuid, $1, bumped.state_version, ${document}::text::jsonb, $2, "
            "bumped.last_seq "
            "FROM bumped)"
        )
    conditions = ["id = $1::uuid"]
    if expected:
        conditions.append(f"state_version = ${next(number)}")
    conditions += [f"{column} = ${next(number)}::uuid" for column in scoped]
    ctes = []
    if nowait:
        ctes.append("locked AS (SELECT id FROM sessions WHERE id = $1::uuid FOR UPDATE NOWAIT)")
        conditions.append("id = (SELECT id FROM locked)")
    ctes.append(
        f"bumped AS (UPDATE sessions SET {', '.join(assignments)} "
        f"WHERE {' AND '.join(conditions)} RETURNING last_seq, state_version)"
    )
    return f"WITH {', '.join([*ctes, *inserts])} SELECT last_seq, state_version FROM bumped"
