"""What a workload needs from an implementation, and the payload all of them write.

Every implementation does the same durable work per call: an append is one transaction that
bumps the session's ``last_seq``/``updated_at`` (taking its row lock, which keeps ``seq``
gap-free under concurrency) and inserts the message; a turn adds a state snapshot and bumps
``state_version``. Reads return the same rows with their JSON metadata decoded.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator, Sequence

#: One message's content: about the size of a short chat message.
CONTENT = "The quick brown fox jumps over the lazy dog. " * 4
METADATA: dict[str, Any] = {"tokens": 42, "model": "bench"}
METADATA_JSON = json.dumps(METADATA, separators=(",", ":"))
STATE: dict[str, Any] = {"step": 1, "memory": ["a", "b", "c"], "scratch": {"k": "v"}}
STATE_JSON = json.dumps(STATE, separators=(",", ":"))

#: Rows returned by reads: (seq, content) pairs, enough to check order and identity.
Rows = list[tuple[int, str]]


def now() -> datetime:
    return datetime.now(UTC)


def seed_times(count: int) -> list[datetime]:
    """Distinct, increasing timestamps for seeded rows (older than anything timed)."""
    start = datetime.now(UTC) - timedelta(days=30)
    return [start + timedelta(microseconds=17 * index) for index in range(count)]


class Impl(ABC):
    """One way of doing the workloads' operations on one backend."""

    #: "floor", "core" or "library".
    name: str

    @abstractmethod
    async def open(self) -> None:
        """Connect and create this implementation's tables (untimed)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def reset(self) -> None:
        """Empty this implementation's tables, so W4 knows how many sessions exist."""

    @abstractmethod
    async def create_session(self, user_id: uuid.UUID) -> uuid.UUID: ...

    @abstractmethod
    async def append(self, sid: uuid.UUID, role: str, content: str) -> int:
        """Append one message durably; returns its seq."""

    @abstractmethod
    async def turn(self, sid: uuid.UUID, user: str, assistant: str) -> None:
        """User + assistant message + state snapshot, in one transaction."""

    @abstractmethod
    async def append_batch(self, sid: uuid.UUID, items: Sequence[tuple[str, str]]) -> None:
        """Append ``(role, content)`` items in one transaction (W6 import)."""

    @abstractmethod
    async def newest(self, sid: uuid.UUID, count: int) -> Rows:
        """The newest ``count`` messages, oldest first (an agent's context window)."""

    @abstractmethod
    async def list_sessions(self, user_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        """The first page of a user's sessions, newest ``updated_at`` first."""

    @abstractmethod
    def export(self, sid: uuid.UUID, page: int) -> AsyncIterator[tuple[int, str]]:
        """Every message of a session in seq order, streamed (W6 export)."""

    @abstractmethod
    async def read_all(self, sid: uuid.UUID) -> Rows:
        """Every message of a session in seq order (for W5's checks; untimed)."""

    @abstractmethod
    async def seed_messages(self, sid: uuid.UUID, count: int) -> None:
        """Bulk-fill a session with ``count`` messages (untimed setup for W3)."""

    @abstractmethod
    async def seed_sessions(self, user_ids: Sequence[uuid.UUID]) -> None:
        """Bulk-create one session per entry of ``user_ids`` (untimed setup for W4)."""


class LocalSeq:
    """Per-session ``seq`` handed out in process memory, for the minimal floor.

    The minimal floor keeps no counter in the database: the number is taken synchronously
    before the INSERT is awaited, so one process's tasks still get gap-free, ordered numbers;
    several processes on one session do not (that is the counter's job, which this floor skips).
    """

    def __init__(self) -> None:
        self._last: dict[uuid.UUID, int] = {}

    def next(self, sid: uuid.UUID, count: int = 1) -> int:
        """Reserve ``count`` numbers; returns the first."""
        last = self._last.get(sid, 0)
        self._last[sid] = last + count
        return last + 1

    def set(self, sid: uuid.UUID, last: int) -> None:
        self._last[sid] = last

    def clear(self) -> None:
        self._last.clear()
