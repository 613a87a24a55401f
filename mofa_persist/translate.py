"""Classify driver failures and translate them into the public error types.

Classification uses codes, never message text: PostgreSQL SQLSTATE, MySQL error numbers and
SQLite result codes. The original exception always stays reachable as ``__cause__``.
"""

from __future__ import annotations

import enum
import sqlite3
from typing import TYPE_CHECKING

from sqlalchemy import exc as sa_exc

from .errors import BackendError, InvalidInputError, PersistenceError

if TYPE_CHECKING:
    from .urls import DatabaseUrl


class Failure(enum.Enum):
    UNIQUE = "unique"  # a unique or primary key constraint
    FOREIGN_KEY = "foreign_key"
    RETRYABLE = "retryable"  # deadlock, serialization failure, lock timeout, SQLite busy
    CONNECTION = "connection"  # the connection is gone or could not be made
    TOO_LARGE = "too_large"  # a statement or value larger than MySQL's max_allowed_packet
    #: The server refused the statement's data (a check, NOT NULL or length constraint, a bad
    #: value): the statement, and an autocommit write with it, took no effect.
    REFUSED = "refused"
    OTHER = "other"


_PG_STATES = {
    "23505": Failure.UNIQUE,
    "23503": Failure.FOREIGN_KEY,
    "40001": Failure.RETRYABLE,  # serialization_failure
    "40P01": Failure.RETRYABLE,  # deadlock_detected
    "55P03": Failure.RETRYABLE,  # lock_not_available
    "57P01": Failure.CONNECTION,  # admin_shutdown
    "57P02": Failure.CONNECTION,  # crash_shutdown
    "57P03": Failure.CONNECTION,  # cannot_connect_now (starting up / shutting down)
}
#: SQLSTATE classes of a refused statement: data_exception, integrity_constraint_violation.
_PG_REFUSED_CLASSES = ("22", "23")
_MYSQL_ERRNOS = {
    1062: Failure.UNIQUE,
    1452: Failure.FOREIGN_KEY,
    1213: Failure.RETRYABLE,  # ER_LOCK_DEADLOCK (also Galera certification failures)
    1205: Failure.RETRYABLE,  # ER_LOCK_WAIT_TIMEOUT
    # Galera: "WSREP has not yet prepared node for application use" (the node left the
    # primary component or is still joining): this connection is useless, another node not.
    1047: Failure.CONNECTION,
    1927: Failure.CONNECTION,  # ER_CONNECTION_KILLED
    2003: Failure.CONNECTION,  # can't connect
    2006: Failure.CONNECTION,  # server has gone away
    2013: Failure.CONNECTION,  # lost connection during query
    2055: Failure.CONNECTION,
    # Refused data: NOT NULL, out of range, data too long, bad string, check constraints.
    1048: Failure.REFUSED,
    1264: Failure.REFUSED,
    1366: Failure.REFUSED,
    1406: Failure.REFUSED,
    3819: Failure.REFUSED,  # MySQL ER_CHECK_CONSTRAINT_VIOLATED
    4025: Failure.REFUSED,  # MariaDB ER_CONSTRAINT_FAILED
}
#: ER_NET_PACKET_TOO_LARGE (SQLSTATE 08S01, a "communication" state, though the server is
#: fine: it refused the statement, then closed the connection) and
#: ER_WARN_ALLOWED_PACKET_OVERFLOWED (a function result over max_allowed_packet).
_MYSQL_PACKET_ERRNOS = frozenset({1153, 1301})
_SQLITE_CODES = {
    sqlite3.SQLITE_BUSY: Failure.RETRYABLE,
    sqlite3.SQLITE_LOCKED: Failure.RETRYABLE,
    sqlite3.SQLITE_CONSTRAINT: Failure.REFUSED,  # other than the keys of _SQLITE_EXTENDED
}
_SQLITE_EXTENDED = {
    2067: Failure.UNIQUE,  # SQLITE_CONSTRAINT_UNIQUE
    1555: Failure.UNIQUE,  # SQLITE_CONSTRAINT_PRIMARYKEY
    787: Failure.FOREIGN_KEY,  # SQLITE_CONSTRAINT_FOREIGNKEY
}


def _driver_error(error: BaseException) -> BaseException:
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        orig: BaseException = error.orig
        # SQLAlchemy's asyncpg adapter keeps asyncpg's own exception as the cause.
        return orig.__cause__ if orig.__cause__ is not None else orig
    return error


def _packet_error(error: BaseException) -> bool:
    """Whether ``error``, or what it was raised from or while handling (a lost connection
    after the server refused a packet), is a MySQL max_allowed_packet error."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen or len(seen) > 10:
            continue
        seen.add(id(current))
        args = getattr(current, "args", ())
        if args and isinstance(args[0], int) and args[0] in _MYSQL_PACKET_ERRNOS:
            return True
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return False


def classify(error: BaseException) -> Failure:
    """What kind of failure ``error`` is, judged by the driver's code."""
    if _packet_error(error):
        return Failure.TOO_LARGE  # before the SQLSTATE and lost-connection checks: see above
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return Failure.CONNECTION
    driver = _driver_error(error)
    candidates = [driver]
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        candidates.append(error.orig)
    for candidate in candidates:
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            if state in _PG_STATES:
                return _PG_STATES[state]
            if state.startswith("08"):  # connection_exception class
                return Failure.CONNECTION
        code = getattr(candidate, "sqlite_errorcode", None)
        if isinstance(code, int):
            if code in _SQLITE_EXTENDED:
                return _SQLITE_EXTENDED[code]
            return _SQLITE_CODES.get(code & 0xFF, Failure.OTHER)
        args = getattr(candidate, "args", ())
        if args and isinstance(args[0], int) and args[0] in _MYSQL_ERRNOS:
            return _MYSQL_ERRNOS[args[0]]
        # After MySQL's numbers: newer pymysql also reports a SQLSTATE (23000 for any key).
        if isinstance(state, str) and state.startswith(_PG_REFUSED_CLASSES):
            return Failure.REFUSED
    if isinstance(driver, (OSError, TimeoutError, ConnectionError)):
        return Failure.CONNECTION
    if isinstance(error, (sa_exc.InterfaceError, sa_exc.DisconnectionError)):
        return Failure.CONNECTION
    if type(driver).__name__ in (
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "InternalClientError",
    ):
        return Failure.CONNECTION
    return Failure.OTHER


def describe(error: BaseException, url: DatabaseUrl) -> str:
    """A one-line reason taken from the driver, with the password scrubbed out."""
    driver = _driver_error(error)
    if isinstance(driver, TimeoutError) and not str(driver).strip():
        return "timed out"
    reason = str(driver).strip().splitlines()[0] if str(driver).strip() else type(driver).__name__
    for node in url.nodes or (url.sa_url,):
        if node.password:
            reason = reason.replace(str(node.password), "***")
    return reason[:300]


def to_backend_error(
    error: BaseException, url: DatabaseUrl, action: str, *, committing: bool = False
) -> PersistenceError:
    """Wrap ``error`` as a :class:`BackendError` naming where the store points.

    ``committing``: the failure came while a write may have been committing. Only the
    failures known to roll back (lock races, key violations) leave nothing behind; after a
    lost connection or any other error at that point the outcome is unknown (on Galera, a
    node cut off during COMMIT answers 1180 after its write set may have reached the
    others), and the error says so.
    """
    if isinstance(error, PersistenceError):
        return error
    where = url.display if url.kind in ("sqlite", "memory") else f"{url.host}/{url.database}"
    kind = classify(error)
    if kind is Failure.TOO_LARGE:
        # The server refused the statement: the transaction is rolled back, nothing written.
        return InvalidInputError(
            f"the {url.kind} server at {where} refused to {action}: a value is too large for "
            f"its max_allowed_packet; store less or raise max_allowed_packet on the server "
            f"({describe(error, url)})"
        )
    unknown = committing and kind in (Failure.CONNECTION, Failure.OTHER)
    outcome = ", which may or may not have been committed" if unknown else ""
    if kind is Failure.CONNECTION:
        message = f"cannot reach the {url.kind} database at {where} ({action}{outcome}): "
    else:
        message = f"{url.kind} database at {where} failed to {action}{outcome}: "
    return BackendError(
        message + describe(error, url),
        host=url.host,
        database=url.database,
        outcome_unknown=unknown,
    )


def _driver_error_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [
        sa_exc.SQLAlchemyError,
        OSError,
        TimeoutError,
        sqlite3.Error,
    ]
    # DBAPI errors of SQLAlchemy's async adapters (e.g. asyncpg's "the database system is
    # starting up", raised while the pool connects) are not SQLAlchemyError subclasses.
    emulated = getattr(sa_exc, "EmulatedDBAPIException", None)
    if emulated is not None:
        found.append(emulated)
    try:
        import asyncpg

        found.append(asyncpg.PostgresError)
        found.append(asyncpg.InterfaceError)
        # Raised when a connection is used while an earlier, interrupted operation (a timeout
        # or a server going away) is still in progress on it: that connection is unusable.
        found.append(asyncpg.InternalClientError)
    except ImportError:  # the postgres extra is not installed
        pass
    try:
        import pymysql

        found.append(pymysql.err.Error)
    except ImportError:  # the mysql extra is not installed
        pass
    return tuple(found)


#: Exceptions that come from the database layer and are translated at the store boundary.
DRIVER_ERRORS = _driver_error_types()
