"""The system of record: ledger entries, per-job usage, the keys' audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("entry_id", sa.String(48), primary_key=True),
        sa.Column("entry_ms", sa.BigInteger, nullable=False),
        sa.Column("entry_seq", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("model", sa.String(128), nullable=False, server_default=""),
        sa.Column("images", sa.Integer, nullable=False, server_default="0"),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("day", sa.String(10)),
        sa.Column("cost", sa.BigInteger),
        sa.Column("extra", JSON),
        sa.Column("sunk_at", sa.Float, nullable=False),
    )
    op.create_index("ix_ledger_entries_key_kind_day", "ledger_entries", ["key_id", "kind", "day"])
    op.create_index("ix_ledger_entries_job_id", "ledger_entries", ["job_id"])
    op.create_index(
        "ix_ledger_entries_key_order", "ledger_entries", ["key_id", "entry_ms", "entry_seq"]
    )
    op.create_table(
        "job_usage",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("serving", sa.String(128)),
        sa.Column("status", sa.String(16)),
        sa.Column("error_code", sa.String(64)),
        sa.Column("size", sa.String(32)),
        sa.Column("end_user", sa.String(255)),
        sa.Column("n", sa.Integer),
        sa.Column("images", sa.Integer),
        sa.Column("unit_price", sa.BigInteger),
        sa.Column("charged", sa.BigInteger),
        sa.Column("spent", sa.BigInteger),
        sa.Column("refunded", sa.BigInteger),
        sa.Column("day", sa.String(10)),
        sa.Column("created", sa.Float),
        sa.Column("started", sa.Float),
        sa.Column("finished", sa.Float),
        sa.Column("worker", sa.String(255)),
        sa.Column("takeovers", sa.Integer),
        sa.Column("extra", JSON),
    )
    op.create_index("ix_job_usage_key_day", "job_usage", ["key_id", "day"])
    op.create_table(
        "key_audit",
        sa.Column("entry_id", sa.String(48), primary_key=True),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("detail", JSON),
    )
    op.create_index("ix_key_audit_key_id", "key_audit", ["key_id"])


def downgrade() -> None:
    op.drop_table("key_audit")
    op.drop_table("job_usage")
    op.drop_table("ledger_entries")
