"""Google ADK's ``DatabaseSessionService`` against :class:`MofaSessionService`, same workloads.

``python -m bench.peers_adk --scale 0.1`` (1.0 is the full size). Per dialect (SQLite,
PostgreSQL, MySQL/MariaDB), ADK's service and this library's each in a fresh database of
their own (both name a table ``sessions``):

- append: ``append_event`` of one text event into one session, one after another (events/s);
- newest 50: ``get_session(config=GetSessionConfig(num_recent_events=50))`` on a session of
  ``history`` events (ms per call);
- list: ``list_sessions(app_name=...)`` of an app with ``sessions`` sessions (ms per call);
- 20 writers: 20 tasks each read the session once and then append ``per_task`` events to it
  with that copy, all at once (events stored per second, and how many appends were refused as
  stale); this library in its default mode (ADK's semantics) and with ``ordered=True``.

The implementations take turns round by round (in alternating order), so load from elsewhere on
the machine hits them alike; each reports the median of its rounds, and the ratios come from
the same run. Results: a table on stdout and ``bench/results/peers_adk.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

import mofa_persist

from .config import IN_CI, RESULTS_DIR
from .servers import Unreachable, provision

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

try:
    from google.adk.errors import StaleSessionError
    from google.adk.events.event import Event
    from google.adk.sessions import BaseSessionService, DatabaseSessionService
    from google.adk.sessions.base_session_service import GetSessionConfig
    from google.genai import types

    from mofa_persist.integrations.adk import MofaSessionService
except ImportError:  # pragma: no cover - a bench environment without ADK
    sys.exit("this benchmark needs Google ADK: pip install 'mofa-persist[adk]'")

DIALECTS = ("sqlite", "postgresql", "mysql")
ADK = "DatabaseSessionService"
MOFA = "MofaSessionService"
ORDERED = "MofaSessionService(ordered=True)"
WRITERS = 20
APP = "bench"
#: Dialects where the ordered mode refused or lost an append (fails the run).
ORDERED_FAILURES: list[str] = []


@dataclass(frozen=True)
class Sizes:
    appends: int  # append: calls per implementation
    history: int  # newest 50: events in the session read
    reads: int  # newest 50: calls per implementation
    sessions: int  # list: sessions of the app
    lists: int  # list: calls per implementation
    per_task: int  # 20 writers: appends per writer
    rounds: int

    @classmethod
    def for_scale(cls, scale: float) -> Sizes:
        if scale <= 0:
            raise SystemExit("--scale must be positive")

        def scaled(full: int, minimum: int) -> int:
            return max(minimum, round(full * scale))

        return cls(
            appends=scaled(2_000, 50),
            history=scaled(5_000, 200),
            reads=scaled(500, 25),
            sessions=scaled(10_000, 1_000),
            lists=scaled(50, 5),
            per_task=scaled(100, 10),
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

    def ratio(self, impl: str) -> str:
        """How many times faster ``impl`` is than ADK's service (medians of this run)."""
        theirs, ours = self.values.get(ADK), self.values.get(impl)
        if not isinstance(theirs, float) or not isinstance(ours, float) or not theirs or not ours:
            return "-"
        return f"{(ours / theirs) if self.higher_is_better else (theirs / ours):.2f}x"


def event(text: str, timestamp: float | None = None) -> Event:
    made = Event(
        invocation_id="bench",
        author="user",
        content=types.Content(role="user", parts=[types.Part(text=text)]),
    )
    if timestamp is not None:
        made.timestamp = timestamp
    return made


def adk_url(mofa_url: str, path: str | None) -> str:
    if path is not None:
        return f"sqlite+aiosqlite:///{Path(path).with_name('adk.db')}"
    url = make_url(mofa_url)
    driver = "postgresql+asyncpg" if url.get_backend_name().startswith("postgres") else None
    return url.set(drivername=driver or "mysql+aiomysql").render_as_string(hide_password=False)


async def timed_rounds(
    rounds: int, impls: list[str], work: Callable[[str, int], Awaitable[int]]
) -> dict[str, float]:
    """``work(impl, round)`` returns operations done; the median ops/s of the rounds."""
    rates: dict[str, list[float]] = {impl: [] for impl in impls}
    for index in range(rounds):
        order = impls if index % 2 == 0 else list(reversed(impls))
        for impl in order:
            start = time.perf_counter()
            done = await work(impl, index)
            rates[impl].append(done / (time.perf_counter() - start))
    return {impl: statistics.median(values) for impl, values in rates.items()}


async def append(services: dict[str, BaseSessionService], sizes: Sizes, dialect: str) -> Row:
    per_round = max(1, sizes.appends // sizes.rounds)
    sessions = {
        impl: await service.create_session(app_name=APP, user_id="u", session_id="append")
        for impl, service in services.items()
    }

    async def work(impl: str, _round: int) -> int:
        for index in range(per_round):
            await services[impl].append_event(sessions[impl], event(f"m{index}"))
        return per_round

    rates = await timed_rounds(sizes.rounds, [ADK, MOFA], work)
    return Row(dialect, "append_event (1 event per call)", "events/s", True, dict(rates))


async def newest(services: dict[str, BaseSessionService], sizes: Sizes, dialect: str) -> Row:
    config = GetSessionConfig(num_recent_events=50)
    for service in services.values():
        session = await service.create_session(app_name=APP, user_id="u", session_id="history")
        for index in range(sizes.history):
            await service.append_event(session, event(f"h{index} " + "x" * 200, 1_000.0 + index))
        got = await service.get_session(
            app_name=APP, user_id="u", session_id="history", config=config
        )
        assert got is not None and len(got.events) == 50
    per_round = max(1, sizes.reads // sizes.rounds)

    async def work(impl: str, _round: int) -> int:
        for _ in range(per_round):
            await services[impl].get_session(
                app_name=APP, user_id="u", session_id="history", config=config
            )
        return per_round

    rates = await timed_rounds(sizes.rounds, [ADK, MOFA], work)
    values: dict[str, float | str] = {impl: 1000 / rate for impl, rate in rates.items()}
    return Row(dialect, f"get_session, newest 50 of {sizes.history:,}", "ms", False, values)


async def listing(services: dict[str, BaseSessionService], sizes: Sizes, dialect: str) -> Row:
    app = "listed"
    for service in services.values():
        for index in range(sizes.sessions):
            await service.create_session(
                app_name=app, user_id=f"user-{index % 50}", state={"n": index}
            )
    per_round = max(1, sizes.lists // sizes.rounds)

    async def work(impl: str, _round: int) -> int:
        for _ in range(per_round):
            found = await services[impl].list_sessions(app_name=app)
            assert len(found.sessions) == sizes.sessions
        return per_round

    rates = await timed_rounds(sizes.rounds, [ADK, MOFA], work)
    values: dict[str, float | str] = {impl: 1000 / rate for impl, rate in rates.items()}
    return Row(dialect, f"list_sessions of {sizes.sessions:,}", "ms", False, values)


async def writers(services: dict[str, BaseSessionService], sizes: Sizes, dialect: str) -> Row:
    """20 writers, each appending with the copy it read; refused appends are counted, and
    what is stored is checked against what succeeded."""
    refused: dict[str, int] = dict.fromkeys(services, 0)
    problems: dict[str, list[str]] = {impl: [] for impl in services}

    async def work(impl: str, round_: int) -> int:
        service = services[impl]
        ident = f"writers-{impl}-{round_}"
        await service.create_session(app_name=APP, user_id="u", session_id=ident)

        async def one(task: int) -> int:
            copy = await service.get_session(app_name=APP, user_id="u", session_id=ident)
            assert copy is not None
            done = 0
            for index in range(sizes.per_task):
                try:
                    await service.append_event(copy, event(f"t{task}-{index}"))
                    done += 1
                except StaleSessionError:
                    refused[impl] += 1
                except Exception as error:  # what a service raises here is the finding
                    problems[impl].append(type(error).__name__)
            return done

        done = sum(await asyncio.gather(*(one(task) for task in range(WRITERS))))
        stored = await service.get_session(app_name=APP, user_id="u", session_id=ident)
        assert stored is not None
        if len(stored.events) != done:
            problems[impl].append(f"{done} appended, {len(stored.events)} stored")
        return done

    rates = await timed_rounds(sizes.rounds, list(services), work)
    row = Row(dialect, f"{WRITERS} writers on one session", "events/s", True, dict(rates))
    total = sizes.rounds * WRITERS * sizes.per_task
    notes = []
    for impl in services:
        found = problems[impl]
        listed = ", ".join(f"{found.count(name)}x {name}" for name in sorted(set(found)))
        notes.append(
            f"{impl}: {refused[impl]} of {total} refused as stale"
            + (f"; {listed}" if found else "")
        )
    row.note = "; ".join(notes)
    if refused.get(ORDERED) or problems.get(ORDERED):
        ORDERED_FAILURES.append(dialect)
    return row


async def run_dialect(dialect: str, sizes: Sizes) -> list[Row]:
    async with provision(dialect) as adk_target, provision(dialect) as mofa_target:
        url = adk_url(adk_target.url, adk_target.path)
        reference = DatabaseSessionService(url, **({} if adk_target.path else {"pool_size": 25}))
        try:
            await reference.prepare_tables()
            async with await mofa_persist.connect(mofa_target.url, pool_size=25) as store:
                services: dict[str, BaseSessionService] = {
                    ADK: reference,
                    MOFA: MofaSessionService(store),
                }
                rows = [
                    await append(services, sizes, dialect),
                    await newest(services, sizes, dialect),
                    await listing(services, sizes, dialect),
                ]
                services[ORDERED] = MofaSessionService(store, ordered=True)
                rows.append(await writers(services, sizes, dialect))
        finally:
            await reference.close()
    return rows


def shown(value: float | str | None) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
    return value or "-"


def table(rows: list[Row]) -> str:
    lines = [
        f"| dialect | workload | unit | {ADK} | {MOFA} | {MOFA} speed | {ORDERED} | "
        "ordered speed | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.dialect} | {row.workload} | {row.unit} | {shown(row.values.get(ADK))} | "
            f"{shown(row.values.get(MOFA))} | {row.ratio(MOFA)} | "
            f"{shown(row.values.get(ORDERED))} | {row.ratio(ORDERED)} | {row.note} |"
        )
    return "\n".join(lines)


def header(scale: float) -> str:
    return (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; scale {scale}; {platform.platform()}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores (shared with other work: "
        f"compare the ratios, taken in the same run, more than the absolute numbers); "
        f"google-adk {version('google-adk')}, SQLAlchemy {version('sqlalchemy')}, "
        f'mofa-persist {mofa_persist.__version__}. "speed" is how many times faster than '
        f"{ADK} (events/s ratio, or the inverse ratio of ms); events/s counts only appends "
        "that succeeded."
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
            rows.append(Row(dialect, "all", "", True, {}, f"skipped: {error}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers_adk")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 is the full size")
    parser.add_argument("--dialects", default=",".join(DIALECTS), help="comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "peers_adk.md")
    args = parser.parse_args(argv)
    dialects = [name.strip() for name in args.dialects.split(",") if name.strip()]
    unknown = set(dialects) - set(DIALECTS)
    if unknown:
        parser.error(f"unknown dialects: {sorted(unknown)}")
    logging.getLogger("google_adk").setLevel(logging.ERROR)
    rows = asyncio.run(main_async(args.scale, dialects))
    report = f"{header(args.scale)}\n\n{table(rows)}\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    title = "# Google ADK sessions: DatabaseSessionService vs MofaSessionService"
    args.out.write_text(f"{title}\n\n{report}")
    # The ordered mode promises that every append succeeds and is stored once.
    return 1 if ORDERED_FAILURES else 0


if __name__ == "__main__":
    raise SystemExit(main())
