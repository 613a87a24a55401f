"""Helpers for the agent tests: a fake OpenAI-compatible server and scripted providers.

The server is a few lines of asyncio on 127.0.0.1 (port 0), so the HTTP provider is tested
over real sockets without the internet. It records every request body and answers from a
script (status, headers, body, delay), or with a numbered completion when the script is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mofa_persist.agent import Completion

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mofa_persist.agent import ChatMessage


def completion_body(
    content: str | None,
    *,
    model: str = "fake-model",
    finish_reason: str = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
    prompt_tokens: int = 7,
    completion_tokens: int = 3,
) -> dict[str, Any]:
    """A Chat Completions response body."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering (longer than the client's timeout: a timeout).
    delay: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body["messages"]
        return messages


class FakeOpenAI:
    """``async with FakeOpenAI() as server:`` then point a provider at ``server.base_url``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: deque[Reply] = deque()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    async def __aenter__(self) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            body = json.loads(raw) if raw else {}
            self.requests.append(Request(method, path, headers, body))
            number = len(self.requests)
            reply = self.script.popleft() if self.script else Reply()
            if reply.delay:
                await asyncio.sleep(reply.delay)
            payload = reply.body
            if payload is None:
                payload = completion_body(f"reply {number}")
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            status_line = f"HTTP/1.1 {reply.status} {'OK' if reply.status == 200 else 'Error'}"
            response_headers = {
                "Content-Type": "application/json",
                "Content-Length": str(len(data)),
                "Connection": "close",
                **reply.headers,
            }
            head_out = "\r\n".join(
                [status_line, *(f"{k}: {v}" for k, v in response_headers.items()), "", ""]
            )
            writer.write(head_out.encode("latin-1") + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._handlers.discard(task)


class ScriptedProvider:
    """A provider answering from a list: a ``Completion``, an exception to raise, or a coroutine
    factory (to block or wait on an event). Records the requests it was sent."""

    name = "scripted"
    default_model = "scripted-1"

    def __init__(self, *script: object) -> None:
        self.script: deque[object] = deque(script)
        self.requests: list[list[ChatMessage]] = []
        self.closed = False

    async def complete(self, messages: Sequence[ChatMessage], *, model: str) -> Completion:
        self.requests.append(list(messages))
        step = self.script.popleft() if self.script else None
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            result = await step()
            if isinstance(result, Completion):
                return result
            step = None
        if isinstance(step, Completion):
            return step
        return Completion(content=f"scripted {len(self.requests)}", model=model)

    async def aclose(self) -> None:
        self.closed = True
