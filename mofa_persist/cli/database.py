"""Opening databases for commands, so that no command creates or migrates one by accident.

Read commands refuse a SQLite file that does not exist (a typo would make a new one) and a
schema that is not at the packaged head revision; only import and copy's destination create.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import migrate as migrations
from ..errors import InvalidInputError, PersistenceError
from ..store import Store, connect
from ..translate import DRIVER_ERRORS, to_backend_error
from ..urls import parse_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..urls import DatabaseUrl


def display(url: str) -> str:
    """The URL as messages show it: its password masked."""
    try:
        return parse_url(url).display
    except PersistenceError:
        return "the database"


def file_missing(parsed: DatabaseUrl) -> bool:
    return parsed.kind == "sqlite" and parsed.host is not None and not Path(parsed.host).exists()


def require_file(parsed: DatabaseUrl) -> None:
    """Read commands never create a SQLite file by accident (a typo would make a new one)."""
    if file_missing(parsed):
        raise InvalidInputError(f"no SQLite database at {parsed.host}")


def make_parent(parsed: DatabaseUrl) -> None:
    """A new SQLite file may be asked for in a folder that does not exist yet."""
    if parsed.kind == "sqlite" and parsed.host is not None:
        Path(parsed.host).parent.mkdir(parents=True, exist_ok=True)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at; ``None`` when it has no schema."""
    async with engine.connect() as conn:
        revision: str | None = await conn.run_sync(migrations.current_revision)
        return revision


async def open_store(url: str, *, create: bool = False) -> Store:
    """Connect for a command. ``create=True`` (import, copy's destination) creates and
    migrates the schema; otherwise the schema must exist at the packaged head revision."""
    parsed = parse_url(url)
    if create or parsed.kind == "memory":
        return await connect(url, migrate=True)
    require_file(parsed)
    store = await connect(url, migrate=False)
    try:
        current = await current_revision(store.engine)
    except DRIVER_ERRORS as error:
        await store.close()
        raise to_backend_error(error, parsed, "read the schema revision") from error
    head = migrations.head_revision()
    if current != head:
        await store.close()
        where = parsed.display
        if current is None:
            raise InvalidInputError(
                f"{where} has no mofa-persist schema; run: mofa-persist upgrade --url {where}"
            )
        raise InvalidInputError(
            f"{where} is at schema revision {current}, this mofa-persist needs {head}; "
            f"run: mofa-persist upgrade --url {where}"
        )
    return store
