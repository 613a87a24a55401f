"""The OpenAI Agents SDK's ``SQLAlchemySession`` against :class:`MofaSession`, same workloads.

``python -m bench.peers_openai_agents --scale 0.1`` (1.0 is the full size). Per dialect (SQLite,
PostgreSQL, MySQL/MariaDB), each in a fresh database, both implementations run:

- add: ``add_items([one item])`` into one session, one call after another (items/s);
- newest 50: ``get_items(limit=50)`` on a session of ``history`` items (ms per call);
- 20 tasks: 20 tasks ``add_items([one item])`` into ONE session at once (items/s), then a
  check that every item is there once and each task's items are in its order.

The two take turns round by round (in alternating order), so load from elsewhere on the
machine hits both alike; each reports the median of its rounds, and the ratio is taken from the
same run. On MySQL the SDK cannot create its tables (``session_id`` is a ``String`` with no
length): that failure is the first result; the SDK is then measured on the same tables
created here with ``VARCHAR(255)``, as its users must do. Results: a table on stdout and
``bench/results/peers_openai_agents.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import mofa_persist
from mofa_persist.integrations.openai_agents import MofaSession

from .config import IN_CI, RESULTS_DIR
from .servers import Unreachable, provision

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

try:
    from agents.extensions.memory import SQLAlchemySession
except ImportError:  # pragma: no cover - a bench environment without the SDK
    sys.exit(
        "this benchmark needs the OpenAI Agents SDK: pip install 'mofa-persist[openai-agents]'"
    )

DIALECTS = ("sqlite", "postgresql", "mysql")
SDK = "SQLAlchemySession"
MOFA = "MofaSession"
TASKS = 20

#: The SDK's tables as its create_all would make them, with the length MySQL requires.
MYSQL_TABLES = (
    "CREATE TABLE agent_sessions (session_id VARCHAR(255) PRIMARY KEY, "
    "created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "
    "updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    "CREATE TABLE agent_messages (id INTEGER PRIMARY KEY AUTO_INCREMENT, "
    "session_id VARCHAR(255) NOT NULL, message_data TEXT NOT NULL, "
    "created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "
    "INDEX idx_agent_messages_session_time (session_id, created_at), "
    "FOREIGN KEY (session_id) REFERENCES agent_sessions (session_id) ON DELETE CASCADE)",
)


@dataclass(frozen=True)
class Sizes:
    adds: int  # add: calls per implementation
    history: int  # newest 50: items in the session read
    reads: int  # newest 50: calls per implementation
    per_task: int  # 20 tasks: calls per task
    rounds: int

    @classmethod
    def for_scale(cls, scale: float) -> Sizes:
        if scale <= 0:
            raise SystemExit("--scale must be positive")

        def scaled(full: int, minimum: int) -> int:
            return max(minimum, round(full * scale))

        return cls(
            adds=scaled(2_000, 40),
            history=scaled(10_000, 200),
            reads=scaled(1_000, 40),
            per_task=scaled(100, 5),
            rounds=5,
        )


@dataclass
class Row:
    dialect: str
    workload: str
    unit: str
    higher_is_better: bool
    values: dict[str, float | str] = field(default_factory=dict)
    note: str = ""

    def ratio(self) -> str:
        """How many times faster MofaSession is (from the medians of this run)."""
        sdk, mofa = self.values.get(SDK), self.values.get(MOFA)
        if not isinstance(sdk, float) or not isinstance(mofa, float) or not sdk or not mofa:
            return "-"
        return f"{(mofa / sdk) if self.higher_is_better else (sdk / mofa):.2f}x"


def item(text_: str) -> dict[str, Any]:
    return {"role": "user", "content": text_}


def sdk_url(mofa_url: str, path: str | None) -> str:
    """The same database as the SDK's SQLAlchemySession takes it (a file of its own on SQLite)."""
    if path is not None:
        return f"sqlite+aiosqlite:///{Path(path).with_name('sdk.db')}"
    url = make_url(mofa_url)
    driver = "postgresql+asyncpg" if url.get_backend_name().startswith("postgres") else None
    return url.set(drivername=driver or "mysql+aiomysql").render_as_string(hide_password=False)


class Pair:
    """One session name, opened on both implementations."""

    def __init__(self, engine: AsyncEngine, store: mofa_persist.Store) -> None:
        self.engine, self.store = engine, store

    def open(self, name: str, session_id: str) -> Any:
        if name == SDK:
            return SQLAlchemySession(session_id, engine=self.engine)
        return MofaSession(session_id, self.store)


async def timed_rounds(rounds: int, work: Callable[[str, int], Awaitable[int]]) -> dict[str, float]:
    """``work(impl, round)`` returns operations done; the median ops/s of the rounds."""
    rates: dict[str, list[float]] = {SDK: [], MOFA: []}
    for index in range(rounds):
        order = (SDK, MOFA) if index % 2 == 0 else (MOFA, SDK)
        for impl in order:
            start = time.perf_counter()
            done = await work(impl, index)
            rates[impl].append(done / (time.perf_counter() - start))
    return {impl: statistics.median(values) for impl, values in rates.items()}


async def add(pair: Pair, sizes: Sizes, dialect: str) -> Row:
    per_round = max(1, sizes.adds // sizes.rounds)
    sessions = {impl: pair.open(impl, f"add-{impl}") for impl in (SDK, MOFA)}
    for session in sessions.values():  # warm-up: tables, connections, the session row
        await session.add_items([item("warm")])

    async def work(impl: str, _round: int) -> int:
        for index in range(per_round):
            await sessions[impl].add_items([item(f"m{index}")])
        return per_round

    return Row(
        dialect,
        "add (1 item per call)",
        "items/s",
        True,
        dict(await timed_rounds(sizes.rounds, work)),
    )


async def newest(pair: Pair, sizes: Sizes, dialect: str) -> Row:
    sessions = {impl: pair.open(impl, f"read-{impl}") for impl in (SDK, MOFA)}
    batch = [item(f"h{index} " + "x" * 200) for index in range(500)]
    for session in sessions.values():
        for start in range(0, sizes.history, len(batch)):
            await session.add_items(batch[: min(len(batch), sizes.history - start)])
        assert len(await session.get_items(limit=50)) == 50
    per_round = max(1, sizes.reads // sizes.rounds)

    async def work(impl: str, _round: int) -> int:
        for _ in range(per_round):
            await sessions[impl].get_items(limit=50)
        return per_round

    rates = await timed_rounds(sizes.rounds, work)
    values: dict[str, float | str] = {impl: 1000 / rate for impl, rate in rates.items()}
    return Row(dialect, f"get newest 50 ({sizes.history:,} history)", "ms", False, values)


async def tasks(pair: Pair, sizes: Sizes, dialect: str) -> Row:
    """20 tasks into one session; failures (deadlocks, lock errors) and lost or out-of-order
    items are counted, not hidden."""
    problems: dict[str, list[str]] = {SDK: [], MOFA: []}

    async def work(impl: str, round_: int) -> int:
        session = pair.open(impl, f"tasks-{impl}-{round_}")

        async def one(task: int) -> int:
            done = 0
            for index in range(sizes.per_task):
                try:
                    await session.add_items([item(f"t{task}-{index}")])
                    done += 1
                except Exception as error:  # what the SDK raises is the finding
                    code = getattr(getattr(error, "orig", None), "args", (None,))[:1]
                    suffix = f" {code[0]}" if code and isinstance(code[0], int) else ""
                    problems[impl].append(f"{type(error).__name__}{suffix}")
            return done

        done = sum(await asyncio.gather(*(one(task) for task in range(TASKS))))
        stored = [entry["content"] for entry in await session.get_items()]
        for task in range(TASKS):
            mine = [entry for entry in stored if entry.startswith(f"t{task}-")]
            if mine != sorted(mine, key=lambda entry: int(entry.rpartition("-")[2])):
                problems[impl].append("out of order")
        if len(stored) != done or len(set(stored)) != len(stored):
            problems[impl].append(f"{done} added, {len(stored)} stored")
        return done

    rates = await timed_rounds(sizes.rounds, work)
    row = Row(dialect, f"{TASKS} tasks into one session", "items/s", True, dict(rates))
    notes = []
    for impl, found in problems.items():
        if found:
            counts = {name: found.count(name) for name in sorted(set(found))}
            listed = ", ".join(f"{n}x {name}" for name, n in counts.items())
            notes.append(f"{impl}: {listed} (of {sizes.rounds * TASKS * sizes.per_task} calls)")
        else:
            notes.append(f"{impl} ok")
    row.note = "; ".join(notes) + "; ok = no error, nothing lost, each task's items in order"
    return row


async def run_dialect(dialect: str, sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    async with provision(dialect) as target:
        url = sdk_url(target.url, target.path)
        engine = create_async_engine(url, pool_size=TASKS, max_overflow=0)
        try:
            # The SDK makes its tables once here (create_all); the sessions measured do not
            # repeat it, so its numbers hold no schema work.
            probe = SQLAlchemySession("probe", engine=engine, create_tables=True)
            try:
                await probe.add_items([item("x")])
                verdict = ""
            except Exception as error:
                verdict = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            if verdict:
                rows.append(
                    Row(
                        dialect,
                        "create its tables (create_tables=True)",
                        "",
                        True,
                        {SDK: f"fails ({verdict})", MOFA: "migrations"},
                    )
                )
                async with engine.begin() as conn:
                    for statement in MYSQL_TABLES if dialect == "mysql" else ():
                        await conn.execute(text(statement))
            async with await mofa_persist.connect(target.url) as store:
                pair = Pair(engine, store)
                measured = [
                    await add(pair, sizes, dialect),
                    await newest(pair, sizes, dialect),
                    await tasks(pair, sizes, dialect),
                ]
            if verdict:
                for row in measured:
                    row.note = "; ".join(
                        filter(None, ["SDK on tables made here with VARCHAR(255)", row.note])
                    )
            rows += measured
        finally:
            await engine.dispose()
    return rows


def shown(value: float | str | None) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
    return value or "-"


def table(rows: list[Row]) -> str:
    lines = [
        f"| dialect | workload | unit | {SDK} | {MOFA} | MofaSession speed | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.dialect} | {row.workload} | {row.unit} | {shown(row.values.get(SDK))} | "
            f"{shown(row.values.get(MOFA))} | {row.ratio()} | {row.note} |"
        )
    return "\n".join(lines)


def header(scale: float) -> str:
    cores = os.cpu_count()
    return (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; scale {scale}; {platform.platform()}, "
        f"Python {platform.python_version()}, {cores} cores (shared with other work: compare "
        f"the ratios, taken in the same run, more than the absolute numbers); openai-agents "
        f"{version('openai-agents')}, SQLAlchemy {version('sqlalchemy')}, mofa-persist "
        f'{mofa_persist.__version__}. "MofaSession speed" is how many times faster '
        "MofaSession is (items/s ratio, or the inverse ratio of ms); items/s counts only the "
        "calls that succeeded."
    )


async def main_async(scale: float, dialects: list[str]) -> list[Row]:
    sizes = Sizes.for_scale(scale)
    rows: list[Row] = []
    for dialect in dialects:
        print(f"{dialect} ...", file=sys.stderr, flush=True)
        try:
            rows += await run_dialect(dialect, sizes)
        except Unreachable as error:
            if IN_CI:
                raise
            rows.append(Row(dialect, "all", "", True, {SDK: "-", MOFA: "-"}, f"skipped: {error}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers_openai_agents")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 is the full size")
    parser.add_argument("--dialects", default=",".join(DIALECTS), help="comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "peers_openai_agents.md")
    args = parser.parse_args(argv)
    dialects = [name.strip() for name in args.dialects.split(",") if name.strip()]
    unknown = set(dialects) - set(DIALECTS)
    if unknown:
        parser.error(f"unknown dialects: {sorted(unknown)}")
    rows = asyncio.run(main_async(args.scale, dialects))
    report = f"{header(args.scale)}\n\n{table(rows)}\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# OpenAI Agents SDK sessions: SQLAlchemySession vs MofaSession\n\n{report}"
    )
    # MofaSession promises what the 20-task check tests: a problem of its own fails the run.
    return 1 if any(f"{MOFA}: " in row.note for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
