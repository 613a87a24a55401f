"""Turn the URLs users write (MoFA/sqlx style or SQLAlchemy style) into SQLAlchemy URLs.

Accepted forms are listed in ``ACCEPTED_FORMS``; anything else is an ``InvalidInputError``.
A server URL may name several nodes of one cluster (``mysql://u@h1:3306,h2:3306/db``, as libpq
and sqlx write it), or several URLs may be given; the store connects to the first node that
answers. PostgreSQL URLs take libpq's TLS settings (``?sslmode=verify-full&sslrootcert=...``),
which the engine applies to every node. Nothing here opens a connection, and nothing here ever
puts a password in a message.

Server URLs are split by hand rather than by ``sqlalchemy.engine.make_url``: its pattern ends
the password at the first ``@``, so ``user:p@ss@host`` would make ``ss@host`` the host and put
a piece of the password into every connection error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import quote, unquote

from sqlalchemy.engine import URL, make_url

from .errors import InvalidInputError

Kind = Literal["postgresql", "mysql", "sqlite", "memory"]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

#: libpq's ``sslmode`` values, weakest first.
SSL_MODES: tuple[SslMode, ...] = get_args(SslMode)
#: The TLS query parameters a PostgreSQL URL may carry (libpq's names).
TLS_PARAMETERS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword")
#: ``?pgbouncer=`` values: the pool mode of the PgBouncer between the store and PostgreSQL.
#: ``transaction`` turns off prepared-statement caching (see ``engine.create_engine``);
#: ``session`` pooling needs nothing and is accepted so a deployment can say what it runs.
PGBOUNCER_MODES = ("transaction", "session")

ACCEPTED_FORMS: dict[Kind, tuple[str, ...]] = {
    "postgresql": (
        "postgres://user:pass@host:5432/db",
        "postgres://user:pass@host1:5432,host2:5432/db (failover)",
        "postgres://user:pass@host/db?sslmode=verify-full&sslrootcert=/path/ca.pem (TLS)",
        "postgres://user:pass@pgbouncer:6432/db?pgbouncer=transaction (behind PgBouncer)",
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

#: How to write the characters that end or split the credentials, for refusal messages.
_ENCODING_HINT = (
    "percent-encode these characters in the user name and password: "
    "@ -> %40, : -> %3A, / -> %2F, ? -> %3F, # -> %23, % -> %25"
)
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """libpq's TLS settings from a PostgreSQL URL; ``engine.tls_argument`` applies them.

    The file settings are paths and are shown in ``display``; ``password`` (the client key's
    passphrase, ``sslpassword``) never is, nor in the repr.
    """

    mode: SslMode = "prefer"
    rootcert: str | None = None
    cert: str | None = None
    key: str | None = None
    password: str | None = field(default=None, repr=False)

    def query(self) -> str:
        """The settings as URL query parameters, the passphrase masked."""
        items = [f"sslmode={self.mode}"]
        for name, value in (("sslrootcert", self.rootcert), ("sslcert", self.cert)):
            if value is not None:
                items.append(f"{name}={quote(value, safe='/')}")
        if self.key is not None:
            items.append(f"sslkey={quote(self.key, safe='/')}")
        if self.password is not None:
            items.append("sslpassword=***")
        return "&".join(items)


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
    #: TLS settings for every node (PostgreSQL only); ``None``: the driver's defaults.
    tls: TlsSettings | None = None
    #: ``?pgbouncer=`` (PostgreSQL only): the pooler's mode, ``None`` when not given. It
    #: stays in ``sa_url`` so the URL renders whole; the engine takes it out before connecting.
    pgbouncer: str | None = None

    @property
    def display(self) -> str:
        """The URL with its password masked, safe for logs and error messages."""
        if self.kind == "memory":
            return "memory://"
        return ", ".join(self._show(node) for node in self.nodes or (self.sa_url,))

    def _show(self, node: URL) -> str:
        shown = node.render_as_string(hide_password=True)
        if self.tls is None:
            return shown
        return f"{shown}{'&' if '?' in shown else '?'}{self.tls.query()}"

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
    if any(other.pgbouncer != first.pgbouncer for other in parsed):
        raise InvalidInputError("the node URLs of one store must all have the same ?pgbouncer=")
    if any(other.tls != first.tls for other in parsed):
        raise InvalidInputError(
            "the node URLs of one store must all have the same TLS settings "
            f"({', '.join(TLS_PARAMETERS)})"
        )
    nodes = [node for url in parsed for node in url.nodes]
    return _cluster(first.kind, nodes, first.tls, first.pgbouncer)


def _cluster(
    kind: Kind, nodes: list[URL], tls: TlsSettings | None, pgbouncer: str | None = None
) -> DatabaseUrl:
    hosts = ",".join(_host_of(node) for node in nodes)
    return DatabaseUrl(kind, nodes[0], hosts, nodes[0].database, tuple(nodes), tls, pgbouncer)


def _host_of(sa_url: URL) -> str:
    host = sa_url.host or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{sa_url.port}" if sa_url.port else host


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
    return _parse_server(url, kind)


def _parse_server(url: str, kind: Kind) -> DatabaseUrl:
    """Split ``scheme://user:password@host:port,.../database?query`` into its nodes.

    The credentials end at the last ``@`` before the host, so an ``@`` in a password needs no
    encoding. A URL whose split is a guess is refused rather than guessed, because a wrong
    guess would show a piece of the password as a host name or port.
    """
    scheme, rest = url.split("://", 1)
    authority_end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:authority_end], rest[authority_end:]
    if "#" in rest:
        raise _ambiguous(kind, scheme, rest, "a '#' in it (a URL fragment, or a raw '#')")
    if "@" in tail:
        # Either a password holding '/' or '?' (which end the host part) or an '@' in the
        # database name or a query value: which one cannot be told apart safely.
        raise _ambiguous(kind, scheme, rest, "an '@' after the host part")
    userinfo, at, host_list = authority.rpartition("@")
    username = password = None
    if at:
        if userinfo.count(":") > 1:
            raise _ambiguous(kind, scheme, rest, "more than one ':' in the user name and password")
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    path, _, query = tail.partition("?")
    database = unquote(path[1:]) if path.startswith("/") else ""
    if not database:
        raise InvalidInputError(
            f"the {kind} URL names no database (…/dbname); "
            f"accepted forms: {accepted_forms((kind,))}"
        )
    params = _query(kind, query)
    pgbouncer = _pgbouncer_mode(kind, params)
    tls = _tls_settings(kind, params)
    if kind == "postgresql":
        driver = "postgresql+asyncpg"
    else:
        driver = "mysql+aiomysql"
        # utf8mb4 on the connection so 4-byte characters (emoji) round-trip exactly.
        params["charset"] = "utf8mb4"
    nodes = [
        URL.create(
            driver,
            username=username,
            password=password,
            host=host,
            port=port,
            database=database,
            query=params,
        )
        for host, port in _hosts(kind, host_list)
    ]
    if len(nodes) > 1:
        return _cluster(kind, nodes, tls, pgbouncer)
    return DatabaseUrl(kind, nodes[0], _host_of(nodes[0]), database, (nodes[0],), tls, pgbouncer)


def _hosts(kind: Kind, host_list: str) -> list[tuple[str | None, int | None]]:
    """``h1:5432,[::1]:5433,h3`` as (host, port) pairs; one pair, maybe empty, for one host."""
    entries = host_list.split(",")
    if len(entries) > 1 and any(not entry.strip() for entry in entries):
        raise InvalidInputError("an empty host in the node list of a URL")
    nodes: list[tuple[str | None, int | None]] = []
    for entry in (entry.strip() for entry in entries):
        if entry.startswith("["):
            host, bracket, after = entry[1:].partition("]")
            if not bracket or (after and not after.startswith(":")):
                raise InvalidInputError(f"malformed IPv6 host {entry!r} in a {kind} URL")
            port_text = after[1:]
        else:
            host, _, port_text = entry.partition(":")
        nodes.append((unquote(host) or None, _port(kind, host or "localhost", port_text)))
    return nodes


def _port(kind: Kind, host: str, text: str) -> int | None:
    if not text:
        return None
    if _PORT.fullmatch(text) is None or not 1 <= int(text) <= 65535:
        raise InvalidInputError(
            f"the port {text!r} of host {host!r} in the {kind} URL is not a number from 1 to 65535"
        )
    return int(text)


def _query(kind: Kind, query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        name, equals, value = item.partition("=")
        name = unquote(name)
        if not equals or not name:
            raise InvalidInputError(f"the query parameter {name!r} of the {kind} URL has no value")
        if name in params:
            raise InvalidInputError(f"the query parameter {name!r} is given twice in the URL")
        params[name] = unquote(value)
    return params


def _pgbouncer_mode(kind: Kind, params: dict[str, str]) -> str | None:
    """Check ``?pgbouncer=``; it is left in ``params`` (see ``DatabaseUrl.pgbouncer``)."""
    mode = params.get("pgbouncer")
    if mode is None:
        return None
    accepted = ", ".join(f"pgbouncer={value}" for value in PGBOUNCER_MODES)
    if kind != "postgresql":
        raise InvalidInputError(
            f"pgbouncer= applies to postgresql URLs only (accepted: {accepted})"
        )
    if mode not in PGBOUNCER_MODES:
        hint = (
            " (statement pooling cannot run the store's multi-statement transactions)"
            if mode == "statement"
            else ""
        )
        raise InvalidInputError(f"pgbouncer={mode!r} is not accepted{hint}; accepted: {accepted}")
    return mode


def _tls_settings(kind: Kind, params: dict[str, str]) -> TlsSettings | None:
    """Take libpq's TLS settings out of ``params`` (they are not driver keywords)."""
    if kind == "postgresql" and "sslmode" not in params and params.get("ssl") in SSL_MODES:
        params["sslmode"] = params.pop("ssl")  # asyncpg's own spelling, ?ssl=require
    found = {name: params.pop(name) for name in list(params) if name.lower().startswith("ssl")}
    if not found:
        return None
    accepted = (
        f"sslmode={'|'.join(SSL_MODES)}, sslrootcert=<CA file>, sslcert=<client certificate "
        "file>, sslkey=<client key file>, sslpassword=<client key passphrase>"
    )
    if kind != "postgresql":
        raise InvalidInputError(
            f"{kind} URLs take no TLS settings (got {', '.join(map(repr, found))}); "
            f"postgresql URLs accept {accepted}"
        )
    unknown = [name for name in found if name not in TLS_PARAMETERS]
    if unknown:
        raise InvalidInputError(
            f"unsupported TLS setting {', '.join(map(repr, unknown))} in the postgresql URL; "
            f"accepted: {accepted}"
        )
    mode = found.get("sslmode", "prefer")
    if mode not in SSL_MODES:
        raise InvalidInputError(
            f"sslmode={mode!r} is not one of {', '.join(SSL_MODES)} (libpq's values)"
        )
    tls = TlsSettings(
        mode,
        rootcert=found.get("sslrootcert") or None,
        cert=found.get("sslcert") or None,
        key=found.get("sslkey") or None,
        password=found.get("sslpassword") or None,
    )
    _check_tls(tls)
    return tls


def _check_tls(tls: TlsSettings) -> None:
    """Refuse settings that cannot take effect, instead of silently ignoring them."""
    if (tls.key is not None or tls.password is not None) and tls.cert is None:
        raise InvalidInputError("sslkey and sslpassword need sslcert (the client certificate)")
    if tls.password is not None and tls.key is None:
        raise InvalidInputError("sslpassword is the passphrase of sslkey, which is not given")
    if tls.cert is not None and tls.mode in ("disable", "allow", "prefer"):
        # asyncpg cannot both present a client certificate and fall back to plain text.
        raise InvalidInputError(
            f"a client certificate (sslcert) needs sslmode=require, verify-ca or verify-full, "
            f"not {tls.mode}"
        )


def _ambiguous(kind: Kind, scheme: str, rest: str, reason: str) -> InvalidInputError:
    """The refusal of a URL that cannot be split safely; it shows a masked, encoded form."""
    return InvalidInputError(
        f"the {kind} URL cannot be split unambiguously into user, password and host: it has "
        f"{reason}. Write it as {_masked_guess(scheme, rest)} (password masked) and "
        f"{_ENCODING_HINT}"
    )


def _masked_guess(scheme: str, rest: str) -> str:
    """``scheme://user:***@host/db`` from a refused URL, for its message.

    The credentials are taken to end at the last ``@`` of all, and everything in them after
    the first ``:`` is masked: a wrong guess then masks too much, never too little.
    """
    cut = rest.rfind("@")
    if cut < 0:
        return f"{scheme}://user:***@host/db"
    user, colon, _ = rest[:cut].partition(":")
    tail = re.sub(r"(?i)(sslpassword=)[^&]*", r"\1***", rest[cut + 1 :])
    credentials = quote(unquote(user), safe="") + (":***" if colon else "")
    return f"{scheme}://{credentials}@{tail}"


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
        raise InvalidInputError(
            "sqlite URLs take no query parameters (TLS settings such as sslmode apply to "
            "postgresql URLs only)"
        )
    sa_url = URL.create("sqlite+aiosqlite", database=str(path))
    return DatabaseUrl("sqlite", sa_url, str(path), path.name, (sa_url,))


def _memory() -> DatabaseUrl:
    sa_url = make_url("sqlite+aiosqlite://")
    return DatabaseUrl("memory", sa_url, None, ":memory:", (sa_url,))
