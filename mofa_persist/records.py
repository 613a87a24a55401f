"""Immutable records returned by the store.

They are plain frozen dataclasses, detached from any database session, so they can be cached,
logged or sent across tasks freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

if TYPE_CHECKING:
    import uuid
    from datetime import datetime

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Session:
    """One conversation of a user with an agent."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    tenant_id: uuid.UUID | None
    agent_id: uuid.UUID | None
    title: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    #: ``seq`` of the newest message ever appended (0 for none); messages pruned later keep it.
    last_seq: int = 0
    #: ``version`` of the newest saved state (0 for none).
    state_version: int = 0
    #: The session this one was forked from (``None``: not a fork, or the parent is gone).
    parent_session_id: uuid.UUID | None = None
    #: The parent's ``seq`` the fork was taken at.
    forked_at_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a session; ``seq`` numbers a session's messages 1, 2, 3, ... without gaps."""

    id: uuid.UUID
    session_id: uuid.UUID
    seq: int
    role: str
    content: str
    metadata: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AgentState:
    """One saved snapshot of an agent's state; ``version`` counts 1, 2, 3, ... per session."""

    id: uuid.UUID
    session_id: uuid.UUID
    version: int
    state: dict[str, Any]
    created_at: datetime
    #: The session's ``last_seq`` when the snapshot was saved (what a rewind cuts by).
    at_seq: int = 0


@dataclass(frozen=True, slots=True)
class Turn:
    """What :meth:`Store.record_turn` stored: the messages and the state snapshot, if any."""

    messages: list[Message]
    state: AgentState | None


ApiCallStatus = Literal["success", "failed", "timeout", "rate_limited", "cancelled"]
API_CALL_STATUSES: frozenset[str] = frozenset(
    {"success", "failed", "timeout", "rate_limited", "cancelled"}
)


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One call to an LLM provider, successful or not (recorded for usage and cost)."""

    id: uuid.UUID
    session_id: uuid.UUID | None
    tenant_id: uuid.UUID | None
    user_id: uuid.UUID | None
    agent_id: uuid.UUID | None
    provider: str | None
    model: str
    status: str
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    latency_ms: int
    error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Usage:
    """Totals over a set of provider calls (see :meth:`Store.usage`)."""

    calls: int
    failures: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    #: Latency percentiles in milliseconds (``None`` when there were no calls).
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    by_status: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RewindResult:
    """What :meth:`Store.rewind` removed, and where the session now stands."""

    session_id: uuid.UUID
    #: The session's ``last_seq`` now (the next append gets ``last_seq + 1``).
    last_seq: int
    #: The newest remaining state version (0 for none); the next save gets the one after.
    state_version: int
    messages_deleted: int
    states_deleted: int


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a keyset-paginated listing; pass ``next_cursor`` back for the next page."""

    items: list[T] = field(default_factory=list)
    next_cursor: str | None = None
