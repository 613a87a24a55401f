"""Alembic environment for mofa-persist.

Two ways in:
- ``mofa_persist.connect(migrate=True)`` (and the CLI) pass an open connection in
  ``config.attributes["connection"]``, already inside the migration lock's transaction;
- the ``alembic`` command builds its own engine from ``DATABASE_URL`` and takes the same lock.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import TYPE_CHECKING

from alembic import context

from mofa_persist.engine import create_engine
from mofa_persist.errors import PersistenceError
from mofa_persist.migrate import include_name, run_locked
from mofa_persist.models import Base
from mofa_persist.translate import DRIVER_ERRORS, to_backend_error
from mofa_persist.urls import parse_url

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

config = context.config
target_metadata = Base.metadata
DEFAULT_URL = "sqlite://mofa.db"

if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # ALTER on SQLite by copy-and-move; no effect elsewhere
        compare_type=True,
        include_name=include_name,
    )


def run_on_connection(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine() -> None:
    url = parse_url(os.environ.get("DATABASE_URL") or DEFAULT_URL)
    engine = create_engine(url, use_null_pool=True, enforce_foreign_keys=False)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_locked, run_on_connection)
    except DRIVER_ERRORS as error:
        raise to_backend_error(error, url, "migrate its schema") from error
    finally:
        await engine.dispose()


def run_from_command_line() -> None:
    """The ``alembic`` command: a bad URL or an unreachable database is one line, exit 1
    (the same line ``mofa-persist upgrade`` prints), not a traceback through Alembic."""
    try:
        asyncio.run(run_with_own_engine())
    except PersistenceError as error:
        raise SystemExit(f"error: {error}") from None


def run_offline() -> None:
    url = parse_url(os.environ.get("DATABASE_URL") or DEFAULT_URL)
    context.configure(
        url=url.sa_url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (given := config.attributes.get("connection")) is not None:
    run_on_connection(given)
else:
    run_from_command_line()
