"""Dashboard blocks: KPI cards (here), plotly charts (``charts.py``), server-side paged tables
(``table.py``), templated text (``text.py``); the common states are in ``base.py``."""

from __future__ import annotations

import html

from carnet.kernel_helpers.dash.base import BLANK, ERROR, Block, _scalar, fmt
from carnet.kernel_helpers.dash.charts import Chart
from carnet.kernel_helpers.dash.query import Query
from carnet.kernel_helpers.dash.table import Table
from carnet.kernel_helpers.dash.text import Text


class KPI(Block):
    """One aggregate (``value={"pop": "sum"}``), compared with the previous period of the ``compare``
    filter (the option before the chosen one, or the range of the same length before)."""

    kind = "kpi"

    def __init__(
        self, title: str, value: dict, compare=None, format: str | None = ",.0f", higher_is_better=True, **kw
    ):
        super().__init__(title=title, **kw)
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError("KPI value is one aggregate: {column: function}")
        ((self.column, self.func),) = value.items()
        self.compare = compare
        self.format = format
        self.higher_is_better = higher_is_better

    @property
    def result_column(self) -> str:
        return "count" if self.column == "*" else self.column

    def queries(self, extra) -> tuple[Query, Query | None]:
        current = self.base(aggregates={self.column: self.func}).narrowed(extra)
        previous = None
        before = self.compare.previous_conditions() if self.compare is not None else None
        if before is not None:
            own = set(Query.of("x", where=self.compare.conditions()).where)
            kept = [c for c in Query.of("x", where=extra).where if c not in own]
            previous = self.base(aggregates={self.column: self.func}).narrowed([*kept, *before])
        return current, previous

    def draw(self, batch, extra, context, filters):
        current, previous = self.queries(extra)
        value = _scalar(batch.get(current), self.result_column)
        if value is None:
            return False
        delta = ""
        if previous is not None:
            before = _scalar(batch.get(previous), self.result_column)
            if before:
                change = (value - before) / abs(before)
                good = (change >= 0) == self.higher_is_better
                direction = "up" if change >= 0 else "down"
                colour = self.theme.up if good else self.theme.down
                arrow = "▲" if change >= 0 else "▼"
                delta = (
                    f'<div class="carnet-kpi-delta carnet-kpi-{direction}" style="color:{colour}">'
                    f"{arrow} {abs(change):.1%} vs previous</div>"
                )
        self.body.value = (
            f'<div class="carnet-kpi" style="border-left:4px solid {self.theme.primary};padding:8px 12px">'
            f'<div class="carnet-kpi-title" style="color:#57606a">{html.escape(self.title)}</div>'
            f'<div class="carnet-kpi-value" style="font-size:2em;font-weight:600">'
            f"{html.escape(fmt(value, self.format))}</div>{delta}</div>"
        )
        return True


__all__ = ["BLANK", "ERROR", "KPI", "Block", "Chart", "Table", "Text", "fmt"]
