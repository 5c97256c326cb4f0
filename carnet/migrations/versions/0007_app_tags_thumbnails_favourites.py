"""apps: tags, thumbnail, version notes; favourites

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tags", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("thumbnail_path", sa.String(length=500), nullable=True))
    with op.batch_alter_table("app_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), server_default="", nullable=False))
    op.create_table(
        "app_favourites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("app_id", "user_id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("app_favourites", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_app_favourites_app_id"), ["app_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_app_favourites_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_app_favourites_user_id"), table_name="app_favourites")
    op.drop_index(op.f("ix_app_favourites_app_id"), table_name="app_favourites")
    op.drop_table("app_favourites")
    with op.batch_alter_table("app_versions", schema=None) as batch_op:
        batch_op.drop_column("note")
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.drop_column("thumbnail_path")
        batch_op.drop_column("tags")
