"""Size growth at full scale: ``python -m bench.scale --scale 1`` (``nox -s bench_scale``).

The library alone, per backend, in a fresh database: W3 (newest 50) on a session of 1M
messages against the same read on a 1k-message session, W4 (a user's first page of 50) with
1M sessions stored against 1k sessions, and the peak memory (tracemalloc) of exporting the 1M
messages against exporting 1k. Each big case is reported as a ratio to its 1k case; the
targets are <= 1.3x for the reads. ``--scale`` shrinks only the big sizes (the small cases stay
at 1k). Setup is untimed and takes most of the wall time (seeding goes through the library's
own batch path). Results: stdout and ``bench/results/scale.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .config import IN_CI, RESULTS_DIR
from .impls.library import LibraryImpl
from .measure import latency_rounds, median
from .report import finished, machine
from .servers import Unreachable, provision
from .workloads import _export, _peak_mib

BACKENDS = ("sqlite", "postgresql", "mysql")
SMALL = 1_000
CONTEXT = 50
PAGE = 50
READS = 200
TARGET = 1.3


@dataclass
class Figure:
    backend: str
    what: str
    small: float
    big: float
    unit: str
    bound: float | None

    @property
    def ratio(self) -> float:
        return self.big / self.small if self.small else float("nan")


def _label(count: int) -> str:
    if count >= 1_000_000 and count % 1_000_000 == 0:
        return f"{count // 1_000_000}M"
    return f"{count // 1000}k" if count % 1000 == 0 else str(count)


async def _seed_history(impl: LibraryImpl, count: int) -> uuid.UUID:
    sid = await impl.create_session(uuid.uuid4())
    await impl.seed_messages(sid, count)
    return sid


async def _newest_ms(impl: LibraryImpl, cases: list[tuple[uuid.UUID, int]]) -> list[float]:
    """Median ms of the newest-50 read per (session, history) case, the cases read in turn
    (rotating order) so that load from elsewhere hits them alike."""
    times: list[list[float]] = [[] for _ in cases]
    for index in range(READS + 1):  # the first pass warms up and is not counted
        order = list(range(len(cases)))
        order = order[index % len(cases) :] + order[: index % len(cases)]
        for case in order:
            sid, history = cases[case]
            start = time.perf_counter()
            rows = await impl.newest(sid, CONTEXT)
            elapsed = (time.perf_counter() - start) * 1000
            if [seq for seq, _ in rows] != list(range(history - CONTEXT + 1, history + 1)):
                raise AssertionError("wrong newest-50 window")
            if index:
                times[case].append(elapsed)
    return [median(t) for t in times]


async def _list_ms(impl: LibraryImpl, user: uuid.UUID, wanted: int) -> float:
    async def listing(_impl: object) -> None:
        found = await impl.list_sessions(user, PAGE)
        if len(found) != wanted:
            raise AssertionError(f"listed {len(found)}, expected {wanted}")

    times = await latency_rounds([impl], READS, listing)  # type: ignore[arg-type]
    return median(times[impl.name])


async def run_backend(backend: str, big: int) -> list[Figure]:
    figures: list[Figure] = []
    async with provision(backend) as target:
        impl = LibraryImpl(target)
        await impl.open()
        try:
            started = time.perf_counter()
            small_sid = await _seed_history(impl, SMALL)
            big_sid = await _seed_history(impl, big)
            print(f"  {backend}: seeded {big:,} messages in {time.perf_counter() - started:.0f}s")
            figures.append(
                Figure(
                    backend,
                    f"W3 newest-50, {_label(big)} vs 1k history",
                    *await _newest_ms(impl, [(small_sid, SMALL), (big_sid, big)]),
                    "ms",
                    TARGET,
                )
            )
            peaks = []
            for sid, count in ((small_sid, SMALL), (big_sid, big)):

                async def run(sid: uuid.UUID = sid) -> int:
                    return await _export(impl, sid, 1_000)

                started = time.perf_counter()
                peaks.append(await _peak_mib(run))
                print(f"  {backend}: export of {count:,} ({time.perf_counter() - started:.0f}s)")
            figures.append(
                Figure(backend, f"W6 export peak, {_label(big)} vs 1k msgs", *peaks, "MiB", None)
            )
            await impl.reset()
            user = uuid.uuid4()
            others = [uuid.uuid4() for _ in range(1_000)]
            await impl.seed_sessions([user] * 100 + [random.choice(others) for _ in range(900)])
            small_ms = await _list_ms(impl, user, PAGE)
            started = time.perf_counter()
            await impl.seed_sessions([random.choice(others) for _ in range(big - SMALL)])
            print(f"  {backend}: seeded {big:,} sessions in {time.perf_counter() - started:.0f}s")
            big_ms = await _list_ms(impl, user, PAGE)
            figures.append(
                Figure(
                    backend,
                    f"W4 list, {_label(big)} vs 1k sessions",
                    small_ms,
                    big_ms,
                    "ms",
                    TARGET,
                )
            )
        finally:
            await impl.close()
    return figures


def lines(figures: list[Figure]) -> list[str]:
    out = [
        "| backend | figure | unit | 1k | big | big / 1k | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        verdict = "-"
        if f.bound is not None:
            verdict = f"<= {f.bound:g} {'met' if f.ratio <= f.bound else 'MISSED'}"
        out.append(
            f"| {f.backend} | {f.what} | {f.unit} | {f.small:.3f} | {f.big:.3f} | "
            f"{f.ratio:.2f} | {verdict} |"
        )
    return out


async def main_async(scale: float, backends: list[str]) -> list[Figure]:
    big = max(SMALL * 2, round(1_000_000 * scale))
    figures: list[Figure] = []
    for backend in backends:
        print(f"== {backend}", flush=True)
        try:
            figures += await run_backend(backend, big)
        except Unreachable as error:
            if IN_CI:
                raise
            print(f"*** SKIPPING {backend}: {error} ***")
        print("\n".join(lines([f for f in figures if f.backend == backend])), flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0: 1M messages/sessions")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "scale.md")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if set(backends) - set(BACKENDS) or args.scale <= 0:
        parser.error(f"backends are among {BACKENDS}; --scale must be positive")
    started = time.perf_counter()
    figures = asyncio.run(main_async(args.scale, backends))
    host = machine()
    heading = (
        f"Run {finished()} on {host['cpu']} ({host['cores']} cores), Python {host['python']}; "
        f"scale {args.scale}; wall {time.perf_counter() - started:.0f}s. Library only; "
        f"medians of {READS} reads; export peak by tracemalloc, pages of 1,000."
    )
    report = "\n".join([heading, "", *lines(figures), ""])
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Size growth (bench.scale)\n\n{report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
