"""MoFA's ``PersistencePlugin``: which store an agent writes to, and on whose behalf."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mofa_persist.errors import ConflictError, InvalidInputError, NotFoundError
from mofa_persist.store import Store
from mofa_persist.validate import coerce_uuid, require_uuid

if TYPE_CHECKING:
    import uuid

    from mofa_persist.records import Session


class PersistencePlugin:
    """Binds a store to one tenant, user and agent (and a starting session).

    Every read and write goes through ``store.scoped(tenant_id=..., user_id=...,
    agent_id=...)``: as in MoFA, a session belongs to a user and an agent, so another tenant's,
    user's or agent's session ids are ``NotFoundError`` here. Ids may be ``uuid.UUID`` or
    strings; a malformed one is ``InvalidInputError``. The plugin does not own the store:
    closing the agent leaves it open for the caller to close.
    """

    def __init__(
        self,
        name: str,
        store: Store,
        user_id: uuid.UUID | str,
        tenant_id: uuid.UUID | str,
        agent_id: uuid.UUID | str,
        session_id: uuid.UUID | str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidInputError("name must be a non-empty str")
        if not isinstance(store, Store):
            raise InvalidInputError(
                f"store must be a mofa_persist Store, not {type(store).__name__}"
            )
        self.name = name
        self.user_id = require_uuid("user_id", user_id)
        self.tenant_id = require_uuid("tenant_id", tenant_id)
        self.agent_id = require_uuid("agent_id", agent_id)
        self.session_id = coerce_uuid("session_id", session_id, optional=True)
        #: The store view every operation uses: restricted to this tenant, user and agent.
        self.store: Store = store.scoped(
            tenant_id=self.tenant_id, user_id=self.user_id, agent_id=self.agent_id
        )

    def __repr__(self) -> str:
        return (
            f"PersistencePlugin({self.name!r}, {self.store!r}, agent_id={self.agent_id}, "
            f"session_id={self.session_id})"
        )

    async def create_session(
        self,
        *,
        session_id: uuid.UUID | None = None,
        title: str | None = None,
        metadata: dict[str, object] | None = None,
    ) -> Session:
        """A new session owned by this user and agent, in this tenant."""
        return await self.store.create_session(
            session_id=session_id,
            user_id=self.user_id,
            agent_id=self.agent_id,
            title=title,
            metadata=metadata,
        )

    async def open_session(self, session_id: uuid.UUID) -> Session:
        """The session ``session_id``, created first if no one has it yet.

        Two processes opening a new id at once both end up with the one session. An id that
        exists outside this tenant, user or agent is ``NotFoundError``, as if it did not exist.
        """
        try:
            return await self.store.get_session(session_id)
        except NotFoundError:
            pass
        try:
            return await self.create_session(session_id=session_id)
        except ConflictError:
            # Someone created it in between, or it belongs to someone else (then: not found).
            return await self.store.get_session(session_id)

    async def list_sessions(self, *, limit: int = 100) -> list[Session]:
        """This user's sessions with this agent, most recently active first."""
        page = await self.store.list_sessions(limit=limit)
        return page.items
