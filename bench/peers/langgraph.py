"""LangGraph: its official checkpointers (``AsyncPostgresSaver`` on a psycopg pool,
``AsyncSqliteSaver``) and this library's ``MofaSaver`` (every dialect; LangGraph has no
MySQL saver).

A session is a thread; an append is what a chat graph's step writes: a checkpoint whose
``messages`` channel holds the thread's messages so far plus the new one (the channel is
stored whole at each new version), and the newest 50 are sliced from the latest checkpoint's
channel (``aget_tuple``). A seeded history is one checkpoint holding all its messages.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base.id import uuid6

import mofa_persist
from mofa_persist.integrations.langgraph import MofaSaver

from .harness import POOL, TEXT, PeerStore

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

    from ..servers import Target


@dataclass
class Thread:
    key: str
    config: Any
    messages: list[Any] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    step: int = 0


class _Checkpoints(PeerStore):
    framework = "LangGraph"
    saver: BaseCheckpointSaver[Any]

    async def session(self, key: str) -> Any:
        return Thread(key, {"configurable": {"thread_id": key, "checkpoint_ns": ""}})

    async def _put(self, thread: Thread, new: list[Any]) -> None:
        thread.messages.extend(new)
        thread.step += 1
        for channel in ("messages", "step"):
            thread.versions[channel] = self.saver.get_next_version(
                thread.versions.get(channel), None
            )
        checkpoint: Any = {
            "v": 4,
            "id": str(uuid6(clock_seq=thread.step)),
            "ts": datetime.now(UTC).isoformat(),
            "channel_values": {"messages": list(thread.messages), "step": thread.step},
            "channel_versions": dict(thread.versions),
            "versions_seen": {"agent": {"messages": thread.versions["messages"]}},
            "updated_channels": ["messages", "step"],
        }
        metadata: Any = {"source": "loop", "step": thread.step, "parents": {}}
        try:
            thread.config = await self.saver.aput(
                thread.config, checkpoint, metadata, dict(thread.versions)
            )
        except BaseException:
            # A refused put's messages leave the thread's state (unless a concurrent put has
            # already carried them: a checkpoint is the whole state, last writer's view).
            for message in new:
                thread.messages.remove(message)
            raise

    async def append(self, handle: Any, text: str) -> None:
        await self._put(handle, [HumanMessage(content=text)])

    async def _latest(self, thread: Thread) -> list[str]:
        config = {"configurable": {"thread_id": thread.key, "checkpoint_ns": ""}}
        found = await self.saver.aget_tuple(config)  # type: ignore[arg-type]
        assert found is not None
        return [str(m.content) for m in found.checkpoint["channel_values"]["messages"]]

    async def newest(self, handle: Any, count: int) -> list[str]:
        return (await self._latest(handle))[-count:]

    async def texts(self, handle: Any) -> list[str]:
        return await self._latest(handle)

    async def seed(self, handle: Any, count: int) -> None:
        await self._put(handle, [HumanMessage(content=f"h{i} {TEXT}") for i in range(count)])


class OfficialSaver(_Checkpoints):
    name = "LangGraph saver"  # named by open(): AsyncSqliteSaver or AsyncPostgresSaver
    dialects = ("sqlite", "postgresql")

    def __init__(self) -> None:
        self.stack = contextlib.AsyncExitStack()

    async def open(self, target: Target) -> None:
        if target.backend == "sqlite":
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            assert target.path is not None
            self.name = "AsyncSqliteSaver"
            saver = AsyncSqliteSaver.from_conn_string(target.path)
            self.saver = await self.stack.enter_async_context(saver)
        else:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
            from psycopg.rows import dict_row
            from psycopg_pool import AsyncConnectionPool

            self.name = "AsyncPostgresSaver"
            password = f":{target.password}" if target.password else ""
            dsn = (
                f"postgresql://{target.user}{password}@{target.host}:{target.port}/"
                f"{target.database}?sslmode=disable"
            )
            pool = AsyncConnectionPool(
                dsn,
                min_size=1,
                max_size=POOL,
                open=False,
                kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
            )
            await pool.open()
            self.stack.push_async_callback(pool.close)
            self.saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await self.saver.setup()  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self.stack.aclose()


class MofaSaverStore(_Checkpoints):
    name = "MofaSaver"
    ours = True

    async def open(self, target: Target) -> None:
        self.store = await mofa_persist.connect(target.url, pool_size=POOL, max_overflow=0)
        self.saver = MofaSaver(self.store)

    async def close(self) -> None:
        await self.store.close()
