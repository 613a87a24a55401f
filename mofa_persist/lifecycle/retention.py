"""Applying a :class:`RetentionPolicy` online, within a store's view.

Each rule runs as its own pass of bounded batches (see :mod:`.batches`), safe while agents
append to the same sessions: message and state rules never touch the session row, whose
counters keep ``seq`` and versions going; idle sessions are deleted whole, one small group of
sessions per transaction, and only if they are still idle when their delete runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, literal, or_, select

from ..backend import scope_filter
from ..errors import InvalidInputError
from ..models import agent_state_table, api_calls_table, messages_table, sessions_table
from .batches import Progress, count_rows, delete_in_batches, session_pages
from .checkpoints import TABLES as CHECKPOINT_TABLES
from .checkpoints import CheckpointRetention

if TYPE_CHECKING:
    import uuid

    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..repository.core import StoreCore
    from .policy import RetentionPolicy

s_t = sessions_table
m_t = messages_table
a_t = agent_state_table
c_t = api_calls_table

#: Sessions deleted whole are grouped so that one transaction removes about this many
#: messages (a single larger session still goes alone, in one transaction of its own).
ROWS_PER_SESSION_GROUP = 5000


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What a retention run deleted (or, with ``dry_run``, would delete), per table."""

    dry_run: bool
    ran_at: datetime
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def apply_retention(
    store: StoreCore,
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
    batch_size: int = 1000,
    now: datetime | None = None,
    on_progress: Progress | None = None,
) -> RetentionReport:
    """Delete what ``policy`` no longer keeps, within ``store``'s view.

    Returns per-table counts (``sessions``, ``messages``, ``agent_state``, ``api_calls``, and
    with ``checkpoints_per_thread`` the three ``langgraph_*`` tables).
    ``on_progress(table, rows)`` is called after every batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError("batch_size must be a positive integer")
    if now is not None and now.tzinfo is None:
        raise InvalidInputError("now must be a timezone-aware datetime")
    ran_at = now or datetime.now(UTC)
    counts = dict.fromkeys(("sessions", "messages", "agent_state", "api_calls"), 0)
    if policy.checkpoints_per_thread is not None:
        counts.update(dict.fromkeys(CHECKPOINT_TABLES, 0))
    owned = scope_filter(store.scope)  # the view, on the sessions table
    run = _Run(store, owned, batch_size, dry_run, on_progress, counts)
    if policy.idle_session_age is not None:
        idle_cutoff = ran_at - policy.idle_session_age
        await run.idle_sessions(idle_cutoff)
        if dry_run:
            # A real run has deleted the idle sessions by now: the rules below must not
            # count their messages and states a second time.
            run.owned = [*owned, s_t.c.updated_at >= idle_cutoff]
    if policy.message_age is not None or policy.messages_per_session is not None:
        cutoff = None if policy.message_age is None else ran_at - policy.message_age
        await run.messages(cutoff, policy.messages_per_session)
    if policy.state_versions is not None:
        await run.states(policy.state_versions)
    if policy.checkpoints_per_thread is not None:
        await CheckpointRetention(
            store,
            run.owned,
            policy.checkpoints_per_thread,
            batch_size,
            dry_run,
            on_progress,
            counts,
        ).run()
    if policy.api_call_age is not None:
        where = [c_t.c.created_at < ran_at - policy.api_call_age, *scope_filter(store.scope, c_t)]
        counts["api_calls"] += await delete_in_batches(
            store, c_t, where, batch_size=batch_size, dry_run=dry_run, on_progress=on_progress
        )
    return RetentionReport(dry_run, ran_at, counts)


@dataclass(slots=True)
class _Run:
    store: StoreCore
    owned: list[ColumnElement[bool]]
    batch_size: int
    dry_run: bool
    on_progress: Progress | None
    counts: dict[str, int]

    async def per_session_page(self, table: Any, rule: ColumnElement[bool], name: str) -> None:
        """Delete ``table`` rows matching ``rule``, the sessions of the view a page at a time."""
        async for page in session_pages(self.store, self.owned, self.batch_size):
            ids = [session_id for session_id, _ in page]
            where = [table.c.session_id.in_(ids), rule]
            self.counts[name] += await delete_in_batches(
                self.store,
                table,
                where,
                batch_size=self.batch_size,
                dry_run=self.dry_run,
                on_progress=self.on_progress,
            )

    async def messages(self, cutoff: datetime | None, keep: int | None) -> None:
        rules: list[ColumnElement[bool]] = []
        if cutoff is not None:
            rules.append(m_t.c.created_at < cutoff)
        if keep is not None:
            # Seq numbers above last_seq - N are the newest N; appends only raise last_seq.
            newest = select(s_t.c.last_seq).where(s_t.c.id == m_t.c.session_id).scalar_subquery()
            rules.append(m_t.c.seq <= newest - literal(keep))
        await self.per_session_page(m_t, or_(*rules), "messages")

    async def states(self, keep: int) -> None:
        newest = select(s_t.c.state_version).where(s_t.c.id == a_t.c.session_id).scalar_subquery()
        await self.per_session_page(a_t, a_t.c.version <= newest - literal(keep), "agent_state")

    async def idle_sessions(self, cutoff: datetime) -> None:
        idle = [*self.owned, s_t.c.updated_at < cutoff]
        async for page in session_pages(self.store, idle, self.batch_size):
            for group in _groups(page):
                await self._delete_sessions(group, idle)

    async def _delete_sessions(
        self, group: list[uuid.UUID], idle: list[ColumnElement[bool]]
    ) -> None:
        """One group of idle sessions, with their messages and states, in one transaction."""
        pick = select(s_t.c.id).where(s_t.c.id.in_(group), *idle)
        if not self.dry_run:
            # Locked until the delete commits: an agent cannot wake a session half-deleted.
            pick = pick.with_for_update()

        async def work(conn: AsyncConnection) -> dict[str, int]:
            ids = list((await conn.execute(pick)).scalars())
            found = {"sessions": len(ids)}
            if not ids:
                return found
            # Counted in the transaction that deletes, so the report matches what went.
            for name, table in (("messages", m_t), ("agent_state", a_t)):
                stmt = select(func.count()).where(table.c.session_id.in_(ids))
                found[name] = int((await conn.execute(stmt)).scalar_one())
            if not self.dry_run:
                await conn.execute(delete(s_t).where(s_t.c.id.in_(ids)))
            return found

        found = await self.store._run(work, write=not self.dry_run, action="delete idle sessions")
        for name, amount in found.items():
            self.counts[name] += amount
            if self.on_progress is not None and amount:
                self.on_progress(name, amount)


def _groups(page: list[tuple[uuid.UUID, int]]) -> list[list[uuid.UUID]]:
    """Sessions in groups of about ROWS_PER_SESSION_GROUP messages each."""
    groups: list[list[uuid.UUID]] = []
    current: list[uuid.UUID] = []
    rows = 0
    for session_id, last_seq in page:
        if current and rows + last_seq > ROWS_PER_SESSION_GROUP:
            groups.append(current)
            current, rows = [], 0
        current.append(session_id)
        rows += last_seq
    if current:
        groups.append(current)
    return groups


__all__ = ["RetentionReport", "apply_retention", "count_rows"]
