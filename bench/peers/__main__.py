"""``python -m bench.peers [--scale S] [--dialects ...]`` (``nox -s bench-peers``).

Per dialect, every store that supports it (this library, the OpenAI Agents SDK's
``SQLAlchemySession`` and ``MofaSession``, ADK's ``DatabaseSessionService`` and
``MofaSessionService``, LangChain's ``SQLChatMessageHistory``, LangGraph's official savers and
``MofaSaver``), each in a fresh database, runs the harness's workloads. Outputs: a table on
stdout, ``bench/results/peers.md`` and the README chart ``bench/results/latest.png`` (the
library's speed over each peer's, and each adapter's over its framework's store). Exit status 1
if one of this library's stores lost, duplicated, reordered or failed a message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import IN_CI, RESULTS_DIR
from ..servers import Unreachable, provision
from .harness import WORKLOADS, PeerStore, Row, Sizes, label

if TYPE_CHECKING:
    from collections.abc import Sequence

DIALECTS = ("sqlite", "postgresql", "mysql")
PACKAGES = (
    "mofa-persist",
    "openai-agents",
    "google-adk",
    "langchain-community",
    "langgraph-checkpoint",
    "langgraph-checkpoint-postgres",
    "langgraph-checkpoint-sqlite",
    "sqlalchemy",
)


FRAMEWORKS = ("openai-agents", "adk", "langchain", "langgraph")


def _framework(name: str) -> list[PeerStore]:
    """The stores of one framework (ImportError when it is not installed)."""
    if name == "openai-agents":
        from .agents import MofaSessionStore, SdkSession

        return [SdkSession(), MofaSessionStore()]
    if name == "adk":
        from .adk import AdkDatabase, MofaAdk

        return [AdkDatabase(), MofaAdk()]
    if name == "langchain":
        from .langchain import LangChainHistory

        return [LangChainHistory()]
    from .langgraph import MofaSaverStore, OfficialSaver

    return [OfficialSaver(), MofaSaverStore()]


def stores(frameworks: Sequence[str] = FRAMEWORKS) -> tuple[list[PeerStore], list[str]]:
    """The library and every chosen framework's stores that are installed; the missing."""
    from .library import LibraryStore

    found: list[PeerStore] = [LibraryStore()]
    missing: list[str] = []
    for name in frameworks:
        try:
            found += _framework(name)
        except ImportError as error:
            missing.append(f"{name} ({error.name})")
    return found, missing


#: Every store measured: its label -> (framework, ours).
Seen = dict[str, tuple[str, bool]]


async def run_dialect(
    dialect: str, frameworks: Sequence[str], sizes: Sizes, problems: list[str], seen: Seen
) -> list[Row]:
    candidates, _ = stores(frameworks)
    chosen = [s for s in candidates if dialect in s.dialects]
    async with contextlib.AsyncExitStack() as stack:
        for store in chosen:
            target = await stack.enter_async_context(provision(dialect))
            await store.open(target)
            stack.push_async_callback(store.close)
            seen[label(store)] = (store.framework, store.ours)
        rows = []
        for workload in WORKLOADS:
            started = time.perf_counter()
            try:
                row = await workload(chosen, sizes, dialect)
            except Exception as error:
                traceback.print_exc()
                problems.append(f"{dialect} {workload.__name__}: {error!r}")
                continue
            row.problems.setdefault("_notes", [])
            for store in chosen:
                if store.note:
                    row.problems["_notes"].append(f"{label(store)}: {store.note}")
            rows.append(row)
            print(f"  {dialect} {row.workload} ({time.perf_counter() - started:.0f}s)", flush=True)
            for store in chosen:
                if store.ours and row.problems.get(label(store)):
                    problems.append(f"{dialect} {label(store)}: {row.problems[label(store)][:3]}")
    return rows


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def table(rows: list[Row], seen: Seen) -> list[str]:
    library = "mofa_persist.Store"
    adapters = {fw: name for name, (fw, ours) in seen.items() if ours and fw != "library"}
    lines = [
        "| dialect | workload | store | value | library x | adapter x | problems |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for name, (framework, ours) in seen.items():
            if name not in row.values:
                continue
            peer = not ours
            adapter = adapters.get(framework)
            found = row.problems.get(name, [])
            counted = ", ".join(f"{found.count(p)}x {p}" for p in sorted(set(found)))
            lines.append(
                f"| {row.dialect} | {row.workload} | {name} | "
                f"{_fmt(row.values[name])} {row.unit} | "
                f"{_fmt(row.speedup(library, name)) if peer else ''} | "
                f"{_fmt(row.speedup(adapter, name)) if peer and adapter else ''} | "
                f"{counted} |"
            )
    return lines


def heading(scale: float, wall: float) -> str:
    versions = []
    for package in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            versions.append(f"{package} {version(package)}")
    return (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"{platform.platform()}, Python {platform.python_version()}; scale {scale}; wall "
        f"{wall:.0f}s; {', '.join(versions)}. Each store in its own fresh database; medians of "
        'rounds taken in turn. "library x": how many times faster `mofa_persist.Store` is '
        'than that store (msg/s ratio, or the inverse ratio of ms); "adapter x": the same for '
        "this library's adapter for that framework. msg/s counts only calls that succeeded."
    )


def chart(path: Path, rows: list[Row], seen: Seen, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r.workload for r in rows))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4.8), sharey=True)
    axes = list(axes) if len(workloads) > 1 else [axes]
    names = [name for name, (_, ours) in seen.items() if not ours]
    width = 0.8 / max(1, len(names))
    for axis, workload in zip(axes, workloads, strict=True):
        chosen = [r for r in rows if r.workload == workload]
        dialects = [r.dialect for r in chosen]
        for index, name in enumerate(names):
            values = [r.speedup("mofa_persist.Store", name) for r in chosen]
            xs = [d + (index - (len(names) - 1) / 2) * width for d in range(len(dialects))]
            axis.bar(xs, values, width, label=f"vs {name}")
        axis.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        axis.set_yscale("log")
        axis.set_xticks(range(len(dialects)), dialects)
        axis.set_title(workload, fontsize=9)
    axes[0].set_ylabel("mofa_persist speed / peer's speed (log; >1: faster)")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 is the full size")
    parser.add_argument("--dialects", default=",".join(DIALECTS), help="comma-separated")
    parser.add_argument(
        "--frameworks",
        default=",".join(FRAMEWORKS),
        help="comma-separated; a subset writes peers_<names>.md and no chart",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    args = parser.parse_args(argv)
    dialects = [d.strip() for d in args.dialects.split(",") if d.strip()]
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if set(dialects) - set(DIALECTS) or set(frameworks) - set(FRAMEWORKS) or args.scale <= 0:
        parser.error(
            f"dialects are among {DIALECTS}, frameworks among {FRAMEWORKS}; "
            "--scale must be positive"
        )
    _, missing = stores(frameworks)
    seen: Seen = {}
    for framework in missing:
        print(f"*** not installed, not measured: {framework} ***", flush=True)
    sizes = Sizes.for_scale(args.scale)
    problems: list[str] = []
    rows: list[Row] = []
    started = time.perf_counter()
    for dialect in dialects:
        print(f"== {dialect}", flush=True)
        try:
            rows += asyncio.run(run_dialect(dialect, frameworks, sizes, problems, seen))
        except Unreachable as error:
            if IN_CI:
                raise
            print(f"*** SKIPPING {dialect}: {error} ***", flush=True)
    notes = sorted({n for r in rows for n in r.problems.get("_notes", [])})
    report = [heading(args.scale, time.perf_counter() - started), "", *table(rows, seen)]
    report += ["", *(f"- {n}" for n in notes), *(f"- not measured: {m}" for m in missing)]
    print("\n".join(report))
    args.out.mkdir(parents=True, exist_ok=True)
    whole = set(frameworks) == set(FRAMEWORKS)
    name = "peers.md" if whole else f"peers_{'_'.join(frameworks).replace('-', '_')}.md"
    (args.out / name).write_text("# Framework stores, one run\n\n" + "\n".join(report) + "\n")
    title = (
        f"mofa-persist vs framework session stores, {datetime.now(UTC):%Y-%m-%d}, "
        f"{os.cpu_count()} cores, scale {args.scale}"
    )
    if whole:  # the README chart is drawn from full runs only
        try:
            chart(args.out / "latest.png", rows, seen, title)
        except ImportError:
            print("matplotlib is not installed: no chart")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
