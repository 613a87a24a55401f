"""W5 across processes: 4 processes x 5 tasks appending into one session, each its own Store.

Each child opens its own implementation (its own pool or ``Store``) on the run's database,
waits at a barrier so that all start together, runs its tasks and reports its start and end on
the shared monotonic clock (``perf_counter`` is ``CLOCK_MONOTONIC``, one clock for the whole
machine), so the rate is all messages over (last end - first start). Children are spawned,
not forked: the parent has an event loop and open connections.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uuid
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

    from .servers import Target

PROCESSES = 4
TASKS_PER_PROCESS = 5
#: Seconds a child may take to start (imports, connecting) and to finish its appends.
START_TIMEOUT = 120.0
RUN_TIMEOUT = 600.0


def _worker(process: int, barrier: Barrier, jobs: Queue[Any], results: Queue[Any]) -> None:
    """One child: runs jobs (one per implementation) until it gets ``None``."""
    while (job := jobs.get()) is not None:
        impl_name, target, sid, per_task = job
        try:
            results.put(asyncio.run(_append(impl_name, target, sid, process, per_task, barrier)))
        except BaseException as error:  # reported to the parent, which fails the check
            barrier.abort()
            results.put((process, 0.0, 0.0, [f"child {process}: {error!r}"]))


async def _append(
    impl_name: str, target: Target, sid: uuid.UUID, process: int, per_task: int, barrier: Barrier
) -> tuple[int, float, float, list[str]]:
    from .cli import make_impls

    impl = next(i for i in make_impls(target) if i.name == impl_name)
    await impl.open()
    try:

        async def task(number: int) -> None:
            for index in range(per_task):
                await impl.append(sid, "user", f"t{number}-{index}")

        barrier.wait(START_TIMEOUT)
        start = time.perf_counter()
        numbers = [process * TASKS_PER_PROCESS + t for t in range(TASKS_PER_PROCESS)]
        outcomes = await asyncio.gather(*(task(n) for n in numbers), return_exceptions=True)
        end = time.perf_counter()
        errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
        return process, start, end, errors
    finally:
        await impl.close()


class Workers:
    """Four spawned children, started once and reused for every implementation."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.barrier = context.Barrier(PROCESSES)
        self.results: Queue[Any] = context.Queue()
        self.jobs: list[Queue[Any]] = [context.Queue() for _ in range(PROCESSES)]
        self.children = [
            context.Process(target=_worker, args=(p, self.barrier, self.jobs[p], self.results))
            for p in range(PROCESSES)
        ]
        for child in self.children:
            child.start()

    def run(
        self, impl_name: str, target: Target, sid: uuid.UUID, per_task: int
    ) -> tuple[float, list[str]]:
        """Messages/s of the 4 x 5 tasks into ``sid``, and the errors the children met."""
        self.barrier.reset()
        for jobs in self.jobs:
            jobs.put((impl_name, target, sid, per_task))
        found: list[tuple[int, float, float, list[str]]] = []
        errors: list[str] = []
        try:
            for _ in self.children:
                found.append(self.results.get(timeout=START_TIMEOUT + RUN_TIMEOUT))
        except queue.Empty:
            errors.append("a child process did not report in time")
        for _process, _start, _end, problems in found:
            errors += problems
        if errors or len(found) < PROCESSES:
            return 0.0, errors
        elapsed = max(f[2] for f in found) - min(f[1] for f in found)
        return PROCESSES * TASKS_PER_PROCESS * per_task / elapsed, errors

    def close(self) -> None:
        for jobs in self.jobs:
            jobs.put(None)
        for child in self.children:
            child.join(30)
            if child.is_alive():
                child.kill()
                child.join()
        for q in (*self.jobs, self.results):
            q.close()
            q.join_thread()
