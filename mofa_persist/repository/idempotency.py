"""Idempotency keys: a retried write with the same key stores nothing and returns the first
result; the same key with another payload is a ``ConflictError``.

How: the key row is inserted in the same transaction as the rows it protects, under a unique
``(scope, key)`` index. A retry finds the row and reads the protected rows back by id, so the
answer is exactly the first one (ids, seq, versions, timestamps). Two calls racing with one
key are serialized by the session's row lock (or, for provider calls of no session, by the
unique index): the loser rolls back and replays the winner's rows.

Cost per key: one row of about 150 bytes plus the ids of what it protects (16 bytes per
message id as text, 36 characters), and one entry in the ``(scope, key)`` index. Keys go with
their session (foreign key cascade), with a rewind or pop that removes what they protect, and
with the retention rule that removes the rows they protect.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from ..convert import _now, _state_record
from ..errors import ConflictError, InvalidInputError
from ..ids import uuid7
from ..records import AgentState, ApiCall, Message
from ..validate import decode_document
from .tables import a_t, c_t, k_t, m_t

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncConnection


MAX_KEY_LENGTH = 200


def check_key(key: object) -> str | None:
    """``None``, or 1 to 200 printable characters; anything else is ``InvalidInputError``."""
    if key is None:
        return None
    if not isinstance(key, str):
        raise InvalidInputError(f"idempotency_key must be a str, not {type(key).__name__}")
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInputError(
            f"idempotency_key must be 1 to {MAX_KEY_LENGTH} printable characters "
            "(no control characters or line breaks)"
        )
    return key


@dataclass(frozen=True, slots=True)
class KeyedCall:
    """One write's key, where it is unique, and the digest of what it asked to write."""

    key: str
    scope: str
    operation: str
    digest: str

    @classmethod
    def of(cls, key: str, scope: str, operation: str, payload: Any) -> KeyedCall:
        text = json.dumps(
            [operation, payload], sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        return cls(key, scope, operation, hashlib.sha256(text.encode()).hexdigest())


def session_scope(session_id: uuid.UUID) -> str:
    return f"s:{session_id.hex}"


def tenant_scope(tenant_id: uuid.UUID | None) -> str:
    return f"t:{tenant_id.hex if tenant_id is not None else '-'}"


async def find(conn: AsyncConnection, call: KeyedCall) -> Row[Any] | None:
    """The stored key row, checked against this call's payload."""
    stmt = select(k_t).where(k_t.c.scope == call.scope, k_t.c.key == call.key)
    row = (await conn.execute(stmt)).first()
    if row is not None and (row.operation != call.operation or row.payload_hash != call.digest):
        raise ConflictError(
            f"idempotency key {call.key!r} was already used for a different "
            f"{row.operation} payload; a retry must send the same payload, new work a new key"
        )
    return row


async def remember(
    conn: AsyncConnection,
    call: KeyedCall,
    result: dict[str, Any],
    *,
    session_id: uuid.UUID | None,
    owner: tuple[uuid.UUID | None, uuid.UUID | None] = (None, None),
    seqs: Sequence[int] = (),
    state_version: int | None = None,
) -> None:
    tenant, user = owner
    await conn.execute(
        insert(k_t),
        {
            "id": uuid7(),
            "scope": call.scope,
            "key": call.key,
            "session_id": session_id,
            "tenant_id": tenant,
            "user_id": user,
            "operation": call.operation,
            "payload_hash": call.digest,
            "result": result,
            "first_seq": min(seqs) if seqs else None,
            "last_seq": max(seqs) if seqs else None,
            "state_version": state_version,
            "created_at": _now(),
        },
    )


def turn_result(messages: Sequence[Message], state: AgentState | None) -> dict[str, Any]:
    return {
        "messages": [str(message.id) for message in messages],
        "state": None if state is None else str(state.id),
    }


def _gone(call: KeyedCall) -> ConflictError:
    return ConflictError(
        f"the rows written under idempotency key {call.key!r} were removed since (rewind, pop "
        "or retention); use a new key"
    )


async def replay_turn(
    conn: AsyncConnection, call: KeyedCall, row: Row[Any]
) -> tuple[list[Message], AgentState | None]:
    """The messages and state a keyed write stored, read back exactly."""
    result = _document(row.result)
    ids = [uuid.UUID(text) for text in result["messages"]]
    messages: list[Message] = []
    if ids:
        stmt = select(m_t).where(m_t.c.id.in_(ids)).order_by(m_t.c.seq)
        messages = [
            Message(
                r.id,
                r.session_id,
                r.seq,
                r.role,
                r.content,
                _document(r.metadata),
                r.created_at,
            )
            for r in await conn.execute(stmt)
        ]
        if len(messages) != len(ids):
            raise _gone(call)
    state = None
    if result["state"] is not None:
        found = (
            await conn.execute(select(a_t).where(a_t.c.id == uuid.UUID(result["state"])))
        ).first()
        if found is None:
            raise _gone(call)
        state = _state_record(found)
    return messages, state


async def replay_api_call(conn: AsyncConnection, call: KeyedCall, row: Row[Any]) -> ApiCall:
    found = (
        await conn.execute(
            select(c_t).where(c_t.c.id == uuid.UUID(_document(row.result)["api_call"]))
        )
    ).first()
    if found is None:
        raise _gone(call)
    return ApiCall(**found._mapping)


def _document(value: Any) -> dict[str, Any]:
    """A JSON column as a dict on every dialect (MariaDB's JSON is text)."""
    if isinstance(value, str):
        return decode_document(value)
    result: dict[str, Any] = value
    return result
