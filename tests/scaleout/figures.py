"""What the scale-out suite measured, printed at the end of the run (and written as JSON to
``MOFA_SCALEOUT_FIGURES`` when that is set): throughput, writes lost, replica lag."""

from __future__ import annotations

from typing import Any

FIGURES: dict[str, dict[str, Any]] = {}


def record(name: str, **values: Any) -> None:
    FIGURES.setdefault(name, {}).update(values)


def lines() -> list[str]:
    return [
        f"{name}: " + ", ".join(f"{key}={value}" for key, value in values.items())
        for name, values in FIGURES.items()
    ]
