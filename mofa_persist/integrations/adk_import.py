"""Moving from ADK's ``DatabaseSessionService``: ``mofa-persist import-from adk SOURCE``.

Reads a database that ADK's ``DatabaseSessionService`` wrote in its current schema (``"1"``,
the ``adk_internal_metadata``, ``sessions``, ``events``, ``app_states`` and ``user_states``
tables), with ADK's own table models, so every event is decoded exactly as ADK decodes it. Each
session is stored as :class:`~mofa_persist.integrations.adk.MofaSessionService` would have
stored it: afterwards ``get_session``, ``list_sessions`` and ``get_user_state`` of the service
answer what ADK's answered. The source is only read.

Per session, what the store already holds decides (so a rerun is safe and incremental):

- nothing yet: the session, its state and all its events are written in one transaction;
- a prefix of the source's events (an interrupted run, or the source grew since): the rest is
  appended and the state and update time set from the source, in one transaction
  ("completed");
- the source's events, in full: nothing is written ("unchanged");
- anything else (the histories differ): nothing is written, it is reported ("conflicts").

App and user state are set key by key from the source (a rerun writes the same values). A
session this library cannot store (NUL characters, names over 128 characters, ...) is reported
("failed") and the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, inspect, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from ..errors import BackendError, ConflictError, InvalidInputError, PersistenceError
from ..ids import uuid7
from ..translate import DRIVER_ERRORS
from .adk import (
    MofaSessionService,
    _at,
    _content_of,
    _name,
    _role_of,
    a_t,
    m_t,
    s_t,
)

try:
    from google.adk.sessions._session_util import extract_json_safe_state_delta
    from google.adk.sessions.schemas.v1 import (
        StorageAppState,
        StorageEvent,
        StorageSession,
        StorageUserState,
    )
except ImportError as error:  # pragma: no cover - adk.py raises first
    raise ImportError(
        "mofa_persist.integrations.adk_import needs Google ADK: pip install 'mofa-persist[adk]'",
        name=error.name,
    ) from error

if TYPE_CHECKING:
    from collections.abc import Callable

    from google.adk.events.event import Event
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ..store import Store

__all__ = ["ImportReport", "import_from", "import_sessions"]

_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mysql": "aiomysql"}
_BACKENDS = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}
_BACKENDS |= {"mysql": "mysql", "mariadb": "mysql"}
_READ_ERRORS: tuple[type[BaseException], ...] = (*DRIVER_ERRORS, OSError, TimeoutError)
SOURCE_FORMS = (
    "a SQLite file path, or the db_url given to DatabaseSessionService: "
    "sqlite+aiosqlite:///path.db, postgresql+asyncpg://user@host/db, mysql+aiomysql://user@host/db"
)
#: Events written per statement.
_BATCH = 500


@dataclass
class ImportReport:
    """What one import did; :meth:`counts` is what the CLI prints."""

    sessions: int = 0  # source sessions
    imported: int = 0  # written whole this run
    completed: int = 0  # partly present before; the rest written this run
    unchanged: int = 0  # already present
    conflicts: int = 0  # the store's history differs: not touched
    failed: int = 0  # the library cannot store it: not touched
    events: int = 0  # events written this run
    app_states: int = 0  # app states set from the source
    user_states: int = 0  # user states set from the source
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {name: value for name, value in vars(self).items() if isinstance(value, int)}


def parse_source(source_url: str) -> tuple[URL, str]:
    """The source's async URL and its display form (password masked)."""
    raw = source_url.strip()
    if not raw:
        raise InvalidInputError(f"the source is empty; give {SOURCE_FORMS}")
    if "://" not in raw:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"no SQLite file at {raw}")
        return URL.create("sqlite+aiosqlite", database=str(path)), str(path)
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise InvalidInputError(f"the source is not a database URL; give {SOURCE_FORMS}") from None
    backend = _BACKENDS.get(url.get_backend_name())
    if backend is None:
        raise InvalidInputError(
            f"the source's scheme {url.drivername!r} is not supported; give {SOURCE_FORMS}"
        )
    url = url.set(drivername=f"{backend}+{_DRIVERS[backend]}")
    display = url.render_as_string(hide_password=True)
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise InvalidInputError(f"no SQLite file at {database or display}")
    return url, display


class _Reader:
    """The source database through ADK's own table models, with translated errors."""

    def __init__(self, url: URL, display: str) -> None:
        self.url = url
        self.display = display
        self.engine: AsyncEngine = create_async_engine(url)

    def _failed(self, action: str, error: BaseException) -> BackendError:
        cause = getattr(error, "orig", None) or error
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        if self.url.password:
            first = first.replace(str(self.url.password), "***")
        detail = f"{type(cause).__name__}: {first}"[:300] if first else type(cause).__name__
        return BackendError(
            f"could not {action} {self.display}: {detail}",
            host=self.url.host,
            database=self.url.database,
        )

    async def check_schema(self) -> None:
        def look(sync: Any) -> str | None:
            inspector = inspect(sync)
            if not inspector.has_table("sessions") or not inspector.has_table("events"):
                return None
            if not inspector.has_table("adk_internal_metadata"):
                return "0"
            key = sync.dialect.identifier_preparer.quote("key")
            stmt = text(f"SELECT value FROM adk_internal_metadata WHERE {key} = 'schema_version'")
            found = sync.execute(stmt).scalar()
            return None if found is None else str(found)

        try:
            async with self.engine.connect() as conn:
                version = await conn.run_sync(look)
        except _READ_ERRORS as error:
            raise self._failed("read", error) from error
        if version is None:
            raise InvalidInputError(
                f"{self.display} has no ADK session tables: is it a database of ADK's "
                "DatabaseSessionService?"
            )
        if version != "1":
            raise InvalidInputError(
                f"{self.display} has ADK's schema {version!r}; this importer reads schema '1': "
                "migrate it first with ADK's own migration tool (adk migrate session)"
            )

    async def read(self, action: str, work: Callable[[AsyncSession], Any]) -> Any:
        try:
            async with AsyncSession(self.engine, expire_on_commit=False) as orm:
                return await work(orm)
        except PersistenceError:
            raise
        except _READ_ERRORS as error:
            raise self._failed(action, error) from error


async def _all(orm: AsyncSession, stmt: Any) -> list[Any]:
    return list((await orm.execute(stmt)).scalars().all())


def _message(sid: Any, seq: int, event: Event, service: MofaSessionService) -> dict[str, Any]:
    document = service._encode(
        "event", {"adk_event": event.model_dump(mode="json", exclude_none=True)}
    )
    return {
        "id": uuid7(),
        "session_id": sid,
        "seq": seq,
        "role": _role_of(event),
        "content": _content_of(event),
        "metadata": document,
        "created_at": _at(event.timestamp),
    }


async def _import_session(
    service: MofaSessionService, row: Any, events: list[Event], report: ImportReport
) -> None:
    """One source session into the store (see the module doc for what decides)."""
    store = service.store
    app = _name("app name", row.app_name)
    user = _name("user id", row.user_id)
    ident = _name("session id", row.id)
    state = extract_json_safe_state_delta(dict(row.state or {}))["session"]
    encoded_state = service._encode("state", state)
    update_time = row.get_update_timestamp()
    ids = [event.id for event in events]

    async def present(conn: AsyncConnection) -> tuple[Any, list[str | None]] | None:
        stored = await service._find(conn, app, user, ident)
        if stored is None:
            return None
        rows = await conn.execute(
            select(m_t.c.metadata).where(m_t.c.session_id == stored.sid).order_by(m_t.c.seq)
        )
        have = []
        for (metadata,) in rows:
            event = metadata.get("adk_event") if isinstance(metadata, dict) else None
            have.append(event.get("id") if isinstance(event, dict) else None)
        return stored, have

    found = await store._run(present, write=False, action="read an ADK session")
    if found is not None:
        stored, have = found
        if have == ids:
            report.unchanged += 1
            return
        if have != ids[: len(have)]:
            report.conflicts += 1
            report.problems.append(
                f"session {ident[:80]!r} of {user[:40]!r} in {app[:40]!r}: the store holds "
                f"{len(have)} other events for it; left as it is"
            )
            return
        rest = events[len(have) :]
        messages = [
            _message(stored.sid, len(have) + offset, event, service)
            for offset, event in enumerate(rest, 1)
        ]

        async def complete(conn: AsyncConnection) -> None:
            bump = (
                update(s_t)
                .where(s_t.c.id == stored.sid, s_t.c.last_seq == len(have))
                .values(last_seq=len(ids), updated_at=datetime.now(UTC))
            )
            if (await conn.execute(bump)).rowcount != 1:
                raise ConflictError(f"session {ident[:80]!r} changed while it was imported")
            for start in range(0, len(messages), _BATCH):
                await conn.execute(insert(m_t), messages[start : start + _BATCH])
            await conn.execute(
                update(a_t)
                .where(a_t.c.session_id == stored.sid)
                .values(state=encoded_state, update_time=update_time)
            )

        await store._run(complete, write=True, action="import an ADK session")
        report.completed += 1
        report.events += len(rest)
        return

    sid = uuid7()
    now = datetime.now(UTC)
    messages = [_message(sid, seq, event, service) for seq, event in enumerate(events, 1)]
    created_at = (
        row.create_time.replace(tzinfo=UTC) if row.create_time.tzinfo is None else row.create_time
    )

    async def create(conn: AsyncConnection) -> None:
        await service._insert_session_rows(
            conn,
            sid,
            app,
            user,
            ident,
            encoded_state,
            update_time,
            created_at=created_at,
            now=now,
            last_seq=len(messages),
        )
        for start in range(0, len(messages), _BATCH):
            await conn.execute(insert(m_t), messages[start : start + _BATCH])

    await store._run(create, write=True, action="import an ADK session")
    report.imported += 1
    report.events += len(messages)


async def import_sessions(
    source_url: str,
    store: Store,
    progress: Callable[[int, int | None], None] | None = None,
) -> ImportReport:
    """Import every session, app state and user state of the ADK database at ``source_url``
    into ``store`` (its view); ``progress(done, total)`` is called after each session."""
    url, display = parse_source(source_url)
    reader = _Reader(url, display)
    service = MofaSessionService(store)
    report = ImportReport()
    try:
        await reader.check_schema()
        keys = await reader.read(
            "read the sessions of",
            lambda orm: orm.execute(
                select(StorageSession.app_name, StorageSession.user_id, StorageSession.id).order_by(
                    StorageSession.update_time,
                    StorageSession.app_name,
                    StorageSession.user_id,
                    StorageSession.id,
                )
            ),
        )
        keys = list(keys)
        total = len(keys)
        report.sessions = total
        if progress is not None:
            progress(0, total)
        for app_row in await reader.read(
            "read the app states of", lambda orm: _all(orm, select(StorageAppState))
        ):
            if await _set_state(service, report, app_row.app_name, None, app_row.state):
                report.app_states += 1
        for user_row in await reader.read(
            "read the user states of", lambda orm: _all(orm, select(StorageUserState))
        ):
            if await _set_state(
                service, report, user_row.app_name, user_row.user_id, user_row.state
            ):
                report.user_states += 1
        for done, (app_name, user_id, session_id) in enumerate(keys, 1):

            async def one(
                orm: AsyncSession, key: tuple[str, str, str] = (app_name, user_id, session_id)
            ) -> tuple[Any, list[Event]]:
                row = await orm.get(StorageSession, key)
                stmt = (
                    select(StorageEvent)
                    .where(
                        StorageEvent.app_name == key[0],
                        StorageEvent.user_id == key[1],
                        StorageEvent.session_id == key[2],
                    )
                    .order_by(StorageEvent.timestamp, StorageEvent.id)
                )
                return row, [stored.to_event() for stored in await _all(orm, stmt)]

            row, events = await reader.read("read a session of", one)
            if row is not None:
                try:
                    await _import_session(service, row, events, report)
                except (InvalidInputError, ConflictError) as error:
                    report.failed += 1
                    report.problems.append(
                        f"session {str(session_id)[:80]!r} of {str(user_id)[:40]!r} in "
                        f"{str(app_name)[:40]!r} not imported: {error}"
                    )
            if progress is not None:
                progress(done, total)
    finally:
        await reader.engine.dispose()
    return report


async def _set_state(
    service: MofaSessionService,
    report: ImportReport,
    app_name: str,
    user_id: str | None,
    state: Any,
) -> bool:
    """Set an app (``user_id`` None) or user state's keys from the source."""
    values = dict(state or {})
    if not values:
        return False
    try:
        app = _name("app name", app_name)
        user = None if user_id is None else _name("user id", user_id)
        service._encode("state", values)
    except InvalidInputError as error:
        report.failed += 1
        report.problems.append(f"state of {app_name[:40]!r} not imported: {error}")
        return False
    now = datetime.now(UTC)

    async def work(conn: AsyncConnection) -> None:
        await service._merge_state(conn, app, user, values, now)

    await service.store._run(work, write=True, action="import ADK state")
    return True


async def import_from(
    source_url: str,
    store: Store,
    progress: Callable[[int, int | None], None],
    *,
    on_problem: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """The CLI's entry point (``import-from adk``): :func:`import_sessions`, with each problem
    passed to ``on_problem``; returns the counts."""
    report = await import_sessions(source_url, store, progress)
    if on_problem is not None:
        for problem in report.problems:
            on_problem(problem)
    return report.counts()
