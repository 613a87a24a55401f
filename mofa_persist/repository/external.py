"""External keys: the one place where an agent framework's own session id becomes a session.

Every integration (OpenAI Agents, Google ADK, LangGraph) names its sessions with ids of its
own: opaque strings of any length and alphabet. :meth:`ExternalKeysApi.session_for` maps
``(namespace, id)`` within the store's view to an ordinary session, created on first use, so
the CLI, export and copy, retention, erasure and usage all work on a framework's sessions
unchanged. The id is kept exactly (``external_keys.external_id``); uniqueness goes by a
SHA-256 of namespace, view and id, so two tenants may use the same id.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from ..convert import _now, _session_record
from ..errors import ConflictError, InvalidInputError
from ..ids import uuid7
from ..validate import check_text, check_title, require_uuid
from .core import StoreCore
from .tables import s_t, x_t

if TYPE_CHECKING:
    import uuid
    from collections.abc import Mapping

    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..records import Session


#: Longest external id accepted (characters); framework ids are far shorter.
MAX_EXTERNAL_ID = 10_000


def _check_namespace(namespace: object) -> str:
    if (
        not isinstance(namespace, str)
        or not 1 <= len(namespace) <= 100
        or not namespace.isprintable()
    ):
        raise InvalidInputError("namespace must be 1 to 100 printable characters")
    return namespace


def _check_external_id(external_id: object) -> str:
    if not isinstance(external_id, str):
        raise InvalidInputError(
            f"an external session id must be a str, not {type(external_id).__name__}"
        )
    text = check_text("external session id", external_id)
    if not 1 <= len(text) <= MAX_EXTERNAL_ID:
        raise InvalidInputError(f"an external session id must be 1 to {MAX_EXTERNAL_ID} characters")
    return text


class ExternalKeysApi(StoreCore):
    """Framework session ids mapped to sessions of this library, within the view."""

    def _key_hash(self, namespace: str, external_id: str) -> str:
        scope = self._scope
        view = "|".join(
            "" if value is None else value.hex
            for value in (scope.tenant_id, scope.user_id, scope.agent_id)
        )
        text = "\x00".join((namespace, view, external_id))
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    async def session_for(
        self,
        namespace: str,
        external_id: str,
        *,
        create: bool = True,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Session | None:
        """The session that ``external_id`` of ``namespace`` names in this view.

        With ``create`` (the default) it is created on first use (in the view's tenant, user
        and agent; two processes asking at once get the one session); without, ``None`` when
        there is none yet.
        """
        space = _check_namespace(namespace)
        ident = _check_external_id(external_id)
        key_hash = self._key_hash(space, ident)
        found = await self._find_external(key_hash)
        if found is not None or not create:
            return found
        checked_title = check_title(title if title is not None else ident[:500])
        meta = self._encode("metadata", metadata)
        scope = self._scope
        now = _now()
        new_id = uuid7()
        values = {
            "id": new_id,
            "user_id": scope.user_id,
            "tenant_id": scope.tenant_id,
            "agent_id": scope.agent_id,
            "title": checked_title,
            "metadata": meta,
            "last_seq": 0,
            "state_version": 0,
            "created_at": now,
            "updated_at": now,
        }
        key_row = {
            "id": uuid7(),
            "key_hash": key_hash,
            "namespace": space,
            "external_id": ident,
            "session_id": new_id,
            "created_at": now,
        }

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(insert(s_t), values)
            await conn.execute(insert(x_t), key_row)

        # Another task or process may create it first: then use theirs.
        with contextlib.suppress(ConflictError):
            await self._run(work, write=True, action="create a session for an external id")
        found = await self._find_external(key_hash)
        if found is None:
            raise ConflictError(f"the session for {space} id {ident[:80]!r} could not be made")
        return found

    async def external_id_of(self, session_id: uuid.UUID | str) -> tuple[str, str] | None:
        """``(namespace, external id)`` of a session made by :meth:`session_for`, else None."""
        sid = require_uuid("session_id", session_id)
        stmt = (
            select(x_t.c.namespace, x_t.c.external_id)
            .join(s_t, s_t.c.id == x_t.c.session_id)
            .where(x_t.c.session_id == sid, *self._scope_filter())
        )

        async def work(conn: AsyncConnection) -> tuple[str, str] | None:
            row = (await conn.execute(stmt)).first()
            if row is None:
                await self._require_session(conn, sid)
                return None
            return str(row.namespace), str(row.external_id)

        return await self._run(work, write=False, action="read an external id", one_read=True)

    async def _find_external(self, key_hash: str) -> Session | None:
        stmt = (
            select(s_t)
            .join(x_t, x_t.c.session_id == s_t.c.id)
            .where(x_t.c.key_hash == key_hash, *self._scope_filter())
        )

        async def work(conn: AsyncConnection) -> Session | None:
            row = (await conn.execute(stmt)).first()
            return None if row is None else _session_record(row)

        return await self._run(work, write=False, action="find a session", one_read=True)
