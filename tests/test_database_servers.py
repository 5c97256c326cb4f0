"""The platform database works on PostgreSQL and MariaDB too (the URL is a setting), not only SQLite."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from carnet.db import session_scope, upgrade
from carnet.db.models import App, Membership, Organization, TokenKind, User
from carnet.demo import seed_demo
from carnet.settings import CarnetSettings
from carnet.tokens import mint_token, resolve_token


@pytest.fixture(params=["postgresql", "mariadb"])
def server_db_url(request):
    """A fresh database on the server, dropped afterwards."""
    yield from _fresh_database(request, request.param)


def _fresh_database(request, kind: str):
    base = request.getfixturevalue("pg_url" if kind == "postgresql" else "mysql_url")
    name = f"carnet_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    yield url
    from carnet.db import get_engine

    get_engine(url).dispose()
    with admin.connect() as con:
        if kind == "postgresql":
            con.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        else:
            con.execute(sa.text(f"DROP DATABASE {name}"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def any_db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'carnet.sqlite'}"
    return request.getfixturevalue("server_db_url_" + request.param)


@pytest.fixture
def server_db_url_postgresql(request):
    yield from _fresh_database(request, "postgresql")


@pytest.fixture
def server_db_url_mariadb(request):
    yield from _fresh_database(request, "mariadb")


def test_migrations_create_exactly_the_models(any_db_url):
    """The alembic migrations and the SQLAlchemy models describe the same schema on every database: a
    model change without its migration (or the reverse) fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from carnet.db import get_engine
    from carnet.db.models import Base

    upgrade(any_db_url)
    with get_engine(any_db_url).connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_migrations_and_demo_seed_on_a_database_server(server_db_url, tmp_path):
    settings = CarnetSettings(data_dir=str(tmp_path), db_url=server_db_url)
    upgrade(server_db_url)
    upgrade(server_db_url)  # idempotent
    first = seed_demo(settings)
    assert len(first.created_passwords) == 5
    again = seed_demo(settings)
    assert again.created_passwords == {} and again.created == []
    with session_scope(server_db_url) as session:
        assert session.scalar(select(func.count()).select_from(Organization)) == 2
        assert session.scalar(select(func.count()).select_from(Membership)) == 5
        assert sorted(session.scalars(select(App.slug))) == ["world-dashboard", "world-development"]
        user = session.scalar(select(User).where(User.email == "analyst@acme.example"))
        token = mint_token(
            session,
            kind=TokenKind.studio_kernel,
            user_id=user.id,
            org_id=user.memberships[0].org_id,
            ttl_seconds=60,
        )
    with session_scope(server_db_url) as session:
        resolved = resolve_token(session, token)
        assert resolved is not None
        assert resolved[1].role.value == "analyst"


def test_viewer_groups_on_a_database_server(server_db_url, tmp_path):
    from carnet.db.models import ViewerGroup, ViewerGroupMember
    from carnet.errors import Conflict
    from carnet.groups import create_group, set_members

    upgrade(server_db_url)
    seed_demo(CarnetSettings(data_dir=str(tmp_path), db_url=server_db_url))
    with session_scope(server_db_url) as session:
        acme = session.scalar(select(Organization.id).where(Organization.slug == "acme"))
        group = create_group(session, acme, "Sales ünits")
        set_members(session, group, ["viewer@acme.example", "analyst@acme.example"])
        group_id = group.id
    with session_scope(server_db_url) as session, pytest.raises(Conflict):
        create_group(session, acme, "S\u0430les \u00fcnits")  # Cyrillic a
    with pytest.raises(sa.exc.IntegrityError), session_scope(server_db_url) as session:
        # The database itself refuses a second group with the same skeleton.
        session.add(ViewerGroup(org_id=acme, name="other spelling", name_key="sales ünits"))
        session.flush()
    # Deleting a person removes them from groups (FK cascade in the database, not only in the ORM).
    with session_scope(server_db_url) as session:
        session.execute(sa.delete(User).where(User.email == "analyst@acme.example"))
    with session_scope(server_db_url) as session:
        members = session.scalars(
            select(ViewerGroupMember.user_id).where(ViewerGroupMember.group_id == group_id)
        )
        viewer = session.scalar(select(User.id).where(User.email == "viewer@acme.example"))
        assert list(members) == [viewer]
        session.execute(sa.delete(ViewerGroup).where(ViewerGroup.id == group_id))
    with session_scope(server_db_url) as session:
        assert session.scalar(select(func.count()).select_from(ViewerGroupMember)) == 0
