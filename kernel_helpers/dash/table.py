"""``Table``: rows of a source, paged on the server (``limit``/``offset`` of the query spec), sorted by
clicking a column's header, with number formats and CSV/XLSX downloads of every matching row.

Pages are ordered by the sort column then every shown column, so a row appears on exactly one page; the
total comes from a count query of the same filters. A download asks for all matching rows (the service's
row cap applies) in the order shown and offers them as a ``data:`` link.
"""

from __future__ import annotations

import base64
import html
import io

import ipywidgets as widgets

from carnet.kernel_helpers.dash.base import Block, _log_to_process_stderr, fmt, log
from carnet.kernel_helpers.dash.query import Query, QueryBatch

DOWNLOADS = {"csv": "text/csv", "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
DIRECTIONS = {"asc": ("↑", "ascending"), "desc": ("↓", "descending")}
# The table's own <thead> stays in the page for screen readers (column headers with aria-sort) but is not
# seen: the header buttons above the rows are its visible form. Inline, because JupyterLab has no Carnet CSS.
TABLE_STYLE = "width:100%;table-layout:fixed;border-collapse:collapse;border-spacing:0;margin:0"
HIDDEN_HEAD = "position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap"


class Table(Block):
    """A paged table. Its header is a row of buttons, one per shown column, laid out on the same equal-width
    columns as the rows (the page's policy runs no inline script, so the header cells cannot call the
    kernel themselves; ipywidgets buttons work in the Viewer and in JupyterLab alike).

    Sorting: a click on a column's header sorts the rows by it ascending; a click on the column already
    sorted reverses the direction (asc <-> desc). The sorted header shows ↑ or ↓, its tooltip says the
    order, and the table's header cell carries ``aria-sort``. Any new order starts again at the first page;
    downloads follow it. ``order_by`` (a column or ``(column, direction)``) is the order before any click.
    """

    kind = "table"

    def __init__(
        self,
        columns=None,
        title: str = "",
        page_size: int = 20,
        order_by=None,
        formats: dict | None = None,
        downloads=("csv", "xlsx"),
        source: str | None = None,
        where=None,
        name: str | None = None,
    ):
        super().__init__(source=source, where=where, name=name, title=title)
        self.columns = list(columns or [])
        self.page_size = page_size
        self.sort = (order_by, "asc") if isinstance(order_by, str) else order_by  # (column, direction)
        self.formats = formats or {}
        self.downloads = tuple(downloads)
        self.page_number = 0
        self.total = 0
        self.shown: list[str] = []  # the columns on screen, known after the first draw
        self._fetch = None  # set by update(): paging and sorting re-read this table alone
        self._extra, self._context = [], {}
        self.caption = widgets.HTML(layout=widgets.Layout(display="none"))  # the title, above the header
        self.header = widgets.GridBox([], layout=widgets.Layout(display="none", width="100%", grid_gap="0"))
        self.header.add_class("carnet-dash-table-header")
        self.header_buttons: dict[str, widgets.Button] = {}
        self.previous_button = widgets.Button(description="Previous", icon="chevron-left")
        self.next_button = widgets.Button(description="Next", icon="chevron-right")
        self.position = widgets.HTML()
        self.download_links = widgets.HTML()
        self.previous_button.on_click(lambda _b: self.go(self.page_number - 1))
        self.next_button.on_click(lambda _b: self.go(self.page_number + 1))
        buttons = [widgets.Button(description=kind.upper(), icon="download") for kind in self.downloads]
        for button, kind in zip(buttons, self.downloads, strict=True):
            button.on_click(lambda _b, kind=kind: self.offer_download(kind))
        pager = widgets.HBox([self.previous_button, self.position, self.next_button, *buttons])
        pager.add_class("carnet-dash-pager")
        self.body.layout.margin = "0"  # the rows' left edge is the header's
        self.widget.children = [self.caption, self.header, self.body, pager, self.download_links]

    def order(self, columns: list[str]) -> list:
        first = [] if self.sort is None else [tuple(self.sort)]
        return first + [c for c in columns if self.sort is None or c != self.sort[0]]

    def _build_header(self, shown: list[str]) -> None:
        """One button per shown column, made once (the shown columns do not change between draws)."""
        if list(self.header_buttons) == shown:
            return
        self.header_buttons = {}
        for column in shown:
            button = widgets.Button(description=str(column), layout=widgets.Layout(width="auto", margin="0"))
            button.add_class("carnet-dash-sort")
            button.on_click(lambda _b, column=column: self.header_clicked(column))
            self.header_buttons[column] = button
        self.header.children = list(self.header_buttons.values())
        self.header.layout.grid_template_columns = f"repeat({len(shown)}, minmax(0, 1fr))"

    def _mark_header(self) -> None:
        """The sorted column's marker and every header's tooltip (what a click will do)."""
        for column, button in self.header_buttons.items():
            direction = self.sort[1] if self.sort and self.sort[0] == column else None
            if direction:
                arrow, word = DIRECTIONS[direction]
                button.description = f"{column} {arrow}"
                button.add_class("carnet-dash-sorted")
                other = DIRECTIONS["desc" if direction == "asc" else "asc"][1]
                button.tooltip = f"Sorted by {column}, {word}. Click to sort {other}."
            else:
                button.description = str(column)
                button.remove_class("carnet-dash-sorted")
                button.tooltip = f"Click to sort by {column}, ascending."

    def header_clicked(self, column: str) -> None:
        """What a click on a column's header does: ascending first, then the other direction each time."""
        if self.sort and self.sort[0] == column:
            self.sort_by(column, "desc" if self.sort[1] == "asc" else "asc")
        else:
            self.sort_by(column, "asc")

    def page_query(self, shown: list[str], extra) -> Query:
        query = self.base(columns=shown, order_by=self.order(shown)).narrowed(extra)
        return query.page(self.page_number * self.page_size, self.page_size)

    def update(self, batch, extra, context, filters=()):
        self.page_number = 0
        self._fetch, self._extra, self._context = batch._fetch, extra, context
        super().update(batch, extra, context, filters)

    def _again(self) -> None:
        """This table alone read again (another page, another order); the other blocks are untouched."""
        super().update(QueryBatch(self._fetch), self._extra, self._context)

    def go(self, page: int) -> None:
        if page < 0 or page * self.page_size >= max(self.total, 1) or self._fetch is None:
            return
        self.page_number = page
        self._again()

    def sort_by(self, column: str, direction: str = "asc") -> None:
        """Rows ordered by one of the shown columns, from the first page."""
        if direction not in DIRECTIONS:
            raise ValueError(f"A table sorts 'asc' or 'desc', not {direction!r}")
        if self.shown and column not in self.shown:
            raise ValueError(f"The table {self.name!r} shows no column {column!r}")
        self.sort, self.page_number = (column, direction), 0
        self._mark_header()
        if self._fetch is not None:
            self._again()

    def show_message(self, text: str, state: str) -> None:
        # Blank and error states have no rows: no header above the message, the title in the message.
        self.caption.layout.display = self.header.layout.display = "none"
        super().show_message(text, state)

    def draw(self, batch, extra, context, filters):
        shown = self.columns or list(batch.get(self.base(limit=0)).columns)
        self.shown = shown
        self._build_header(shown)
        self._mark_header()
        self.total = int(batch.get(self.base().counted().narrowed(extra))["count"].iloc[0])
        frame = batch.get(self.page_query(shown, extra))
        last = max(0, (self.total - 1) // self.page_size)
        self.previous_button.disabled = self.page_number == 0
        self.next_button.disabled = self.page_number >= last
        if self.total == 0:
            self.position.value = ""
            return False
        first = self.page_number * self.page_size + 1
        self.position.value = (
            f'<span class="carnet-dash-position">Rows {first:,}–{first + len(frame) - 1:,} of '
            f"{self.total:,}</span>"
        )
        rows = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(fmt(v, self.formats.get(c)))}</td>" for c, v in row.items())
            + "</tr>"
            for _, row in frame.iterrows()
        )
        self.caption.value = f"<b>{html.escape(self.title)}</b>"
        self.caption.layout.display = None if self.title else "none"
        self.header.layout.display = "grid"
        # Equal fixed columns, no spacing: the same grid as the header's (see the class docstring).
        cols = f'<col style="width:{100 / len(frame.columns):.4f}%">' * len(frame.columns)
        self.body.value = (
            f'<table class="carnet-dash-rows jp-RenderedHTMLCommon" style="{TABLE_STYLE}">'
            f"<colgroup>{cols}</colgroup>"
            f'<thead style="{HIDDEN_HEAD}"><tr>{self._head_cells(frame.columns)}</tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
        return True

    def _head_cells(self, columns) -> str:
        cells = []
        for column in columns:
            sorted_as = self.sort[1] if self.sort and self.sort[0] == column else None
            aria = f' aria-sort="{DIRECTIONS[sorted_as][1]}"' if sorted_as else ""
            cells.append(f'<th scope="col"{aria}>{html.escape(str(column))}</th>')
        return "".join(cells)

    def offer_download(self, kind: str) -> None:
        """A link to every matching row as CSV or XLSX (built in the kernel, no file on the server)."""
        try:
            shown = self.columns or None
            query = self.base(columns=shown, order_by=self.order(self.columns) or None).narrowed(self._extra)
            frame = self._fetch(query)
            buffer = io.BytesIO()
            if kind == "csv":
                buffer.write(frame.to_csv(index=False).encode("utf-8"))
            else:
                frame.to_excel(buffer, index=False)
            data = base64.b64encode(buffer.getvalue()).decode("ascii")
            name = f"{self.title or self.source or 'table'}.{kind}".replace("/", "_")
            self.download_links.value = (
                f'<a download="{html.escape(name)}" href="data:{DOWNLOADS[kind]};base64,{data}">'
                f"Download {html.escape(name)} ({len(frame):,} rows)</a>"
            )
        except Exception:  # noqa: BLE001 - a failed download says so, the detail goes to the log
            _log_to_process_stderr()
            log.exception("carnet.dash: download of %r failed", self.name)
            self.download_links.value = "The download could not be prepared."
