"""mofa-persist: durable memory for LLM agents.

Sessions that survive restarts, conversation history that becomes the agent's context, and agent
state recovered after a crash, on PostgreSQL, MySQL/MariaDB, SQLite or in memory.

    store = await mofa_persist.connect("sqlite://mofa.db")
    session = await store.create_session(title="hello")
    await store.append_message(session.id, "user", "Hi!")
"""

from .agent import (
    EchoProvider,
    LLMAgent,
    LLMAgentBuilder,
    OpenAIProvider,
    PersistencePlugin,
    Provider,
    ProviderError,
    ProviderRateLimitError,
    ProviderTimeoutError,
)
from .errors import (
    BackendError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PersistenceError,
)
from .lifecycle import Erasure, RetentionPolicy, RetentionReport
from .records import AgentState, ApiCall, Message, Page, Session, Turn, Usage
from .searching import MessageHit
from .store import (
    UNSET,
    MemoryStore,
    MySqlStore,
    PostgresStore,
    ReplicaStatus,
    Scope,
    SqliteStore,
    Store,
    connect,
)

__version__ = "0.1.0"

__all__ = [
    "UNSET",
    "AgentState",
    "ApiCall",
    "BackendError",
    "ConflictError",
    "EchoProvider",
    "Erasure",
    "InvalidInputError",
    "LLMAgent",
    "LLMAgentBuilder",
    "MemoryStore",
    "Message",
    "MessageHit",
    "MySqlStore",
    "NotFoundError",
    "OpenAIProvider",
    "Page",
    "PersistenceError",
    "PersistencePlugin",
    "PostgresStore",
    "Provider",
    "ProviderError",
    "ProviderRateLimitError",
    "ProviderTimeoutError",
    "ReplicaStatus",
    "RetentionPolicy",
    "RetentionReport",
    "Scope",
    "Session",
    "SqliteStore",
    "Store",
    "Turn",
    "Usage",
    "__version__",
    "connect",
]
