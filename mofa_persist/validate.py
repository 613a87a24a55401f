"""Checks that run before any I/O, so bad input never reaches the database half-written.

Each check names the argument and says what was wrong. JSON documents are validated and encoded
in one walk: the store sends the encoded text, so what is checked is exactly what is stored.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .errors import InvalidInputError
from .records import ROLES

#: Largest message content and JSON document, in UTF-8 bytes. MariaDB's default
#: max_allowed_packet (16 MiB) must hold each value whole, so the limit stays below it; a
#: row that escaping makes larger than a packet is sent in pieces (sql.plan_row).
MAX_TEXT_BYTES = 12 * 1024 * 1024
#: Deepest nesting of a JSON document, counting the top-level object as 1. MariaDB's JSON
#: check refuses documents nested 32 levels deep; we refuse earlier, the same on every backend.
MAX_JSON_DEPTH = 30
MAX_TITLE_CHARS = 500
#: Largest count, seq, version, token count or limit: seq, version and the token and latency
#: columns are 32-bit INTEGER on every backend, and drivers raise their own errors (or
#: OverflowError) for larger Python ints.
MAX_INT = 2**31 - 1
MAX_ROLE_CHARS = 20


class EncodedJSON(str):
    """JSON text that passed validation; the engine's serializer sends it unchanged."""

    __slots__ = ()


def coerce_uuid(name: str, value: object, *, optional: bool = False) -> uuid.UUID | None:
    """Accept a ``uuid.UUID`` or its string form; anything else is refused, never replaced."""
    if value is None:
        if optional:
            return None
        raise InvalidInputError(f"{name} is required (a UUID)")
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            raise InvalidInputError(f"{name} is not a valid UUID: {value[:64]!r}") from None
    raise InvalidInputError(f"{name} must be a UUID or a UUID string, not {type(value).__name__}")


def require_uuid(name: str, value: object) -> uuid.UUID:
    result = coerce_uuid(name, value)
    assert result is not None  # coerce_uuid raises for None unless optional
    return result


def check_text(name: str, value: object, *, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A str without NUL characters or lone surrogates, at most ``max_bytes`` in UTF-8.

    NUL is refused on every backend because PostgreSQL cannot store it in TEXT or JSONB.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a str, not {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInputError(f"{name} contains a NUL character (\\x00), which is not stored")
    # Cheap upper bound first: a str never needs more than 4 bytes per character.
    if len(value) * 4 > max_bytes or not value.isascii():
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInputError(
                f"{name} contains a lone surrogate and is not valid Unicode text"
            ) from None
        if size > max_bytes:
            raise InvalidInputError(f"{name} is {size} bytes in UTF-8; the limit is {max_bytes}")
    return value


def check_role(role: object) -> str:
    if not isinstance(role, str):
        raise InvalidInputError(f"role must be a str, not {type(role).__name__}")
    if role not in ROLES:
        raise InvalidInputError(
            f"role must be one of {', '.join(sorted(ROLES))}; got {role[: MAX_ROLE_CHARS + 5]!r}"
        )
    return role


def check_title(title: object) -> str | None:
    if title is None:
        return None
    text = check_text("title", title)
    if len(text) > MAX_TITLE_CHARS:
        raise InvalidInputError(f"title is {len(text)} characters; the limit is {MAX_TITLE_CHARS}")
    return text


def check_limit(name: str, value: object, *, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise InvalidInputError(f"{name} must not be negative; got {value}")
    if value > MAX_INT:
        raise InvalidInputError(f"{name} must be at most {MAX_INT}; got {value}")
    return value


def encode_document(name: str, value: object, *, exact_floats: bool = False) -> EncodedJSON:
    """Validate a JSON object (``dict`` with ``str`` keys) and return its JSON text.

    Refused: non-dict documents, non-str keys, tuples, sets, bytes and other non-JSON types
    (they would come back changed), NaN and Infinity, NUL characters, lone surrogates, nesting
    deeper than ``MAX_JSON_DEPTH``, and documents larger than ``MAX_TEXT_BYTES``.

    ``exact_floats`` writes exponent-form floats positionally (``1e+16`` as
    ``10000000000000000.0``): PostgreSQL's JSONB turns ``1e+16`` into the integer
    ``10000000000000000``, and this keeps it a float on the way back.

    ``-0.0`` is stored as ``0.0`` on every backend: JSONB has no negative zero, and the
    same document must read back the same everywhere (``-0.0 == 0.0`` in Python).
    """
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{name} must be a dict, not {type(value).__name__}")
    flags = _check_node(name, value, 1)
    if flags & _NEGATIVE_ZERO or (flags & _EXPONENT and exact_floats):
        text = _dumps_positional(value)
    else:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if len(text) * 4 > MAX_TEXT_BYTES and len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise InvalidInputError(f"{name} is larger than {MAX_TEXT_BYTES} bytes as JSON")
    return EncodedJSON(text)


_EXPONENT = 1  # a float that repr() writes in exponent form
_NEGATIVE_ZERO = 2


def _check_node(path: str, node: object, depth: int) -> int:
    """Walk one node; return flags for floats that need the slow encoder."""
    if isinstance(node, str):
        _check_json_string(path, node)
        return 0
    if node is None or isinstance(node, (bool, int)):
        return 0
    if isinstance(node, float):
        if not math.isfinite(node):
            raise InvalidInputError(f"{path} is {node!r}; NaN and Infinity are not JSON")
        if node == 0.0:
            return _NEGATIVE_ZERO if math.copysign(1.0, node) < 0 else 0
        return _EXPONENT if "e" in repr(node) else 0
    if depth > MAX_JSON_DEPTH:
        raise InvalidInputError(f"{path} nests deeper than {MAX_JSON_DEPTH} levels")
    found = 0
    if isinstance(node, dict):
        for key, item in node.items():
            if not isinstance(key, str):
                raise InvalidInputError(
                    f"{path} has a {type(key).__name__} key {key!r}; JSON keys must be str"
                )
            _check_json_string(f"{path} key", key)
            found |= _check_node(f"{path}[{key[:40]!r}]", item, depth + 1)
        return found
    if isinstance(node, list):
        for index, item in enumerate(node):
            found |= _check_node(f"{path}[{index}]", item, depth + 1)
        return found
    raise InvalidInputError(
        f"{path} is a {type(node).__name__}, which is not a JSON type "
        "(use dict, list, str, int, float, bool or None)"
    )


def _check_json_string(path: str, text: str) -> None:
    if "\x00" in text:
        raise InvalidInputError(f"{path} contains a NUL character (\\x00), which is not stored")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError(f"{path} contains a lone surrogate") from None


def _dumps_positional(node: object) -> str:
    """Slow path of :func:`encode_document`, for documents holding exponent-form floats or
    negative zero: the same JSON, with those floats written positionally."""
    if isinstance(node, float):
        if node == 0.0:
            return "0.0"
        text = repr(node)
        if "e" not in text:
            return text
        fixed = format(Decimal(text), "f")
        return fixed if "." in fixed else fixed + ".0"
    if isinstance(node, dict):
        items = (
            json.dumps(key, ensure_ascii=False) + ":" + _dumps_positional(value)
            for key, value in node.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(node, list):
        return "[" + ",".join(_dumps_positional(item) for item in node) + "]"
    return json.dumps(node, ensure_ascii=False)


def decode_document(value: Any) -> dict[str, Any]:
    """The engine's JSON reader: a dict comes back as a dict."""
    if isinstance(value, Mapping):
        return dict(value)
    loaded = json.loads(value)
    if not isinstance(loaded, dict):  # only the store writes these columns
        raise TypeError("stored JSON document is not an object")
    return loaded


def serialize_for_engine(value: Any) -> str:
    """``json_serializer`` of every engine: validated text passes through untouched."""
    if isinstance(value, EncodedJSON):
        return str(value)
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
