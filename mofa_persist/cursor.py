"""Opaque page cursors: a position, signed together with the view and query that made it.

A cursor carries the (updated_at, id) of a page's last session and an HMAC over that
position, the view (tenant, user, agent) and the query's filters, keyed by the database's own
key (:mod:`mofa_persist.keys`). A cursor replayed in another view or with other filters, or
altered in any way, is ``InvalidInputError``; it can never select rows outside the view
anyway, because the view's filters are part of every query.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid
from datetime import datetime

from .errors import InvalidInputError
from .keys import keyed_digest

_CURSOR_PREFIX = "v2."
_MAC_CHARS = 32  # 128 bits of the HMAC, as hex
_MALFORMED = "cursor is malformed: pass a page's next_cursor unchanged"
_FOREIGN = (
    "cursor does not belong to this query: pass a page's next_cursor unchanged, to the same "
    "view with the same filters"
)


def _position(updated_at: datetime, session_id: uuid.UUID) -> str:
    return f"{updated_at.isoformat()}|{session_id.hex}"


def encode_cursor(key: bytes, binding: str, updated_at: datetime, session_id: uuid.UUID) -> str:
    position = _position(updated_at, session_id)
    mac = keyed_digest(key, "cursor", binding, position)[:_MAC_CHARS]
    raw = f"{position}|{mac}".encode()
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(key: bytes, binding: str, cursor: object) -> tuple[datetime, uuid.UUID]:
    if not isinstance(cursor, str) or not cursor.startswith(_CURSOR_PREFIX):
        raise InvalidInputError(_MALFORMED)
    body = cursor[len(_CURSOR_PREFIX) :]
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        # base64 ignores the unused low bits of the last character: the canonical form
        # must come back, so that no altered spelling of a cursor is accepted.
        if base64.urlsafe_b64encode(data).decode().rstrip("=") != body:
            raise ValueError("not the canonical encoding")
        raw = data.decode()
        stamp, hex_id, mac = raw.split("|")
        updated_at = datetime.fromisoformat(stamp)
        session_id = uuid.UUID(hex=hex_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInputError(_MALFORMED) from None
    if updated_at.tzinfo is None or len(hex_id) != 32:
        raise InvalidInputError(_MALFORMED)
    expected = keyed_digest(key, "cursor", binding, f"{stamp}|{hex_id}")[:_MAC_CHARS]
    if not hmac.compare_digest(mac, expected):
        raise InvalidInputError(_FOREIGN)
    return updated_at, session_id
