"""OpenAI-compatible Chat Completions over HTTP (OpenAI, Azure-style gateways, vLLM, Ollama, ...).

One POST to ``{base_url}/chat/completions`` per attempt, with a request timeout. 429 and 5xx
answers (and refused connections) are retried a bounded number of times, waiting what the
server's ``Retry-After`` asks for, else an exponential backoff with jitter. A timeout is not
retried: the request may still be running, and waiting again would double the caller's wait.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from ..errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimitError,
    ProviderResponseError,
    ProviderTimeoutError,
)
from .base import ChatMessage, Completion

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
_ERROR_TEXT_CHARS = 500


class OpenAIProvider:
    """A :class:`~mofa_persist.agent.providers.Provider` for OpenAI-compatible servers.

    ``options`` are merged into every request body (``temperature``, ``tools``, ...).
    Pass ``client`` to share an ``httpx.AsyncClient``; it is then not closed by :meth:`aclose`.
    """

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        default_model: str = DEFAULT_MODEL,
        timeout: float = 60.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 30.0,
        options: Mapping[str, Any] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.default_model = default_model
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.options = dict(options or {})
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))
        )

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIProvider(base_url={self.base_url!r}, default_model={self.default_model!r})"

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def complete(self, messages: Sequence[ChatMessage], *, model: str) -> Completion:
        body = {**self.options, "model": model, "messages": list(messages)}
        url = f"{self.base_url}/chat/completions"
        attempt = 0
        while True:
            attempt += 1
            retryable: ProviderError
            wait: float | None
            try:
                response = await self._client.post(
                    url, headers=self._headers, json=body, timeout=self.timeout
                )
            except httpx.TimeoutException as error:
                raise ProviderTimeoutError(
                    f"{url} did not answer within {self.timeout:g}s ({type(error).__name__})",
                    provider=self.name,
                    model=model,
                ) from error
            except httpx.ConnectError as error:
                # Nothing was sent, so trying again cannot run the request twice.
                retryable = ProviderConnectionError(
                    f"cannot reach {self.base_url}: {error}", provider=self.name, model=model
                )
                wait = None
            except httpx.HTTPError as error:
                raise ProviderConnectionError(
                    f"request to {url} failed: {type(error).__name__}: {error}",
                    provider=self.name,
                    model=model,
                ) from error
            else:
                if response.status_code == 200:
                    return _parse(response, model, attempt)
                wait = _retry_after(response.headers.get("Retry-After"))
                retryable = _http_error(response, self.name, model, wait)
                if response.status_code != 429 and response.status_code < 500:
                    raise retryable
            if attempt > self.max_retries:
                raise retryable
            if wait is None:
                wait = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                wait *= 0.5 + random.random() / 2
            elif wait > self.max_retry_after:
                # Waiting less than asked would fail again; waiting that long is the caller's call.
                raise retryable
            await asyncio.sleep(wait)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _http_error(
    response: httpx.Response, provider: str, model: str, retry_after: float | None
) -> ProviderError:
    detail = _error_detail(response)
    message = f"HTTP {response.status_code} from {response.request.url}: {detail}"
    if response.status_code == 429:
        return ProviderRateLimitError(
            message, provider=provider, model=model, retry_after=retry_after
        )
    return ProviderResponseError(
        message, provider=provider, model=model, http_status=response.status_code
    )


def _error_detail(response: httpx.Response) -> str:
    """The server's error message (OpenAI puts it at ``error.message``), shortened."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:_ERROR_TEXT_CHARS] or response.reason_phrase
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:_ERROR_TEXT_CHARS]
        if isinstance(error, str):
            return error[:_ERROR_TEXT_CHARS]
    return json.dumps(payload)[:_ERROR_TEXT_CHARS]


def _parse(response: httpx.Response, model: str, attempts: int) -> Completion:
    try:
        payload = response.json()
        choice = payload["choices"][0]
        message = choice["message"]
        content = message.get("content") or ""
        tool_calls = message.get("tool_calls") or []
        if not isinstance(content, str) or not isinstance(tool_calls, list):
            raise TypeError("content must be a string and tool_calls a list")
        usage = payload.get("usage") or {}
        return Completion(
            content=content,
            model=payload.get("model") or model,
            finish_reason=choice.get("finish_reason"),
            tool_calls=[dict(call) for call in tool_calls],
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
            total_tokens=_count(usage.get("total_tokens")),
            attempts=attempts,
        )
    except (ValueError, LookupError, TypeError, AttributeError) as error:
        raise ProviderResponseError(
            f"{response.request.url} answered 200 but not with a chat completion "
            f"({type(error).__name__}: {error})",
            provider=OpenAIProvider.name,
            model=model,
            http_status=200,
        ) from error


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
