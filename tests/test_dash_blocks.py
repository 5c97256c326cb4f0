"""carnet.dash's blocks and their wiring, on real ipywidgets and the real spec compiler behind a recording
stand-in of the API (tests/dash_support.py): what each block shows, its blank and error states, which
blocks a filter change reads again, identical queries sent once, server-side table pages, layouts."""

from __future__ import annotations

import base64

import ipywidgets as widgets
import pytest

from carnet.kernel_helpers import dash
from tests.dash_support import RecordingApi, gapminder

POP_2007, POP_2002 = 6_251_013_179, 5_886_977_579
EUROPE_2007 = 586_098_529


@pytest.fixture
def api():
    return RecordingApi({"gapminder": gapminder(), "other": gapminder().head(20)})


def html_of(block) -> str:
    return block.body.value


def board(api, *content, **kwargs):
    return dash.Dashboard(*content, source="gapminder", fetch=api.fetch(), **kwargs)


def test_kpis_compare_with_the_previous_period_and_colour_the_direction(api):
    year = dash.Dropdown("year", value=2007, all_label=None, url=False)
    people = dash.KPI("Population", {"pop": "sum"}, compare=year, name="people")
    life = dash.KPI("Life expectancy", {"lifeExp": "avg"}, compare=year, format=".1f", name="life")
    deaths = dash.KPI("Lower is better", {"pop": "sum"}, compare=year, higher_is_better=False, name="inv")
    board(api, dash.Row(people, life, deaths), filters=[year])
    assert people.state == "ready" and f"{POP_2007:,}" in html_of(people)
    change = (POP_2007 - POP_2002) / POP_2002
    assert f"▲ {change:.1%} vs previous" in html_of(people) and "carnet-kpi-up" in html_of(people)
    assert "color:#1a7f37" in html_of(people)  # up and good: the theme's "up" colour
    assert "carnet-kpi-up" in html_of(deaths) and "color:#cf222e" in html_of(deaths)  # up but bad
    assert "67.0" in html_of(life)

    year.widget.value = 1952  # no period before: the value alone
    assert f"{2_406_957_150:,}" in html_of(people) and "vs previous" not in html_of(people)


def test_a_filter_change_reads_again_only_the_blocks_it_applies_to_and_dedups(api):
    continent = dash.Dropdown("continent", url=False)
    only_bar = dash.Dropdown("year", all_label="All", applies_to=["bar"], url=False)
    total = dash.KPI("People", {"pop": "sum"}, name="total")
    bar = dash.Chart("bar", x="continent", y="pop", name="bar")
    same = dash.KPI("People again", {"pop": "sum"}, name="same")  # the same query as "total"
    elsewhere = dash.KPI("Other rows", {"*": "count"}, source="other", name="elsewhere")
    made = board(api, total, bar, same, elsewhere, filters=[continent, only_bar])
    assert len(made.batches) == 1
    # total and same: one request; bar; elsewhere (another source: the continent filter does not apply).
    assert [q.source for q in made.batches[0].sent] == ["gapminder", "gapminder", "other"]
    assert html_of(total) == html_of(same).replace("People again", "People")
    assert "20" in html_of(elsewhere)

    before = len(api.requests)
    only_bar.widget.value = 2007
    sent = made.batches[-1].sent
    assert len(sent) == 1 and sent[0].group_by == ("continent",) and ("year", "=", 2007) in sent[0].where
    assert len(api.requests) == before + 1

    continent.widget.value = "Europe"
    sent = made.batches[-1].sent
    assert {q.source for q in sent} == {"gapminder"} and len(sent) == 2  # total+same once, bar
    europe = gapminder().query("continent == 'Europe'")["pop"].sum()
    assert f"{europe:,}" in html_of(total) and f"{europe:,}" in html_of(same)
    bar_query = next(q for q in sent if q.group_by)
    assert set(bar_query.where) == {("continent", "=", "Europe"), ("year", "=", 2007)}
    assert made.depends_on(elsewhere) == []


def test_blank_and_error_states_show_a_message_and_log_the_detail(api, capfd):
    search = dash.TextSearch("country", url=False)
    people = dash.KPI("People", {"pop": "sum"}, name="people")
    chart = dash.Chart("line", x="year", y="pop", name="line")
    rows = dash.Table(["country"], name="rows")
    api.tables["broken"] = gapminder()
    api.fail.add("broken")
    broken = dash.KPI("Broken", {"pop": "sum"}, source="broken", name="broken")
    bad_column = dash.Chart("bar", x="no_such_column", y="pop", name="bad")
    board(api, people, chart, rows, broken, bad_column, filters=[search])
    for block in (broken, bad_column):
        assert block.state == "error"
    assert dash.blocks.ERROR in html_of(broken) and "Traceback" not in html_of(broken)
    assert "source 'broken'" not in html_of(broken)
    assert dash.blocks.ERROR in bad_column.widget.children[0].value
    logged = capfd.readouterr().err
    assert "No source 'broken'" in logged and "Unknown column 'no_such_column'" in logged

    debugged = dash.KPI("Broken", {"pop": "sum"}, source="broken", name="debugged")
    board(api, debugged, debug=True)
    assert "(NotFound: No source &#x27;broken&#x27;)" in html_of(debugged) and "Traceback" not in html_of(
        debugged
    )

    search.widget.value = "no country is called this"
    for block in (people, chart, rows):
        assert block.state == "blank", block.name
    assert dash.blocks.BLANK in html_of(people) and dash.blocks.BLANK in html_of(rows)
    assert dash.blocks.BLANK in chart.widget.children[0].value
    search.widget.value = "land"
    assert people.state == chart.state == rows.state == "ready"
    assert chart.widget.children == (chart.body,)


def test_tables_page_on_the_server_sort_and_download(api):
    rows = dash.Table(
        ["country", "year", "pop"],
        page_size=4,
        order_by=("pop", "desc"),
        formats={"pop": ",.0f"},
        name="rows",
    )
    year = dash.Dropdown("year", value=2007, url=False)
    made = board(api, rows, filters=[year])
    page_query = made.batches[0].sent[-1]
    assert page_query.limit == 4 and page_query.offset == 0
    assert page_query.order_by == (("pop", "desc"), "country", "year")
    assert "Rows 1–4 of 142" in rows.position.value and "China" in html_of(rows)
    assert "1,318,683,096" in html_of(rows) and rows.previous_button.disabled

    before = len(api.requests)
    rows.go(1)
    assert api.requests[-1][1]["offset"] == 4 and api.requests[-1][1]["limit"] == 4
    assert len(api.requests) == before + 2  # this page and the total, nothing else
    assert "Rows 5–8 of 142" in rows.position.value and "China" not in html_of(rows)
    rows.go(35)
    assert "Rows 141–142 of 142" in rows.position.value and rows.next_button.disabled
    rows.go(36)  # past the end: nothing happens
    assert "Rows 141–142 of 142" in rows.position.value

    rows.sort_by("country")
    assert "Rows 1–4 of 142" in rows.position.value and "<td>Afghanistan</td>" in html_of(rows)
    assert rows.header_buttons["country"].description == "country ↑"
    year.widget.value = 1952  # a filter change starts again at the first page
    assert "Rows 1–4 of 142" in rows.position.value
    rows.go(2)
    rows.sort_by("pop", "asc")
    data = gapminder().query("year == 1952").sort_values("pop")
    assert "Rows 1–4 of 142" in rows.position.value
    assert f"<td>{data['country'].iloc[0]}</td>" in html_of(rows)
    assert api.requests[-1][1]["order_by"] == [["pop", "asc"], "country", "year"]

    rows.offer_download("csv")
    assert (
        'download="gapminder.csv"' in rows.download_links.value and "(142 rows)" in rows.download_links.value
    )
    csv = base64.b64decode(rows.download_links.value.split("base64,")[1].split('"')[0]).decode()
    assert csv.splitlines()[1].startswith(f"{data['country'].iloc[0]},1952,")  # the order shown
    rows.offer_download("xlsx")
    assert "spreadsheetml" in rows.download_links.value


def test_a_click_on_a_column_header_sorts_the_table_by_it(api):
    rows = dash.Table(
        ["country", "year", "lifeExp"], page_size=3, formats={"lifeExp": ".1f", "year": "d"}, name="rows"
    )
    year = dash.Dropdown("year", value=2007, url=False)
    search = dash.TextSearch("country", url=False)
    board(api, rows, filters=[year, search])
    header = rows.header_buttons
    assert list(header) == ["country", "year", "lifeExp"] and rows.header.children == tuple(header.values())
    assert rows.header.layout.grid_template_columns == "repeat(3, minmax(0, 1fr))"
    assert rows.header.layout.display == "grid" and "aria-sort" not in html_of(rows)
    assert [b.description for b in header.values()] == ["country", "year", "lifeExp"]
    data = gapminder().query("year == 2007").sort_values("lifeExp")
    shortest, longest = data.iloc[0], data.iloc[-1]

    rows.go(2)
    assert "Rows 7–9 of 142" in rows.position.value
    header["lifeExp"].click()  # what a person's click on the header does
    body = api.requests[-1][1]
    assert body["order_by"] == [["lifeExp", "asc"], "country", "year"] and "offset" not in body
    assert "Rows 1–3 of 142" in rows.position.value and rows.previous_button.disabled
    first_row = html_of(rows).split("<tbody><tr>")[1]
    assert first_row.startswith(
        f"<td>{shortest['country']}</td><td>2007</td><td>{shortest['lifeExp']:.1f}</td>"
    )
    assert (
        header["lifeExp"].description == "lifeExp ↑"
        and "carnet-dash-sorted" in header["lifeExp"]._dom_classes
    )
    assert header["lifeExp"].tooltip == "Sorted by lifeExp, ascending. Click to sort descending."
    assert '<th scope="col" aria-sort="ascending">lifeExp</th>' in html_of(rows)
    assert (
        header["country"].description == "country"
        and "carnet-dash-sorted" not in header["country"]._dom_classes
    )
    assert header["country"].tooltip == "Click to sort by country, ascending."

    rows.go(1)
    header["lifeExp"].click()  # again: the other direction, from the first page
    assert api.requests[-1][1]["order_by"] == [["lifeExp", "desc"], "country", "year"]
    assert "Rows 1–3 of 142" in rows.position.value
    assert html_of(rows).split("<tbody><tr>")[1].startswith(f"<td>{longest['country']}</td>")
    assert header["lifeExp"].description == "lifeExp ↓" and 'aria-sort="descending">lifeExp' in html_of(rows)
    header["lifeExp"].click()  # and back
    assert api.requests[-1][1]["order_by"][0] == ["lifeExp", "asc"]

    header["country"].click()  # another column: ascending, the marker moves
    assert api.requests[-1][1]["order_by"] == [["country", "asc"], "year", "lifeExp"]
    assert html_of(rows).split("<tbody><tr>")[1].startswith("<td>Afghanistan</td>")
    assert header["country"].description == "country ↑" and header["lifeExp"].description == "lifeExp"
    assert html_of(rows).count("aria-sort") == 1

    before = len(api.requests)
    with pytest.raises(ValueError, match="no column 'gdpPercap'"):
        rows.sort_by("gdpPercap")  # not shown: no header for it, and no query
    with pytest.raises(ValueError, match="'asc' or 'desc'"):
        rows.sort_by("year", "sideways")
    assert len(api.requests) == before and rows.sort == ("country", "asc")

    search.widget.value = "no country is called this"  # no rows: the message alone, no header
    assert rows.state == "blank" and rows.header.layout.display == "none"
    search.widget.value = ""
    year.widget.value = 1952  # the chosen order stays across filter changes
    assert rows.header.layout.display == "grid" and header["country"].description == "country ↑"
    assert api.requests[-1][1]["order_by"][0] == ["country", "asc"]


def test_a_table_of_every_column_has_a_header_button_for_each(api):
    rows = dash.Table(title="All of it", page_size=2, name="rows")
    board(api, rows)
    assert list(rows.header_buttons) == list(gapminder().columns)
    assert rows.caption.value == "<b>All of it</b>" and rows.caption.layout.display is None
    rows.header_buttons["pop"].click()
    assert api.requests[-1][1]["order_by"][0] == ["pop", "asc"]
    assert f"<td>{gapminder()['pop'].min():,}</td>" in html_of(rows)


def test_text_templates_values_and_filters_escaped(api):
    continent = dash.Dropdown("continent", value="Europe", url=False)
    text = dash.Text(
        "## {continent}\n**{people:,.0f}** people, {note}, {rows} rows",
        people=dash.Query.of("gapminder", aggregates={"pop": "sum"}, where={"year": 2007}),
        note="<script>alert(1)</script>",
        rows=dash.Query.of("other", aggregates={"*": "count"}),  # another source: not narrowed
        name="text",
    )
    board(api, text, filters=[continent])
    assert "<h2>Europe</h2>" in html_of(text) and f"<strong>{EUROPE_2007:,}</strong>" in html_of(text)
    assert "<script>" not in html_of(text) and "&lt;script&gt;" in html_of(text)
    continent.widget.value = dash.ALL
    assert "<h2>All</h2>" in html_of(text) and f"{POP_2007:,}" in html_of(text)
    assert "20 rows" in html_of(text)


def test_layouts_are_widget_containers_and_tabs_keep_every_panel(api):
    kpi = dash.KPI("People", {"pop": "sum"}, name="people")
    chart = dash.Chart("pie", x="continent", y="pop", name="pie")
    rows = dash.Table(["country"], name="rows")
    made = board(
        api, dash.Tabs({"Overview": dash.Row(kpi, chart), "Rows": dash.Grid(rows, "*Note*", columns=2)})
    )
    root = made.widget()
    assert "carnet-dash" in root._dom_classes and root.children[0] is made.filter_bar
    assert (
        made.filter_bar not in board(api, dash.KPI("a", {"pop": "sum"}), show_filters=False).widget().children
    )
    tabs = root.children[1]
    assert isinstance(tabs, widgets.Tab) and tabs.titles == ("Overview", "Rows")
    assert all("carnet-dash-tab" in panel._dom_classes for panel in tabs.children)
    # Each panel starts with its title, shown only in print (carnet.css), then the tab's content.
    headings = [panel.children[0] for panel in tabs.children]
    titled = [f'<h2 class="carnet-dash-tab-heading">{title}</h2>' for title in tabs.titles]
    assert [h.value for h in headings] == titled
    assert all(h.layout.display == "none" and "carnet-dash-tab-title" in h._dom_classes for h in headings)
    overview, second = (panel.children[1] for panel in tabs.children)
    assert isinstance(overview, widgets.HBox) and overview.children == (kpi.widget, chart.widget)
    assert isinstance(second, widgets.GridBox) and "<em>Note</em>" in second.children[1].value
    with pytest.raises(ValueError, match="same name"):
        board(api, dash.KPI("a", {"pop": "sum"}, name="x"), dash.KPI("b", {"pop": "sum"}, name="x"))
    with pytest.raises(ValueError, match="no source"):
        dash.Dashboard(dash.KPI("a", {"pop": "sum"}), fetch=api.fetch())
    with pytest.raises(ValueError, match="Unknown chart kind"):
        dash.Chart("radar", x="a", y="b")


@pytest.mark.parametrize("kind", ["bar", "line", "area", "pie", "scatter", "heatmap", "map"])
def test_every_chart_kind_draws_a_themed_figure(api, kind):
    options = {"y": "pop", "x": "continent"}
    if kind == "scatter":
        options = {"x": "gdpPercap", "y": "lifeExp", "color": "continent", "size": "pop"}
    if kind == "heatmap":
        options = {"x": "continent", "y": "year", "z": "pop"}
    if kind == "map":
        options = {"x": "country", "y": "lifeExp", "agg": "avg"}
    chart = dash.Chart(kind, name="c", title="T", **options)
    board(api, chart, theme=dash.Theme(primary="#aa3300"))
    assert chart.state == "ready"
    frame = api.fetch()(chart.query([]))
    figure = chart.figure(frame)
    assert figure.layout.colorway[0] == "#aa3300" and figure.layout.title.text == "T"
    if kind in ("bar", "area", "line"):
        trace = figure.data[0]
        drawn = trace.marker.color if kind == "bar" else trace.line.color
        assert drawn == "#aa3300"
    assert len(figure.data) >= 1


def test_a_filter_whose_options_cannot_be_read_stops_only_the_blocks_it_applies_to(api, capfd):
    api.tables["regions"] = gapminder()
    api.fail.add("regions")  # the options query of the filter fails
    region = dash.Dropdown("continent", source="regions", all_label=None, url=False)
    theirs = dash.KPI("People", {"pop": "sum"}, source="regions", name="theirs")
    ours = dash.KPI("People", {"pop": "sum"}, name="ours")  # gapminder: the filter does not apply
    board(api, theirs, ours, filters=[region])
    assert region.failed and region.widget.disabled
    assert theirs.state == "error" and "filter Continent" in html_of(theirs)
    assert "No source" not in html_of(theirs)  # the cause goes to the log, not to the page
    assert ours.state == "ready"
    assert "filter 'continent' failed" in capfd.readouterr().err
