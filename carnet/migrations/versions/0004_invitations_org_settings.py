"""invitations and organization settings

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("invitation_hash", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("invitation_expires_at", sa.DateTime(timezone=True), nullable=True))

    # Existing organizations get empty settings before the column becomes NOT NULL (JSON columns take no
    # portable server default).
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("settings", sa.JSON(), nullable=True))
    op.execute(sa.text("UPDATE organizations SET settings = '{}' WHERE settings IS NULL"))
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.alter_column("settings", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("settings")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("invitation_expires_at")
        batch_op.drop_column("invitation_hash")
