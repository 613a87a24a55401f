"""An offline, deterministic provider: the demo and the tests run without a network or a key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Completion

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .base import ChatMessage


class EchoProvider:
    """Replies ``echo: <last user message>`` and says how much context it was sent.

    For example ``echo: hello [context: system prompt + 4 earlier messages]``. Token counts
    are whitespace-separated words, so usage numbers are deterministic too.
    """

    name = "echo"
    default_model = "echo-1"

    async def complete(self, messages: Sequence[ChatMessage], *, model: str) -> Completion:
        last_user = next((m for m in reversed(messages) if m["role"] == "user"), None)
        text = (last_user["content"] or "") if last_user is not None else ""
        has_system = bool(messages) and messages[0]["role"] == "system"
        earlier = len(messages) - (1 if has_system else 0) - (1 if last_user is not None else 0)
        seen = f"{earlier} earlier message{'' if earlier == 1 else 's'}"
        if has_system:
            seen = f"system prompt + {seen}"
        reply = f"echo: {text} [context: {seen}]"
        prompt_tokens = sum(len((m["content"] or "").split()) for m in messages)
        completion_tokens = len(reply.split())
        return Completion(
            content=reply,
            model=model,
            finish_reason="stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )

    async def aclose(self) -> None:
        return None
