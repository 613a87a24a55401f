"""The repository layer: the session API that agents use, over one ``AsyncEngine``.

One class does the work for every backend; the MoFA names (``PostgresStore``, ``MySqlStore``,
``SqliteStore``, ``MemoryStore``) only choose which URLs they accept. Dialect differences are
small flags read off the engine's dialect.

Every public method is one unit of work: validate, then one transaction, then translate any
failure into :mod:`mofa_persist.errors`. Writes that lose a lock race (deadlock, serialization
failure, lock timeout, SQLite busy) are retried by :mod:`mofa_persist.runner`, because their
transaction was rolled back whole; a failure while committing is never retried, because the
outcome is unknown.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self, cast

from . import migrate as migrations
from .backend import Replica
from .backend import ReplicaStatus as ReplicaStatus
from .backend import Scope as Scope
from .backend import _Backend as _Backend
from .engine import create_engine
from .errors import (
    BackendError,
    InvalidInputError,
    PersistenceError,
)
from .translate import DRIVER_ERRORS, to_backend_error
from .urls import DatabaseUrl, Kind, parse_url, parse_urls
from .validate import (
    coerce_uuid,
    require_uuid,
)

if TYPE_CHECKING:
    import uuid
    from types import TracebackType


from .repository.core import UNSET as UNSET
from .repository.external import ExternalKeysApi
from .repository.history import HistoryApi
from .repository.lifecycle import LifecycleApi
from .repository.search import SearchApi
from .repository.sessions import SessionsApi
from .repository.state import StateApi
from .repository.usage import UsageApi


class Store(SessionsApi, HistoryApi, StateApi, UsageApi, LifecycleApi, ExternalKeysApi, SearchApi):
    """Sessions, messages and agent state in one database.

    Get one with ``await Store.connect(url)`` (or :func:`mofa_persist.connect`); use it as an
    async context manager or call :meth:`close`. It is safe to share between tasks.
    """

    #: Backends this class accepts; ``None`` accepts all.
    accepted_kinds: ClassVar[tuple[Kind, ...] | None] = None
    #: URL used when none is given and ``DATABASE_URL`` is unset.
    default_url: ClassVar[str | None] = "memory://"

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(
        cls,
        url: str | Sequence[str] | None = None,
        *,
        migrate: bool = True,
        connect_timeout: float = 10.0,
        pool_size: int = 10,
        max_overflow: int = 10,
        call_timeout: float | None = 30.0,
        read_replicas: Sequence[str] | None = None,
    ) -> Self:
        """Connect to ``url`` (default: ``DATABASE_URL``, else ``default_url``).

        With ``migrate=True`` the schema is brought to the newest revision first, under a
        lock, so many processes may connect to a fresh database at once. Raises
        ``InvalidInputError`` for a URL this class does not accept and ``BackendError`` when
        the database cannot be reached within ``connect_timeout`` seconds.

        ``call_timeout`` bounds every later call on a server backend, retries included: a
        server that stops answering makes the call raise ``BackendError`` after that many
        seconds instead of hanging (``None``: no bound).

        ``url`` may name several nodes of a cluster (``mysql://u@n1:3306,n2:3306/db`` or a list
        of URLs): connections go to the first node that answers and move on when it fails.
        ``read_replicas`` (server backends) take the reads that may lag behind the latest
        writes: :meth:`list_sessions`, :meth:`usage`, exports and stats. Reads that must see
        the caller's own writes (messages, state, sessions by id) and all writes stay on
        ``url``; a replica that fails is skipped for a few seconds. See docs/scaling.md.
        """
        if url is None:
            url = os.environ.get("DATABASE_URL") or cls.default_url
            if url is None:
                raise InvalidInputError(f"{cls.__name__}.connect() needs a URL or DATABASE_URL")
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)):
            raise InvalidInputError("connect_timeout must be a number of seconds")
        if connect_timeout <= 0:
            raise InvalidInputError("connect_timeout must be positive")
        if call_timeout is not None and (
            isinstance(call_timeout, bool)
            or not isinstance(call_timeout, (int, float))
            or not call_timeout > 0
        ):
            raise InvalidInputError("call_timeout must be a positive number of seconds or None")
        parsed = parse_urls(url, allowed=cls.accepted_kinds)
        replica_urls = _parse_replicas(parsed, read_replicas)
        store_class = cls if cls.accepted_kinds is not None else _store_class_for(parsed.kind)
        if parsed.kind == "sqlite":
            _ensure_parent_folder(parsed)
        engine = create_engine(
            parsed,
            connect_timeout=float(connect_timeout),
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
        replicas = [
            Replica(
                replica_url,
                create_engine(
                    replica_url,
                    connect_timeout=float(connect_timeout),
                    pool_size=pool_size,
                    max_overflow=max_overflow,
                ),
            )
            for replica_url in replica_urls
        ]
        backend = _Backend(
            parsed,
            engine,
            float(connect_timeout),
            None if call_timeout is None else float(call_timeout),
            replicas,
        )
        store = cast("Self", store_class(backend))
        try:
            await store._open(migrate=migrate, connect_timeout=float(connect_timeout))
        except BaseException:
            await backend.dispose()
            raise
        return store

    async def _open(self, *, migrate: bool, connect_timeout: float) -> None:
        url = self._backend.url
        action = "connect"
        try:
            if url.kind == "memory":
                # StaticPool holds the one connection for the engine's life: keep its driver
                # connection at hand, so lean work skips the pool checkout (see _run).
                async with self._backend.engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    self._backend.pinned = raw.driver_connection
            else:
                # Fail fast on a bad address or credentials, before any migration lock wait.
                async with asyncio.timeout(connect_timeout):
                    async with self._backend.engine.connect() as conn:
                        await conn.exec_driver_sql("SELECT 1")
            if not migrate:
                return
            action = "migrate its schema"
            if url.kind == "memory":
                # The database lives in the store's one connection: migrate on it.
                await migrations.upgrade(self._backend.engine)
                return
            engine = create_engine(
                url,
                connect_timeout=connect_timeout,
                use_null_pool=True,
                enforce_foreign_keys=False,
            )
            try:
                await migrations.upgrade(engine)
            finally:
                await engine.dispose()
        except PersistenceError:
            raise
        except TimeoutError as error:
            raise BackendError(
                f"timed out after {connect_timeout:g}s connecting to the {url.kind} database "
                f"at {url.host}/{url.database}",
                host=url.host,
                database=url.database,
            ) from error
        except DRIVER_ERRORS as error:
            raise to_backend_error(error, url, action) from error

    async def close(self) -> None:
        """Close the store's connections. Views made by :meth:`scoped` share them."""
        if self._owner and not self._backend.closed:
            self._backend.closed = True
            await self._backend.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        scope = f", {self._scope.describe()}" if self._scope.restricted else ""
        return f"{type(self).__name__}({self._backend.url.display!r}{scope})"

    def scoped(
        self,
        *,
        tenant_id: uuid.UUID | str,
        user_id: uuid.UUID | str | None = None,
        agent_id: uuid.UUID | str | None = None,
    ) -> Self:
        """The same API restricted to one tenant (and user, and agent), sharing this store's
        connections.

        A view creates sessions in its scope, lists only them, and answers ``NotFoundError``
        for any other session id; every operation (usage, export, copy, retention, stats,
        erasure) covers only its rows. A view can only be narrowed: naming another tenant,
        user or agent than the one it is restricted to is ``InvalidInputError``.
        """
        wanted = {
            "tenant_id": require_uuid("tenant_id", tenant_id),
            "user_id": coerce_uuid("user_id", user_id, optional=True),
            "agent_id": coerce_uuid("agent_id", agent_id, optional=True),
        }
        for name, current in self._scope.owners():
            if wanted[name] is not None and wanted[name] != current:
                raise InvalidInputError(
                    f"this view is restricted to {name} {current}; a view can only be narrowed"
                )
            wanted[name] = current
        return type(self)(
            self._backend, Scope(**wanted), owner=False, stale_reads=self._stale_reads
        )

    def on_primary(self) -> Self:
        """The same store (and scope) with every read on the primary, never on a replica.

        For the moment a listing must include what the caller just wrote.
        """
        return type(self)(self._backend, self._scope, owner=False, stale_reads=False)

    @property
    def read_replicas(self) -> tuple[ReplicaStatus, ...]:
        """Each read replica: its URL (password masked), whether it is in use, and counts."""
        now = time.monotonic()
        return tuple(
            ReplicaStatus(replica.url.display, replica.is_up(now), replica.reads, replica.failures)
            for replica in self._backend.replicas
        )


def _parse_replicas(primary: DatabaseUrl, urls: Sequence[str] | None) -> list[DatabaseUrl]:
    if urls is None:
        return []
    if isinstance(urls, str) or not isinstance(urls, Sequence):
        raise InvalidInputError("read_replicas must be a list of URLs")
    if urls and primary.kind not in ("postgresql", "mysql"):
        raise InvalidInputError(f"read replicas need a server backend, not {primary.kind}")
    parsed = [parse_url(url, allowed=(primary.kind,)) for url in urls]
    if any(replica.database != primary.database for replica in parsed):
        raise InvalidInputError("a read replica must name the same database as the primary")
    return parsed


def _ensure_parent_folder(url: DatabaseUrl) -> None:
    if url.host is not None:
        Path(url.host).parent.mkdir(parents=True, exist_ok=True)


class PostgresStore(Store):
    """A store on PostgreSQL through asyncpg (``pip install 'mofa-persist[postgres]'``)."""

    accepted_kinds = ("postgresql",)
    default_url = None


class MySqlStore(Store):
    """A store on MySQL or MariaDB through aiomysql (``pip install 'mofa-persist[mysql]'``)."""

    accepted_kinds = ("mysql",)
    default_url = None


class SqliteStore(Store):
    """A store in an embedded SQLite file (created, with its folder, if missing)."""

    accepted_kinds = ("sqlite", "memory")
    default_url = "sqlite://mofa.db"


class MemoryStore(Store):
    """A store in process memory (SQLite ``:memory:``); gone when closed. For tests and demos."""

    accepted_kinds = ("memory",)
    default_url = "memory://"

    @classmethod
    async def connect(
        cls,
        url: str | Sequence[str] | None = "memory://",
        *,
        migrate: bool = True,
        connect_timeout: float = 10.0,
        pool_size: int = 10,
        max_overflow: int = 10,
        call_timeout: float | None = 30.0,
        read_replicas: Sequence[str] | None = None,
    ) -> Self:
        return await super().connect(
            url or "memory://",
            migrate=migrate,
            connect_timeout=connect_timeout,
            pool_size=pool_size,
            max_overflow=max_overflow,
            call_timeout=call_timeout,
            read_replicas=read_replicas,
        )


_CLASSES: dict[Kind, type[Store]] = {
    "postgresql": PostgresStore,
    "mysql": MySqlStore,
    "sqlite": SqliteStore,
    "memory": MemoryStore,
}


def _store_class_for(kind: Kind) -> type[Store]:
    return _CLASSES[kind]


async def connect(
    url: str | Sequence[str] | None = None,
    *,
    migrate: bool = True,
    connect_timeout: float = 10.0,
    pool_size: int = 10,
    max_overflow: int = 10,
    call_timeout: float | None = 30.0,
    read_replicas: Sequence[str] | None = None,
) -> Store:
    """Connect to any backend: ``url``, else ``DATABASE_URL``, else in-memory.

    Returns the store class that matches the URL (``PostgresStore``, ``MySqlStore``,
    ``SqliteStore`` or ``MemoryStore``).
    """
    return await Store.connect(
        url,
        migrate=migrate,
        connect_timeout=connect_timeout,
        pool_size=pool_size,
        max_overflow=max_overflow,
        call_timeout=call_timeout,
        read_replicas=read_replicas,
    )
