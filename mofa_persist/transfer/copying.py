"""Copy: sessions with every row from one store to another, resumable and verified.

Each session is written in one destination transaction while the source is read from a
snapshot, and fingerprinted on the way; at the end the destination is re-read and compared.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import insert, select

from ..errors import InvalidInputError, PersistenceError
from .common import (
    DEFAULT_BATCH,
    TABLES,
    Counts,
    Kind,
    Selection,
    adk_states,
    c_t,
    canonical_line,
    encoded,
    in_view,
    s_t,
)
from .merging import Conflict, merge_adk_states, merge_rows
from .reading import (
    Digest,
    Fingerprint,
    exact_floats,
    fingerprint,
    is_key_clash,
    keyset,
    read_session,
    reading,
    session_rows,
    translated,
)

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncGenerator, AsyncIterator, Callable

    from sqlalchemy.engine import RowMapping

    from ..store import Store


@dataclass(slots=True)
class CopyReport:
    """What a copy did, and what verification found."""

    sessions: int = 0
    copied: int = 0
    #: Already at the destination with the same fingerprint: a resumed copy skips them.
    skipped: int = 0
    rows: Counts = field(default_factory=Counts)
    unattached_calls: int = 0
    verified: int = 0
    conflicts: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.conflicts and not self.mismatches


Outcome = Literal["copied", "skipped", "conflict"]


async def copy_data(
    src: Store,
    dst: Store,
    selection: Selection,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_session: Callable[[uuid.UUID, Outcome], None] | None = None,
    on_verified: Callable[[], None] | None = None,
) -> CopyReport:
    """Copy the selected sessions (with every row) and unattached calls from ``src`` to ``dst``.

    Each session is written in one transaction, so an interrupted copy leaves whole sessions
    only; run it again and sessions already there with the same fingerprint are skipped. A
    session that is at the destination with other content is a conflict, never overwritten.
    At the end every copied or skipped session is re-read at the destination and its counts
    and sha256 compared with the source's: any difference is a mismatch. Scoped stores copy
    only what lies inside both views.
    """
    if src.url.kind != "memory" and src.url.display == dst.url.display:
        raise InvalidInputError("source and destination are the same database")
    # Only rows inside both views: a scoped source copies its own rows, a scoped
    # destination accepts only rows that belong to it.
    selection = in_view(dst, in_view(src, selection))
    report = CopyReport()
    expected: dict[uuid.UUID, Fingerprint] = {}
    async for page in _session_pages(src, selection, batch_size):
        for session in page:
            session_id = session["id"]
            report.sessions += 1
            outcome, source = await _try_copy(src, dst, session_id, batch_size, report)
            if outcome == "copied":
                report.copied += 1
            elif outcome == "skipped":
                report.skipped += 1
            if source is not None and outcome != "conflict":
                expected[session_id] = source
            if on_session is not None:
                on_session(session_id, outcome)
    if selection.includes_unattached_calls:
        await _copy_unattached(src, dst, selection, batch_size, report)
        await _copy_adk_states(src, dst, selection, batch_size, report)
    await _verify(dst, expected, batch_size, report, on_verified)
    if selection.includes_unattached_calls:
        await _verify_unattached(src, dst, selection, batch_size, report)
    return report


# ---------------------------------------------------------------------- sessions


async def _session_pages(
    store: Store, selection: Selection, batch_size: int
) -> AsyncIterator[list[RowMapping]]:
    """Selected sessions by id, a page per short read transaction (none is held for long)."""
    after: uuid.UUID | None = None
    while True:
        stmt = select(s_t).where(*selection.session_filters())
        if after is not None:
            stmt = stmt.where(s_t.c.id > after)
        async with translated(store, "list sessions"), reading(store) as conn:
            ordered = stmt.order_by(s_t.c.id).limit(batch_size)
            rows = list((await conn.execute(ordered)).mappings().all())
        if rows:
            yield rows
        if len(rows) < batch_size:
            return
        after = rows[-1]["id"]


async def _exists(store: Store, session_id: uuid.UUID) -> bool:
    async with translated(store, "look up a session"), reading(store) as conn:
        return await read_session(conn, session_id) is not None


async def _try_copy(
    src: Store, dst: Store, session_id: uuid.UUID, batch_size: int, report: CopyReport
) -> tuple[Outcome, Fingerprint | None]:
    try:
        outcome, source = await _copy_session(src, dst, session_id, batch_size, report.rows)
    except PersistenceError as error:
        cause = error.__cause__
        if cause is None or not is_key_clash(cause):
            raise
        report.conflicts.append(
            f"session {session_id}: a key is taken at the destination (another row has this "
            "id, seq or version); not copied"
        )
        return "conflict", None
    if outcome == "conflict":
        report.conflicts.append(
            f"session {session_id}: at the destination with other content; not copied"
        )
    return outcome, source


async def _copy_session(
    src: Store, dst: Store, session_id: uuid.UUID, batch_size: int, rows: Counts
) -> tuple[Outcome, Fingerprint | None]:
    """Copy one session in one destination transaction, fingerprinting it on the way."""
    if await _exists(dst, session_id):
        source = await fingerprint(src, session_id, batch_size=batch_size)
        target = await fingerprint(dst, session_id, batch_size=batch_size)
        return ("skipped" if source == target else "conflict"), source
    exact = exact_floats(dst)
    digest = Digest()
    written = Counts()
    async with (
        translated(src, "read for copy"),
        reading(src) as source_conn,
        translated(dst, "copy"),
        dst.engine.begin() as target_conn,
    ):
        session = await read_session(source_conn, session_id)
        if session is None:  # deleted since it was listed
            return "skipped", None
        batch: list[dict[str, Any]] = []
        batch_kind: Kind = "session"
        async for kind, row in session_rows(source_conn, session, batch_size):
            digest.add(kind, row)
            if batch and (kind != batch_kind or len(batch) >= batch_size):
                await target_conn.execute(insert(TABLES[batch_kind]), batch)
                batch = []
            batch_kind = kind
            batch.append(encoded(kind, row, exact))
            written.add(kind)
        await target_conn.execute(insert(TABLES[batch_kind]), batch)
    rows.merge(written)
    return "copied", digest.result()


async def _verify(
    dst: Store,
    expected: dict[uuid.UUID, Fingerprint],
    batch_size: int,
    report: CopyReport,
    on_verified: Callable[[], None] | None,
) -> None:
    for session_id, source in expected.items():
        target = await fingerprint(dst, session_id, batch_size=batch_size)
        if target != source:
            report.mismatches.append(_mismatch(session_id, source, target))
        else:
            report.verified += 1
        if on_verified is not None:
            on_verified()


def _mismatch(session_id: uuid.UUID, source: Fingerprint, target: Fingerprint | None) -> str:
    if target is None:
        return f"session {session_id}: missing at the destination"
    for name in ("messages", "states", "api_calls"):
        if getattr(source, name) != getattr(target, name):
            return (
                f"session {session_id}: {getattr(source, name)} {name} at the source, "
                f"{getattr(target, name)} at the destination"
            )
    return f"session {session_id}: checksum differs ({source.sha256[:12]} != {target.sha256[:12]})"


# ---------------------------------------------------------------------- calls of no session


async def _unattached_batches(
    src: Store, selection: Selection, batch_size: int, action: str, *, adk: bool = False
) -> AsyncGenerator[list[RowMapping]]:
    """The selection's calls of no session (or, ``adk``, ADK's app and user state) at the
    source, ``batch_size`` at a time."""
    table = adk_states if adk else c_t
    filters = selection.owner_filters(table) if adk else selection.unattached_call_filters()
    async with translated(src, action), reading(src) as source_conn:
        batch: list[RowMapping] = []
        async for row in keyset(source_conn, table, filters, "id", batch_size):
            batch.append(row)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


async def _copy_unattached(
    src: Store, dst: Store, selection: Selection, batch_size: int, report: CopyReport
) -> None:
    """Calls of no session, a batch per transaction; existing identical ones are skipped."""
    exact = exact_floats(dst)
    batches = _unattached_batches(src, selection, batch_size, "read for copy")
    async with contextlib.aclosing(batches):
        async for batch in batches:
            numbered = [(0, row) for row in batch]
            inserted, unchanged = Counts(), Counts()
            try:
                async with translated(dst, "copy"), dst.engine.begin() as target_conn:
                    await merge_rows(target_conn, "api_call", numbered, exact, inserted, unchanged)
            except Conflict as conflict:
                report.conflicts.append(f"calls of no session: {conflict}; batch not copied")
                continue
            report.rows.merge(inserted)
            report.unattached_calls += inserted.api_calls + unchanged.api_calls


async def _verify_unattached(
    src: Store, dst: Store, selection: Selection, batch_size: int, report: CopyReport
) -> None:
    batches = _unattached_batches(src, selection, batch_size, "verify")
    async with contextlib.aclosing(batches):
        async for batch in batches:
            ids = [row["id"] for row in batch]
            async with translated(dst, "verify"), reading(dst) as target_conn:
                found = await target_conn.execute(select(c_t).where(c_t.c.id.in_(ids)))
                stored = {row["id"]: canonical_line("api_call", row) for row in found.mappings()}
            for row in batch:
                if stored.get(row["id"]) != canonical_line("api_call", row):
                    report.mismatches.append(f"api call {row['id']}: differs at the destination")


# ---------------------------------------------------------------------- ADK app and user state


async def _copy_adk_states(
    src: Store, dst: Store, selection: Selection, batch_size: int, report: CopyReport
) -> None:
    """ADK's app and user state of the selection's view, matched by ``key_hash``: a row the
    destination holds with other content is kept there and reported as a conflict."""
    exact = exact_floats(dst)
    batches = _unattached_batches(src, selection, batch_size, "read for copy", adk=True)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            numbered = [(0, row) for row in batch]
            inserted, unchanged = Counts(), Counts()
            async with translated(dst, "copy"), dst.engine.begin() as target_conn:
                found = await merge_adk_states(target_conn, numbered, exact, inserted, unchanged)
            report.conflicts.extend(found)
            report.rows.merge(inserted)
