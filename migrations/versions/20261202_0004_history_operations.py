"""history operations: idempotency keys, forks, and the seq each state snapshot was saved at

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mofa_persist.types import JSONDocument, UTCDateTime

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}

# A snapshot saved before this revision gets the newest seq written no later than it: a turn
# stores its messages and its state with one timestamp, so that is the seq it was saved at.
BACKFILL_AT_SEQ = """
UPDATE agent_state SET at_seq = COALESCE(
    (SELECT MAX(m.seq) FROM messages m
     WHERE m.session_id = agent_state.session_id AND m.created_at <= agent_state.created_at),
    0)
"""


def upgrade() -> None:
    with op.batch_alter_table("agent_state") as batch:
        batch.add_column(sa.Column("at_seq", sa.Integer(), server_default="0", nullable=False))
    op.execute(BACKFILL_AT_SEQ)
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("parent_session_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("forked_at_seq", sa.Integer(), nullable=True))
        batch.create_index(
            op.f("ix_sessions_parent_session_id_updated_at_id"),
            ["parent_session_id", "updated_at", "id"],
        )
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("operation", sa.String(length=30), nullable=False),
        sa.Column("payload_hash", sa.String(length=64), nullable=False),
        sa.Column("result", JSONDocument, nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=True),
        sa.Column("state_version", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_idempotency_keys_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("scope", "key", name=op.f("uq_idempotency_keys_scope_key")),
        **MYSQL,
    )
    op.create_index(
        op.f("ix_idempotency_keys_session_id_last_seq"),
        "idempotency_keys",
        ["session_id", "last_seq"],
    )
    op.create_index(op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index(op.f("ix_sessions_parent_session_id_updated_at_id"))
        batch.drop_column("forked_at_seq")
        batch.drop_column("parent_session_id")
    with op.batch_alter_table("agent_state") as batch:
        batch.drop_column("at_seq")
