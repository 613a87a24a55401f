"""Retention of LangGraph checkpoints: keep the newest N of each thread, per namespace.

A checkpoint's channel values live in ``langgraph_blobs``, shared by every checkpoint that did
not change the channel, so a blob may go only when no checkpoint left in its thread uses it.
Which blobs a checkpoint uses is written inside its serialized bytes (``channel_versions``);
they are read here with ``ormsgpack`` (LangGraph's own dependency) without reviving any
object. A checkpoint that cannot be read that way (an encrypting serializer, or no
``ormsgpack``) keeps every blob of its thread: old checkpoints and writes still go, nothing a
kept checkpoint needs is ever deleted.

Each batch is one transaction that deletes the oldest checkpoints beyond the newest N, their
pending writes, and the blobs that only they used (decided against every other checkpoint of
the thread read in the same transaction), so a run killed between batches leaves no
checkpoint without its values and a rerun goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, exists, func, or_, select

from ..models import (
    langgraph_blobs_table,
    langgraph_checkpoints_table,
    langgraph_writes_table,
    sessions_table,
)
from .batches import Progress, session_pages

if TYPE_CHECKING:
    import uuid
    from collections.abc import Iterable

    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..repository.core import StoreCore

s_t = sessions_table
c_t = langgraph_checkpoints_table
b_t = langgraph_blobs_table
w_t = langgraph_writes_table

#: The tables this rule reports, in the order their rows go.
TABLES = ("langgraph_checkpoints", "langgraph_writes", "langgraph_blobs")
#: OR-ed key conditions per statement.
_CHUNK = 100

Blob = tuple[str, str]


def references(kind: str, payload: bytes) -> set[Blob] | None:
    """The ``(channel, version)`` pairs a stored checkpoint uses; None if it cannot be read."""
    data: Any
    try:
        if kind == "msgpack":
            import ormsgpack

            data = ormsgpack.unpackb(payload, ext_hook=lambda _code, _data: None)
        elif kind == "json":
            data = json.loads(payload)
        else:
            return None
    except Exception:  # an unreadable payload keeps its blobs; it is not this rule's to judge
        return None
    versions = data.get("channel_versions") if isinstance(data, dict) else None
    if not isinstance(versions, dict):
        return None
    return {(str(channel), str(version)) for channel, version in versions.items()}


def _union(found: Iterable[set[Blob] | None]) -> set[Blob] | None:
    result: set[Blob] = set()
    for refs in found:
        if refs is None:
            return None
        result |= refs
    return result


@dataclass(slots=True)
class CheckpointRetention:
    """One run of the ``checkpoints_per_thread`` rule over the sessions matching ``owned``."""

    store: StoreCore
    owned: list[ColumnElement[bool]]
    keep: int
    batch_size: int
    dry_run: bool
    on_progress: Progress | None
    counts: dict[str, int]

    async def run(self) -> None:
        threads = [*self.owned, exists().where(c_t.c.session_id == s_t.c.id)]
        async for page in session_pages(self.store, threads, self.batch_size):
            for session_id, ns in await self._crowded([sid for sid, _ in page]):
                if self.dry_run:
                    await self._count_group(session_id, ns)
                else:
                    while await self._delete_batch(session_id, ns):
                        pass

    async def _crowded(self, ids: list[uuid.UUID]) -> list[tuple[uuid.UUID, str]]:
        """(thread, namespace) of these sessions that hold more than ``keep`` checkpoints."""
        stmt = (
            select(c_t.c.session_id, c_t.c.checkpoint_ns)
            .where(c_t.c.session_id.in_(ids))
            .group_by(c_t.c.session_id, c_t.c.checkpoint_ns)
            .having(func.count() > self.keep)
            .order_by(c_t.c.session_id, c_t.c.checkpoint_ns)
        )

        async def work(conn: AsyncConnection) -> list[tuple[uuid.UUID, str]]:
            return [(row.session_id, row.checkpoint_ns) for row in await conn.execute(stmt)]

        return await self.store._run(work, write=False, action="find LangGraph threads")

    async def _cutoff(self, conn: AsyncConnection, session_id: uuid.UUID, ns: str) -> str | None:
        """The oldest checkpoint id that is kept: the ``keep``-th newest."""
        stmt = (
            select(c_t.c.checkpoint_id)
            .where(c_t.c.session_id == session_id, c_t.c.checkpoint_ns == ns)
            .order_by(c_t.c.checkpoint_id.desc())
            .offset(self.keep - 1)
            .limit(1)
        )
        found = (await conn.execute(stmt)).scalar()
        return None if found is None else str(found)

    async def _delete_batch(self, session_id: uuid.UUID, ns: str) -> bool:
        """Delete the oldest batch beyond the newest ``keep``; False when there is none."""
        group = [c_t.c.session_id == session_id, c_t.c.checkpoint_ns == ns]

        async def work(conn: AsyncConnection) -> dict[str, int]:
            cutoff = await self._cutoff(conn, session_id, ns)
            if cutoff is None:
                return {}
            picked = list(
                await conn.execute(
                    select(c_t.c.id, c_t.c.checkpoint_id, c_t.c.checkpoint_type, c_t.c.checkpoint)
                    .where(*group, c_t.c.checkpoint_id < cutoff)
                    .order_by(c_t.c.checkpoint_id)
                    .limit(self.batch_size)
                )
            )
            if not picked:
                return {}
            ids = [row.id for row in picked]
            rest = await conn.execute(
                select(c_t.c.checkpoint_type, c_t.c.checkpoint).where(*group, c_t.c.id.notin_(ids))
            )
            kept = _union(references(row.checkpoint_type, row.checkpoint) for row in rest)
            used = _union(references(row.checkpoint_type, row.checkpoint) for row in picked)
            done = {name: 0 for name in TABLES}
            cids = [str(row.checkpoint_id) for row in picked]
            for part in _chunks(cids):
                result = await conn.execute(
                    delete(w_t).where(
                        w_t.c.session_id == session_id,
                        w_t.c.checkpoint_ns == ns,
                        w_t.c.checkpoint_id.in_(part),
                    )
                )
                done["langgraph_writes"] += int(result.rowcount)
            for part in _chunks(ids):
                result = await conn.execute(delete(c_t).where(c_t.c.id.in_(part)))
                done["langgraph_checkpoints"] += int(result.rowcount)
            if kept is not None and used is not None:
                for blobs in _chunks(sorted(used - kept)):
                    result = await conn.execute(
                        delete(b_t).where(_blob_keys(session_id, ns, blobs))
                    )
                    done["langgraph_blobs"] += int(result.rowcount)
            return done

        done = await self.store._run(work, write=True, action="delete old LangGraph checkpoints")
        self._report(done)
        return bool(done)

    async def _count_group(self, session_id: uuid.UUID, ns: str) -> None:
        """What :meth:`_delete_batch` would delete from this thread, all batches together."""
        group = [c_t.c.session_id == session_id, c_t.c.checkpoint_ns == ns]

        async def work(conn: AsyncConnection) -> dict[str, int]:
            cutoff = await self._cutoff(conn, session_id, ns)
            if cutoff is None:
                return {}
            rows = list(
                await conn.execute(
                    select(c_t.c.checkpoint_id, c_t.c.checkpoint_type, c_t.c.checkpoint).where(
                        *group
                    )
                )
            )
            old = [row for row in rows if str(row.checkpoint_id) < cutoff]
            young = [row for row in rows if str(row.checkpoint_id) >= cutoff]
            kept = _union(references(row.checkpoint_type, row.checkpoint) for row in young)
            used = _union(references(row.checkpoint_type, row.checkpoint) for row in old)
            writes = select(func.count()).where(
                w_t.c.session_id == session_id,
                w_t.c.checkpoint_ns == ns,
                w_t.c.checkpoint_id < cutoff,
                w_t.c.checkpoint_id.in_(select(c_t.c.checkpoint_id).where(*group)),
            )
            blobs = 0
            if kept is not None and used is not None:
                for part in _chunks(sorted(used - kept)):
                    stmt = select(func.count()).where(_blob_keys(session_id, ns, part))
                    blobs += int((await conn.execute(stmt)).scalar_one())
            return {
                "langgraph_checkpoints": len(old),
                "langgraph_writes": int((await conn.execute(writes)).scalar_one()),
                "langgraph_blobs": blobs,
            }

        self._report(
            await self.store._run(work, write=False, action="count old LangGraph checkpoints")
        )

    def _report(self, done: dict[str, int]) -> None:
        for name, amount in done.items():
            self.counts[name] += amount
            if self.on_progress is not None and amount:
                self.on_progress(name, amount)


def _blob_keys(session_id: uuid.UUID, ns: str, blobs: Iterable[Blob]) -> ColumnElement[bool]:
    return and_(
        b_t.c.session_id == session_id,
        b_t.c.checkpoint_ns == ns,
        or_(*(and_(b_t.c.channel == ch, b_t.c.version == version) for ch, version in blobs)),
    )


def _chunks(items: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
