"""The persistent LLM agent: its history is the context, and every turn is stored whole.

A turn is: build the request (system prompt + the newest messages + the new user message),
call the provider, record that call in ``api_calls`` (its own transaction, failed calls too),
then store the user message, the reply (and tool messages) and the state snapshot with
``record_turn`` in ONE transaction. Until that commit nothing of the turn is in the database,
so a crash or a provider error never leaves half a turn behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Self, TypeVar

from mofa_persist.errors import BackendError, InvalidInputError, PersistenceError
from mofa_persist.ids import uuid7
from mofa_persist.validate import check_limit, check_text, encode_document, require_uuid

from .errors import AgentClosedError, ProviderError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping
    from types import TracebackType

    from mofa_persist.records import AgentState, Message, RewindResult, Session, Usage
    from mofa_persist.store import Store

    from .plugin import PersistencePlugin
    from .providers import ChatMessage, Completion, Provider

logger = logging.getLogger("mofa_persist.agent")

_MAX_MODEL_CHARS = 200
#: Attempts of a keyed write (a turn, a provider call) before its error reaches the caller.
_WRITE_ATTEMPTS = 5
_RETRY_BASE_S = 0.05
T = TypeVar("T")


class LLMAgent:
    """An LLM agent whose conversation and state live in a :class:`~mofa_persist.Store`.

    Build it with :class:`~mofa_persist.agent.LLMAgentBuilder`. ``state`` is a plain dict the
    application may change between turns; it is saved with each turn. Methods that change the
    conversation run one at a time per agent.

    If another process advanced the session's state since this agent last read it, the turn
    is refused with ``ConflictError`` (the reply is dropped, the provider call stays recorded);
    call :meth:`reload` to continue from the newer state.
    """

    def __init__(
        self,
        *,
        plugin: PersistencePlugin,
        provider: Provider,
        model: str,
        system_prompt: str | None,
        context_window: int,
        initial_state: Mapping[str, Any],
        owns_provider: bool,
        owned_store: Store | None,
    ) -> None:
        self._plugin = plugin
        self._provider = provider
        self._model = model
        self._system_prompt = system_prompt
        self._context_window = context_window
        self._initial_state = copy.deepcopy(dict(initial_state))
        self._owns_provider = owns_provider
        self._owned_store = owned_store
        self._lock = asyncio.Lock()
        self._closed = False
        self._session_id: uuid.UUID = uuid.UUID(int=0)
        self._version = 0
        # The newest stored messages, oldest first; the new user message completes the context.
        self._window: deque[Message] = deque(maxlen=context_window - 1)
        self.state: dict[str, Any] = {}
        #: The provider's last successful reply, with finish reason, tool calls and usage.
        self.last_completion: Completion | None = None

    # ------------------------------------------------------------------ properties

    @property
    def session_id(self) -> uuid.UUID:
        """The current session."""
        return self._session_id

    @property
    def state_version(self) -> int:
        """Version of the state this agent last saved or loaded (0: none saved yet)."""
        return self._version

    @property
    def plugin(self) -> PersistencePlugin:
        return self._plugin

    @property
    def store(self) -> Store:
        """The store view the agent uses, scoped to the plugin's tenant, user and agent."""
        return self._plugin.store

    @property
    def provider(self) -> Provider:
        return self._provider

    @property
    def model(self) -> str:
        return self._model

    @property
    def system_prompt(self) -> str | None:
        return self._system_prompt

    @property
    def context_window(self) -> int:
        """How many of the newest messages a request carries, the new user message included."""
        return self._context_window

    def __repr__(self) -> str:
        return (
            f"LLMAgent(session_id={self._session_id}, provider={self._provider.name!r}, "
            f"model={self._model!r}, state_version={self._version})"
        )

    # ------------------------------------------------------------------ lifecycle

    async def _open(self, session: Session) -> None:
        """Make ``session`` current: load its newest messages and its latest state."""
        window = await self.store.get_messages(session.id, limit=self._window.maxlen)
        saved = await self.store.load_state(session.id)
        self._session_id = session.id
        self._window.clear()
        self._window.extend(window)
        if saved is None:
            self.state = copy.deepcopy(self._initial_state)
            self._version = 0
        else:
            self.state = saved.state
            self._version = saved.version

    async def close(self) -> None:
        """Close the provider and store the builder created; a given plugin's store stays open."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._owns_provider:
                await self._provider.aclose()
        finally:
            if self._owned_store is not None:
                await self._owned_store.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise AgentClosedError("this agent is closed; build a new one to continue")

    # ------------------------------------------------------------------ conversation

    async def chat(self, message: str, *, metadata: Mapping[str, Any] | None = None) -> str:
        """Send ``message`` with the recent history, store the whole turn, return the reply.

        Raises ``ProviderError`` (a subclass says which failure) when the provider fails, and
        ``ConflictError`` when another process saved this session's state meanwhile; in both
        cases nothing of the turn is stored.
        """
        text = check_text("message", message)
        user_meta = dict(metadata or {})
        # Refuse what cannot be stored before paying for a provider call.
        encode_document("metadata", user_meta)
        async with self._lock:
            self._check_open()
            if not isinstance(self.state, dict):
                raise InvalidInputError(f"agent.state must be a dict, not {type(self.state)}")
            encode_document("state", self.state)
            request = self._request(text)
            user = {"role": "user", "content": text, "metadata": user_meta}
            return await self._answer(request, [user])

    async def regenerate(self) -> str:
        """Answer the last user message again: the reply after it (and the state saved with
        that reply) is rewound, a new reply is asked for and stored as the turn's answer."""
        async with self._lock:
            self._check_open()
            last_user = await self._nth_last_user_message(1)
            if last_user is None:
                raise InvalidInputError("there is no user message to answer again")
            await self.store.rewind(self._session_id, last_user.seq)
            await self._open(await self.store.get_session(self._session_id))
            request = self._request(None)
            return await self._answer(request, [])

    async def _answer(self, request: list[ChatMessage], before: list[dict[str, Any]]) -> str:
        """Ask the provider, then store ``before`` + the reply (+ tool results) and the state
        as one turn, under one idempotency key: a write whose outcome is unknown is retried
        with that key, so the turn is stored exactly once."""
        session_id = self._session_id
        completion = await self._call(session_id, request)
        items = [
            *before,
            {
                "role": "assistant",
                "content": completion.content,
                "metadata": self._reply_metadata(completion),
            },
        ]
        items.extend(_tool_item(tool) for tool in completion.tool_messages)
        key = f"turn:{uuid7()}"
        turn = await self._durably(
            lambda: self.store.record_turn(
                session_id,
                items,
                state=self.state,
                expected_version=self._version,
                idempotency_key=key,
            )
        )
        self._window.extend(turn.messages)
        if turn.state is not None:
            self._version = turn.state.version
        self.last_completion = completion
        return completion.content

    async def _durably(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run a keyed write; retry it while the database fails (its outcome unknown, or not
        stored). The key makes the retry safe: the write is stored at most once. The error
        surfaces only when the retry budget is spent."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                return await write()
            except BackendError:
                if attempt == _WRITE_ATTEMPTS:
                    raise
                logger.warning("a write failed (attempt %d); retrying with its key", attempt)
                await asyncio.sleep(min(_RETRY_BASE_S * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    async def _nth_last_user_message(self, n: int) -> Message | None:
        """The ``n``-th newest user message of the session, read backwards a page at a time."""
        before: int | None = None
        seen = 0
        while True:
            page = await self.store.get_messages(self._session_id, limit=200, before_seq=before)
            for message in reversed(page):
                if message.role == "user":
                    seen += 1
                    if seen == n:
                        return message
            if len(page) < 200:
                return None
            before = page[0].seq

    def _request(self, text: str | None) -> list[ChatMessage]:
        request: list[ChatMessage] = []
        if self._system_prompt:
            request.append({"role": "system", "content": self._system_prompt})
        request.extend(to_chat_messages(self._window))
        if text is not None:
            request.append({"role": "user", "content": text})
        return request

    async def _call(self, session_id: uuid.UUID, request: list[ChatMessage]) -> Completion:
        """One provider call, recorded in ``api_calls`` however it ends."""
        provider = self._provider
        started = time.monotonic()
        try:
            completion = await provider.complete(request, model=self._model)
        except asyncio.CancelledError:
            # Shielded: the row is written even if the caller cancels again meanwhile.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(
                    self._record(session_id, started, "cancelled", error="cancelled")
                )
            raise
        except ProviderError as error:
            await self._record_failure(session_id, started, error.status, error)
            raise
        except Exception as error:
            await self._record_failure(session_id, started, "failed", error)
            raise ProviderError(
                f"provider {provider.name!r} failed: {type(error).__name__}: {error}",
                provider=provider.name,
                model=self._model,
            ) from error
        await self._record(
            session_id,
            started,
            "success",
            model=completion.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            total_tokens=completion.total_tokens,
        )
        return completion

    async def _record_failure(
        self, session_id: uuid.UUID, started: float, status: str, error: Exception
    ) -> None:
        # The provider's error is what the caller needs; a failure to record it is only logged.
        try:
            await self._record(
                session_id, started, status, error=f"{type(error).__name__}: {error}"
            )
        except PersistenceError:
            logger.exception("could not record the failed provider call")

    async def _record(
        self,
        session_id: uuid.UUID,
        started: float,
        status: str,
        *,
        model: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        total_tokens: int | None = None,
        error: str | None = None,
    ) -> None:
        key = f"call:{uuid7()}"
        await self._durably(
            lambda: self.store.record_api_call(
                session_id=session_id,
                model=(model or self._model)[:_MAX_MODEL_CHARS],
                status=status,
                latency_ms=round((time.monotonic() - started) * 1000),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=total_tokens,
                error=error,
                provider=self._provider.name,
                idempotency_key=key,
            )
        )

    def _reply_metadata(self, completion: Completion) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "provider": self._provider.name,
            "model": completion.model or self._model,
            "finish_reason": completion.finish_reason,
        }
        if completion.tool_calls:
            meta["tool_calls"] = completion.tool_calls
        usage = {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.total_tokens,
        }
        if any(value is not None for value in usage.values()):
            meta["usage"] = usage
        if completion.attempts > 1:
            meta["attempts"] = completion.attempts
        return meta

    async def history(self, limit: int | None = 50) -> list[Message]:
        """The session's newest ``limit`` messages (all with ``None``), oldest first."""
        self._check_open()
        return await self.store.get_messages(self._session_id, limit=limit)

    async def reload(self) -> None:
        """Re-read the current session's newest messages and latest state from the database."""
        async with self._lock:
            self._check_open()
            await self._open(await self.store.get_session(self._session_id))

    async def usage(self) -> Usage:
        """Provider calls of the current session: counts, failures, tokens, latency."""
        self._check_open()
        return await self.store.usage(session_id=self._session_id)

    # ------------------------------------------------------------------ state

    async def save_state(self) -> AgentState:
        """Save ``state`` now, as a new version (``ConflictError`` if another process did)."""
        async with self._lock:
            self._check_open()
            saved = await self.store.save_state(
                self._session_id, self.state, expected_version=self._version
            )
            self._version = saved.version
            return saved

    async def restore_state(self, version: int) -> AgentState:
        """Roll ``state`` back to saved ``version``, saved again as the newest version.

        Saving the rollback keeps state history append-only and makes it survive a restart.
        ``NotFoundError`` if that version does not exist.
        """
        wanted = check_limit("version", version, optional=False)
        async with self._lock:
            self._check_open()
            old = await self.store.load_state(self._session_id, version=wanted)
            assert old is not None  # an explicit version raises NotFoundError instead
            saved = await self.store.save_state(
                self._session_id, old.state, expected_version=self._version
            )
            self.state = copy.deepcopy(saved.state)
            self._version = saved.version
            return saved

    # ------------------------------------------------------------------ sessions

    async def create_session(
        self, *, title: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> uuid.UUID:
        """Create a session for this user and agent, make it current, and return its id."""
        async with self._lock:
            self._check_open()
            session = await self._plugin.create_session(
                title=title, metadata=None if metadata is None else dict(metadata)
            )
            await self._open(session)
            return session.id

    async def switch_session(self, session_id: uuid.UUID | str) -> None:
        """Continue session ``session_id``: its history and state become the agent's.

        ``NotFoundError`` for an unknown id or one of another tenant or user.
        """
        sid = require_uuid("session_id", session_id)
        async with self._lock:
            self._check_open()
            await self._open(await self.store.get_session(sid))

    async def rewind(self, turns: int = 1) -> RewindResult:
        """Undo the last ``turns`` turns (each from its user message on) with the state saved
        by them; the agent continues from there."""
        count = check_limit("turns", turns, optional=False)
        if not count:
            raise InvalidInputError("turns must be at least 1")
        async with self._lock:
            self._check_open()
            first = await self._nth_last_user_message(count)
            if first is None:
                raise InvalidInputError(f"the session has fewer than {count} turns to rewind")
            result = await self.store.rewind(self._session_id, first.seq - 1)
            await self._open(await self.store.get_session(self._session_id))
            return result

    async def fork_session(
        self, *, at_seq: int | None = None, title: str | None = None
    ) -> uuid.UUID:
        """Branch the current session at ``at_seq`` (default: now) into a new session with
        the history and state up to there, make it current, and return its id."""
        async with self._lock:
            self._check_open()
            fork = await self.store.fork_session(self._session_id, at_seq=at_seq, title=title)
            await self._open(fork)
            return fork.id

    async def list_sessions(self, *, limit: int = 100) -> list[Session]:
        """This user's sessions with this agent, read from the database, newest activity first."""
        self._check_open()
        return await self._plugin.list_sessions(limit=limit)

    async def recall(self, query: str, *, limit: int = 5) -> list[dict[str, Any]]:
        """The best hits for ``query`` across this user's sessions with this agent, as JSON-ready
        dicts (session, seq, role, time, snippet): a long-term memory tool to give the model
        (its schema: :data:`RECALL_TOOL`). ``query`` uses the store's query language (see
        docs/search.md); one outside it is ``InvalidInputError`` naming the accepted forms,
        a message that can be handed back to the model as the tool's answer.
        """
        self._check_open()
        page = await self.store.search_messages(query, limit=limit)
        return [
            {
                "session_id": str(hit.session_id),
                "session_title": hit.session_title,
                "seq": hit.message.seq,
                "role": hit.message.role,
                "created_at": hit.message.created_at.isoformat(),
                "snippet": hit.snippet,
            }
            for hit in page.items
        ]

    async def delete_session(self, session_id: uuid.UUID | str) -> None:
        """Delete a session with its messages and states.

        Deleting the current session starts a new, empty one, so the agent stays usable.
        """
        sid = require_uuid("session_id", session_id)
        async with self._lock:
            self._check_open()
            await self.store.delete_session(sid)
            if sid == self._session_id:
                await self._open(await self._plugin.create_session())


#: :meth:`LLMAgent.recall` as an OpenAI-style function tool, for a provider that runs tools.
RECALL_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "recall",
        "description": (
            "Search this user's earlier conversations. Every word must match (whole words, any "
            'case); "quoted phrase" for words in a row, -word to exclude, prefix* for a word '
            "start. Returns the best matching messages with snippets (matches between **)."
        ),
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "e.g. allerg* peanut"}},
            "required": ["query"],
        },
    },
}


def _tool_item(tool: ChatMessage) -> dict[str, Any]:
    """A provider-produced tool result as a stored message; its call id goes in metadata."""
    meta: dict[str, Any] = {}
    if "tool_call_id" in tool:
        meta["tool_call_id"] = tool["tool_call_id"]
    if "name" in tool:
        meta["name"] = tool["name"]
    return {"role": "tool", "content": tool["content"] or "", "metadata": meta}


def to_chat_messages(messages: Iterable[Message]) -> list[ChatMessage]:
    """Stored messages as request messages, keeping tool calls only where they are answered.

    OpenAI-compatible servers refuse an assistant ``tool_calls`` message that is not followed
    by a ``tool`` message for each call, and a ``tool`` message without its call. The window
    can cut such a pair apart, and an agent need not run tools, so unmatched halves are sent
    without the tool fields (tool calls) or left out (orphan tool results).
    """
    stored = list(messages)
    answered = {
        m.metadata.get("tool_call_id")
        for m in stored
        if m.role == "tool" and isinstance(m.metadata.get("tool_call_id"), str)
    }
    offered: set[str] = set()
    result: list[ChatMessage] = []
    for m in stored:
        if m.role == "tool":
            call_id = m.metadata.get("tool_call_id")
            if isinstance(call_id, str) and call_id in offered:
                result.append({"role": "tool", "content": m.content, "tool_call_id": call_id})
            continue
        item: ChatMessage = {"role": m.role, "content": m.content}
        calls = m.metadata.get("tool_calls") if m.role == "assistant" else None
        if isinstance(calls, list) and calls:
            ids = [c.get("id") for c in calls if isinstance(c, dict)]
            if len(ids) == len(calls) and all(isinstance(i, str) and i in answered for i in ids):
                item["tool_calls"] = calls
                offered.update(i for i in ids if isinstance(i, str))
        result.append(item)
    return result
