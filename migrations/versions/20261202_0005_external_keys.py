"""external_keys: agent frameworks' own session ids mapped to sessions

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mofa_persist.types import LongText, UTCDateTime

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "external_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("namespace", sa.String(length=100), nullable=False),
        sa.Column("external_id", LongText, nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_external_keys_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_external_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_external_keys_key_hash")),
        sa.UniqueConstraint("session_id", name=op.f("uq_external_keys_session_id")),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index(
        op.f("ix_external_keys_namespace_created_at"), "external_keys", ["namespace", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("external_keys")
