"""Layout as objects: ``Row``, ``Column``, ``Grid`` and ``Tabs`` hold blocks, other layouts or widgets and
become ipywidgets containers.

Why ``Tabs`` is an ipywidgets ``Tab`` and not the template's tabs: the Viewer template makes tabs from
cells (``# headings`` / ``tab:`` tags), which one cell's output cannot create, and a dashboard is one
object in one cell. An ipywidgets ``Tab`` renders the same in JupyterLab and Voila, and every panel is in
the page (hidden ones only not shown), so printing can show them all: each panel (class ``carnet-dash-tab``)
starts with its title as a heading (``carnet-dash-tab-title``), hidden on screen by its widget layout; the
template's print rules (voila_templates/carnet/static/carnet.css, ``@media print``) hide the tab bar and
show every panel on a page of its own, title first.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping

import ipywidgets as widgets


class Layout:
    container = widgets.VBox
    css = "carnet-dash-column"

    def __init__(self, *items, gap: str = "12px"):
        self.items = list(items)
        self.gap = gap

    def blocks(self) -> Iterator:
        """Every block inside, depth first."""
        from carnet.kernel_helpers.dash.base import Block

        for item in self.items:
            if isinstance(item, Block):
                yield item
            elif isinstance(item, Layout):
                yield from item.blocks()

    def children(self) -> list[widgets.Widget]:
        return [to_widget(item) for item in self.items]

    def widget(self) -> widgets.Widget:
        box = self.container(self.children(), layout=widgets.Layout(grid_gap=self.gap, width="100%"))
        box.add_class(self.css)
        return box


class Column(Layout):
    pass


class Row(Layout):
    """Side by side, sharing the width equally."""

    container = widgets.HBox
    css = "carnet-dash-row"

    def children(self):
        found = super().children()
        for child in found:
            child.layout.flex = "1 1 0"
            child.layout.min_width = "0"
        return found


class Grid(Layout):
    """``columns`` equal columns, filled row by row."""

    css = "carnet-dash-grid"

    def __init__(self, *items, columns: int = 2, gap: str = "12px"):
        super().__init__(*items, gap=gap)
        self.columns = columns

    def widget(self):
        box = widgets.GridBox(
            self.children(),
            layout=widgets.Layout(
                grid_template_columns=f"repeat({self.columns}, minmax(0, 1fr))",
                grid_gap=self.gap,
                width="100%",
            ),
        )
        box.add_class(self.css)
        return box


class Tabs(Layout):
    """``Tabs({"Overview": Row(...), "Details": table})`` or ``Tabs([("Overview", ...), ...])``."""

    css = "carnet-dash-tabs"

    def __init__(self, tabs: Mapping | list):
        pairs = list(tabs.items()) if isinstance(tabs, Mapping) else list(tabs)
        self.titles = [str(title) for title, _ in pairs]
        super().__init__(*(item for _, item in pairs))

    def widget(self):
        panels = []
        for title, child in zip(self.titles, self.children(), strict=True):
            # Shown only in print, where the tab bar is hidden (the print rules override this display).
            heading = widgets.HTML(
                f'<h2 class="carnet-dash-tab-heading">{html.escape(title)}</h2>',
                layout=widgets.Layout(display="none"),
            )
            heading.add_class("carnet-dash-tab-title")
            panel = widgets.VBox([heading, child], layout=widgets.Layout(width="100%"))
            panel.add_class("carnet-dash-tab")
            panels.append(panel)
        tab = widgets.Tab(children=panels, titles=self.titles)
        tab.add_class(self.css)
        return tab


def to_widget(item) -> widgets.Widget:
    from carnet.kernel_helpers.dash.base import Block

    if isinstance(item, Layout):
        return item.widget()
    if isinstance(item, Block):
        return item.widget
    if isinstance(item, widgets.Widget):
        return item
    if isinstance(item, str):
        from carnet.kernel_helpers.dash.text import Text

        return widgets.HTML(Text.render_static(item))
    raise TypeError(f"Cannot lay out {item!r}: use a block, Row/Column/Grid/Tabs, a widget or text")
