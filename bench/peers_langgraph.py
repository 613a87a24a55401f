"""LangGraph's own ``AsyncPostgresSaver`` and ``AsyncSqliteSaver`` against :class:`MofaSaver`.

``python -m bench.peers_langgraph --scale 0.1`` (1.0 is the full size). Per dialect, each saver
in a fresh database of its own, the same workload on one thread at a time:

- put: ``aput`` of ``checkpoints`` checkpoints one after another, each with a messages channel
  that grows by one chat message (LangChain message objects, about 200 characters each) and a
  step counter, as a chat graph writes them (ms per put);
- latest: ``aget_tuple`` of the thread's latest checkpoint (ms per call);
- list 100: ``alist(limit=100)`` read to the end (ms per call);
- storage: bytes the savers' tables take on disk, per 1,000 checkpoints (PostgreSQL:
  ``pg_total_relation_size``; SQLite: ``dbstat`` pages; MySQL: InnoDB data and index length
  after ``ANALYZE TABLE``), tables and indexes; for MofaSaver its three ``langgraph_*`` tables
  (the thread's session row is left out, as the official savers have none).

MySQL/MariaDB has no official saver (LangGraph declined one), so its row shows MofaSaver alone.
The savers take turns round by round (in alternating order) so that load from elsewhere on the
machine hits them alike; each reports the median of its rounds, and the ratios come from the
same run. Results: a table on stdout and ``bench/results/peers_langgraph.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import mofa_persist

from .config import IN_CI, RESULTS_DIR
from .servers import Target, Unreachable, provision

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from langgraph.checkpoint.base import BaseCheckpointSaver

try:
    from langchain_core.messages import AIMessage, HumanMessage
    from langgraph.checkpoint.base.id import uuid6
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from mofa_persist.integrations.langgraph import MofaSaver
except ImportError:  # pragma: no cover - a bench environment without the savers
    sys.exit(
        "this benchmark needs LangGraph and its official savers: pip install "
        "'mofa-persist[langgraph]' langgraph-checkpoint-postgres langgraph-checkpoint-sqlite "
        "'psycopg[binary]'"
    )

DIALECTS = ("sqlite", "postgresql", "mysql")
OFFICIAL = {"sqlite": "AsyncSqliteSaver", "postgresql": "AsyncPostgresSaver"}
MOFA = "MofaSaver"
OFFICIAL_TABLES = {
    "sqlite": ("checkpoints", "writes"),
    "postgresql": ("checkpoints", "checkpoint_blobs", "checkpoint_writes"),
}
MOFA_TABLES = ("langgraph_checkpoints", "langgraph_blobs", "langgraph_writes")
TEXT = "A plausible chat message about booking a flight to Lisbon next Tuesday morning. " * 3


@dataclass(frozen=True)
class Sizes:
    rounds: int
    checkpoints: int  # puts per round (one thread per round)
    reads: int  # calls of each read per round

    @classmethod
    def of(cls, scale: float) -> Sizes:
        return cls(
            rounds=3,
            checkpoints=max(100, round(1000 * scale)),
            reads=max(10, round(200 * scale)),
        )


@dataclass
class Result:
    put_ms: list[float] = field(default_factory=list)
    latest_ms: list[float] = field(default_factory=list)
    list_ms: list[float] = field(default_factory=list)
    bytes_per_1000: float = 0.0
    checkpoints: int = 0


# ---------------------------------------------------------------------- the savers


@contextlib.asynccontextmanager
async def official_saver(target: Target) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    if target.backend == "sqlite":
        assert target.path is not None
        async with AsyncSqliteSaver.from_conn_string(target.path) as saver:
            await saver.setup()
            yield saver
        return
    password = f":{target.password}" if target.password else ""
    dsn = (
        f"postgresql://{target.user}{password}@{target.host}:{target.port}/{target.database}"
        "?sslmode=disable"
    )
    async with AsyncPostgresSaver.from_conn_string(dsn) as saver:
        await saver.setup()
        yield saver


@contextlib.asynccontextmanager
async def mofa_saver(target: Target) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    async with await mofa_persist.connect(target.url) as store:
        yield MofaSaver(store)


# ---------------------------------------------------------------------- the workload


def message(number: int) -> Any:
    kind = HumanMessage if number % 2 == 0 else AIMessage
    return kind(content=f"{number}: {TEXT}", id=f"m-{number}")


async def put_thread(saver: BaseCheckpointSaver[Any], thread: str, count: int) -> float:
    """``count`` checkpoints with a growing messages channel; ms per put (median)."""
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    versions: dict[str, Any] = {}
    messages: list[Any] = []
    times = []
    for step in range(count):
        messages.append(message(step))
        for channel in ("messages", "step"):
            versions[channel] = saver.get_next_version(versions.get(channel), None)
        checkpoint: Any = {
            "v": 4,
            "id": str(uuid6(clock_seq=step)),
            "ts": datetime.now(UTC).isoformat(),
            "channel_values": {"messages": list(messages), "step": step},
            "channel_versions": dict(versions),
            "versions_seen": {"agent": {"messages": versions["messages"]}},
            "updated_channels": ["messages", "step"],
        }
        metadata: Any = {"source": "loop", "step": step, "parents": {}}
        started = time.perf_counter()
        config = await saver.aput(config, checkpoint, metadata, dict(versions))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def read_latest(saver: BaseCheckpointSaver[Any], thread: str, reads: int) -> float:
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    times = []
    for _ in range(reads):
        started = time.perf_counter()
        found = await saver.aget_tuple(config)
        times.append((time.perf_counter() - started) * 1000)
        assert found is not None
    return statistics.median(times)


async def list_100(saver: BaseCheckpointSaver[Any], thread: str, reads: int) -> float:
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    times = []
    for _ in range(reads):
        started = time.perf_counter()
        found = [item async for item in saver.alist(config, limit=100)]
        times.append((time.perf_counter() - started) * 1000)
        assert len(found) == 100
    return statistics.median(times)


async def storage_bytes(target: Target, tables: tuple[str, ...]) -> int:
    """On-disk bytes of ``tables`` and their indexes."""
    if target.backend == "sqlite":
        assert target.path is not None
        with contextlib.closing(sqlite3.connect(target.path)) as conn:
            marks = ",".join("?" * len(tables))
            row = conn.execute(
                f"SELECT sum(pgsize) FROM dbstat WHERE name IN "
                f"(SELECT name FROM sqlite_schema WHERE tbl_name IN ({marks}))",
                tables,
            ).fetchone()
            return int(row[0] or 0)
    if target.backend == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password or None,
            database=target.database,
        )
        try:
            await conn.execute("VACUUM ANALYZE")
            value = await conn.fetchval(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])",
                list(tables),
            )
            return int(value or 0)
        finally:
            await conn.close()
    import aiomysql

    mconn = await aiomysql.connect(
        host=target.host,
        port=target.port or 3306,
        user=target.user or "root",
        password=target.password or "",
        db=target.database,
        autocommit=True,
    )
    try:
        async with mconn.cursor() as cursor:
            for table in tables:
                await cursor.execute(f"ANALYZE TABLE `{table}`")
                await cursor.fetchall()
            marks = ",".join(["%s"] * len(tables))
            await cursor.execute(
                "SELECT sum(data_length + index_length) FROM information_schema.tables "
                f"WHERE table_schema = %s AND table_name IN ({marks})",
                (target.database, *tables),
            )
            (value,) = await cursor.fetchone()
            return int(value or 0)
    finally:
        mconn.close()


# ---------------------------------------------------------------------- a dialect


async def run_dialect(dialect: str, sizes: Sizes) -> dict[str, Result]:
    """Each saver in a fresh database; rounds alternate which one goes first."""
    names = [MOFA] if dialect not in OFFICIAL else [OFFICIAL[dialect], MOFA]
    results = {name: Result() for name in names}
    async with contextlib.AsyncExitStack() as stack:
        targets = {name: await stack.enter_async_context(provision(dialect)) for name in names}
        savers: dict[str, BaseCheckpointSaver[Any]] = {}
        for name in names:
            opener = mofa_saver if name == MOFA else official_saver
            savers[name] = await stack.enter_async_context(opener(targets[name]))
        for number in range(sizes.rounds):
            order = names if number % 2 == 0 else list(reversed(names))
            for name in order:
                saver, result = savers[name], results[name]
                thread = f"thread-{number}"
                result.put_ms.append(await put_thread(saver, thread, sizes.checkpoints))
                result.latest_ms.append(await read_latest(saver, thread, sizes.reads))
                result.list_ms.append(await list_100(saver, thread, sizes.reads))
                result.checkpoints += sizes.checkpoints
        for name in names:
            tables = MOFA_TABLES if name == MOFA else OFFICIAL_TABLES[dialect]
            size = await storage_bytes(targets[name], tables)
            results[name].bytes_per_1000 = size / results[name].checkpoints * 1000
    return results


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rows_of(dialect: str, results: dict[str, Result]) -> list[str]:
    official = results.get(OFFICIAL.get(dialect, ""))
    lines = []
    for name, result in results.items():
        cells = [dialect, name]
        for metric in ("put_ms", "latest_ms", "list_ms"):
            value = median(getattr(result, metric))
            cell = f"{value:.2f}"
            if official is not None and name == MOFA:
                cell += f" ({value / median(getattr(official, metric)):.2f}x)"
            cells.append(cell)
        storage = f"{result.bytes_per_1000 / 1e6:.1f} MB"
        if official is not None and name == MOFA:
            storage += f" ({result.bytes_per_1000 / official.bytes_per_1000:.2f}x)"
        cells.append(storage)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


async def main(scale: float, dialects: list[str]) -> int:
    sizes = Sizes.of(scale)
    header = [
        f"# LangGraph savers: MofaSaver against the official savers (scale {scale})",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"langgraph-checkpoint {version('langgraph-checkpoint')}, "
        f"langgraph-checkpoint-postgres {version('langgraph-checkpoint-postgres')}, "
        f"langgraph-checkpoint-sqlite {version('langgraph-checkpoint-sqlite')}; "
        f"{sizes.rounds} rounds of {sizes.checkpoints} checkpoints (one thread per round, a "
        f"messages channel growing by one message per checkpoint), {sizes.reads} reads each. "
        "Medians; in brackets MofaSaver's time (or size) over the official saver's, from the "
        "same run (below 1 is faster or smaller).",
        "",
        "| dialect | saver | put ms | latest ms | list 100 ms | bytes per 1,000 checkpoints |",
        "|---|---|---|---|---|---|",
    ]
    lines = list(header)
    for dialect in dialects:
        try:
            results = await run_dialect(dialect, sizes)
        except Unreachable as error:
            if IN_CI:
                raise
            print(f"*** skipping {dialect}: {error}", file=sys.stderr)
            continue
        rows = rows_of(dialect, results)
        lines += rows
        print("\n".join(rows), flush=True)
    text = "\n".join(lines) + "\n"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "peers_langgraph.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers_langgraph", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 is the full size")
    parser.add_argument("--dialects", default=",".join(DIALECTS), help="comma-separated")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.dialects.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(DIALECTS))
    if unknown:
        parser.error(f"unknown dialects: {', '.join(unknown)}")
    sys.exit(asyncio.run(main(args.scale, chosen)))


if __name__ == "__main__":
    cli()
