"""The demo's sample dashboard made only of ``carnet.dash`` blocks, over the demo's gapminder source.

Seeded by ``carnet/demo.py`` as the app "World dashboard" (``DemoResult.dash_app_id``; the tests use it as
``carnet_stack.dash_app_id``). Its first cell is tagged ``filters`` (the Viewer's sticky bar): it builds the
dashboard and shows its filters; after a heading, the last cell shows the rest. The year filter applies to
every block but the trend over time (``applies_to``).
"""

from __future__ import annotations

import nbformat

DASH_APP = "world-dashboard"
DASH_TITLE = "World dashboard"
PAGE_SIZE = 10

SETUP = f"""\
from carnet import dash

by_year = ["population", "countries", "life", "summary", "by_continent", "map", "rows"]
year = dash.Dropdown("year", value=2007, all_label=None, applies_to=by_year)
continent = dash.Dropdown("continent")
board = dash.Dashboard(
    dash.Row(
        dash.KPI("Population", {{"pop": "sum"}}, compare=year, name="population"),
        dash.KPI("Countries", {{"country": "count_distinct"}}, name="countries"),
        dash.KPI("Life expectancy", {{"lifeExp": "avg"}}, compare=year, format=".1f", name="life"),
    ),
    dash.Text(
        "In **{{continent}}**, {{year}}, people lived {{life:.2f}} years on average.",
        life=dash.Query.of("gapminder", aggregates={{"lifeExp": "avg"}}),
        name="summary",
    ),
    dash.Tabs({{
        "Charts": dash.Column(
            dash.Grid(
                dash.Chart("bar", x="continent", y="pop", title="Population by continent",
                           name="by_continent"),
                dash.Chart("line", x="year", y="pop", color="continent", title="Population over time",
                           name="over_time"),
                columns=2,
            ),
            dash.Chart("map", x="country", y="lifeExp", agg="avg", title="Life expectancy by country",
                       name="map"),
        ),
        "Rows": dash.Table(
            ["country", "continent", "pop", "lifeExp", "gdpPercap"],
            order_by=("pop", "desc"),
            page_size={PAGE_SIZE},
            formats={{"lifeExp": ".1f", "gdpPercap": ",.0f"}},
            name="rows",
        ),
    }}),
    filters=[year, continent],
    source="gapminder",
    show_filters=False,
)
board.filter_bar"""


def dash_notebook() -> dict:
    setup = nbformat.v4.new_code_cell(SETUP, metadata={"tags": ["filters"]})
    # A "# " heading: the cells after it are content, placed below the filters bar (cells before any heading
    # or tab tag are the template's "pre" part, shown above the bar).
    heading = nbformat.v4.new_markdown_cell(
        f"# {DASH_TITLE}\nPopulation and life expectancy (Gapminder data)."
    )
    notebook = nbformat.v4.new_notebook(cells=[setup, heading, nbformat.v4.new_code_cell("board")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook
