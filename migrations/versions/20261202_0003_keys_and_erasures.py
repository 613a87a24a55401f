"""mofa_keys (the database's own secret) and erasures (the erasure audit)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mofa_persist.types import JSONDocument, UTCDateTime

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mofa_keys",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_mofa_keys")),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_table(
        "erasures",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("scope_kind", sa.String(length=10), nullable=False),
        sa.Column("subject_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant_hash", sa.String(length=64), nullable=True),
        sa.Column("counts", JSONDocument, nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index(op.f("ix_erasures_subject_hash"), "erasures", ["subject_hash"])
    op.create_index(
        op.f("ix_erasures_tenant_hash_started_at"), "erasures", ["tenant_hash", "started_at"]
    )
    op.create_index(op.f("ix_erasures_started_at"), "erasures", ["started_at"])


def downgrade() -> None:
    op.drop_table("erasures")
    op.drop_table("mofa_keys")
