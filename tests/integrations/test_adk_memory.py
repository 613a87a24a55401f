"""MofaMemoryService against Google ADK's memory service contract.

The contract tests are plain async functions of a ``pair`` fixture (a session service and a
memory service). Each runs on ADK's own ``InMemoryMemoryService`` over ``InMemorySessionService``
(the reference: that it passes proves the tests say what ADK does) and on
:class:`MofaMemoryService` over :class:`MofaSessionService` on every selected backend. Then what
only MofaMemoryService does (another service's sessions, ``add_memory``) and ADK's ``Runner``
with a scripted model calling the ``load_memory`` tool.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("google.adk")

from google.adk.agents import LlmAgent
from google.adk.events.event import Event
from google.adk.memory import BaseMemoryService, InMemoryMemoryService
from google.adk.memory.memory_entry import MemoryEntry
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.sessions import BaseSessionService, InMemorySessionService
from google.adk.tools import load_memory
from google.genai import types
from rootconf import create_database, selected_backends

import mofa_persist
from mofa_persist.integrations.adk import MofaSessionService
from mofa_persist.integrations.adk_memory import MEMORY_SESSION, MofaMemoryService

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

    from google.adk.models.llm_request import LlmRequest

BACKENDS = selected_backends()
REFERENCE = "adk-in-memory"

Pair = tuple[BaseSessionService, BaseMemoryService]


def url_for(
    backend: str, server_databases: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A database of this run for ``backend`` (the conftest's, shared by the run's tests)."""
    if backend == "memory":
        return "memory://"
    if backend not in server_databases:
        if backend == "sqlite":
            folder = tmp_path_factory.mktemp("sqlite")
            server_databases[backend] = f"sqlite://{Path(folder) / 'memory.db'}"
        else:
            server_databases[backend] = create_database(backend)
    return server_databases[backend]


@pytest.fixture(params=[REFERENCE, *BACKENDS])
def target(
    request: pytest.FixtureRequest,
    server_databases: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> str | None:
    """A backend's database URL, or None for the reference (sync: databases are made with
    asyncio.run)."""
    name: str = request.param
    return None if name == REFERENCE else url_for(name, server_databases, tmp_path_factory)


@pytest.fixture
async def pair(target: str | None) -> AsyncIterator[Pair]:
    """ADK's in-memory services, or this library's over a backend in a tenant of its own."""
    if target is None:
        yield InMemorySessionService(), InMemoryMemoryService()
        return
    async with await mofa_persist.connect(target) as store:
        view = store.scoped(tenant_id=uuid.uuid4())
        yield MofaSessionService(view), MofaMemoryService(view)


@pytest.fixture(params=BACKENDS)
def mofa_url(
    request: pytest.FixtureRequest,
    server_databases: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    return url_for(request.param, server_databases, tmp_path_factory)


@pytest.fixture
async def mofa_store(mofa_url: str) -> AsyncIterator[mofa_persist.Store]:
    async with await mofa_persist.connect(mofa_url) as store:
        yield store.scoped(tenant_id=uuid.uuid4())


def said(text: str, *, author: str = "user", at: float | None = None) -> Event:
    event = Event(
        invocation_id="inv",
        author=author,
        content=types.Content(
            role="user" if author == "user" else "model", parts=[types.Part(text=text)]
        ),
    )
    if at is not None:
        event.timestamp = at
    return event


async def remember(
    pair: Pair, texts: list[str], *, app: str = "app", user: str = "alice", start: float = 1e9
) -> str:
    """A session of ``texts`` (user and agent taking turns), added to memory; its id."""
    sessions, memory = pair
    session = await sessions.create_session(app_name=app, user_id=user)
    for index, text in enumerate(texts):
        author = "user" if index % 2 == 0 else "agent"
        await sessions.append_event(session, said(text, author=author, at=start + index))
    await memory.add_session_to_memory(session)
    return session.id


def found(response: Any) -> list[str]:
    return [
        "".join(part.text or "" for part in entry.content.parts or [])
        for entry in response.memories
    ]


async def search(pair: Pair, query: str, *, app: str = "app", user: str = "alice") -> list[str]:
    return found(await pair[1].search_memory(app_name=app, user_id=user, query=query))


# ---------------------------------------------------------------- the contract (all of them)


async def test_finds_what_was_said(pair: Pair) -> None:
    await remember(pair, ["My favorite color is blue", "Noted, blue it is."], start=1e9)
    await remember(pair, ["I live in Zürich", "Nice city."], start=2e9)
    response = await pair[1].search_memory(
        app_name="app", user_id="alice", query="What is my favorite color?"
    )
    assert found(response)[0] == "My favorite color is blue"
    first = response.memories[0]
    assert first.author == "user"
    assert first.timestamp == datetime.fromtimestamp(1e9).isoformat()
    assert set(await search(pair, "zürich")) == {"I live in Zürich"}
    assert set(await search(pair, "blue ZÜRICH")) == {
        "My favorite color is blue",
        "Noted, blue it is.",
        "I live in Zürich",
    }


async def test_more_matched_words_come_first(pair: Pair) -> None:
    await remember(pair, ["the order shipped", "order 48213 for a blue lamp shipped today"])
    hits = await search(pair, "blue lamp order shipped")
    assert hits == ["order 48213 for a blue lamp shipped today", "the order shipped"]


async def test_whole_words_case_insensitive(pair: Pair) -> None:
    await remember(pair, ["Refunds are processed weekly"])
    assert await search(pair, "refund") == []
    assert await search(pair, "REFUNDS") == ["Refunds are processed weekly"]


async def test_at_most_ten(pair: Pair) -> None:
    await remember(pair, [f"note number {index}" for index in range(14)])
    assert len(await search(pair, "note")) == 10


async def test_users_and_apps_are_apart(pair: Pair) -> None:
    await remember(pair, ["alice's secret is tulips"], user="alice")
    await remember(pair, ["bob's secret is daisies"], user="bob")
    await remember(pair, ["alice elsewhere: secret roses"], app="other", user="alice")
    assert await search(pair, "secret") == ["alice's secret is tulips"]
    assert await search(pair, "secret", user="bob") == ["bob's secret is daisies"]
    assert await search(pair, "secret", app="other") == ["alice elsewhere: secret roses"]
    assert await search(pair, "daisies roses") == []
    assert await search(pair, "secret", user="carol") == []


async def test_nothing_found(pair: Pair) -> None:
    assert await search(pair, "anything") == []
    await remember(pair, ["hello there"])
    for query in ("", "   ", "?!", "goodbye", "hell", "the-end"):
        assert await search(pair, query) == []


ODD_QUERIES = [
    '"blue',
    "-blue",
    "blue*",
    "(blue) OR NOT [sky]",
    "blue; DROP TABLE messages; --",
    "%blue%",
    "blue\\",
    "'blue'",
    'blue"sky"',
    "blue:*",
    "+blue -sky",
    "blue\x00",
    "blue " + "x" * 2000,
    " ".join(f"w{index}" for index in range(50)) + " blue",
    "💙 blue 💙",
    "blue@example.com",
]


async def test_odd_queries_never_raise(pair: Pair) -> None:
    await remember(pair, ["the sky is blue", "yes"])
    for query in ODD_QUERIES:
        assert await search(pair, query) == ["the sky is blue"], query
    for query in ("*", "-", '""', "'", "AND", "((", "💙", "\\", "%", "_", "\t\n"):
        assert await search(pair, query) == [], query


async def test_only_text_parts_are_memories(pair: Pair) -> None:
    sessions, memory = pair
    session = await sessions.create_session(app_name="app", user_id="alice")
    call = types.FunctionCall(name="weather", args={"city": "Oslo"}, id="c1")
    await sessions.append_event(
        session,
        Event(
            invocation_id="inv",
            author="agent",
            content=types.Content(role="model", parts=[types.Part(function_call=call)]),
        ),
    )
    await sessions.append_event(session, Event(invocation_id="inv", author="agent"))
    await sessions.append_event(session, said("weather in Oslo?"))
    await memory.add_session_to_memory(session)
    assert await search(pair, "weather Oslo event parts") == ["weather in Oslo?"]


async def test_adding_again_adds_nothing_twice(pair: Pair) -> None:
    sessions, memory = pair
    session = await sessions.create_session(app_name="app", user_id="alice")
    await sessions.append_event(session, said("first apples", at=1e9))
    await memory.add_session_to_memory(session)
    await sessions.append_event(session, said("then apples again", at=1e9 + 1))
    await memory.add_session_to_memory(session)
    await memory.add_session_to_memory(session)
    assert sorted(await search(pair, "apples")) == ["first apples", "then apples again"]


async def test_add_events_to_memory(pair: Pair) -> None:
    memory = pair[1]
    events = [said("pears are ripe", at=1e9), said("plums too", author="agent", at=1e9 + 1)]
    await memory.add_events_to_memory(app_name="app", user_id="alice", events=events)
    await memory.add_events_to_memory(
        app_name="app", user_id="alice", events=events[1:], session_id="s-1"
    )
    await memory.add_events_to_memory(app_name="app", user_id="alice", events=events)
    assert await search(pair, "pears") == ["pears are ripe"]
    assert await search(pair, "plums") == ["plums too", "plums too"]
    assert await search(pair, "pears", user="bob") == []


async def test_delete_memory(pair: Pair) -> None:
    memory = pair[1]
    await remember(pair, ["keep the cherries", "forget the cherries"])
    response = await memory.search_memory(app_name="app", user_id="alice", query="forget")
    (entry,) = response.memories
    assert entry.id
    await memory.delete_memory(app_name="app", user_id="bob", memory_id=entry.id)
    await memory.delete_memory(app_name="other", user_id="alice", memory_id=entry.id)
    assert await search(pair, "forget") == ["forget the cherries"]
    await memory.delete_memory(app_name="app", user_id="alice", memory_id=entry.id)
    await memory.delete_memory(app_name="app", user_id="alice", memory_id="no such id")
    await memory.delete_memory(app_name="app", user_id="alice", memory_id=None)
    assert await search(pair, "cherries") == ["keep the cherries"]


# ---------------------------------------------------------------- only MofaMemoryService


async def test_another_services_session(mofa_store: mofa_persist.Store) -> None:
    """A session of ADK's in-memory service is copied in: searchable, readable, appended to."""
    other = InMemorySessionService()
    memory = MofaMemoryService(mofa_store)
    session = await other.create_session(app_name="app", user_id="alice", state={"k": 1})
    await other.append_event(session, said("my dog is called Rex", at=1e9))
    await memory.add_session_to_memory(session)
    await memory.add_session_to_memory(session)
    await other.append_event(session, said("Rex likes walks", author="agent", at=1e9 + 1))
    await memory.add_session_to_memory(session)
    hits = await memory.search_memory(app_name="app", user_id="alice", query="rex")
    assert found(hits) == ["Rex likes walks", "my dog is called Rex"]
    copied = await MofaSessionService(mofa_store).get_session(
        app_name="app", user_id="alice", session_id=session.id
    )
    assert copied is not None
    assert [event.id for event in copied.events] == [event.id for event in session.events]
    assert copied.state == {"k": 1}


async def test_add_memory(mofa_store: mofa_persist.Store) -> None:
    memory = MofaMemoryService(mofa_store)
    entry = MemoryEntry(
        content=types.Content(role="user", parts=[types.Part(text="allergic to peanuts")]),
        timestamp=datetime.fromtimestamp(1.5e9).isoformat(),
    )
    await memory.add_memory(app_name="app", user_id="alice", memories=[entry])
    (hit,) = (
        await memory.search_memory(app_name="app", user_id="alice", query="peanuts?")
    ).memories
    assert (hit.author, hit.timestamp) == ("user", entry.timestamp)
    sessions = MofaSessionService(mofa_store)
    stored = await sessions.get_session(app_name="app", user_id="alice", session_id=MEMORY_SESSION)
    assert stored is not None
    assert len(stored.events) == 1


async def test_the_view_bounds_memory(mofa_store: mofa_persist.Store) -> None:
    """Two views of one database with the same app and user names see their own."""
    tenant = mofa_store.scope.tenant_id
    one = mofa_store.scoped(tenant_id=tenant, user_id=uuid.uuid4())
    two = mofa_store.scoped(tenant_id=tenant, user_id=uuid.uuid4())
    for view, text in ((one, "view one sings"), (two, "view two sings")):
        await MofaMemoryService(view).add_events_to_memory(
            app_name="app", user_id="alice", events=[said(text)]
        )
    hits = await MofaMemoryService(one).search_memory(
        app_name="app", user_id="alice", query="sings"
    )
    assert found(hits) == ["view one sings"]


# ---------------------------------------------------------------- an agent with load_memory


class RecallingLlm(BaseLlm):
    """Calls ``load_memory`` when asked to recall, then answers with what it returned."""

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        parts = llm_request.contents[-1].parts or []
        response = next((p.function_response for p in parts if p.function_response), None)
        if response is not None:
            result = (response.response or {}).get("result")
            texts = [
                part.text or ""
                for memory in getattr(result, "memories", [])
                for part in memory.content.parts or []
            ]
            yield LlmResponse(
                content=types.Content(role="model", parts=[types.Part(text=" | ".join(texts))])
            )
            return
        asked = "".join(part.text or "" for part in parts)
        if asked.startswith("recall:"):
            call = types.FunctionCall(
                name="load_memory", args={"query": asked.removeprefix("recall:")}, id="m1"
            )
            yield LlmResponse(
                content=types.Content(role="model", parts=[types.Part(function_call=call)])
            )
            return
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text="OK.")]))


async def test_runner_with_load_memory(mofa_store: mofa_persist.Store) -> None:
    sessions = MofaSessionService(mofa_store)
    memory = MofaMemoryService(mofa_store)
    agent = LlmAgent(name="helper", model=RecallingLlm(model="scripted"), tools=[load_memory])
    runner = Runner(app_name="app", agent=agent, session_service=sessions, memory_service=memory)

    async def ask(session_id: str, text: str, user: str = "alice") -> list[str]:
        message = types.Content(role="user", parts=[types.Part(text=text)])
        answers: list[str] = []
        async for event in runner.run_async(
            user_id=user, session_id=session_id, new_message=message
        ):
            if event.content is not None and event.is_final_response():
                answers.extend(part.text for part in event.content.parts or [] if part.text)
        return answers

    first = await sessions.create_session(app_name="app", user_id="alice")
    assert await ask(first.id, "My locker code is 4711!") == ["OK."]
    stored = await sessions.get_session(app_name="app", user_id="alice", session_id=first.id)
    assert stored is not None
    await memory.add_session_to_memory(stored)
    second = await sessions.create_session(app_name="app", user_id="alice")
    # Every stored session is memory, the one in progress too (its question is found).
    (answer,) = await ask(second.id, 'recall:my "locker code"?')
    assert set(answer.split(" | ")) == {"My locker code is 4711!", 'recall:my "locker code"?'}
    third = await sessions.create_session(app_name="app", user_id="bob")
    (answer,) = await ask(third.id, "recall:locker code", user="bob")
    assert answer == "recall:locker code"


def test_import_without_adk_names_the_extra() -> None:
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'google.adk' or name.startswith('google.adk.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "try:\n"
        "    import mofa_persist.integrations.adk_memory\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('imported without ADK')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'mofa-persist[adk]'" in result.stdout
