"""scheduler_leases (exactly one active scheduler) and jobs.misfire_grace_seconds

The column is added in place (SQLite: ALTER TABLE ADD COLUMN with a constant default, no rebuild).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column(
        "jobs",
        sa.Column("misfire_grace_seconds", sa.Integer(), nullable=False, server_default="3600"),
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("misfire_grace_seconds")
    op.drop_table("scheduler_leases")
