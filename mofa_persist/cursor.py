"""Opaque page cursors of ``list_sessions``: (updated_at, id) of a page's last session."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from .errors import InvalidInputError

_CURSOR_PREFIX = "v1."


def _encode_cursor(updated_at: datetime, session_id: uuid.UUID) -> str:
    raw = f"{updated_at.isoformat()}|{session_id.hex}".encode()
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: object) -> tuple[datetime, uuid.UUID]:
    if not isinstance(cursor, str) or not cursor.startswith(_CURSOR_PREFIX):
        raise InvalidInputError("cursor is malformed: pass a page's next_cursor unchanged")
    body = cursor[len(_CURSOR_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        stamp, hex_id = raw.split("|")
        updated_at = datetime.fromisoformat(stamp)
        session_id = uuid.UUID(hex=hex_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInputError(
            "cursor is malformed: pass a page's next_cursor unchanged"
        ) from None
    if updated_at.tzinfo is None:
        raise InvalidInputError("cursor is malformed: pass a page's next_cursor unchanged")
    return updated_at, session_id
