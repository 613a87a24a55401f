"""A session of the OpenAI Agents SDK kept in a store of this library.

:class:`MofaSession` satisfies the SDK's ``agents.memory.Session`` protocol, so it goes wherever
the SDK takes a session (``Runner.run(agent, input, session=...)``)::

    session = MofaSession("user-42/chat", store)
    result = await Runner.run(agent, "Hello", session=session)

Mapping:

- The SDK's session id (an opaque string, kept exactly) names an ordinary session of this
  library through :meth:`mofa_persist.Store.session_for` under the namespace
  ``"openai-agents"``, within the store's view (tenant, user, agent). The CLI, export and copy,
  retention and erasure see it like any other session.
- Each item is one message. The item itself, exactly as given, is in the message's metadata
  (``metadata["item"]``) and is what :meth:`MofaSession.get_items` returns; the row also gets a
  role (``user``, ``assistant``, ``system``; ``developer`` becomes ``system``; tool calls and
  their outputs are ``tool``), the item's ``type`` and original ``role`` in metadata, and the
  item's text as content (cut to :data:`CONTENT_PREVIEW_CHARS`), so the history reads well in
  the CLI.
- One ``add_items`` call is one transaction: its items are stored together, contiguous and in
  order, or not at all. An item this library cannot store (NUL characters, lone surrogates,
  NaN or Infinity, nesting deeper than 29 levels, over 12 MiB as JSON) raises
  :class:`mofa_persist.InvalidInputError` and nothing of that call is written.
- ``clear_session`` deletes every item (a rewind to the start, one transaction); the session
  and its id mapping stay, empty.

Importing this module needs the SDK (``pip install 'mofa-persist[openai-agents]'``); the rest of
the package never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

try:
    from agents.memory.session_settings import SessionSettings, resolve_session_limit
except ImportError as error:  # pragma: no cover - exercised in a subprocess without the SDK
    raise ImportError(
        "mofa_persist.integrations.openai_agents needs the OpenAI Agents SDK: "
        "pip install 'mofa-persist[openai-agents]'",
        name=error.name,
    ) from error

from ..errors import InvalidInputError, NotFoundError
from ..validate import check_text, encode_document

if TYPE_CHECKING:
    import uuid
    from collections.abc import Awaitable, Callable

    from agents.items import TResponseInputItem

    from ..records import Message
    from ..store import Store

__all__ = ["CONTENT_PREVIEW_CHARS", "NAMESPACE", "MofaSession"]

#: The namespace of :meth:`mofa_persist.Store.session_for` that SDK session ids live in.
NAMESPACE = "openai-agents"

#: A message's content shows at most this many characters of the item's text (the item itself
#: is kept whole in the metadata), so a large item is not stored twice.
CONTENT_PREVIEW_CHARS = 100_000

T = TypeVar("T")

_MESSAGE_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
_DEVELOPER = "developer"


class MofaSession:
    """The SDK's ``Session`` protocol over a :class:`mofa_persist.Store`.

    ``session_settings.limit`` is the number of newest items :meth:`get_items` returns when it
    is given no ``limit`` (``None``: all of them).
    """

    session_id: str
    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        store: Store,
        *,
        session_settings: SessionSettings | None = None,
    ) -> None:
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInputError("session_id must be a non-empty str")
        self.session_id = session_id
        self.session_settings = (
            session_settings if session_settings is not None else SessionSettings()
        )
        self._store = store
        self._sid: uuid.UUID | None = None

    def __repr__(self) -> str:
        return f"MofaSession({self.session_id!r}, {self._store!r})"

    @property
    def store(self) -> Store:
        """The store the items are kept in."""
        return self._store

    async def library_session_id(self, *, create: bool = False) -> uuid.UUID | None:
        """The id of this library's session holding the items (``None`` if there is none yet,
        unless ``create``)."""
        if self._sid is None:
            found = await self._store.session_for(NAMESPACE, self.session_id, create=create)
            if found is not None:
                self._sid = found.id
        return self._sid

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The items in the order added: all of them (``limit`` None and no settings limit),
        none (``limit <= 0``) or the newest ``limit``, read from the end of the history."""
        count = resolve_session_limit(limit, self.session_settings)
        if count is not None and count <= 0:
            return []
        none: list[Message] = []
        messages = await self._with_session(
            lambda sid: self._store.get_messages(sid, limit=count), create=False, empty=none
        )
        return [_to_item(message) for message in messages]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append ``items`` in one transaction (all or none, contiguous and in order)."""
        rows = [_to_message(index, item) for index, item in enumerate(items)]
        if not rows:
            return
        if await self.library_session_id() is None:
            # Refuse what cannot be stored before the session is made for it.
            _check_rows(rows)
        none: list[Message] = []
        await self._with_session(
            lambda sid: self._store.append_messages(sid, rows), create=True, empty=none
        )

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item; ``None`` when there is none."""
        message = await self._with_session(
            lambda sid: self._store.pop_message(sid), create=False, empty=None
        )
        return None if message is None else _to_item(message)

    async def clear_session(self) -> None:
        """Delete every item, in one transaction; the session and its id mapping stay."""
        await self._with_session(lambda sid: self._store.rewind(sid, 0), create=False, empty=None)

    async def _with_session(
        self, work: Callable[[uuid.UUID], Awaitable[T]], *, create: bool, empty: T
    ) -> T:
        """Run ``work(sid)`` on the mapped session. Without ``create`` and no session yet,
        ``empty``. A session deleted meanwhile (erasure, retention) is looked up once more."""
        for attempt in (1, 2):
            sid = await self.library_session_id(create=create)
            if sid is None:
                return empty
            try:
                return await work(sid)
            except NotFoundError:
                self._sid = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


def _to_message(index: int, item: object) -> dict[str, Any]:
    """One item as a message of this library: role, readable content, the item in metadata."""
    if not isinstance(item, Mapping):
        raise InvalidInputError(f"items[{index}] must be a mapping, not {type(item).__name__}")
    exact = item if isinstance(item, dict) else dict(item)
    kind = exact.get("type")
    role = exact.get("role")
    metadata: dict[str, Any] = {"item": exact}
    if isinstance(kind, str):
        metadata["type"] = kind
    if isinstance(role, str):
        metadata["role"] = role
    return {"role": _role_of(kind, role), "content": _content_of(exact), "metadata": metadata}


def _check_rows(rows: list[dict[str, Any]]) -> None:
    """What ``append_messages`` would refuse, refused without I/O."""
    for index, row in enumerate(rows):
        check_text(f"items[{index}] text", row["content"])
        encode_document(f"items[{index}]", row["metadata"])


def _role_of(kind: object, role: object) -> str:
    if (kind is None or kind == "message") and isinstance(role, str):
        if role == _DEVELOPER:
            return "system"
        if role in _MESSAGE_ROLES:
            return _MESSAGE_ROLES[role]
    if kind in ("reasoning", "compaction", "message"):
        return "assistant"
    if isinstance(kind, str) and kind != "item_reference":
        # function_call, function_call_output, computer_call, web_search_call, mcp_call, ...
        return "tool"
    return "assistant"


def _content_of(item: dict[str, Any]) -> str:
    kind = item.get("type")
    if kind == "function_call":
        text = f"{item.get('name', '')}({_text_of(item.get('arguments'))})"
    elif kind == "reasoning":
        text = _text_of(item.get("summary")) or _text_of(item.get("content"))
    elif "content" in item:
        text = _text_of(item.get("content"))
    elif "output" in item:
        text = _text_of(item.get("output"))
    else:
        text = ""
    if not text and isinstance(kind, str):
        text = f"[{kind}]"
    if len(text) > CONTENT_PREVIEW_CHARS:
        text = text[: CONTENT_PREVIEW_CHARS - 1] + "\N{HORIZONTAL ELLIPSIS}"
    return text


def _text_of(value: object) -> str:
    """The text of a content value: a string, or the texts of a list of content parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping):
                for key in ("text", "refusal"):
                    text = part.get(key)
                    if isinstance(text, str):
                        parts.append(text)
                        break
        return "\n".join(parts)
    return ""


def _to_item(message: Message) -> TResponseInputItem:
    """The item a message stands for: the stored item, or for a message written through this
    library's own API, an input message of its role and content."""
    stored = message.metadata.get("item")
    if isinstance(stored, dict):
        return cast("TResponseInputItem", stored)
    role = message.role if message.role in _MESSAGE_ROLES else "assistant"
    return cast("TResponseInputItem", {"role": role, "content": message.content})
