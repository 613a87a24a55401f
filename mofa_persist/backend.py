"""What all views of one connected store share (the engine, its flags and locks), and the
scope a view is restricted to, with the filters that scope adds to queries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.util import greenlet_spawn

from . import sql
from .engine import mark_connections_suspect
from .models import sessions_table

if TYPE_CHECKING:
    import uuid

    from sqlalchemy import Table
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import PoolProxiedConnection
    from sqlalchemy.sql.elements import ColumnElement

    from .urls import DatabaseUrl

s_t = sessions_table

#: A read replica that failed (refused, dropped or timed out) is left alone this long; reads
#: meant for it go to the primary meanwhile, then it gets another try.
REPLICA_RETRY_AFTER_S = 5.0
#: Driver connections a SQLite file store keeps for its lean reads (see _Backend).
IDLE_READERS = 2


@dataclass(slots=True)
class Replica:
    """A read replica: its engine, and whether it is currently skipped after a failure."""

    url: DatabaseUrl
    engine: AsyncEngine
    down_until: float = 0.0
    reads: int = 0
    failures: int = 0

    def is_up(self, now: float) -> bool:
        return self.down_until <= now


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What :attr:`Store.read_replicas` reports for one replica."""

    url: str  # password masked
    up: bool
    reads: int
    failures: int


#: The owner columns a view can be restricted by, from the widest to the narrowest.
OWNER_COLUMNS: tuple[str, ...] = ("tenant_id", "user_id", "agent_id")


@dataclass(frozen=True, slots=True)
class Scope:
    """The tenant, user and agent a view is restricted to; ``None`` means unrestricted.

    A session belongs to a view when every set field equals the session's own column.
    """

    tenant_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    agent_id: uuid.UUID | None = None

    def owners(self) -> list[tuple[str, uuid.UUID]]:
        """The restricted columns and their values, in :data:`OWNER_COLUMNS` order."""
        return [
            (name, value) for name in OWNER_COLUMNS if (value := getattr(self, name)) is not None
        ]

    @property
    def restricted(self) -> bool:
        return self.tenant_id is not None

    def describe(self) -> str:
        """``tenant_id=..., user_id=...`` for reprs and messages (ids only, no secrets)."""
        return ", ".join(f"{name}={value}" for name, value in self.owners())

    def covers(self, owner: tuple[uuid.UUID | None, uuid.UUID | None, uuid.UUID | None]) -> bool:
        """Whether a row owned by (tenant, user, agent) lies inside this view."""
        return all(
            mine is None or mine == theirs
            for mine, theirs in zip(
                (self.tenant_id, self.user_id, self.agent_id), owner, strict=True
            )
        )


class _Backend:
    """What all views of one connected store share: the engine and its locks."""

    def __init__(
        self,
        url: DatabaseUrl,
        engine: AsyncEngine,
        connect_timeout: float,
        call_timeout: float | None = None,
        replicas: list[Replica] | None = None,
    ) -> None:
        self.url = url
        self.engine = engine
        self.replicas = replicas or []
        self._next_replica = 0
        self.connect_timeout = connect_timeout
        # SQLite has no network to hang on (its lock waits are bounded by the busy timeout),
        # and the in-memory database would be lost with its one connection: servers only.
        self.call_timeout = call_timeout if url.kind in ("postgresql", "mysql") else None
        self.closed = False
        self.update_returning = bool(engine.dialect.update_returning)
        self.is_sqlite = url.kind in ("sqlite", "memory")
        # PostgreSQL bumps the counters and inserts the rows in one statement (see writes.pg_write).
        self.one_statement = url.kind == "postgresql"
        self.lane = sql.lane_for(url.kind)
        self.key: bytes | None = None  # the database's own key (mofa_persist.keys), cached
        self.pinned: Any = None  # memory only: the driver connection of the one connection
        # Turns in driver-level SQL where the bump is one statement: SQLite with RETURNING,
        # MySQL with LAST_INSERT_ID, PostgreSQL with the whole turn in one CTE (writes.pg_write).
        self.lean_writes = url.kind in ("mysql", "postgresql") or (
            self.is_sqlite and self.update_returning
        )
        # SQLite: the whole write transaction in one hop to aiosqlite's thread.
        self.one_hop_writes = self.lean_writes and self.is_sqlite and sql.SQLITE_ONE_HOP
        # The in-memory database is one shared connection: every unit of work takes turns.
        # A SQLite file has one writer at a time anyway; queueing writers of this process
        # here is cheaper than spinning on the file lock.
        self._all_lock = asyncio.Lock() if url.kind == "memory" else None
        self._write_lock = asyncio.Lock() if url.kind == "sqlite" else None
        # A SQLite file's lean reads keep their driver connection checked out between calls
        # (at most IDLE_READERS of them): the pool's checkout and return cost two greenlet
        # switches and the pool's bookkeeping, as much as the rest of a read's overhead.
        # Only a read that ended cleanly (no transaction open) leaves its connection here.
        self.keeps_readers = url.kind == "sqlite"
        self.idle_readers: list[PoolProxiedConnection] = []

    def keep_reader(self, pooled: PoolProxiedConnection) -> bool:
        """Keep ``pooled`` for the next lean read; ``False`` when enough are kept already
        (or the store is closing), and the caller returns it to the pool."""
        if self.closed or len(self.idle_readers) >= IDLE_READERS or not pooled.is_valid:
            return False
        self.idle_readers.append(pooled)
        return True

    def replica_for_read(self) -> Replica | None:
        """The next replica that is up (they take turns), or ``None`` for the primary."""
        now = time.monotonic()
        count = len(self.replicas)
        for offset in range(count):
            index = (self._next_replica + offset) % count
            replica = self.replicas[index]
            if replica.is_up(now):
                self._next_replica = (index + 1) % count
                replica.reads += 1
                return replica
        return None

    def replica_failed(self, replica: Replica) -> None:
        """Skip ``replica`` for a while; its pooled connections are pinged before reuse."""
        replica.failures += 1
        replica.down_until = time.monotonic() + REPLICA_RETRY_AFTER_S
        mark_connections_suspect(replica.engine)

    async def dispose(self) -> None:
        readers, self.idle_readers = self.idle_readers, []
        for pooled in readers:
            with contextlib.suppress(Exception):
                await greenlet_spawn(pooled.close)
        for replica in self.replicas:
            await replica.engine.dispose()
        await self.engine.dispose()

    def turn(self, write: bool) -> contextlib.AbstractAsyncContextManager[Any]:
        """``async with backend.turn(write)``: the lock this unit of work takes, if any (the
        lock itself, or a context that does nothing: no generator frame per call)."""
        lock = self._all_lock or (self._write_lock if write else None)
        return _NO_TURN if lock is None else lock


class _NoTurn(contextlib.AbstractAsyncContextManager[None]):
    """The turn of work that needs no lock."""

    async def __aexit__(self, *_exc: object) -> None:
        return None


_NO_TURN = _NoTurn()


def scope_shape(scope: Scope) -> tuple[str, ...]:
    """The columns the scope restricts; the cache key of scoped SQL."""
    return tuple(name for name, _ in scope.owners())


def scope_params(backend: _Backend, scope: Scope) -> list[Any]:
    """Bound values of the scope filters, in :func:`scope_shape` order."""
    lane = backend.lane
    return [lane.uuid_in(value) for _, value in scope.owners()]


def scope_filter(scope: Scope, table: Table = s_t) -> list[ColumnElement[bool]]:
    """The scope as filters on ``table``'s own owner columns (sessions or api_calls)."""
    return [table.c[name] == value for name, value in scope.owners()]


def session_filter(scope: Scope, sid: uuid.UUID) -> list[ColumnElement[bool]]:
    return [s_t.c.id == sid, *scope_filter(scope)]
