"""Bring a database's schema to a revision with the packaged Alembic migrations.

Safe when many processes connect to a fresh database at once: the whole upgrade runs under a
lock (an advisory transaction lock on PostgreSQL, ``GET_LOCK`` on MySQL, a lease row on a
Galera cluster, the write lock of ``BEGIN IMMEDIATE`` on SQLite), and whoever comes second finds
the schema already at head.
"""

from __future__ import annotations

import random
import time
import uuid
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc, text

from .errors import BackendError
from .telemetry import logger
from .translate import Failure, classify

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import TextClause
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

# Any constant works; it only has to be the same in every process of every version.
_PG_LOCK_KEY = 0x6D6F_6661_7065_7273 & 0x7FFF_FFFF_FFFF_FFFF  # "mofapers"
_MYSQL_LOCK_NAME = "mofa_persist.migrate"
_LOCK_TIMEOUT_S = 120
#: Galera: the table holding the migration lease (not part of the schema; Alembic ignores it).
LOCK_TABLE = "mofa_persist_lock"
#: A lease outlives any migration this package ships; it frees itself if its holder crashed.
_LEASE_S = 600


def include_name(name: str | None, type_: str, _parents: object) -> bool:
    """Alembic's ``include_name`` hook: the Galera migration lease and the search indexes
    live beside the schema, not in it, so autogenerate and ``alembic check`` must not offer
    to drop them."""
    if (type_, name) in (("table", LOCK_TABLE), ("column", "search_vector")):
        return False
    # The full-text search objects of migrations 0008 and 0009 are per-dialect DDL, not models.
    return not (name or "").startswith(("messages_search", "ix_messages_search"))


@cache
def script_location() -> str:
    """The migrations folder: inside the installed package, or ``migrations/`` in a checkout."""
    packaged = resources.files("mofa_persist").joinpath("_migrations")
    if packaged.is_dir():
        return str(packaged)
    checkout = Path(__file__).resolve().parent.parent / "migrations"
    if (checkout / "env.py").is_file():
        return str(checkout)
    raise RuntimeError("mofa_persist is installed without its migrations folder")


def alembic_config() -> Config:
    """An Alembic ``Config`` for the packaged migrations (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", script_location())
    return config


@cache
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def run_locked(connection: Connection, body: Callable[[Connection], None]) -> None:
    """Run ``body`` inside one transaction that holds the migration lock, then commit."""
    dialect = connection.dialect.name
    if dialect == "mysql" and _is_galera(connection):
        _run_under_lease(connection, body)
        return
    if dialect == "mysql":
        got = connection.execute(
            text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": _MYSQL_LOCK_NAME, "timeout": _LOCK_TIMEOUT_S},
        ).scalar()
        if got != 1:
            raise BackendError("timed out waiting for another process's migration to finish")
        try:
            body(connection)
            connection.commit()
        finally:
            connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _MYSQL_LOCK_NAME})
            connection.commit()
        return
    if dialect == "postgresql":
        # Released by the COMMIT below; PostgreSQL DDL is transactional, so a failed
        # upgrade leaves the schema as it was.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    elif dialect == "sqlite":
        # The engine begins every write transaction with BEGIN IMMEDIATE: starting one takes
        # the database's write lock and keeps it until COMMIT.
        connection.execute(text("SELECT 1"))
    body(connection)
    connection.commit()


def _is_galera(connection: Connection) -> bool:
    row = connection.execute(text("SHOW VARIABLES LIKE 'wsrep_on'")).first()
    connection.commit()
    return row is not None and str(row[1]).upper() == "ON"


def _run_under_lease(connection: Connection, body: Callable[[Connection], None]) -> None:
    """Run ``body`` holding a lease row that the whole Galera cluster agrees on.

    ``GET_LOCK`` and ``SELECT ... FOR UPDATE`` lock on one node only. A committed UPDATE is
    certified by every node: of two nodes taking the lease at once, one commit fails with a
    deadlock, so exactly one process holds it. It expires if the holder dies.
    """
    me = uuid.uuid4().hex
    deadline = time.monotonic() + _LOCK_TIMEOUT_S
    _create_lease(connection, deadline)
    take = text(
        f"UPDATE {LOCK_TABLE} SET holder = :me, "
        f"expires_at = NOW(6) + INTERVAL {_LEASE_S} SECOND "
        "WHERE name = 'migrate' AND (holder IS NULL OR expires_at < NOW(6))"
    )
    if not _retry_until(deadline, lambda: _commit_one(connection, take, {"me": me}) == 1):
        raise BackendError(
            "timed out waiting for another process's migration to finish (if that process "
            f"died, its lease in table {LOCK_TABLE} expires {_LEASE_S}s after it began)"
        )
    try:
        body(connection)
        connection.commit()
    finally:
        connection.rollback()
        # Retried like the take: a release lost to a deadlock would leave every other
        # process waiting for the lease to expire.
        release = text(
            f"UPDATE {LOCK_TABLE} SET holder = NULL, expires_at = NULL WHERE holder = :me"
        )
        _commit_until_done(connection, release, {"me": me}, time.monotonic() + _LOCK_TIMEOUT_S)


def _create_lease(connection: Connection, deadline: float) -> None:
    """Create the lease table and its one row, if missing.

    Checked first because on Galera every ``CREATE TABLE``, even one that finds the table,
    is replicated in total order and aborts other nodes' transactions on that table.
    """
    exists = connection.execute(
        text(
            "SELECT COUNT(*) FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = :name"
        ),
        {"name": LOCK_TABLE},
    ).scalar()
    connection.commit()
    if not exists:
        connection.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {LOCK_TABLE} (name VARCHAR(64) NOT NULL PRIMARY KEY, "
                "holder VARCHAR(32) NULL, expires_at DATETIME(6) NULL) ENGINE=InnoDB"
            )
        )
    # Its own transaction: a duplicate-key check leaves a shared lock on the row, which an
    # UPDATE in the same transaction would have to upgrade (a deadlock with any other
    # process doing the same).
    add_row = text(f"INSERT IGNORE INTO {LOCK_TABLE} (name) VALUES ('migrate')")
    _commit_until_done(connection, add_row, {}, deadline)


def _commit_one(connection: Connection, statement: TextClause, params: dict[str, str]) -> int:
    """Execute and commit one statement; its row count, or -1 if it lost a deadlock."""
    try:
        count = connection.execute(statement, params).rowcount
        connection.commit()
    except exc.DBAPIError as error:
        if classify(error) is not Failure.RETRYABLE:
            raise
        connection.rollback()  # a lock race here, or another node's commit won certification
        return -1
    return count


def _commit_until_done(
    connection: Connection, statement: TextClause, params: dict[str, str], deadline: float
) -> None:
    if not _retry_until(deadline, lambda: _commit_one(connection, statement, params) >= 0):
        raise BackendError(f"gave up after {_LOCK_TIMEOUT_S}s of deadlocks on table {LOCK_TABLE}")


def _retry_until(deadline: float, attempt: Callable[[], bool]) -> bool:
    """Call ``attempt`` until it succeeds, pausing a random 0.1-0.3 s between tries; False
    once ``deadline`` (a ``time.monotonic()`` value) has passed without success."""
    while not attempt():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1 + 0.2 * random.random())
    return True


def _upgrade_body(revision: str) -> Callable[[Connection], None]:
    def body(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    return body


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade to ``revision``; a cheap version check skips the lock when already at head."""
    async with engine.connect() as conn:
        if revision == "head":
            current = await conn.run_sync(current_revision)
            await conn.rollback()
            if current is not None and current == head_revision():
                return
        started = time.monotonic()
        logger.info("migrating the schema of database %s to %s", engine.url.database, revision)
        await conn.run_sync(run_locked, _upgrade_body(revision))
        logger.info(
            "the schema of database %s is at %s (%.1fs)",
            engine.url.database,
            revision,
            time.monotonic() - started,
        )


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    def body(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with engine.connect() as conn:
        await conn.run_sync(run_locked, body)
