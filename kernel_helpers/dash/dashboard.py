"""``Dashboard``: filters wired to the blocks they apply to.

At display, every block is read once (one ``QueryBatch``: identical queries of different blocks are sent
once). When a filter changes, only the blocks it applies to are read again (again in one batch); a KPI
comparing with the previous period of a filter depends on that filter too, and text blocks on every filter
(they may show filter values). The filters bar and the body are separate widgets, so an author may show
``board.filter_bar`` in a cell tagged ``filters`` (the Viewer's sticky bar) and ``Dashboard(...,
show_filters=False)`` in another cell.
"""

from __future__ import annotations

from collections import deque

import ipywidgets as widgets
from IPython.display import display

from carnet.kernel_helpers.dash.base import Block
from carnet.kernel_helpers.dash.filters import Filter
from carnet.kernel_helpers.dash.layout import Column, Layout
from carnet.kernel_helpers.dash.query import Fetch, QueryBatch, api_fetch
from carnet.kernel_helpers.dash.text import Text
from carnet.kernel_helpers.dash.theme import Theme

FILTER_FAILED = "This part of the dashboard depends on the filter {label}, which could not be loaded."


class Dashboard:
    def __init__(
        self,
        *content,
        filters: list[Filter] = (),
        source: str | None = None,
        theme: Theme | None = None,
        fetch: Fetch | None = None,
        show_filters: bool = True,
        debug: bool = False,
    ):
        """``show_filters=False`` leaves ``filter_bar`` out of the display, for a cell tagged ``filters`` (the
        Viewer's sticky bar); ``debug=True`` adds the error's message to a failed block (no traceback)."""
        self.layout = content[0] if len(content) == 1 and isinstance(content[0], Layout) else Column(*content)
        self.filters = list(filters)
        self.source = source
        self.theme = theme or Theme()
        if fetch is None:
            from carnet.kernel_helpers import sources

            fetch = api_fetch(sources)
        self.fetch = fetch
        self.blocks: list[Block] = list(self.layout.blocks())
        names = [block.name for block in self.blocks]
        if len(set(names)) != len(names):
            raise ValueError("Two blocks of the dashboard have the same name")
        for block in self.blocks:
            block.source = block.source or source
            block.theme = self.theme
            block.debug = debug
            if block.source is None and not isinstance(block, Text):
                raise ValueError(f"Block {block.name!r} has no source: give it one, or Dashboard(source=...)")
        bar = [f.setup(fetch, source) for f in self.filters]
        self.filter_bar = widgets.HBox(bar, layout=widgets.Layout(flex_flow="row wrap", grid_gap="8px"))
        self.filter_bar.add_class("carnet-dash-filters")
        self.body = self.layout.widget()
        self.show_filters = show_filters
        # The last refreshes (what each sent; the tests read it): bounded, a Viewer kernel lives for hours.
        self.batches: deque[QueryBatch] = deque(maxlen=5)
        for f in self.filters:
            f.observe(self._changed)
        self.refresh(self.blocks)

    def depends_on(self, block: Block) -> list[Filter]:
        found = [f for f in self.filters if f.applies(block) or isinstance(block, Text)]
        compare = getattr(block, "compare", None)
        if compare is not None and compare not in found:
            found.append(compare)
        return found

    def conditions_for(self, block: Block) -> list[tuple]:
        return [c for f in self.filters if f.applies(block) for c in f.conditions()]

    def context(self) -> dict:
        """Filter values by name, for text templates."""
        return {f.name: f.current() for f in self.filters}

    def refresh(self, blocks) -> QueryBatch:
        batch = QueryBatch(self.fetch)
        context = self.context()
        for block in blocks:
            failed = [f for f in self.filters if f.failed and f.applies(block)]
            if failed:
                # Drawn without the filter it would show rows the viewer did not choose (a whole year
                # summed over all years): an error instead, naming the filter, never its cause.
                block.show_message(FILTER_FAILED.format(label=failed[0].label), "error")
                continue
            block.update(batch, self.conditions_for(block), context, self.depends_on(block))
        self.batches.append(batch)
        return batch

    def _changed(self, changed: Filter) -> None:
        self.refresh([b for b in self.blocks if changed in self.depends_on(b)])

    def widget(self) -> widgets.Widget:
        parts = [self.filter_bar, self.body] if self.show_filters else [self.body]
        box = widgets.VBox(parts, layout=widgets.Layout(grid_gap="16px"))
        box.add_class("carnet-dash")
        return box

    def _ipython_display_(self):
        display(self.widget())
