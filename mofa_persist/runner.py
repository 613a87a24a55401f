"""The unit-of-work runner: one transaction per call, retried where that is known to be safe.

Writes that lose a lock race (deadlock, serialization failure, lock timeout, SQLite busy) are
retried here, because their transaction was rolled back whole; a failure while committing is
never retried, because the outcome is unknown. On a server backend the whole call, retries
included, ends within the backend's ``call_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy.util import greenlet_spawn

from . import telemetry
from .engine import SQLITE_READ_ONLY, mark_connections_suspect
from .errors import BackendError, ConflictError, PersistenceError
from .translate import DRIVER_ERRORS, Failure, classify, to_backend_error

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection
    from sqlalchemy.pool import PoolProxiedConnection

    from .backend import Replica, _Backend

T = TypeVar("T")
Work = Callable[["AsyncConnection"], Awaitable[T]]
#: Work on the pooled driver connection (asyncpg, aiomysql or aiosqlite), see mofa_persist.sql.
LeanWork = Callable[[Any], Awaitable[T]]

_MAX_ATTEMPTS = 10  # for lock races: deadlocks, serialization failures, busy SQLite
_MAX_CONNECTION_ATTEMPTS = 2  # a dropped connection is retried once, on a fresh one


@dataclass(slots=True)
class _Progress:
    """How far one attempt got: a failure during COMMIT must not be retried."""

    committing: bool = False
    #: The attempt ended with the connection in a known state (committed or rolled back).
    clean: bool = False


async def run(
    backend: _Backend,
    store: object,
    work: Work[T] | LeanWork[T],
    *,
    write: bool,
    action: str,
    one_read: bool = False,
    lean: bool = False,
    own_transaction: bool = False,
    stale_ok: bool = False,
) -> T:
    """Run ``work`` in one transaction, retrying where that is known to be safe.

    ``one_read`` marks reads whose answer is one SELECT (a second one only to tell "no
    rows" from "no session"). Where the dialect allows they run in autocommit: BEGIN and
    COMMIT would be two of the three round trips (or thread hops) of such a read, and a
    single statement is atomic anyway.

    ``lean`` work gets the pooled *driver* connection instead of a SQLAlchemy one and
    runs :mod:`mofa_persist.sql` statements on it (see there why); with
    ``own_transaction`` it also begins, commits and rolls back itself.

    ``stale_ok`` reads may go to a read replica. A replica gets one try per call, bounded by
    ``connect_timeout``; whatever fails there, the primary answers instead.
    """
    if backend.closed:
        raise BackendError(
            f"{store!r} is closed", host=backend.url.host, database=backend.url.database
        )
    # On a server backend the whole call, retries included, ends within call_timeout. A
    # connection that timed out or was cancelled mid-call is dropped, never rolled back
    # or returned to the pool: talking to a hung server would hang again.
    loop = asyncio.get_running_loop()
    deadline = None if backend.call_timeout is None else loop.time() + backend.call_timeout
    replica: Replica | None = backend.replica_for_read() if stale_ok and not write else None
    attempt = 0
    while True:
        attempt += 1
        progress = _Progress()
        engine = backend.engine if replica is None else replica.engine
        when = _attempt_deadline(backend, deadline, replica, loop.time())
        bound = _UNBOUNDED if when is None else asyncio.timeout_at(when)
        try:
            async with bound, backend.turn(write):
                if lean and backend.pinned is not None:
                    # The in-memory database: its one connection, used under the lock.
                    return await _attempt_lean(
                        backend,
                        backend.pinned,
                        None,
                        cast("LeanWork[T]", work),
                        write,
                        _lean_transactional(backend, write, one_read, own_transaction),
                        progress,
                    )
                if lean:
                    # Straight from the pool: lean work needs no SQLAlchemy Connection.
                    # A SQLite file's reads reuse a connection an earlier read kept.
                    keep = backend.keeps_readers and not write and replica is None
                    pooled = backend.idle_readers.pop() if keep and backend.idle_readers else None
                    if pooled is None:
                        # Bounded: a server that accepts TCP but never answers must not hang.
                        async with asyncio.timeout(backend.connect_timeout):
                            pooled = await greenlet_spawn(engine.sync_engine.raw_connection)
                    try:
                        result = await _attempt_lean(
                            backend,
                            pooled.driver_connection,
                            pooled,
                            cast("LeanWork[T]", work),
                            write,
                            _lean_transactional(backend, write, one_read, own_transaction),
                            progress,
                        )
                        progress.clean = True
                        return result
                    except Exception as error:
                        progress.clean = _reusable(error, bound)
                        raise
                    finally:
                        if not (progress.clean or backend.is_sqlite) and pooled.is_valid:
                            with contextlib.suppress(*DRIVER_ERRORS):
                                await greenlet_spawn(pooled.invalidate)
                        if not (keep and progress.clean and backend.keep_reader(pooled)):
                            with contextlib.suppress(*DRIVER_ERRORS):
                                await greenlet_spawn(pooled.close)  # back to the pool
                conn = engine.connect()
                async with asyncio.timeout(backend.connect_timeout):
                    await conn.start()
                try:
                    result = await _attempt(
                        backend, conn, cast("Work[T]", work), write, one_read, progress
                    )
                    progress.clean = True
                    return result
                except Exception as error:
                    progress.clean = _reusable(error, bound)
                    raise
                finally:
                    # SQLite rolled back already; dropping the in-memory store's one
                    # connection would lose its database.
                    if not (progress.clean or backend.is_sqlite or conn.invalidated):
                        with contextlib.suppress(*DRIVER_ERRORS):
                            await conn.invalidate()
                    with contextlib.suppress(*DRIVER_ERRORS):
                        await conn.close()
        except PersistenceError:
            raise
        except DRIVER_ERRORS as error:
            failure = classify(error)
            lost = failure is Failure.CONNECTION or bound.expired()
            if replica is not None:
                if lost:
                    backend.replica_failed(replica)
                replica, attempt = None, attempt - 1  # the primary's turn, a fresh count
                continue
            if lost:
                mark_connections_suspect(backend.engine)
            if bound.expired():
                raise _timed_out(
                    backend, action, committing=write and progress.committing
                ) from error
            if failure is Failure.UNIQUE:
                raise ConflictError(f"could not {action}: a unique key is taken") from error
            if failure is Failure.RETRYABLE:
                retry = attempt < _MAX_ATTEMPTS
            else:
                # Before COMMIT was sent the transaction is simply gone: redo it. During
                # COMMIT the outcome is unknown, and redoing it could write twice.
                retry = (
                    failure is Failure.CONNECTION
                    and not progress.committing
                    and attempt < _MAX_CONNECTION_ATTEMPTS
                )
            # Exponential backoff with jitter, capped: lock races clear in milliseconds.
            pause = min(0.5, 0.005 * 2**attempt) * (0.5 + random.random())
            if retry and deadline is not None and loop.time() + pause >= deadline:
                raise _timed_out(backend, action, committing=False) from error
            if retry:
                telemetry.retried(backend, action, attempt, failure.name.lower(), lost)
                await asyncio.sleep(pause)
                continue
            raise to_backend_error(
                error, backend.url, action, committing=write and progress.committing
            ) from error


class _Unbounded:
    """An attempt with no deadline (SQLite, or no call_timeout): what ``asyncio.timeout_at(
    None)`` does, which is nothing, without its per-call task and loop look-ups."""

    __slots__ = ()

    def expired(self) -> bool:
        return False

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *_exc: object) -> None:
        return None


_UNBOUNDED = _Unbounded()


def _reusable(error: Exception, bound: asyncio.Timeout | _Unbounded) -> bool:
    """Whether the connection of a failed attempt may go back to the pool."""
    if bound.expired():
        return False
    return not (isinstance(error, DRIVER_ERRORS) and classify(error) is Failure.CONNECTION)


def _attempt_deadline(
    backend: _Backend, deadline: float | None, replica: Replica | None, now: float
) -> float | None:
    """When this attempt must end: the call's deadline; on a replica, connect_timeout too."""
    if replica is None:
        return deadline
    limit = now + backend.connect_timeout
    return limit if deadline is None else min(deadline, limit)


def _timed_out(backend: _Backend, action: str, *, committing: bool) -> BackendError:
    url = backend.url
    outcome = " (it may or may not have been committed)" if committing else ""
    return BackendError(
        f"{url.kind} database at {url.host}/{url.database} did not answer within "
        f"{backend.call_timeout:g}s to {action}{outcome}",
        host=url.host,
        database=url.database,
        outcome_unknown=committing,
    )


async def _attempt(
    backend: _Backend,
    conn: AsyncConnection,
    work: Work[T],
    write: bool,
    one_read: bool,
    progress: _Progress,
) -> T:
    """One try of :func:`run` through SQLAlchemy."""
    if backend.is_sqlite and not write:
        await conn.execution_options(**{SQLITE_READ_ONLY: True})
    elif one_read and backend.one_statement:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
    transaction = await conn.begin()
    try:
        result = await work(conn)
    except BaseException as error:
        # After a cancellation or timeout a server connection is dropped instead: a hung
        # server would hang the ROLLBACK too. SQLite's is local and cannot hang.
        if isinstance(error, Exception) or backend.is_sqlite:
            with contextlib.suppress(*DRIVER_ERRORS):
                await transaction.rollback()
        raise
    progress.committing = True
    await transaction.commit()
    return result


def _lean_transactional(
    backend: _Backend, write: bool, one_read: bool, own_transaction: bool
) -> bool:
    """Whether _attempt_lean wraps the work in BEGIN ... COMMIT."""
    if own_transaction:
        return False
    return write or not (one_read and backend.lane.autocommit_reads)


async def _attempt_lean(
    backend: _Backend,
    db: Any,
    pooled: PoolProxiedConnection | None,
    work: LeanWork[T],
    write: bool,
    transactional: bool,
    progress: _Progress,
) -> T:
    """One try of :func:`run` on the driver connection ``db`` (checked out as ``pooled``)."""
    lane = backend.lane
    # Work that commits by itself may fail mid-COMMIT: never retry a dropped connection.
    # Except on SQLite: its one-hop write rolls back in its thread on any failure
    # (sql.sqlite_write) and a local file loses no acknowledgement, so a failure there
    # leaves nothing behind (and one refused member of a group must not look uncertain).
    progress.committing = write and not transactional and not backend.is_sqlite
    try:
        if progress.committing and lane.closed(db):
            # The server closed this pooled connection while it sat idle (a restart, a
            # terminated backend): nothing was sent on it, so this is a lost connection
            # before anything could commit, retried on a fresh one, not an unknown outcome.
            progress.committing = False
            raise ConnectionResetError("the server closed this pooled connection")
        if transactional:
            await lane.begin(db, write)
        try:
            result = await work(db)
        except BaseException as error:
            if progress.committing and lane.unsent(error):
                progress.committing = False  # the driver refused to send: nothing can commit
            # After a cancellation or timeout run drops a server connection instead.
            if transactional and (isinstance(error, Exception) or backend.is_sqlite):
                try:
                    await lane.rollback(db)
                except DRIVER_ERRORS:
                    # A transaction may still be open: never hand this connection out.
                    if pooled is not None and pooled.is_valid:
                        with contextlib.suppress(*DRIVER_ERRORS):
                            await greenlet_spawn(pooled.invalidate)
            raise
        if transactional:
            progress.committing = True
            await lane.commit(db)
        return result
    except DRIVER_ERRORS as error:
        if pooled is not None and pooled.is_valid and classify(error) is Failure.CONNECTION:
            # SQLAlchemy did not see the failure: make the pool drop this connection.
            with contextlib.suppress(*DRIVER_ERRORS):
                await greenlet_spawn(pooled.invalidate, error)
        raise
