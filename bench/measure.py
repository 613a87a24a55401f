"""Measurements and the helpers that take them fairly on a noisy machine.

Timed work is split into rounds and the implementations take turns round by round (in a
rotating order), so a burst of load from elsewhere hits all of them alike; each reports the
median of its rounds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .impls.base import Impl


@dataclass
class Measurement:
    """One number: a workload case on one backend by one implementation."""

    workload: str  # "W1 append"
    case: str  # "" or e.g. "100k history"
    backend: str
    impl: str  # floor / core / library
    value: float
    unit: str  # "msg/s", "ms", "MiB", ...
    higher_is_better: bool
    samples: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Check:
    """A correctness verdict (W5): failures make the run exit non-zero."""

    workload: str
    backend: str
    impl: str
    ok: bool
    detail: str


def rotated(impls: Sequence[Impl], index: int) -> list[Impl]:
    shift = index % len(impls)
    return [*impls[shift:], *impls[:shift]]


async def rate_rounds(
    impls: Sequence[Impl], rounds: int, work: Callable[[Impl, int], Awaitable[int]]
) -> dict[str, list[float]]:
    """Run ``work(impl, round)`` (returns operations done) round-robin; operations/s per round."""
    rates: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for index in range(rounds):
        for impl in rotated(impls, index):
            start = time.perf_counter()
            done = await work(impl, index)
            rates[impl.name].append(done / (time.perf_counter() - start))
    return rates


async def latency_rounds(
    impls: Sequence[Impl], repeats: int, work: Callable[[Impl], Awaitable[object]]
) -> dict[str, list[float]]:
    """Time ``work(impl)`` ``repeats`` times each, round-robin; milliseconds per call."""
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for impl in impls:  # warm-up: connections, prepared statements, caches
        await work(impl)
    for index in range(repeats):
        for impl in rotated(impls, index):
            start = time.perf_counter()
            await work(impl)
            times[impl.name].append((time.perf_counter() - start) * 1000)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
