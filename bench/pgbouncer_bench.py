"""What ``?pgbouncer=transaction`` costs: W1 (single appends) and newest-50 reads.

``python -m bench.pgbouncer_bench [--ops 400]`` starts a private PgBouncer in transaction
mode (scripts/pgbouncer_private.py) in front of the PostgreSQL on 5432 and times one client
doing single appends, then newest-50 reads of a 200-message session, four ways: directly
and through PgBouncer, each with statement caching (the default) and without
(``?pgbouncer=transaction``). One client on an idle PgBouncer mostly gets the same server
connection back, which is why caching through it may seem to work here at all: with many
clients it fails (tests/pgbouncer). Prints a Markdown table; nothing is judged.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg

import mofa_persist
from mofa_persist.errors import PersistenceError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from pgbouncer_private import PrivatePgBouncer

UPSTREAM = ("127.0.0.1", 5432)


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(host=UPSTREAM[0], port=UPSTREAM[1], user="postgres")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _measure(url: str, ops: int) -> tuple[float, float, int]:
    """Median microseconds of an append and of a newest-50 read, and the failed calls."""
    failures = 0
    async with await mofa_persist.connect(url) as store:
        session = await store.create_session(title="bench")
        await store.append_messages(
            session.id, [{"role": "user", "content": f"seed {i}"} for i in range(200)]
        )
        for _ in range(20):  # warm the pool and any caches
            await store.get_messages(session.id, limit=50)
        appends: list[float] = []
        for index in range(ops):
            started = time.perf_counter()
            try:
                await store.append_message(session.id, "user", f"message {index}")
            except PersistenceError:
                failures += 1
                continue
            appends.append(time.perf_counter() - started)
        reads: list[float] = []
        for _ in range(ops):
            started = time.perf_counter()
            try:
                await store.get_messages(session.id, limit=50)
            except PersistenceError:
                failures += 1
                continue
            reads.append(time.perf_counter() - started)
    median = statistics.median
    return median(appends) * 1e6, median(reads) * 1e6, failures


async def main_async(ops: int) -> None:
    bouncer = PrivatePgBouncer(*UPSTREAM)
    bouncer.start()
    name = f"mofa_pgb_bench_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        direct = f"postgres://postgres@{UPSTREAM[0]}:{UPSTREAM[1]}/{name}"
        pooled = f"postgres://postgres@127.0.0.1:{bouncer.port}/{name}"
        rows = [
            ("direct", "on (default)", direct),
            ("direct", "off (?pgbouncer=transaction)", f"{direct}?pgbouncer=transaction"),
            ("PgBouncer, transaction mode", "on (default)", pooled),
            (
                "PgBouncer, transaction mode",
                "off (?pgbouncer=transaction)",
                f"{pooled}?pgbouncer=transaction",
            ),
        ]
        print(f"{ops} operations each, one client, medians\n")
        print("| path | statement cache | W1 append (µs) | newest-50 read (µs) | failed calls |")
        print("|---|---|---:|---:|---:|")
        for path, cache, url in rows:
            append_us, read_us, failed = await _measure(url, ops)
            print(f"| {path} | {cache} | {append_us:,.0f} | {read_us:,.0f} | {failed} |")
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        bouncer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=400)
    asyncio.run(main_async(parser.parse_args().ops))


if __name__ == "__main__":
    main()
