"""SQLite migrations keep data and ids: rebuilding a table (batch mode) must not cascade-delete the rows
that reference it, every table the models mark ``sqlite_autoincrement`` has AUTOINCREMENT after the
upgrade (ids of deleted rows are never given again), and the engine's connections enforce foreign keys
afterwards."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from carnet.db import get_engine, upgrade
from carnet.db.models import Base
from carnet.settings import CarnetSettings

ROWS_AT_0003 = [
    "INSERT INTO organizations (slug, name, created_at) VALUES ('acme', 'Acme', '2026-01-01')",
    "INSERT INTO users (email, display_name, password_hash, is_active, created_at, failed_logins) "
    "VALUES ('a@acme.example', 'A', 'h', 1, '2026-01-01', 0)",
    "INSERT INTO memberships (user_id, org_id, role) VALUES (1, 1, 'admin')",
    "INSERT INTO data_sources (org_id, name, kind, description, options, created_at) "
    "VALUES (1, 'sales', 'warehouse_table', '', '{}', '2026-01-01')",
    "INSERT INTO apps (org_id, slug, title, description, visibility, current_version, published_by, "
    "created_at, updated_at) VALUES (1, 'app', 'App', '', 'org', 1, 1, '2026-01-01', '2026-01-01')",
]
CHECKED = ("organizations", "users", "memberships", "data_sources", "apps")


@pytest.fixture
def settings(settings_env):
    return CarnetSettings()


def _columns(db, table) -> set[str]:
    return {row[1] for row in sqlite3.connect(db).execute(f"PRAGMA table_info({table})")}


def test_upgrading_keeps_the_rows_that_reference_rebuilt_tables(settings):
    upgrade(settings.db_url, "0003")
    db = settings.db_url.split("///", 1)[-1]
    with sqlite3.connect(db) as con:
        for statement in ROWS_AT_0003:
            table = statement.split()[2]
            wanted = statement[statement.index("(") + 1 : statement.index(")")].split(", ")
            assert set(wanted) <= _columns(db, table), (table, wanted)
            con.execute(statement)
    upgrade(settings.db_url)
    with sqlite3.connect(db) as con:
        assert {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in CHECKED} == dict.fromkeys(
            CHECKED, 1
        )
    with get_engine(settings.db_url).connect() as connection:  # the pool enforces foreign keys again
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_every_table_that_never_reuses_ids_has_autoincrement(settings):
    upgrade(settings.db_url)
    db = settings.db_url.split("///", 1)[-1]
    with sqlite3.connect(db) as con:
        sql = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
    wanted = [t.name for t in Base.metadata.sorted_tables if t.dialect_options["sqlite"].get("autoincrement")]
    assert wanted and [name for name in wanted if "AUTOINCREMENT" not in sql[name].upper()] == []


def test_the_id_of_a_deleted_source_is_not_given_again(settings):
    upgrade(settings.db_url)
    engine = get_engine(settings.db_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO organizations (slug, name, settings, created_at) "
                "VALUES ('acme', 'Acme', '{}', '2026-01-01')"
            )
        )
        insert = text(
            "INSERT INTO data_sources (org_id, name, kind, description, options, row_rules, created_at) "
            "VALUES (1, :name, 'warehouse_table', '', '{}', '[]', '2026-01-01')"
        )
        connection.execute(insert, {"name": "first"})
        first = connection.execute(text("SELECT max(id) FROM data_sources")).scalar()
        connection.execute(text("DELETE FROM data_sources WHERE id = :id"), {"id": first})
        connection.execute(insert, {"name": "second"})
        second = connection.execute(text("SELECT max(id) FROM data_sources")).scalar()
    assert second > first
