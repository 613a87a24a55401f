"""MofaSaver under concurrency, on the SQL backends: two processes driving threads of one
database at once, and racing ``aput`` / ``aput_writes`` on one thread from two stores (two
connection pools). Nothing acknowledged is lost and no raw driver error escapes."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langgraph.checkpoint.base")

from conftest import selected_backends
from langgraph.checkpoint.memory import InMemorySaver
from langgraph_worker import chat_graph, raw_checkpoint

import mofa_persist
from mofa_persist.integrations.langgraph import NAMESPACE, MofaSaver
from mofa_persist.models import (
    langgraph_blobs_table,
    langgraph_checkpoints_table,
    langgraph_writes_table,
)

WORKER = Path(__file__).with_name("langgraph_worker.py")
SQL = [name for name in selected_backends() if name != "memory"]
on_sql = pytest.mark.parametrize("backend", SQL)
ROUNDS = 4
SHARED = 6


@pytest.fixture(autouse=True)
async def leave_no_checkpoints(database_url: str) -> Any:
    yield
    async with await mofa_persist.connect(database_url) as store, store.engine.begin() as conn:
        for table in (langgraph_writes_table, langgraph_blobs_table, langgraph_checkpoints_table):
            await conn.execute(table.delete())


async def run_worker(url: str, tenant: uuid.UUID, tag: str, threads: list[str]) -> list[Any]:
    """One worker process to its end: its JSON lines, or the test fails with its stderr."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        url,
        str(tenant),
        tag,
        str(ROUNDS),
        str(SHARED),
        *threads,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 300)
    if child.returncode != 0:
        pytest.fail(f"worker {tag} exited with {child.returncode}: {err.decode()[-3000:]}")
    return [json.loads(line) for line in out.decode().splitlines()]


@on_sql
async def test_two_processes_drive_threads_of_one_database(
    store: mofa_persist.Store, database_url: str
) -> None:
    tenant = uuid.uuid4()
    mine = {"a": ["a-1", "a-2", "a-3"], "b": ["b-1", "b-2", "b-3"]}
    said = await asyncio.gather(
        *(run_worker(database_url, tenant, tag, threads) for tag, threads in mine.items())
    )
    for records in said:
        assert records[-1] == {"end": True}

    # What one process alone makes for one thread, by LangGraph's own saver.
    reference = chat_graph(InMemorySaver())  # type: ignore[arg-type]
    config: Any = {"configurable": {"thread_id": "reference"}}
    for number in range(ROUNDS):
        await reference.ainvoke({"messages": [f"x {number}"]}, config)
    per_thread = len([s async for s in reference.aget_state_history(config)])

    view = store.scoped(tenant_id=tenant)
    saver = MofaSaver(view)
    graph = chat_graph(saver)
    for tag, threads in mine.items():
        for thread in threads:
            config = {"configurable": {"thread_id": thread}}
            state = await graph.aget_state(config)
            expected = []
            for number in range(ROUNDS):
                expected += [f"{tag} {thread} {number}", f"echo {2 * number + 1}"]
            assert state.values["messages"] == expected
            history = [s async for s in graph.aget_state_history(config)]
            assert len(history) == per_thread
    shared: Any = {"configurable": {"thread_id": "shared", "checkpoint_ns": ""}}
    stored = {
        found.checkpoint["id"]: found.checkpoint["channel_values"]["value"]
        async for found in saver.alist(shared)
    }
    acknowledged = {
        record["shared"]: record["value"]
        for records in said
        for record in records
        if "shared" in record
    }
    assert len(acknowledged) == 2 * SHARED
    assert stored == acknowledged
    sessions = await view.list_sessions(limit=100)
    assert len(sessions.items) == 7  # six threads and the shared one: one session each


@on_sql
async def test_racing_aput_on_one_thread_loses_nothing(
    store: mofa_persist.Store, database_url: str
) -> None:
    """Two stores put into a thread at the same instant, many times: a new thread (its
    session is raced for), different checkpoints, the same checkpoint twice, the same
    pending writes twice."""
    tenant = uuid.uuid4()
    async with await mofa_persist.connect(database_url) as other_root:
        savers = [
            MofaSaver(store.scoped(tenant_id=tenant)),
            MofaSaver(other_root.scoped(tenant_id=tenant)),
        ]
        for round_number in range(15):
            thread = f"race {round_number}"
            config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            versions = [saver.get_next_version(None, None) for saver in savers]
            ids = [str(uuid.uuid4()) for _ in savers]
            await asyncio.gather(
                *(
                    saver.aput(
                        config,
                        raw_checkpoint(ids[n], {"value": versions[n]}, f"v{n}"),
                        {"n": n},
                        {"value": versions[n]},
                    )
                    for n, saver in enumerate(savers)
                )
            )
            same = raw_checkpoint(str(uuid.uuid4()), {"value": versions[0]}, "v0")
            configs = await asyncio.gather(
                *(
                    saver.aput(config, same, {"n": "same"}, {"value": versions[0]})
                    for saver in savers
                )
            )
            assert configs[0] == configs[1]
            await asyncio.gather(
                *(
                    saver.aput_writes(configs[0], [("value", "w"), ("__error__", "e")], "task")
                    for saver in savers
                )
            )
            found = {item.checkpoint["id"]: item async for item in savers[1].alist(config)}
            assert set(found) == {*ids, same["id"]}
            assert found[ids[0]].checkpoint["channel_values"] == {"value": "v0"}
            assert found[ids[1]].checkpoint["channel_values"] == {"value": "v1"}
            assert found[same["id"]].pending_writes == [
                ("task", "__error__", "e"),
                ("task", "value", "w"),
            ]
            session = await store.scoped(tenant_id=tenant).session_for(
                NAMESPACE, thread, create=False
            )
            assert session is not None
        listed = await store.scoped(tenant_id=tenant).list_sessions(limit=100)
        assert len(listed.items) == 15
