"""The schema: typed declarative models of ``sessions``, ``messages``, ``agent_state`` and the
tables around them (provider calls, the erasure audit, the database's own key).

The models are the one source of the schema. Alembic migrations are written against them (a
test checks there is no drift); the store uses their ``__table__`` with Core, except on the
hot paths, which run the driver-level SQL of :mod:`mofa_persist.sql` on the same tables.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from .types import JSONDocument, LongText, UTCDateTime

if TYPE_CHECKING:
    from collections.abc import Callable

# One naming convention so every constraint and index has a stable name that Alembic can
# compare and drop the same way on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# MySQL/MariaDB: InnoDB for foreign keys and transactions, utf8mb4 so emoji are stored exactly.
MYSQL_TABLE_ARGS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: UTCDateTime(),
        dict[str, Any]: JSONDocument,
        str: String(255),
    }


class SessionRow(Base):
    """A conversation; also the per-session counters that keep ``seq`` and versions gap-free."""

    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[uuid.UUID | None]
    tenant_id: Mapped[uuid.UUID | None]
    agent_id: Mapped[uuid.UUID | None]
    title: Mapped[str | None] = mapped_column(String(500))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata")
    # Bookkeeping: the writer that bumps these holds the session row's lock until commit,
    # which is what serializes appends to one session across processes.
    last_seq: Mapped[int] = mapped_column(Integer, server_default="0")
    state_version: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    #: A fork remembers where it came from. Not a foreign key: the parent may be deleted
    #: (or not exported with the fork) and the fork still says whose branch it is; erasure
    #: of the parent's owner clears it.
    parent_session_id: Mapped[uuid.UUID | None]
    forked_at_seq: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        # Newest-first listings: each filter combination walks one index in order, so the
        # cost of a page does not depend on how many sessions are stored.
        Index(None, "tenant_id", "user_id", "agent_id", "updated_at", "id"),
        Index(None, "user_id", "updated_at", "id"),
        Index(None, "tenant_id", "updated_at", "id"),
        Index(None, "updated_at", "id"),
        Index(None, "parent_session_id", "updated_at", "id"),
        MYSQL_TABLE_ARGS,
    )


class MessageRow(Base):
    """One message; ``(session_id, seq)`` is unique and serves 'newest N' as an index scan."""

    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(LongText)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata")
    created_at: Mapped[datetime]

    __table_args__ = (UniqueConstraint("session_id", "seq"), MYSQL_TABLE_ARGS)


class AgentStateRow(Base):
    """One snapshot of an agent's state; ``(session_id, version)`` is unique."""

    __tablename__ = "agent_state"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    #: The session's ``last_seq`` when this snapshot was saved: a rewind to seq N removes
    #: the snapshots with ``at_seq > N``, so history and state agree again.
    at_seq: Mapped[int] = mapped_column(Integer, server_default="0")

    __table_args__ = (UniqueConstraint("session_id", "version"), MYSQL_TABLE_ARGS)


class ApiCallRow(Base):
    """One LLM provider call. Kept when its session is deleted (usage history outlives it),
    so tenant, user and agent are copied onto the row."""

    __tablename__ = "api_calls"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sessions.id", ondelete="SET NULL")
    )
    tenant_id: Mapped[uuid.UUID | None]
    user_id: Mapped[uuid.UUID | None]
    agent_id: Mapped[uuid.UUID | None]
    provider: Mapped[str | None] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]

    __table_args__ = (
        Index(None, "session_id", "created_at"),
        Index(None, "tenant_id", "created_at"),
        Index(None, "created_at"),
        MYSQL_TABLE_ARGS,
    )


class IdempotencyKeyRow(Base):
    """A client-supplied key of one write, and what that write returned.

    Unique per session (``scope`` = ``s:<session>``; per tenant, ``t:<tenant>``, for provider
    calls of no session). A retry with the key reads the stored rows back instead of writing
    again. ``first_seq``..``last_seq`` and ``state_version`` say what the key protects, so a
    rewind that removes those rows removes the key with them.
    """

    __tablename__ = "idempotency_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(200))
    session_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE")
    )
    tenant_id: Mapped[uuid.UUID | None]
    user_id: Mapped[uuid.UUID | None]
    operation: Mapped[str] = mapped_column(String(30))
    payload_hash: Mapped[str] = mapped_column(String(64))
    result: Mapped[dict[str, Any]]
    first_seq: Mapped[int | None] = mapped_column(Integer)
    last_seq: Mapped[int | None] = mapped_column(Integer)
    state_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("scope", "key"),
        Index(None, "session_id", "last_seq"),
        Index(None, "created_at"),
        MYSQL_TABLE_ARGS,
    )


class ExternalKeyRow(Base):
    """An agent framework's own id for a session (an OpenAI Agents session id, an ADK
    ``app/user/session`` triple, a LangGraph thread id), mapped to an ordinary session.

    ``key_hash`` is SHA-256 of the namespace, the view (tenant, user, agent) and the id, so one
    id names different sessions in different views and ids of any length and alphabet are
    unique under a fixed-size index; ``external_id`` keeps the id exactly.
    """

    __tablename__ = "external_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    namespace: Mapped[str] = mapped_column(String(100))
    external_id: Mapped[str] = mapped_column(LongText)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), unique=True
    )
    created_at: Mapped[datetime]

    __table_args__ = (Index(None, "namespace", "created_at"), MYSQL_TABLE_ARGS)


class DatabaseKeyRow(Base):
    """A random secret made once per database: it signs page cursors and keys the hashed ids
    of the erasure audit, so both hold across processes and restarts. Never exported."""

    __tablename__ = "mofa_keys"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]

    __table_args__ = (MYSQL_TABLE_ARGS,)


class ErasureRow(Base):
    """The audit record of one erasure: when, of what kind, a keyed hash of the erased id and
    the rows removed per table. It holds no personal data and outlives what it erased."""

    __tablename__ = "erasures"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    scope_kind: Mapped[str] = mapped_column(String(10))
    subject_hash: Mapped[str] = mapped_column(String(64))
    #: Keyed hash of the tenant the erasure was limited to (or erased), for tenant views.
    tenant_hash: Mapped[str | None] = mapped_column(String(64))
    counts: Mapped[dict[str, Any]]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        Index(None, "subject_hash"),
        Index(None, "tenant_hash", "started_at"),
        Index(None, "started_at"),
        MYSQL_TABLE_ARGS,
    )


sessions_table = cast("Table", SessionRow.__table__)
messages_table = cast("Table", MessageRow.__table__)
agent_state_table = cast("Table", AgentStateRow.__table__)
api_calls_table = cast("Table", ApiCallRow.__table__)
database_keys_table = cast("Table", DatabaseKeyRow.__table__)
erasures_table = cast("Table", ErasureRow.__table__)
idempotency_keys_table = cast("Table", IdempotencyKeyRow.__table__)
external_keys_table = cast("Table", ExternalKeyRow.__table__)


# ---------------------------------------------------------------------- LangGraph checkpoints
# The tables of mofa_persist.integrations.langgraph.MofaSaver. A LangGraph thread is an
# ordinary session (see ExternalKeyRow), so every row names its session and goes with it
# (delete_session, retention, erasure). Keys are bounded so the unique indexes fit MySQL's
# 3072-byte limit under utf8mb4; payloads are the serializer's bytes, kept as real binary.


class _MySQLLongBlob(TypeDecorator[bytes]):
    """LONGBLOB, with values sent as ``UNHEX('...')``: aiomysql cannot escape ``bytes``
    parameters under PyMySQL 1.1+ (it calls PyMySQL's removed ``escape_bytes_prefixed``)."""

    impl = mysql.LONGBLOB
    cache_ok = True

    def bind_expression(self, bindvalue: BindParameter[bytes]) -> ColumnElement[bytes]:
        return func.unhex(bindvalue, type_=mysql.LONGBLOB())

    def bind_processor(self, dialect: Dialect) -> Callable[[bytes | None], str | None]:
        # Hex text for UNHEX; LONGBLOB's own processor would turn it back into bytes.
        def process(value: bytes | None) -> str | None:
            return None if value is None else bytes(value).hex()

        return process


#: Binary payloads: BLOB/BYTEA, but LONGBLOB on MySQL/MariaDB (a plain BLOB stops at 64 KB).
LongBinary = LargeBinary().with_variant(_MySQLLongBlob(), "mysql", "mariadb")


class LangGraphCheckpointRow(Base):
    """One LangGraph checkpoint (without its channel values, which are blobs of their own)."""

    __tablename__ = "langgraph_checkpoints"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    checkpoint_ns: Mapped[str] = mapped_column(String(300))
    checkpoint_id: Mapped[str] = mapped_column(String(100))
    parent_checkpoint_id: Mapped[str | None] = mapped_column(String(100))
    #: ``metadata["run_id"]``, for ``delete_for_runs``.
    run_id: Mapped[str | None] = mapped_column(String(255))
    checkpoint_type: Mapped[str] = mapped_column(String(50))
    checkpoint: Mapped[bytes] = mapped_column(LongBinary)
    metadata_type: Mapped[str] = mapped_column(String(50))
    meta: Mapped[bytes] = mapped_column("metadata", LongBinary)
    created_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("session_id", "checkpoint_ns", "checkpoint_id"),
        Index(None, "run_id"),
        MYSQL_TABLE_ARGS,
    )


class LangGraphBlobRow(Base):
    """The value of one channel at one version, stored once however many checkpoints use it."""

    __tablename__ = "langgraph_blobs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    checkpoint_ns: Mapped[str] = mapped_column(String(300))
    channel: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    value_type: Mapped[str] = mapped_column(String(50))
    #: ``None`` for a channel that is empty at this version.
    value: Mapped[bytes | None] = mapped_column(LongBinary)
    created_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("session_id", "checkpoint_ns", "channel", "version"),
        MYSQL_TABLE_ARGS,
    )


class LangGraphWriteRow(Base):
    """A pending write of one task against one checkpoint."""

    __tablename__ = "langgraph_writes"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    checkpoint_ns: Mapped[str] = mapped_column(String(300))
    checkpoint_id: Mapped[str] = mapped_column(String(100))
    task_id: Mapped[str] = mapped_column(String(150))
    idx: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(255))
    value_type: Mapped[str] = mapped_column(String(50))
    value: Mapped[bytes | None] = mapped_column(LongBinary)
    task_path: Mapped[str] = mapped_column(LongText)
    created_at: Mapped[datetime]

    __table_args__ = (
        # Named by hand: the conventional name would pass PostgreSQL's 63 characters.
        UniqueConstraint(
            "session_id",
            "checkpoint_ns",
            "checkpoint_id",
            "task_id",
            "idx",
            name="uq_langgraph_writes_key",
        ),
        MYSQL_TABLE_ARGS,
    )


langgraph_checkpoints_table = cast("Table", LangGraphCheckpointRow.__table__)
langgraph_blobs_table = cast("Table", LangGraphBlobRow.__table__)
langgraph_writes_table = cast("Table", LangGraphWriteRow.__table__)


# ---------------------------------------------------------------------- Google ADK sessions
# The tables of mofa_persist.integrations.adk.MofaSessionService. An ADK session is an ordinary
# session (its events are messages); adk_sessions adds ADK's own names, the session-scoped
# state and ADK's last_update_time, indexed for ADK's listing order. App and user state are
# shared by sessions, so they are rows of their own, owned by the view (and, for user state,
# by the ADK user's library user id) so that erasure and views cover them.


#: ADK's names, compared and ordered by code point on every backend (MySQL's default collation
#: ignores case, PostgreSQL's follows the server's locale); 128 characters as in ADK's tables.
AdkName = (
    String(128)
    .with_variant(postgresql.VARCHAR(128, collation="C"), "postgresql")
    .with_variant(mysql.VARCHAR(128, collation="utf8mb4_bin"), "mysql", "mariadb")
)


class AdkSessionRow(Base):
    """ADK's side of one session: its names, its session-scoped state, its update time."""

    __tablename__ = "adk_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), unique=True
    )
    #: The session's tenant, copied so that listings of one tenant walk one index.
    tenant_id: Mapped[uuid.UUID | None]
    app_name: Mapped[str] = mapped_column(AdkName)
    adk_user_id: Mapped[str] = mapped_column(AdkName)
    adk_session_id: Mapped[str] = mapped_column(AdkName)
    state: Mapped[dict[str, Any]]
    #: ADK's ``last_update_time`` (the newest event's timestamp), exactly as a float.
    update_time: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime]

    __table_args__ = (
        # ADK's listing order, one user's sessions and all users' (named by hand: the
        # conventional names would pass PostgreSQL's 63 characters).
        Index(
            "ix_adk_sessions_user_order",
            "tenant_id",
            "app_name",
            "adk_user_id",
            "update_time",
            "adk_session_id",
        ),
        Index(
            "ix_adk_sessions_app_order",
            "tenant_id",
            "app_name",
            "update_time",
            "adk_user_id",
            "adk_session_id",
        ),
        MYSQL_TABLE_ARGS,
    )


class AdkStateRow(Base):
    """App state (``kind='app'``) or user state (``kind='user'``) of ADK, in one view.

    ``key_hash`` is SHA-256 of the kind, the owner columns and ADK's names, so each view has
    its own. A user-state row's ``user_id`` is the library user id of the ADK user.
    """

    __tablename__ = "adk_states"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(10))
    tenant_id: Mapped[uuid.UUID | None]
    user_id: Mapped[uuid.UUID | None]
    agent_id: Mapped[uuid.UUID | None]
    app_name: Mapped[str] = mapped_column(AdkName)
    adk_user_id: Mapped[str | None] = mapped_column(AdkName)
    state: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]

    __table_args__ = (
        Index(None, "tenant_id", "app_name", "kind"),
        Index(None, "user_id"),
        MYSQL_TABLE_ARGS,
    )


adk_sessions_table = cast("Table", AdkSessionRow.__table__)
adk_states_table = cast("Table", AdkStateRow.__table__)
