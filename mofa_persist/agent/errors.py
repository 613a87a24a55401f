"""Typed failures of an LLM provider call.

They subclass :class:`mofa_persist.PersistenceError` so one ``except`` catches everything the
agent layer raises. ``status`` is the value recorded in ``api_calls.status`` for the call.
"""

from __future__ import annotations

from mofa_persist.errors import PersistenceError


class ProviderError(PersistenceError):
    """The provider call failed; nothing of the turn was stored (only the failed call)."""

    #: What ``api_calls.status`` records for this failure.
    status: str = "failed"

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model
        #: The HTTP status of the last response, when there was one.
        self.http_status = http_status


class ProviderTimeoutError(ProviderError, TimeoutError):
    """The provider did not answer within the request timeout."""

    status = "timeout"


class ProviderRateLimitError(ProviderError):
    """The provider kept answering 429 Too Many Requests after the bounded retries."""

    status = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        http_status: int | None = 429,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, model=model, http_status=http_status)
        #: Seconds the provider asked us to wait, if it said so.
        self.retry_after = retry_after


class ProviderResponseError(ProviderError):
    """The provider answered with an error status or a reply that is not a chat completion."""


class ProviderConnectionError(ProviderError, ConnectionError):
    """The provider could not be reached (refused connection, DNS failure, reset)."""


class AgentClosedError(PersistenceError):
    """The agent was closed; build a new one to continue the session."""
