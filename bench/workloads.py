"""The six workloads of the issue, written once against :class:`~bench.impls.base.Impl`.

Each returns measurements (and W5 also correctness checks); an exception means the workload
errored on that backend. Setup (seeding histories and session tables) is never timed.
"""

from __future__ import annotations

import asyncio
import random
import time
import tracemalloc
import uuid
from typing import TYPE_CHECKING

from .impls.base import CONTENT
from .measure import Check, Measurement, latency_rounds, median, rate_rounds
from .multiproc import PROCESSES, TASKS_PER_PROCESS, Workers

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .config import Sizes
    from .impls.base import Impl

Results = tuple[list[Measurement], list[Check]]


def _label(count: int) -> str:
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else str(count)


def _emit(
    backend: str,
    workload: str,
    case: str,
    samples: dict[str, list[float]],
    unit: str,
    higher_is_better: bool,
) -> list[Measurement]:
    return [
        Measurement(workload, case, backend, name, median(values), unit, higher_is_better, values)
        for name, values in samples.items()
    ]


def _chunks(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


async def w1_append(backend: str, impls: Sequence[Impl], sizes: Sizes) -> Results:
    """One session, one durable append_message per call."""
    sessions = {impl.name: await impl.create_session(uuid.uuid4()) for impl in impls}
    chunks = _chunks(sizes.append, sizes.rounds)

    async def work(impl: Impl, index: int) -> int:
        sid = sessions[impl.name]
        for _ in range(chunks[index]):
            await impl.append(sid, "user", CONTENT)
        return chunks[index]

    rates = await rate_rounds(impls, sizes.rounds, work)
    for impl in impls:  # the history must be complete and gap-free
        rows = await impl.read_all(sessions[impl.name])
        if [seq for seq, _ in rows] != list(range(1, sizes.append + 1)):
            raise AssertionError(f"W1 {impl.name}: history is not 1..{sizes.append}")
    return _emit(backend, "W1 append", "", rates, "msg/s", True), []


async def w2_turn(backend: str, impls: Sequence[Impl], sizes: Sizes) -> Results:
    """record_turn: user + assistant message + state snapshot, one transaction each."""
    sessions = {impl.name: await impl.create_session(uuid.uuid4()) for impl in impls}
    chunks = _chunks(sizes.turns, sizes.rounds)

    async def work(impl: Impl, index: int) -> int:
        sid = sessions[impl.name]
        for _ in range(chunks[index]):
            await impl.turn(sid, CONTENT, CONTENT)
        return chunks[index]

    rates = await rate_rounds(impls, sizes.rounds, work)
    return _emit(backend, "W2 turn", "", rates, "turn/s", True), []


async def w3_context(backend: str, impls: Sequence[Impl], sizes: Sizes) -> Results:
    """Newest 50 messages of sessions holding 1k, 10k and 100k messages."""
    out: list[Measurement] = []
    for history in sizes.histories:
        sessions = {}
        for impl in impls:
            sid = await impl.create_session(uuid.uuid4())
            await impl.seed_messages(sid, history)
            sessions[impl.name] = sid
        expected = list(range(history - sizes.context + 1, history + 1))

        async def work(
            impl: Impl, sessions: dict[str, uuid.UUID] = sessions, expected: list[int] = expected
        ) -> None:
            rows = await impl.newest(sessions[impl.name], sizes.context)
            if [seq for seq, _ in rows] != expected:
                raise AssertionError(f"W3 {impl.name}: wrong newest-{sizes.context} window")

        times = await latency_rounds(impls, sizes.reads, work)
        out += _emit(backend, "W3 newest-50", f"{_label(history)} history", times, "ms", False)
    return out, []


async def w4_sessions(backend: str, impls: Sequence[Impl], sizes: Sizes) -> Results:
    """Create sessions; list a user's first page with 1k and then 100k sessions stored."""
    out: list[Measurement] = []
    for impl in impls:
        await impl.reset()
    target = {impl.name: uuid.uuid4() for impl in impls}
    others = [uuid.uuid4() for _ in range(max(10, sizes.sessions_big // 100))]
    chunks = _chunks(sizes.sessions_created, sizes.rounds)
    made = dict.fromkeys(target, 0)

    async def create(impl: Impl, index: int) -> int:
        for _ in range(chunks[index]):
            # Every 10th session is the listed user's: 100 of the 1k at full scale.
            user = target[impl.name] if made[impl.name] % 10 == 0 else random.choice(others)
            await impl.create_session(user)
            made[impl.name] += 1
        return chunks[index]

    rates = await rate_rounds(impls, sizes.rounds, create)
    out += _emit(backend, "W4 create", "", rates, "session/s", True)
    wanted = min(sizes.page, -(-sizes.sessions_created // 10))

    async def listing(impl: Impl) -> None:
        found = await impl.list_sessions(target[impl.name], sizes.page)
        if len(found) != wanted:
            raise AssertionError(f"W4 {impl.name}: listed {len(found)}, expected {wanted}")

    for total in (sizes.sessions_created, sizes.sessions_big):
        if total > sizes.sessions_created:
            extra = total - sizes.sessions_created
            for impl in impls:
                await impl.seed_sessions([random.choice(others) for _ in range(extra)])
        times = await latency_rounds(impls, sizes.reads, listing)
        out += _emit(backend, "W4 list", f"{_label(total)} sessions", times, "ms", False)
    return out, []


async def _concurrent(
    impl: Impl, sizes: Sizes, shared: bool
) -> tuple[float, list[BaseException], list[str]]:
    """20 tasks x N appends; returns (messages/s, errors, correctness problems)."""
    if shared:
        one = await impl.create_session(uuid.uuid4())
        targets = [one] * sizes.tasks
    else:
        targets = [await impl.create_session(uuid.uuid4()) for _ in range(sizes.tasks)]

    async def task(number: int) -> None:
        for index in range(sizes.per_task):
            await impl.append(targets[number], "user", f"t{number}-{index}")

    start = time.perf_counter()
    outcomes = await asyncio.gather(
        *(task(number) for number in range(sizes.tasks)), return_exceptions=True
    )
    elapsed = time.perf_counter() - start
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    problems: list[str] = []
    for sid in dict.fromkeys(targets):
        rows = await impl.read_all(sid)
        problems += _check_history(
            rows, sizes, [t for t in range(sizes.tasks) if targets[t] == sid]
        )
    return sizes.tasks * sizes.per_task / elapsed, errors, problems


def _check_history(
    rows: list[tuple[int, str]], sizes: Sizes, tasks: list[int], gapless: bool = True
) -> list[str]:
    """Lost, duplicated, out-of-order messages, and (if ``gapless``) gaps in seq."""
    problems = []
    seqs = [seq for seq, _ in rows]
    if gapless and seqs != list(range(1, len(rows) + 1)):
        problems.append("seq is not gap-free 1..n")
    contents = [content for _, content in rows]
    expected = {f"t{t}-{i}" for t in tasks for i in range(sizes.per_task)}
    if len(set(contents)) != len(contents):
        problems.append(f"{len(contents) - len(set(contents))} duplicated messages")
    lost = expected - set(contents)
    if lost:
        problems.append(f"{len(lost)} lost messages")
    position = {content: seq for seq, content in rows}
    for t in tasks:
        order = [position[f"t{t}-{i}"] for i in range(sizes.per_task) if f"t{t}-{i}" in position]
        if order != sorted(order):
            problems.append(f"task {t}'s messages are out of order")
    return problems


async def w5_concurrency(backend: str, impls: Sequence[Impl], sizes: Sizes) -> Results:
    """20 concurrent writers, each into its own session and all into one shared session."""
    out: list[Measurement] = []
    checks: list[Check] = []
    for shared in (False, True):
        case = "shared session" if shared else "own sessions"
        rates: dict[str, list[float]] = {impl.name: [] for impl in impls}
        for _ in range(max(1, min(2, sizes.rounds))):
            for impl in impls:
                rate, errors, problems = await _concurrent(impl, sizes, shared)
                rates[impl.name].append(rate)
                details = [f"{len(errors)} errors ({errors[0]!r})"] if errors else []
                details += problems
                checks.append(
                    Check(f"W5 {case}", backend, impl.name, not details, "; ".join(details))
                )
        out += _emit(backend, "W5 concurrency", case, rates, "msg/s", True)
    if backend != "memory":  # an in-memory database cannot be shared between processes
        found, verdicts = await _w5_processes(backend, impls, sizes)
        out += found
        checks += verdicts
    return out, checks


async def _w5_processes(backend: str, impls: Sequence[Impl], sizes: Sizes) -> Results:
    """4 processes x 5 tasks into one session, each process with its own pool or Store.

    The minimal floor's seq comes from process memory, so across processes it is not
    gap-free (that is what a counter is for): only loss, duplicates and order are checked.
    """
    case = f"{PROCESSES} procs x {TASKS_PER_PROCESS} tasks, shared"
    if sizes.scale < 0.05:  # smoke-sized: prove the library's path; spawning costs seconds
        impls = [impl for impl in impls if impl.name == "library"]
    rates: dict[str, list[float]] = {impl.name: [] for impl in impls}
    checks: list[Check] = []
    workers = await asyncio.to_thread(Workers)
    try:
        for impl in impls:
            sid = await impl.create_session(uuid.uuid4())
            target = impl.target  # type: ignore[attr-defined]
            rate, errors = await asyncio.to_thread(
                workers.run, impl.name, target, sid, sizes.per_task
            )
            rates[impl.name].append(rate)
            tasks = list(range(PROCESSES * TASKS_PER_PROCESS))
            problems = _check_history(
                await impl.read_all(sid), sizes, tasks, gapless=impl.name != "minimal"
            )
            details = [f"{len(errors)} errors ({errors[0]})"] if errors else []
            checks.append(
                Check(
                    f"W5 {case}",
                    backend,
                    impl.name,
                    not (details + problems),
                    "; ".join(details + problems),
                )
            )
    finally:
        await asyncio.to_thread(workers.close)
    return _emit(backend, "W5 concurrency", case, rates, "msg/s", True), checks


async def _export(impl: Impl, sid: uuid.UUID, page: int) -> int:
    count = 0
    async for _seq, content in impl.export(sid, page):
        count += len(content) > 0
    return count


async def _peak_mib(run: Callable[[], Awaitable[int]]) -> float:
    tracemalloc.start()
    try:
        await run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


async def w6_bulk(backend: str, impls: Sequence[Impl], sizes: Sizes) -> Results:
    """Import with batches of append_messages; export by streaming; export's peak memory."""
    out: list[Measurement] = []
    sessions = {impl.name: await impl.create_session(uuid.uuid4()) for impl in impls}
    chunks = _chunks(sizes.bulk, sizes.rounds)
    batch = [("user", CONTENT)] * sizes.batch

    async def load(impl: Impl, index: int) -> int:
        left = chunks[index]
        while left:
            size = min(left, sizes.batch)
            await impl.append_batch(sessions[impl.name], batch[:size])
            left -= size
        return chunks[index]

    rates = await rate_rounds(impls, sizes.rounds, load)
    out += _emit(backend, "W6 import", f"{_label(sizes.bulk)} msgs", rates, "msg/s", True)

    async def dump(impl: Impl, index: int) -> int:
        count = await _export(impl, sessions[impl.name], sizes.export_page)
        if count != sizes.bulk:
            raise AssertionError(f"W6 {impl.name}: exported {count} of {sizes.bulk}")
        return count

    rates = await rate_rounds(impls, max(1, min(2, sizes.rounds)), dump)
    out += _emit(backend, "W6 export", f"{_label(sizes.bulk)} msgs", rates, "msg/s", True)

    small = max(sizes.export_page, sizes.bulk // 10)
    for impl in impls:
        sid = await impl.create_session(uuid.uuid4())
        await impl.seed_messages(sid, small)
        for count, session in ((small, sid), (sizes.bulk, sessions[impl.name])):

            async def run(session: uuid.UUID = session, impl: Impl = impl) -> int:
                return await _export(impl, session, sizes.export_page)

            peak = await _peak_mib(run)
            case = f"{_label(count)} msgs"
            out.append(
                Measurement("W6 export peak", case, backend, impl.name, peak, "MiB", False, [peak])
            )
    return out, []


WORKLOADS: dict[str, Callable[[str, Sequence[Impl], Sizes], Awaitable[Results]]] = {
    "W1": w1_append,
    "W2": w2_turn,
    "W3": w3_context,
    "W5": w5_concurrency,
    "W6": w6_bulk,
    "W4": w4_sessions,  # last: it empties the tables first
}
