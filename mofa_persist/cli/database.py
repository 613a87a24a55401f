"""Opening databases for commands, so that no command creates or migrates one by accident.

Every command refuses a URL that stores nothing (an in-memory database, which each command
would start empty): the library maps ``sqlite://`` with an empty path to memory, and from a
shell that is usually an unset variable (``--url "sqlite://$DB"``). Read commands refuse a
SQLite file that does not exist (a typo would make a new one) and a schema that is not at the
packaged head revision; only ``upgrade``, ``import`` and copy's destination create.
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

#: What a refusal of a URL that stores nothing suggests instead.
FILE_URL_FORMS = "sqlite://relative/path.db or sqlite:///abs/path.db (or a server URL)"


def display(url: str) -> str:
    """The URL as messages show it: its password masked."""
    try:
        return parse_url(url).display
    except PersistenceError:
        return "the database"


def durable_url(url: str, source: str = "the URL") -> str:
    """``url`` itself, unless its database would vanish with the command (memory), or its
    SQLite path is empty (``sqlite://`` means memory, ``sqlite:///`` the root folder).

    ``source`` names where the URL came from (``--url``, ``DATABASE_URL``, ``SRC_URL``) in
    the one-line refusal, which says why and shows the form of a file URL.
    """
    parsed = parse_url(url)  # an unknown scheme or a malformed URL is refused here too
    if _empty_sqlite_path(url):
        why = "has an empty SQLite path (is a shell variable in it unset?)"
    elif parsed.kind == "memory":
        why = "is an in-memory database"
    else:
        return url
    raise InvalidInputError(
        f"{source} {url.strip()} {why}, so nothing would be stored; give a file URL such as "
        f"{FILE_URL_FORMS}"
    )


def _empty_sqlite_path(url: str) -> bool:
    scheme, _, rest = url.strip().partition("://")
    return scheme.lower().startswith("sqlite") and not rest.partition("?")[0].strip("/")


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
    parsed = parse_url(durable_url(url))
    if create:
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
