"""Moving from the OpenAI Agents SDK's own session stores: ``mofa-persist import-from
openai-agents SOURCE``.

Reads what the SDK's ``SQLAlchemySession`` (a SQLAlchemy URL: ``sqlite+aiosqlite``,
``postgresql+asyncpg``, ``mysql+aiomysql``) or ``SQLiteSession`` (a plain file path) wrote, and
stores every session as :class:`~mofa_persist.integrations.openai_agents.MofaSession` would
have: the same ``openai-agents`` external-key namespace and the same item encoding, so
``MofaSession(session_id, store).get_items()`` returns what the SDK's ``get_items()`` returned,
in the same order. Rows the SDK itself skips (not JSON) are skipped and counted.

Per session, the history already in the store decides (so a rerun is safe and incremental):

- none yet: every item is appended in one transaction (all or nothing);
- a prefix of the source's items (an interrupted run, or the SDK store grew since): the rest
  is appended, in one transaction ("completed");
- the source's items are a prefix of it (imported before, maybe continued since): nothing is
  written ("unchanged");
- anything else (the two histories differ): nothing is written, it is reported ("conflicts").

Each append carries an idempotency key naming where it starts and what it holds, so two
imports racing on one session store it once. A session whose items this library cannot store
(see :class:`MofaSession`) is reported ("failed") and the others go on. Sessions with no items
are not created ("empty").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    TIMESTAMP,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import create_async_engine

from ..errors import BackendError, ConflictError, InvalidInputError, PersistenceError
from ..translate import DRIVER_ERRORS
from .openai_agents import MofaSession, _check_rows, _to_message

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ..store import Store

__all__ = ["DEFAULT_MESSAGES_TABLE", "DEFAULT_SESSIONS_TABLE", "ImportReport", "import_from"]

#: The SDK's default table names (``SQLAlchemySession`` and ``SQLiteSession`` alike).
DEFAULT_SESSIONS_TABLE = "agent_sessions"
DEFAULT_MESSAGES_TABLE = "agent_messages"

#: The async driver the SDK's SQLAlchemySession needs, per database.
_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mysql": "aiomysql"}
_BACKENDS = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}
_BACKENDS |= {"mysql": "mysql", "mariadb": "mysql"}
#: What reading the source may raise from below: driver and SQLAlchemy errors, sockets.
_READ_ERRORS: tuple[type[BaseException], ...] = (*DRIVER_ERRORS, OSError, TimeoutError)
SOURCE_FORMS = (
    "a SQLiteSession file path, or sqlite+aiosqlite:///path.db, "
    "postgresql+asyncpg://user@host/db, mysql+aiomysql://user@host/db"
)


@dataclass
class ImportReport:
    """What one import did, per session; :meth:`counts` is what the CLI prints."""

    sessions: int = 0  # source sessions holding at least one item
    imported: int = 0  # written whole this run
    completed: int = 0  # partly present before; the rest written this run
    unchanged: int = 0  # already present
    conflicts: int = 0  # the store's history differs: not touched
    failed: int = 0  # items this library cannot store: not touched
    items: int = 0  # items written this run
    skipped: int = 0  # source rows that are not JSON (the SDK skips them too)
    empty: int = 0  # source sessions without items (not created)
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {name: value for name, value in vars(self).items() if isinstance(value, int)}


@dataclass(frozen=True)
class _Source:
    url: URL
    display: str
    by_id: bool  # SQLiteSession orders by id; SQLAlchemySession by (created_at, id)


def parse_source(source_url: str) -> _Source:
    """The source database: a plain path is a ``SQLiteSession`` file, anything with ``://``
    the URL of a ``SQLAlchemySession``; plain schemes get the SDK's async driver."""
    text = source_url.strip()
    if not text:
        raise InvalidInputError(f"the source is empty; give {SOURCE_FORMS}")
    if "://" not in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"no SQLite file at {text}")
        return _Source(URL.create("sqlite+aiosqlite", database=str(path)), str(path), True)
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a malformed port or host
        raise InvalidInputError(f"the source is not a database URL; give {SOURCE_FORMS}") from None
    backend = _BACKENDS.get(url.get_backend_name())
    if backend is None:
        raise InvalidInputError(
            f"the source's scheme {url.drivername!r} is not one the SDK's SQLAlchemySession "
            f"is read from here; give {SOURCE_FORMS}"
        )
    driver = _DRIVERS[backend]
    if "+" in url.drivername and url.get_driver_name() != driver:
        raise InvalidInputError(
            f"the source's driver {url.get_driver_name()!r} is not supported; use "
            f"{backend}+{driver}://"
        )
    url = url.set(drivername=f"{backend}+{driver}")
    display = url.render_as_string(hide_password=True)
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            raise InvalidInputError(f"the source {display} is an in-memory database")
        if not Path(database).is_file():
            raise InvalidInputError(f"no SQLite file at {database}")
    return _Source(url, display, False)


def _tables(sessions_table: str, messages_table: str) -> tuple[Table, Table]:
    """The SDK's two tables, as far as they are read (names quoted by SQLAlchemy)."""
    for option, name in (
        ("--sessions-table", sessions_table),
        ("--messages-table", messages_table),
    ):
        if not name or not name.isprintable() or len(name) > 64:
            raise InvalidInputError(f"{option} must be a table name (1 to 64 printable characters)")
    meta = MetaData()
    sessions = Table(sessions_table, meta, Column("session_id", String))
    messages = Table(
        messages_table,
        meta,
        Column("id", Integer),
        Column("session_id", String),
        Column("message_data", Text),
        Column("created_at", TIMESTAMP),
    )
    return sessions, messages


def _decode(rows: list[Any]) -> tuple[list[Any], int]:
    """The items the SDK's ``get_items`` returns for these rows, and how many it skips."""
    items: list[Any] = []
    skipped = 0
    for (data,) in rows:
        try:
            items.append(json.loads(data))
        except (ValueError, TypeError):  # JSONDecodeError, bad UTF-8 bytes, NULL
            skipped += 1
    return items, skipped


def _key(start: int, rows: list[dict[str, Any]]) -> str:
    """The idempotency key of one append: where it starts and a digest of what it holds."""
    text = json.dumps([start, rows], sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return f"openai-agents-import:{start}:{hashlib.sha256(text.encode()).hexdigest()}"


class _Reader:
    """The source database, read with translated errors (the URL's password never shown)."""

    def __init__(self, source: _Source, sessions: Table, messages: Table) -> None:
        self.source = source
        self.sessions = sessions
        self.messages = messages
        self.engine: AsyncEngine = create_async_engine(source.url, pool_pre_ping=False)

    def _failed(self, action: str, error: BaseException) -> BackendError:
        cause = getattr(error, "orig", None) or error
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        password = self.source.url.password
        if password:
            text = text.replace(str(password), "***")
        detail = f"{type(cause).__name__}: {text}"[:300] if text else type(cause).__name__
        return BackendError(
            f"could not {action} {self.source.display}: {detail}",
            host=self.source.url.host,
            database=self.source.url.database,
        )

    async def _run(self, action: str, work: Callable[[AsyncConnection], Any]) -> Any:
        try:
            async with self.engine.connect() as conn:
                return await work(conn)
        except PersistenceError:
            raise
        except _READ_ERRORS as error:
            raise self._failed(action, error) from error

    async def session_ids(self) -> tuple[list[str], int]:
        """Source sessions holding rows, oldest first, and the count of those holding none."""
        messages, sessions = self.messages, self.sessions

        async def work(conn: AsyncConnection) -> tuple[list[str], int]:
            present = await conn.run_sync(
                lambda sync: [inspect(sync).has_table(t.name) for t in (messages, sessions)]
            )
            if not present[0]:
                raise InvalidInputError(
                    f"{self.source.display} has no table {messages.name!r}: is it a database "
                    "of the OpenAI Agents SDK? (--messages-table names another table)"
                )
            first = func.min(messages.c.id)
            stmt = select(messages.c.session_id).group_by(messages.c.session_id).order_by(first)
            ids = [str(row[0]) for row in await conn.execute(stmt)]
            empty = 0
            if present[1]:
                held = select(messages.c.id).where(messages.c.session_id == sessions.c.session_id)
                count = select(func.count()).select_from(sessions).where(~held.exists())
                empty = int((await conn.execute(count)).scalar_one())
            return ids, empty

        result: tuple[list[str], int] = await self._run("read the sessions of", work)
        return result

    async def rows(self, session_id: str) -> list[Any]:
        """One session's ``message_data`` in the order the SDK returns it."""
        m = self.messages
        order = (m.c.id,) if self.source.by_id else (m.c.created_at, m.c.id)
        stmt = select(m.c.message_data).where(m.c.session_id == session_id).order_by(*order)

        async def work(conn: AsyncConnection) -> list[Any]:
            return list((await conn.execute(stmt)).all())

        result: list[Any] = await self._run("read the items of", work)
        return result


async def _import_session(
    store: Store, external_id: str, items: list[Any], report: ImportReport
) -> None:
    try:
        rows = [_to_message(index, item) for index, item in enumerate(items)]
        _check_rows(rows)
        session = MofaSession(external_id, store)
        present: list[Any] = []
        if await session.library_session_id() is not None:
            present = list(await session.get_items())
        if items == present[: len(items)]:
            report.unchanged += 1
            return
        if present != items[: len(present)]:
            report.conflicts += 1
            report.problems.append(
                f"session {external_id[:80]!r}: the store holds {len(present)} other items "
                "for it; left as it is"
            )
            return
        sid = await session.library_session_id(create=True)
        assert sid is not None
        rest = rows[len(present) :]
        await store.append_messages(sid, rest, idempotency_key=_key(len(present), rest))
    except (InvalidInputError, ConflictError) as error:
        report.failed += 1
        report.problems.append(f"session {external_id[:80]!r} not imported: {error}")
        return
    report.items += len(rest)
    if present:
        report.completed += 1
    else:
        report.imported += 1


async def import_sessions(
    source_url: str,
    store: Store,
    progress: Callable[[int, int | None], None] | None = None,
    *,
    sessions_table: str = DEFAULT_SESSIONS_TABLE,
    messages_table: str = DEFAULT_MESSAGES_TABLE,
) -> ImportReport:
    """Import every session of the SDK database at ``source_url`` into ``store`` (its view);
    ``progress(done, total)`` is called after each session."""
    source = parse_source(source_url)
    sessions, messages = _tables(sessions_table, messages_table)
    reader = _Reader(source, sessions, messages)
    report = ImportReport()
    try:
        ids, report.empty = await reader.session_ids()
        total = len(ids)
        if progress is not None:
            progress(0, total)
        for done, external_id in enumerate(ids, 1):
            items, skipped = _decode(await reader.rows(external_id))
            report.skipped += skipped
            if items:
                report.sessions += 1
                await _import_session(store, external_id, items, report)
            else:
                report.empty += 1
            if progress is not None:
                progress(done, total)
    finally:
        await reader.engine.dispose()
    return report


async def import_from(
    source_url: str,
    store: Store,
    progress: Callable[[int, int | None], None],
    *,
    sessions_table: str = DEFAULT_SESSIONS_TABLE,
    messages_table: str = DEFAULT_MESSAGES_TABLE,
    on_problem: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """The CLI's entry point (``import-from openai-agents``): :func:`import_sessions`, with
    each conflict or failure passed to ``on_problem`` and the counts returned."""
    report = await import_sessions(
        source_url,
        store,
        progress,
        sessions_table=sessions_table,
        messages_table=messages_table,
    )
    if on_problem is not None:
        for problem in report.problems:
            on_problem(problem)
    return report.counts()
