"""Configuration from environment variables, under the names MoFA's examples use.

Empty variables count as unset. Ids that are not set get fixed defaults (the same on every
run), so two runs with the same ``SESSION_ID`` continue one conversation; without
``SESSION_ID`` every build starts a new session. A ``DATABASE_URL`` that stores nothing is
kept as given (``connect`` accepts it); the builder warns about it, as about an unset one.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mofa_persist.errors import InvalidInputError
from mofa_persist.urls import parse_url
from mofa_persist.validate import coerce_uuid

from .providers import EchoProvider, OpenAIProvider

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .providers import Provider

_NAMESPACE = uuid.UUID("6f1c3d0e-7a52-4d8e-9b1f-3c0a5e2d7f44")
#: Used when ``TENANT_ID`` / ``USER_ID`` / ``AGENT_ID`` are unset: stable, so data is found again.
DEFAULT_TENANT_ID = uuid.uuid5(_NAMESPACE, "default-tenant")
DEFAULT_USER_ID = uuid.uuid5(_NAMESPACE, "default-user")
DEFAULT_AGENT_ID = uuid.uuid5(_NAMESPACE, "default-agent")

PROVIDERS = ("openai", "echo")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """What :meth:`LLMAgentBuilder.from_env` read; ``None`` means "not set"."""

    database_url: str | None = None
    user_id: uuid.UUID = DEFAULT_USER_ID
    tenant_id: uuid.UUID = DEFAULT_TENANT_ID
    agent_id: uuid.UUID = DEFAULT_AGENT_ID
    session_id: uuid.UUID | None = None
    #: ``MOFA_LLM_PROVIDER``: ``openai`` or ``echo``.
    provider: str | None = None
    #: ``OPENAI_MODEL``, else ``MOFA_MODEL``.
    model: str | None = None
    api_key: str | None = None
    base_url: str | None = None
    #: ``OPENAI_TIMEOUT`` seconds per request, ``OPENAI_MAX_RETRIES`` on 429/5xx.
    timeout: float = 60.0
    max_retries: int = 2
    #: ``MOFA_SYSTEM_PROMPT`` and ``MOFA_CONTEXT_WINDOW``.
    system_prompt: str | None = None
    context_window: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AgentSettings:
        """Read the variables; malformed values are ``InvalidInputError`` naming the variable."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def ident(name: str, default: uuid.UUID) -> uuid.UUID:
            return coerce_uuid(name, get(name), optional=True) or default

        provider = get("MOFA_LLM_PROVIDER")
        if provider is not None:
            provider = provider.lower()
            if provider not in PROVIDERS:
                raise InvalidInputError(
                    f"MOFA_LLM_PROVIDER must be one of {', '.join(PROVIDERS)}; got {provider!r}"
                )
        retries = _int("OPENAI_MAX_RETRIES", get("OPENAI_MAX_RETRIES"), minimum=0)
        return cls(
            database_url=get("DATABASE_URL"),
            user_id=ident("USER_ID", DEFAULT_USER_ID),
            tenant_id=ident("TENANT_ID", DEFAULT_TENANT_ID),
            agent_id=ident("AGENT_ID", DEFAULT_AGENT_ID),
            session_id=coerce_uuid("SESSION_ID", get("SESSION_ID"), optional=True),
            provider=provider,
            model=get("OPENAI_MODEL") or get("MOFA_MODEL"),
            api_key=get("OPENAI_API_KEY"),
            base_url=get("OPENAI_BASE_URL"),
            timeout=_float("OPENAI_TIMEOUT", get("OPENAI_TIMEOUT"), 60.0),
            max_retries=2 if retries is None else retries,
            system_prompt=env.get("MOFA_SYSTEM_PROMPT") or None,
            context_window=_int("MOFA_CONTEXT_WINDOW", get("MOFA_CONTEXT_WINDOW"), minimum=1),
        )

    def make_provider(self, name: str | None = None) -> Provider:
        """The built-in provider ``name`` (default: the configured one) with these settings.

        Without ``MOFA_LLM_PROVIDER`` the HTTP provider is chosen when ``OPENAI_API_KEY`` or
        ``OPENAI_BASE_URL`` is set; with neither there is no safe guess, so it is an error.
        """
        chosen = name or self.provider
        if chosen is None:
            if self.api_key is None and self.base_url is None:
                raise InvalidInputError(
                    "no LLM provider configured: set OPENAI_API_KEY (and optionally "
                    "OPENAI_BASE_URL, OPENAI_MODEL), or MOFA_LLM_PROVIDER=echo to run offline"
                )
            chosen = "openai"
        if chosen == "echo":
            return EchoProvider()
        if chosen == "openai":
            return OpenAIProvider(
                api_key=self.api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
        raise InvalidInputError(f"provider must be one of {', '.join(PROVIDERS)}; got {chosen!r}")


def stores_nothing(url: str) -> bool:
    """Whether ``url`` is an in-memory database: ``memory://``, ``sqlite://:memory:`` or a
    SQLite URL with an empty path (what ``sqlite://$DB`` gives when ``DB`` is unset)."""
    try:
        return parse_url(url).kind == "memory"
    except InvalidInputError:
        return False  # connect() refuses it with the reason


def _float(name: str, raw: str | None, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInputError(f"{name} must be a number of seconds; got {raw[:40]!r}") from None
    if not value > 0 or value == float("inf"):
        raise InvalidInputError(f"{name} must be a positive number; got {raw[:40]!r}")
    return value


def _int(name: str, raw: str | None, *, minimum: int) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"{name} must be a whole number; got {raw[:40]!r}") from None
    if value < minimum:
        raise InvalidInputError(f"{name} must be at least {minimum}; got {value}")
    return value
