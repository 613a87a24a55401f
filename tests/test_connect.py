"""Connecting: URL forms, store classes, unreachable servers, password hygiene."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import mofa_persist
from mofa_persist import (
    BackendError,
    InvalidInputError,
    MemoryStore,
    MySqlStore,
    PostgresStore,
    SqliteStore,
    Store,
)
from mofa_persist.urls import parse_url

if TYPE_CHECKING:
    from conftest import Quirks


async def test_connect_without_url_or_env_is_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    async with await mofa_persist.connect() as store:
        assert isinstance(store, MemoryStore)
        session = await store.create_session()
        assert (await store.get_session(session.id)).id == session.id


async def test_connect_reads_database_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite://{tmp_path}/env.db")
    async with await mofa_persist.connect() as store:
        assert isinstance(store, SqliteStore)
    assert (tmp_path / "env.db").exists()


async def test_sqlite_relative_path_creates_file_and_folders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    async with await SqliteStore.connect("sqlite://data/nested/mofa.db") as store:
        session = await store.create_session(title="kept")
    assert (tmp_path / "data" / "nested" / "mofa.db").is_file()
    # Reopening the file finds the session: the data is durable across stores.
    async with await SqliteStore.connect("sqlite+aiosqlite:///data/nested/mofa.db") as store:
        assert (await store.get_session(session.id)).title == "kept"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("postgres://u:p@localhost/mofa", "postgresql"),
        ("postgresql://u@localhost:5433/mofa", "postgresql"),
        ("postgresql+asyncpg://u@localhost/mofa", "postgresql"),
        ("mysql://root@127.0.0.1/mofa", "mysql"),
        ("mariadb://root@127.0.0.1:3307/mofa", "mysql"),
        ("mysql+aiomysql://root@127.0.0.1/mofa", "mysql"),
        ("sqlite://mofa.db", "sqlite"),
        ("sqlite:///abs/path.db", "sqlite"),
        ("sqlite+aiosqlite:////abs/path.db", "sqlite"),
        ("memory://", "memory"),
    ],
)
def test_accepted_url_forms(url: str, kind: str) -> None:
    assert parse_url(url).kind == kind


def test_sqlite_url_paths() -> None:
    assert parse_url("sqlite:///abs/path.db").host == "/abs/path.db"
    assert parse_url("sqlite://rel.db").host == str(Path.cwd() / "rel.db")
    assert parse_url("sqlite+aiosqlite:///rel.db").host == str(Path.cwd() / "rel.db")


@pytest.mark.parametrize(
    "url", ["http://x/y", "redis://localhost", "oracle://u@h/db", "nonsense", "", "postgres://h"]
)
async def test_unknown_or_malformed_urls_list_accepted_forms(url: str) -> None:
    with pytest.raises(InvalidInputError, match=r"accepted forms|sqlite|postgres"):
        await mofa_persist.connect(url)


@pytest.mark.parametrize(
    ("store_class", "url"),
    [
        (PostgresStore, "mysql://root@127.0.0.1/x"),
        (MySqlStore, "postgres://postgres@127.0.0.1/x"),
        (SqliteStore, "postgres://postgres@127.0.0.1/x"),
        (MemoryStore, "sqlite://x.db"),
    ],
)
async def test_url_for_the_wrong_store_class_is_refused(store_class: type[Store], url: str) -> None:
    with pytest.raises(InvalidInputError, match="accepted forms"):
        await store_class.connect(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgres://mofa:s3cret-pw@127.0.0.1:1/mofa",
        "mysql://mofa:s3cret-pw@127.0.0.1:1/mofa",
    ],
)
async def test_unreachable_server_is_a_backend_error_naming_host_and_database(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await mofa_persist.connect(url, connect_timeout=3)
    assert time.monotonic() - started < 10
    error = caught.value
    assert "127.0.0.1:1" in str(error)
    assert "mofa" in str(error)
    assert error.host == "127.0.0.1:1"
    assert error.database == "mofa"
    assert error.__cause__ is not None
    assert "s3cret-pw" not in str(error)
    assert "s3cret-pw" not in repr(error)
    assert "s3cret-pw" not in caplog.text


async def test_connect_timeout_bounds_a_silent_server() -> None:
    """A server that accepts TCP but never answers must not hang the caller."""
    import asyncio

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for url in (f"postgres://u:pw@127.0.0.1:{port}/db", f"mysql://u:pw@127.0.0.1:{port}/db"):
            started = time.monotonic()
            with pytest.raises(BackendError, match="db"):
                await mofa_persist.connect(url, connect_timeout=1)
            assert time.monotonic() - started < 6
    finally:
        server.close()


async def test_wrong_credentials_are_a_backend_error(server_url: str) -> None:
    database_url = server_url
    bad = parse_url(database_url).sa_url.set(username="nobody_here", password="wr0ng-pw")
    with pytest.raises(BackendError) as caught:
        await mofa_persist.connect(bad.render_as_string(hide_password=False), connect_timeout=5)
    assert "wr0ng-pw" not in str(caught.value)
    assert parse_url(database_url).database in str(caught.value)


def test_reprs_hide_the_password() -> None:
    url = parse_url("postgres://mofa:top-secret@db.example/mofa")
    assert "top-secret" not in repr(url)
    assert "top-secret" not in url.display
    assert "***" in url.display


async def test_store_is_an_async_context_manager_and_closes(database_url: str) -> None:
    store = await mofa_persist.connect(database_url)
    async with store as entered:
        assert entered is store
        await store.create_session()
    with pytest.raises(BackendError, match="closed"):
        await store.create_session()
    await store.close()  # closing twice is harmless


async def test_store_class_matches_the_backend(backend: str, database_url: str) -> None:
    expected = {
        "memory": MemoryStore,
        "sqlite": SqliteStore,
        "postgresql": PostgresStore,
        "mysql": MySqlStore,
    }[backend]
    async with await mofa_persist.connect(database_url) as store:
        assert type(store) is expected
    async with await expected.connect(database_url) as store:
        assert type(store) is expected


async def test_store_survives_a_reconnect_of_the_same_database(
    backend: str, database_url: str, quirks: Quirks
) -> None:
    if not quirks.shared_between_processes:
        # An in-memory database ends with its store: a new store starts empty.
        async with await mofa_persist.connect(database_url) as fresh:
            assert (await fresh.list_sessions()).items == []
        return
    async with await mofa_persist.connect(database_url) as first:
        session = await first.create_session(title="durable")
        await first.append_message(session.id, "user", "remember me")
    async with await mofa_persist.connect(database_url, migrate=False) as second:
        (message,) = await second.get_messages(session.id)
        assert message.content == "remember me"


def test_environment_has_no_stray_database_url() -> None:
    """The suite must not silently run against a database from the caller's environment."""
    assert os.environ.get("DATABASE_URL") in (None, "")


@pytest.mark.parametrize("bad", [0, -1, "5", True])
async def test_bad_call_timeout_is_refused(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="call_timeout"):
        await mofa_persist.connect("memory://", call_timeout=bad)  # type: ignore[arg-type]
