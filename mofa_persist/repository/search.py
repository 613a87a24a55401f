"""Search across conversations: the native full-text index finds candidates, the exact
matcher of :mod:`mofa_persist.searching` decides, so every backend gives the same hits."""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Float,
    Numeric,
    Uuid,
    and_,
    cast,
    column,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    table,
    text,
    union_all,
)
from sqlalchemy.dialects.mysql import match as mysql_match

from ..errors import BackendError, InvalidInputError
from ..keys import database_key, keyed_digest
from ..records import Message, Page
from ..searching import (
    MessageHit,
    Query,
    mysql_terms,
    parse_query,
    postgres_tsquery,
    sqlite_match,
)
from ..validate import check_limit, check_role, coerce_uuid
from .core import StoreCore
from .tables import m_t, s_t

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection
    from sqlalchemy.sql.elements import ColumnElement

    from ..backend import _Backend

#: Default and largest page of :meth:`SearchApi.search_messages`.
DEFAULT_HITS = 20
MAX_HITS = 500
#: The most candidates one round trip reads (batches grow 4x while few pass).
MAX_BATCH = 5000
#: SQLite/memory: from how many matches the best are ranked in a window (see _fts_ranked).
WINDOW_FROM = 10_000
#: The revision that creates the search indexes (PostgreSQL, MySQL).
SEARCH_REVISION = "0008"
#: SQLite/memory: the revision whose rowid map holds created_at (what the search sorts by).
SQLITE_SEARCH_REVISION = "0009"
#: Migration 0008's stored tsvector column (PostgreSQL), GIN-indexed.
_PG_VECTOR = "messages.search_vector"
_PG_LONG = "length(messages.content) > 100000"

_CURSOR_PREFIX = "s1."
_MALFORMED = "cursor is malformed: pass a page's next_cursor unchanged"
_FOREIGN = (
    "cursor does not belong to this search: pass a page's next_cursor unchanged, to the same "
    "view with the same query and filters"
)

_fts = table("messages_search", column("rowid"))
_fts_map = table(
    "messages_search_map",
    column("id"),
    column("message_id", Uuid()),
    column("created_at", m_t.c.created_at.type),
)


@dataclass(frozen=True, slots=True)
class _Ready:
    """What was learnt once per connected database: the index exists (and MySQL's sizes)."""

    min_token: int = 3
    max_token: int = 84


_READY: weakref.WeakKeyDictionary[_Backend, _Ready] = weakref.WeakKeyDictionary()


class SearchApi(StoreCore):
    """Search across conversations, within the view."""

    async def search_messages(
        self,
        query: str,
        *,
        session_id: uuid.UUID | str | None = None,
        role: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = DEFAULT_HITS,
        cursor: str | None = None,
    ) -> Page[MessageHit]:
        """Messages matching ``query`` (see docs/search.md), most relevant first, ties newest
        first, one page at a time.

        ``since`` is inclusive and ``until`` exclusive (timezone-aware). ``next_cursor`` is
        bound to this view, query and filters; it is ``None`` on the last page.
        """
        parsed = parse_query(query)
        sid = coerce_uuid("session_id", session_id, optional=True)
        checked_role = None if role is None else check_role(role)
        for name, bound in (("since", since), ("until", until)):
            if bound is not None and (not isinstance(bound, datetime) or bound.tzinfo is None):
                raise InvalidInputError(f"{name} must be a timezone-aware datetime")
        size = check_limit("limit", limit, optional=False)
        assert size is not None
        if size > MAX_HITS:
            raise InvalidInputError(f"limit must be at most {MAX_HITS}; got {size}")
        binding = "|".join(
            [
                "search_messages",
                self._scope.describe(),
                parsed.text,
                f"session_id={sid or ''}",
                f"role={checked_role or ''}",
                f"since={since.isoformat() if since else ''}",
                f"until={until.isoformat() if until else ''}",
            ]
        )
        key = await database_key(self)
        after = None if cursor is None else _decode(key, binding, cursor)
        ready = await self._search_ready()
        if size == 0:
            return Page([], None)
        filters: list[ColumnElement[bool]] = [*self._scope_filter()]
        if sid is not None:
            filters.append(m_t.c.session_id == sid)
        if checked_role is not None:
            filters.append(m_t.c.role == checked_role)
        if since is not None:
            filters.append(m_t.c.created_at >= since)
        if until is not None:
            filters.append(m_t.c.created_at < until)
        kind = self._backend.url.kind
        scoped = self._scope.restricted
        # The first trip reads one page and one row more: the FTS5 and tsvector candidates
        # almost all pass the exact check, and every extra row is one more message and
        # session read (at 1M messages, mostly outside the page cache). MySQL's candidates
        # (a LIKE scan, stopwords) often fail it: it reads more at once.
        batch = size + 1 if kind != "mysql" else max(2 * (size + 1), 50)

        async def work(conn: AsyncConnection) -> Page[MessageHit]:
            if sid is not None:
                await self._require_session(conn, sid)
            hits: list[tuple[MessageHit, str]] = []
            position = after
            size_of_batch = batch
            expression = sqlite_match(parsed) if kind in ("sqlite", "memory") else None
            windowed = False
            long_messages = False
            if kind == "postgresql":
                # The branch for messages past the indexed prefix is left out when there are
                # none: its estimate (a third of the table) made the planner start parallel
                # workers for a rare word (~20 ms of a 30 ms query at 100k messages). The
                # probe is ordered like the partial index so that the same misestimate
                # cannot pick a sequential scan (EXISTS did: 160 ms at 100k).
                # The same round trip turns JIT off for this transaction: a common word's
                # estimate (every match ranked) passes jit_above_cost, and compiling cost
                # more than the query saved.
                longest = text(
                    "SELECT set_config('jit', 'off', true) AS jit, (SELECT session_id FROM"
                    f" messages WHERE {_PG_LONG} ORDER BY session_id LIMIT 1) AS long_session"
                )
                long_messages = (await conn.execute(longest)).one().long_session is not None
            if expression is not None:
                # A rank window costs a second bm25 pass and only pays when many match
                # (100k messages: 2,700 matches 63 -> 135 ms, 21,000 matches 365 -> 129 ms).
                found = text(
                    "SELECT count(*) FROM (SELECT 1 FROM messages_search"
                    " WHERE messages_search MATCH :fts_query LIMIT :fts_window)"
                ).bindparams(fts_query=expression, fts_window=WINDOW_FROM)
                windowed = int((await conn.execute(found)).scalar_one()) >= WINDOW_FROM
            while len(hits) <= size:
                stmt = _candidates(
                    kind,
                    parsed,
                    ready,
                    filters,
                    position,
                    size_of_batch,
                    scoped=scoped,
                    windowed=windowed,
                    long_messages=long_messages,
                )
                rows = (await conn.execute(stmt)).all()
                cut = windowed and not rows
                for row in rows:
                    cut = windowed and row.window_floor is not None
                    rank_text = _rank_text(row.rank)
                    position = (rank_text, row.created_at, row.id)
                    if parsed.matches(row.content):
                        hits.append((_hit(row, parsed), rank_text))
                        if len(hits) > size:
                            break
                if len(rows) < size_of_batch:
                    if not cut:
                        break
                    # The rank window ended before the page did (filters or the cursor
                    # passed over most of it): the rest comes from every match.
                    windowed = False
                    continue
                # Few candidates pass (a word the index cannot narrow): fetch more per trip.
                size_of_batch = min(size_of_batch * 4, MAX_BATCH)
            next_cursor = None
            if len(hits) > size:
                last, rank_text = hits[size - 1]
                next_cursor = _encode(
                    key, binding, rank_text, last.message.created_at, last.message.id
                )
            return Page([hit for hit, _ in hits[:size]], next_cursor)

        return await self._run(work, write=False, action="search messages", stale_ok=sid is None)

    async def _search_ready(self) -> _Ready:
        """That the search index exists (migration 0008; on SQLite the map of 0009), learnt
        once per database."""
        backend = self._backend
        known = _READY.get(backend)
        if known is not None:
            return known
        kind = backend.url.kind
        if kind == "postgresql":
            probe = text(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema()"
                " AND indexname = 'ix_messages_search'"
            )
        elif kind == "mysql":
            probe = text(
                "SELECT count(*) FROM information_schema.statistics"
                " WHERE table_schema = DATABASE() AND table_name = 'messages'"
                " AND index_name = 'ix_messages_search'"
            )
        else:
            # Migration 0008's objects, and 0009's map column and trigger: at 0008 the map
            # has no created_at to sort by.
            probe = text(
                "SELECT (SELECT count(*) FROM sqlite_master WHERE name IN "
                "('messages_search', 'messages_search_map', 'messages_search_insert', "
                "'messages_search_delete', 'messages_search_update', 'messages_search_moved'))"
                " + (SELECT count(*) FROM pragma_table_info('messages_search_map')"
                " WHERE name = 'created_at')"
            )

        async def work(conn: AsyncConnection) -> _Ready | None:
            found = int((await conn.execute(probe)).scalar_one())
            if found != (7 if kind in ("sqlite", "memory") else 1):
                return None
            if kind != "mysql":
                return _Ready()
            sizes = text("SELECT @@innodb_ft_min_token_size, @@innodb_ft_max_token_size")
            low, high = (await conn.execute(sizes)).one()
            return _Ready(int(low), int(high))

        ready = await self._run(work, write=False, action="check the search index")
        if ready is None:
            url = backend.url
            needed = SQLITE_SEARCH_REVISION if kind in ("sqlite", "memory") else SEARCH_REVISION
            raise BackendError(
                f"the {url.kind} database at {url.host}/{url.database} has no search index, or"
                f" an older one: search needs schema revision {needed} or newer "
                "(run `mofa-persist upgrade`, or connect with migrate=True)",
                host=url.host,
                database=url.database,
            )
        _READY[backend] = ready
        return ready


def _candidates(
    kind: str,
    query: Query,
    ready: _Ready,
    filters: list[ColumnElement[bool]],
    after: tuple[str, datetime, uuid.UUID] | None,
    batch: int,
    *,
    scoped: bool = True,
    windowed: bool = False,
    long_messages: bool = True,
) -> Any:
    """One keyset batch of candidate messages, ordered by (rank, created_at, id) descending."""
    where: list[Any] = list(filters)
    # The sessions are joined for every match only when a filter needs them (a scoped view).
    source: Any = m_t.join(s_t, s_t.c.id == m_t.c.session_id) if scoped else m_t
    rank: Any
    floor: Any = cast(literal(None), Float)
    long_branch: list[Any] = []
    sort_keys: tuple[Any, Any] = (m_t.c.id, m_t.c.created_at)
    if kind in ("sqlite", "memory"):
        expression = sqlite_match(query)
        if expression is not None:
            ranked = _fts_ranked(expression, after, batch if windowed else None)
            source = ranked.join(_fts_map, _fts_map.c.id == ranked.c.rowid)
            # The map holds the sort keys: ``messages`` is joined for every match only when
            # a filter needs it, else for the rows of one batch.
            sort_keys = (_fts_map.c.message_id, _fts_map.c.created_at)
            if filters:
                source = source.join(m_t, m_t.c.id == _fts_map.c.message_id)
                if scoped:
                    source = source.join(s_t, s_t.c.id == m_t.c.session_id)
            rank = ranked.c.rank
            floor = ranked.c.window_floor
        else:
            rank = cast(literal(0.0), Float)
    elif kind == "postgresql":
        tsquery = postgres_tsquery(query)
        if tsquery is not None:
            bound = func.to_tsquery(literal_column("'simple'::regconfig"), literal(tsquery))
            vector: ColumnElement[Any] = literal_column(_PG_VECTOR)
            found = vector.op("@@")(bound)
            # Messages longer than the indexed prefix come from their own partial index, in
            # a second branch: an OR of both would hide the GIN index from the planner.
            if long_messages:
                long_branch = [literal_column(_PG_LONG), not_(found)]
            where.append(found)
            rank = cast(func.ts_rank(vector, bound), Float)
        else:
            rank = cast(literal(0.0), Float)
    else:
        against, likes = mysql_terms(query, ready.min_token, ready.max_token)
        if against is not None:
            found = mysql_match(m_t.c.content, against=literal(against)).in_boolean_mode()
            where.append(found)
            rank = cast(found, Numeric(65, 30))
        else:
            for pattern in likes:
                # Case- and accent-insensitive: a superset that the matcher narrows.
                content = m_t.c.content.collate("utf8mb4_general_ci")
                where.append(content.like(literal(pattern), escape="\\"))
            rank = cast(literal(0), Numeric(65, 30))
    keys = (
        sort_keys[0].label("id"),
        sort_keys[1].label("created_at"),
        rank.label("rank"),
        floor.label("window_floor"),
    )
    matched = select(*keys).select_from(source).where(*where)
    if long_branch:
        longer = select(*keys).select_from(source).where(*filters, *long_branch)
        inner = union_all(matched, longer).subquery("hits")
    else:
        inner = matched.subquery("hits")
    stmt = select(inner)
    if after is not None:
        rank_text, created_at, message_id = after
        last_rank: Any = Decimal(rank_text) if kind == "mysql" else float(rank_text)
        stmt = stmt.where(
            or_(
                inner.c.rank < last_rank,
                and_(
                    inner.c.rank == last_rank,
                    or_(
                        inner.c.created_at < created_at,
                        and_(inner.c.created_at == created_at, inner.c.id < message_id),
                    ),
                ),
            )
        )
    # Only the sort keys of every match are sorted; the rows of one batch are read after.
    top = (
        stmt.order_by(inner.c.rank.desc(), inner.c.created_at.desc(), inner.c.id.desc())
        .limit(batch)
        .subquery("top")
    )
    return (
        select(
            m_t.c.id,
            m_t.c.session_id,
            m_t.c.seq,
            m_t.c.role,
            m_t.c.content,
            m_t.c.metadata,
            m_t.c.created_at,
            s_t.c.title.label("session_title"),
            top.c.rank,
            top.c.window_floor,
        )
        .select_from(top.join(m_t, m_t.c.id == top.c.id).join(s_t, s_t.c.id == m_t.c.session_id))
        .order_by(top.c.rank.desc(), top.c.created_at.desc(), top.c.id.desc())
    )


def _fts_ranked(
    expression: str, after: tuple[str, datetime, uuid.UUID] | None, window: int | None
) -> Any:
    """FTS5 matches with their rank (``-bm25``, higher is better), computed inside FTS5.

    With ``window``, only matches ranked at least as high as the ``window``-th best (below
    the cursor's rank) are returned, and ``window_floor`` is that rank (NULL when fewer
    match): the joins and the sort then see a few rows instead of every match of a common
    word. Ties at the floor are all kept, so the rows returned are exactly the head of the
    full ordering.
    """
    below = "" if after is None else " AND -bm25(messages_search) <= :fts_last"
    if window is None:
        sql = (
            "SELECT rowid, -bm25(messages_search) AS rank, NULL AS window_floor"
            " FROM messages_search WHERE messages_search MATCH :fts_query"
        )
    else:
        sql = (
            "SELECT messages_search.rowid AS rowid, -bm25(messages_search) AS rank,"
            " w.floor AS window_floor"
            " FROM messages_search, (SELECT CASE WHEN count(*) < :fts_window THEN NULL"
            " ELSE min(r) END AS floor FROM (SELECT -bm25(messages_search) AS r"
            " FROM messages_search WHERE messages_search MATCH :fts_query" + below + ""
            " ORDER BY bm25(messages_search) LIMIT :fts_window)) AS w"
            " WHERE messages_search MATCH :fts_query"
            " AND (w.floor IS NULL OR -bm25(messages_search) >= w.floor)"
        )
    params: dict[str, Any] = {"fts_query": expression}
    if window is not None:
        params["fts_window"] = window
    if after is not None and window is not None:
        params["fts_last"] = float(after[0])
    return (
        text(sql)
        .bindparams(**params)
        .columns(column("rowid"), column("rank", Float), column("window_floor", Float))
        .subquery("ranked")
    )


def _rank_text(rank: object) -> str:
    """The rank exactly as the database computed it (a cursor compares it for equality)."""
    if isinstance(rank, Decimal):
        return str(rank)
    return repr(float(rank))  # type: ignore[arg-type]


def _hit(row: Any, query: Query) -> MessageHit:
    message = Message(
        id=row.id,
        session_id=row.session_id,
        seq=row.seq,
        role=row.role,
        content=row.content,
        metadata=row.metadata,
        created_at=row.created_at,
    )
    return MessageHit(
        message=message,
        session_id=row.session_id,
        session_title=row.session_title,
        rank=float(row.rank),
        snippet=query.snippet(row.content),
    )


def _encode(
    key: bytes, binding: str, rank_text: str, created_at: datetime, message_id: uuid.UUID
) -> str:
    position = f"{rank_text}|{created_at.isoformat()}|{message_id.hex}"
    mac = keyed_digest(key, "search-cursor", binding, position)[:32]
    raw = f"{position}|{mac}".encode()
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(key: bytes, binding: str, cursor: object) -> tuple[str, datetime, uuid.UUID]:
    if not isinstance(cursor, str) or not cursor.startswith(_CURSOR_PREFIX):
        raise InvalidInputError(_MALFORMED)
    body = cursor[len(_CURSOR_PREFIX) :]
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        if base64.urlsafe_b64encode(data).decode().rstrip("=") != body:
            raise ValueError("not the canonical encoding")
        rank_text, stamp, hex_id, mac = data.decode().split("|")
        Decimal(rank_text)
        created_at = datetime.fromisoformat(stamp)
        message_id = uuid.UUID(hex=hex_id)
    except (ValueError, binascii.Error, UnicodeDecodeError, InvalidOperation):
        raise InvalidInputError(_MALFORMED) from None
    if created_at.tzinfo is None or len(hex_id) != 32:
        raise InvalidInputError(_MALFORMED)
    expected = keyed_digest(key, "search-cursor", binding, f"{rank_text}|{stamp}|{hex_id}")
    if not hmac.compare_digest(mac, expected[:32]):
        raise InvalidInputError(_FOREIGN)
    return rank_text, created_at, message_id
