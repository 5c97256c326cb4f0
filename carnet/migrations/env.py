"""Alembic environment: migrations run against CarnetSettings.db_url (set by carnet.db.upgrade)."""

from alembic import context

from carnet.db import get_engine
from carnet.db.models import Base, UTCDateTime


def render_item(type_, obj, autogen_context):
    # Migrations use plain SQLAlchemy types, so they never import (and freeze) the models.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


config = context.config
url = config.get_main_option("sqlalchemy.url")

with get_engine(url).connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
