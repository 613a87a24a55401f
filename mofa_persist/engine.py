"""One ``AsyncEngine`` per store, configured per backend.

Backend differences that the engine can absorb live here, in one place: connect timeouts, pool
pre-ping, MySQL's isolation level, and SQLite's pragmas and explicit ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, exc, pool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .validate import decode_document, serialize_for_engine

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

    from .urls import DatabaseUrl

#: Execution option that marks a SQLite transaction read-only: it starts with a plain
#: ``BEGIN`` instead of ``BEGIN IMMEDIATE`` and so does not take the write lock.
SQLITE_READ_ONLY = "mofa_read_only"

#: A pooled server connection idle for longer than this is pinged before it is handed out.
#: Connections in steady use are not: the ping costs round trips on every call (three on
#: asyncpg), and a connection that died in the meantime fails its first statement, which the
#: store retries once on a fresh connection because nothing was sent yet.
PING_AFTER_IDLE_S = 1.0
_CHECKIN = "mofa_checked_in"


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
        )
    if url.kind != "postgresql":
        # Returning a connection normally sends ROLLBACK (a round trip on MySQL, a thread hop
        # on aiosqlite) even after a COMMIT; _reset_if_needed rolls back only what is open.
        # asyncpg's adapter already skips the rollback when no transaction is open.
        options["pool_reset_on_return"] = None
    engine = create_async_engine(url.sa_url, **options)
    if url.kind in ("postgresql", "mysql") and not use_null_pool:
        _ping_idle_connections(engine)
    if url.kind != "postgresql":
        event.listen(engine.sync_engine, "reset", _reset_if_needed)
    if url.kind in ("sqlite", "memory"):
        _configure_sqlite(
            engine, url, busy_timeout_s=connect_timeout, foreign_keys=enforce_foreign_keys
        )
    return engine


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Pre-ping, but only connections that sat idle: a server restart then costs one failed
    ping and a reconnect, not a failed call, and busy connections pay nothing."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKIN] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        checked_in = record.info.get(_CHECKIN)
        if checked_in is None or time.monotonic() - checked_in < PING_AFTER_IDLE_S:
            return  # a brand-new connection, or one in steady use
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool replaces the connection with a new one and tries again.
            raise exc.DisconnectionError(f"pooled connection failed its ping: {error}") from error


def _reset_if_needed(dbapi_connection: Any, _record: Any, state: PoolResetState) -> None:
    """Roll back a returned connection only if the driver says a transaction is open."""
    if state.terminate_only or not state.asyncio_safe:
        return
    if _transaction_open(dbapi_connection):
        dbapi_connection.rollback()


def _transaction_open(dbapi_connection: Any) -> bool:
    """Ask the driver without a round trip; when it cannot tell, assume a transaction is open."""
    driver = getattr(dbapi_connection, "_connection", None)
    status = getattr(driver, "get_transaction_status", None)  # aiomysql: last server status
    if status is not None:
        return bool(status())
    in_transaction = getattr(driver, "in_transaction", None)  # aiosqlite: sqlite3's flag
    if isinstance(in_transaction, bool):
        return in_transaction
    return True


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
