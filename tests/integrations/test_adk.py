"""MofaSessionService against Google ADK's session service contract.

The contract tests are plain async functions of a ``service`` fixture. Each runs on ADK's own
``InMemorySessionService`` and ``DatabaseSessionService`` on SQLite (the references: that they
pass proves the tests say what ADK does) and on :class:`MofaSessionService` over every selected
backend. Then: ADK's ``Runner`` with a scripted model, the second turn in a new process; and
what only MofaSessionService does (ordered writers, views, erasure, paging, typed errors).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("google.adk")

from adk_support import APP, SESSION, USER, ScriptedLlm, turn
from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions import BaseSessionService, DatabaseSessionService, InMemorySessionService
from google.adk.sessions.base_session_service import GetSessionConfig
from google.adk.tools.tool_confirmation import ToolConfirmation
from google.genai import types
from rootconf import create_database, drop_database, selected_backends
from sqlalchemy import event as sa_event

import mofa_persist
from mofa_persist import InvalidInputError
from mofa_persist.integrations.adk import NAMESPACE, MofaSessionService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

BACKENDS = selected_backends()
PERSISTENT = [name for name in BACKENDS if name != "memory"]
REFERENCES = ["adk-in-memory", "adk-database"]
IMPLEMENTATIONS = [*REFERENCES, *BACKENDS]


def url_for(
    backend: str, server_databases: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A database of this run for ``backend`` (the conftest's, shared by the run's tests)."""
    if backend == "memory":
        return "memory://"
    if backend not in server_databases:
        if backend == "sqlite":
            folder = tmp_path_factory.mktemp("sqlite")
            server_databases[backend] = f"sqlite://{Path(folder) / 'conformance.db'}"
        else:
            server_databases[backend] = create_database(backend)
    return server_databases[backend]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(
    request: pytest.FixtureRequest,
    server_databases: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, str | None]:
    """(name, URL of a backend's database or None for a reference)."""
    name: str = request.param
    if name in REFERENCES:
        return name, None
    return name, url_for(name, server_databases, tmp_path_factory)


@pytest.fixture
async def service(
    implementation: tuple[str, str | None], tmp_path: Path
) -> AsyncIterator[BaseSessionService]:
    """A fresh session service: a reference, or MofaSessionService in a tenant of its own."""
    name, url = implementation
    if name == "adk-in-memory":
        yield InMemorySessionService()
        return
    if name == "adk-database":
        reference = DatabaseSessionService(f"sqlite+aiosqlite:///{tmp_path / 'adk.db'}")
        yield reference
        await reference.close()
        return
    assert url is not None
    async with await mofa_persist.connect(url) as store:
        yield MofaSessionService(store.scoped(tenant_id=uuid.uuid4()))


@pytest.fixture
def mofa_url(
    request: pytest.FixtureRequest,
    server_databases: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    backend: str = request.param
    return url_for(backend, server_databases, tmp_path_factory)


@pytest.fixture
async def mofa_store(mofa_url: str) -> AsyncIterator[mofa_persist.Store]:
    """A store on the test's backend, in a tenant of its own."""
    async with await mofa_persist.connect(mofa_url) as store:
        yield store.scoped(tenant_id=uuid.uuid4())


def detects_stale_writers(service: BaseSessionService) -> bool:
    """ADK's in-memory service keeps one copy of a session and never refuses a stale one."""
    return not isinstance(service, InMemorySessionService)


def text_event(
    text: str,
    *,
    author: str = "user",
    timestamp: float | None = None,
    state: dict[str, Any] | None = None,
    invocation: str = "inv-1",
) -> Event:
    role = "user" if author == "user" else "model"
    event = Event(
        invocation_id=invocation,
        author=author,
        content=types.Content(role=role, parts=[types.Part(text=text)]),
        actions=EventActions(state_delta=state or {}),
    )
    if timestamp is not None:
        event.timestamp = timestamp
    return event


def dump(event: Event) -> dict[str, Any]:
    return event.model_dump(mode="json", exclude_none=True)


def texts(events: list[Event]) -> list[str]:
    return [
        "".join(part.text or "" for part in (event.content.parts or []))
        for event in events
        if event.content is not None
    ]


# ---------------------------------------------------------------- the contract (all of them)


async def test_create_and_get(service: BaseSessionService) -> None:
    made = await service.create_session(app_name="app", user_id="u1", state={"k": "v"})
    assert made.id
    assert (made.app_name, made.user_id, made.state, made.events) == ("app", "u1", {"k": "v"}, [])
    got = await service.get_session(app_name="app", user_id="u1", session_id=made.id)
    assert got is not None
    assert (got.id, got.state, got.events) == (made.id, {"k": "v"}, [])
    assert got.last_update_time == pytest.approx(made.last_update_time, abs=1e-5)
    named = await service.create_session(app_name="app", user_id="u1", session_id="named ✓")
    assert named.id == "named ✓"
    other = await service.create_session(app_name="app", user_id="u1")
    assert other.id not in (made.id, named.id)


async def test_state_scopes_and_prefixes(service: BaseSessionService) -> None:
    first = await service.create_session(
        app_name="app",
        user_id="alice",
        state={"app:theme": "dark", "user:lang": "de", "temp:scratch": 1, "local": [1, 2]},
    )
    assert first.state == {"app:theme": "dark", "user:lang": "de", "local": [1, 2]}
    second = await service.create_session(app_name="app", user_id="alice")
    assert second.state == {"app:theme": "dark", "user:lang": "de"}
    bob = await service.create_session(app_name="app", user_id="bob")
    assert bob.state == {"app:theme": "dark"}
    elsewhere = await service.create_session(app_name="other app", user_id="alice")
    assert elsewhere.state == {}
    # An event's delta: app keys reach every user, user keys every session of the user.
    delta = {"app:theme": "light", "user:lang": "fr", "count": None, "nested": {"a": [1]}}
    await service.append_event(first, text_event("hi", state=delta))
    assert first.state == {
        "app:theme": "light",
        "user:lang": "fr",
        "local": [1, 2],
        "count": None,
        "nested": {"a": [1]},
    }

    async def state_of(user: str, session_id: str, app: str = "app") -> dict[str, Any]:
        got = await service.get_session(app_name=app, user_id=user, session_id=session_id)
        assert got is not None
        return got.state

    assert await state_of("alice", first.id) == first.state
    assert await state_of("alice", second.id) == {"app:theme": "light", "user:lang": "fr"}
    assert await state_of("bob", bob.id) == {"app:theme": "light"}
    assert await state_of("alice", elsewhere.id, "other app") == {}
    assert await service.get_user_state(app_name="app", user_id="alice") == {"lang": "fr"}
    assert await service.get_user_state(app_name="app", user_id="bob") == {}
    assert await service.get_user_state(app_name="nobody", user_id="alice") == {}
    # Values are replaced, not merged.
    await service.append_event(first, text_event("again", state={"nested": {"b": 2}}))
    assert (await state_of("alice", first.id))["nested"] == {"b": 2}


async def test_temp_state_is_never_stored(service: BaseSessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u", state={"temp:x": 1})
    assert session.state == {}
    event = text_event("hi", state={"temp:draft": "secret", "kept": True})
    returned = await service.append_event(session, event)
    # The caller's session sees temp values for the rest of the invocation...
    assert session.state["temp:draft"] == "secret"
    assert session.state["kept"] is True
    # ...but neither the stored state nor the stored event has them.
    assert "temp:draft" not in returned.actions.state_delta
    got = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    assert got is not None
    assert got.state == {"kept": True}
    assert got.events[0].actions.state_delta == {"kept": True}


def varied_events() -> list[Event]:
    """One of each kind of event ADK stores, with every kind of part that matters."""
    call = types.FunctionCall(id="call-1", name="weather", args={"city": "Zürich", "n": [1, 2.5]})
    response = types.FunctionResponse(
        id="call-1", name="weather", response={"result": "7°C", "nested": {"x": None}}
    )
    return [
        text_event("Grüße 👋 — \u00e9\u0301 \u202e", timestamp=1_000.25),
        Event(
            invocation_id="inv-1",
            author="forecaster",
            content=types.Content(role="model", parts=[types.Part(function_call=call)]),
            long_running_tool_ids={"call-1"},
            timestamp=1_001.5,
        ),
        Event(
            invocation_id="inv-1",
            author="forecaster",
            content=types.Content(role="user", parts=[types.Part(function_response=response)]),
            actions=EventActions(
                state_delta={"last_city": "Zürich"},
                requested_tool_confirmations={
                    "call-1": ToolConfirmation(hint="sure?", confirmed=True, payload={"a": 1})
                },
                skip_summarization=True,
            ),
            timestamp=1_002.0,
        ),
        Event(
            invocation_id="inv-2",
            author="forecaster",
            branch="root.forecaster",
            content=types.Content(
                role="model",
                parts=[
                    types.Part(text="Here is a picture", thought=False),
                    types.Part(
                        inline_data=types.Blob(mime_type="image/png", data=bytes(range(256)))
                    ),
                ],
            ),
            custom_metadata={"trace": {"span": "abc", "n": 2**40}, "list": [True, None]},
            usage_metadata=types.GenerateContentResponseUsageMetadata(
                prompt_token_count=10, candidates_token_count=3, total_token_count=13
            ),
            turn_complete=True,
            timestamp=1_003.125,
        ),
    ]


async def test_events_round_trip_exactly(service: BaseSessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u")
    events = varied_events()
    expected = []
    for event in events:
        returned = await service.append_event(session, event)
        expected.append(dump(returned))
    assert [dump(event) for event in session.events] == expected
    got = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    assert got is not None
    assert [dump(event) for event in got.events] == expected
    assert got.events[3].content is not None
    assert got.events[3].content.parts is not None
    assert got.events[3].content.parts[1].inline_data is not None
    assert got.events[3].content.parts[1].inline_data.data == bytes(range(256))
    assert got.last_update_time == pytest.approx(1_003.125, abs=1e-5)


async def test_partial_events_are_not_stored(service: BaseSessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u")
    partial = text_event("typing...", author="agent", state={"x": 1})
    partial.partial = True
    assert await service.append_event(session, partial) is partial
    assert session.events == []
    got = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    assert got is not None
    assert (got.events, got.state) == ([], {})
    await service.append_event(got, text_event("done", author="agent"))
    again = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    assert again is not None
    assert texts(again.events) == ["done"]


async def test_get_session_config(service: BaseSessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u")
    for index in range(6):
        await service.append_event(session, text_event(f"m{index}", timestamp=2_000.0 + index))

    async def window(**config: Any) -> list[str]:
        got = await service.get_session(
            app_name="app", user_id="u", session_id=session.id, config=GetSessionConfig(**config)
        )
        assert got is not None
        return texts(got.events)

    everything = [f"m{index}" for index in range(6)]
    assert await window() == everything
    assert await window(num_recent_events=0) == []
    assert await window(num_recent_events=1) == ["m5"]
    assert await window(num_recent_events=3) == ["m3", "m4", "m5"]
    assert await window(num_recent_events=100) == everything
    assert await window(after_timestamp=2_003.0) == ["m3", "m4", "m5"]
    assert await window(after_timestamp=2_003.5) == ["m4", "m5"]
    assert await window(after_timestamp=9_999.0) == []
    assert await window(after_timestamp=1_000.0) == everything
    assert await window(after_timestamp=2_001.0, num_recent_events=2) == ["m4", "m5"]
    assert await window(after_timestamp=2_004.0, num_recent_events=5) == ["m4", "m5"]
    with pytest.raises(ValueError, match="num_recent_events"):
        GetSessionConfig(num_recent_events=-1)
    # A limited read still carries the whole state and can be appended to.
    limited = await service.get_session(
        app_name="app",
        user_id="u",
        session_id=session.id,
        config=GetSessionConfig(num_recent_events=0),
    )
    assert limited is not None
    await service.append_event(limited, text_event("m6", timestamp=2_006.0))
    assert await window(num_recent_events=2) == ["m5", "m6"]


async def test_listing_order_and_content(service: BaseSessionService) -> None:
    made = {}
    for user, name in [("u2", "b"), ("u1", "c"), ("u1", "a"), ("u2", "d")]:
        made[name] = await service.create_session(
            app_name="app", user_id=user, session_id=name, state={"name": name}
        )
    await service.create_session(app_name="other", user_id="u1", session_id="x")
    # Updates reorder: oldest update first; ties by user id, then session id.
    for name, stamp in [("c", 5_000.0), ("a", 5_000.0), ("b", 4_000.0), ("d", 6_000.0)]:
        await service.append_event(made[name], text_event(name, timestamp=stamp))
    await service.append_event(
        made["a"], text_event("user state", timestamp=5_000.0, state={"user:seen": True})
    )
    listed = (await service.list_sessions(app_name="app")).sessions
    assert [(s.user_id, s.id) for s in listed] == [
        ("u2", "b"),
        ("u1", "a"),
        ("u1", "c"),
        ("u2", "d"),
    ]
    assert all(s.events == [] for s in listed)
    assert [s.state for s in listed] == [
        {"name": "b"},
        {"name": "a", "user:seen": True},
        {"name": "c", "user:seen": True},
        {"name": "d"},
    ]
    assert [s.last_update_time for s in listed] == pytest.approx(
        [4_000.0, 5_000.0, 5_000.0, 6_000.0]
    )
    mine = (await service.list_sessions(app_name="app", user_id="u1")).sessions
    assert [s.id for s in mine] == ["a", "c"]
    assert (await service.list_sessions(app_name="app", user_id="nobody")).sessions == []
    assert (await service.list_sessions(app_name="nothing")).sessions == []


async def test_duplicate_ids(service: BaseSessionService) -> None:
    await service.create_session(app_name="app", user_id="u", session_id="s", state={"v": 1})
    with pytest.raises(AlreadyExistsError):
        await service.create_session(app_name="app", user_id="u", session_id="s", state={"v": 2})
    got = await service.get_session(app_name="app", user_id="u", session_id="s")
    assert got is not None
    assert got.state == {"v": 1}
    # The same id for another user or app is another session.
    await service.create_session(app_name="app", user_id="other", session_id="s")
    await service.create_session(app_name="other", user_id="u", session_id="s")
    # Ids are exact: case and spaces matter.
    await service.create_session(app_name="app", user_id="u", session_id="S")
    await service.create_session(app_name="app", user_id="U", session_id="s")


async def test_duplicate_ids_under_a_race(service: BaseSessionService) -> None:
    async def create(index: int) -> str:
        try:
            await service.create_session(
                app_name="app", user_id="u", session_id="raced", state={"winner": index}
            )
        except AlreadyExistsError:
            return "lost"
        return "won"

    outcomes = await asyncio.gather(*(create(index) for index in range(8)))
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    listed = (await service.list_sessions(app_name="app", user_id="u")).sessions
    assert [s.id for s in listed] == ["raced"]


async def test_unknown_sessions(service: BaseSessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u", session_id="s")
    for app, user, ident in [("app", "u", "nope"), ("app", "v", "s"), ("other", "u", "s")]:
        assert await service.get_session(app_name=app, user_id=user, session_id=ident) is None
        await service.delete_session(app_name=app, user_id=user, session_id=ident)
    assert await service.get_session(app_name="app", user_id="u", session_id="s") is not None
    ghost = session.model_copy(update={"id": "nope", "events": []})
    with pytest.raises(SessionNotFoundError):
        await service.append_event(ghost, text_event("lost"))
    stolen = session.model_copy(update={"user_id": "v", "events": []})
    with pytest.raises(SessionNotFoundError):
        await service.append_event(stolen, text_event("lost"))
    got = await service.get_session(app_name="app", user_id="u", session_id="s")
    assert got is not None
    assert got.events == []


async def test_stale_writers(service: BaseSessionService) -> None:
    await service.create_session(app_name="app", user_id="u", session_id="s")
    first = await service.get_session(app_name="app", user_id="u", session_id="s")
    second = await service.get_session(app_name="app", user_id="u", session_id="s")
    assert first is not None and second is not None
    await service.append_event(first, text_event("one", timestamp=7_000.0))
    await service.append_event(first, text_event("two", timestamp=7_001.0))
    if not detects_stale_writers(service):
        pytest.skip("ADK's InMemorySessionService never detects stale writers")
    with pytest.raises(StaleSessionError):
        await service.append_event(second, text_event("stale", timestamp=7_002.0, state={"x": 1}))
    fresh = await service.get_session(app_name="app", user_id="u", session_id="s")
    assert fresh is not None
    assert texts(fresh.events) == ["one", "two"]
    assert fresh.state == {}
    await service.append_event(fresh, text_event("three", timestamp=7_003.0))
    last = await service.get_session(app_name="app", user_id="u", session_id="s")
    assert last is not None
    assert texts(last.events) == ["one", "two", "three"]


async def test_deletion(service: BaseSessionService) -> None:
    session = await service.create_session(
        app_name="app", user_id="u", session_id="s", state={"user:kept": 1, "gone": 2}
    )
    await service.append_event(session, text_event("hello"))
    await service.create_session(app_name="app", user_id="u", session_id="other")
    await service.delete_session(app_name="app", user_id="u", session_id="s")
    assert await service.get_session(app_name="app", user_id="u", session_id="s") is None
    listed = (await service.list_sessions(app_name="app")).sessions
    assert [s.id for s in listed] == ["other"]
    assert listed[0].state == {"user:kept": 1}
    with pytest.raises(SessionNotFoundError):
        await service.append_event(session, text_event("after"))
    again = await service.create_session(app_name="app", user_id="u", session_id="s")
    assert again.state == {"user:kept": 1}
    got = await service.get_session(app_name="app", user_id="u", session_id="s")
    assert got is not None
    assert got.events == []


async def test_runner_two_turns_in_process(service: BaseSessionService) -> None:
    ScriptedLlm.requests.clear()
    await service.create_session(app_name=APP, user_id=USER, session_id=SESSION)
    assert await turn(service, "What is the weather?") == [
        "It says: {'result': 'Zürich: 7°C, rain'}"
    ]
    assert await turn(service, "Thanks") == ["You said: Thanks"]
    last = ScriptedLlm.requests[-1]
    assert [content["role"] for content in last] == ["user", "model", "user", "model", "user"]
    got = await service.get_session(app_name=APP, user_id=USER, session_id=SESSION)
    assert got is not None
    assert [event.author for event in got.events] == [
        "user",
        "forecaster",
        "forecaster",
        "forecaster",
        "user",
        "forecaster",
    ]


# ---------------------------------------------------------------- ADK's Runner, a new process


@pytest.mark.parametrize("mofa_url", PERSISTENT, indirect=True)
async def test_runner_second_turn_in_a_new_process(mofa_url: str) -> None:
    if mofa_url == "memory://":
        pytest.skip("an in-memory store cannot be shared between processes")
    tenant = str(uuid.uuid4())
    helper = Path(__file__).with_name("adk_support.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(helper.parent), *sys.path])}

    def run(text: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, str(helper), mofa_url, tenant, text],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    first = await asyncio.to_thread(run, "What is the weather in Zürich?")
    assert first["said"] == ["It says: {'result': 'Zürich: 7°C, rain'}"]
    second = await asyncio.to_thread(run, "And tomorrow?")
    assert second["said"] == ["You said: And tomorrow?"]
    (request,) = second["requests"]
    assert [content["role"] for content in request] == ["user", "model", "user", "model", "user"]
    parts = [content["parts"][0] for content in request]
    assert parts[0]["text"] == "What is the weather in Zürich?"
    assert parts[1]["function_call"]["name"] == "weather"
    assert parts[1]["function_call"]["args"] == {"city": "Zürich"}
    assert parts[2]["function_response"]["response"] == {"result": "Zürich: 7°C, rain"}
    assert parts[3]["text"] == "It says: {'result': 'Zürich: 7°C, rain'}"
    assert parts[4]["text"] == "And tomorrow?"
    # The conversation is the library's too: six messages in one session of the tenant.
    async with await mofa_persist.connect(mofa_url) as store:
        view = store.scoped(tenant_id=tenant)
        (found,) = (await view.list_sessions()).items
        messages = await view.get_messages(found.id)
        assert [m.role for m in messages] == [
            "user",
            "tool",
            "tool",
            "assistant",
            "user",
            "assistant",
        ]
        assert messages[0].content == "What is the weather in Zürich?"
        assert await view.external_id_of(found.id) == (
            NAMESPACE,
            json.dumps([APP, USER, SESSION], ensure_ascii=False),
        )


# ---------------------------------------------------------------- what only MofaSessionService does


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_ordered_mode_lets_concurrent_writers_all_succeed(
    mofa_store: mofa_persist.Store,
) -> None:
    writers = 20
    ordered = MofaSessionService(mofa_store, ordered=True)
    await ordered.create_session(app_name="app", user_id="u", session_id="busy")
    copies = [
        await ordered.get_session(app_name="app", user_id="u", session_id="busy")
        for _ in range(writers)
    ]

    async def write(index: int) -> None:
        copy = copies[index]
        assert copy is not None
        delta = {f"k{index}": index, "app:hits": index, "user:last": index}
        await ordered.append_event(copy, text_event(f"w{index}", state=delta))

    await asyncio.gather(*(write(index) for index in range(writers)))
    got = await ordered.get_session(app_name="app", user_id="u", session_id="busy")
    assert got is not None
    assert sorted(texts(got.events)) == sorted(f"w{index}" for index in range(writers))
    assert {key: got.state[key] for key in got.state if key.startswith("k")} == {
        f"k{index}": index for index in range(writers)
    }
    sid = await ordered.library_session_id(app_name="app", user_id="u", session_id="busy")
    assert sid is not None
    messages = await mofa_store.get_messages(sid)
    assert [m.seq for m in messages] == list(range(1, writers + 1))
    # The last writer's app and user values are the ones kept.
    last = int(messages[-1].content[1:])
    assert (got.state["app:hits"], got.state["user:last"]) == (last, last)


ORDERED_WRITER = """
import asyncio, sys, uuid
import mofa_persist
from google.adk.events.event import Event
from google.genai import types
from mofa_persist.integrations.adk import MofaSessionService

async def main(url, tenant, name):
    async with await mofa_persist.connect(url) as store:
        service = MofaSessionService(store.scoped(tenant_id=uuid.UUID(tenant)), ordered=True)
        copy = await service.get_session(app_name="app", user_id="u", session_id="shared")
        for index in range(10):
            text = types.Content(role="user", parts=[types.Part(text=f"{name}-{index}")])
            event = Event(invocation_id=name, author="user", content=text)
            event.actions.state_delta = {name: index}
            await service.append_event(copy, event)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.parametrize("mofa_url", PERSISTENT, indirect=True)
async def test_ordered_writers_in_separate_processes(mofa_url: str) -> None:
    tenant = uuid.uuid4()
    async with await mofa_persist.connect(mofa_url) as store:
        service = MofaSessionService(store.scoped(tenant_id=tenant), ordered=True)
        await service.create_session(app_name="app", user_id="u", session_id="shared")
        names = [f"p{index}" for index in range(4)]
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                ORDERED_WRITER,
                mofa_url,
                str(tenant),
                name,
                stderr=asyncio.subprocess.PIPE,
            )
            for name in names
        ]
        for process in processes:
            _, err = await asyncio.wait_for(process.communicate(), timeout=180)
            assert process.returncode == 0, err.decode()[-2000:]
        got = await service.get_session(app_name="app", user_id="u", session_id="shared")
        assert got is not None
        said = texts(got.events)
        assert sorted(said) == sorted(f"{name}-{index}" for name in names for index in range(10))
        for name in names:  # each process's events in its own order
            assert [t for t in said if t.startswith(f"{name}-")] == [
                f"{name}-{index}" for index in range(10)
            ]
        assert {name: got.state[name] for name in names} == dict.fromkeys(names, 9)
        sid = await service.library_session_id(app_name="app", user_id="u", session_id="shared")
        assert sid is not None
        assert [m.seq for m in await store.get_messages(sid)] == list(range(1, 41))


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_default_mode_refuses_all_but_one_concurrent_stale_copy(
    mofa_store: mofa_persist.Store,
) -> None:
    service = MofaSessionService(mofa_store)
    await service.create_session(app_name="app", user_id="u", session_id="busy")
    copies = [
        await service.get_session(app_name="app", user_id="u", session_id="busy") for _ in range(8)
    ]

    async def write(index: int) -> bool:
        copy = copies[index]
        assert copy is not None
        try:
            await service.append_event(copy, text_event(f"w{index}"))
        except StaleSessionError:
            return False
        return True

    outcomes = await asyncio.gather(*(write(index) for index in range(8)))
    assert outcomes.count(True) == 1
    got = await service.get_session(app_name="app", user_id="u", session_id="busy")
    assert got is not None
    assert texts(got.events) == [f"w{outcomes.index(True)}"]


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_reads_are_limited_in_the_query(
    mofa_store: mofa_persist.Store, mofa_url: str
) -> None:
    service = MofaSessionService(mofa_store)
    session = await service.create_session(app_name="app", user_id="u")
    for index in range(30):
        await service.append_event(session, text_event(f"m{index}", timestamp=3_000.0 + index))
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "messages" in statement:
            seen.append(statement)

    engine = mofa_store.engine.sync_engine
    sa_event.listen(engine, "before_cursor_execute", record)
    try:
        got = await service.get_session(
            app_name="app",
            user_id="u",
            session_id=session.id,
            config=GetSessionConfig(num_recent_events=2, after_timestamp=3_010.0),
        )
        none = await service.get_session(
            app_name="app",
            user_id="u",
            session_id=session.id,
            config=GetSessionConfig(num_recent_events=0),
        )
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)
    assert got is not None and none is not None
    assert texts(got.events) == ["m28", "m29"]
    assert none.events == []
    (statement,) = seen  # none for num_recent_events=0
    assert "LIMIT" in statement.upper()
    assert "created_at >=" in statement


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_keyset_pages(mofa_store: mofa_persist.Store) -> None:
    service = MofaSessionService(mofa_store)
    for index in range(25):
        session = await service.create_session(
            app_name="app", user_id=f"u{index % 3}", session_id=f"s{index:02d}"
        )
        await service.append_event(session, text_event("x", timestamp=9_000.0 + index % 4))
    everything = [(s.user_id, s.id) for s in (await service.list_sessions(app_name="app")).sessions]
    assert len(everything) == 25
    paged: list[tuple[str, str]] = []
    cursor = None
    pages = 0
    while True:
        page = await service.list_sessions_page(app_name="app", limit=7, cursor=cursor)
        paged.extend((s.user_id, s.id) for s in page.sessions)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert paged == everything
    assert pages == 4
    first = await service.list_sessions_page(app_name="app", user_id="u1", limit=2)
    assert first.next_cursor is not None
    for bad in (first.next_cursor[:-1], first.next_cursor + "x", "nonsense", 7):
        with pytest.raises(InvalidInputError):
            await service.list_sessions_page(app_name="app", user_id="u1", cursor=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="does not belong"):
        await service.list_sessions_page(app_name="app", user_id="u2", cursor=first.next_cursor)
    with pytest.raises(InvalidInputError):
        await service.list_sessions_page(app_name="app", limit=0)


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_views_keep_tenants_apart(mofa_url: str) -> None:
    async with await mofa_persist.connect(mofa_url) as store:
        one = MofaSessionService(store.scoped(tenant_id=uuid.uuid4()))
        two = MofaSessionService(store.scoped(tenant_id=uuid.uuid4()))
        await one.create_session(
            app_name="app", user_id="u", session_id="s", state={"app:a": 1, "user:b": 2, "c": 3}
        )
        assert await two.get_session(app_name="app", user_id="u", session_id="s") is None
        assert (await two.list_sessions(app_name="app")).sessions == []
        assert await two.get_user_state(app_name="app", user_id="u") == {}
        made = await two.create_session(app_name="app", user_id="u", session_id="s")
        assert made.state == {}
        got = await one.get_session(app_name="app", user_id="u", session_id="s")
        assert got is not None
        assert got.state == {"app:a": 1, "user:b": 2, "c": 3}
        # A store with no tenant names (and lists) only the sessions made without one.
        whole = MofaSessionService(store)
        assert await whole.get_session(app_name="app", user_id="u", session_id="s") is None
        assert (await whole.list_sessions(app_name="app")).sessions == []
        await whole.create_session(app_name="app", user_id="u", session_id="s")
        assert [s.id for s in (await whole.list_sessions(app_name="app")).sessions] == ["s"]


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_erasing_a_user_removes_their_sessions_and_user_state(
    mofa_store: mofa_persist.Store,
) -> None:
    service = MofaSessionService(mofa_store)
    for user in ("alice", "bob"):
        session = await service.create_session(
            app_name="app", user_id=user, session_id="s", state={"user:name": user, "app:x": 1}
        )
        await service.append_event(session, text_event(f"I am {user}"))
    erased = await mofa_store.erase_user(service.user_uuid("alice"))
    assert erased.counts["adk_states"] == 1
    assert erased.counts["adk_sessions"] == 1
    assert await service.get_session(app_name="app", user_id="alice", session_id="s") is None
    assert await service.get_user_state(app_name="app", user_id="alice") == {}
    bob = await service.get_session(app_name="app", user_id="bob", session_id="s")
    assert bob is not None
    assert bob.state == {"user:name": "bob", "app:x": 1}
    assert texts(bob.events) == ["I am bob"]


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_a_view_of_one_user_owns_every_adk_user_in_it(mofa_url: str) -> None:
    async with await mofa_persist.connect(mofa_url) as store:
        tenant, person = uuid.uuid4(), uuid.uuid4()
        view = store.scoped(tenant_id=tenant, user_id=person)
        service = MofaSessionService(view)
        assert service.user_uuid("alice") == service.user_uuid("bob") == person
        for user in ("alice", "bob"):
            await service.create_session(
                app_name="app", user_id=user, session_id="s", state={"user:k": user}
            )
        assert [s.user_id for s in (await view.list_sessions()).items] == [person, person]
        # The tenant's other views do not name these sessions.
        other = MofaSessionService(store.scoped(tenant_id=tenant, user_id=uuid.uuid4()))
        assert await other.get_session(app_name="app", user_id="alice", session_id="s") is None
        assert await other.get_user_state(app_name="app", user_id="alice") == {}
        erased = await store.scoped(tenant_id=tenant).erase_user(person)
        assert (erased.counts["adk_sessions"], erased.counts["adk_states"]) == (2, 2)
        assert (await service.list_sessions(app_name="app")).sessions == []
        assert await service.get_user_state(app_name="app", user_id="bob") == {}


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_events_are_ordinary_messages(mofa_store: mofa_persist.Store) -> None:
    service = MofaSessionService(mofa_store)
    session = await service.create_session(app_name="app", user_id="u", session_id="visible")
    for event in varied_events():
        await service.append_event(session, event)
    sid = await service.library_session_id(app_name="app", user_id="u", session_id="visible")
    assert sid is not None
    messages = await mofa_store.get_messages(sid)
    assert [m.role for m in messages] == ["user", "tool", "tool", "assistant"]
    assert messages[0].content == "Grüße 👋 — \u00e9\u0301 \u202e"
    assert messages[1].content == 'weather({"city": "Zürich", "n": [1, 2.5]})'
    assert messages[3].content == "Here is a picture"
    assert messages[0].created_at.timestamp() == 1_000.25
    # A message written through the library's own API reads back as an event.
    await mofa_store.append_message(sid, "assistant", "from the library")
    got = await service.get_session(app_name="app", user_id="u", session_id="visible")
    assert got is not None
    assert texts(got.events)[-1] == "from the library"


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_bad_input_is_a_typed_error(mofa_store: mofa_persist.Store) -> None:
    service = MofaSessionService(mofa_store)
    session = await service.create_session(app_name="app", user_id="u", session_id="s")
    for app, user, ident in [("", "u", "s"), ("app", "x" * 129, "s"), ("app", "u", "nul\x00")]:
        with pytest.raises(InvalidInputError):
            await service.create_session(app_name=app, user_id=user, session_id=ident)
    with pytest.raises(InvalidInputError):
        await service.append_event(session, text_event("nul \x00 inside"))
    with pytest.raises(InvalidInputError):
        await service.append_event(session, text_event("ok", state={"bad": float("nan")}))
    with pytest.raises(InvalidInputError, match="timestamp"):
        await service.append_event(session, text_event("far", timestamp=1e20))
    got = await service.get_session(app_name="app", user_id="u", session_id="s")
    assert got is not None
    assert got.events == []
    await service.append_event(got, text_event("fine"))
    for after, expected in ((1e20, []), (-1e20, ["fine"])):
        config = GetSessionConfig(after_timestamp=after)
        got = await service.get_session(app_name="app", user_id="u", session_id="s", config=config)
        assert got is not None
        assert texts(got.events) == expected


# ---------------------------------------------------------------- imports


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_base_package_does_not_import_adk() -> None:
    result = run_python(
        "import json, sys, mofa_persist, mofa_persist.integrations, mofa_persist.cli\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('google.adk'))))"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_import_without_adk_names_the_extra() -> None:
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'google.adk' or name.startswith('google.adk.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import mofa_persist.integrations\n"
        "try:\n"
        "    import mofa_persist.integrations.adk\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('imported without ADK')\n"
    )
    result = run_python(hide)
    assert result.returncode == 0, result.stderr
    assert "pip install 'mofa-persist[adk]'" in result.stdout


# ---------------------------------------------------------------- import from ADK's database


async def write_adk_database(service: DatabaseSessionService) -> None:
    """Sessions, events and app/user state as ADK's DatabaseSessionService writes them."""
    first = await service.create_session(
        app_name="app",
        user_id="alice",
        session_id="s1",
        state={"app:theme": "dark", "user:lang": "de", "topic": "weather"},
    )
    for event in varied_events():
        await service.append_event(first, event)
    second = await service.create_session(app_name="app", user_id="bob", session_id="s2 ✓")
    await service.append_event(
        second, text_event("hi", timestamp=1_500.0, state={"user:lang": "fr", "n": 1})
    )
    await service.create_session(app_name="other app", user_id="alice", session_id="empty")


async def assert_same_answers(
    reference: BaseSessionService, service: BaseSessionService, apps: list[str]
) -> None:
    for app in apps:
        theirs = (await reference.list_sessions(app_name=app)).sessions
        ours = (await service.list_sessions(app_name=app)).sessions
        assert [(s.user_id, s.id, s.state) for s in ours] == [
            (s.user_id, s.id, s.state) for s in theirs
        ]
        for listed in theirs:
            names = {"app_name": app, "user_id": listed.user_id, "session_id": listed.id}
            want = await reference.get_session(**names)
            got = await service.get_session(**names)
            assert want is not None and got is not None
            assert got.state == want.state
            assert [dump(e) for e in got.events] == [dump(e) for e in want.events]
            assert got.last_update_time == pytest.approx(want.last_update_time, abs=1e-5)
            assert await service.get_user_state(
                app_name=app, user_id=listed.user_id
            ) == await reference.get_user_state(app_name=app, user_id=listed.user_id)


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_import_from_a_database_adk_wrote(
    mofa_store: mofa_persist.Store, tmp_path: Path
) -> None:
    from mofa_persist.integrations.adk_import import import_from

    path = tmp_path / "adk.db"
    source = DatabaseSessionService(f"sqlite+aiosqlite:///{path}")
    try:
        await write_adk_database(source)
        calls: list[tuple[int, int | None]] = []
        counts = await import_from(str(path), mofa_store, lambda *call: calls.append(call))
        assert counts == {
            "sessions": 3,
            "imported": 3,
            "completed": 0,
            "unchanged": 0,
            "conflicts": 0,
            "failed": 0,
            "events": 5,
            "app_states": 1,
            "user_states": 2,
        }
        assert calls[0] == (0, 3)
        assert calls[-1] == (3, 3)
        service = MofaSessionService(mofa_store)
        await assert_same_answers(source, service, ["app", "other app"])
        # Again: nothing changes.
        again = await import_from(f"sqlite+aiosqlite:///{path}", mofa_store, lambda *_: None)
        assert (again["unchanged"], again["imported"], again["events"]) == (3, 0, 0)
        # The source grows: only the new events are written.
        grown = await source.get_session(app_name="app", user_id="bob", session_id="s2 ✓")
        assert grown is not None
        await source.append_event(grown, text_event("more", timestamp=1_600.0, state={"n": 2}))
        more = await import_from(str(path), mofa_store, lambda *_: None)
        assert (more["completed"], more["unchanged"], more["events"]) == (1, 2, 1)
        await assert_same_answers(source, service, ["app", "other app"])
        # A session that went its own way in the store is reported, not touched.
        ours = await service.get_session(app_name="app", user_id="alice", session_id="s1")
        assert ours is not None
        await service.append_event(ours, text_event("only here", timestamp=9_999.0))
        theirs = await source.get_session(app_name="app", user_id="alice", session_id="s1")
        assert theirs is not None
        await source.append_event(theirs, text_event("only there", timestamp=9_998.0))
        clash = await import_from(str(path), mofa_store, lambda *_: None)
        assert (clash["conflicts"], clash["unchanged"]) == (1, 2)
        kept = await service.get_session(app_name="app", user_id="alice", session_id="s1")
        assert kept is not None
        assert texts(kept.events)[-1] == "only here"
    finally:
        await source.close()


SERVER_SOURCES = [name for name in BACKENDS if name in ("postgresql", "mysql")]


@pytest.mark.parametrize("dialect", SERVER_SOURCES)
async def test_import_from_an_adk_database_on_a_server(dialect: str) -> None:
    from mofa_persist.integrations.adk_import import import_from

    url = await asyncio.to_thread(create_database, dialect)  # a database of ADK's own
    try:
        source = DatabaseSessionService(url)
        try:
            await write_adk_database(source)
            async with await mofa_persist.connect("memory://") as store:
                counts = await import_from(url, store, lambda *_: None)
                assert (counts["imported"], counts["events"], counts["failed"]) == (3, 5, 0)
                await assert_same_answers(source, MofaSessionService(store), ["app", "other app"])
        finally:
            await source.close()
    finally:
        await asyncio.to_thread(drop_database, dialect, url)


async def test_import_refuses_what_is_not_an_adk_database(tmp_path: Path) -> None:
    from mofa_persist.integrations.adk_import import import_from

    async with await mofa_persist.connect("memory://") as store:
        for bad in ("", str(tmp_path / "missing.db"), "ftp://x/y", "sqlite+aiosqlite:///:memory:"):
            with pytest.raises(InvalidInputError):
                await import_from(bad, store, lambda *_: None)
        other = tmp_path / "other.db"
        async with await mofa_persist.connect(f"sqlite://{other}"):
            pass  # a database of this library, not of ADK
        with pytest.raises(InvalidInputError, match="no ADK session tables"):
            await import_from(str(other), store, lambda *_: None)


async def test_import_from_on_the_command_line(tmp_path: Path) -> None:
    source = DatabaseSessionService(f"sqlite+aiosqlite:///{tmp_path / 'adk.db'}")
    try:
        await write_adk_database(source)
    finally:
        await source.close()
    target = f"sqlite://{tmp_path / 'mofa.db'}"
    command = [sys.executable, "-m", "mofa_persist", "import-from", "adk"]
    command += [str(tmp_path / "adk.db"), "--url", target, "--json"]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert (counts["framework"], counts["imported"], counts["events"]) == ("adk", 3, 5)
    async with await mofa_persist.connect(target) as store:
        got = await MofaSessionService(store).get_session(
            app_name="app", user_id="alice", session_id="s1"
        )
        assert got is not None
        assert len(got.events) == 4
