"""Providers, builder checks and ``from_env``: no database backend matrix needed here."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING

import pytest
from agent_support import FakeOpenAI, Reply

from mofa_persist import InvalidInputError, MemoryStore
from mofa_persist.agent import (
    DEFAULT_AGENT_ID,
    DEFAULT_TENANT_ID,
    DEFAULT_USER_ID,
    AgentSettings,
    EchoProvider,
    LLMAgentBuilder,
    OpenAIProvider,
    PersistencePlugin,
    ProviderConnectionError,
    ProviderRateLimitError,
    ProviderResponseError,
)
from mofa_persist.agent.providers.openai import _retry_after

if TYPE_CHECKING:
    from pathlib import Path


# ---------------------------------------------------------------------- from_env


async def test_from_env_gives_an_agent_that_continues_its_session(tmp_path: Path) -> None:
    session_id, tenant = uuid.uuid4(), uuid.uuid4()
    env = {
        "DATABASE_URL": f"sqlite://{tmp_path / 'env.db'}",
        "SESSION_ID": str(session_id),
        "TENANT_ID": str(tenant),
        "MOFA_LLM_PROVIDER": "echo",
        "MOFA_SYSTEM_PROMPT": "Be brief.",
        "MOFA_CONTEXT_WINDOW": "5",
    }
    async with await LLMAgentBuilder.from_env(env).build_async() as agent:
        assert await agent.chat("hello") == (
            "echo: hello [context: system prompt + 0 earlier messages]"
        )
        assert (agent.system_prompt, agent.context_window) == ("Be brief.", 5)
        assert (agent.plugin.tenant_id, agent.plugin.user_id) == (tenant, DEFAULT_USER_ID)
    async with await LLMAgentBuilder.from_env(env).build_async() as agent:
        assert agent.session_id == session_id
        assert await agent.chat("again") == (
            "echo: again [context: system prompt + 2 earlier messages]"
        )


async def test_from_env_without_session_id_starts_a_new_session_each_build(
    tmp_path: Path,
) -> None:
    env = {"DATABASE_URL": f"sqlite://{tmp_path / 'env.db'}", "MOFA_LLM_PROVIDER": "echo"}
    async with await LLMAgentBuilder.from_env(env).build_async() as first:
        await first.chat("hi")
    async with await LLMAgentBuilder.from_env(env).build_async() as second:
        assert second.session_id != first.session_id
        # Both sessions belong to the default user and agent, so they are listed together.
        assert {s.id for s in await second.list_sessions()} == {
            first.session_id,
            second.session_id,
        }


def test_from_env_defaults_are_stable_and_empty_values_are_unset() -> None:
    settings = AgentSettings.from_env({"USER_ID": "", "DATABASE_URL": "  "})
    assert (settings.user_id, settings.tenant_id, settings.agent_id) == (
        DEFAULT_USER_ID,
        DEFAULT_TENANT_ID,
        DEFAULT_AGENT_ID,
    )
    assert settings.database_url is None and settings.session_id is None
    assert settings.timeout == 60.0 and settings.max_retries == 2


async def test_without_a_provider_configured_the_error_says_what_to_set() -> None:
    with pytest.raises(InvalidInputError, match="MOFA_LLM_PROVIDER=echo"):
        await LLMAgentBuilder.from_env({}).build_async()


@pytest.mark.parametrize(
    "env",
    [
        {"USER_ID": "user-1"},
        {"SESSION_ID": "123"},
        {"MOFA_LLM_PROVIDER": "claude"},
        {"OPENAI_TIMEOUT": "soon"},
        {"OPENAI_TIMEOUT": "-1"},
        {"OPENAI_MAX_RETRIES": "-1"},
        {"MOFA_CONTEXT_WINDOW": "0"},
    ],
    ids=repr,
)
def test_from_env_refuses_malformed_values(env: dict[str, str]) -> None:
    with pytest.raises(InvalidInputError, match=next(iter(env))):
        LLMAgentBuilder.from_env(env)


async def test_from_env_configures_the_http_provider() -> None:
    settings = AgentSettings.from_env(
        {
            "OPENAI_API_KEY": "sk-secret",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1/",
            "MOFA_MODEL": "local-model",
            "OPENAI_TIMEOUT": "2.5",
            "OPENAI_MAX_RETRIES": "0",
        }
    )
    provider = settings.make_provider()
    assert isinstance(provider, OpenAIProvider)
    assert (provider.base_url, provider.timeout, provider.max_retries) == (
        "http://127.0.0.1:9/v1",
        2.5,
        0,
    )
    assert settings.model == "local-model"
    assert "sk-secret" not in repr(provider)
    await provider.aclose()


@pytest.mark.parametrize(
    ("method", "argument"),
    [
        ("with_context_window", 0),
        ("with_context_window", "10"),
        ("with_provider", "claude"),
        ("with_provider", object()),
        ("with_initial_state", {"tags": {"a"}}),
        ("with_initial_state", ["not", "a", "dict"]),
        ("with_model", ""),
        ("with_system_prompt", "nul\x00"),
    ],
    # Stable ids (a bare object's repr holds its address), so parallel workers agree.
    ids=lambda value: "object()" if type(value) is object else repr(value),
)
def test_builder_checks_each_argument_where_it_is_given(method: str, argument: object) -> None:
    with pytest.raises(InvalidInputError):
        getattr(LLMAgentBuilder(), method)(argument)


# ---------------------------------------------------------------------- providers


async def test_echo_provider_is_deterministic() -> None:
    echo = EchoProvider()
    request = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "hi there"},
    ]
    first = await echo.complete(request, model="m")  # type: ignore[arg-type]
    second = await echo.complete(request, model="m")  # type: ignore[arg-type]
    assert first == second
    assert first.content == "echo: hi there [context: system prompt + 2 earlier messages]"
    assert (first.prompt_tokens, first.finish_reason, first.model) == (5, "stop", "m")


async def test_http_provider_sends_model_options_and_key() -> None:
    async with FakeOpenAI() as server:
        provider = OpenAIProvider(
            api_key="sk-1", base_url=server.base_url, options={"temperature": 0}
        )
        try:
            done = await provider.complete([{"role": "user", "content": "x"}], model="m-1")
        finally:
            await provider.aclose()
    assert done.content == "reply 1" and done.attempts == 1
    sent = server.requests[0]
    assert sent.body == {
        "temperature": 0,
        "model": "m-1",
        "messages": [{"role": "user", "content": "x"}],
    }
    assert sent.headers["authorization"] == "Bearer sk-1"


async def test_a_retry_after_longer_than_allowed_is_not_waited_for() -> None:
    async with FakeOpenAI() as server:
        server.push(Reply(429, headers={"Retry-After": "3600"}))
        provider = OpenAIProvider(base_url=server.base_url, max_retry_after=5)
        try:
            with pytest.raises(ProviderRateLimitError) as caught:
                await provider.complete([{"role": "user", "content": "x"}], model="m")
        finally:
            await provider.aclose()
    assert caught.value.retry_after == 3600
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "body",
    ["not json", {"choices": []}, {"choices": [{"message": {"content": 5}}]}],
    ids=repr,
)
async def test_a_200_that_is_not_a_completion_is_a_response_error(body: object) -> None:
    async with FakeOpenAI() as server:
        server.push(Reply(200, body))  # type: ignore[arg-type]
        provider = OpenAIProvider(base_url=server.base_url)
        try:
            with pytest.raises(ProviderResponseError):
                await provider.complete([{"role": "user", "content": "x"}], model="m")
        finally:
            await provider.aclose()


async def test_an_unreachable_server_is_a_connection_error_after_retries() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIProvider(
        base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff=0.01, timeout=2
    )
    try:
        with pytest.raises(ProviderConnectionError):
            await provider.complete([{"role": "user", "content": "x"}], model="m")
    finally:
        await provider.aclose()


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert _retry_after("2") == 2.0
    assert _retry_after(" 0.5 ") == 0.5
    assert _retry_after("-3") == 0.0
    assert _retry_after(format_datetime(datetime.now(UTC) - timedelta(hours=1))) == 0.0
    later = _retry_after(format_datetime(datetime.now(UTC) + timedelta(seconds=30)))
    assert later is not None and 25 < later <= 30
    assert _retry_after("soon") is None
    assert _retry_after(None) is None


async def test_session_id_precedence_is_builder_then_plugin_then_env() -> None:
    from_env, from_plugin, explicit = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    env = {"SESSION_ID": str(from_env), "MOFA_LLM_PROVIDER": "echo"}
    async with await MemoryStore.connect() as store:
        ids = (uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
        with_id = PersistencePlugin("persistence", store, *ids, from_plugin)
        without_id = PersistencePlugin("persistence", store, *ids)
        builders = [
            (LLMAgentBuilder.from_env(env).with_persistence_plugin(without_id), from_env),
            (LLMAgentBuilder.from_env(env).with_persistence_plugin(with_id), from_plugin),
            (
                LLMAgentBuilder.from_env(env)
                .with_persistence_plugin(with_id)
                .with_session_id(str(explicit)),
                explicit,
            ),
        ]
        for builder, expected in builders:
            async with await builder.build_async() as agent:
                assert agent.session_id == expected
