"""LangChain: ``SQLChatMessageHistory`` from langchain-community (its async mode).

It has no call for the newest N messages: ``aget_messages()`` returns the whole history and
the newest 50 are sliced off, as its users must do. It has no adapter in this library.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from langchain_core.messages import HumanMessage
from sqlalchemy.ext.asyncio import create_async_engine

from .harness import POOL, TEXT, PeerStore
from .library import sqlalchemy_url

with warnings.catch_warnings():  # langchain-community warns on import that it is sunsetting
    warnings.simplefilter("ignore", DeprecationWarning)
    from langchain_community.chat_message_histories import SQLChatMessageHistory

if TYPE_CHECKING:
    from ..servers import Target


class LangChainHistory(PeerStore):
    framework = "LangChain"
    name = "SQLChatMessageHistory"
    note = "newest 50 = aget_messages()[-50:] (no limit in its API)"

    async def open(self, target: Target) -> None:
        self.engine = create_async_engine(
            sqlalchemy_url(target),
            **({} if target.path else {"pool_size": POOL, "max_overflow": 0}),
        )
        await self._history("probe").aget_messages()  # its create_all, once, untimed

    def _history(self, key: str) -> Any:
        return SQLChatMessageHistory(session_id=key, connection=self.engine, async_mode=True)

    async def close(self) -> None:
        await self.engine.dispose()

    async def session(self, key: str) -> Any:
        return self._history(key)

    async def append(self, handle: Any, text: str) -> None:
        await handle.aadd_messages([HumanMessage(content=text)])

    async def newest(self, handle: Any, count: int) -> list[str]:
        return [str(m.content) for m in (await handle.aget_messages())[-count:]]

    async def texts(self, handle: Any) -> list[str]:
        return [str(m.content) for m in await handle.aget_messages()]

    async def seed(self, handle: Any, count: int) -> None:
        for start in range(0, count, 500):
            await handle.aadd_messages(
                [
                    HumanMessage(content=f"h{i} {TEXT}")
                    for i in range(start, min(count, start + 500))
                ]
            )
