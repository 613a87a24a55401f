"""Turn the URLs users write (MoFA/sqlx style or SQLAlchemy style) into SQLAlchemy URLs.

Accepted forms are listed in ``ACCEPTED_FORMS``; anything else is an ``InvalidInputError``.
A server URL may name several nodes of one cluster (``mysql://u@h1:3306,h2:3306/db``, as libpq
and sqlx write it), or several URLs may be given; the store connects to the first node that
answers. Nothing here opens a connection, and nothing here ever puts a password in a message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
        "postgres://user:pass@host1:5432,host2:5432/db (failover)",
        "postgresql://...",
        "postgresql+asyncpg://...",
    ),
    "mysql": (
        "mysql://user:pass@host:3306/db",
        "mysql://user:pass@node1:3306,node2:3306/db (failover)",
        "mariadb://...",
        "mysql+aiomysql://...",
    ),
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
    #: Every node to try, in order (the first is ``sa_url``); one entry unless a cluster.
    nodes: tuple[URL, ...] = ()

    @property
    def display(self) -> str:
        """The URL with its password masked, safe for logs and error messages."""
        if self.kind == "memory":
            return "memory://"
        if len(self.nodes) > 1:
            return ", ".join(node.render_as_string(hide_password=True) for node in self.nodes)
        return self.sa_url.render_as_string(hide_password=True)

    @property
    def is_cluster(self) -> bool:
        """Several nodes were given: connections fail over from one to the next."""
        return len(self.nodes) > 1

    def __repr__(self) -> str:
        return f"DatabaseUrl({self.display!r})"


def accepted_forms(kinds: tuple[Kind, ...] | None = None) -> str:
    chosen = kinds or tuple(ACCEPTED_FORMS)
    return "; ".join(form for kind in chosen for form in ACCEPTED_FORMS[kind])


def parse_urls(
    urls: str | Sequence[str], *, allowed: tuple[Kind, ...] | None = None
) -> DatabaseUrl:
    """Parse one URL or several URLs of the nodes of one cluster (tried in the order given)."""
    if isinstance(urls, str):
        return parse_url(urls, allowed=allowed)
    if not isinstance(urls, Sequence) or not urls:
        raise InvalidInputError(
            "url must be a string or a non-empty list of node URLs; "
            f"accepted forms: {accepted_forms(allowed)}"
        )
    parsed = [parse_url(url, allowed=allowed) for url in urls]
    first = parsed[0]
    if len(parsed) == 1:
        return first
    if first.kind not in ("postgresql", "mysql"):
        raise InvalidInputError(f"several URLs name nodes of a server cluster, not {first.kind}")
    if any(other.kind != first.kind for other in parsed):
        raise InvalidInputError("the node URLs of one store must all be PostgreSQL or all MySQL")
    if any(other.database != first.database for other in parsed):
        raise InvalidInputError("the node URLs of one store must all name the same database")
    return _cluster(first.kind, [node for url in parsed for node in url.nodes])


def _cluster(kind: Kind, nodes: list[URL]) -> DatabaseUrl:
    hosts = ",".join(_host_of(node) for node in nodes)
    return DatabaseUrl(kind, nodes[0], hosts, nodes[0].database, tuple(nodes))


def _host_of(sa_url: URL) -> str:
    host = sa_url.host or "localhost"
    return f"{host}:{sa_url.port}" if sa_url.port else host


def _split_hosts(url: str) -> list[str] | None:
    """``scheme://u@h1:p1,h2:p2/db`` as one URL per host; ``None`` when only one host."""
    scheme, rest = url.split("://", 1)
    authority_end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:authority_end], rest[authority_end:]
    userinfo, at, hosts = authority.rpartition("@")
    if "," not in hosts:
        return None
    if any(not host.strip() for host in hosts.split(",")):
        raise InvalidInputError("an empty host in the node list of a URL")
    return [f"{scheme}://{userinfo}{at}{host.strip()}{tail}" for host in hosts.split(",")]


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
        return _memory()
    if kind == "sqlite":
        return _parse_sqlite(url, scheme)
    hosts = _split_hosts(url)
    if hosts is not None:
        return _cluster(kind, [node for host in hosts for node in parse_url(host).nodes])
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
    return DatabaseUrl(kind, sa_url, _host_of(sa_url), sa_url.database, (sa_url,))


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
        return _memory()
    path = Path(path_part).expanduser()
    if not path.is_absolute():
        path = Path(os.getcwd()) / path
    if query:
        raise InvalidInputError("sqlite URLs take no query parameters")
    sa_url = URL.create("sqlite+aiosqlite", database=str(path))
    return DatabaseUrl("sqlite", sa_url, str(path), path.name, (sa_url,))


def _memory() -> DatabaseUrl:
    sa_url = make_url("sqlite+aiosqlite://")
    return DatabaseUrl("memory", sa_url, None, ":memory:", (sa_url,))
