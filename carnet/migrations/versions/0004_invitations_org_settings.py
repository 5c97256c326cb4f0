"""invitations, organization settings, app shares

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

    op.create_table(
        "app_shares",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["group_id"], ["viewer_groups.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("app_id", "user_id"),
        sa.UniqueConstraint("app_id", "group_id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("app_shares", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_app_shares_app_id"), ["app_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_app_shares_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_app_shares_group_id"), ["group_id"], unique=False)


def downgrade() -> None:
    op.drop_table("app_shares")
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("settings")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("invitation_expires_at")
        batch_op.drop_column("invitation_hash")
