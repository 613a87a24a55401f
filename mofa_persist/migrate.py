"""Bring a database's schema to a revision with the packaged Alembic migrations.

Safe when many processes connect to a fresh database at once: the whole upgrade runs under a
lock (an advisory transaction lock on PostgreSQL, ``GET_LOCK`` on MySQL, the write lock of
``BEGIN IMMEDIATE`` on SQLite), and whoever comes second finds the schema already at head.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from .errors import BackendError

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

# Any constant works; it only has to be the same in every process of every version.
_PG_LOCK_KEY = 0x6D6F_6661_7065_7273 & 0x7FFF_FFFF_FFFF_FFFF  # "mofapers"
_MYSQL_LOCK_NAME = "mofa_persist.migrate"
_LOCK_TIMEOUT_S = 120


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
        await conn.run_sync(run_locked, _upgrade_body(revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    def body(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with engine.connect() as conn:
        await conn.run_sync(run_locked, body)
