"""``carnet.dash``: dashboards as a dozen readable lines.

::

    from carnet import dash
    year = dash.Dropdown("year", value=2007, all_label=None)
    continent = dash.Dropdown("continent")
    dash.Dashboard(
        dash.Row(dash.KPI("Population", {"pop": "sum"}, compare=year),
                 dash.KPI("Countries", {"country": "count_distinct"})),
        dash.Tabs({"Charts": dash.Chart("bar", x="continent", y="pop"),
                   "Rows": dash.Table(["country", "pop"], order_by=("pop", "desc"))}),
        filters=[year, continent], source="gapminder")

Pieces: ``query.py`` (queries as data, dedup), ``filters.py``, ``blocks.py`` (KPI; Chart in ``charts.py``,
Table in ``table.py``, Text in ``text.py``), ``layout.py``, ``dashboard.py`` (the wiring), ``theme.py``.
"""

from carnet.kernel_helpers.dash.blocks import KPI, Block, Chart, Table, Text
from carnet.kernel_helpers.dash.dashboard import Dashboard
from carnet.kernel_helpers.dash.filters import ALL, DateRange, Dropdown, MultiSelect, NumberRange, TextSearch
from carnet.kernel_helpers.dash.layout import Column, Grid, Row, Tabs
from carnet.kernel_helpers.dash.query import Query, QueryBatch
from carnet.kernel_helpers.dash.theme import Theme

__all__ = [
    "ALL",
    "KPI",
    "Block",
    "Chart",
    "Column",
    "Dashboard",
    "DateRange",
    "Dropdown",
    "Grid",
    "MultiSelect",
    "NumberRange",
    "Query",
    "QueryBatch",
    "Row",
    "Table",
    "Tabs",
    "Text",
    "TextSearch",
    "Theme",
]
