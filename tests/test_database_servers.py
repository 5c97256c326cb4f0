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
    base = request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url")
    name = f"carnet_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    yield url
    from carnet.db import get_engine

    get_engine(url).dispose()
    with admin.connect() as con:
        if request.param == "postgresql":
            con.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        else:
            con.execute(sa.text(f"DROP DATABASE {name}"))
    admin.dispose()


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
        assert session.scalar(select(App.slug)) == "world-development"
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
