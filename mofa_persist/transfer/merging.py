"""Writing rows that may already be there: what import and copy share.

A row whose id is stored with the same content is skipped, which makes both idempotent; a row
whose id is stored with OTHER content is a conflict, and nothing is ever overwritten.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from .common import TABLES, Counts, Kind, canonical_line, encoded

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sqlalchemy.ext.asyncio import AsyncConnection


class Conflict(Exception):
    """A row exists with other content: the unit is rolled back and reported."""


async def merge_rows(
    conn: AsyncConnection,
    kind: Kind,
    rows: Sequence[tuple[int, Mapping[Any, Any]]],
    exact: bool,
    inserted: Counts,
    unchanged: Counts,
) -> None:
    """Insert the rows (with their line numbers) that are missing; identical rows are skipped,
    others raise :class:`Conflict`."""
    table = TABLES[kind]
    prepared = [(number, encoded(kind, values, exact)) for number, values in rows]
    ids = [values["id"] for _, values in prepared]
    result = await conn.execute(select(table).where(table.c.id.in_(ids)))
    existing = {row["id"]: row for row in result.mappings()}
    fresh = []
    for number, values in prepared:
        row = existing.get(values["id"])
        if row is None:
            fresh.append(values)
        elif canonical_line(kind, row) != canonical_line(kind, values):
            raise Conflict(f"line {number}: {kind} {values['id']} exists with other content")
        else:
            unchanged.add(kind)
    if fresh:
        await conn.execute(insert(table), fresh)
        inserted.add(kind, len(fresh))


def _without_id(kind: Kind, row: Mapping[Any, Any]) -> str:
    return canonical_line(kind, {**row, "id": None})


async def merge_adk_states(
    conn: AsyncConnection,
    rows: Sequence[tuple[int, Mapping[Any, Any]]],
    exact: bool,
    inserted: Counts,
    unchanged: Counts,
) -> list[str]:
    """ADK app/user state rows, matched by ``key_hash`` (each database names its own row
    ids): missing ones are inserted, equal ones skipped, and one that differs is left as the
    destination has it and returned as a conflict (state is never overwritten or merged)."""
    table = TABLES["adk_state"]
    prepared = [(number, encoded("adk_state", values, exact)) for number, values in rows]
    hashes = [values["key_hash"] for _, values in prepared]
    result = await conn.execute(select(table).where(table.c.key_hash.in_(hashes)))
    existing = {row["key_hash"]: row for row in result.mappings()}
    fresh, conflicts = [], []
    for number, values in prepared:
        row = existing.get(values["key_hash"])
        if row is None:
            fresh.append(values)
        elif _without_id("adk_state", row) == _without_id("adk_state", values):
            unchanged.add("adk_state")
        else:
            who = f" of user {values['adk_user_id']!r}" if values["adk_user_id"] else ""
            conflicts.append(
                ("" if not number else f"line {number}: ")
                + f"ADK {values['kind']} state of app {values['app_name']!r}{who} "
                "exists with other content; kept as it is"
            )
    if fresh:
        await conn.execute(insert(table), fresh)
        inserted.add("adk_state", len(fresh))
    return conflicts
