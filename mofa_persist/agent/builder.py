"""``LLMAgentBuilder``: MoFA's fluent way to assemble a persistent agent.

Each ``with_*`` checks its argument at once, so a bad id or window size fails where it was
written, not later inside ``build_async``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

from mofa_persist.errors import InvalidInputError
from mofa_persist.ids import uuid7
from mofa_persist.store import Store
from mofa_persist.validate import check_text, coerce_uuid, encode_document

from .agent import LLMAgent
from .plugin import PersistencePlugin
from .providers import Provider
from .settings import PROVIDERS, AgentSettings, stores_nothing

if TYPE_CHECKING:
    import uuid

logger = logging.getLogger("mofa_persist.agent")

DEFAULT_CONTEXT_WINDOW = 50
MAX_CONTEXT_WINDOW = 10_000


class LLMAgentBuilder:
    """Collects the agent's parts; ``await builder.build_async()`` returns an :class:`LLMAgent`.

    Without :meth:`with_persistence_plugin` the builder connects to ``DATABASE_URL`` itself
    (in memory when unset, with a warning) under the ``USER_ID``/``TENANT_ID``/``AGENT_ID`` of
    :meth:`from_env`, and the agent closes that store when it is closed. A ``DATABASE_URL``
    that stores nothing (``memory://``, or ``sqlite://`` with an empty path, which means
    memory) gets the same warning; only :meth:`with_database_url` asks for memory silently.
    """

    def __init__(self, settings: AgentSettings | None = None) -> None:
        self._settings = settings or AgentSettings()
        self._plugin: PersistencePlugin | None = None
        self._session_id: uuid.UUID | None = None
        self._system_prompt: str | None = self._settings.system_prompt
        self._provider: Provider | str | None = None
        self._model: str | None = self._settings.model
        self._context_window = self._settings.context_window or DEFAULT_CONTEXT_WINDOW
        self._initial_state: dict[str, Any] = {}
        self._database_url: str | None = self._settings.database_url
        #: Set by with_database_url: a URL written in code, not found in the environment.
        self._url_chosen = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """A builder configured from environment variables (see :class:`AgentSettings`)."""
        return cls(AgentSettings.from_env(environ))

    @property
    def settings(self) -> AgentSettings:
        return self._settings

    def with_persistence_plugin(self, plugin: PersistencePlugin) -> Self:
        """Use ``plugin``'s store and ids (its store stays the caller's to close)."""
        if not isinstance(plugin, PersistencePlugin):
            raise InvalidInputError(
                f"plugin must be a PersistencePlugin, not {type(plugin).__name__}"
            )
        self._plugin = plugin
        return self

    def with_session_id(self, session_id: uuid.UUID | str) -> Self:
        """Continue this session (created on build if it does not exist yet)."""
        self._session_id = coerce_uuid("session_id", session_id)
        return self

    def with_system_prompt(self, prompt: str) -> Self:
        """Sent first in every request; it is configuration, so it is not stored as a message."""
        self._system_prompt = check_text("system_prompt", prompt) or None
        return self

    def with_provider(self, provider: Provider | str) -> Self:
        """A :class:`Provider` instance, or ``"openai"`` / ``"echo"`` for a built-in one."""
        if isinstance(provider, str):
            if provider.lower() not in PROVIDERS:
                raise InvalidInputError(
                    f"provider must be one of {', '.join(PROVIDERS)}; got {provider!r}"
                )
            self._provider = provider.lower()
        elif isinstance(provider, Provider):
            self._provider = provider
        else:
            raise InvalidInputError(
                f"provider must implement the Provider protocol, not {type(provider).__name__}"
            )
        return self

    def with_model(self, model: str) -> Self:
        text = check_text("model", model, max_bytes=800).strip()
        if not text or len(text) > 200:
            raise InvalidInputError("model must be 1 to 200 characters")
        self._model = text
        return self

    def with_context_window(self, messages: int) -> Self:
        """How many of the newest messages a request carries, the new user message included."""
        if isinstance(messages, bool) or not isinstance(messages, int):
            raise InvalidInputError("context window must be an int")
        if not 1 <= messages <= MAX_CONTEXT_WINDOW:
            raise InvalidInputError(f"context window must be 1 to {MAX_CONTEXT_WINDOW} messages")
        self._context_window = messages
        return self

    def with_initial_state(self, state: Mapping[str, Any]) -> Self:
        """The state of a session that has none saved yet (a copy is taken)."""
        if not isinstance(state, Mapping):
            raise InvalidInputError(f"initial state must be a dict, not {type(state).__name__}")
        encode_document("initial state", dict(state))
        self._initial_state = copy.deepcopy(dict(state))
        return self

    def with_database_url(self, url: str) -> Self:
        """Where to connect when no plugin is given (instead of ``DATABASE_URL``)."""
        self._database_url = check_text("database url", url)
        self._url_chosen = True
        return self

    async def build_async(self) -> LLMAgent:
        """Connect, open (or create) the session, and load its newest messages and state."""
        provider, owns_provider = self._make_provider()
        owned_store: Store | None = None
        try:
            plugin = self._plugin
            if plugin is None:
                self._warn_if_volatile()
                owned_store = await Store.connect(self._database_url or "memory://")
                settings = self._settings
                plugin = PersistencePlugin(
                    "persistence",
                    owned_store,
                    settings.user_id,
                    settings.tenant_id,
                    settings.agent_id,
                    self._session_id,
                )
            # Most specific first: with_session_id, the plugin's, SESSION_ID, else a new one.
            session_id = (
                self._session_id or plugin.session_id or self._settings.session_id or uuid7()
            )
            agent = LLMAgent(
                plugin=plugin,
                provider=provider,
                model=self._model or provider.default_model,
                system_prompt=self._system_prompt,
                context_window=self._context_window,
                initial_state=self._initial_state,
                owns_provider=owns_provider,
                owned_store=owned_store,
            )
            await agent._open(await plugin.open_session(session_id))
        except BaseException:
            if owns_provider:
                await provider.aclose()
            if owned_store is not None:
                await owned_store.close()
            raise
        return agent

    def _warn_if_volatile(self) -> None:
        """Say so when the memory the builder connects to would be lost on exit, unless
        :meth:`with_database_url` asked for that in code."""
        url = self._database_url
        if url is None:
            logger.warning(
                "DATABASE_URL is not set: the agent's memory is in-process only and "
                "is lost on exit; set DATABASE_URL (e.g. sqlite://mofa.db) to keep it"
            )
        elif not self._url_chosen and stores_nothing(url):
            logger.warning(
                "DATABASE_URL=%s is an in-memory database: the agent's memory is in-process "
                "only and is lost on exit; set DATABASE_URL to a file or server URL (e.g. "
                "sqlite://mofa.db; an empty SQLite path means memory) to keep it",
                url,
            )

    def _make_provider(self) -> tuple[Provider, bool]:
        if self._provider is None or isinstance(self._provider, str):
            return self._settings.make_provider(self._provider), True
        return self._provider, False
