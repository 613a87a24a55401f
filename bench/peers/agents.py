"""The OpenAI Agents SDK: its ``SQLAlchemySession`` and this library's ``MofaSession``.

On MySQL the SDK cannot create its tables (``session_id`` is a ``String`` with no length);
they are made here with ``VARCHAR(255)``, as its users must do, and the report says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents.extensions.memory import SQLAlchemySession
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import create_async_engine

import mofa_persist
from mofa_persist.integrations.openai_agents import MofaSession

from .harness import POOL, TEXT, PeerStore
from .library import sqlalchemy_url

if TYPE_CHECKING:
    from ..servers import Target

#: The SDK's tables as its create_all makes them, with the length MySQL requires.
MYSQL_TABLES = (
    "CREATE TABLE agent_sessions (session_id VARCHAR(255) PRIMARY KEY, "
    "created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "
    "updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    "CREATE TABLE agent_messages (id INTEGER PRIMARY KEY AUTO_INCREMENT, "
    "session_id VARCHAR(255) NOT NULL, message_data TEXT NOT NULL, "
    "created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "
    "INDEX idx_agent_messages_session_time (session_id, created_at), "
    "FOREIGN KEY (session_id) REFERENCES agent_sessions (session_id) ON DELETE CASCADE)",
)


def _item(text: str) -> Any:
    return {"role": "user", "content": text}


class _Items(PeerStore):
    framework = "OpenAI Agents"

    async def append(self, handle: Any, text: str) -> None:
        await handle.add_items([_item(text)])

    async def newest(self, handle: Any, count: int) -> list[str]:
        return [item["content"] for item in await handle.get_items(limit=count)]

    async def texts(self, handle: Any) -> list[str]:
        return [item["content"] for item in await handle.get_items()]

    async def seed(self, handle: Any, count: int) -> None:
        for start in range(0, count, 500):
            await handle.add_items(
                [_item(f"h{i} {TEXT}") for i in range(start, min(count, start + 500))]
            )


class SdkSession(_Items):
    name = "SQLAlchemySession"

    async def open(self, target: Target) -> None:
        self.engine = create_async_engine(
            sqlalchemy_url(target),
            **({} if target.path else {"pool_size": POOL, "max_overflow": 0}),
        )
        self.note = ""
        if target.backend == "mysql":
            async with self.engine.begin() as conn:
                for statement in MYSQL_TABLES:
                    await conn.execute(sql_text(statement))
            self.note = "MySQL: its create_tables fails (String with no length); tables made here"
        else:  # its create_all once here, so no measured call carries schema work
            await SQLAlchemySession("probe", engine=self.engine, create_tables=True).get_items()

    async def close(self) -> None:
        await self.engine.dispose()

    async def session(self, key: str) -> Any:
        return SQLAlchemySession(key, engine=self.engine)


class MofaSessionStore(_Items):
    name = "MofaSession"
    ours = True

    async def open(self, target: Target) -> None:
        self.store = await mofa_persist.connect(target.url, pool_size=POOL, max_overflow=0)

    async def close(self) -> None:
        await self.store.close()

    async def session(self, key: str) -> Any:
        return MofaSession(key, self.store)
