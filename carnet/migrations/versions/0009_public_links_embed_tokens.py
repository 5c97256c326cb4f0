"""public links of apps; tokens of anonymous visitors' kernels (app, scope, no user)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "app_public_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("app_id"),
        sa.UniqueConstraint("prefix"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("app_public_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_app_public_links_org_id"), ["org_id"], unique=False)
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.alter_column("user_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("app_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("scope", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_tokens_app_id"), ["app_id"], unique=False)
        batch_op.create_foreign_key("fk_tokens_app_id_apps", "apps", ["app_id"], ["id"], ondelete="CASCADE")


def downgrade() -> None:
    op.execute("DELETE FROM tokens WHERE user_id IS NULL")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_constraint("fk_tokens_app_id_apps", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_tokens_app_id"))
        batch_op.drop_column("scope")
        batch_op.drop_column("app_id")
        batch_op.alter_column("user_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("app_public_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_app_public_links_org_id"))
    op.drop_table("app_public_links")
