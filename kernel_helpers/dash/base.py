"""The base of dashboard blocks (``Block``): states and the common query.

Each block declares what it reads (``Block.query``, plus the queries its kind derives from it) and draws
itself from answers of a ``QueryBatch``. Every block has the same two other states: blank ("No data for
these filters") and error (a generic message; the detail goes to the kernel process's stderr, i.e. the
Viewer's log, never to the page). Output is plain ipywidgets, so it renders alike in JupyterLab and Voila.
"""

from __future__ import annotations

import html
import itertools
import logging
import math

import ipywidgets as widgets
import pandas as pd

from carnet.kernel_helpers.dash.query import Query, QueryBatch
from carnet.kernel_helpers.dash.theme import Theme
from carnet.kernel_helpers.process_log import process_logger

BLANK = "No data for these filters."
ERROR = (
    "This part of the dashboard could not be loaded. The error has been logged for the authors of the app."
)
log = logging.getLogger("carnet.dash")
_counter = itertools.count(1)


class BlockError(Exception):
    """A failure whose message is written for the people looking (no detail of the system): shown as is in
    the block's error state instead of the generic message."""


def _log_to_process_stderr() -> None:
    # The detail belongs in the Viewer's log only, never in the page.
    process_logger(log.name)


def log_failure(what: str) -> None:
    """The current exception with its traceback, to the kernel process's stderr (the Viewer's log)."""
    _log_to_process_stderr()
    log.exception("carnet.dash: %s failed", what)


def fmt(value, spec: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return format(value, spec) if spec else (f"{value:,}" if isinstance(value, int) else str(value))
    except (TypeError, ValueError):
        return str(value)


class Block:
    kind = "block"

    def __init__(self, source: str | None = None, where=None, name: str | None = None, title: str = ""):
        self.source = source
        self.where = where
        self.name = name or f"{self.kind}{next(_counter)}"
        self.title = title
        self.theme = Theme()
        self.state = "new"  # new, ready, blank, error
        self.debug = False  # Dashboard(debug=True): the error's one-line message is shown (for authors)
        self.body = widgets.Output() if self.kind == "chart" else widgets.HTML()
        self.widget = widgets.VBox([self.body])
        self.widget.add_class(f"carnet-dash-{self.kind}")

    @property
    def query_source(self) -> str | None:
        return self.source

    def base(self, **fields) -> Query:
        return Query.of(self.source, where=self.where, **fields)

    def update(self, batch: QueryBatch, extra: list[tuple], context: dict, filters=()) -> None:
        """Re-read and redraw with the filters' ``extra`` conditions; never raises."""
        try:
            drawn = self.draw(batch, extra, context, filters)
        except Exception as error:  # noqa: BLE001 - every failure of a block is its error state
            log_failure(f"block {self.name!r}")
            detail = f" ({type(error).__name__}: {getattr(error, 'message', error)})" if self.debug else ""
            self.show_message(str(error) if isinstance(error, BlockError) else ERROR + detail, "error")
            return
        if drawn is False:
            self.show_message(BLANK, "blank")
        else:
            self.state = "ready"

    def draw(self, batch, extra, context, filters) -> bool | None:
        raise NotImplementedError

    def show_message(self, text: str, state: str) -> None:
        self.state = state
        style = "color:#57606a;padding:12px 4px"
        box = f'<div class="carnet-dash-{state}" style="{style}">{html.escape(text)}</div>'
        title = f"<b>{html.escape(self.title)}</b>" if self.title else ""
        if isinstance(self.body, widgets.Output):
            self.body.clear_output()
            self.widget.children = [widgets.HTML(title + box), self.body]
        else:
            self.body.value = title + box


def _scalar(frame: pd.DataFrame, column: str):
    if frame.empty or column not in frame:
        return None
    value = frame[column].iloc[0]
    if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value
