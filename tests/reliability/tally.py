"""Counts the reliability tests measured, printed as a table at the end of the run."""

from __future__ import annotations

from collections import defaultdict

#: (check, backend) -> counter name -> value; summed over the tests of the run.
COUNTS: defaultdict[tuple[str, str], defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))


def add(check: str, backend: str, **counters: int) -> None:
    for name, value in counters.items():
        COUNTS[check, backend][name] += value


def lines() -> list[str]:
    rows = [
        f"| {check} | {backend} | "
        + ", ".join(f"{name}={value}" for name, value in counters.items())
        + " |"
        for (check, backend), counters in sorted(COUNTS.items())
    ]
    if not rows:
        return []
    return ["| check | backend | counts |", "| --- | --- | --- |", *rows]
