"""Migrations: the alembic CLI both ways, no drift from the models, concurrent first connects,
and the migrations shipped inside the wheel. Runs on SQLite, PostgreSQL and MySQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import build_wheel, create_database, drop_database, selected_backends
from sqlalchemy import inspect

import mofa_persist
from mofa_persist.engine import create_engine
from mofa_persist.migrate import head_revision, include_name
from mofa_persist.models import Base
from mofa_persist.urls import parse_url

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

REPO = Path(__file__).resolve().parent.parent
DIALECTS = [name for name in selected_backends() if name != "memory"]
TABLES = set(Base.metadata.tables)

pytestmark = pytest.mark.migrations


@pytest.fixture(params=DIALECTS)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own for each test."""
    dialect: str = request.param
    if dialect == "sqlite":
        yield f"sqlite://{tmp_path}/migrations.db"
        return
    url = create_database(dialect)
    yield url
    drop_database(dialect, url)


def alembic(url: str, *args: str) -> str:
    env = {**os.environ, "DATABASE_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


async def inspect_db(url: str) -> tuple[set[str], str | None, list[object]]:
    """Tables, current revision and autogenerate's diff against the models."""
    engine = create_engine(parse_url(url), use_null_pool=True)

    def read(connection: Connection) -> tuple[set[str], str | None, list[object]]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_name": include_name}
        )
        tables = set(inspect(connection).get_table_names())
        diff = compare_metadata(context, Base.metadata) if tables >= TABLES else []
        return tables, context.get_current_revision(), diff

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def test_alembic_cli_upgrades_to_head_and_downgrades_to_base(fresh_url: str) -> None:
    alembic(fresh_url, "upgrade", "head")
    tables, revision, diff = await inspect_db(fresh_url)
    assert tables >= TABLES
    assert revision == head_revision()
    assert diff == []
    alembic(fresh_url, "downgrade", "base")
    tables, revision, _ = await inspect_db(fresh_url)
    assert not (TABLES & tables)
    assert revision is None
    alembic(fresh_url, "upgrade", "head")  # and back up again
    assert (await inspect_db(fresh_url))[1] == head_revision()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://app:hunter2@127.0.0.1:1/mofa", "cannot reach the postgresql database"),
        ("mysql://app:hunter2@127.0.0.1:1/mofa", "cannot reach the mysql database"),
        ("bogus://app:hunter2@host/db", "unknown URL scheme 'bogus'"),
    ],
)
def test_alembic_with_a_bad_url_prints_one_line_and_no_password(url: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no traceback
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "hunter2" not in done.stdout + done.stderr


async def test_autogenerate_finds_no_drift_after_connect(fresh_url: str) -> None:
    async with await mofa_persist.connect(fresh_url):
        pass
    _, revision, diff = await inspect_db(fresh_url)
    assert revision == head_revision()
    assert diff == [], f"models and migrations differ: {diff}"


async def test_alembic_check_command_reports_no_drift(fresh_url: str) -> None:
    alembic(fresh_url, "upgrade", "head")
    assert "No new upgrade operations detected" in alembic(fresh_url, "check")


async def test_many_processes_connecting_to_a_fresh_database_migrate_once(fresh_url: str) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys, mofa_persist
        async def main():
            async with await mofa_persist.connect(sys.argv[1]) as store:
                session = await store.create_session(title="racer")
                await store.append_message(session.id, "user", "hi")
        asyncio.run(main())
        """
    )
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            fresh_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(6)
    ]
    results = [await process.communicate() for process in processes]
    failures = [
        stderr.decode()
        for process, (_, stderr) in zip(processes, results, strict=True)
        if process.returncode != 0
    ]
    # Every failure shown: the first one is often only a consequence of another.
    assert failures == [], "\n---\n".join(failures)
    _, revision, diff = await inspect_db(fresh_url)
    assert revision == head_revision()
    assert diff == []
    async with await mofa_persist.connect(fresh_url, migrate=False) as store:
        assert len((await store.list_sessions(limit=100)).items) == 6


async def test_a_failed_migration_is_a_backend_error_that_keeps_foreign_data(
    fresh_url: str,
) -> None:
    """A database that already has another application's ``sessions`` table: connecting says
    the schema could not be migrated, as a typed error, and leaves that table's rows alone."""
    engine = create_engine(parse_url(fresh_url), use_null_pool=True)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE sessions (name VARCHAR(20))")
            await conn.exec_driver_sql("INSERT INTO sessions (name) VALUES ('theirs')")
        with pytest.raises(mofa_persist.BackendError, match="failed to migrate its schema"):
            await mofa_persist.connect(fresh_url)
        async with engine.connect() as conn:
            rows = (await conn.exec_driver_sql("SELECT name FROM sessions")).all()
        assert [tuple(row) for row in rows] == [("theirs",)]
    finally:
        await engine.dispose()


@pytest.mark.slow
def test_installed_wheel_migrates_from_outside_the_repository(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheel = build_wheel(wheels)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = textwrap.dedent(
        """
        import asyncio, mofa_persist
        from mofa_persist.migrate import script_location
        async def main():
            async with await mofa_persist.connect("sqlite://wheel.db") as store:
                s = await store.create_session()
                print((await store.append_message(s.id, "user", "from the wheel")).seq)
        asyncio.run(main())
        print(mofa_persist.__file__)
        print(script_location())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seq, module_file, location = done.stdout.split()
    assert seq == "1"
    assert module_file.startswith(str(target))
    assert location.startswith(str(target))
    assert location.endswith("_migrations")
    assert (outside / "wheel.db").is_file()


def search_revision(url: str) -> str:
    """The revision search needs: 0008 made the indexes; on SQLite 0009's map holds the
    created_at the matches are sorted by."""
    return "0009" if parse_url(url).kind in ("sqlite", "memory") else "0008"


async def search_layout(engine: AsyncEngine) -> tuple[list[tuple[object, ...]], ...]:
    """SQLite: the search objects as the schema has them, and the rowid map's rows (its ids
    are the FTS5 rowids). Empty elsewhere (0009 changes no objects there)."""
    if engine.dialect.name != "sqlite":
        return [], []
    async with engine.connect() as conn:
        objects = await conn.exec_driver_sql(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            " WHERE name LIKE 'messages\\_search%' ESCAPE '\\'"
            " OR name LIKE 'sqlite\\_autoindex\\_messages\\_search%' ESCAPE '\\'"
            " ORDER BY name"
        )
        layout = [tuple(row) for row in objects]
        ids = await conn.exec_driver_sql(
            "SELECT id, message_id FROM messages_search_map ORDER BY id"
        )
        return layout, [tuple(row) for row in ids]


async def test_search_index_builds_on_a_populated_database_and_downgrades(fresh_url: str) -> None:
    """Messages written before migration 0008 are found after it; before it (and after
    downgrading it) search is a typed error naming the revision, never a driver error. One
    step down (0008) search works on PostgreSQL and MySQL and is that typed error on SQLite,
    whose search needs 0009; writes work at every revision."""
    from mofa_persist.migrate import downgrade, upgrade

    needed = f"revision {search_revision(fresh_url)}"
    engine = create_engine(parse_url(fresh_url), use_null_pool=True, enforce_foreign_keys=False)
    try:
        await upgrade(engine, "0007")
        async with await mofa_persist.connect(fresh_url, migrate=False) as store:
            session = await store.create_session(title="before the index")
            await store.append_messages(
                session.id,
                [
                    {"role": "user", "content": f"Заказ {number} — order {number}"}
                    for number in range(48200, 48230)
                ],
            )
            with pytest.raises(mofa_persist.BackendError, match=needed):
                await store.search_messages("order")
        await upgrade(engine, "head")
        async with await mofa_persist.connect(fresh_url, migrate=False) as store:
            hits = (await store.search_messages("заказ 48213")).items
            assert [hit.message.seq for hit in hits] == [14]
            assert len((await store.search_messages("order", limit=100)).items) == 30
            await store.append_message(session.id, "user", "order 99999 after the index")
            assert len((await store.search_messages("99999")).items) == 1
        _, revision, diff = await inspect_db(fresh_url)
        assert (revision, diff) == (head_revision(), [])
        await downgrade(engine, "-1")
        _, revision, diff = await inspect_db(fresh_url)
        assert (revision, diff) == ("0008", [])
        async with await mofa_persist.connect(fresh_url, migrate=False) as store:
            if needed == "revision 0009":
                with pytest.raises(mofa_persist.BackendError, match=needed):
                    await store.search_messages("order")
            else:
                assert len((await store.search_messages("order", limit=100)).items) == 31
            await store.append_message(session.id, "user", "order 77777 at 0008")
        await downgrade(engine, "-1")
        _, revision, diff = await inspect_db(fresh_url)
        assert revision == "0007"
        async with await mofa_persist.connect(fresh_url, migrate=False) as store:
            with pytest.raises(mofa_persist.BackendError, match=needed):
                await store.search_messages("order")
            # Writes still work without the index (no trigger or index left behind).
            await store.append_message(session.id, "user", "order 12345 after the downgrade")
            await store.delete_session(session.id)
        await upgrade(engine, "head")
        async with await mofa_persist.connect(fresh_url, migrate=False) as store:
            assert (await store.search_messages("order")).items == []
    finally:
        await engine.dispose()


async def test_a_database_populated_at_0008_is_searched_after_0009_and_back(
    fresh_url: str,
) -> None:
    """A database that ran migration 0008 as it landed (SQLite: a rowid map without
    created_at) and was written to there, deletes included: after 0009 its messages are
    found, in order, with the map's ids (the FTS5 rowids) unchanged and each row holding its
    message's created_at; downgrading to 0008 gives back that revision's exact layout and
    ids, and what is written there is found after upgrading again."""
    from mofa_persist.migrate import downgrade, upgrade

    engine = create_engine(parse_url(fresh_url), use_null_pool=True, enforce_foreign_keys=False)
    try:
        await upgrade(engine, "0008")
        async with await mofa_persist.connect(fresh_url, migrate=False) as store:
            gone = await store.create_session(title="deleted at 0008")
            await store.append_messages(
                gone.id, [{"role": "user", "content": f"kumquat gone {n}"} for n in range(5)]
            )
            kept = await store.create_session(title="kept")
            old = await store.append_messages(
                kept.id,
                [{"role": "user", "content": f"kumquat {n} заказ_{n}"} for n in range(12)],
            )
            await store.append_message(kept.id, "user", "kumquat popped")
            await store.pop_message(kept.id)
            await store.delete_session(gone.id)
        layout_0008, ids_0008 = await search_layout(engine)
        await upgrade(engine, "0009")
        _, revision, diff = await inspect_db(fresh_url)
        assert (revision, diff) == ("0009", [])
        layout, ids = await search_layout(engine)
        assert ids == ids_0008
        if engine.dialect.name == "sqlite":
            assert len(ids) == 12
            assert any("created_at" in str(row[3]) for row in layout)
            async with engine.connect() as conn:
                rows = await conn.exec_driver_sql(
                    "SELECT count(*), sum(k.created_at = m.created_at) FROM messages_search_map k"
                    " JOIN messages m ON m.id = k.message_id"
                )
                assert tuple(rows.one()) == (12, 12)
        async with await mofa_persist.connect(fresh_url, migrate=False) as store:
            hits = (await store.search_messages("kumquat", limit=100)).items
            assert sorted(hit.message.seq for hit in hits) == [m.seq for m in old]
            assert [h.message.seq for h in (await store.search_messages("заказ_7")).items] == [8]
            assert (await store.search_messages("gone")).items == []
            assert (await store.search_messages("popped")).items == []
            await store.append_message(kept.id, "user", "kumquat at 0009")
            assert len((await store.search_messages("kumquat", limit=100)).items) == 13
        await downgrade(engine, "0008")
        _, revision, diff = await inspect_db(fresh_url)
        assert (revision, diff) == ("0008", [])
        layout, ids = await search_layout(engine)
        assert layout == layout_0008
        assert ids[:12] == ids_0008
        async with await mofa_persist.connect(fresh_url, migrate=False) as store:
            await store.append_message(kept.id, "user", "kumquat back at 0008")
        await upgrade(engine, "head")
        async with await mofa_persist.connect(fresh_url, migrate=False) as store:
            hits = (await store.search_messages("kumquat", limit=100)).items
            assert sorted(hit.message.content for hit in hits) == sorted(
                [m.content for m in old] + ["kumquat at 0009", "kumquat back at 0008"]
            )
            found = (await store.search_messages("back")).items
            assert [hit.message.content for hit in found] == ["kumquat back at 0008"]
    finally:
        await engine.dispose()
