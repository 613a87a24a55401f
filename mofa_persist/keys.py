"""The database's own secret key: made once, stored in ``mofa_keys``, cached per store.

Why in the database: page cursors must verify in every process that serves the same
database (a web tier hands a cursor to a client, and the next page may be served by another
worker), and the erasure audit must hash an id the same way years later. A key that lives
with the data gives both without configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from sqlalchemy import insert, select

from .convert import _now
from .errors import ConflictError
from .models import database_keys_table

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncConnection

    from .repository.core import StoreCore

k_t = database_keys_table
KEY_NAME = "main"


async def database_key(store: StoreCore) -> bytes:
    """The key (32 random bytes), created by whichever process asks first."""
    backend = store._backend
    if backend.key is not None:
        return backend.key

    async def read(conn: AsyncConnection) -> str | None:
        stmt = select(k_t.c.secret).where(k_t.c.name == KEY_NAME)
        return (await conn.execute(stmt)).scalar()

    async def create(conn: AsyncConnection) -> None:
        values = {"name": KEY_NAME, "secret": secrets.token_hex(32), "created_at": _now()}
        await conn.execute(insert(k_t), values)

    secret = await store._run(read, write=False, action="read the database key")
    if secret is None:
        # Another process may make it first: then read theirs.
        with contextlib.suppress(ConflictError):
            await store._run(create, write=True, action="create the database key")
        secret = await store._run(read, write=False, action="read the database key")
    assert secret is not None
    backend.key = bytes.fromhex(secret)
    return backend.key


def keyed_digest(key: bytes, *parts: str) -> str:
    """HMAC-SHA256 of the parts (NUL-separated) as 64 hex characters."""
    return hmac.new(key, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()


def adk_state_key(
    kind: str,
    owners: tuple[uuid.UUID | None, uuid.UUID | None, uuid.UUID | None],
    app_name: str,
    adk_user_id: str | None,
) -> str:
    """The ``key_hash`` of an ADK app- or user-state row: plain SHA-256 of its kind, owners
    (tenant, user, agent) and ADK names, with no database key, so that an exported row keeps
    its key in any database (the import recomputes it to refuse a forged one)."""
    parts = [
        kind,
        *("" if value is None else value.hex for value in owners),
        app_name,
        adk_user_id or "",
    ]
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()
