"""The demo on embedded defaults: org Acme (one user per role) and org Globex (one viewer), Acme's warehouse
loaded with public data that ships inside plotly, a source, two published apps (a notebook, and a
``carnet.dash`` dashboard from ``demo_dash.py``) and a nightly report job.

Idempotent: a second run creates only what is missing and never prints a password again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nbformat
from sqlalchemy import select

from carnet.db import session_scope, upgrade
from carnet.db.models import App, DataSource, Job, Membership, Organization, Role, User, utcnow
from carnet.demo_dash import DASH_APP, DASH_TITLE, dash_notebook
from carnet.passwords import generate_password, hash_password
from carnet.publishing import publish
from carnet.scheduler.cron import next_fire_time
from carnet.settings import CarnetSettings
from carnet.warehouse import open_warehouse

DEMO_USERS = [
    ("acme", "admin@acme.example", Role.admin),
    ("acme", "studio@acme.example", Role.studio),
    ("acme", "analyst@acme.example", Role.analyst),
    ("acme", "viewer@acme.example", Role.viewer),
    ("globex", "viewer@globex.example", Role.viewer),
]
DEMO_ORGS = {"acme": "Acme", "globex": "Globex"}
DEMO_TABLE = "gapminder"
DEMO_SOURCE = "gapminder"
DEMO_APP = "world-development"
DEMO_JOB = "Nightly world report"
DEMO_RECIPIENT = "reports@acme.example"


@dataclass
class DemoResult:
    created_passwords: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    app_id: int | None = None
    dash_app_id: int | None = None  # the sample carnet.dash dashboard (carnet/demo_dash.py)
    job_id: int | None = None


def ensure_org(session, slug: str, name: str) -> Organization:
    org = session.scalar(select(Organization).where(Organization.slug == slug))
    if org is None:
        org = Organization(slug=slug, name=name)
        session.add(org)
        session.flush()
    return org


def ensure_user(session, org: Organization, email: str, role: Role, result: DemoResult) -> User:
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        password = generate_password()
        user = User(
            email=email, display_name=email.split("@")[0].title(), password_hash=hash_password(password)
        )
        session.add(user)
        session.flush()
        result.created_passwords[email] = password
    if not any(m.org_id == org.id for m in user.memberships):
        session.add(Membership(user_id=user.id, org_id=org.id, role=role))
        session.flush()
    return user


def demo_notebook() -> dict:
    """A dashboard: a KPI table (plain output), a chart for the report's continent, and an interactive
    explorer (dropdown filter + chart inside an Output widget)."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    parameters = code('continent = "Europe"')
    parameters.metadata["tags"] = ["parameters"]
    cells = [
        md("# World development\nLife expectancy, population and wealth by continent (Gapminder data)."),
        parameters,
        code(
            "import carnet\n"
            "import ipywidgets as widgets\n"
            "import plotly.express as px\n"
            "from IPython.display import display\n\n"
            f'df = carnet.sources["{DEMO_SOURCE}"].df()'
        ),
        md("## Latest year, by continent"),
        code(
            "latest = df[df.year == df.year.max()]\n"
            "summary = latest.groupby('continent').agg(\n"
            "    countries=('country', 'count'),\n"
            "    population=('pop', 'sum'),\n"
            "    life_expectancy=('lifeExp', 'mean'),\n"
            ").round(1)\n"
            "display(summary)\n"
            "richest = latest[latest.continent == continent].nlargest(5, 'gdpPercap')"
            "[['country', 'gdpPercap', 'lifeExp']].round(1)\n"
            "display(richest.reset_index(drop=True))"
        ),
        code(
            "trend = df[df.continent == continent].groupby('year', as_index=False).lifeExp.mean()\n"
            "fig = px.line(trend, x='year', y='lifeExp', markers=True,\n"
            "              title=f'Life expectancy in {continent}', width=1000, height=420)\n"
            "fig.show()"
        ),
        md("## Explore"),
        code(
            "picker = widgets.Dropdown(options=sorted(df.continent.unique()), value=continent,\n"
            "                          description='Continent')\n"
            "chart = widgets.Output()\n\n"
            "def render(change=None):\n"
            "    with chart:\n"
            "        chart.clear_output(wait=True)\n"
            "        subset = latest[latest.continent == picker.value]\n"
            "        px.scatter(subset, x='gdpPercap', y='lifeExp', size='pop', hover_name='country',\n"
            "                   log_x=True, title=f'Wealth and health in {picker.value}').show()\n\n"
            "picker.observe(render, names='value')\n"
            "render()\n"
            "display(widgets.VBox([picker, chart]))"
        ),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def ensure_dash_app(session, settings: CarnetSettings, org_id: int, user_id: int, result: DemoResult) -> int:
    """The sample dashboard made only of ``carnet.dash`` blocks, over the same source."""
    app = session.scalar(select(App).where(App.org_id == org_id, App.slug == DASH_APP))
    if app is None:
        app = publish(
            session,
            settings,
            org_id=org_id,
            user_id=user_id,
            slug=DASH_APP,
            title=DASH_TITLE,
            notebook=dash_notebook(),
            description="A carnet.dash dashboard: filters, KPIs, charts, a map and a paged table",
        )
        result.created.append(f"app {DASH_APP}")
    return app.id


def load_demo_data(settings: CarnetSettings, org_id: int) -> int:
    import plotly.data

    from carnet.loads import load_table  # noqa: PLC0415 - the load engine imports the warehouse modules

    if DEMO_TABLE in open_warehouse(settings, org_id).tables():
        return 0
    return load_table(settings, org_id, DEMO_TABLE, plotly.data.gapminder(), origin="demo").rows_out


def seed_demo(settings: CarnetSettings) -> DemoResult:
    upgrade(settings.db_url)
    result = DemoResult()
    with session_scope(settings.db_url) as session:
        orgs = {slug: ensure_org(session, slug, name) for slug, name in DEMO_ORGS.items()}
        users = {
            email: ensure_user(session, orgs[org], email, role, result) for org, email, role in DEMO_USERS
        }
        acme_id, studio_id = orgs["acme"].id, users["studio@acme.example"].id
    # Between two transactions: a load writes its history in transactions of its own (SQLite has one writer).
    if load_demo_data(settings, acme_id):
        result.created.append(f"warehouse table {DEMO_TABLE}")
    with session_scope(settings.db_url) as session:
        acme, studio = session.get(Organization, acme_id), session.get(User, studio_id)
        if (
            session.scalar(
                select(DataSource).where(DataSource.org_id == acme.id, DataSource.name == DEMO_SOURCE)
            )
            is None
        ):
            session.add(
                DataSource(
                    org_id=acme.id,
                    name=DEMO_SOURCE,
                    kind="warehouse_table",
                    description="Gapminder: countries by year",
                    options={"table": DEMO_TABLE},
                    created_by=studio.id,
                )
            )
            result.created.append(f"source {DEMO_SOURCE}")

        app = session.scalar(select(App).where(App.org_id == acme.id, App.slug == DEMO_APP))
        if app is None:
            app = publish(
                session,
                settings,
                org_id=acme.id,
                user_id=studio.id,
                slug=DEMO_APP,
                title="World development",
                notebook=demo_notebook(),
                description="Life expectancy, population and wealth by continent",
            )
            result.created.append(f"app {DEMO_APP}")
        result.app_id = app.id
        result.dash_app_id = ensure_dash_app(session, settings, acme.id, studio.id, result)

        job = session.scalar(select(Job).where(Job.org_id == acme.id, Job.name == DEMO_JOB))
        if job is None:
            job = Job(
                org_id=acme.id,
                name=DEMO_JOB,
                app_id=app.id,
                cron="0 6 * * *",
                timezone="UTC",
                parameters={"continent": "Europe"},
                recipients=[DEMO_RECIPIENT],
                owner_id=studio.id,
                next_run_at=next_fire_time("0 6 * * *", "UTC", utcnow()),
            )
            session.add(job)
            session.flush()
            result.created.append(f"job {DEMO_JOB!r}")
        result.job_id = job.id
    return result
