"""Dashboard filters bound to a source column: each one is a widget plus the where conditions its value
means, in the query service's format (carnet/query/spec.py), so a filter's value never becomes SQL text.

A filter applies to every block of its source (``applies_to=None``) or to the blocks named in
``applies_to``. Its value is read from and written to the Viewer's URL by ``carnet.filters.bind`` (the
parameter is the filter's ``name``, by default its column; ranges use ``<name>_from`` / ``<name>_to``).
Options of a ``Dropdown``/``MultiSelect`` are the column's distinct values, asked of the query service,
so the viewer's row rules apply to them as to the data.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

import ipywidgets as widgets

from carnet.kernel_helpers import filters as url_filters
from carnet.kernel_helpers.dash.base import log_failure
from carnet.kernel_helpers.dash.query import Fetch, Query

MAX_OPTIONS = 1000


class _All:
    """The "no filter" choice of a dropdown (a value no column holds)."""

    def __repr__(self):
        return "All"


ALL = _All()


def _url_name(column: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", column)[:40]
    return name if name[:1].isalpha() else f"f{name}"[:40]


def _plain(value):
    """A value as JSON carries it to the service (numpy scalars -> Python, dates -> ISO text)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


class Filter:
    """Base of the filters: ``column`` of ``source`` (the dashboard's source when None)."""

    def __init__(
        self,
        column: str,
        source: str | None = None,
        label: str | None = None,
        name: str | None = None,
        applies_to: Iterable[str] | None = None,
        url: bool = True,
    ):
        self.column = column
        self.source = source
        self.label = label or column.replace("_", " ").capitalize()
        self.name = name or _url_name(column)
        self.applies_to = None if applies_to is None else frozenset(applies_to)
        self.url = url
        self.widget: widgets.Widget | None = None
        self.failed = False  # its options could not be read: the blocks it applies to show an error

    # -- what the dashboard calls -------------------------------------------------------------------------
    def setup(self, fetch: Fetch, default_source: str | None) -> widgets.Widget:
        """Build the widget (asking the service for options if needed) and bind it to the URL."""
        self.source = self.source or default_source
        try:
            self.widget = self._build(fetch)
        except Exception:  # noqa: BLE001 - a filter that cannot load must not take the dashboard down
            log_failure(f"filter {self.name!r}")
            self.failed = True
            self.widget = widgets.Dropdown(options=[], description=self.label, disabled=True)
            self.widget.add_class("carnet-dash-filter-failed")
            return self.widget
        if self.url:
            for widget, suffix in self._url_widgets():
                url_filters.bind(widget, self.name + suffix)
        return self.widget

    def applies(self, block) -> bool:
        if self.applies_to is not None:
            return block.name in self.applies_to
        return block.query_source == self.source

    def observe(self, callback) -> None:
        if self.failed:
            return
        for widget, _suffix in self._url_widgets():
            widget.observe(lambda _change: callback(self), names="value")

    def conditions(self) -> list[tuple]:
        """The where conditions of the current value; none when the filter is open."""
        raise NotImplementedError

    def current(self):
        """The value as text templates show it."""
        return self.widget.value

    def previous_conditions(self) -> list[tuple] | None:
        """The conditions of the period before the current one (KPI comparisons), or None."""
        return None

    # -- subclasses ---------------------------------------------------------------------------------------
    def _build(self, fetch: Fetch) -> widgets.Widget:
        raise NotImplementedError

    def _url_widgets(self) -> list[tuple[widgets.Widget, str]]:
        return [(self.widget, "")]

    def _distinct(self, fetch: Fetch) -> list:
        query = Query.of(self.source, group_by=[self.column], order_by=[self.column], limit=MAX_OPTIONS)
        values = fetch(query)[self.column].tolist()
        return [_plain(v) for v in values if v is not None and v == v]  # no NULL/NaN choice


class Dropdown(Filter):
    """One value of the column, or ``All`` (no condition) unless ``all_label=None``."""

    def __init__(self, column, *, value=ALL, all_label: str | None = "All", **kwargs):
        super().__init__(column, **kwargs)
        self.default = value
        self.all_label = all_label
        self.options: list = []

    def _build(self, fetch):
        self.options = self._distinct(fetch)
        pairs = [(str(v), v) for v in self.options]
        if self.all_label is not None:
            pairs.insert(0, (self.all_label, ALL))
        value = self.default if self.default in [p[1] for p in pairs] else (pairs[0][1] if pairs else None)
        return widgets.Dropdown(options=pairs, value=value, description=self.label)

    def current(self):
        return self.all_label if self.widget.value is ALL else self.widget.value

    def conditions(self):
        value = self.widget.value
        return [] if value is ALL or value is None else [(self.column, "=", value)]

    def previous_conditions(self):
        """The option before the chosen one (the previous year of a year dropdown)."""
        value = self.widget.value
        if value is ALL or value not in self.options:
            return None
        index = self.options.index(value)
        return [(self.column, "=", self.options[index - 1])] if index > 0 else None


class MultiSelect(Filter):
    """Any of the chosen values; nothing chosen means no condition."""

    def __init__(self, column, *, value=(), rows: int = 5, **kwargs):
        super().__init__(column, **kwargs)
        self.default = tuple(value)
        self.rows = rows

    def _build(self, fetch):
        options = self._distinct(fetch)
        chosen = tuple(v for v in self.default if v in options)
        return widgets.SelectMultiple(options=options, value=chosen, rows=self.rows, description=self.label)

    def current(self):
        return ", ".join(map(str, self.widget.value)) or "All"

    def conditions(self):
        chosen = list(self.widget.value)
        return [(self.column, "in", chosen)] if chosen else []


class _Range(Filter):
    """Two bounds, each optional: ``>=`` low, ``<=`` high."""

    def __init__(self, column, *, low=None, high=None, **kwargs):
        super().__init__(column, **kwargs)
        self.low, self.high = low, high
        self.low_widget: widgets.Widget | None = None
        self.high_widget: widgets.Widget | None = None

    def _url_widgets(self):
        return [(self.low_widget, "_from"), (self.high_widget, "_to")]

    def bounds(self):
        return self.low_widget.value, self.high_widget.value

    def current(self):
        return " – ".join("" if v is None else str(v) for v in self.bounds())

    def conditions(self):
        low, high = self.bounds()
        found = []
        if low is not None:
            found.append((self.column, ">=", _plain(low)))
        if high is not None:
            found.append((self.column, "<=", _plain(high)))
        return found

    def _shifted(self, step):
        """The range of the same length just before this one (both bounds needed)."""
        low, high = self.bounds()
        if low is None or high is None or high < low:
            return None
        before_high = low - step
        before_low = before_high - (high - low)
        return [(self.column, ">=", _plain(before_low)), (self.column, "<=", _plain(before_high))]


class DateRange(_Range):
    """From/to dates (inclusive). On a timestamp column, ``to`` is the day's start: pick the day after."""

    def _build(self, fetch):
        self.low_widget = widgets.DatePicker(value=self.low, description=f"{self.label} from")
        self.high_widget = widgets.DatePicker(value=self.high, description="to")
        return widgets.HBox([self.low_widget, self.high_widget])

    def previous_conditions(self):
        return self._shifted(dt.timedelta(days=1))


class NumberRange(_Range):
    """Numbers from/to (inclusive); ``step`` is the column's unit, for the previous-period comparison."""

    def __init__(self, column, *, low=None, high=None, step=1, **kwargs):
        super().__init__(column, low=low, high=high, **kwargs)
        self.step = step

    def _build(self, fetch):
        low, high = self.low, self.high
        if low is None or high is None:  # the column's extent, as the viewer may see it
            minimum = fetch(Query.of(self.source, aggregates={self.column: "min"}))[self.column].iloc[0]
            maximum = fetch(Query.of(self.source, aggregates={self.column: "max"}))[self.column].iloc[0]
            low = _plain(minimum) if low is None else low
            high = _plain(maximum) if high is None else high
        self.low_widget = widgets.FloatText(value=low or 0, description=f"{self.label} from")
        self.high_widget = widgets.FloatText(value=high or 0, description="to")
        return widgets.HBox([self.low_widget, self.high_widget])

    def previous_conditions(self):
        return self._shifted(self.step)


class TextSearch(Filter):
    """Rows whose column contains the text, in any case (``%`` and ``_`` are plain characters)."""

    def _build(self, fetch):
        return widgets.Text(value="", description=self.label, continuous_update=False)

    def conditions(self):
        text = self.widget.value.strip()
        return [(self.column, "contains", text)] if text else []
