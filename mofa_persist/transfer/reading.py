"""Reading a store for a transfer: snapshots, keyset pages, a session's rows and fingerprints.

Every read happens in one transaction (a consistent snapshot) and in keyset pages, so memory
holds one page however long a history is. Driver failures leave here as ``BackendError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ..engine import SQLITE_READ_ONLY
from ..errors import PersistenceError
from ..translate import DRIVER_ERRORS, Failure, classify, to_backend_error
from .common import CHILDREN, DEFAULT_BATCH, Counts, Kind, canonical_line, s_t

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator, Mapping

    from sqlalchemy import ColumnElement, Table
    from sqlalchemy.engine import RowMapping
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..store import Store


def exact_floats(store: Store) -> bool:
    """PostgreSQL's JSONB keeps floats exactly; documents bound for it are checked for that."""
    return store.url.kind == "postgresql"


@contextlib.asynccontextmanager
async def reading(store: Store, *, stale_ok: bool = False) -> AsyncIterator[AsyncConnection]:
    """One read transaction: a consistent snapshot on every backend, without write locks.

    ``stale_ok`` reads (exports, stats) may run on a read replica of the store.
    """
    conn = await _read_connection(store, stale_ok)
    try:
        if store.url.kind in ("sqlite", "memory"):
            await conn.execution_options(**{SQLITE_READ_ONLY: True})
        else:
            await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            yield conn
    finally:
        await conn.close()


async def _read_connection(store: Store, stale_ok: bool) -> AsyncConnection:
    """A connection to a read replica that answers, else to the primary."""
    backend = store._backend
    replica = backend.replica_for_read() if stale_ok and store.stale_reads else None
    if replica is not None:
        conn = replica.engine.connect()
        try:
            async with asyncio.timeout(backend.connect_timeout):
                return await conn.start()
        except DRIVER_ERRORS:
            # The replica is down or hung: skip it for a while; the primary answers.
            backend.replica_failed(replica)
    return await store.engine.connect().start()


@contextlib.asynccontextmanager
async def translated(store: Store, action: str) -> AsyncIterator[None]:
    """Driver failures become the public ``BackendError``, naming where the store points."""
    try:
        yield
    except PersistenceError:
        raise
    except DRIVER_ERRORS as error:
        raise to_backend_error(error, store.url, action) from error


def is_key_clash(error: BaseException) -> bool:
    """A unique or foreign key refused the row: another row holds its place."""
    return classify(error) in (Failure.UNIQUE, Failure.FOREIGN_KEY)


async def keyset(
    conn: AsyncConnection,
    table: Table,
    filters: list[ColumnElement[bool]],
    key: str,
    batch_size: int,
) -> AsyncIterator[RowMapping]:
    """Rows in ``key`` order, one page per query: memory holds one page, never the table."""
    column = table.c[key]
    after: Any = None
    while True:
        stmt = select(table).where(*filters)
        if after is not None:
            stmt = stmt.where(column > after)
        page = (await conn.execute(stmt.order_by(column).limit(batch_size))).mappings().all()
        for row in page:
            yield row
        if len(page) < batch_size:
            return
        after = page[-1][key]


async def session_rows(
    conn: AsyncConnection, session: RowMapping, batch_size: int
) -> AsyncIterator[tuple[Kind, RowMapping]]:
    """A session's row, then its messages by seq, states by version and calls by id."""
    yield "session", session
    for kind, table, key in CHILDREN:
        filters = [table.c.session_id == session["id"]]
        async for row in keyset(conn, table, filters, key, batch_size):
            yield kind, row


async def read_session(conn: AsyncConnection, session_id: uuid.UUID) -> RowMapping | None:
    return (await conn.execute(select(s_t).where(s_t.c.id == session_id))).mappings().first()


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What verification compares: row counts and a sha256 over the canonical rows."""

    messages: int
    states: int
    api_calls: int
    sha256: str


class Digest:
    """Accumulates a session's fingerprint one row at a time, in export order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._counts = Counts()

    def add(self, kind: Kind, row: Mapping[Any, Any]) -> None:
        self._hash.update(canonical_line(kind, row).encode())
        self._hash.update(b"\n")
        self._counts.add(kind)

    def result(self) -> Fingerprint:
        counts = self._counts
        return Fingerprint(counts.messages, counts.states, counts.api_calls, self._hash.hexdigest())


async def fingerprint(
    store: Store, session_id: uuid.UUID, *, batch_size: int = DEFAULT_BATCH
) -> Fingerprint | None:
    """The session's fingerprint in ``store``, or ``None`` if it is not there."""
    digest = Digest()
    async with translated(store, "read a session"), reading(store) as conn:
        session = await read_session(conn, session_id)
        if session is None:
            return None
        async for kind, row in session_rows(conn, session, batch_size):
            digest.add(kind, row)
    return digest.result()
