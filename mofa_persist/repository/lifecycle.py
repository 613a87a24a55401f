"""The data lifecycle on the store: retention and erasure within the view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lifecycle
from ..errors import InvalidInputError
from ..lifecycle import RetentionPolicy, RetentionReport
from .core import StoreCore

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable


class LifecycleApi(StoreCore):
    """The data lifecycle on the store: retention and erasure within the view."""

    async def apply_retention(
        self,
        policy: RetentionPolicy,
        *,
        dry_run: bool = False,
        batch_size: int = 1000,
        on_progress: Callable[[str, int], None] | None = None,
    ) -> RetentionReport:
        """Delete what ``policy`` no longer keeps, within this view, in short batches.

        Safe while agents write; a run that is stopped can simply be run again. The newest
        state of a session is never deleted, and ``seq`` goes on where it was. Returns the
        rows deleted per table (with ``dry_run``: the rows that would be).
        """
        if not isinstance(policy, RetentionPolicy):
            raise InvalidInputError("policy must be a RetentionPolicy")
        return await lifecycle.apply_retention(
            self, policy, dry_run=dry_run, batch_size=batch_size, on_progress=on_progress
        )

    async def erase_user(
        self, user_id: uuid.UUID | str, *, batch_size: int = 1000
    ) -> lifecycle.Erasure:
        """Delete every row of one user (within this view) from every table the library
        owns, in short batches, and leave an audit record. Returns that record."""
        return await lifecycle.erasure.erase(self, "user", user_id, batch_size=batch_size)

    async def erase_tenant(
        self, tenant_id: uuid.UUID | str, *, batch_size: int = 1000
    ) -> lifecycle.Erasure:
        """Delete every row of one tenant from every table the library owns, in short
        batches, and leave an audit record. Returns that record."""
        return await lifecycle.erasure.erase(self, "tenant", tenant_id, batch_size=batch_size)

    async def list_erasures(
        self,
        *,
        user_id: uuid.UUID | str | None = None,
        tenant_id: uuid.UUID | str | None = None,
        limit: int = 100,
    ) -> list[lifecycle.Erasure]:
        """Erasure audit records, newest first (of one user or tenant, if given)."""
        return await lifecycle.list_erasures(
            self, user_id=user_id, tenant_id=tenant_id, limit=limit
        )
