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


def _foreign_keys(connection, on: bool) -> None:
    """SQLite only. Batch migrations rebuild a table (copy, DROP, rename); with foreign keys enforced the
    DROP deletes every row referencing the table (ON DELETE CASCADE): rebuilding ``organizations`` would
    empty ``memberships``. So they are off while migrating, checked after, and on again for the pool."""
    connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    connection.commit()
    if connection.exec_driver_sql("PRAGMA foreign_keys").scalar() != int(on):
        raise RuntimeError("SQLite did not change PRAGMA foreign_keys (inside a transaction?)")
    connection.commit()


with get_engine(url).connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _foreign_keys(connection, on=False)
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            compare_type=True,
            render_item=render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration left rows with broken foreign keys: {broken[:5]}")
        connection.commit()
    finally:
        if sqlite:
            connection.rollback()
            _foreign_keys(connection, on=True)
