"""``--tenant``, ``--user`` and ``--agent``: which part of the database a command sees.

With ``--tenant`` a command runs on the view ``store.scoped(tenant_id=..., user_id=...,
agent_id=...)``: the library then keeps every read and every delete inside that tenant (and
user, and agent), whatever else the command is asked. Without ``--tenant``, ``--user`` and
``--agent`` are filters over the whole database for the commands that select sessions; the
commands that have nothing to filter with (``import``, ``prune --policy``) refuse them, since
silently ignoring them would touch more than was asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import transfer
from ..errors import InvalidInputError
from ..validate import coerce_uuid

if TYPE_CHECKING:
    import uuid

    from ..records import Session
    from ..store import Store


@dataclass(frozen=True, slots=True)
class Owners:
    """The ``--tenant``, ``--user`` and ``--agent`` of one command, parsed before any I/O."""

    tenant: uuid.UUID | None = None
    user: uuid.UUID | None = None
    agent: uuid.UUID | None = None

    @classmethod
    def parse(cls, tenant: str | None, user: str | None, agent: str | None) -> Owners:
        return cls(
            coerce_uuid("--tenant", tenant, optional=True),
            coerce_uuid("--user", user, optional=True),
            coerce_uuid("--agent", agent, optional=True),
        )

    @property
    def given(self) -> bool:
        return any(value is not None for value in (self.tenant, self.user, self.agent))

    def view(self, store: Store) -> Store:
        """The store as the command sees it: the tenant's view, or the whole database."""
        if self.tenant is None:
            return store
        return store.scoped(tenant_id=self.tenant, user_id=self.user, agent_id=self.agent)

    def selection(self, session: uuid.UUID | None = None) -> transfer.Selection:
        """The same owners as a transfer selection (inside a view they only restate it)."""
        return transfer.Selection(
            session_id=session, user_id=self.user, tenant_id=self.tenant, agent_id=self.agent
        )

    def filters(self) -> dict[str, Any]:
        """``list_sessions`` filters: none inside a view, which already holds them."""
        if self.tenant is not None:
            return {}
        return {"user_id": self.user, "agent_id": self.agent}

    def admits(self, session: Session) -> bool:
        """Whether ``session`` passes the ``--user``/``--agent`` filters (a view checked the
        tenant already)."""
        return all(
            wanted is None or wanted == actual
            for wanted, actual in ((self.user, session.user_id), (self.agent, session.agent_id))
        )

    def need_tenant(self, what: str) -> None:
        """For commands with nothing to filter with: ``--user``/``--agent`` narrow a view."""
        if self.tenant is None and (self.user is not None or self.agent is not None):
            raise InvalidInputError(
                f"{what} takes --user and --agent only with --tenant (they narrow its view)"
            )

    def describe(self) -> str:
        """``tenant T, user U`` for messages; ``every tenant`` when none is given."""
        parts = [
            f"{name} {value}"
            for name, value in (("tenant", self.tenant), ("user", self.user), ("agent", self.agent))
            if value is not None
        ]
        return ", ".join(parts) or "every tenant"
