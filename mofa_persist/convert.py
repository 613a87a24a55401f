"""Rows to records and back: the small conversions shared by the reads and the turn writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .records import AgentState, Message, Session

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence

    from sqlalchemy import Row

    from .validate import EncodedJSON


def _now() -> datetime:
    return datetime.now(UTC)


def _loads(encoded: EncodedJSON) -> dict[str, Any]:
    """A private copy of a validated document, as a later read would return it."""
    if encoded == "{}":
        return {}
    result: dict[str, Any] = json.loads(encoded)
    return result


def _session_record(row: Row[Any]) -> Session:
    # Column names are the records' field names, so a row maps onto its record directly.
    return Session(**row._mapping)


def _state_record(row: Row[Any]) -> AgentState:
    return AgentState(**row._mapping)


@dataclass(frozen=True, slots=True)
class _NewMessage:
    role: str
    content: str
    metadata: EncodedJSON


def _turn_records(
    sid: uuid.UUID,
    items: Sequence[_NewMessage],
    ids: Sequence[uuid.UUID],
    state: EncodedJSON | None,
    state_id: uuid.UUID,
    counters: tuple[int, int],
    now: datetime,
) -> tuple[list[Message], AgentState | None]:
    """The records a write stored, given the bumped (last_seq, state_version)."""
    last_seq, version = counters
    first = last_seq - len(items) + 1
    stored = [
        Message(message_id, sid, first + offset, item.role, item.content,
                _loads(item.metadata), now)
        for offset, (message_id, item) in enumerate(zip(ids, items, strict=True))
    ]  # fmt: skip
    saved = (
        None if state is None else AgentState(state_id, sid, version, _loads(state), now, last_seq)
    )
    return stored, saved
