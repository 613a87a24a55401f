"""The provider contract: OpenAI-style chat messages in, one :class:`Completion` out.

Anything with this shape can drive an agent; the agent records every call, builds the context
and stores the turn, so a provider only has to talk to its model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NotRequired, Protocol, TypedDict, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence


class ChatMessage(TypedDict):
    """One message of a request, in the OpenAI Chat Completions shape."""

    role: str
    content: str | None
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]
    name: NotRequired[str]


@dataclass(frozen=True, slots=True)
class Completion:
    """A provider's reply to one request."""

    content: str
    #: The model that answered (providers may resolve aliases); falls back to the requested one.
    model: str | None = None
    finish_reason: str | None = None
    #: Tool calls the model asked for, in the OpenAI shape (``id``, ``type``, ``function``).
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    #: Tool results the provider produced itself (role ``tool``); stored after the reply.
    tool_messages: list[ChatMessage] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    #: HTTP attempts it took (retries on 429/5xx included).
    attempts: int = 1


@runtime_checkable
class Provider(Protocol):
    """What an agent needs from an LLM backend.

    ``complete`` raises :class:`~mofa_persist.agent.errors.ProviderError` (or a subclass) on
    failure; any other exception is wrapped into one by the agent.
    """

    #: Short name recorded in ``api_calls.provider`` (``"openai"``, ``"echo"``, ...).
    name: str
    #: Model used when the builder does not choose one.
    default_model: str

    async def complete(self, messages: Sequence[ChatMessage], *, model: str) -> Completion:
        """Answer ``messages`` (system prompt first, newest user message last)."""
        ...

    async def aclose(self) -> None:
        """Release connections; called by :meth:`LLMAgent.close` for providers it owns."""
        ...
