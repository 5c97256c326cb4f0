"""carnet.dash's queries, as data: filters -> where conditions in the query service's format, identical
queries sent once per refresh, and the query spec's ``offset`` (pages of a table) through both compilers.
The service side is the real spec parser and DuckDB compiler (tests/dash_support.py)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import unquote

import pytest
import sqlalchemy as sa

from carnet.errors import NotFound, ValidationError
from carnet.kernel_helpers.dash import (
    ALL,
    DateRange,
    Dropdown,
    MultiSelect,
    NumberRange,
    Query,
    QueryBatch,
    TextSearch,
)
from carnet.kernel_helpers.filters import CLASS_PREFIX
from carnet.query.spec import parse_spec, to_duckdb, to_sqlalchemy
from tests.dash_support import RecordingApi, gapminder
from tests.test_query_spec import _run_all, duck, maria, pg  # noqa: F401 - duck, maria, pg are fixtures


@pytest.fixture
def api():
    return RecordingApi({"gapminder": gapminder()})


def url_mark(widget) -> str:
    return unquote(next(c for c in widget._dom_classes if c.startswith(CLASS_PREFIX))[len(CLASS_PREFIX) :])


def test_a_query_is_the_body_of_the_query_route_and_narrows_without_duplicates():
    query = Query.of(
        "gapminder",
        group_by="continent",
        aggregates={"pop": "sum"},
        where={"year": 2007},
        order_by="continent",
    )
    assert query.body() == {
        "group_by": ["continent"],
        "aggregates": {"pop": "sum"},
        "where": [["year", "=", 2007]],
        "order_by": ["continent"],
        "variables": {},
    }
    narrowed = query.narrowed([("continent", "in", ["Asia", "Europe"]), ("year", "=", 2007)])
    assert narrowed.body()["where"] == [["year", "=", 2007], ["continent", "in", ["Asia", "Europe"]]]
    assert hash(narrowed) and narrowed.key() != query.key()
    assert query.page(40, 20).body()["offset"] == 40 and query.page(0, 20).body()["limit"] == 20
    assert query.counted().body() == {
        "aggregates": {"*": "count"},
        "where": [["year", "=", 2007]],
        "variables": {},
    }
    with pytest.raises(ValueError, match="source"):
        Query.of("")


def test_dropdown_options_come_from_a_distinct_query_and_its_value_is_a_condition(api):
    continent = Dropdown("continent", source="gapminder", url=False)
    continent.setup(api.fetch(), None)
    assert api.bodies() == [
        {"group_by": ["continent"], "order_by": ["continent"], "limit": 1000, "variables": {}}
    ]
    assert continent.widget.options[0] == ("All", ALL)
    assert [label for label, _ in continent.widget.options[1:]] == [
        "Africa",
        "Americas",
        "Asia",
        "Europe",
        "Oceania",
    ]
    assert continent.conditions() == []  # All: no condition
    continent.widget.value = "Asia"
    assert continent.conditions() == [("continent", "=", "Asia")]

    year = Dropdown("year", value=2002, all_label=None, url=False)
    year.setup(api.fetch(), "gapminder")  # the dashboard's source
    assert year.conditions() == [("year", "=", 2002)]
    assert year.previous_conditions() == [("year", "=", 1997)]  # the option before
    year.widget.value = 1952
    assert year.previous_conditions() is None


def test_multi_select_range_and_search_conditions(api):
    fetch = api.fetch()
    several = MultiSelect("continent", source="gapminder", value=("Asia", "Mars"), url=False)
    several.setup(fetch, None)
    assert several.widget.value == ("Asia",)  # a default that is not an option is dropped
    assert several.conditions() == [("continent", "in", ["Asia"])]
    several.widget.value = ()
    assert several.conditions() == []

    days = DateRange("day", source="events", low=dt.date(2024, 1, 11), high=dt.date(2024, 1, 20), url=False)
    days.setup(fetch, None)
    assert days.conditions() == [("day", ">=", "2024-01-11"), ("day", "<=", "2024-01-20")]
    assert days.previous_conditions() == [("day", ">=", "2024-01-01"), ("day", "<=", "2024-01-10")]
    days.low_widget.value = None
    assert days.conditions() == [("day", "<=", "2024-01-20")] and days.previous_conditions() is None

    years = NumberRange("year", source="gapminder", url=False)
    years.setup(fetch, None)  # bounds from the column's min and max
    assert years.conditions() == [("year", ">=", 1952), ("year", "<=", 2007)]
    years.low_widget.value, years.high_widget.value = 2000, 2007
    assert years.previous_conditions() == [("year", ">=", 1992), ("year", "<=", 1999)]

    search = TextSearch("country", source="gapminder", url=False)
    search.setup(fetch, None)
    assert search.conditions() == []
    search.widget.value = "  land "
    assert search.conditions() == [("country", "contains", "land")]
    # Every condition is valid for the real spec parser of the query service.
    where = [list(c) for f in (several, years, search) for c in f.conditions()]
    parse_spec({"where": where}, gapminder().columns)


def test_filters_read_and_write_the_viewers_url(api, monkeypatch):
    monkeypatch.setenv("QUERY_STRING", "continent=Europe&year_from=1990&year_to=2000&country=ger")
    continent = Dropdown("continent", source="gapminder")
    years = NumberRange("year", source="gapminder")
    country = TextSearch("country", source="gapminder")
    for f in (continent, years, country):
        f.setup(api.fetch(), None)
    assert continent.conditions() == [("continent", "=", "Europe")]
    assert years.conditions() == [("year", ">=", 1990.0), ("year", "<=", 2000.0)]
    assert country.conditions() == [("country", "contains", "ger")]
    continent.widget.value = ALL
    assert url_mark(continent.widget) == "continent=All"
    continent.widget.value = "Asia"
    assert url_mark(continent.widget) == "continent=Asia"
    assert url_mark(years.high_widget) == "year_to=2000.0"
    monkeypatch.setenv("QUERY_STRING", "continent=Atlantis")
    assert Dropdown("continent", source="gapminder").setup(api.fetch(), None).value is ALL


def test_a_batch_sends_identical_queries_once_and_shares_errors(api):
    batch = QueryBatch(api.fetch())
    total = Query.of("gapminder", aggregates={"pop": "sum"}, where={"year": 2007})
    again = Query.of("gapminder", aggregates={"pop": "sum"}).narrowed([("year", "=", 2007)])
    first = batch.get(total)
    first.loc[0, "pop"] = -1  # a block changing its frame does not change another block's
    assert batch.get(again)["pop"].iloc[0] == 6_251_013_179
    assert len(api.requests) == 1 and batch.sent == [total]
    missing = Query.of("nope", aggregates={"*": "count"})
    for _ in range(2):
        with pytest.raises(NotFound):
            batch.get(missing)
    assert len(api.requests) == 2


def test_offset_in_the_query_spec_pages_through_both_compilers():
    spec = parse_spec({"order_by": ["n"], "limit": 2, "offset": 3}, ["n"])
    assert spec.offset == 3 and parse_spec(spec, ["n"]).offset == 3
    sql, params = to_duckdb(spec, "t")
    assert sql.endswith("LIMIT ? OFFSET ?") and params == [2, 3]
    assert "OFFSET" not in to_duckdb(parse_spec({"limit": 2}, ["n"]), "t")[0]
    for bad in (-1, "3", True, 1.5):
        with pytest.raises(ValidationError, match="offset") as error:
            parse_spec({"offset": bad}, ["n"])
        assert error.value.fields == {"field": "offset"}

    engine = sa.create_engine("sqlite://")
    table = sa.Table("t", sa.MetaData(), sa.Column("n", sa.Integer))
    with engine.begin() as conn:
        table.create(conn)
        conn.execute(table.insert(), [{"n": i} for i in range(10)])
        rows = conn.execute(to_sqlalchemy({"order_by": ["n"], "limit": 2, "offset": 3}, table)).scalars()
        assert list(rows) == [3, 4]
        rows = conn.execute(to_sqlalchemy({"order_by": [["n", "desc"]], "offset": 8}, table)).scalars()
        assert list(rows) == [1, 0]


def test_offset_pages_agree_on_every_engine(duck, pg, maria):  # noqa: F811 - the imported fixtures
    """A table's pages pushed down to PostgreSQL and MariaDB (which needs a LIMIT with an OFFSET) are
    the warehouse's pages."""
    for spec, ids in (
        ({"columns": ["id"], "order_by": ["id"], "limit": 2, "offset": 2}, [3.0, 4.0]),
        ({"columns": ["id"], "order_by": [["id", "desc"]], "offset": 4}, [2.0, 1.0]),
        ({"group_by": ["region"], "order_by": ["region"], "limit": 1, "offset": 1}, None),
    ):
        results = _run_all(spec, duck, pg, maria)
        first = results["duckdb"]
        assert ids is None or [row[0] for row in first] == ids
        assert len(first) == (len(ids) if ids else 1)
        assert results["postgresql"] == first and results["mariadb"] == first
