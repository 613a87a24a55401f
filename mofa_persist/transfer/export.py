"""Export: a selection of sessions as JSON Lines, streamed from one snapshot.

The file is described in ``docs/export-format.md``: a header line, then each session followed
by its messages, states and provider calls, then the calls of no session and ADK's app and
user state, then an end line with the counts (so a truncated file is recognised).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import func, select

from .common import (
    CHILDREN,
    DEFAULT_BATCH,
    FORMAT_NAME,
    FORMAT_VERSION,
    PLURAL,
    Counts,
    Kind,
    Selection,
    adk_states,
    c_t,
    in_view,
    jsonable,
    record_of,
    s_t,
)
from .reading import keyset, reading, session_rows, translated

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from ..store import Store


async def count_selection(store: Store, selection: Selection) -> Counts:
    """How many rows ``selection`` covers: the total of an export's progress bar."""
    selection = in_view(store, selection)
    ids = select(s_t.c.id).where(*selection.session_filters())
    queries: dict[Kind, Any] = {
        "session": select(func.count()).select_from(s_t).where(*selection.session_filters()),
    }
    for kind, table, _ in CHILDREN:
        queries[kind] = select(func.count()).select_from(table).where(table.c.session_id.in_(ids))
    counts = Counts()
    async with translated(store, "count rows"), reading(store, stale_ok=True) as conn:
        for kind, query in queries.items():
            counts.add(kind, int((await conn.execute(query)).scalar_one()))
        if selection.includes_unattached_calls:
            unattached = select(func.count()).where(*selection.unattached_call_filters())
            counts.add("api_call", int((await conn.execute(unattached)).scalar_one()))
            states = select(func.count()).where(*selection.owner_filters(adk_states))
            counts.add("adk_state", int((await conn.execute(states)).scalar_one()))
    return counts


def export_header(store: Store, selection: Selection) -> dict[str, Any]:
    return {
        "type": "header",
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "exported_at": jsonable(datetime.now(UTC)),
        "source": store.url.kind,
        "selection": selection.as_dict(),
    }


async def iter_export(
    store: Store, selection: Selection, *, batch_size: int = DEFAULT_BATCH
) -> AsyncIterator[dict[str, Any]]:
    """Every line of an export as a dict: header, rows, end line; one snapshot, streamed.

    The whole export reads in one transaction, so it is consistent even while agents write.
    A scoped store exports only the sessions and calls of its view.
    """
    selection = in_view(store, selection)
    yield export_header(store, selection)
    counts = Counts()
    async with translated(store, "export"), reading(store, stale_ok=True) as conn:
        sessions = keyset(conn, s_t, selection.session_filters(), "id", batch_size)
        async for session in sessions:
            async for kind, row in session_rows(conn, session, batch_size):
                counts.add(kind)
                yield record_of(kind, row)
        if selection.includes_unattached_calls:
            filters = selection.unattached_call_filters()
            async for row in keyset(conn, c_t, filters, "id", batch_size):
                counts.add("api_call")
                yield record_of("api_call", row)
            # ADK's app and user state of the view: shared by sessions, so not one's rows.
            filters = selection.owner_filters(adk_states)
            async for row in keyset(conn, adk_states, filters, "id", batch_size):
                counts.add("adk_state")
                yield record_of("adk_state", row)
    yield {"type": "end", "counts": counts.as_dict()}


def dump_line(record: Mapping[str, Any]) -> str:
    """One JSON Lines line. Only ``\\n`` ends a line: JSON escapes it inside strings."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"


async def export_jsonl(
    store: Store,
    out: IO[str],
    selection: Selection,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_row: Callable[[], None] | None = None,
) -> Counts:
    """Write an export to ``out`` one line at a time; returns what was written."""
    counts = Counts()
    async for record in iter_export(store, selection, batch_size=batch_size):
        out.write(dump_line(record))
        kind = record["type"]
        if kind in PLURAL:
            counts.add(kind)
            if on_row is not None:
                on_row()
    return counts
