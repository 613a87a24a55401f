"""Prune: retention by age, of whole sessions or of old messages beyond each session's newest N.

Works a batch of sessions per transaction, so it never holds long locks; a dry run only reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import delete, exists, func, literal, select

from ..errors import InvalidInputError
from .common import Counts, Selection, a_t, in_view, m_t, s_t
from .reading import reading, translated

if TYPE_CHECKING:
    import contextlib
    import uuid
    from collections.abc import AsyncIterator, Callable

    from sqlalchemy import ColumnElement, Table
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..store import Store

_AGE = re.compile(r"\s*(\d+)\s*([smhdw])\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as a duration."""
    match = _AGE.fullmatch(text.lower())
    if match is None:
        raise InvalidInputError(f"{text!r} is not an age; write it like 30d, 12h, 90m or 2w")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What prune removed, or with ``dry_run`` would remove."""

    mode: Literal["sessions", "messages"]
    cutoff: datetime
    keep_last: int | None
    dry_run: bool
    sessions: int
    messages: int
    states: int


def _candidates(cutoff: datetime, keep_last: int | None) -> ColumnElement[bool]:
    """Sessions prune visits: not updated since the cutoff, or with messages to remove."""
    if keep_last is None:
        return s_t.c.updated_at < cutoff
    # Seq numbers above last_seq - N are the newest N; no other message ever has them.
    return exists().where(
        m_t.c.session_id == s_t.c.id,
        m_t.c.created_at < cutoff,
        m_t.c.seq <= s_t.c.last_seq - keep_last,
    )


@dataclass(frozen=True, slots=True)
class _Pass:
    """One prune run's settings, shared by the sessions and the messages mode."""

    store: Store
    chosen: list[ColumnElement[bool]]
    cutoff: datetime
    keep_last: int | None
    dry_run: bool
    batch_size: int
    on_batch: Callable[[int], None] | None

    async def pages(self) -> AsyncIterator[list[uuid.UUID]]:
        """Ids of the candidate sessions, a page per short read transaction, in id order."""
        condition = [*self.chosen, _candidates(self.cutoff, self.keep_last)]
        after: uuid.UUID | None = None
        while True:
            stmt = select(s_t.c.id).where(*condition)
            if after is not None:
                stmt = stmt.where(s_t.c.id > after)
            stmt = stmt.order_by(s_t.c.id).limit(self.batch_size)
            async with (
                translated(self.store, "find sessions to prune"),
                reading(self.store) as conn,
            ):
                ids = list((await conn.execute(stmt)).scalars())
            if not ids:
                return
            yield ids
            after = ids[-1]

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A dry run only reads, so on SQLite it does not take the write lock."""
        return reading(self.store) if self.dry_run else self.store.engine.begin()

    def done(self, ids: list[uuid.UUID]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(ids))


async def prune(
    store: Store,
    *,
    older_than: timedelta,
    keep_last: int | None = None,
    dry_run: bool = False,
    selection: Selection | None = None,
    batch_size: int = 500,
    now: datetime | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> PruneReport:
    """Retention. Without ``keep_last``: delete whole sessions not updated since the cutoff
    (their messages and states go with them; provider calls are kept, unattached). With
    ``keep_last=N``: delete messages older than the cutoff except each session's newest N
    (by seq); sessions, their counters and states are kept.

    Works a batch of sessions per transaction, so it never holds long locks.
    """
    if keep_last is not None and (isinstance(keep_last, bool) or keep_last < 0):
        raise InvalidInputError("keep_last must be a non-negative integer")
    if older_than < timedelta(0):
        raise InvalidInputError("older_than must not be negative")
    cutoff = (now or datetime.now(UTC)) - older_than
    chosen = in_view(store, selection).session_filters()
    run = _Pass(store, chosen, cutoff, keep_last, dry_run, batch_size, on_batch)
    if keep_last is None:
        totals = await _prune_sessions(run)
        mode: Literal["sessions", "messages"] = "sessions"
    else:
        totals = await _prune_messages(run, keep_last)
        mode = "messages"
    return PruneReport(
        mode, cutoff, keep_last, dry_run, totals.sessions, totals.messages, totals.states
    )


async def _count_in(conn: AsyncConnection, table: Table, filters: list[Any]) -> int:
    stmt = select(func.count()).select_from(table).where(*filters)
    return int((await conn.execute(stmt)).scalar_one())


async def _prune_sessions(run: _Pass) -> Counts:
    totals = Counts()
    async for ids in run.pages():
        async with translated(run.store, "prune sessions"), run.transaction() as conn:
            totals.add("message", await _count_in(conn, m_t, [m_t.c.session_id.in_(ids)]))
            totals.add("state", await _count_in(conn, a_t, [a_t.c.session_id.in_(ids)]))
            if run.dry_run:
                totals.add("session", len(ids))
            else:
                stmt = delete(s_t).where(s_t.c.id.in_(ids), s_t.c.updated_at < run.cutoff)
                totals.add("session", (await conn.execute(stmt)).rowcount)
        run.done(ids)
    return totals


async def _prune_messages(run: _Pass, keep_last: int) -> Counts:
    totals = Counts()
    last_seq = select(s_t.c.last_seq).where(s_t.c.id == m_t.c.session_id).scalar_subquery()
    async for ids in run.pages():
        doomed = [
            m_t.c.session_id.in_(ids),
            m_t.c.created_at < run.cutoff,
            m_t.c.seq <= last_seq - literal(keep_last),
        ]
        async with translated(run.store, "prune messages"), run.transaction() as conn:
            if run.dry_run:
                totals.add("message", await _count_in(conn, m_t, doomed))
            else:
                totals.add("message", (await conn.execute(delete(m_t).where(*doomed))).rowcount)
        totals.add("session", len(ids))
        run.done(ids)
    return totals


async def count_prune_candidates(
    store: Store,
    *,
    older_than: timedelta,
    keep_last: int | None = None,
    selection: Selection | None = None,
) -> int:
    """How many sessions prune will visit: the total of its progress bar."""
    condition = [
        *in_view(store, selection).session_filters(),
        _candidates(datetime.now(UTC) - older_than, keep_last),
    ]
    async with translated(store, "count sessions"), reading(store) as conn:
        stmt = select(func.count()).select_from(s_t).where(*condition)
        return int((await conn.execute(stmt)).scalar_one())
