"""One ``AsyncEngine`` per store, configured per backend.

Backend differences that the engine can absorb live here, in one place: connect timeouts, pool
pre-ping, MySQL's isolation level, SQLite's pragmas and explicit ``BEGIN IMMEDIATE``, libpq's
TLS settings in asyncpg's terms, and connecting to the first ready node of a cluster when a
URL names several.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, exc, pool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .errors import InvalidInputError
from .sql import document
from .validate import serialize_for_engine

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping

    from sqlalchemy.engine import URL, Connection, Engine
    from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

    from .urls import DatabaseUrl, TlsSettings

#: Execution option that marks a SQLite transaction read-only: it starts with a plain
#: ``BEGIN`` instead of ``BEGIN IMMEDIATE`` and so does not take the write lock.
SQLITE_READ_ONLY = "mofa_read_only"

#: A pooled server connection idle for longer than this is pinged before it is handed out.
#: Connections in steady use are not: the ping costs round trips on every call (three on
#: asyncpg), and a connection that died in the meantime fails its first statement, which the
#: store retries once on a fresh connection because nothing was sent yet.
PING_AFTER_IDLE_S = 1.0
_CHECKIN = "mofa_checked_in"
#: Per engine: connections checked in before this ``time.monotonic()`` are pinged at checkout.
_SUSPECT_BEFORE: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


def mark_connections_suspect(engine: AsyncEngine) -> None:
    """A connection was lost: ping every pooled connection before its next use.

    When a server (or one node of a cluster) goes away, all pooled connections to it are
    dead, not just the one that failed; each is then replaced at checkout instead of failing
    the call that draws it.
    """
    _SUSPECT_BEFORE[engine.sync_engine] = time.monotonic()


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
        # decode_document's values, read by the C scanner directly (sql.document): on
        # PostgreSQL asyncpg decodes every JSON value of a row with it, lean reads included.
        "json_deserializer": document,
    }
    if url.kind == "postgresql":
        options["connect_args"] = {
            "timeout": connect_timeout,
            "server_settings": {"application_name": "mofa-persist"},
        }
        if url.tls is not None:
            # In connect_args, so a cluster's connect (below) uses it for every node.
            options["connect_args"]["ssl"] = tls_argument(url.tls)
        if url.pgbouncer == "transaction":
            options["connect_args"]["statement_cache_size"] = 0
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
    pooled = url.pgbouncer == "transaction"
    if url.is_cluster:
        connect = _first_ready_node(url, options.pop("connect_args"))
        if pooled:
            options["creator"] = _adapted(url, connect)
        else:
            options["async_creator"] = connect
    elif pooled:
        options["connect_args"].update(TRANSACTION_POOLING)
    if url.kind != "postgresql":
        # Returning a connection normally sends ROLLBACK (a round trip on MySQL, a thread hop
        # on aiosqlite) even after a COMMIT; _reset_if_needed rolls back only what is open.
        # asyncpg's adapter already skips the rollback when no transaction is open.
        options["pool_reset_on_return"] = None
    engine = create_async_engine(_driver_url(url.sa_url), **options)
    if url.kind in ("postgresql", "mysql") and not use_null_pool:
        _ping_idle_connections(engine)
    if url.kind != "postgresql":
        event.listen(engine.sync_engine, "reset", _reset_if_needed)
    if url.kind in ("sqlite", "memory"):
        _configure_sqlite(
            engine, url, busy_timeout_s=connect_timeout, foreign_keys=enforce_foreign_keys
        )
    return engine


def _unnamed() -> str:
    return ""


#: SQLAlchemy's asyncpg adapter behind PgBouncer in transaction mode. A named prepared
#: statement lives on one server connection, and the next transaction may get another one
#: ("prepared statement ... does not exist" or "... already exists"). Unnamed statements
#: are parsed and executed in one exchange, which PgBouncer never splits, and are replaced
#: by the next one, so none is left behind on the server (unique names would be, until the
#: server connection closes). asyncpg's own cache is off too (``statement_cache_size=0``),
#: which also covers the driver-level statements of ``mofa_persist.sql``.
TRANSACTION_POOLING: dict[str, Any] = {
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": _unnamed,
}


def _driver_url(sa_url: URL) -> URL:
    """``sa_url`` without the store's own query options, which are no driver keywords."""
    if "pgbouncer" in sa_url.query:
        return sa_url.difference_update_query(["pgbouncer"])
    return sa_url


def _adapted(url: DatabaseUrl, connect: Callable[[], Awaitable[Any]]) -> Callable[[], Any]:
    """A ``creator`` that gives SQLAlchemy's adapter its PgBouncer settings, which
    ``async_creator`` cannot pass (SQLAlchemy builds the same wrapper without them)."""
    dbapi = url.sa_url.get_dialect().import_dbapi()

    def creator() -> Any:
        return dbapi.connect(async_creator_fn=connect, **TRANSACTION_POOLING)

    return creator


def tls_argument(tls: TlsSettings) -> ssl.SSLContext | str:
    """asyncpg's ``ssl=`` for libpq's settings: a mode name, or a context for the strict modes.

    asyncpg reads ``sslrootcert`` and the client files only from a DSN or the environment, so
    for ``require`` and the ``verify-*`` modes the context is built here; asyncpg treats any
    context as "TLS required", which is what these modes mean. ``verify-ca`` checks the chain
    only, ``verify-full`` the host name too; without ``sslrootcert`` (or with
    ``sslrootcert=system``) they trust the system's CAs. ``require`` with a ``sslrootcert``
    checks the chain, as libpq does. Files are read now, so a missing or unreadable one is an
    ``InvalidInputError`` before any connection is tried.
    """
    if tls.mode in ("disable", "allow", "prefer"):
        return tls.mode  # asyncpg implements these (and the plain-text fallback) itself
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = tls.mode == "verify-full"
    if tls.mode == "require" and tls.rootcert is None:
        context.verify_mode = ssl.CERT_NONE
    elif tls.rootcert in (None, "system"):
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        with _reading("sslrootcert", tls.rootcert):
            context.load_verify_locations(cafile=tls.rootcert)
    if tls.cert is not None:
        # A callback even without sslpassword: with none, OpenSSL would prompt on the terminal
        # for an encrypted key's passphrase and block the process.
        passphrase = tls.password or ""
        files = tls.cert if tls.key is None else f"{tls.cert}, {tls.key}"
        hint = "a wrong or missing sslpassword, or a key that does not match the certificate"
        with _reading("sslcert/sslkey", files, hint):
            context.load_cert_chain(tls.cert, keyfile=tls.key, password=lambda: passphrase)
    return context


@contextlib.contextmanager
def _reading(setting: str, path: str, hint: str = "") -> Iterator[None]:
    """Turn a failure to load a TLS file into an ``InvalidInputError`` naming the setting."""
    try:
        yield
    except OSError as error:  # ssl.SSLError is one too
        reason = error.strerror or str(error) or type(error).__name__
        if hint and isinstance(error, ssl.SSLError):
            reason = f"{reason} ({hint})"
        raise InvalidInputError(
            f"cannot use {setting} {path!r} of the postgresql URL: {reason}"
        ) from error


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Pre-ping, but only connections that sat idle: a server restart then costs one failed
    ping and a reconnect, not a failed call, and busy connections pay nothing."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKIN] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        checked_in = record.info.get(_CHECKIN)
        if checked_in is None:
            return  # a brand-new connection
        suspect_before = _SUSPECT_BEFORE.get(engine.sync_engine, 0.0)
        if time.monotonic() - checked_in < PING_AFTER_IDLE_S and checked_in >= suspect_before:
            return  # in steady use, and no connection was lost since it was last used
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool replaces the connection with a new one and tries again.
            raise exc.DisconnectionError(f"pooled connection failed its ping: {error}") from error


def _first_ready_node(
    url: DatabaseUrl, connect_args: dict[str, Any]
) -> Callable[[], Awaitable[Any]]:
    """A driver-level connect that tries each node in order and returns the first ready one.

    Nodes are tried in the order given, so one node takes the writes while it is up (on
    Galera that keeps certification conflicts rare); the next is used only when it is not.
    """
    # The driver's keyword arguments per node, as the dialect would pass them itself.
    dialect = url.sa_url.get_dialect()()
    nodes = [
        (node, {**dialect.create_connect_args(_driver_url(node))[1], **connect_args})
        for node in url.nodes
    ]

    async def connect() -> Any:
        failures: list[str] = []
        last: BaseException | None = None
        for node, params in nodes:
            try:
                if url.kind == "postgresql":
                    return await _connect_postgres_node(params)
                return await _connect_mysql_node(params)
            except Exception as error:  # any failure: try the next node
                failures.append(f"{_node_name(node)}: {type(error).__name__}: {error}")
                last = error
        raise ConnectionError(
            f"no node of {len(url.nodes)} accepted a connection ({'; '.join(failures)})"
        ) from last

    return connect


def _node_name(node: Any) -> str:
    return f"{node.host or 'localhost'}:{node.port}" if node.port else str(node.host)


async def _connect_postgres_node(params: Mapping[str, Any]) -> Any:
    import asyncpg  # the optional driver, imported when first used

    # A node that is (or became) a hot standby refuses writes: skip it like a dead one.
    return await asyncpg.connect(**params, target_session_attrs="read-write")


async def _connect_mysql_node(params: Mapping[str, Any]) -> Any:
    import aiomysql  # the optional driver, imported when first used

    conn = await aiomysql.connect(**params)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute("SHOW VARIABLES LIKE 'wsrep_on'")
            row = await cursor.fetchone()
            if row is not None and str(row[1]).upper() == "ON":
                # A Galera node outside the primary component, or still joining, refuses
                # queries: skip it like a dead one.
                await cursor.execute("SHOW STATUS LIKE 'wsrep_ready'")
                ready = await cursor.fetchone()
                if ready is None or str(ready[1]).upper() != "ON":
                    raise ConnectionError("the Galera node is not ready (wsrep_ready=OFF)")
                # After a failover, reads must see what this client wrote through the
                # previous node: wait for this node to apply it before each read.
                await cursor.execute("SET SESSION wsrep_sync_wait = 1")
    except BaseException:
        conn.close()
        raise
    return conn


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
