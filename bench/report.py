"""Turn measurements into the terminal table, latest.json, latest.md and floors.png.

Every row is shown as a ratio to both references measured in the same run: the "equivalent
durable" floor (``floor``: counter + insert per message) and the minimal floor (``minimal``: one
autocommit INSERT per message); value / reference, so for throughput (msg/s) bigger is better
and for latency (ms) and memory smaller is better. The issues' targets are checked here and
printed beside the rows they judge.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from .measure import Check, Measurement

IMPLS = ("floor", "minimal", "core", "library")


@dataclass(frozen=True)
class Goal:
    """A target on the library's ratio to a comparator (``floor`` or ``core``)."""

    against: str
    bound: float  # minimum for throughput, maximum for time/memory


#: Keyed by workload, or by (workload, case) where the cases differ (issue 21's targets are on
#: the minimal floor; W2 and W6 keep the earlier ones).
GOALS: dict[str | tuple[str, str], Goal] = {
    "W1 append": Goal("minimal", 0.6),
    "W2 turn": Goal("floor", 0.7),
    "W3 newest-50": Goal("minimal", 1.5),
    "W4 list": Goal("minimal", 1.5),
    ("W5 concurrency", "own sessions"): Goal("minimal", 0.6),
    ("W5 concurrency", "shared session"): Goal("minimal", 0.5),
    "W6 import": Goal("core", 0.8),
}
#: Growth targets: the library's value at the largest case over the smallest one.
GROWTH = {"W3 newest-50": 1.3, "W4 list": 1.3, "W6 export peak": 1.5}


@dataclass
class Row:
    workload: str
    case: str
    backend: str
    unit: str
    higher_is_better: bool
    values: dict[str, float]
    verdict: str = ""  # "", "met", "MISSED"
    goal_text: str = ""

    def ratio(self, impl: str, against: str = "floor") -> float:
        base = self.values.get(against, math.nan)
        value = self.values.get(impl, math.nan)
        return value / base if base and not math.isnan(base) else math.nan


def build_rows(measurements: list[Measurement]) -> list[Row]:
    rows: dict[tuple[str, str, str], Row] = {}
    for m in measurements:
        key = (m.backend, m.workload, m.case)
        row = rows.setdefault(
            key, Row(m.workload, m.case, m.backend, m.unit, m.higher_is_better, {})
        )
        row.values[m.impl] = m.value
    for row in rows.values():
        goal = GOALS.get((row.workload, row.case)) or GOALS.get(row.workload)
        if goal is None:
            continue
        ratio = row.ratio("library", goal.against)
        if math.isnan(ratio):
            continue
        sign = ">=" if row.higher_is_better else "<="
        ok = ratio >= goal.bound if row.higher_is_better else ratio <= goal.bound
        row.verdict = "met" if ok else "MISSED"
        row.goal_text = f"lib/{goal.against} {ratio:.2f} {sign} {goal.bound:g}"
    return list(rows.values())


def growth_checks(rows: list[Row]) -> list[dict[str, Any]]:
    """The 'flat in size' targets: largest case / smallest case, library only."""
    found = []
    for backend in dict.fromkeys(row.backend for row in rows):
        for workload, bound in GROWTH.items():
            cases = [r for r in rows if r.backend == backend and r.workload == workload]
            if len(cases) < 2 or "library" not in cases[0].values:
                continue
            small, big = cases[0], cases[-1]
            ratio = big.values["library"] / small.values["library"]
            found.append(
                {
                    "backend": backend,
                    "workload": workload,
                    "cases": f"{big.case} / {small.case}",
                    "ratio": ratio,
                    "bound": bound,
                    "met": ratio <= bound,
                }
            )
    return found


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def table_lines(rows: list[Row], growth: list[dict[str, Any]], markdown: bool) -> list[str]:
    header = [
        "backend",
        "workload",
        "case",
        "unit",
        "floor",
        "minimal",
        "core",
        "library",
        "core/floor",
        "lib/floor",
        "core/min",
        "lib/min",
        "target",
    ]
    body = [
        [
            row.backend,
            row.workload,
            row.case,
            row.unit,
            _fmt(row.values.get("floor")),
            _fmt(row.values.get("minimal")),
            _fmt(row.values.get("core")),
            _fmt(row.values.get("library")),
            _fmt(row.ratio("core")),
            _fmt(row.ratio("library")),
            _fmt(row.ratio("core", "minimal")),
            _fmt(row.ratio("library", "minimal")),
            f"{row.goal_text} {row.verdict}".strip(),
        ]
        for row in rows
    ]
    body += [
        [
            g["backend"],
            g["workload"],
            g["cases"],
            "growth",
            "",
            "",
            "",
            _fmt(g["ratio"]),
            "",
            "",
            "",
            "",
            f"lib {g['ratio']:.2f} <= {g['bound']:g} {'met' if g['met'] else 'MISSED'}",
        ]
        for g in growth
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return lines + ["| " + " | ".join(cells) + " |" for cells in body]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    numeric = set(range(4, 12))

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *map(line, body)]


def machine() -> dict[str, Any]:
    """Where the run happened, for the README's table heading."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for text in info:
                if text.startswith("model name"):
                    cpu = text.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        import psutil

        memory = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def write_outputs(
    out: Path,
    *,
    meta: dict[str, Any],
    measurements: list[Measurement],
    checks: list[Check],
    errors: list[dict[str, str]],
) -> list[Row]:
    out.mkdir(parents=True, exist_ok=True)
    rows = build_rows(measurements)
    growth = growth_checks(rows)
    payload = {
        **meta,
        "measurements": [m.to_json() for m in measurements],
        "checks": [vars(c) for c in checks],
        "errors": errors,
        "growth": growth,
    }
    (out / "latest.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    stamp = meta["finished"]
    host = meta["machine"]
    heading = (
        f"Run {stamp} on {host['cpu']} ({host['cores']} cores, {host['memory_gib']} GiB), "
        f"{host['os']}, Python {host['python']}; scale {meta['scale']}; "
        f"servers: {', '.join(f'{k} {v}' for k, v in meta.get('servers', {}).items()) or '-'}."
    )
    md = [heading, "", *table_lines(rows, growth, markdown=True), ""]
    failed = [c for c in checks if not c.ok]
    md.append(
        f"W5 correctness: {len(checks) - len(failed)}/{len(checks)} runs with no lost, "
        "duplicated or reordered messages and no errors."
    )
    (out / "latest.md").write_text("\n".join(md) + "\n")
    try:
        title = f"mofa-persist vs the raw drivers ({stamp}, {host['cores']} cores)"
        chart(out / "floors.png", rows, title=title)
    except ImportError:
        print("matplotlib is not installed: no chart (install the 'bench' dependency group)")
    return rows


def chart(path: Path, rows: list[Row], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = [r for r in rows if r.workload != "W6 export peak"]
    labels = list(dict.fromkeys(f"{r.workload}\n{r.case}".strip() for r in judged))
    backends = list(dict.fromkeys(r.backend for r in judged))
    fig, axis = plt.subplots(figsize=(max(8, len(labels) * 1.0), 5))
    width = 0.8 / max(1, len(backends))
    for b_index, backend in enumerate(backends):
        speed = []
        floor = []
        for label in labels:
            row = next(
                (
                    r
                    for r in judged
                    if r.backend == backend and f"{r.workload}\n{r.case}".strip() == label
                ),
                None,
            )
            if row is None:
                speed.append(math.nan)
                floor.append(math.nan)
                continue
            lib, equivalent = row.ratio("library", "minimal"), row.ratio("library")
            # Speed relative to the minimal floor: 1.0 = one plain INSERT/SELECT, higher is
            # faster; the ticks are the same against the equivalent durable floor.
            speed.append(lib if row.higher_is_better else 1 / lib)
            floor.append(equivalent if row.higher_is_better else 1 / equivalent)
        xs = [i + (b_index - (len(backends) - 1) / 2) * width for i in range(len(labels))]
        axis.bar(xs, speed, width, label=f"library on {backend}")
        axis.scatter(xs, floor, marker="_", s=120, color="black", zorder=3)
    axis.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(labels)), labels, fontsize=7)
    axis.set_ylabel("library speed / minimal floor (1.0)")
    axis.set_title(f"{title}\nbars: vs the minimal floor; black ticks: vs the equivalent floor")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finished() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
