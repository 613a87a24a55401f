"""LLM providers: the :class:`Provider` protocol and the two built-in implementations."""

from .base import ChatMessage, Completion, Provider
from .echo import EchoProvider
from .openai import OpenAIProvider

__all__ = ["ChatMessage", "Completion", "EchoProvider", "OpenAIProvider", "Provider"]
