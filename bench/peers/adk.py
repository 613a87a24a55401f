"""Google ADK: its ``DatabaseSessionService`` and this library's ``MofaSessionService``.

A session's handle is the ADK ``Session`` object every append goes through (shared by the 20
tasks). ADK's service refuses an append from a copy older than the stored session
(``StaleSessionError``); those refusals are counted by the harness. ``MofaSessionService`` runs
with ``ordered=True``, its mode where concurrent writers to one session all succeed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.adk.events.event import Event
from google.adk.sessions import DatabaseSessionService
from google.adk.sessions.base_session_service import GetSessionConfig
from google.genai import types

import mofa_persist
from mofa_persist.integrations.adk import MofaSessionService

from .harness import POOL, PeerStore
from .library import sqlalchemy_url

if TYPE_CHECKING:
    from google.adk.sessions import BaseSessionService

    from ..servers import Target

APP, USER = "bench", "u"


def _event(text: str) -> Event:
    return Event(
        invocation_id="bench",
        author="user",
        content=types.Content(role="user", parts=[types.Part(text=text)]),
    )


def _text(event: Event) -> str:
    assert event.content is not None and event.content.parts
    return event.content.parts[0].text or ""


class _Events(PeerStore):
    framework = "Google ADK"
    service: BaseSessionService

    async def session(self, key: str) -> Any:
        return await self.service.create_session(app_name=APP, user_id=USER, session_id=key)

    async def append(self, handle: Any, text: str) -> None:
        await self.service.append_event(handle, _event(text))

    async def _events(self, handle: Any, config: GetSessionConfig | None) -> list[str]:
        got = await self.service.get_session(
            app_name=APP, user_id=USER, session_id=handle.id, config=config
        )
        assert got is not None
        return [_text(event) for event in got.events]

    async def newest(self, handle: Any, count: int) -> list[str]:
        return await self._events(handle, GetSessionConfig(num_recent_events=count))

    async def texts(self, handle: Any) -> list[str]:
        return await self._events(handle, None)


class AdkDatabase(_Events):
    name = "DatabaseSessionService"

    async def open(self, target: Target) -> None:
        pool = {} if target.path else {"pool_size": POOL, "max_overflow": 0}
        self.service = self.db = DatabaseSessionService(sqlalchemy_url(target), **pool)
        await self.db.prepare_tables()

    async def close(self) -> None:
        await self.db.close()


class MofaAdk(_Events):
    name = "MofaSessionService"
    ours = True
    note = "ordered=True"

    async def open(self, target: Target) -> None:
        self.store = await mofa_persist.connect(target.url, pool_size=POOL, max_overflow=0)
        self.service = MofaSessionService(self.store, ordered=True)

    async def close(self) -> None:
        await self.store.close()
