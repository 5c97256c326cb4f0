"""connections, encrypted source secrets, source version and cache policy

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("org_id", "name"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("connections", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_connections_org_id"), ["org_id"], unique=False)

    with op.batch_alter_table("data_sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secret", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("connection_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(
            sa.Column("cache_policy", sa.String(length=16), server_default="none", nullable=False)
        )
        batch_op.add_column(sa.Column("cache_ttl_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_data_sources_connection_id"), ["connection_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_data_sources_connection_id_connections",
            "connections",
            ["connection_id"],
            ["id"],
            ondelete="RESTRICT",
        )


def downgrade() -> None:
    with op.batch_alter_table("data_sources", schema=None) as batch_op:
        batch_op.drop_constraint("fk_data_sources_connection_id_connections", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_data_sources_connection_id"))
        batch_op.drop_column("updated_at")
        batch_op.drop_column("cache_ttl_seconds")
        batch_op.drop_column("cache_policy")
        batch_op.drop_column("version")
        batch_op.drop_column("connection_id")
        batch_op.drop_column("secret")
    op.drop_index(op.f("ix_connections_org_id"), table_name="connections")
    op.drop_table("connections")
