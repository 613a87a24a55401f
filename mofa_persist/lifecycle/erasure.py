"""Erasure of one user or one tenant (GDPR art. 17, CCPA), with an audit record.

Which tables hold a person's rows is read off the models' metadata, not listed by hand: every
table that references ``sessions`` or carries the owner column is covered, so a table added
later cannot be forgotten (and a table that is neither makes erasure refuse to run).
The audit record (:class:`Erasure`) keeps when, what kind, a keyed hash of the id and the
counts; it holds no personal data and is not removed by the erasure it describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import and_, insert, or_, select, update

from ..backend import scope_filter
from ..convert import _now
from ..errors import InvalidInputError
from ..ids import uuid7
from ..keys import database_key, keyed_digest
from ..models import Base, erasures_table, sessions_table
from ..validate import check_limit, require_uuid
from .batches import Progress, delete_in_batches

if TYPE_CHECKING:
    import uuid
    from datetime import datetime

    from sqlalchemy import ColumnElement, Table
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..repository.core import StoreCore

s_t = sessions_table
e_t = erasures_table
ErasureKind = Literal["user", "tenant"]
OWNER_COLUMN: dict[ErasureKind, str] = {"user": "user_id", "tenant": "tenant_id"}
#: Tables that hold no personal data and are never erased: the audit itself and the key.
KEPT_TABLES = frozenset({"erasures", "mofa_keys"})


@dataclass(frozen=True, slots=True)
class Erasure:
    """The audit record of one erasure (and what ``erase_user``/``erase_tenant`` return).

    ``subject_hash`` is HMAC-SHA256 of the erased id under the database's own key: it proves
    that a given id was erased (``list_erasures(user_id=...)``) without storing the id.
    ``finished_at`` is ``None`` for an erasure that was interrupted; run it again.
    """

    id: uuid.UUID
    kind: ErasureKind
    subject_hash: str
    counts: dict[str, int]
    started_at: datetime
    finished_at: datetime | None


def personal_tables() -> list[Table]:
    """Every table the library owns that can hold a person's rows, children first."""
    tables = [
        table
        for table in reversed(Base.metadata.sorted_tables)
        if table.name not in KEPT_TABLES and table is not s_t
    ]
    for table in tables:
        if _session_column(table) is None and not {"user_id", "tenant_id"} <= set(table.c.keys()):
            raise RuntimeError(
                f"table {table.name} has neither a session reference nor owner columns: "
                "teach mofa_persist.lifecycle.erasure how to erase it"
            )
    return [*tables, s_t]


def _session_column(table: Table) -> Any:
    for key in table.foreign_keys:
        if key.column.table is s_t:
            return key.parent
    return None


def subject_hash(key: bytes, kind: ErasureKind, subject: uuid.UUID) -> str:
    return keyed_digest(key, "erasure", kind, str(subject))


async def erase(
    store: StoreCore,
    kind: ErasureKind,
    subject_id: uuid.UUID | str,
    *,
    batch_size: int = 1000,
    on_progress: Progress | None = None,
) -> Erasure:
    """Delete every row of one user or tenant within ``store``'s view; see the module doc."""
    subject = require_uuid(f"{kind}_id", subject_id)
    batch = check_limit("batch_size", batch_size, optional=False)
    if not batch:
        raise InvalidInputError("batch_size must be a positive integer")
    scope = store.scope
    if scope.agent_id is not None:
        raise InvalidInputError(
            "an erasure covers all of a person's agents: run it through a view that is not "
            "restricted to one agent"
        )
    if kind == "tenant" and scope.user_id is not None:
        raise InvalidInputError("erasing a tenant needs a view of the whole tenant")
    column = OWNER_COLUMN[kind]
    current = getattr(scope, column)
    if current is not None and current != subject:
        raise InvalidInputError(f"{kind} {subject} is outside this store's view")
    key = await database_key(store)
    tenant = subject if kind == "tenant" else scope.tenant_id
    record = Erasure(uuid7(), kind, subject_hash(key, kind, subject), {}, _now(), None)
    await _write_audit(
        store, record, None if tenant is None else subject_hash(key, "tenant", tenant)
    )

    counts: dict[str, int] = {}
    owned_sessions = [s_t.c[column] == subject, *scope_filter(scope)]
    of_sessions = select(s_t.c.id).where(*owned_sessions)
    await _forget_parents(store, of_sessions)
    for table in personal_tables():
        where: list[ColumnElement[bool]]
        if table is s_t:
            where = owned_sessions
        else:
            reaches: list[ColumnElement[bool]] = []
            session_column = _session_column(table)
            if session_column is not None:
                reaches.append(session_column.in_(of_sessions))
            if column in table.c:
                reaches.append(and_(table.c[column] == subject, *scope_filter(scope, table)))
            where = [or_(*reaches)]
        counts[table.name] = await delete_in_batches(
            store, table, where, batch_size=batch, on_progress=on_progress
        )
    finished = Erasure(record.id, kind, record.subject_hash, counts, record.started_at, _now())
    await _finish_audit(store, finished)
    return finished


async def _forget_parents(store: StoreCore, erased: Any) -> None:
    """Forks of the erased sessions (owned by someone else) forget where they came from."""

    async def work(conn: AsyncConnection) -> None:
        # The ids first: MySQL cannot update a table while selecting from it.
        ids = list((await conn.execute(erased)).scalars())
        for start in range(0, len(ids), 500):
            stmt = (
                update(s_t)
                .where(s_t.c.parent_session_id.in_(ids[start : start + 500]))
                .values(parent_session_id=None, forked_at_seq=None)
            )
            await conn.execute(stmt)

    await store._run(work, write=True, action="erase fork references")


async def _write_audit(store: StoreCore, record: Erasure, tenant_hash: str | None) -> None:
    values: dict[str, Any] = {
        "id": record.id,
        "scope_kind": record.kind,
        "subject_hash": record.subject_hash,
        "tenant_hash": tenant_hash,
        "counts": {},
        "started_at": record.started_at,
        "finished_at": None,
    }

    async def work(conn: AsyncConnection) -> None:
        await conn.execute(insert(e_t), values)

    await store._run(work, write=True, action="record an erasure")


async def _finish_audit(store: StoreCore, record: Erasure) -> None:
    stmt = (
        update(e_t)
        .where(e_t.c.id == record.id)
        .values(counts=record.counts, finished_at=record.finished_at)
    )

    async def work(conn: AsyncConnection) -> None:
        await conn.execute(stmt)

    await store._run(work, write=True, action="record an erasure")


async def list_erasures(
    store: StoreCore,
    *,
    user_id: uuid.UUID | str | None = None,
    tenant_id: uuid.UUID | str | None = None,
    limit: int = 100,
) -> list[Erasure]:
    """Audit records, newest first; with an id, only the erasures of that user or tenant.

    A scoped store lists only the erasures made within (or of) its tenant.
    """
    count = check_limit("limit", limit, optional=False)
    filters: list[ColumnElement[bool]] = []
    asked: tuple[tuple[ErasureKind, uuid.UUID | str | None], ...] = (
        ("user", user_id),
        ("tenant", tenant_id),
    )
    wanted = [(kind, require_uuid(f"{kind}_id", value)) for kind, value in asked if value]
    key = await database_key(store)
    for kind, value in wanted:
        filters.append(e_t.c.scope_kind == kind)
        filters.append(e_t.c.subject_hash == subject_hash(key, kind, value))
    if store.scope.tenant_id is not None:
        filters.append(e_t.c.tenant_hash == subject_hash(key, "tenant", store.scope.tenant_id))
    stmt = select(e_t).where(*filters).order_by(e_t.c.started_at.desc(), e_t.c.id).limit(count)

    async def work(conn: AsyncConnection) -> list[Erasure]:
        return [
            Erasure(
                row.id,
                row.scope_kind,
                row.subject_hash,
                {name: int(value) for name, value in row.counts.items()},
                row.started_at,
                row.finished_at,
            )
            for row in await conn.execute(stmt)
        ]

    return await store._run(work, write=False, action="list erasures")
