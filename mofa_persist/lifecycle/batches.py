"""Deleting many rows online: bounded batches, each its own short transaction.

Why batches: one ``DELETE`` of a million rows holds its locks (and, on MySQL, grows its undo
log) for as long as it runs, stalling every agent that writes meanwhile. Here each batch picks
at most ``batch_size`` row ids and deletes exactly those, in a transaction of its own, through
the store's runner (so lock races are retried like any write). The conditions are re-checked
by every batch, so a run that is killed loses nothing and a rerun simply goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select

from ..models import sessions_table

if TYPE_CHECKING:
    import uuid

    from sqlalchemy import ColumnElement, Table
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..repository.core import StoreCore

s_t = sessions_table
Progress = Callable[[str, int], None]


async def count_rows(store: StoreCore, table: Table, where: list[ColumnElement[bool]]) -> int:
    stmt = select(func.count()).select_from(table).where(*where)

    async def work(conn: AsyncConnection) -> int:
        return int((await conn.execute(stmt)).scalar_one())

    return await store._run(work, write=False, action=f"count {table.name}")


async def delete_in_batches(
    store: StoreCore,
    table: Table,
    where: list[ColumnElement[bool]],
    *,
    batch_size: int,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> int:
    """Delete the rows of ``table`` matching ``where``, ``batch_size`` per transaction.

    Returns how many were deleted (with ``dry_run``: how many match, nothing is deleted).
    """
    if dry_run:
        found = await count_rows(store, table, where)
        if on_progress is not None and found:
            on_progress(table.name, found)
        return found
    key = table.c.id
    pick = select(key).where(*where).order_by(key).limit(batch_size)

    async def one_batch(conn: AsyncConnection) -> tuple[int, int]:
        ids = list((await conn.execute(pick)).scalars())
        if not ids:
            return 0, 0
        # The conditions again: a row that changed since it was picked is left alone.
        result = await conn.execute(delete(table).where(key.in_(ids), *where))
        return len(ids), int(result.rowcount)

    total = 0
    while True:
        picked, deleted = await store._run(
            one_batch, write=True, action=f"delete from {table.name}"
        )
        if picked == 0:
            return total
        total += deleted
        if on_progress is not None and deleted:
            on_progress(table.name, deleted)


async def session_pages(
    store: StoreCore, where: list[ColumnElement[bool]], batch_size: int
) -> AsyncIterator[list[tuple[uuid.UUID, int]]]:
    """(id, last_seq) of the sessions matching ``where``, a page per short read, by id."""
    after: uuid.UUID | None = None
    while True:
        stmt = select(s_t.c.id, s_t.c.last_seq).where(*where)
        if after is not None:
            stmt = stmt.where(s_t.c.id > after)
        stmt = stmt.order_by(s_t.c.id).limit(batch_size)

        async def work(conn: AsyncConnection, stmt: Any = stmt) -> list[tuple[uuid.UUID, int]]:
            return [(row.id, int(row.last_seq)) for row in await conn.execute(stmt)]

        page = await store._run(work, write=False, action="find sessions")
        if not page:
            return
        yield page
        after = page[-1][0]
