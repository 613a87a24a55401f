"""``import-from openai-agents``: databases written by the OpenAI Agents SDK itself, imported
into every backend.

Sources: a ``SQLiteSession`` file, and ``SQLAlchemySession`` on SQLite, PostgreSQL and MySQL.
On MySQL the SDK cannot create its tables (``session_id`` is a ``String`` without a length):
a test asserts exactly that, and the MySQL source gets the SDK's tables created here with
``VARCHAR(255)``, then the SDK writes into them. What each import must give back is what the
SDK's own ``get_items()`` returns from the source.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("agents")

from agents import SQLiteSession
from agents.extensions.memory import SQLAlchemySession
from rootconf import admin, create_database, drop_database, selected_backends
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from test_openai_agents import VARIED_ITEMS, url_for
from typer.testing import CliRunner

import mofa_persist
from mofa_persist import InvalidInputError
from mofa_persist.cli import app
from mofa_persist.errors import BackendError
from mofa_persist.integrations.openai_agents import NAMESPACE, MofaSession
from mofa_persist.integrations.openai_agents_import import import_from, import_sessions

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from typer.testing import Result

BACKENDS = selected_backends()
SQL_BACKENDS = [name for name in BACKENDS if name != "memory"]
SERVER_SOURCES = [f"sqlalchemy-{name}" for name in BACKENDS if name in ("postgresql", "mysql")]
SOURCES = ["sqlite-session", "sqlalchemy-sqlite", *SERVER_SOURCES]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: The sessions every source holds, as the SDK was given them (one list per add_items call).
WRITES: dict[str, list[list[dict[str, Any]]]] = {
    "chat/1 Grüße 👋 with spaces ": [VARIED_ITEMS[:4], VARIED_ITEMS[4:]],
    "Case": [[{"role": "user", "content": "upper"}]],
    "case": [[{"role": "user", "content": "lower"}], [{"role": "assistant", "content": "ok"}]],
    "x" * 255: [[{"role": "user", "content": str(index)} for index in range(30)]],
}
#: A row the SDK cannot decode (and skips), and a session row without messages.
CORRUPT_IN = "case"
EMPTY_SESSION = "lonely"

#: The SDK's tables as its SQLAlchemySession would make them, with the one length MySQL needs.
MYSQL_TABLES = [
    "CREATE TABLE agent_sessions (session_id VARCHAR(255) PRIMARY KEY, "
    "created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "
    "updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    "CREATE TABLE agent_messages (id INTEGER PRIMARY KEY AUTO_INCREMENT, "
    "session_id VARCHAR(255) NOT NULL, message_data TEXT NOT NULL, "
    "created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "
    "INDEX idx_agent_messages_session_time (session_id, created_at), "
    "FOREIGN KEY (session_id) REFERENCES agent_sessions (session_id) ON DELETE CASCADE)",
]


def sdk_url(mofa_url: str) -> str:
    """A server database of the test run, as the SDK's SQLAlchemySession wants its URL."""
    url = make_url(mofa_url)
    driver = "postgresql+asyncpg" if url.get_backend_name().startswith("postgres") else None
    return url.set(drivername=driver or "mysql+aiomysql").render_as_string(hide_password=False)


async def write_sqlalchemy(url: str, *, create_tables: bool = True) -> dict[str, list[Any]]:
    """Write :data:`WRITES` through the SDK's SQLAlchemySession; what the SDK reads back."""
    engine = create_async_engine(url)
    try:
        sessions = {
            sid: SQLAlchemySession(sid, engine=engine, create_tables=create_tables)
            for sid in WRITES
        }
        for sid, calls in WRITES.items():
            for items in calls:
                await sessions[sid].add_items(items)
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO agent_messages (session_id, message_data) VALUES (:s, :d)"),
                {"s": CORRUPT_IN, "d": "not json {"},
            )
            await conn.execute(
                text("INSERT INTO agent_sessions (session_id) VALUES (:s)"), {"s": EMPTY_SESSION}
            )
        return {sid: await session.get_items() for sid, session in sessions.items()}
    finally:
        await engine.dispose()


async def write_sqlite_session(path: Path) -> dict[str, list[Any]]:
    """Write :data:`WRITES` through the SDK's SQLiteSession into a file."""
    sessions = {sid: SQLiteSession(sid, path) for sid in WRITES}
    try:
        for sid, calls in WRITES.items():
            for items in calls:
                await sessions[sid].add_items(items)
        with sqlite3.connect(path) as conn:
            conn.execute(
                "INSERT INTO agent_messages (session_id, message_data) VALUES (?, ?)",
                (CORRUPT_IN, "not json {"),
            )
            conn.execute("INSERT INTO agent_sessions (session_id) VALUES (?)", (EMPTY_SESSION,))
        return {sid: await session.get_items() for sid, session in sessions.items()}
    finally:
        for session in sessions.values():
            session.close()


@pytest.fixture(scope="module")
def source_databases() -> Iterator[dict[str, str]]:
    """Server databases holding SDK tables, dropped when the module ends."""
    created: dict[str, str] = {}
    yield created
    for backend, url in created.items():
        drop_database(backend, url)


@pytest.fixture(scope="module")
def written() -> dict[str, tuple[str, dict[str, list[Any]]]]:
    """Per source kind: its URL (as given to import-from) and what the SDK reads from it."""
    return {}


@pytest.fixture
def source(
    request: pytest.FixtureRequest,
    written: dict[str, tuple[str, dict[str, list[Any]]]],
    source_databases: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, dict[str, list[Any]]]:
    """The source the test is parametrized with, written by the SDK once per module."""
    kind: str = request.param
    if kind not in written:
        if kind == "sqlite-session":
            path = tmp_path_factory.mktemp("sdk") / "sessions.db"
            written[kind] = (str(path), asyncio.run(write_sqlite_session(path)))
        elif kind == "sqlalchemy-sqlite":
            path = tmp_path_factory.mktemp("sdk") / "sqlalchemy.db"
            url = f"sqlite+aiosqlite:///{path}"
            written[kind] = (url, asyncio.run(write_sqlalchemy(url)))
        else:
            backend = kind.removeprefix("sqlalchemy-")
            source_databases[backend] = create_database(backend)
            url = sdk_url(source_databases[backend])
            if backend == "mysql":
                asyncio.run(admin(source_databases[backend], MYSQL_TABLES))
                written[kind] = (url, asyncio.run(write_sqlalchemy(url, create_tables=False)))
            else:
                written[kind] = (url, asyncio.run(write_sqlalchemy(url)))
    return written[kind]


@pytest.fixture
def dest_url(
    request: pytest.FixtureRequest,
    server_databases: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    backend: str = request.param
    return url_for(backend, server_databases, tmp_path_factory)


async def items_of(store: mofa_persist.Store, sids: list[str]) -> dict[str, list[Any]]:
    return {sid: await MofaSession(sid, store).get_items() for sid in sids}


# ---------------------------------------------------------------- every source, every backend


@pytest.mark.parametrize("dest_url", BACKENDS, indirect=True)
@pytest.mark.parametrize("source", SOURCES, indirect=True)
async def test_import_gives_back_what_the_sdk_reads(
    source: tuple[str, dict[str, list[Any]]], dest_url: str
) -> None:
    url, expected = source
    assert expected["case"] == [
        {"role": "user", "content": "lower"},
        {"role": "assistant", "content": "ok"},
    ]  # the SDK skipped the corrupt row and kept "Case" apart
    seen: list[tuple[int, int | None]] = []
    async with await mofa_persist.connect(dest_url) as root:
        store = root.scoped(tenant_id=uuid.uuid4())
        counts = await import_from(url, store, lambda done, total: seen.append((done, total)))
        assert counts == {
            "sessions": 4,
            "imported": 4,
            "completed": 0,
            "unchanged": 0,
            "conflicts": 0,
            "failed": 0,
            "items": sum(len(items) for items in expected.values()),
            "skipped": 1,
            "empty": 1,
        }
        assert seen == [(done, 4) for done in range(5)]
        assert await items_of(store, list(expected)) == expected
        assert await MofaSession(EMPTY_SESSION, store).library_session_id() is None

        # A second run writes nothing and duplicates nothing.
        again = await import_from(url, store, lambda done, total: None)
        assert again["unchanged"] == 4
        assert again["items"] == again["imported"] == again["completed"] == 0
        assert await items_of(store, list(expected)) == expected
        sessions = (await store.list_sessions()).items
        assert len(sessions) == 4
        assert sorted([await store.external_id_of(s.id) for s in sessions]) == sorted(
            (NAMESPACE, sid) for sid in expected
        )


# ---------------------------------------------------------------- what the SDK cannot do


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name == "mysql"])
def test_sdk_cannot_create_its_tables_on_mysql(backend: str) -> None:
    """Why the MySQL source's tables are created by this module, not by the SDK."""
    database = create_database(backend)

    async def attempt() -> None:
        session = SQLAlchemySession.from_url("s", url=sdk_url(database), create_tables=True)
        try:
            await session.add_items([{"role": "user", "content": "hi"}])
        finally:
            await session.engine.dispose()

    try:
        with pytest.raises(sa_exc.CompileError, match="VARCHAR requires a length"):
            asyncio.run(attempt())
    finally:
        drop_database(backend, database)


# ---------------------------------------------------------------- idempotency in detail


async def sqlite_source(path: Path, writes: dict[str, list[dict[str, Any]]]) -> None:
    for sid, items in writes.items():
        session = SQLiteSession(sid, path)
        try:
            await session.add_items(items)
        finally:
            session.close()


@pytest.mark.parametrize("dest_url", BACKENDS, indirect=True)
async def test_growth_is_completed_and_a_differing_history_is_left_alone(
    dest_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "sdk.db"
    first = [{"role": "user", "content": f"m{index}"} for index in range(3)]
    await sqlite_source(path, {"grows": first, "edited": first, "continued": first})
    async with await mofa_persist.connect(dest_url) as root:
        store = root.scoped(tenant_id=uuid.uuid4())
        assert (await import_sessions(str(path), store)).imported == 3

        more = [{"role": "assistant", "content": "later"}]
        await sqlite_source(path, {"grows": more})  # the SDK store went on being used
        await MofaSession("edited", store).pop_item()  # the imported copy was changed
        await MofaSession("edited", store).add_items([{"role": "user", "content": "other"}])
        await MofaSession("continued", store).add_items(more)  # ... or continued

        report = await import_sessions(str(path), store)
        assert (report.completed, report.unchanged, report.conflicts) == (1, 1, 1)
        assert report.items == 1
        assert report.problems == [
            "session 'edited': the store holds 3 other items for it; left as it is"
        ]
        assert await MofaSession("grows", store).get_items() == first + more
        assert await MofaSession("edited", store).get_items() == [
            *first[:2],
            {"role": "user", "content": "other"},
        ]
        assert await MofaSession("continued", store).get_items() == first + more


@pytest.mark.parametrize("dest_url", BACKENDS, indirect=True)
async def test_an_unstorable_session_is_reported_and_the_others_imported(
    dest_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "sdk.db"
    # The SDK writes NaN (json.dumps allows it); this library refuses it.
    await sqlite_source(
        path,
        {"fine": [{"role": "user", "content": "a"}], "nan": [{"type": "x", "v": float("nan")}]},
    )
    async with await mofa_persist.connect(dest_url) as root:
        store = root.scoped(tenant_id=uuid.uuid4())
        report = await import_sessions(str(path), store)
        assert (report.imported, report.failed, report.items) == (1, 1, 1)
        assert report.problems[0].startswith("session 'nan' not imported: ")
        assert await MofaSession("nan", store).library_session_id() is None
        assert await MofaSession("fine", store).get_items() == [{"role": "user", "content": "a"}]


async def test_racing_imports_store_each_session_once(tmp_path: Path) -> None:
    """Two imports at once: the idempotency key of each append lets only one write."""
    path = tmp_path / "sdk.db"
    items = [{"role": "user", "content": str(index)} for index in range(20)]
    await sqlite_source(path, {f"s{index}": items for index in range(5)})
    dest = tmp_path / "dest.db"
    async with await mofa_persist.connect(f"sqlite://{dest}") as store:
        await asyncio.gather(*(import_sessions(str(path), store) for _ in range(3)))
        for index in range(5):
            assert await MofaSession(f"s{index}", store).get_items() == items


# ---------------------------------------------------------------- bad sources


@pytest.mark.parametrize(
    ("source_url", "message"),
    [
        ("", "the source is empty"),
        ("   ", "the source is empty"),
        ("/no/such/file.db", "no SQLite file at /no/such/file.db"),
        ("sqlite+aiosqlite:////no/such.db", "no SQLite file at /no/such.db"),
        ("sqlite+aiosqlite://", "is an in-memory database"),
        ("oracle://u@h/db", "scheme 'oracle' is not one"),
        ("postgresql+psycopg2://u@h/db", "use postgresql+asyncpg://"),
        ("http://[::1", "not a database URL"),
    ],
)
async def test_bad_source_is_refused(source_url: str, message: str) -> None:
    async with await mofa_persist.connect("memory://") as store:
        with pytest.raises(InvalidInputError, match=message.replace("+", r"\+")):
            await import_sessions(source_url, store)


async def test_not_an_sdk_database(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    async with await mofa_persist.connect("memory://") as store:
        with pytest.raises(InvalidInputError, match="has no table 'agent_messages'"):
            await import_sessions(str(other), store)
        with pytest.raises(BackendError, match=r"could not read the sessions of .*garbage\.db"):
            await import_sessions(str(garbage), store)


async def test_other_table_names(tmp_path: Path) -> None:
    path = tmp_path / "named.db"
    session = SQLiteSession("s", path, sessions_table="my_sessions", messages_table="my_items")
    await session.add_items([{"role": "user", "content": "named"}])
    session.close()
    async with await mofa_persist.connect("memory://") as store:
        report = await import_sessions(
            str(path), store, sessions_table="my_sessions", messages_table="my_items"
        )
        assert report.imported == 1
        assert await MofaSession("s", store).get_items() == [{"role": "user", "content": "named"}]


# ---------------------------------------------------------------- the command


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"DATABASE_URL": "", "COLUMNS": "200"})


def one_line_error(result: Result, fragment: str, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def sql_dest(
    request: pytest.FixtureRequest,
    server_databases: dict[str, str],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    backend: str = request.param
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'dest.db'}"
    return url_for(backend, server_databases, tmp_path_factory)


@pytest.mark.parametrize("sql_dest", SQL_BACKENDS, indirect=True)
def test_cli_imports_idempotently_into_a_tenant(sql_dest: str, tmp_path: Path) -> None:
    path = tmp_path / "sdk.db"
    items = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    asyncio.run(sqlite_source(path, {"a": items, "b": items[:1]}))
    tenant = uuid.uuid4()
    args = ["import-from", "openai-agents", str(path), "--url", sql_dest, "--tenant", str(tenant)]

    first = run(*args, "--json")
    assert first.exit_code == 0, first.output
    counts = json.loads(first.stdout)
    assert counts["framework"] == "openai-agents"
    assert (counts["sessions"], counts["imported"], counts["items"]) == (2, 2, 3)

    second = run(*args)
    assert second.exit_code == 0, second.output
    assert "unchanged" in second.stdout

    async def check() -> None:
        async with await mofa_persist.connect(sql_dest) as root:
            view = root.scoped(tenant_id=tenant)
            assert await MofaSession("a", view).get_items() == items
            assert await MofaSession("b", view).get_items() == items[:1]
            assert len((await view.list_sessions()).items) == 2
            assert await MofaSession("a", root).library_session_id() is None  # not outside

    asyncio.run(check())

    # The imported copy changed: a rerun reports the conflict and exits 1.
    async def diverge() -> None:
        async with await mofa_persist.connect(sql_dest) as root:
            session = MofaSession("b", root.scoped(tenant_id=tenant))
            await session.pop_item()
            await session.add_items(items[1:])

    asyncio.run(diverge())
    third = run(*args, "--json")
    assert third.exit_code == 1, third.output
    assert json.loads(third.stdout)["conflicts"] == 1
    assert "warning: session 'b'" in third.stderr
    assert third.stderr.strip().splitlines()[-1].startswith("error: 1 sessions were not imported")


def test_cli_errors(tmp_path: Path) -> None:
    dest = f"sqlite://{tmp_path / 'dest.db'}"
    one_line_error(
        run("import-from", "openai-agents", str(tmp_path / "missing.db"), "--url", dest),
        "no SQLite file at",
    )
    refused = one_line_error(
        run(
            "import-from",
            "openai-agents",
            "postgresql://me:s3cret-pw@127.0.0.1:1/db",
            "--url",
            dest,
        ),
        "could not read the sessions of postgresql+asyncpg://me:***@127.0.0.1:1/db",
    )
    assert "s3cret-pw" not in refused
    one_line_error(run("import-from", "openai-agents", "x.db", "--url", "memory://"), "memory")
    one_line_error(
        run("import-from", "openai-agents", "x.db", "--url", dest, "--user", str(uuid.uuid4())),
        "takes --user and --agent only with --tenant",
    )
    # ADK's importer may be missing, or its framework not installed, or the file missing:
    # each is one line, never a traceback.
    one_line_error(run("import-from", "adk", str(tmp_path / "missing.db"), "--url", dest), "")
    wrong = run("import-from", "adk", "x.db", "--url", dest, "--messages-table", "t")
    one_line_error(wrong, "for openai-agents only", code=2)
    unknown = run("import-from", "crewai", "x.db", "--url", dest)
    assert unknown.exit_code == 2
    assert "crewai" in unknown.stderr


def test_cli_without_the_sdk_names_the_extra(tmp_path: Path) -> None:
    """The command itself imports no framework; asked for one that is missing, it says what
    to install in one line (exit code 1)."""
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'agents' or name.startswith('agents.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from mofa_persist.cli import main\n"
        "sys.argv = ['mofa-persist', *sys.argv[1:]]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", hide, "import-from", "openai-agents", "x.db", "--url",
         f"sqlite://{tmp_path / 'dest.db'}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: import-from openai-agents needs the OpenAI Agents SDK: ")
    assert "pip install 'mofa-persist[openai-agents]'" in line


def test_cli_dispatches_to_the_adk_importer(tmp_path: Path) -> None:
    """The same command runs ADK's importer (tested in test_adk.py) where ADK is installed."""
    pytest.importorskip("google.adk", reason="nox -s integrations installs ADK")
    pytest.importorskip("mofa_persist.integrations.adk_import")
    from google.adk.events import Event
    from google.adk.sessions import DatabaseSessionService
    from google.genai import types

    path = tmp_path / "adk.db"

    async def write() -> None:
        service = DatabaseSessionService(f"sqlite+aiosqlite:///{path}")
        try:
            session = await service.create_session(app_name="app", user_id="u", session_id="s1")
            content = types.Content(role="user", parts=[types.Part(text="hi")])
            await service.append_event(
                session, Event(author="user", invocation_id="i1", content=content)
            )
        finally:
            await service.close()

    asyncio.run(write())
    args = ["import-from", "adk", str(path), "--url", f"sqlite://{tmp_path / 'dest.db'}"]
    first = run(*args, "--json")
    assert first.exit_code == 0, first.output
    counts = json.loads(first.stdout)
    assert (counts["framework"], counts["sessions"], counts["imported"]) == ("adk", 1, 1)
    again = json.loads(run(*args, "--json").stdout)
    assert (again["unchanged"], again["imported"]) == (1, 0)
