"""adk_sessions, adk_states: Google ADK's session names, session state and app/user state

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

from mofa_persist.types import JSONDocument, UTCDateTime

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in mofa_persist.models (a migration keeps the types it was written with).
AdkName = (
    sa.String(128)
    .with_variant(postgresql.VARCHAR(128, collation="C"), "postgresql")
    .with_variant(mysql.VARCHAR(128, collation="utf8mb4_bin"), "mysql", "mariadb")
)
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def upgrade() -> None:
    op.create_table(
        "adk_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("app_name", AdkName, nullable=False),
        sa.Column("adk_user_id", AdkName, nullable=False),
        sa.Column("adk_session_id", AdkName, nullable=False),
        sa.Column("state", JSONDocument, nullable=False),
        sa.Column("update_time", sa.Double(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_adk_sessions_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adk_sessions")),
        sa.UniqueConstraint("session_id", name=op.f("uq_adk_sessions_session_id")),
        **MYSQL,
    )
    op.create_index(
        "ix_adk_sessions_user_order",
        "adk_sessions",
        ["tenant_id", "app_name", "adk_user_id", "update_time", "adk_session_id"],
    )
    op.create_index(
        "ix_adk_sessions_app_order",
        "adk_sessions",
        ["tenant_id", "app_name", "update_time", "adk_user_id", "adk_session_id"],
    )
    op.create_table(
        "adk_states",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("agent_id", sa.Uuid(), nullable=True),
        sa.Column("app_name", AdkName, nullable=False),
        sa.Column("adk_user_id", AdkName, nullable=True),
        sa.Column("state", JSONDocument, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adk_states")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_adk_states_key_hash")),
        **MYSQL,
    )
    op.create_index(
        op.f("ix_adk_states_tenant_id_app_name_kind"),
        "adk_states",
        ["tenant_id", "app_name", "kind"],
    )
    op.create_index(op.f("ix_adk_states_user_id"), "adk_states", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_adk_states_user_id"), table_name="adk_states")
    op.drop_index(op.f("ix_adk_states_tenant_id_app_name_kind"), table_name="adk_states")
    op.drop_table("adk_states")
    op.drop_index("ix_adk_sessions_app_order", table_name="adk_sessions")
    op.drop_index("ix_adk_sessions_user_order", table_name="adk_sessions")
    op.drop_table("adk_sessions")
