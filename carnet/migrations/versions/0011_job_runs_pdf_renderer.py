"""job_runs.pdf_renderer: how a run's PDF was made ('viewer' or 'notebook', carnet.scheduler.executor)

A nullable column added in place (SQLite: ALTER TABLE ADD COLUMN, no table rebuild, so the table keeps its
AUTOINCREMENT and the rows referencing it stay).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_runs", sa.Column("pdf_renderer", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.drop_column("pdf_renderer")
