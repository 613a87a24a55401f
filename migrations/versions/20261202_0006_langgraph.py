"""langgraph_checkpoints, langgraph_blobs, langgraph_writes: LangGraph's checkpointer

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from mofa_persist.types import LongText, UTCDateTime

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in mofa_persist.models (a migration keeps the types it was written with).
LongBinary = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _session_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["session_id"],
        ["sessions.id"],
        name=op.f(f"fk_{table}_session_id_sessions"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "langgraph_checkpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("checkpoint_ns", sa.String(length=300), nullable=False),
        sa.Column("checkpoint_id", sa.String(length=100), nullable=False),
        sa.Column("parent_checkpoint_id", sa.String(length=100), nullable=True),
        sa.Column("run_id", sa.String(length=255), nullable=True),
        sa.Column("checkpoint_type", sa.String(length=50), nullable=False),
        sa.Column("checkpoint", LongBinary, nullable=False),
        sa.Column("metadata_type", sa.String(length=50), nullable=False),
        sa.Column("metadata", LongBinary, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _session_fk("langgraph_checkpoints"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_langgraph_checkpoints")),
        sa.UniqueConstraint(
            "session_id",
            "checkpoint_ns",
            "checkpoint_id",
            name=op.f("uq_langgraph_checkpoints_session_id_checkpoint_ns_checkpoint_id"),
        ),
        **MYSQL,
    )
    op.create_index(op.f("ix_langgraph_checkpoints_run_id"), "langgraph_checkpoints", ["run_id"])
    op.create_table(
        "langgraph_blobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("checkpoint_ns", sa.String(length=300), nullable=False),
        sa.Column("channel", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("value_type", sa.String(length=50), nullable=False),
        sa.Column("value", LongBinary, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _session_fk("langgraph_blobs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_langgraph_blobs")),
        sa.UniqueConstraint(
            "session_id",
            "checkpoint_ns",
            "channel",
            "version",
            name=op.f("uq_langgraph_blobs_session_id_checkpoint_ns_channel_version"),
        ),
        **MYSQL,
    )
    op.create_table(
        "langgraph_writes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("checkpoint_ns", sa.String(length=300), nullable=False),
        sa.Column("checkpoint_id", sa.String(length=100), nullable=False),
        sa.Column("task_id", sa.String(length=150), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=255), nullable=False),
        sa.Column("value_type", sa.String(length=50), nullable=False),
        sa.Column("value", LongBinary, nullable=True),
        sa.Column("task_path", LongText, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _session_fk("langgraph_writes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_langgraph_writes")),
        sa.UniqueConstraint(
            "session_id",
            "checkpoint_ns",
            "checkpoint_id",
            "task_id",
            "idx",
            name="uq_langgraph_writes_key",
        ),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("langgraph_writes")
    op.drop_table("langgraph_blobs")
    op.drop_index(op.f("ix_langgraph_checkpoints_run_id"), table_name="langgraph_checkpoints")
    op.drop_table("langgraph_checkpoints")
