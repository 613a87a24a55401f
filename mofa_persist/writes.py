"""The turn writes: bump the session's counters (taking its row lock), then insert the
messages and the state, in one transaction, per dialect.

``core_write`` goes through SQLAlchemy Core (SQLite builds without RETURNING); the lean paths
run :mod:`mofa_persist.sql` statements on the driver connection: ``lean_write`` (MySQL and
SQLite), ``sqlite_write`` (SQLite in one hop to aiosqlite's thread) and ``pg_write``
(PostgreSQL, the whole turn as one statement).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import insert, select, update

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

    from sqlalchemy.ext.asyncio import AsyncConnection

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
    if stored:
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
        await conn.execute(insert(m_t), rows)
    saved = None
    if state is not None:
        assert state_id is not None
        saved = AgentState(state_id, sid, version, _loads(state), now)
        state_row = {
            "id": state_id,
            "session_id": sid,
            "version": version,
            "state": state,
            "created_at": now,
        }
        await conn.execute(insert(a_t), state_row)
    return stored, saved


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
    lane = backend.lane
    now = _now()
    ids = [uuid7() for _ in items]
    state_id = uuid7()
    if backend.one_statement:
        pg_counters = await pg_write(
            backend, scope, db, sid, items, ids, state, state_id, expected_version, now
        )
        return _turn_records(sid, items, ids, state, state_id, pg_counters, now)
    counters: tuple[int, int] | None
    packed = not backend.update_returning  # MySQL/MariaDB: see sql.bump_sql
    bump, params = bump_statement(
        backend, scope, sid, len(items), state, expected_version, now, packed
    )
    if packed:
        value = await lane.execute(db, bump, params)
        counters = sql.unpack_counters(value) if value else None
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
    if len(rows) == 1:
        await lane.execute(db, sql.insert_message_sql(lane.style), rows[0])
    elif rows:
        await lane.execute_many(db, sql.insert_message_sql(lane.style), rows)
    if saved is not None:
        state_row = (lane.uuid_in(state_id), key, saved.version, str(state), stamp)
        await lane.execute(db, sql.insert_state_sql(lane.style), state_row)
    return stored, saved


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
    backend: _Backend, scope: Scope, db: Any, sid: uuid.UUID
) -> int | None:
    """The session's state_version, ``None`` if it does not exist or is out of scope."""
    lane = backend.lane
    text = sql.session_exists_sql(lane.style, scope_shape(scope))
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
        if (await conn.execute(stmt)).rowcount:
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
) -> tuple[int, int]:
    """:func:`bump` and the inserts as ONE statement (data-modifying CTEs): one round
    trip instead of three. The UPDATE still takes the session's row lock first, and the
    inserts read the bumped counters, so the result is the same rows as the slow path."""
    sql = _pg_write_sql(
        bool(items),
        state is not None,
        expected_version is not None,
        scope_shape(scope),
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
def _pg_write_sql(messages: bool, state: bool, expected: bool, scoped: tuple[str, ...]) -> str:
    """The one-statement turn of :func:`pg_write` for one shape of call.

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
            "saved AS (INSERT INTO agent_state (id, session_id, version, state, created_at) "
            f"SELECT ${state_id}::uuid, $1, bumped.state_version, ${document}::text::jsonb, $2 "
            "FROM bumped)"
        )
    conditions = ["id = $1::uuid"]
    if expected:
        conditions.append(f"state_version = ${next(number)}")
    conditions += [f"{column} = ${next(number)}::uuid" for column in scoped]
    bumped = (
        f"bumped AS (UPDATE sessions SET {', '.join(assignments)} "
        f"WHERE {' AND '.join(conditions)} RETURNING last_seq, state_version)"
    )
    return f"WITH {', '.join([bumped, *inserts])} SELECT last_seq, state_version FROM bumped"
