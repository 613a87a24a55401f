"""Driver-level SQL for :meth:`MofaSaver.aget_tuple`, the call a graph makes on every step.

Why: through SQLAlchemy the read cost five round trips (BEGIN, the checkpoint, its channel
blobs, its pending writes, COMMIT) and on SQLite about ten hops to aiosqlite's thread, three
times the official savers' time. Here it is two statements on the pooled driver connection:
the checkpoint, then its blobs and pending writes together (``UNION ALL``); on SQLite both run
in one hop, inside one read transaction. The second statement needs the channel versions
stored inside the serialized checkpoint, so the two cannot be one.
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
