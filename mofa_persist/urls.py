"""Turn the URLs users write (MoFA/sqlx style or SQLAlchemy style) into SQLAlchemy URLs.

Accepted forms are listed in ``ACCEPTED_FORMS``; anything else is an ``InvalidInputError``.
Nothing here opens a connection, and nothing here ever puts a password in a message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import InvalidInputError

Kind = Literal["postgresql", "mysql", "sqlite", "memory"]

ACCEPTED_FORMS: dict[Kind, tuple[str, ...]] = {
    "postgresql": (
        "postgres://user:pass@host:5432/db",
        "postgresql://...",
        "postgresql+asyncpg://...",
    ),
    "mysql": ("mysql://user:pass@host:3306/db", "mariadb://...", "mysql+aiomysql://..."),
    "sqlite": (
        "sqlite://mofa.db (relative path)",
        "sqlite:///abs/path.db",
        "sqlite+aiosqlite:///relative.db or sqlite+aiosqlite:////abs/path.db",
    ),
    "memory": ("memory://",),
}

_SCHEMES: dict[str, Kind] = {
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "postgresql+asyncpg": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "mysql+aiomysql": "mysql",
    "mariadb+aiomysql": "mysql",
    "sqlite": "sqlite",
    "sqlite+aiosqlite": "sqlite",
    "memory": "memory",
}


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A parsed URL: which backend, the SQLAlchemy URL for it, and where it points."""

    kind: Kind
    sa_url: URL
    #: Host (or file path) and database, for messages; never the password.
    host: str | None
    database: str | None

    @property
    def display(self) -> str:
        """The URL with its password masked, safe for logs and error messages."""
        if self.kind == "memory":
            return "memory://"
        return self.sa_url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"DatabaseUrl({self.display!r})"


def accepted_forms(kinds: tuple[Kind, ...] | None = None) -> str:
    chosen = kinds or tuple(ACCEPTED_FORMS)
    return "; ".join(form for kind in chosen for form in ACCEPTED_FORMS[kind])


def parse_url(url: str, *, allowed: tuple[Kind, ...] | None = None) -> DatabaseUrl:
    """Parse ``url``; ``allowed`` restricts the backends (for ``PostgresStore.connect`` etc.)."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidInputError(
            f"url must be a string like scheme://...; accepted forms: {accepted_forms(allowed)}"
        )
    scheme = url.split("://", 1)[0].lower()
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise InvalidInputError(
            f"unknown URL scheme {scheme!r}; accepted forms: {accepted_forms(allowed)}"
        )
    if allowed is not None and kind not in allowed:
        raise InvalidInputError(
            f"a {kind} URL was given to a store for {' or '.join(allowed)}; "
            f"accepted forms: {accepted_forms(allowed)}"
        )
    if kind == "memory":
        return DatabaseUrl("memory", make_url("sqlite+aiosqlite://"), None, ":memory:")
    if kind == "sqlite":
        return _parse_sqlite(url, scheme)
    try:
        sa_url = make_url(url)
    except ArgumentError:
        raise InvalidInputError(
            f"malformed {kind} URL; accepted forms: {accepted_forms((kind,))}"
        ) from None
    if not sa_url.database:
        raise InvalidInputError(
            f"the {kind} URL names no database (…/dbname); "
            f"accepted forms: {accepted_forms((kind,))}"
        )
    if kind == "postgresql":
        sa_url = sa_url.set(drivername="postgresql+asyncpg")
    else:
        # utf8mb4 on the connection so 4-byte characters (emoji) round-trip exactly.
        sa_url = sa_url.set(drivername="mysql+aiomysql").update_query_dict({"charset": "utf8mb4"})
    host = f"{sa_url.host or 'localhost'}:{sa_url.port}" if sa_url.port else sa_url.host
    return DatabaseUrl(kind, sa_url, host or "localhost", sa_url.database)


def _parse_sqlite(url: str, scheme: str) -> DatabaseUrl:
    rest = url.split("://", 1)[1]
    path_part, _, query = rest.partition("?")
    if scheme == "sqlite+aiosqlite":
        # SQLAlchemy's own form: three slashes = relative path, four = absolute.
        if not path_part.startswith("/"):
            raise InvalidInputError(
                "sqlite+aiosqlite URLs look like sqlite+aiosqlite:///relative.db or "
                "sqlite+aiosqlite:////abs/path.db"
            )
        path_part = path_part[1:]
    # MoFA/sqlx form: sqlite://relative.db and sqlite:///abs/path.db.
    if path_part in ("", ":memory:"):
        return DatabaseUrl("memory", make_url("sqlite+aiosqlite://"), None, ":memory:")
    path = Path(path_part).expanduser()
    if not path.is_absolute():
        path = Path(os.getcwd()) / path
    if query:
        raise InvalidInputError("sqlite URLs take no query parameters")
    sa_url = URL.create("sqlite+aiosqlite", database=str(path))
    return DatabaseUrl("sqlite", sa_url, str(path), path.name)
