"""MofaSaver, the LangGraph checkpointer: LangGraph's own conformance suite on every backend,
a real graph interrupted and resumed from another store object, time travel, threads as
ordinary sessions, and the sync methods."""

from __future__ import annotations

import asyncio
import operator
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

import pytest

pytest.importorskip("langgraph.checkpoint.conformance")

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

import mofa_persist
from mofa_persist.integrations.langgraph import NAMESPACE, MofaSaver
from mofa_persist.models import (
    langgraph_blobs_table,
    langgraph_checkpoints_table,
    langgraph_writes_table,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from langgraph.checkpoint.base import BaseCheckpointSaver
    from langgraph.checkpoint.conformance.report import CapabilityReport

ALL = {"put", "put_writes", "get_tuple", "list", "delete_thread"}
EXTENDED = {"delete_for_runs", "copy_thread", "prune"}


@pytest.fixture(autouse=True)
async def leave_no_checkpoints(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """The database of a run is shared by the whole suite: leave no LangGraph rows behind for
    suites that read every table (their rows hold bytes)."""
    yield
    url = request.node.funcargs.get("database_url")
    if url is None or url == "memory://":
        return
    async with await mofa_persist.connect(url) as store, store.engine.begin() as conn:
        for table in (langgraph_writes_table, langgraph_blobs_table, langgraph_checkpoints_table):
            await conn.execute(table.delete())


def summary(report: CapabilityReport) -> str:
    return ", ".join(
        f"{name}: {result.tests_passed} passed, {result.tests_failed} failed {result.failures}"
        for name, result in sorted(report.results.items())
        if result.detected
    )


# ---------------------------------------------------------------------- conformance suite


async def test_conformance_suite_runs_and_passes_on_the_reference_saver() -> None:
    """The suite is real: it runs tests against LangGraph's own InMemorySaver, which passes
    the base capabilities (it has no delete_for_runs, copy_thread or prune)."""

    @checkpointer_test(name="InMemorySaver")
    async def reference() -> AsyncIterator[BaseCheckpointSaver[Any]]:
        yield InMemorySaver()

    report = await validate(reference)
    assert report.passed_all_base(), summary(report)
    ran = sum(r.tests_passed for r in report.results.values())
    assert ran >= 40


async def test_conformance_suite_catches_a_broken_saver(store: mofa_persist.Store) -> None:
    """A saver that forgets pending writes fails the suite: the tests check something."""

    class Forgetful(MofaSaver):
        async def aput_writes(self, *args: Any, **kwargs: Any) -> None:
            return None

    @checkpointer_test(name="Forgetful")
    async def broken() -> AsyncIterator[BaseCheckpointSaver[Any]]:
        yield Forgetful(store.scoped(tenant_id=uuid.uuid4()))

    report = await validate(broken, capabilities={"put_writes"})
    assert report.results["put_writes"].tests_failed > 0


async def test_conformance_suite_passes_in_full(store: mofa_persist.Store, backend: str) -> None:
    """Every capability of LangGraph's conformance suite, base and extended, on each backend
    (each capability suite gets a view of its own, so their fixed thread ids never meet)."""

    @checkpointer_test(name=f"MofaSaver[{backend}]")
    async def saver() -> AsyncIterator[BaseCheckpointSaver[Any]]:
        yield MofaSaver(store.scoped(tenant_id=uuid.uuid4()))

    report = await validate(saver)
    detected = {name for name, result in report.results.items() if result.detected}
    assert detected == ALL | EXTENDED
    assert report.passed_all(), summary(report)
    assert report.conformance_level() == "FULL"
    print(f"\n{backend}: {summary(report)}")


# ---------------------------------------------------------------------- a real graph


class State(TypedDict):
    steps: Annotated[list[str], operator.add]
    answer: str


def build(saver: BaseCheckpointSaver[Any]) -> Any:
    def plan(state: State) -> dict[str, Any]:
        return {"steps": ["plan"]}

    def ask(state: State) -> dict[str, Any]:
        answer = interrupt({"question": "go on?"})
        return {"steps": ["ask"], "answer": str(answer)}

    def act(state: State) -> dict[str, Any]:
        return {"steps": [f"act:{state['answer']}"]}

    graph = StateGraph(State)
    graph.add_node("plan", plan)
    graph.add_node("ask", ask)
    graph.add_node("act", act)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "ask")
    graph.add_edge("ask", "act")
    graph.add_edge("act", END)
    return graph.compile(checkpointer=saver)


@pytest.fixture
def file_backend(backend: str) -> str:
    if backend == "memory":
        pytest.skip("an in-memory database does not outlive its store")
    return backend


async def test_graph_interrupted_then_resumed_from_a_new_store(
    file_backend: str, database_url: str
) -> None:
    thread = f"thread ✓ {uuid.uuid4()}"
    config: Any = {"configurable": {"thread_id": thread}}
    async with await mofa_persist.connect(database_url) as first:
        graph = build(MofaSaver(first))
        out = await graph.ainvoke({"steps": [], "answer": ""}, config)
        assert out["steps"] == ["plan"]
        assert out["__interrupt__"][0].value == {"question": "go on?"}
        state = await graph.aget_state(config)
        assert state.next == ("ask",)

    async with await mofa_persist.connect(database_url) as second:
        graph = build(MofaSaver(second))
        state = await graph.aget_state(config)
        assert state.next == ("ask",)
        assert state.values["steps"] == ["plan"]
        out = await graph.ainvoke(Command(resume="yes"), config)
        assert out["steps"] == ["plan", "ask", "act:yes"]
        assert (await graph.aget_state(config)).next == ()


async def time_travel(saver: BaseCheckpointSaver[Any]) -> list[Any]:
    """Run to the end, go back to the checkpoint before "plan" and run a second branch."""
    graph = build(saver)
    config: Any = {"configurable": {"thread_id": "travel"}}
    seen: list[Any] = []
    await graph.ainvoke({"steps": [], "answer": ""}, config)
    seen.append((await graph.ainvoke(Command(resume="first"), config))["steps"])
    history = [snapshot async for snapshot in graph.aget_state_history(config)]
    seen.append([(s.next, s.values.get("steps")) for s in history])
    earlier = next(s for s in history if s.next == ("plan",))
    out = await graph.ainvoke(None, earlier.config)
    seen.append((out["steps"], out["__interrupt__"][0].value))
    seen.append((await graph.ainvoke(Command(resume="second"), config))["steps"])
    after = [snapshot async for snapshot in graph.aget_state_history(config)]
    seen.append([(s.next, s.values.get("steps")) for s in after])
    seen.append(len(after) - len(history))
    return seen


async def test_time_travel_resumes_from_an_earlier_checkpoint(store: mofa_persist.Store) -> None:
    seen = await time_travel(MofaSaver(store.scoped(tenant_id=uuid.uuid4())))
    assert seen[0] == ["plan", "ask", "act:first"]
    assert seen[2] == (["plan"], {"question": "go on?"})
    assert seen[3] == ["plan", "ask", "act:second"]
    # The first branch is still in the history, after the second.
    assert ((), ["plan", "ask", "act:first"]) in seen[4]
    assert seen[4][0] == ((), ["plan", "ask", "act:second"])
    # LangGraph's own saver does exactly the same.
    assert seen == await time_travel(InMemorySaver())


async def test_unchanged_channels_are_not_written_again(store: mofa_persist.Store) -> None:
    saver = MofaSaver(store)
    config: Any = {"configurable": {"thread_id": str(uuid.uuid4()), "checkpoint_ns": ""}}
    versions: dict[str, Any] = {"a": saver.get_next_version(None, None)}
    versions["b"] = saver.get_next_version(None, None)
    checkpoint: Any = {
        "v": 1,
        "id": "1",
        "ts": "2026-12-02T00:00:00+00:00",
        "channel_values": {"a": "big", "b": 1},
        "channel_versions": dict(versions),
        "versions_seen": {},
        "updated_channels": None,
    }
    stored = await saver.aput(config, checkpoint, {"step": 0}, dict(versions))
    versions["b"] = saver.get_next_version(versions["b"], None)
    second: Any = {**checkpoint, "id": "2", "channel_values": {"a": "big", "b": 2}}
    second["channel_versions"] = dict(versions)
    stored = await saver.aput(stored, second, {"step": 1}, {"b": versions["b"]})
    found = await saver.aget_tuple(stored)
    assert found is not None
    assert found.checkpoint["channel_values"] == {"a": "big", "b": 2}
    session = await store.session_for(NAMESPACE, config["configurable"]["thread_id"])
    assert session is not None
    async with store.engine.connect() as conn:
        blobs = await conn.execute(
            langgraph_blobs_table.select().where(langgraph_blobs_table.c.session_id == session.id)
        )
        assert sorted(row.channel for row in blobs) == ["a", "b", "b"]


@pytest.mark.parametrize("channels", [3, 70], ids=["few channels", "more than one statement takes"])
async def test_latest_read_matches_the_listing(store: mofa_persist.Store, channels: int) -> None:
    """aget_tuple reads with driver-level SQL (two statements; more than 64 channels take the
    SQLAlchemy path alist uses): both give the same tuple, pending writes in order, and a
    thread of another view stays invisible."""
    saver = MofaSaver(store.scoped(tenant_id=uuid.uuid4()))
    thread = str(uuid.uuid4())
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    versions = {f"c{i}": saver.get_next_version(None, None) for i in range(channels)}
    checkpoint: Any = {
        "v": 1,
        "id": "1",
        "ts": "2026-12-02T00:00:00+00:00",
        "channel_values": {f"c{i}": [i, "x" * i] for i in range(channels)},
        "channel_versions": dict(versions),
        "versions_seen": {},
        "updated_channels": None,
    }
    stored = await saver.aput(config, checkpoint, {"step": 0, "source": "input"}, versions)
    await saver.aput_writes(stored, [("c1", "late"), ("c0", b"\x00raw")], task_id="t2")
    await saver.aput_writes(stored, [("c2", {"k": 1})], task_id="t1", task_path="a")
    latest = await saver.aget_tuple(config)
    by_id = await saver.aget_tuple(stored)
    listed = [found async for found in saver.alist(config)]
    assert latest is not None and by_id is not None and len(listed) == 1
    assert latest == by_id == listed[0]
    assert latest.checkpoint["channel_values"] == checkpoint["channel_values"]
    assert latest.pending_writes == listed[0].pending_writes
    assert {w[0] for w in latest.pending_writes} == {"t1", "t2"}
    assert await MofaSaver(store.scoped(tenant_id=uuid.uuid4())).aget_tuple(config) is None
    missing: Any = {
        "configurable": {"thread_id": thread, "checkpoint_ns": "", "checkpoint_id": "9"}
    }
    assert await saver.aget_tuple(missing) is None


# ---------------------------------------------------------------------- threads are sessions


async def _rows(store: mofa_persist.Store, session_id: uuid.UUID) -> int:
    total = 0
    async with store.engine.connect() as conn:
        for table in (langgraph_checkpoints_table, langgraph_blobs_table, langgraph_writes_table):
            stmt = table.select().where(table.c.session_id == session_id)
            total += len(list(await conn.execute(stmt)))
    return total


async def test_a_thread_is_an_ordinary_session(store: mofa_persist.Store) -> None:
    tenant = uuid.uuid4()
    view = store.scoped(tenant_id=tenant)
    graph = build(MofaSaver(view))
    config: Any = {"configurable": {"thread_id": "support-chat-1"}}
    await graph.ainvoke({"steps": [], "answer": ""}, config)
    session = await view.session_for(NAMESPACE, "support-chat-1", create=False)
    assert session is not None
    listed = await view.list_sessions()
    assert [s.id for s in listed.items] == [session.id]
    assert await view.external_id_of(session.id) == (NAMESPACE, "support-chat-1")
    assert await _rows(store, session.id) > 0
    # The same id in another view is another thread.
    other = MofaSaver(store.scoped(tenant_id=uuid.uuid4()))
    assert await other.aget_tuple(config) is None

    await view.delete_session(session.id)
    assert await _rows(store, session.id) == 0
    assert await MofaSaver(view).aget_tuple(config) is None


async def test_erasing_a_tenant_removes_its_checkpoints(store: mofa_persist.Store) -> None:
    tenant = uuid.uuid4()
    view = store.scoped(tenant_id=tenant)
    saver = MofaSaver(view)
    graph = build(saver)
    config: Any = {"configurable": {"thread_id": "to be erased"}}
    await graph.ainvoke({"steps": [], "answer": ""}, config)
    kept_view = store.scoped(tenant_id=uuid.uuid4())
    kept = build(MofaSaver(kept_view))
    await kept.ainvoke({"steps": [], "answer": ""}, config)
    session = await view.session_for(NAMESPACE, "to be erased", create=False)
    assert session is not None
    assert await _rows(store, session.id) > 0

    erasure = await view.erase_tenant(tenant)
    assert erasure.counts["langgraph_checkpoints"] > 0
    assert erasure.counts["langgraph_blobs"] > 0
    assert await _rows(store, session.id) == 0
    assert await saver.aget_tuple(config) is None
    assert (await kept.aget_state(config)).next == ("ask",)


async def test_delete_thread_keeps_the_session(store: mofa_persist.Store) -> None:
    view = store.scoped(tenant_id=uuid.uuid4())
    saver = MofaSaver(view)
    await build(saver).ainvoke({"steps": [], "answer": ""}, {"configurable": {"thread_id": "t"}})
    session = await view.session_for(NAMESPACE, "t", create=False)
    assert session is not None
    await saver.adelete_thread("t")
    assert await _rows(store, session.id) == 0
    assert [s.id for s in (await view.list_sessions()).items] == [session.id]


# ---------------------------------------------------------------------- sync methods


async def test_sync_methods_from_a_worker_thread(store: mofa_persist.Store) -> None:
    saver = MofaSaver(store.scoped(tenant_id=uuid.uuid4()))
    graph = build(saver)
    config: Any = {"configurable": {"thread_id": "sync"}}

    def in_thread() -> list[str]:
        out = graph.invoke({"steps": [], "answer": ""}, config)
        assert out["__interrupt__"]
        out = graph.invoke(Command(resume="ok"), config)
        found = saver.get_tuple(config)
        assert found is not None
        history = list(saver.list(config, limit=2))
        assert len(history) == 2
        saver.put_writes(found.config, [("steps", ["x"])], "task")
        assert saver.get_tuple(config).pending_writes == [("task", "steps", ["x"])]  # type: ignore[union-attr]
        saver.delete_thread("sync")
        assert saver.get_tuple(config) is None
        return list(out["steps"])

    assert await asyncio.to_thread(in_thread) == ["plan", "ask", "act:ok"]


async def test_sync_methods_on_the_store_loop_raise_a_clear_error(
    store: mofa_persist.Store,
) -> None:
    saver = MofaSaver(store)
    with pytest.raises(asyncio.InvalidStateError, match="async methods"):
        saver.get_tuple({"configurable": {"thread_id": "x"}})
    with pytest.raises(asyncio.InvalidStateError, match="async methods"):
        list(saver.list(None))


async def test_a_saver_made_outside_a_loop_says_so(store: mofa_persist.Store) -> None:
    def in_thread() -> None:
        saver = MofaSaver(store)  # no loop runs in this thread: the saver cannot know the store's
        with pytest.raises(asyncio.InvalidStateError, match="event loop"):
            saver.get_tuple({"configurable": {"thread_id": "x"}})

    await asyncio.to_thread(in_thread)


def test_import_without_langgraph_names_the_extra() -> None:
    """Without the extra, importing the module says what to install (and the base package
    never imports LangGraph)."""
    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'langgraph' or name.startswith('langgraph.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import mofa_persist, mofa_persist.integrations, mofa_persist.cli\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'langgraph'], 'imported'\n"
        "try:\n"
        "    import mofa_persist.integrations.langgraph\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('imported without LangGraph')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'mofa-persist[langgraph]'" in result.stdout
