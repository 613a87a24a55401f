"""Stats: rows and tokens in total, by tenant and by day (UTC), counted by the database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, func, select
from sqlalchemy import cast as sql_cast

from ..errors import InvalidInputError
from .common import Selection, a_t, c_t, in_view, m_t, s_t
from .reading import reading, translated

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

    from sqlalchemy import ColumnElement, Table
    from sqlalchemy.sql.elements import KeyedColumnElement

    from ..store import Store

METRICS = ("sessions", "messages", "states", "api_calls", "tokens")


@dataclass(frozen=True, slots=True)
class Stats:
    """Row counts and tokens, in total, by tenant and by day (UTC) of creation."""

    since: datetime | None
    totals: dict[str, int]
    by_tenant: list[dict[str, Any]]
    by_day: list[dict[str, Any]]


def _day(column: KeyedColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """``YYYY-MM-DD`` of a UTC timestamp column, computed by the database."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    # SQLite keeps ISO text and MySQL a UTC DATETIME: the first 10 characters are the day.
    return func.substr(sql_cast(column, String(32)), 1, 10)


async def collect_stats(
    store: Store, *, since: datetime | None = None, selection: Selection | None = None
) -> Stats:
    """Sessions, messages, states, provider calls and tokens created since ``since``, of the
    selected sessions (and their owners' provider calls) within the store's view."""
    if since is not None and since.tzinfo is None:
        raise InvalidInputError("since must be a timezone-aware datetime")
    chosen = in_view(store, selection)
    dialect = store.engine.dialect.name
    by_tenant: dict[str | None, dict[str, int]] = {}
    by_day: dict[str | None, dict[str, int]] = {}
    async with translated(store, "collect stats"), reading(store, stale_ok=True) as conn:
        for metric, group, query in _stat_queries(since, dialect, chosen):
            target = by_tenant if group == "tenant" else by_day
            for key, value in await conn.execute(query):
                label = None if key is None else str(key)
                bucket = target.setdefault(label, dict.fromkeys(METRICS, 0))
                bucket[metric] += int(value or 0)
    totals = dict.fromkeys(METRICS, 0)
    for bucket in by_tenant.values():
        for metric in METRICS:
            totals[metric] += bucket[metric]
    tenants = sorted(by_tenant.items(), key=lambda item: (item[0] is not None, item[0] or ""))
    return Stats(
        since,
        totals,
        [{"tenant_id": key, **values} for key, values in tenants],
        [{"day": key, **values} for key, values in sorted(by_day.items(), key=_day_order)],
    )


def _day_order(item: tuple[str | None, dict[str, int]]) -> str:
    return item[0] or ""


def _selected(table: Table, chosen: Selection) -> list[ColumnElement[bool]]:
    """The selection as filters on ``table``: own owner columns, else its session's."""
    if table is c_t:
        owned = chosen.owner_filters(c_t)
        return owned if chosen.session_id is None else [c_t.c.session_id == chosen.session_id]
    filters = chosen.session_filters()
    if table is s_t or not filters:
        return filters
    return [table.c.session_id.in_(select(s_t.c.id).where(*filters))]


def _stat_queries(
    since: datetime | None, dialect: str, chosen: Selection
) -> Iterator[tuple[str, str, Any]]:
    """(metric, grouping, query) triples; each query yields (key, value) rows."""
    sources: list[tuple[str, Table, Any]] = [
        ("sessions", s_t, func.count()),
        ("messages", m_t, func.count()),
        ("states", a_t, func.count()),
        ("api_calls", c_t, func.count()),
        ("tokens", c_t, func.coalesce(func.sum(c_t.c.total_tokens), 0)),
    ]
    for metric, table, value in sources:
        recent = [] if since is None else [table.c.created_at >= since]
        recent += _selected(table, chosen)
        tenant: Any = table.c.tenant_id if "tenant_id" in table.c else s_t.c.tenant_id
        source: Any = table if table is s_t or table is c_t else table.join(s_t)
        yield (
            metric,
            "tenant",
            select(tenant.label("k"), value).select_from(source).where(*recent).group_by(tenant),
        )
        day = _day(table.c.created_at, dialect).label("day")
        yield metric, "day", select(day, value).where(*recent).group_by(day)
