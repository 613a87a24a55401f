"""The store behind a real PgBouncer in transaction mode (``nox -s pgbouncer``).

``scripts/pgbouncer_private.py`` starts a private PgBouncer (4 server connections per
database) and sets ``MOFA_PGBOUNCER_URL``; the conformance suite runs through it in the same
session. Here: 50 writers, each with a connection of its own, share those 4 server
connections; the same workload without ``?pgbouncer=transaction`` shows what the option is
for; concurrent first connects migrate a fresh database through the pooler.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import TYPE_CHECKING

import pytest
from conftest import admin, unavailable

import mofa_persist
from mofa_persist.errors import PersistenceError
from mofa_persist.urls import parse_url

if TYPE_CHECKING:
    from collections.abc import Iterator

PGBOUNCER_URL = os.environ.get("MOFA_PGBOUNCER_URL", "")
WRITERS = 50
APPENDS = 20
SESSIONS = 5


@pytest.fixture(autouse=True)
def _needs_pgbouncer() -> None:
    if PGBOUNCER_URL:
        return
    if os.environ.get("MOFA_PGBOUNCER_SESSION"):
        unavailable("PgBouncer", "scripts/pgbouncer_private.py could not start one")
    print("\n*** SKIPPING tests/pgbouncer: run `nox -s pgbouncer` (a private PgBouncer) ***")
    pytest.skip("SKIPPED: needs the private PgBouncer of `nox -s pgbouncer`")


def _on(database: str, *, option: bool = True) -> str:
    """A URL of ``database`` through the pooler, with or without ``?pgbouncer=``."""
    sa_url = parse_url(PGBOUNCER_URL).sa_url.set(database=database)
    if not option:
        sa_url = sa_url.difference_update_query(["pgbouncer"])
    return sa_url.render_as_string(hide_password=False)


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A database created and dropped through the pooler (DROP ... WITH (FORCE))."""
    name = f"mofa_pgb_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin(PGBOUNCER_URL, [f'CREATE DATABASE "{name}"']))
    yield name
    asyncio.run(admin(PGBOUNCER_URL, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']))


async def _writers(url: str) -> tuple[dict[uuid.UUID, int], list[BaseException]]:
    """50 stores of one connection each append and read newest-50 at once; returns the
    acknowledged appends per session and every failure."""
    async with await mofa_persist.connect(url) as first:
        sessions = [(await first.create_session(title=f"s{i}")).id for i in range(SESSIONS)]
    acknowledged = dict.fromkeys(sessions, 0)
    failures: list[BaseException] = []
    start = asyncio.Event()

    async def writer(index: int) -> None:
        async with await mofa_persist.connect(url, pool_size=1, max_overflow=0) as store:
            await start.wait()
            for step in range(APPENDS):
                sid = sessions[(index + step) % SESSIONS]
                try:
                    await store.append_message(sid, "user", f"w{index}-{step}")
                    acknowledged[sid] += 1
                    await store.get_messages(sid, limit=50)
                except PersistenceError as error:
                    failures.append(error)

    tasks = [asyncio.create_task(writer(index)) for index in range(WRITERS)]
    await asyncio.sleep(0.5)  # every writer connected
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures.extend(result for result in results if isinstance(result, BaseException))
    return acknowledged, failures


async def test_fifty_writers_through_transaction_pooling(fresh_database: str) -> None:
    url = _on(fresh_database)
    acknowledged, failures = await _writers(url)
    assert not failures, f"{len(failures)} calls failed, first: {failures[0]!r}"
    assert sum(acknowledged.values()) == WRITERS * APPENDS
    async with await mofa_persist.connect(url) as store:
        for sid, count in acknowledged.items():
            messages = await store.get_messages(sid)
            assert [message.seq for message in messages] == list(range(1, count + 1))
            assert (await store.get_session(sid)).last_seq == count


async def test_without_the_option_prepared_statements_break_as_typed_errors(
    fresh_database: str,
) -> None:
    """What ``?pgbouncer=transaction`` is for: with asyncpg's statement cache on, the named
    statements of 50 clients meet on 4 server connections. Whatever breaks must still come
    out as the store's typed errors, never as raw driver errors."""
    _, failures = await _writers(_on(fresh_database, option=False))
    raw = [error for error in failures if not isinstance(error, PersistenceError)]
    assert not raw, f"raw driver errors escaped: {raw[:3]!r}"
    assert failures, "no call failed: this pooler does not show the problem the option solves"
    print(f"\nwithout the option: {len(failures)} of {WRITERS * APPENDS} appends+reads failed")
    print(f"first: {failures[0]}")


async def test_concurrent_first_connects_migrate_through_the_pooler(fresh_database: str) -> None:
    """The migration lock is an advisory *transaction* lock: it works across pooled
    connections, and every racer finds the schema at head."""
    url = _on(fresh_database)

    async def racer() -> int:
        async with await mofa_persist.connect(url) as store:
            session = await store.create_session()
            await store.append_message(session.id, "user", "migrated")
            return len(await store.get_messages(session.id))

    assert await asyncio.gather(*(racer() for _ in range(8))) == [1] * 8
    rows: list[object] = []
    parsed = parse_url(url).sa_url

    import asyncpg

    conn = await asyncpg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        database=fresh_database,
        statement_cache_size=0,
    )
    try:
        rows = [row[0] for row in await conn.fetch("SELECT version_num FROM alembic_version")]
    finally:
        await conn.close()
    from mofa_persist.migrate import head_revision

    assert rows == [head_revision()]
