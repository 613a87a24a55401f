"""Run settings: which backends, how big, where the servers are.

Every size is the issue's full-scale number times ``--scale``, with small floors so a smoke run
still exercises every code path (W5 keeps its 20 tasks: concurrency is the point of it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("memory", "sqlite", "postgresql", "mysql")
SERVER_BACKENDS = ("postgresql", "mysql")

# The same variables the test suite reads (the nox sessions pass them through).
POSTGRES_ADMIN_URL = os.environ.get(
    "MOFA_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
MYSQL_ADMIN_URL = os.environ.get("MOFA_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _scaled(full: int, scale: float, minimum: int) -> int:
    return max(minimum, round(full * scale))


@dataclass(frozen=True)
class Sizes:
    """Workload sizes for one run."""

    scale: float
    append: int  # W1 messages, one append_message each
    turns: int  # W2 record_turn calls
    histories: tuple[int, ...]  # W3 history sizes
    context: int  # W3 newest-N
    reads: int  # W3/W4 repetitions of each read, per implementation
    sessions_created: int  # W4 create_session calls (the "1k" table)
    sessions_big: int  # W4 the "100k" table
    page: int  # W4 list page size
    tasks: int  # W5 concurrent tasks
    per_task: int  # W5 messages per task
    bulk: int  # W6 messages imported and exported
    batch: int  # W6 messages per append_messages call
    export_page: int  # W6 messages per export page
    rounds: int  # timed work is split into this many interleaved rounds

    @classmethod
    def for_scale(cls, scale: float) -> Sizes:
        if scale <= 0:
            raise ValueError("--scale must be positive")
        return cls(
            scale=scale,
            append=_scaled(2_000, scale, 20),
            turns=_scaled(1_000, scale, 10),
            histories=(
                _scaled(1_000, scale, 60),
                _scaled(10_000, scale, 100),
                _scaled(100_000, scale, 1_000),
            ),
            context=50,
            reads=_scaled(200, scale, 10),
            sessions_created=_scaled(1_000, scale, 20),
            sessions_big=_scaled(100_000, scale, 1_000),
            page=50,
            tasks=20,
            per_task=_scaled(100, scale, 5),
            bulk=_scaled(100_000, scale, 1_000),
            batch=1_000 if scale >= 0.1 else 100,
            export_page=1_000 if scale >= 0.1 else 100,
            rounds=5 if scale >= 0.1 else 2,
        )
