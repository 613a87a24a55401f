"""Driver-level SQL for MofaSaver's two calls of every graph step: reading the thread's
latest checkpoint and (on SQLite) storing the next one.

Why: through SQLAlchemy :meth:`~MofaSaver.aget_tuple` cost five round trips (BEGIN, the
checkpoint, its channel blobs, its pending writes, COMMIT) and on SQLite about ten hops to
aiosqlite's thread, three times the official savers' time. Here it is two statements on the
pooled driver connection: the checkpoint, then its blobs and pending writes together
(``UNION ALL``); on SQLite both run in one hop, inside one read transaction. The second needs
the channel versions stored inside the serialized checkpoint, so the two cannot be one. On
SQLite :meth:`~MofaSaver.aput` is likewise one hop (look-up, blobs and checkpoint in one
transaction), and on PostgreSQL one statement (data-modifying CTEs) in autocommit.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import sql

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Sequence

    from ..backend import _Backend

#: More channel versions than this take the SQLAlchemy path (one statement stays short).
MAX_CHANNELS = 64


class CheckpointRow(NamedTuple):
    """A ``langgraph_checkpoints`` row with the attribute names SQLAlchemy's rows have."""

    session_id: Any
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    checkpoint_type: str
    checkpoint: bytes
    metadata_type: str
    metadata: bytes


#: Rows of :func:`parts_sql`: kind 0 is a blob (channel, version, value_type, value), kind 1
#: a pending write (channel, task_id, idx, task_path, value_type, value).
Part = tuple[int, str, str, int, str, str, "bytes | None"]

_COLUMNS = ", ".join(CheckpointRow._fields)


@functools.cache
def checkpoint_sql(style: str, scoped: tuple[str, ...], by_id: bool) -> str:
    """The thread's checkpoint (by id, else the newest) in one namespace.

    Parameters: the thread's key hash, one per scoped column, the namespace, [checkpoint id].
    """
    mark = sql._Marks(style)
    owner = " AND ".join([f"x.key_hash = {mark()}", *(f"s.{c} = {mark()}" for c in scoped)])
    text = (
        f"SELECT {_COLUMNS} FROM langgraph_checkpoints WHERE session_id = ("
        "SELECT x.session_id FROM external_keys x JOIN sessions s ON s.id = x.session_id "
        f"WHERE {owner}) AND checkpoint_ns = {mark()}"
    )
    if by_id:
        return text + f" AND checkpoint_id = {mark()}"
    return text + " ORDER BY checkpoint_id DESC LIMIT 1"


@functools.cache
def parts_sql(style: str, channels: int) -> str:
    """The checkpoint's channel blobs and pending writes, as :data:`Part` rows.

    Parameters: session id, namespace, (channel, version) per channel; session id,
    namespace, checkpoint id.
    """
    mark = sql._Marks(style)
    blobs = (
        "SELECT 0, channel, version, 0, '', value_type, value FROM langgraph_blobs "
        f"WHERE session_id = {mark()} AND checkpoint_ns = {mark()}"
    )
    if channels:
        pairs = " OR ".join(f"(channel = {mark()} AND version = {mark()})" for _ in range(channels))
        blobs += f" AND ({pairs})"
    else:
        blobs += " AND 1 = 0"
    pending = (
        "SELECT 1, channel, task_id, idx, task_path, value_type, value FROM langgraph_writes "
        f"WHERE session_id = {mark()} AND checkpoint_ns = {mark()} AND checkpoint_id = {mark()}"
    )
    return f"{blobs} UNION ALL {pending}"


def parts_params(row: CheckpointRow, versions: Sequence[tuple[str, str]]) -> list[Any]:
    params: list[Any] = [row.session_id, row.checkpoint_ns]
    for channel, version in versions:
        params += [channel, version]
    return [*params, row.session_id, row.checkpoint_ns, row.checkpoint_id]


async def read_checkpoint(
    backend: _Backend,
    db: Any,
    statement: str,
    params: Sequence[Any],
    versions: Callable[[CheckpointRow], Sequence[tuple[str, str]] | None],
) -> tuple[CheckpointRow, list[Part] | None] | None:
    """The checkpoint and its parts; ``None`` when there is no such checkpoint.

    ``versions`` decodes the row's (channel, version) pairs; it returns ``None`` when there
    are too many for :func:`parts_sql`, and then the parts are ``None`` too.
    """
    lane = backend.lane
    if backend.one_hop_writes:
        return await sql.sqlite_in_thread(
            db, _read_in_thread, lane.style, statement, params, versions
        )
    found = await lane.fetch(db, statement, params)
    if not found:
        return None
    row = CheckpointRow(*found[0])
    wanted = versions(row)
    if wanted is None:
        return row, None
    parts = await lane.fetch(db, parts_sql(lane.style, len(wanted)), parts_params(row, wanted))
    return row, [tuple(part) for part in parts]


def _read_in_thread(
    conn: sqlite3.Connection,
    style: str,
    statement: str,
    params: Sequence[Any],
    versions: Callable[[CheckpointRow], Sequence[tuple[str, str]] | None],
) -> tuple[CheckpointRow, list[Part] | None] | None:
    """:func:`read_checkpoint` in aiosqlite's thread, in one read transaction."""
    conn.execute("BEGIN")
    try:
        found = conn.execute(statement, params).fetchone()
        if found is None:
            return None
        row = CheckpointRow(*found)
        wanted = versions(row)
        if wanted is None:
            return row, None
        parts = conn.execute(parts_sql(style, len(wanted)), parts_params(row, wanted)).fetchall()
        return row, parts
    finally:
        conn.rollback()  # read only: nothing to keep


@functools.cache
def thread_session_sql(style: str, scoped: tuple[str, ...]) -> str:
    """The session of a thread in the view; parameters: key hash, one per scoped column."""
    mark = sql._Marks(style)
    owner = " AND ".join([f"x.key_hash = {mark()}", *(f"s.{c} = {mark()}" for c in scoped)])
    return (
        "SELECT x.session_id FROM external_keys x JOIN sessions s ON s.id = x.session_id "
        f"WHERE {owner}"
    )


#: A blob stored already stays as it is: one row per (channel, version).
SQLITE_BLOB_INSERT = (
    "INSERT INTO langgraph_blobs "
    "(id, session_id, checkpoint_ns, channel, version, value_type, value, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (session_id, checkpoint_ns, channel, version) DO NOTHING"
)
_REPLACED = (
    "checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id, checkpoint_type, checkpoint, "
    "metadata_type, metadata"
)
#: A checkpoint stored again gets the new columns.
SQLITE_CHECKPOINT_UPSERT = (
    f"INSERT INTO langgraph_checkpoints (id, session_id, {_REPLACED}, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (session_id, checkpoint_ns, checkpoint_id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _REPLACED.split(", "))
)


def sqlite_put(
    conn: sqlite3.Connection,
    lookup: str,
    lookup_params: Sequence[Any],
    blobs: Sequence[tuple[Any, ...]],
    checkpoint: tuple[Any, ...],
) -> bool:
    """A checkpoint and its new blobs, in aiosqlite's thread, in one write transaction.

    ``blobs`` and ``checkpoint`` are rows without their session id (the second column),
    which comes from ``lookup``. Returns ``False``, having written nothing, when the thread
    has no session yet.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute(lookup, lookup_params).fetchone()
        if found is None:
            conn.rollback()
            return False
        sid = found[0]
        if blobs:
            conn.executemany(SQLITE_BLOB_INSERT, [(row[0], sid, *row[1:]) for row in blobs])
        conn.execute(SQLITE_CHECKPOINT_UPSERT, (checkpoint[0], sid, *checkpoint[1:]))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return True


@functools.cache
def pg_put_sql(scoped: tuple[str, ...]) -> str:
    """:meth:`MofaSaver.aput` on PostgreSQL as one statement: the thread's session, its new
    blobs (a blob stored already stays) and the checkpoint (stored again: new columns).
    Returns the session id; no row when the thread has no session yet (nothing written).

    Parameters: key hash, one per scoped column, then namespace, created_at, the blobs as
    arrays (ids, channels, versions, value types, values), then the checkpoint's id and its
    columns after the namespace (see ``_REPLACED``).
    """
    mark = sql._Marks("numeric")
    owner = " AND ".join([f"x.key_hash = {mark()}", *(f"s.{c} = {mark()}" for c in scoped)])
    ns, now = f"{mark()}::text", f"{mark()}::timestamptz"
    arrays = ", ".join(f"{mark()}::{kind}[]" for kind in ("uuid", "text", "text", "text", "bytea"))
    checkpoint = ", ".join(
        [f"{mark()}::uuid", "t.session_id", ns]
        + [f"{mark()}::{kind}" for kind in ("text",) * 4 + ("bytea", "text", "bytea")]
        + [now]
    )
    replaced = _REPLACED.split(", ")
    return (
        "WITH t AS (SELECT x.session_id FROM external_keys x "
        f"JOIN sessions s ON s.id = x.session_id WHERE {owner}), "
        "b AS (INSERT INTO langgraph_blobs "
        "(id, session_id, checkpoint_ns, channel, version, value_type, value, created_at) "
        f"SELECT u.id, t.session_id, {ns}, u.channel, u.version, u.value_type, u.value, {now} "
        f"FROM t, unnest({arrays}) AS u(id, channel, version, value_type, value) "
        "ON CONFLICT (session_id, checkpoint_ns, channel, version) DO NOTHING) "
        f"INSERT INTO langgraph_checkpoints (id, session_id, {_REPLACED}, created_at) "
        f"SELECT {checkpoint} FROM t "
        "ON CONFLICT (session_id, checkpoint_ns, checkpoint_id) DO UPDATE SET "
        + ", ".join(f"{name} = EXCLUDED.{name}" for name in replaced)
        + " RETURNING session_id"
    )
