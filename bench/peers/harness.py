"""One harness for every framework store: the same three workloads through public APIs.

Every store (a framework's own, this library's adapter for it, or the library itself) is a
:class:`PeerStore` in a fresh database of its own (several name a table ``sessions``). The
stores of a dialect take turns round by round in a rotating order, so load from elsewhere on
the machine hits them alike; each reports the median of its rounds and every ratio is taken
from the same run.

- append one: one message per call into one session, calls one after another (msg/s);
- 20 tasks, one session: 20 tasks append ``per_task`` messages each into ONE session at once
  (msg/s of the calls that succeeded); then every message must be stored once and each task's
  messages in its order (failures are counted, not hidden);
- newest 50: the newest 50 messages of a session of ``history`` messages (ms per call).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ..servers import Target

TASKS = 20
CONTEXT = 50
#: Connections per store (and no overflow): every store of a dialect is open at once, and
#: eight pools must fit under the server's limit (PostgreSQL's default is 100) beside other work.
POOL = 10
#: A short chat message (about 200 characters), the same for every store.
TEXT = "A plausible chat message about booking a flight to Lisbon next Tuesday morning. " * 2


@dataclass(frozen=True)
class Sizes:
    appends: int  # append one: calls per store, over all rounds
    history: int  # newest 50: messages in the session read
    reads: int  # newest 50: calls per store, over all rounds
    per_task: int  # 20 tasks: calls per task per round
    rounds: int

    @classmethod
    def for_scale(cls, scale: float) -> Sizes:
        def scaled(full: int, minimum: int) -> int:
            return max(minimum, round(full * scale))

        return cls(
            appends=scaled(2_000, 20),
            history=scaled(5_000, 100),
            reads=scaled(500, 20),
            per_task=scaled(100, 3),
            rounds=5 if scale >= 0.1 else 2,
        )


class PeerStore(ABC):
    """A session store measured by the harness. Handles are whatever the store needs."""

    framework: str  # "library", "OpenAI Agents", "Google ADK", "LangChain", "LangGraph"
    name: str  # the class measured, e.g. "SQLAlchemySession"
    ours: bool = False  # this library's own code (the library or one of its adapters)
    dialects: tuple[str, ...] = ("sqlite", "postgresql", "mysql")
    note: str = ""  # how the store does a workload, when it is not the obvious call

    @abstractmethod
    async def open(self, target: Target) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def session(self, key: str) -> Any:
        """A new, empty session named ``key``; returns the handle the other calls take."""

    @abstractmethod
    async def append(self, handle: Any, text: str) -> None: ...

    @abstractmethod
    async def newest(self, handle: Any, count: int) -> list[str]:
        """The newest ``count`` texts, oldest first."""

    @abstractmethod
    async def texts(self, handle: Any) -> list[str]:
        """Every text of the session in its stored order (for the checks; untimed)."""

    async def seed(self, handle: Any, count: int) -> None:
        """``count`` messages (untimed setup); stores with a batch call override this."""
        for index in range(count):
            await self.append(handle, f"h{index} {TEXT}")


@dataclass
class Row:
    dialect: str
    workload: str
    unit: str
    higher_is_better: bool
    values: dict[str, float] = field(default_factory=dict)  # store label -> median
    problems: dict[str, list[str]] = field(default_factory=dict)

    def speedup(self, ours: str, theirs: str) -> float:
        """How many times faster ``ours`` is than ``theirs`` (>1: faster)."""
        a, b = self.values.get(ours), self.values.get(theirs)
        if not a or not b:
            return float("nan")
        return a / b if self.higher_is_better else b / a


def label(store: PeerStore) -> str:
    """The store's name in tables and charts (its class name: unique across frameworks)."""
    return store.name


def _rotated(items: Sequence[PeerStore], index: int) -> list[PeerStore]:
    shift = index % len(items)
    return [*items[shift:], *items[:shift]]


async def _rounds(
    stores: Sequence[PeerStore], rounds: int, work: Callable[[PeerStore, int], Awaitable[int]]
) -> dict[str, float]:
    """``work(store, round)`` returns operations done; the median operations/s per store."""
    rates: dict[str, list[float]] = {label(s): [] for s in stores}
    for index in range(rounds):
        for store in _rotated(stores, index):
            start = time.perf_counter()
            done = await work(store, index)
            rates[label(store)].append(done / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


async def append_one(stores: Sequence[PeerStore], sizes: Sizes, dialect: str) -> Row:
    per_round = max(1, sizes.appends // sizes.rounds)

    async def work(store: PeerStore, round_: int) -> int:
        # A fresh session per round: LangGraph's checkpoint carries the whole history, so a
        # session that kept growing would measure its history length, not one append.
        handle = await store.session(f"append-{round_}")
        await store.append(handle, "warm-up")
        for index in range(per_round):
            await store.append(handle, f"m{index} {TEXT}")
        return per_round

    return Row(dialect, "append one", "msg/s", True, await _rounds(stores, sizes.rounds, work))


async def tasks_one_session(stores: Sequence[PeerStore], sizes: Sizes, dialect: str) -> Row:
    problems: dict[str, list[str]] = {label(s): [] for s in stores}

    async def work(store: PeerStore, round_: int) -> int:
        handle = await store.session(f"tasks-{round_}")
        found = problems[label(store)]

        async def one(task: int) -> int:
            done = 0
            for index in range(sizes.per_task):
                try:
                    await store.append(handle, f"t{task}-{index}")
                    done += 1
                except Exception as error:  # what a store raises here is the finding
                    if not any(f.startswith("first: ") for f in found):
                        text = " ".join(str(error).split()).replace("|", "/")[:160]
                        found.append(f"first: {type(error).__name__}: {text}")
                    found.append(type(error).__name__)
            return done

        done = sum(await asyncio.gather(*(one(task) for task in range(TASKS))))
        stored = await store.texts(handle)
        if len(stored) != done or len(set(stored)) != len(stored):
            found.append(f"{done} appended, {len(stored)} stored")
        for task in range(TASKS):
            mine = [int(t.rpartition("-")[2]) for t in stored if t.startswith(f"t{task}-")]
            if mine != sorted(mine):
                found.append("a task's messages out of order")
        return done

    rates = await _rounds(stores, sizes.rounds, work)
    return Row(dialect, f"{TASKS} tasks, one session", "msg/s", True, rates, problems)


async def newest_50(stores: Sequence[PeerStore], sizes: Sizes, dialect: str) -> Row:
    handles = {}
    for store in stores:
        handle = await store.session("history")
        await store.seed(handle, sizes.history)
        got = await store.newest(handle, CONTEXT)
        if len(got) != CONTEXT or not got[-1].startswith(f"h{sizes.history - 1} "):
            raise AssertionError(f"{label(store)}: wrong newest-{CONTEXT} window")
        handles[label(store)] = handle
    per_round = max(1, sizes.reads // sizes.rounds)

    async def work(store: PeerStore, _round: int) -> int:
        for _ in range(per_round):
            await store.newest(handles[label(store)], CONTEXT)
        return per_round

    rates = await _rounds(stores, sizes.rounds, work)
    values = {name: 1000 / rate for name, rate in rates.items()}
    return Row(dialect, f"newest {CONTEXT} of {sizes.history:,}", "ms", False, values)


WORKLOADS = (append_one, tasks_one_session, newest_50)
