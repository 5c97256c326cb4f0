"""Fixtures for Carnet's tests.

Index (session-scoped unless noted):
- ``isolated_jupyter``: per-session JUPYTER_CONFIG_DIR / JUPYTER_RUNTIME_DIR / IPYTHONDIR / TMPDIR, so the
  developer's own Jupyter settings never leak into a test (autouse).
- ``smtp_server``: a real SMTP server (aiosmtpd) on a free loopback port; ``.messages`` holds what arrived.
- ``carnet_stack``: a real JupyterHub + proxy + Carnet service + Viewer + scheduler on free ports, in a
  temporary data directory seeded with the demo; ``.url``, ``.passwords``, ``.settings``, ``.app_id``;
  ``.fetch_port``: the one loopback port the service may fetch from (serve a stand-in REST API there).
- ``login``: ``login(email)`` -> a requests.Session signed in through the Hub's login form.
- ``hub_token``: ``hub_token(session, email)`` -> a Hub API token of that user (for token-auth API calls).
- ``settings_env`` (function): sets CARNET_* variables for in-process code and restores them after.
- ``created`` (module): a ``tests.api_support.Created`` registry; what a module makes through it is removed
  when the module ends.
- ``admin`` (module): request headers of acme's admin (a Hub API token).
- ``pg_url`` / ``mysql_url``: server URLs from CARNET_TEST_PG_URL / CARNET_TEST_MYSQL_URL (set by
  scripts/test, which starts private servers when none answer); tests needing them fail if unset in CI.
- Parallel runs (scripts/test: ``pytest -n 2 --dist loadscope``, longest modules first: ``LONGEST_MODULES``):
  each xdist worker's stacks and in-process kernels run as OS accounts of its own
  (``CARNET_OS_ACCOUNT_PREFIX`` = ``carnet-gw0-u``, ...; set at start and kept by ``settings_env``), so two
  workers' people with the same ids never share an account.
- Password hashes: bcrypt cost 4 for the whole session (``CARNET_PASSWORD_HASH_ROUNDS``, also passed to every
  stack), not the production 12: people are created and signed in thousands of times. tests/test_units.py
  checks the default, the variable's refusals and that hashes of any cost verify.
- ``pg_warehouse_url``: a database ``carnet_test_warehouse`` on that PostgreSQL (created once) for the
  PostgreSQL warehouse option; ``warehouse_backend`` (function, parametrized "duckdb"/"postgresql") sets
  CARNET_WAREHOUSE_URL and a schema prefix of its own for in-process tests, dropping its schemas after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from carnet.passwords import ROUNDS_VARIABLE
from tests.api_support import Created, auth
from tests.helpers import CarnetStack, SmtpCatcher, hub_login, make_hub_token

# The variable naming the OS accounts of this worker's stacks and kernels (carnet/isolation.py).
ACCOUNT_PREFIX_VARIABLE = "CARNET_OS_ACCOUNT_PREFIX"
# Set for the whole session and kept by ``settings_env``: this worker's OS accounts, cheap password hashes.
SESSION_VARIABLES = (ACCOUNT_PREFIX_VARIABLE, ROUNDS_VARIABLE)


# The longest test modules, longest first (measured: a run's --durations). With two workers
# (scripts/test: --dist loadscope --no-loadscope-reorder) a module runs whole on one worker, in this order,
# so the long ones start first and the many short ones fill in around them instead of one long module
# starting last and running alone at the end.
LONGEST_MODULES = (
    "test_job_burst.py",
    "test_api_authorization.py",
    "test_print_prerender.py",
    "test_job_kinds_flow.py",
    "test_scheduler_crash.py",
    "test_viewer_pool.py",
    "test_job_notebook.py",
    "test_viewer_pdf.py",
    "test_loads.py",
    "test_viewer_snapshots.py",
    "test_api_validation.py",
    "test_viewer_culling.py",
    "test_job_triggers.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: other modules keep their order


def pytest_configure(config):
    # bcrypt cost 4 instead of 12 for the people tests create and sign in (tests/test_units.py checks 12 is
    # the default); CarnetStack passes the same to its processes.
    os.environ[ROUNDS_VARIABLE] = "4"
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        os.environ[ACCOUNT_PREFIX_VARIABLE] = f"carnet-{worker}-u"


@pytest.fixture(scope="session", autouse=True)
def isolated_jupyter():
    root = Path(tempfile.mkdtemp(prefix="carnet-jupyter-"))
    saved = {}
    for name, sub in (
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
        ("JUPYTER_PLATFORM_DIRS", None),
    ):
        saved[name] = os.environ.get(name)
        if sub is None:
            os.environ[name] = "1"
        else:
            (root / sub).mkdir()
            os.environ[name] = str(root / sub)
    yield root
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def smtp_server():
    catcher = SmtpCatcher()
    catcher.start()
    yield catcher
    catcher.stop()


@pytest.fixture(scope="session")
def carnet_stack(smtp_server):
    # Not under pytest's tmp dirs (0700): kernels run as unprivileged accounts that must reach their homes.
    data_dir = Path(tempfile.mkdtemp(prefix="carnet-stack-"))
    os.chmod(data_dir, 0o711)  # noqa: S103 - traversable, not listable
    stack = CarnetStack(data_dir, smtp=smtp_server)
    stack.start()
    yield stack
    stack.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def login(carnet_stack):
    sessions = {}

    def _login(email: str):
        if email not in sessions:
            sessions[email] = hub_login(carnet_stack.url, email, carnet_stack.passwords[email])
        return sessions[email]

    return _login


@pytest.fixture(scope="session")
def hub_token(carnet_stack, login):
    tokens = {}

    def _token(email: str) -> str:
        if email not in tokens:
            tokens[email] = make_hub_token(carnet_stack.url, login(email), email)
        return tokens[email]

    return _token


@pytest.fixture
def settings_env(tmp_path):
    """CARNET_* pointing at a fresh data directory, for tests of in-process code."""
    saved = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("CARNET_") and not k.startswith("CARNET_TEST") and k not in SESSION_VARIABLES
    }
    for name in saved:
        del os.environ[name]
    os.environ["CARNET_DATA_DIR"] = str(tmp_path / "data")
    yield tmp_path / "data"
    for name in [
        k
        for k in os.environ
        if k.startswith("CARNET_") and not k.startswith("CARNET_TEST") and k not in SESSION_VARIABLES
    ]:
        del os.environ[name]
    os.environ.update(saved)


def _server_url(variable: str) -> str:
    url = os.environ.get(variable)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{variable} is not set: scripts/test starts the database servers")
        pytest.skip(f"{variable} not set (run the suite through scripts/test)")
    return url


@pytest.fixture(scope="session")
def pg_url():
    return _server_url("CARNET_TEST_PG_URL")


_EXISTS = "SELECT 1 FROM pg_database WHERE datname = 'carnet_test_warehouse'"


@pytest.fixture(scope="session")
def pg_warehouse_url(pg_url):
    import sqlalchemy as sa

    server = sa.engine.make_url(pg_url)
    engine = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if conn.exec_driver_sql(_EXISTS).scalar() is None:
            try:
                conn.exec_driver_sql("CREATE DATABASE carnet_test_warehouse")
            except sa.exc.DBAPIError:  # another xdist worker may have made it meanwhile
                if conn.exec_driver_sql(_EXISTS).scalar() is None:
                    raise
    engine.dispose()
    return server.set(database="carnet_test_warehouse").render_as_string(hide_password=False)


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse_backend(request, settings_env):
    """Which warehouse in-process tests run against; the PostgreSQL one in schemas of this test only."""
    if request.param == "duckdb":
        yield "duckdb"
        return
    import uuid

    import sqlalchemy as sa

    url = request.getfixturevalue("pg_warehouse_url")
    prefix = f"t{uuid.uuid4().hex[:12]}_org_"
    os.environ["CARNET_WAREHOUSE_URL"] = url
    os.environ["CARNET_WAREHOUSE_SCHEMA_PREFIX"] = prefix
    yield "postgresql"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        schemas = conn.exec_driver_sql(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %(p)s)", {"p": prefix}
        ).scalars()
        for schema in list(schemas):
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    engine.dispose()


@pytest.fixture(scope="session")
def mysql_url():
    return _server_url("CARNET_TEST_MYSQL_URL")


@pytest.fixture(scope="module")
def created(carnet_stack):
    objects = Created(carnet_stack)
    yield objects
    objects.cleanup()


@pytest.fixture(scope="module")
def admin(hub_token):
    return auth(hub_token("admin@acme.example"))
