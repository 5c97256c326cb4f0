"""Throw-away databases on the real PostgreSQL and MariaDB servers of the test machine: one database with
an ``orders`` table (4 rows), a ``big`` table (200k rows), a function that writes (``wipe()``), and a
SELECT-only user whose password is ``CANARY`` (it must never show up in an answer or an error)."""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import sqlalchemy as sa

from carnet.connectors import settings_from_url

CANARY = "Canary-pw-7f3e9!"  # the read-only user's password: must never show up in an error


class Server:
    """One throw-away database on a real server, its admin settings and a SELECT-only user."""

    def __init__(self, kind: str, base_url: str):
        self.kind, self.base_url = kind, base_url
        self.database = f"carnet_sc_{uuid.uuid4().hex[:10]}"
        self.reader = f"carnet_ro_{uuid.uuid4().hex[:8]}"
        self.admin_engine = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
        url = sa.engine.make_url(base_url).set(database=self.database)
        self.engine = sa.create_engine(url)
        self.admin = settings_from_url(url.render_as_string(hide_password=False))
        self.ro = {**self.admin, "username": self.reader, "password": CANARY}

    def count_orders(self) -> int:
        with self.engine.connect() as con:
            return con.execute(sa.text("SELECT count(*) FROM orders")).scalar_one()


def setup_server(server: Server) -> None:
    with server.admin_engine.connect() as con:
        con.execute(sa.text(f"CREATE DATABASE {server.database}"))
        if server.kind == "pg":
            con.execute(sa.text(f"CREATE ROLE {server.reader} LOGIN PASSWORD '{CANARY}'"))
        else:
            con.execute(sa.text(f"CREATE USER '{server.reader}'@'%' IDENTIFIED BY '{CANARY}'"))
            con.execute(sa.text(f"GRANT SELECT ON {server.database}.* TO '{server.reader}'@'%'"))
    with server.engine.begin() as con:
        con.execute(
            sa.text("CREATE TABLE orders (id INTEGER PRIMARY KEY, region VARCHAR(20), amount INTEGER)")
        )
        con.execute(
            sa.text("INSERT INTO orders VALUES (1,'north',10),(2,'north',20),(3,'south',5),(4,'east',15)")
        )
        con.execute(sa.text("CREATE TABLE big (id INTEGER, k INTEGER, v INTEGER)"))
        if server.kind == "pg":
            con.execute(sa.text("INSERT INTO big SELECT n, n % 7, n % 100 FROM generate_series(1, 200000) n"))
            con.execute(sa.text("CREATE SEQUENCE counter"))
            # A write hidden in a function: no parser can see it, only the server's read-only mode.
            con.execute(
                sa.text(
                    "CREATE FUNCTION wipe() RETURNS bigint LANGUAGE sql AS "
                    "'WITH d AS (DELETE FROM orders RETURNING 1) SELECT count(*) FROM d'"
                )
            )
            con.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {server.reader}"))
            con.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {server.reader}"))
        else:
            con.execute(sa.text("INSERT INTO big SELECT seq, seq % 7, seq % 100 FROM seq_1_to_200000"))
            wipe = (
                "CREATE FUNCTION wipe() RETURNS INT MODIFIES SQL DATA BEGIN DELETE FROM orders; RETURN 1; END"
            )
            con.execute(sa.text(wipe))


def teardown_server(server: Server) -> None:
    server.engine.dispose()
    with server.admin_engine.connect() as con:
        if server.kind == "pg":
            con.execute(sa.text(f"DROP DATABASE {server.database} WITH (FORCE)"))
            con.execute(sa.text(f"DROP ROLE {server.reader}"))
        else:
            con.execute(sa.text(f"DROP DATABASE {server.database}"))
            con.execute(sa.text(f"DROP USER '{server.reader}'@'%'"))
    server.admin_engine.dispose()


@contextmanager
def scratch_pg_database(pg_url: str, prefix: str, *statements: str):
    """A fresh PostgreSQL database named ``<prefix>_<random>`` with ``statements`` run in it, dropped after:
    yields (its URL, its connection settings for a Carnet connection: no password, the server trusts)."""
    database = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.exec_driver_sql(f'CREATE DATABASE "{database}"')
    url = sa.engine.make_url(pg_url).set(database=database)
    engine = sa.create_engine(url)
    with engine.begin() as con:
        for statement in statements:
            con.exec_driver_sql(statement)
    engine.dispose()
    settings = {
        "dialect": "postgresql",
        "driver": "psycopg",
        "host": url.host,
        "port": url.port,
        "database": database,
        "username": url.username,
    }
    try:
        yield url, settings
    finally:
        with admin.connect() as con:
            con.exec_driver_sql(f'DROP DATABASE "{database}" WITH (FORCE)')
        admin.dispose()
