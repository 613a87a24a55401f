"""Reading an export file line by line: every field of every line is checked on the way in.

Each line type has exactly the columns of its table, each with a check that turns JSON into
the value stored (UUIDs, UTC datetimes, bounded integers and text, encoded documents). Every
error names its line, so a bad file is fixed where it is wrong.
"""

from __future__ import annotations

import binascii
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError
from ..keys import adk_state_key
from ..records import API_CALL_STATUSES
from ..validate import check_role, check_text, check_title, encode_document
from .common import FORMAT_NAME, READABLE_VERSIONS, Counts, Kind

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

_INT32_MAX = 2**31 - 1


FieldCheck = Callable[[str, object, bool], object]


def _uuid(name: str, value: object, _exact: bool) -> uuid.UUID:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a UUID string, not {_json_type(value)}")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInputError(f"{name} is not a valid UUID: {value[:64]!r}") from None


def _optional_uuid(name: str, value: object, exact: bool) -> uuid.UUID | None:
    return None if value is None else _uuid(name, value, exact)


def _time(name: str, value: object, _exact: bool) -> datetime:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be an ISO 8601 string, not {_json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"{name} is not an ISO 8601 timestamp: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise InvalidInputError(f"{name} has no UTC offset: {value[:40]!r}")
    return parsed.astimezone(UTC)


def _integer(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be an integer, not {_json_type(value)}")
    if not minimum <= value <= _INT32_MAX:
        raise InvalidInputError(f"{name} must be between {minimum} and {_INT32_MAX}; got {value}")
    return value


def _count(name: str, value: object, _exact: bool) -> int:
    return _integer(name, value, 0)


def _ordinal(name: str, value: object, _exact: bool) -> int:
    return _integer(name, value, 1)


def _optional_count(name: str, value: object, exact: bool) -> int | None:
    return None if value is None else _count(name, value, exact)


def _document(name: str, value: object, exact: bool) -> str:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{name} must be a JSON object, not {_json_type(value)}")
    return encode_document(name, value, exact_floats=exact)


def _title(_name: str, value: object, _exact: bool) -> str | None:
    return check_title(value)


def _role(_name: str, value: object, _exact: bool) -> str:
    return check_role(value)


def _text(name: str, value: object, _exact: bool) -> str:
    return check_text(name, value)


def _bounded_text(limit: int, *, optional: bool) -> FieldCheck:
    def check(name: str, value: object, _exact: bool) -> str | None:
        if value is None and optional:
            return None
        text = check_text(name, value)
        if not 1 <= len(text) <= limit:
            raise InvalidInputError(f"{name} must be 1 to {limit} characters")
        return text

    return check


def _status(name: str, value: object, _exact: bool) -> str:
    if value not in API_CALL_STATUSES:
        raise InvalidInputError(
            f"{name} must be one of {', '.join(sorted(API_CALL_STATUSES))}; got {value!r}"
        )
    return str(value)


def _optional_text(name: str, value: object, exact: bool) -> str | None:
    return None if value is None else _text(name, value, exact)


def _key(limit: int, *, least: int = 1, optional: bool = False) -> FieldCheck:
    """A framework's key (a LangGraph namespace, channel, version...): any text, kept exactly,
    of ``least`` to ``limit`` characters (the column's size)."""

    def check(name: str, value: object, _exact: bool) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise InvalidInputError(f"{name} must be a string, not {_json_type(value)}")
        if not least <= len(value) <= limit:
            raise InvalidInputError(f"{name} must be {least} to {limit} characters")
        return value

    return check


def _key_hash(name: str, value: object, _exact: bool) -> str:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise InvalidInputError(f"{name} must be 64 lowercase hex digits (a SHA-256)")
    return value


def _binary(name: str, value: object, _exact: bool) -> bytes:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a base64 string, not {_json_type(value)}")
    try:
        return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidInputError(f"{name} is not valid base64") from None


def _optional_binary(name: str, value: object, exact: bool) -> bytes | None:
    return None if value is None else _binary(name, value, exact)


def _finite(name: str, value: object, _exact: bool) -> float:
    """ADK's ``update_time``: a JSON number kept as the exact float it was (repr round-trips)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{name} must be a number, not {_json_type(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be finite")
    return number


def _adk_kind(name: str, value: object, _exact: bool) -> str:
    if value not in ("app", "user"):
        raise InvalidInputError(f"{name} must be app or user; got {value!r}")
    return str(value)


def _index(name: str, value: object, _exact: bool) -> int:
    """A pending write's index: LangGraph's special channels use negative ones."""
    return _integer(name, value, -_INT32_MAX)


#: Every field of every line type, with its check; exactly the columns of its table.
FIELDS: dict[Kind, dict[str, FieldCheck]] = {
    "session": {
        "id": _uuid,
        "user_id": _optional_uuid,
        "tenant_id": _optional_uuid,
        "agent_id": _optional_uuid,
        "title": _title,
        "metadata": _document,
        "last_seq": _count,
        "state_version": _count,
        "created_at": _time,
        "updated_at": _time,
        "parent_session_id": _optional_uuid,
        "forked_at_seq": _optional_count,
    },
    "message": {
        "id": _uuid,
        "session_id": _uuid,
        "seq": _ordinal,
        "role": _role,
        "content": _text,
        "metadata": _document,
        "created_at": _time,
    },
    "state": {
        "id": _uuid,
        "session_id": _uuid,
        "version": _ordinal,
        "state": _document,
        "created_at": _time,
        "at_seq": _count,
    },
    "api_call": {
        "id": _uuid,
        "session_id": _optional_uuid,
        "tenant_id": _optional_uuid,
        "user_id": _optional_uuid,
        "agent_id": _optional_uuid,
        "provider": _bounded_text(50, optional=True),
        "model": _bounded_text(200, optional=False),
        "status": _status,
        "prompt_tokens": _optional_count,
        "completion_tokens": _optional_count,
        "total_tokens": _optional_count,
        "latency_ms": _count,
        "error": _optional_text,
        "created_at": _time,
    },
    "external_key": {
        "id": _uuid,
        "key_hash": _key_hash,
        "namespace": _key(100),
        "external_id": _key(10_000),
        "session_id": _uuid,
        "created_at": _time,
    },
    "langgraph_checkpoint": {
        "id": _uuid,
        "session_id": _uuid,
        "checkpoint_ns": _key(300, least=0),
        "checkpoint_id": _key(100),
        "parent_checkpoint_id": _key(100, optional=True),
        "run_id": _key(255, optional=True),
        "checkpoint_type": _key(50),
        "checkpoint": _binary,
        "metadata_type": _key(50),
        "metadata": _binary,
        "created_at": _time,
    },
    "langgraph_blob": {
        "id": _uuid,
        "session_id": _uuid,
        "checkpoint_ns": _key(300, least=0),
        "channel": _key(200),
        "version": _key(100),
        "value_type": _key(50),
        "value": _optional_binary,
        "created_at": _time,
    },
    "langgraph_write": {
        "id": _uuid,
        "session_id": _uuid,
        "checkpoint_ns": _key(300, least=0),
        "checkpoint_id": _key(100),
        "task_id": _key(150),
        "idx": _index,
        "channel": _key(255),
        "value_type": _key(50),
        "value": _optional_binary,
        "task_path": _key(2**24, least=0),
        "created_at": _time,
    },
    "adk_session": {
        "id": _uuid,
        "session_id": _uuid,
        "tenant_id": _optional_uuid,
        "app_name": _key(128),
        "adk_user_id": _key(128),
        "adk_session_id": _key(128),
        "state": _document,
        "update_time": _finite,
        "created_at": _time,
    },
    "adk_state": {
        "id": _uuid,
        "key_hash": _key_hash,
        "kind": _adk_kind,
        "tenant_id": _optional_uuid,
        "user_id": _optional_uuid,
        "agent_id": _optional_uuid,
        "app_name": _key(128),
        "adk_user_id": _key(128, optional=True),
        "state": _document,
        "updated_at": _time,
    },
}


#: Fields added in format version 2, and what a version 1 file means by leaving them out:
#: not a fork, and a snapshot of unknown position (0: a rewind to any point keeps it).
ADDED_IN_V2: dict[str, dict[str, object]] = {
    "session": {"parent_session_id": None, "forked_at_seq": None},
    "state": {"at_seq": 0},
}


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True, slots=True)
class Line:
    """One parsed line: its number, its type and its checked values."""

    number: int
    kind: str
    values: dict[str, Any]


def parse_line(number: int, raw: bytes, *, exact_floats: bool = False) -> Line:
    """Parse and check one line; every error starts with ``line N:``."""
    try:
        return _parse(number, raw, exact_floats)
    except InvalidInputError as error:
        raise InvalidInputError(f"line {number}: {error}") from None


def _parse(number: int, raw: bytes, exact_floats: bool) -> Line:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("is not UTF-8 text") from None
    try:
        record = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        raise InvalidInputError(f"is not valid JSON ({reason})") from None
    if not isinstance(record, dict):
        raise InvalidInputError(f"must be a JSON object, not {_json_type(record)}")
    kind = record.pop("type", None)
    if kind in ("header", "end"):
        return Line(number, kind, record)
    if kind not in FIELDS:
        raise InvalidInputError(
            f"unknown type {kind!r}; expected header, {', '.join(FIELDS)} or end"
        )
    checks = FIELDS[kind]
    for name, default in ADDED_IN_V2.get(kind, {}).items():
        record.setdefault(name, default)
    missing = [name for name in checks if name not in record]
    unknown = sorted(set(record) - set(checks))
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise InvalidInputError(f"{kind} fields: {'; '.join(problems)}")
    values = {name: check(name, record[name], exact_floats) for name, check in checks.items()}
    if kind == "adk_state":
        _check_adk_state(values)
    return Line(number, kind, values)


def _check_adk_state(values: dict[str, Any]) -> None:
    """The row's key must be the one its owners and names give: ADK finds it by that key, and
    a forged key would shadow another view's state."""
    if (values["kind"] == "user") != (values["adk_user_id"] is not None):
        raise InvalidInputError("adk_user_id must be set for user state and null for app state")
    owners = (values["tenant_id"], values["user_id"], values["agent_id"])
    expected = adk_state_key(values["kind"], owners, values["app_name"], values["adk_user_id"])
    if values["key_hash"] != expected:
        raise InvalidInputError("key_hash does not match the row's kind, owners and names")


def check_header(number: int, raw: bytes) -> None:
    """The first line says what the file is; anything else is refused before reading on."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise InvalidInputError(
            f"line {number}: not a {FORMAT_NAME} export (the first line must be its header)"
        )
    if header.get("version") not in READABLE_VERSIONS:
        raise InvalidInputError(
            f"line {number}: format version {header.get('version')!r} is not supported "
            f"(this mofa-persist reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )


def check_end(line: Line, counts: Counts) -> None:
    declared = line.values.get("counts")
    if declared != counts.as_dict():
        raise InvalidInputError(
            f"line {line.number}: the end line counts {declared!r}, "
            f"but the file holds {counts.as_dict()}"
        )


def read_lines(path: Path, on_bytes: Callable[[int], None] | None) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines; split on ``\\n`` only (U+2028 inside content is not a break)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if on_bytes is not None:
                on_bytes(len(raw))
            yield number, raw.rstrip(b"\r\n")
