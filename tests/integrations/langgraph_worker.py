"""The second (and third) process of tests/integrations/test_langgraph_concurrency.py.

    python langgraph_worker.py URL TENANT TAG ROUNDS SHARED_PUTS THREAD [THREAD ...]

In the tenant's view of the (already migrated) database at URL it first puts SHARED_PUTS
checkpoints of its own into the thread ``shared`` (which every worker writes at once, so the
session of that thread is raced for too), then runs a small chat graph ROUNDS times on each of
its own THREADs. It prints one JSON line per acknowledged checkpoint or turn, then
``{"end": true}``; any exception ends it with a traceback and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import json
import operator
import sys
import uuid
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

import mofa_persist
from mofa_persist.integrations.langgraph import MofaSaver


class Chat(TypedDict):
    messages: Annotated[list[str], operator.add]


def reply(state: Chat) -> dict[str, Any]:
    return {"messages": [f"echo {len(state['messages'])}"]}


def chat_graph(saver: MofaSaver) -> Any:
    graph = StateGraph(Chat)
    graph.add_node("reply", reply)
    graph.add_edge(START, "reply")
    graph.add_edge("reply", END)
    return graph.compile(checkpointer=saver)


def say(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def raw_checkpoint(checkpoint_id: str, versions: dict[str, str], value: str) -> Any:
    return {
        "v": 1,
        "id": checkpoint_id,
        "ts": "2026-12-03T00:00:00+00:00",
        "channel_values": {"value": value},
        "channel_versions": dict(versions),
        "versions_seen": {},
        "updated_channels": None,
    }


async def main(
    url: str, tenant: str, tag: str, rounds: int, shared: int, threads: list[str]
) -> None:
    async with await mofa_persist.connect(url, migrate=False) as root:
        view = root.scoped(tenant_id=uuid.UUID(tenant))
        saver = MofaSaver(view)
        config: Any = {"configurable": {"thread_id": "shared", "checkpoint_ns": ""}}
        for index in range(shared):
            version = saver.get_next_version(None, None)
            checkpoint_id = str(uuid.uuid4())
            await saver.aput(
                config,
                raw_checkpoint(checkpoint_id, {"value": version}, f"{tag}-{index}"),
                {"by": tag, "index": index},
                {"value": version},
            )
            say({"shared": checkpoint_id, "value": f"{tag}-{index}"})
        graph = chat_graph(saver)
        for number in range(rounds):
            for thread in threads:
                out = await graph.ainvoke(
                    {"messages": [f"{tag} {thread} {number}"]},
                    {"configurable": {"thread_id": thread}},
                )
                say({"thread": thread, "messages": len(out["messages"])})
    say({"end": True})


if __name__ == "__main__":
    url, tenant, tag, rounds, shared, *threads = sys.argv[1:]
    asyncio.run(main(url, tenant, tag, int(rounds), int(shared), threads))
