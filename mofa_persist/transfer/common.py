"""The vocabulary every transfer operation shares: tables, counts, selections and row text.

Rows are handled as plain mappings keyed by column name, so a row read from one backend, a
row parsed from an export file and a row about to be inserted all look alike; the canonical
line is what two of them are compared by.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from ..errors import InvalidInputError
from ..models import (
    adk_sessions_table,
    adk_states_table,
    agent_state_table,
    api_calls_table,
    external_keys_table,
    langgraph_blobs_table,
    langgraph_checkpoints_table,
    langgraph_writes_table,
    messages_table,
    sessions_table,
)
from ..validate import encode_document

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy import ColumnElement, Table

    from ..store import Store

FORMAT_NAME: Final = "mofa-persist"
FORMAT_VERSION: Final = 3
#: Version 1 files (before forks and ``at_seq``) still import; see lines.ADDED_IN_V2.
#: Version 2 files (before external keys and LangGraph rows) read as they are.
READABLE_VERSIONS: Final = (1, 2, 3)
DEFAULT_BATCH: Final = 1000

Kind = Literal[
    "session",
    "message",
    "state",
    "api_call",
    "external_key",
    "langgraph_checkpoint",
    "langgraph_blob",
    "langgraph_write",
    "adk_session",
    "adk_state",
]
KINDS: tuple[Kind, ...] = (
    "session",
    "message",
    "state",
    "api_call",
    "external_key",
    "langgraph_checkpoint",
    "langgraph_blob",
    "langgraph_write",
    "adk_session",
    "adk_state",
)

s_t = sessions_table
m_t = messages_table
a_t = agent_state_table
c_t = api_calls_table
x_t = external_keys_table
#: ADK's app and user state: owned by tenant, user and agent, not by a session.
adk_states = adk_states_table

TABLES: dict[Kind, Table] = {
    "session": s_t,
    "message": m_t,
    "state": a_t,
    "api_call": c_t,
    "external_key": x_t,
    "langgraph_checkpoint": langgraph_checkpoints_table,
    "langgraph_blob": langgraph_blobs_table,
    "langgraph_write": langgraph_writes_table,
    "adk_session": adk_sessions_table,
    "adk_state": adk_states_table,
}
#: A session's rows in the order they are exported, copied and checksummed. The external
#: key comes first: it is how a framework (LangGraph, OpenAI Agents) finds the session again;
#: ADK's row next, since ADK finds the session only through both.
CHILDREN: tuple[tuple[Kind, Table, str], ...] = (
    ("external_key", x_t, "id"),
    ("adk_session", adk_sessions_table, "id"),
    ("message", m_t, "seq"),
    ("state", a_t, "version"),
    ("api_call", c_t, "id"),
    ("langgraph_checkpoint", langgraph_checkpoints_table, "id"),
    ("langgraph_blob", langgraph_blobs_table, "id"),
    ("langgraph_write", langgraph_writes_table, "id"),
)
#: The JSON document columns of each kind (LangGraph's ``metadata`` is bytes, not JSON).
JSON_COLUMNS: dict[Kind, frozenset[str]] = {
    "session": frozenset({"metadata"}),
    "message": frozenset({"metadata"}),
    "state": frozenset({"state"}),
    "adk_session": frozenset({"state"}),
    "adk_state": frozenset({"state"}),
}
_NO_JSON: frozenset[str] = frozenset()


@dataclass(slots=True)
class Counts:
    """Rows per table; the unit of every report."""

    sessions: int = 0
    messages: int = 0
    states: int = 0
    api_calls: int = 0
    external_keys: int = 0
    langgraph_checkpoints: int = 0
    langgraph_blobs: int = 0
    langgraph_writes: int = 0
    adk_sessions: int = 0
    adk_states: int = 0

    def add(self, kind: Kind, amount: int = 1) -> None:
        name = PLURAL[kind]
        setattr(self, name, getattr(self, name) + amount)

    def merge(self, other: Counts) -> None:
        for name in PLURAL.values():
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in PLURAL.values())

    def as_dict(self) -> dict[str, int]:
        """The four core counts always; the others (format 3) only when there are any, so
        that files and reports without framework rows read as they always did."""
        return {
            name: value
            for name in PLURAL.values()
            if (value := getattr(self, name)) or name in CORE_COUNTS
        }


PLURAL: dict[Kind, str] = {
    "session": "sessions",
    "message": "messages",
    "state": "states",
    "api_call": "api_calls",
    "external_key": "external_keys",
    "langgraph_checkpoint": "langgraph_checkpoints",
    "langgraph_blob": "langgraph_blobs",
    "langgraph_write": "langgraph_writes",
    "adk_session": "adk_sessions",
    "adk_state": "adk_states",
}
CORE_COUNTS = frozenset({"sessions", "messages", "states", "api_calls"})


@dataclass(frozen=True, slots=True)
class Selection:
    """Which sessions an operation covers; no field set means all of them.

    Fields combine with AND. Provider calls of no session (their session was deleted) belong
    to a selection unless it names one session; they are matched on their own tenant, user and
    agent columns.
    """

    session_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    tenant_id: uuid.UUID | None = None
    agent_id: uuid.UUID | None = None

    def session_filters(self) -> list[ColumnElement[bool]]:
        filters: list[ColumnElement[bool]] = []
        if self.session_id is not None:
            filters.append(s_t.c.id == self.session_id)
        return filters + self.owner_filters(s_t)

    @property
    def includes_unattached_calls(self) -> bool:
        return self.session_id is None

    def unattached_call_filters(self) -> list[ColumnElement[bool]]:
        return [c_t.c.session_id.is_(None), *self.owner_filters(c_t)]

    def owner_filters(self, table: Table) -> list[ColumnElement[bool]]:
        """Sessions and provider calls both carry user, tenant and agent columns."""
        return [
            table.c[name] == value
            for name in ("user_id", "tenant_id", "agent_id")
            if (value := getattr(self, name)) is not None
        ]

    def as_dict(self) -> dict[str, str]:
        return {
            name: str(value)
            for name in ("session_id", "user_id", "tenant_id", "agent_id")
            if (value := getattr(self, name)) is not None
        }


def in_view(store: Store, selection: Selection | None = None) -> Selection:
    """``selection`` narrowed to the store's view (tenant, user, agent).

    Every transfer operation starts here, so a scoped store never reads, copies, prunes or
    counts rows of another tenant, user or agent. A selection that names an owner outside the
    view is ``InvalidInputError``, as ``create_session`` does for such an owner.
    """
    chosen = selection or Selection()
    narrowed: dict[str, uuid.UUID] = {}
    for name, scoped in store.scope.owners():
        asked = getattr(chosen, name)
        if asked is not None and asked != scoped:
            raise InvalidInputError(
                f"{name} {asked} is outside this store's view (restricted to {name} {scoped})"
            )
        narrowed[name] = scoped
    return dataclasses.replace(chosen, **narrowed)


def jsonable(value: object) -> object:
    """A column value as JSON: UUIDs as text, datetimes as UTC ISO 8601 to the microsecond,
    binary payloads (LangGraph's) as standard base64."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def record_of(kind: Kind, row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row as its export line: ``type`` first, then every column under its own name."""
    record: dict[str, Any] = {"type": kind}
    for column in TABLES[kind].c:
        record[column.key] = jsonable(row[column.key])
    return record


def canonical_line(kind: Kind, row: Mapping[Any, Any]) -> str:
    """One row as canonical JSON: sorted keys, so PostgreSQL's JSONB key order cannot matter.

    Rows read from any backend and rows parsed from a file give the same text when they hold
    the same data; checksums and conflict checks compare these.
    """
    record = record_of(kind, row)
    for name in JSON_COLUMNS.get(kind, _NO_JSON).intersection(record):
        if isinstance(record[name], str):  # encoded for writing; compare as data
            record[name] = json.loads(record[name])
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def encoded(kind: Kind, values: Mapping[Any, Any], exact_floats: bool) -> dict[str, Any]:
    """Values ready for INSERT: JSON documents as validated text for the target dialect."""
    prepared = dict(values)
    for name in JSON_COLUMNS.get(kind, _NO_JSON).intersection(prepared):
        document = prepared[name]
        if isinstance(document, str):
            document = json.loads(document)
        prepared[name] = encode_document(f"{kind}.{name}", document, exact_floats=exact_floats)
    return prepared
