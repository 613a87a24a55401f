"""One conformance suite for every backend.

The ``store`` fixture is parametrized over memory, SQLite, PostgreSQL and MySQL/MariaDB; every
API test runs unchanged on each. Server backends get a database of their own per test run,
created here and dropped afterwards, with the schema built by the real migrations.

Environment:
- ``MOFA_TEST_BACKENDS``: comma-separated subset to run (nox sets one per session).
- ``MOFA_TEST_POSTGRES_URL`` / ``MOFA_TEST_MYSQL_URL``: an admin URL of the server to use
  (defaults: the local services on 5432 and 3306).
- ``CI=true``: a server that cannot be reached fails the run instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import mofa_persist
from mofa_persist.urls import parse_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

ALL_BACKENDS = ("memory", "sqlite", "postgresql", "mysql")
POSTGRES_ADMIN_URL = os.environ.get(
    "MOFA_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
MYSQL_ADMIN_URL = os.environ.get("MOFA_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def selected_backends() -> list[str]:
    raw = os.environ.get("MOFA_TEST_BACKENDS", "")
    chosen = [name.strip() for name in raw.split(",") if name.strip()] or list(ALL_BACKENDS)
    unknown = set(chosen) - set(ALL_BACKENDS)
    if unknown:
        raise pytest.UsageError(f"MOFA_TEST_BACKENDS names unknown backends: {sorted(unknown)}")
    return chosen


SERVER_BACKENDS = [name for name in selected_backends() if name in ("postgresql", "mysql")]


@dataclass(frozen=True)
class Quirks:
    """What legitimately differs between backends; tests read this instead of branching."""

    #: PostgreSQL's JSONB stores object keys sorted by length, then bytes.
    keeps_json_key_order: bool
    #: Separate processes can share the database (not so for an in-memory store).
    shared_between_processes: bool


QUIRKS = {
    "memory": Quirks(keeps_json_key_order=True, shared_between_processes=False),
    "sqlite": Quirks(keeps_json_key_order=True, shared_between_processes=True),
    "postgresql": Quirks(keeps_json_key_order=False, shared_between_processes=True),
    "mysql": Quirks(keeps_json_key_order=True, shared_between_processes=True),
}


def unavailable(what: str, error: BaseException | str) -> None:
    """Something a test needs is missing: under CI=true a failure, else a loud skip."""
    message = f"{what} unavailable: {error}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    print(f"\n*** SKIPPING: {message} ***")
    pytest.skip(f"SKIPPED {message}")


def _unreachable(backend: str, error: BaseException) -> None:
    unavailable(f"{backend} server", f"unreachable ({type(error).__name__}: {error})")


async def admin(url: str, statements: list[str]) -> None:
    """Run statements on the server of ``url`` with the raw driver, in autocommit."""
    parsed = parse_url(url)
    url_parts = parsed.sa_url
    if parsed.kind == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(
            host=url_parts.host,
            port=url_parts.port or 5432,
            user=url_parts.username,
            password=url_parts.password,
            database=url_parts.database,
            timeout=10,
        )
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()
    else:
        import aiomysql

        conn = await aiomysql.connect(
            host=url_parts.host or "127.0.0.1",
            port=url_parts.port or 3306,
            user=url_parts.username or "root",
            password=url_parts.password or "",
            db=url_parts.database,
            connect_timeout=10,
            autocommit=True,
        )
        try:
            async with conn.cursor() as cursor:
                for statement in statements:
                    await cursor.execute(statement)
        finally:
            conn.close()


def _admin_url(backend: str) -> str:
    return POSTGRES_ADMIN_URL if backend == "postgresql" else MYSQL_ADMIN_URL


def build_wheel(folder: Path) -> Path:
    """Build the project's wheel into ``folder`` (as a user's ``pip wheel .`` would)."""
    repo = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder), str(repo)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = folder.glob("mofa_persist-*.whl")
    return wheel


def url_on_server(backend: str, database: str) -> str:
    sa_url = parse_url(_admin_url(backend)).sa_url.set(database=database)
    return sa_url.render_as_string(hide_password=False)


def create_database(backend: str) -> str:
    """Create a fresh, uniquely named database and return its URL."""
    name = f"mofa_test_{uuid.uuid4().hex[:12]}"
    if backend == "postgresql":
        statements = [f'CREATE DATABASE "{name}"']
    else:
        statements = [f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"]
    try:
        asyncio.run(admin(_admin_url(backend), statements))
    except Exception as error:  # any failure to reach the server decides skip/fail
        _unreachable(backend, error)
    return url_on_server(backend, name)


def drop_database(backend: str, url: str) -> None:
    name = parse_url(url).database
    if backend == "postgresql":
        statements = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']
    else:
        statements = [f"DROP DATABASE IF EXISTS `{name}`"]
    asyncio.run(admin(_admin_url(backend), statements))


@pytest.fixture(scope="session")
def server_databases() -> Iterator[dict[str, str]]:
    """Lazily created per-run databases, dropped when the run ends."""
    created: dict[str, str] = {}
    yield created
    for backend, url in created.items():
        if backend in ("postgresql", "mysql"):
            drop_database(backend, url)


@pytest.fixture(params=selected_backends())
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def database_url(
    backend: str, server_databases: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A URL for ``backend`` that this test run owns."""
    if backend == "memory":
        return "memory://"
    if backend not in server_databases:
        if backend == "sqlite":
            folder = tmp_path_factory.mktemp("sqlite")
            server_databases[backend] = f"sqlite://{Path(folder) / 'conformance.db'}"
        else:
            server_databases[backend] = create_database(backend)
    return server_databases[backend]


@pytest.fixture(params=SERVER_BACKENDS)
def server_url(request: pytest.FixtureRequest, server_databases: dict[str, str]) -> str:
    """A database URL on each server backend (PostgreSQL, MySQL), for server-only tests."""
    name: str = request.param
    if name not in server_databases:
        server_databases[name] = create_database(name)
    return server_databases[name]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[mofa_persist.Store]:
    async with await mofa_persist.connect(database_url) as connected:
        yield connected


@pytest.fixture
def quirks(backend: str) -> Quirks:
    return QUIRKS[backend]


@pytest.fixture
def tenant() -> uuid.UUID:
    """A tenant id of this test's own, so tests sharing a database never see each other."""
    return uuid.uuid4()


@pytest.fixture
async def scoped_store(store: mofa_persist.Store, tenant: uuid.UUID) -> mofa_persist.Store:
    return store.scoped(tenant_id=tenant)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Server-only tests are deselected (not skipped) when no server backend is selected,
    so a run on memory or SQLite never reports them as skipped-but-green. The same goes for
    tests parametrized over a list of backends that came out empty for this selection."""
    empty = [
        item
        for item in items
        if any(
            mark.name == "skip" and "empty parameter set" in str(mark.kwargs.get("reason", ""))
            for mark in item.iter_markers()
        )
    ]
    if empty:
        config.hook.pytest_deselected(items=empty)
        items[:] = [item for item in items if item not in empty]
    if SERVER_BACKENDS:
        return
    kept, dropped = [], []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        (dropped if "server_url" in fixtures else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
