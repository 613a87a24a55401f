"""One ``AsyncEngine`` per store, configured per backend.

Backend differences that the engine can absorb live here, in one place: connect timeouts, pool
pre-ping, MySQL's isolation level, and SQLite's pragmas and explicit ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import event, pool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .validate import decode_document, serialize_for_engine

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from .urls import DatabaseUrl

#: Execution option that marks a SQLite transaction read-only: it starts with a plain
#: ``BEGIN`` instead of ``BEGIN IMMEDIATE`` and so does not take the write lock.
SQLITE_READ_ONLY = "mofa_read_only"


def create_engine(
    url: DatabaseUrl,
    *,
    connect_timeout: float = 10.0,
    pool_size: int = 10,
    max_overflow: int = 10,
    use_null_pool: bool = False,
    enforce_foreign_keys: bool = True,
) -> AsyncEngine:
    """Build the engine for ``url``; nothing connects until first use.

    ``enforce_foreign_keys=False`` is for migrations on SQLite: a batch ALTER copies and drops
    a table, and with foreign keys on, dropping ``sessions`` would cascade into its messages.
    """
    options: dict[str, Any] = {
        "json_serializer": serialize_for_engine,
        "json_deserializer": decode_document,
    }
    if url.kind == "postgresql":
        options["connect_args"] = {
            "timeout": connect_timeout,
            "server_settings": {"application_name": "mofa-persist"},
        }
    elif url.kind == "mysql":
        options["connect_args"] = {"connect_timeout": max(1, round(connect_timeout))}
        # READ COMMITTED avoids InnoDB gap locks on the messages unique index, which under
        # REPEATABLE READ turn concurrent appends into deadlocks.
        options["isolation_level"] = "READ COMMITTED"
        # Servers close idle connections after wait_timeout; recycle well before that.
        options["pool_recycle"] = 1800
    else:
        options["connect_args"] = {"timeout": connect_timeout, "check_same_thread": False}

    if url.kind == "memory":
        # One shared connection holds the database; the store serializes its use.
        options["poolclass"] = pool.StaticPool
    elif use_null_pool:
        options["poolclass"] = pool.NullPool
    elif url.kind in ("postgresql", "mysql"):
        options.update(
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=connect_timeout,
            pool_pre_ping=True,  # a server restart costs one failed ping, not a failed call
        )
    engine = create_async_engine(url.sa_url, **options)
    if url.kind in ("sqlite", "memory"):
        _configure_sqlite(
            engine, url, busy_timeout_s=connect_timeout, foreign_keys=enforce_foreign_keys
        )
    return engine


def _configure_sqlite(
    engine: AsyncEngine, url: DatabaseUrl, *, busy_timeout_s: float, foreign_keys: bool
) -> None:
    is_file = url.kind == "sqlite"

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        if is_file:
            # WAL lets readers run beside the one writer; the busy timeout makes writers wait
            # for the lock instead of failing with "database is locked".
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that reads
        # and then writes can fail with SQLITE_BUSY without waiting for the busy timeout.
        if conn.get_execution_options().get(SQLITE_READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
