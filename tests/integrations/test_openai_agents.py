"""MofaSession against the OpenAI Agents SDK's session contract.

The contract tests are plain async functions of a ``make_session(session_id, settings=None)``
factory. Each runs on the SDK's own ``agents.SQLiteSession`` (the reference: that it passes
proves the tests say what the SDK does) and on :class:`MofaSession` over every selected
backend. Then: the SDK's ``Runner`` with a scripted model (offline) and a restart on the same
database, the view through this library's own API, and what only MofaSession promises.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("agents")

from agents import Agent, RunConfig, Runner, SQLiteSession, function_tool
from agents.memory import Session, SessionSettings
from agents.testing import ScriptedModel, assistant_message, function_call
from rootconf import create_database, selected_backends

import mofa_persist
from mofa_persist import InvalidInputError
from mofa_persist.integrations.openai_agents import NAMESPACE, MofaSession

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    MakeSession = Callable[..., Any]

BACKENDS = selected_backends()
PERSISTENT = [name for name in BACKENDS if name != "memory"]
IMPLEMENTATIONS = ["reference", *BACKENDS]


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


@pytest.fixture
def mofa_url(
    request: pytest.FixtureRequest,
    server_databases: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """The URL of the backend the test is parametrized with (made outside the event loop)."""
    backend: str = request.param
    return url_for(backend, server_databases, tmp_path_factory)


@pytest.fixture
async def mofa_store(mofa_url: str) -> AsyncIterator[mofa_persist.Store]:
    """A store on the test's backend, in a tenant of its own."""
    async with await mofa_persist.connect(mofa_url) as store:
        yield store.scoped(tenant_id=uuid.uuid4())


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(
    request: pytest.FixtureRequest,
    server_databases: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> str | None:
    """``None`` for the reference, else the URL of a backend's database."""
    name: str = request.param
    if name == "reference":
        return None
    return url_for(name, server_databases, tmp_path_factory)


@pytest.fixture
async def make_session(implementation: str | None, tmp_path: Path) -> AsyncIterator[MakeSession]:
    """``make_session(session_id, settings=None)`` on the reference or on one backend."""
    if implementation is None:
        opened: list[SQLiteSession] = []

        def reference(session_id: str, settings: SessionSettings | None = None) -> Session:
            session = SQLiteSession(
                session_id, tmp_path / "reference.db", session_settings=settings
            )
            opened.append(session)
            return session

        yield reference
        for session in opened:
            session.close()
        return
    async with await mofa_persist.connect(implementation) as store:
        view = store.scoped(tenant_id=uuid.uuid4())

        def mofa(session_id: str, settings: SessionSettings | None = None) -> Session:
            return MofaSession(session_id, view, session_settings=settings)

        yield mofa


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


#: One of each kind of item the SDK keeps, with keys it does not know and awkward values.
VARIED_ITEMS: list[dict[str, Any]] = [
    {"role": "developer", "content": "Be brief."},
    {"role": "system", "content": "You are a test."},
    {"role": "user", "content": "Grüße 👋 — \u00e9\u0301 \u202e right-to-left"},
    {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "parts"}, {"type": "input_text", "text": "!"}],
    },
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
    },
    {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_1",
        "name": "weather",
        "arguments": '{"city": "Zürich"}',
        "status": "completed",
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "7°C, rain"},
    {
        "id": "rs_1",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "thinking"}],
        "encrypted_content": "abc==",
    },
    {
        "type": "x_future_item",
        "unknown": {"nested": [1, 2.5, -3, 10**20, 1e-7, 1e16, 0.1, True, None, ""]},
        "big_int": 2**63 + 1,
        "float": 3.141592653589793,
        "empty": {},
        "list": [],
    },
]


# ---------------------------------------------------------------- the contract (all of them)


async def test_empty_session(make_session: MakeSession) -> None:
    session = make_session("nobody-here")
    assert await session.get_items() == []
    assert await session.get_items(limit=3) == []
    assert await session.get_items(limit=0) == []
    assert await session.pop_item() is None
    await session.clear_session()
    assert await session.get_items() == []


async def test_items_come_back_exactly(make_session: MakeSession) -> None:
    session = make_session("exact")
    await session.add_items(VARIED_ITEMS[:4])
    await session.add_items(VARIED_ITEMS[4:])
    assert await session.get_items() == VARIED_ITEMS
    assert await make_session("exact").get_items() == VARIED_ITEMS


async def test_limits(make_session: MakeSession) -> None:
    items = [user(f"m{index}") for index in range(5)]
    session = make_session("limits")
    await session.add_items(items)
    assert await session.get_items() == items
    assert await session.get_items(limit=None) == items
    assert await session.get_items(limit=0) == []
    assert await session.get_items(limit=1) == items[-1:]
    assert await session.get_items(limit=2) == items[-2:]
    assert await session.get_items(limit=5) == items
    assert await session.get_items(limit=50) == items


async def test_session_settings_limit(make_session: MakeSession) -> None:
    items = [user(f"m{index}") for index in range(5)]
    await make_session("settings").add_items(items)
    limited = make_session("settings", SessionSettings(limit=2))
    assert limited.session_settings == SessionSettings(limit=2)
    assert await limited.get_items() == items[-2:]
    assert await limited.get_items(limit=3) == items[-3:]
    assert await limited.get_items(limit=0) == []
    assert await make_session("settings", SessionSettings(limit=0)).get_items() == []
    assert await make_session("settings", SessionSettings()).get_items() == items


async def test_pop_item(make_session: MakeSession) -> None:
    session = make_session("pop")
    await session.add_items([user("a"), user("b")])
    await session.add_items([user("c")])
    assert await session.pop_item() == user("c")
    assert await session.pop_item() == user("b")
    await session.add_items([user("d")])
    assert await session.get_items() == [user("a"), user("d")]
    assert await session.pop_item() == user("d")
    assert await session.pop_item() == user("a")
    assert await session.pop_item() is None
    assert await session.get_items() == []


async def test_clear_session(make_session: MakeSession) -> None:
    session = make_session("clear")
    await session.add_items([user("a"), user("b")])
    await make_session("other").add_items([user("kept")])
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.add_items([user("again")])
    assert await session.get_items() == [user("again")]
    assert await make_session("clear").get_items(limit=1) == [user("again")]
    assert await make_session("other").get_items() == [user("kept")]
    await session.clear_session()
    await session.clear_session()
    assert await session.get_items() == []


async def test_empty_add_changes_nothing(make_session: MakeSession) -> None:
    session = make_session("empty-add")
    await session.add_items([])
    assert await session.get_items() == []
    await session.add_items([user("a")])
    await session.add_items([])
    assert await session.get_items() == [user("a")]


async def test_sessions_are_isolated_and_ids_exact(make_session: MakeSession) -> None:
    ids = [
        "chat",
        "Chat",
        "CHAT ",
        " chat",
        "chat with spaces",
        "ünïcödé 🤖 会话",
        "e\u0301",
        "\u00e9",
        "x" * 300,
        "x" * 299,
        "a/b\\c'd\"e%_*",
    ]
    for index, session_id in enumerate(ids):
        await make_session(session_id).add_items([user(f"{index}")])
    for index, session_id in enumerate(ids):
        session = make_session(session_id)
        assert session.session_id == session_id
        assert await session.get_items() == [user(f"{index}")]
    assert await make_session("chat").pop_item() == user("0")
    assert await make_session("Chat").get_items() == [user("1")]


async def test_big_item(make_session: MakeSession) -> None:
    text = "ß€🙂a" * (1024 * 1024 // 10)  # about 1 MB in UTF-8
    item = {"role": "user", "content": text}
    call = {"type": "function_call_output", "call_id": "c", "output": text}
    session = make_session("big")
    await session.add_items([item, call])
    assert await session.get_items() == [item, call]
    assert await session.get_items(limit=1) == [call]
    assert await session.pop_item() == call


async def test_concurrent_adds_stay_contiguous(make_session: MakeSession) -> None:
    tasks, per_task = 20, 5

    async def writer(task: int) -> None:
        items = [user(f"{task}:{index}") for index in range(per_task)]
        await make_session("busy").add_items(items)

    await asyncio.gather(*(writer(task) for task in range(tasks)))
    stored = [item["content"] for item in await make_session("busy").get_items()]
    assert len(stored) == tasks * per_task
    for start in range(0, len(stored), per_task):
        chunk = stored[start : start + per_task]
        task = chunk[0].split(":")[0]
        assert chunk == [f"{task}:{index}" for index in range(per_task)]
    assert len({item.split(":")[0] for item in stored}) == tasks


# ---------------------------------------------------------------- the SDK's Runner, offline


@function_tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"{city}: 7°C, rain"


def scripted(*steps: Any) -> ScriptedModel:
    return ScriptedModel(list(steps))


def tool_conversation() -> ScriptedModel:
    return scripted(
        [function_call("weather", {"city": "Zürich"}, call_id="call_1")],
        [assistant_message("It rains in Zürich.", item_id="msg_a")],
        [assistant_message("Take an umbrella.", item_id="msg_b")],
    )


def texts(items: list[Any]) -> list[str]:
    """What each model input item says, in order (for comparing what the model saw)."""
    said = []
    for item in items:
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        said.append(content if content is not None else item.get("type"))
    return said


async def test_runner_with_a_tool_call(make_session: MakeSession) -> None:
    model = tool_conversation()
    agent = Agent(name="forecaster", model=model, tools=[weather])
    session = make_session("runner")
    first = await Runner.run(agent, "Weather in Zürich?", session=session)
    assert first.final_output == "It rains in Zürich."
    second = await Runner.run(agent, "And now?", session=make_session("runner"))
    assert second.final_output == "Take an umbrella."
    last_input = model.calls[-1].input
    assert texts(last_input) == [
        "Weather in Zürich?",
        "function_call",
        "function_call_output",
        "It rains in Zürich.",
        "And now?",
    ]
    stored = await make_session("runner").get_items()
    assert [item.get("type", "message") for item in stored] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
        "message",
    ]
    assert stored[2]["output"] == "Zürich: 7°C, rain"


async def test_run_config_limit_zero_sends_no_history(make_session: MakeSession) -> None:
    model = scripted([assistant_message("one")], [assistant_message("two")])
    agent = Agent(name="plain", model=model)
    session = make_session("run-config")
    await Runner.run(agent, "first", session=session)
    config = RunConfig(session_settings=SessionSettings(limit=0))
    await Runner.run(agent, "second", session=session, run_config=config)
    assert texts(model.calls[-1].input) == ["second"]
    assert texts(await session.get_items()) == ["first", "one", "second", "two"]


@pytest.mark.parametrize("mofa_url", PERSISTENT, indirect=True)
async def test_conversation_continues_after_a_restart(mofa_url: str) -> None:
    url = mofa_url
    tenant = uuid.uuid4()
    model = tool_conversation()
    agent = Agent(name="forecaster", model=model, tools=[weather])
    async with await mofa_persist.connect(url) as store:
        session = MofaSession("restart 🔁", store.scoped(tenant_id=tenant))
        await Runner.run(agent, "Weather in Zürich?", session=session)
        before = await session.get_items()
    async with await mofa_persist.connect(url) as store:
        session = MofaSession("restart 🔁", store.scoped(tenant_id=tenant))
        assert await session.get_items() == before
        result = await Runner.run(agent, "And now?", session=session)
        assert result.final_output == "Take an umbrella."
    assert texts(model.calls[-1].input) == [
        "Weather in Zürich?",
        "function_call",
        "function_call_output",
        "It rains in Zürich.",
        "And now?",
    ]


# ---------------------------------------------------------------- what only MofaSession does


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_is_an_sdk_session(mofa_store: mofa_persist.Store) -> None:
    session = MofaSession("s", mofa_store)
    assert isinstance(session, Session)
    assert session.session_settings == SessionSettings()
    assert session.store is mofa_store
    with pytest.raises(InvalidInputError):
        MofaSession("", mofa_store)
    with pytest.raises(InvalidInputError):
        MofaSession(7, mofa_store)  # type: ignore[arg-type]


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_negative_limit_returns_nothing(mofa_store: mofa_persist.Store) -> None:
    # The reference differs here (SQLite reads LIMIT -1 as no limit), so it is no contract.
    session = MofaSession("negative", mofa_store, session_settings=SessionSettings(limit=-1))
    await session.add_items([user("a")])
    assert await session.get_items(limit=-5) == []
    assert await session.get_items() == []
    assert await session.get_items(limit=1) == [user("a")]


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_items_are_ordinary_messages(mofa_store: mofa_persist.Store) -> None:
    session = MofaSession("visible chat", mofa_store)
    await session.add_items(VARIED_ITEMS)
    page = await mofa_store.list_sessions()
    (found,) = page.items
    assert found.title == "visible chat"
    assert await mofa_store.external_id_of(found.id) == (NAMESPACE, "visible chat")
    assert await session.library_session_id() == found.id
    messages = await mofa_store.get_messages(found.id)
    assert [message.role for message in messages] == [
        "system",
        "system",
        "user",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "tool",
    ]
    assert [message.content for message in messages][:8] == [
        "Be brief.",
        "You are a test.",
        VARIED_ITEMS[2]["content"],
        "parts\n!",
        "Let me look.",
        'weather({"city": "Zürich"})',
        "7°C, rain",
        "thinking",
    ]
    assert messages[8].content == "[x_future_item]"
    assert messages[0].metadata["role"] == "developer"
    assert messages[5].metadata["type"] == "function_call"
    assert [message.metadata["item"] for message in messages] == VARIED_ITEMS


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_limit_reads_only_the_newest_rows(
    mofa_store: mofa_persist.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = MofaSession("window", mofa_store, session_settings=SessionSettings(limit=3))
    await session.add_items([user(f"m{index}") for index in range(10)])
    asked: list[int | None] = []
    read = mofa_store.get_messages

    async def spy(session_id: Any, **options: Any) -> Any:
        asked.append(options.get("limit"))
        return await read(session_id, **options)

    monkeypatch.setattr(mofa_store, "get_messages", spy)
    assert await session.get_items() == [user("m7"), user("m8"), user("m9")]
    assert await session.get_items(limit=1) == [user("m9")]
    assert await session.get_items(limit=0) == []
    assert asked == [3, 1]


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_unstorable_item_writes_nothing(mofa_store: mofa_persist.Store) -> None:
    session = MofaSession("refused", mofa_store)
    await session.add_items([user("kept")])
    nested: Any = "deep"
    for _ in range(40):
        nested = [nested]
    for bad in (
        user("nul \x00 inside"),
        user("lone \ud800 surrogate"),
        {"type": "x", "value": float("nan")},
        {"type": "x", "value": nested},
        {"type": "x", "value": {1, 2}},
        "not a mapping",
    ):
        with pytest.raises(InvalidInputError):
            await session.add_items([user("before"), bad])  # type: ignore[list-item]
    assert await session.get_items() == [user("kept")]
    with pytest.raises(InvalidInputError):
        await MofaSession("never made", mofa_store).add_items([user("\x00")])
    assert await MofaSession("never made", mofa_store).library_session_id() is None


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_clear_keeps_the_mapping(mofa_store: mofa_persist.Store) -> None:
    session = MofaSession("cleared", mofa_store)
    await session.add_items([user("a")])
    before = await session.library_session_id()
    await session.clear_session()
    assert await MofaSession("cleared", mofa_store).library_session_id() == before
    assert await mofa_store.count_messages(before) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_session_deleted_underneath(mofa_store: mofa_persist.Store) -> None:
    session = MofaSession("erased", mofa_store)
    await session.add_items([user("a")])
    first = await session.library_session_id()
    assert first is not None
    await mofa_store.delete_session(first)  # as erasure or retention would
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.clear_session()
    await session.add_items([user("b")])
    assert await session.get_items() == [user("b")]
    assert await session.library_session_id() not in (None, first)


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_messages_written_through_the_library_read_as_items(
    mofa_store: mofa_persist.Store,
) -> None:
    session = MofaSession("mixed", mofa_store)
    await session.add_items([user("from the SDK")])
    sid = await session.library_session_id()
    assert sid is not None
    await mofa_store.append_message(sid, "assistant", "from the library")
    assert await session.get_items() == [
        user("from the SDK"),
        {"role": "assistant", "content": "from the library"},
    ]


@pytest.mark.parametrize("mofa_url", BACKENDS, indirect=True)
async def test_ten_megabyte_item(mofa_store: mofa_persist.Store) -> None:
    text = "0123456789" * (1024 * 1024)
    item = {"type": "function_call_output", "call_id": "c", "output": text}
    session = MofaSession("huge", mofa_store)
    await session.add_items([item])
    assert await session.get_items() == [item]
    sid = await session.library_session_id()
    assert sid is not None
    (message,) = await mofa_store.get_messages(sid)
    assert len(message.content) == 100_000
    assert message.content.endswith("\N{HORIZONTAL ELLIPSIS}")


# ---------------------------------------------------------------- imports


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_base_package_does_not_import_the_sdk() -> None:
    result = run_python(
        "import json, sys, mofa_persist, mofa_persist.integrations, mofa_persist.cli\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'agents')))"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_import_without_the_sdk_names_the_extra() -> None:
    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'agents' or name.startswith('agents.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import mofa_persist.integrations\n"
        "try:\n"
        "    import mofa_persist.integrations.openai_agents\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('imported without the SDK')\n"
    )
    result = run_python(hide)
    assert result.returncode == 0, result.stderr
    assert "pip install 'mofa-persist[openai-agents]'" in result.stdout
