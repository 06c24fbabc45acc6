"""Initial schema: tokens, datasets, pairs, idempotency keys, snapshots (+ membership), rounds.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PairId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("tokens.id")),
    )
    op.create_table(
        "pairs",
        sa.Column("id", PairId, primary_key=True, autoincrement=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("row_json", sa.Text, nullable=False),
        sa.Column("submitted_by", sa.Integer, sa.ForeignKey("tokens.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("retracted_at", sa.Float),
        sa.Column("retracted_by", sa.Integer, sa.ForeignKey("tokens.id")),
        sa.UniqueConstraint("dataset_id", "content_hash", name="uq_pairs_dataset_content"),
    )
    op.create_index("ix_pairs_submitted_by", "pairs", ["submitted_by"])
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token_id", sa.Integer, sa.ForeignKey("tokens.id"), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("token_id", "key", name="uq_idempotency_token_key"),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("pair_count", sa.Integer, nullable=False),
        sa.Column("max_pair_id", PairId, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("wandb", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("tokens.id")),
        sa.UniqueConstraint("dataset_id", "version", name="uq_snapshots_dataset_version"),
    )
    op.create_table(
        "snapshot_pairs",
        sa.Column("snapshot_id", sa.Integer, sa.ForeignKey("snapshots.id"), primary_key=True),
        sa.Column("pair_id", PairId, sa.ForeignKey("pairs.id"), primary_key=True),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("policy_stage", sa.String(8), nullable=False),
        sa.Column("snapshot_version", sa.String(16)),
        sa.Column("pair_watermark", PairId, nullable=False),
        sa.Column("worker", sa.String(200)),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("output_dir", sa.Text),
        sa.Column("logs_path", sa.Text),
        sa.Column("executor_job", sa.String(64)),
        sa.Column("metrics_json", sa.Text),
        sa.Column("lineage_json", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_rounds_status", "rounds", ["status"])


def downgrade() -> None:
    for table in ("rounds", "snapshot_pairs", "snapshots", "idempotency_keys", "pairs", "datasets", "tokens"):
        op.drop_table(table)
