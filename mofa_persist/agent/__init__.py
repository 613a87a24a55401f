"""The agent layer: an LLM agent whose conversation and state survive restarts.

plugin = PersistencePlugin("persistence", store, user_id, tenant_id, agent_id, session_id)
agent = await (LLMAgentBuilder.from_env()
               .with_persistence_plugin(plugin)
               .with_session_id(session_id)
               .build_async())
reply = await agent.chat("hello")
"""

from .agent import LLMAgent
from .builder import DEFAULT_CONTEXT_WINDOW, LLMAgentBuilder
from .errors import (
    AgentClosedError,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimitError,
    ProviderResponseError,
    ProviderTimeoutError,
)
from .plugin import PersistencePlugin
from .providers import ChatMessage, Completion, EchoProvider, OpenAIProvider, Provider
from .settings import (
    DEFAULT_AGENT_ID,
    DEFAULT_TENANT_ID,
    DEFAULT_USER_ID,
    AgentSettings,
)

__all__ = [
    "DEFAULT_AGENT_ID",
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_TENANT_ID",
    "DEFAULT_USER_ID",
    "AgentClosedError",
    "AgentSettings",
    "ChatMessage",
    "Completion",
    "EchoProvider",
    "LLMAgent",
    "LLMAgentBuilder",
    "OpenAIProvider",
    "PersistencePlugin",
    "Provider",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderRateLimitError",
    "ProviderResponseError",
    "ProviderTimeoutError",
]
