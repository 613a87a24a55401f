"""The agent layer on every backend: restarts, turns, provider failures, sessions, the window."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from agent_support import FakeOpenAI, Reply, ScriptedProvider, completion_body

import mofa_persist
from mofa_persist import ConflictError, InvalidInputError, NotFoundError, Store
from mofa_persist.agent import (
    AgentClosedError,
    Completion,
    LLMAgent,
    LLMAgentBuilder,
    OpenAIProvider,
    PersistencePlugin,
    Provider,
    ProviderError,
    ProviderRateLimitError,
    ProviderResponseError,
    ProviderTimeoutError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from conftest import Quirks

SYSTEM = "You are a terse assistant."


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as running:
        yield running


@pytest.fixture
def plugin(store: Store, tenant: uuid.UUID) -> PersistencePlugin:
    return PersistencePlugin("persistence", store, uuid.uuid4(), tenant, uuid.uuid4(), uuid.uuid4())


def http_provider(server: FakeOpenAI, **options: Any) -> OpenAIProvider:
    settings: dict[str, Any] = {"timeout": 5.0, "max_retries": 2, "backoff": 0.01}
    settings.update(options)
    return OpenAIProvider(api_key="sk-test", base_url=server.base_url, **settings)


async def build(plugin: PersistencePlugin, provider: Provider, **options: Any) -> LLMAgent:
    builder = (
        LLMAgentBuilder()
        .with_persistence_plugin(plugin)
        .with_provider(provider)
        .with_system_prompt(SYSTEM)
    )
    if "window" in options:
        builder.with_context_window(options["window"])
    if "state" in options:
        builder.with_initial_state(options["state"])
    if "session_id" in options:
        builder.with_session_id(options["session_id"])
    return await builder.build_async()


async def nothing_stored(plugin: PersistencePlugin, session_id: uuid.UUID) -> bool:
    session = await plugin.store.get_session(session_id)
    return (
        await plugin.store.count_messages(session_id) == 0
        and await plugin.store.load_state(session_id) is None
        and (session.last_seq, session.state_version) == (0, 0)
    )


# ---------------------------------------------------------------------- restarts


async def test_restart_restores_history_and_state_and_sends_them(
    store: Store, database_url: str, quirks: Quirks, tenant: uuid.UUID, server: FakeOpenAI
) -> None:
    user, agent_id, session_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    first = PersistencePlugin("persistence", store, user, tenant, agent_id, session_id)
    async with await build(first, http_provider(server), state={"step": 0}) as agent:
        assert await agent.chat("hello") == "reply 1"
        agent.state["step"] = 1
        agent.state["city"] = "Lisbon"
        assert await agent.chat("plan a trip") == "reply 2"

    # A restart: a new store connection (the same one only where a database cannot be
    # shared), a new plugin given string ids, a new agent.
    again = await mofa_persist.connect(database_url) if quirks.shared_between_processes else store
    try:
        second = PersistencePlugin("persistence", again, str(user), str(tenant), agent_id, None)
        agent = await build(second, http_provider(server), session_id=str(session_id))
        async with agent:
            assert agent.session_id == session_id
            assert agent.state == {"step": 1, "city": "Lisbon"}
            assert agent.state_version == 2
            history = await agent.history()
            assert [(m.role, m.content) for m in history] == [
                ("user", "hello"),
                ("assistant", "reply 1"),
                ("user", "plan a trip"),
                ("assistant", "reply 2"),
            ]
            assert await agent.chat("where was I going?") == "reply 3"
    finally:
        if again is not store:
            await again.close()

    sent = server.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert [(m["role"], m["content"]) for m in sent.messages] == [
        ("system", SYSTEM),
        ("user", "hello"),
        ("assistant", "reply 1"),
        ("user", "plan a trip"),
        ("assistant", "reply 2"),
        ("user", "where was I going?"),
    ]


async def test_build_creates_a_missing_session_for_the_plugins_ids(
    plugin: PersistencePlugin,
) -> None:
    assert plugin.session_id is not None
    agent = await build(plugin, ScriptedProvider(), state={"mood": "new"})
    async with agent:
        session = await plugin.store.get_session(plugin.session_id)
        assert agent.session_id == session.id
        assert (session.tenant_id, session.user_id, session.agent_id) == (
            plugin.tenant_id,
            plugin.user_id,
            plugin.agent_id,
        )
        assert agent.state == {"mood": "new"}
        assert agent.state_version == 0
        await agent.chat("hi")
    # Built again: the same session, the saved state rather than the initial one.
    async with await build(plugin, ScriptedProvider(), state={"mood": "other"}) as agent:
        assert agent.session_id == plugin.session_id
        assert agent.state == {"mood": "new"}
        assert len(await agent.history()) == 2


# ---------------------------------------------------------------------- turns


async def test_each_turn_stores_messages_and_state_together(plugin: PersistencePlugin) -> None:
    async with await build(plugin, ScriptedProvider()) as agent:
        for step in range(1, 4):
            agent.state["step"] = step
            await agent.chat(f"message {step}")
        states = await plugin.store.list_states(agent.session_id)
        assert [(s.version, s.state) for s in states] == [
            (3, {"step": 3}),
            (2, {"step": 2}),
            (1, {"step": 1}),
        ]
        history = await agent.history()
        assert [m.seq for m in history] == [1, 2, 3, 4, 5, 6]
        reply = history[-1]
        assert reply.metadata["provider"] == "scripted"
        assert reply.metadata["model"] == "scripted-1"


async def test_save_and_restore_state_versions(plugin: PersistencePlugin) -> None:
    async with await build(plugin, ScriptedProvider()) as agent:
        agent.state["plan"] = "A"
        first = await agent.save_state()
        agent.state["plan"] = "B"
        await agent.chat("switch to B")
        restored = await agent.restore_state(first.version)
        assert (restored.version, restored.state) == (3, {"plan": "A"})
        assert agent.state == {"plan": "A"}
        with pytest.raises(NotFoundError):
            await agent.restore_state(99)
    async with await build(plugin, ScriptedProvider()) as agent:
        assert (agent.state, agent.state_version) == ({"plan": "A"}, 3)


async def test_provider_error_mid_turn_leaves_only_a_failed_call(
    plugin: PersistencePlugin, server: FakeOpenAI
) -> None:
    server.push(Reply(400, {"error": {"message": "model 'x' does not exist"}}))
    async with await build(plugin, http_provider(server)) as agent:
        agent.state["step"] = 1
        with pytest.raises(ProviderResponseError) as caught:
            await agent.chat("hello")
        assert caught.value.http_status == 400
        assert "does not exist" in str(caught.value)
        assert len(server.requests) == 1  # a 400 is not retried
        assert await nothing_stored(plugin, agent.session_id)
        usage = await agent.usage()
        assert usage.by_status == {"failed": 1}
        # The agent goes on; the failed turn left nothing in its context either.
        assert await agent.chat("hello again") == "reply 2"
        assert [m["role"] for m in server.requests[-1].messages] == ["system", "user"]


async def test_5xx_is_retried_a_bounded_number_of_times(
    plugin: PersistencePlugin, server: FakeOpenAI
) -> None:
    server.push(*(Reply(503, "upstream unavailable") for _ in range(3)))
    async with await build(plugin, http_provider(server, max_retries=2)) as agent:
        with pytest.raises(ProviderResponseError) as caught:
            await agent.chat("hello")
        assert caught.value.http_status == 503
        assert len(server.requests) == 3
        assert await nothing_stored(plugin, agent.session_id)
        assert (await agent.usage()).by_status == {"failed": 1}


async def test_429_then_success_is_retried_honoring_retry_after(
    plugin: PersistencePlugin, server: FakeOpenAI
) -> None:
    server.push(Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "0"}))
    async with await build(plugin, http_provider(server)) as agent:
        assert await agent.chat("hello") == "reply 2"
        assert len(server.requests) == 2
        assert server.requests[0].body == server.requests[1].body
        usage = await agent.usage()
        assert usage.by_status == {"success": 1}
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 3, 10)
        reply = (await agent.history())[-1]
        assert reply.metadata["attempts"] == 2


async def test_429_every_time_is_rate_limited(
    plugin: PersistencePlugin, server: FakeOpenAI
) -> None:
    server.push(*(Reply(429, headers={"Retry-After": "0"}) for _ in range(2)))
    async with await build(plugin, http_provider(server, max_retries=1)) as agent:
        with pytest.raises(ProviderRateLimitError) as caught:
            await agent.chat("hello")
        assert caught.value.retry_after == 0
        assert (await agent.usage()).by_status == {"rate_limited": 1}
        assert await nothing_stored(plugin, agent.session_id)


async def test_timeout_is_recorded_as_timeout(
    plugin: PersistencePlugin, server: FakeOpenAI
) -> None:
    server.push(Reply(delay=30))
    async with await build(plugin, http_provider(server, timeout=0.3)) as agent:
        with pytest.raises(ProviderTimeoutError):
            await agent.chat("hello")
        assert len(server.requests) == 1  # a timeout is not retried
        usage = await agent.usage()
        assert usage.by_status == {"timeout": 1}
        assert usage.latency_p50_ms is not None and usage.latency_p50_ms >= 250
        assert await nothing_stored(plugin, agent.session_id)


async def test_cancelled_call_is_recorded_and_the_cancel_propagates(
    plugin: PersistencePlugin,
) -> None:
    called = asyncio.Event()

    async def hang() -> None:
        called.set()
        await asyncio.Event().wait()

    async with await build(plugin, ScriptedProvider(hang)) as agent:
        task = asyncio.create_task(agent.chat("hello"))
        await asyncio.wait_for(called.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await agent.usage()).by_status == {"cancelled": 1}
        assert await nothing_stored(plugin, agent.session_id)


async def test_any_provider_exception_becomes_a_provider_error(
    plugin: PersistencePlugin,
) -> None:
    async with await build(plugin, ScriptedProvider(RuntimeError("boom"))) as agent:
        with pytest.raises(ProviderError) as caught:
            await agent.chat("hello")
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert (await agent.usage()).by_status == {"failed": 1}
        assert await nothing_stored(plugin, agent.session_id)


async def test_tool_calls_and_finish_reason_are_kept_in_metadata(
    plugin: PersistencePlugin, server: FakeOpenAI
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'},
    }
    server.push(Reply(body=completion_body(None, finish_reason="tool_calls", tool_calls=[call])))
    async with await build(plugin, http_provider(server)) as agent:
        assert await agent.chat("weather in Lisbon?") == ""
        reply = (await agent.history())[-1]
        assert reply.role == "assistant"
        assert reply.metadata["tool_calls"] == [call]
        assert reply.metadata["finish_reason"] == "tool_calls"
        assert reply.metadata["model"] == "fake-model"
        assert reply.metadata["usage"] == {
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "total_tokens": 10,
        }
        # No tool result was stored for the call, so it is not replayed as an open tool call
        # (OpenAI-compatible servers refuse that).
        await agent.chat("and tomorrow?")
        assert server.requests[-1].messages[2] == {"role": "assistant", "content": ""}


async def test_tool_results_from_the_provider_are_stored_and_replayed(
    plugin: PersistencePlugin,
) -> None:
    call = {"id": "call_9", "type": "function", "function": {"name": "now", "arguments": "{}"}}
    answered = Completion(
        content="It is noon.",
        finish_reason="stop",
        tool_calls=[call],
        tool_messages=[{"role": "tool", "content": "12:00", "tool_call_id": "call_9"}],
    )
    provider = ScriptedProvider(answered)
    async with await build(plugin, provider) as agent:
        await agent.chat("what time is it?")
        tool = (await agent.history())[-1]
        assert (tool.role, tool.content, tool.metadata) == (
            "tool",
            "12:00",
            {"tool_call_id": "call_9"},
        )
        await agent.chat("thanks")
    sent = provider.requests[-1]
    assert sent[2] == {"role": "assistant", "content": "It is noon.", "tool_calls": [call]}
    assert sent[3] == {"role": "tool", "content": "12:00", "tool_call_id": "call_9"}


async def test_unstorable_input_is_refused_before_the_provider_is_called(
    plugin: PersistencePlugin,
) -> None:
    provider = ScriptedProvider()
    async with await build(plugin, provider) as agent:
        agent.state["tags"] = {"a", "b"}  # a set is not JSON
        with pytest.raises(InvalidInputError):
            await agent.chat("hello")
        agent.state = {}
        with pytest.raises(InvalidInputError):
            await agent.chat("nul \x00 byte")
        assert provider.requests == []
        assert (await agent.usage()).calls == 0


async def test_a_stale_agent_gets_conflict_and_writes_nothing(plugin: PersistencePlugin) -> None:
    async with (
        await build(plugin, ScriptedProvider()) as one,
        await build(plugin, ScriptedProvider()) as two,
    ):
        await one.chat("first")
        with pytest.raises(ConflictError):
            await two.chat("second")
        assert [m.content for m in await two.history()] == ["first", "scripted 1"]
        await two.reload()
        assert two.state_version == 1
        await two.chat("second")
        assert await plugin.store.count_messages(two.session_id) == 4


# ---------------------------------------------------------------------- the context window


async def test_request_carries_system_prompt_and_only_the_newest_messages(
    plugin: PersistencePlugin,
) -> None:
    assert plugin.session_id is not None
    await plugin.open_session(plugin.session_id)
    await plugin.store.append_messages(
        plugin.session_id,
        [
            {"role": "user" if n % 2 == 0 else "assistant", "content": f"old {n}"}
            for n in range(200)
        ],
    )
    provider = ScriptedProvider()
    async with await build(plugin, provider, window=10) as agent:
        await agent.chat("new")
        sent = provider.requests[0]
        assert len(sent) == 1 + 10
        assert sent[0] == {"role": "system", "content": SYSTEM}
        assert [m["content"] for m in sent[1:]] == [f"old {n}" for n in range(191, 200)] + ["new"]
        await agent.chat("newer")
        contents = [m["content"] for m in provider.requests[1][1:]]
        assert contents == [*(f"old {n}" for n in range(193, 200)), "new", "scripted 1", "newer"]


# ---------------------------------------------------------------------- sessions


async def test_create_list_switch_and_delete_sessions(
    plugin: PersistencePlugin, store: Store
) -> None:
    # Sessions of another agent of the same user, and of another user, are not listed.
    other_agent = PersistencePlugin(
        "p", store, plugin.user_id, plugin.tenant_id, uuid.uuid4(), None
    )
    await other_agent.create_session()
    other_user = PersistencePlugin("p", store, uuid.uuid4(), plugin.tenant_id, plugin.agent_id)
    await other_user.create_session()

    async with await build(plugin, ScriptedProvider(), state={"n": 0}) as agent:
        first = agent.session_id
        await agent.chat("in the first session")
        created = await agent.create_session(title="second")
        assert isinstance(created, uuid.UUID)
        assert agent.session_id == created
        assert await agent.history() == []
        assert agent.state == {"n": 0}
        await agent.chat("in the second session")

        listed = await agent.list_sessions()
        assert [s.id for s in listed] == [created, first]
        assert listed[0].title == "second"

        await agent.switch_session(str(first))
        assert [m.content for m in await agent.history(limit=1)] == ["scripted 1"]

        await agent.delete_session(created)
        assert [s.id for s in await agent.list_sessions()] == [first]
        with pytest.raises(NotFoundError):
            await store.get_messages(created)
        with pytest.raises(NotFoundError):
            await store.load_state(created)
        with pytest.raises(NotFoundError):
            await agent.switch_session(created)

        # Deleting the current session leaves the agent in a new, empty one.
        await agent.delete_session(first)
        assert agent.session_id not in (first, created)
        assert await agent.history() == []
        assert [s.id for s in await agent.list_sessions()] == [agent.session_id]


async def test_other_tenants_sessions_are_not_found(
    plugin: PersistencePlugin, store: Store
) -> None:
    other_tenant = PersistencePlugin(
        "p", store, plugin.user_id, uuid.uuid4(), plugin.agent_id, None
    )
    theirs = await other_tenant.create_session(title="private")
    await other_tenant.store.append_message(theirs.id, "user", "secret")
    async with await build(plugin, ScriptedProvider()) as agent:
        with pytest.raises(NotFoundError):
            await agent.switch_session(theirs.id)
        with pytest.raises(NotFoundError):
            await agent.switch_session(uuid.uuid4())
        with pytest.raises(NotFoundError):
            await agent.delete_session(theirs.id)
        assert theirs.id not in {s.id for s in await agent.list_sessions()}
    # Building an agent on someone else's session id does not open (or take over) it.
    with pytest.raises(NotFoundError):
        await build(plugin, ScriptedProvider(), session_id=theirs.id)
    assert await other_tenant.store.count_messages(theirs.id) == 1


async def test_another_agent_of_the_same_user_cannot_reach_its_sessions(
    plugin: PersistencePlugin, store: Store
) -> None:
    """A support bot and a sales bot of one user: sessions belong to a user AND an agent."""
    sales = PersistencePlugin("sales", store, plugin.user_id, plugin.tenant_id, uuid.uuid4())
    theirs = await sales.create_session(title="quote")
    await sales.store.append_message(theirs.id, "user", "my budget is 10k")
    async with await build(plugin, ScriptedProvider()) as agent:
        for attempt in (agent.switch_session, agent.delete_session):
            with pytest.raises(NotFoundError):
                await attempt(theirs.id)
        assert theirs.id not in {s.id for s in await agent.list_sessions()}
        with pytest.raises(NotFoundError):
            await agent.store.get_messages(theirs.id)
    with pytest.raises(NotFoundError):
        await build(plugin, ScriptedProvider(), session_id=theirs.id)
    assert await sales.store.count_messages(theirs.id) == 1
    assert [s.id for s in await sales.list_sessions()] == [theirs.id]


async def test_bad_id_strings_are_invalid_input(plugin: PersistencePlugin, store: Store) -> None:
    with pytest.raises(InvalidInputError):
        PersistencePlugin("p", store, "not-a-uuid", uuid.uuid4(), uuid.uuid4())
    with pytest.raises(InvalidInputError):
        PersistencePlugin("p", store, uuid.uuid4(), "tenant?", uuid.uuid4())
    with pytest.raises(InvalidInputError):
        PersistencePlugin("p", store, uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "123")
    with pytest.raises(InvalidInputError):
        LLMAgentBuilder().with_session_id("session-1")
    async with await build(plugin, ScriptedProvider()) as agent:
        with pytest.raises(InvalidInputError):
            await agent.switch_session("nope")
        with pytest.raises(InvalidInputError):
            await agent.delete_session("")
        with pytest.raises(InvalidInputError):
            await agent.switch_session(42)  # type: ignore[arg-type]


async def test_closed_agent_refuses_work_and_closes_what_it_owns(
    plugin: PersistencePlugin,
) -> None:
    provider = ScriptedProvider()
    agent = (
        await LLMAgentBuilder().with_persistence_plugin(plugin).with_provider("echo").build_async()
    )
    await agent.close()
    await agent.close()  # idempotent
    with pytest.raises(AgentClosedError):
        await agent.chat("hello")
    # A provider the caller passed in is the caller's to close; the plugin's store stays open.
    async with await build(plugin, provider):
        pass
    assert not provider.closed
    assert await plugin.store.get_session(agent.session_id)


# ---------------------------------------------------------------------- editing history


async def test_rewind_undoes_turns_with_their_state(plugin: PersistencePlugin) -> None:
    async with await build(plugin, ScriptedProvider(), state={"n": 0}) as agent:
        for n in range(1, 4):
            agent.state["n"] = n
            await agent.chat(f"q{n}")
        result = await agent.rewind(turns=2)
        assert result.last_seq == 2
        assert [m.content for m in await agent.history()] == ["q1", "scripted 1"]
        assert agent.state == {"n": 1}  # the state saved with turn 1
        await agent.chat("q2 again")
        assert [m.seq for m in await agent.history()] == [1, 2, 3, 4]
        with pytest.raises(InvalidInputError, match="fewer than 5 turns"):
            await agent.rewind(turns=5)


async def test_regenerate_answers_the_last_user_message_again(plugin: PersistencePlugin) -> None:
    provider = ScriptedProvider()
    async with await build(plugin, provider) as agent:
        await agent.chat("first")
        await agent.chat("tell me a joke")
        again = await agent.regenerate()
        assert again == "scripted 3"
        history = await agent.history()
        assert [(m.role, m.content) for m in history] == [
            ("user", "first"),
            ("assistant", "scripted 1"),
            ("user", "tell me a joke"),
            ("assistant", "scripted 3"),
        ]
        # The provider saw the history up to and including the user message, once.
        assert [m["content"] for m in provider.requests[-1] if m["role"] == "user"] == [
            "first",
            "tell me a joke",
        ]
    async with await build(plugin, ScriptedProvider()) as fresh:
        await fresh.create_session()
        with pytest.raises(InvalidInputError, match="no user message"):
            await fresh.regenerate()


async def test_fork_session_switches_to_a_branch(plugin: PersistencePlugin) -> None:
    async with await build(plugin, ScriptedProvider(), state={"n": 0}) as agent:
        original = agent.session_id
        agent.state["n"] = 1
        await agent.chat("a")
        agent.state["n"] = 2
        await agent.chat("b")
        branch = await agent.fork_session(at_seq=2)
        assert agent.session_id == branch != original
        assert [m.content for m in await agent.history()] == ["a", "scripted 1"]
        assert agent.state == {"n": 1}
        await agent.chat("c")
        assert await plugin.store.count_messages(original) == 4
        forks = await plugin.store.list_sessions(parent_session_id=original)
        assert [s.id for s in forks.items] == [branch]


async def test_a_turn_is_stored_once_when_the_first_write_fails(
    plugin: PersistencePlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent retries a failed turn write with the turn's key; the real store answers."""
    async with await build(plugin, ScriptedProvider()) as agent:
        store = agent.store
        real = store.record_turn
        calls = 0

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            result = await real(*args, **kwargs)  # stored...
            if calls == 1:  # ...but the caller never hears: as after a cut at COMMIT
                raise mofa_persist.BackendError("lost while committing", outcome_unknown=True)
            return result

        monkeypatch.setattr(store, "record_turn", flaky)
        assert await agent.chat("once") == "scripted 1"
        assert calls == 2
        assert [m.content for m in await agent.history()] == ["once", "scripted 1"]
