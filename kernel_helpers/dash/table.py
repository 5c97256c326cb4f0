"""``Table``: rows of a source, paged on the server (``limit``/``offset`` of the query spec), sortable by a
column, with number formats and CSV/XLSX downloads of every matching row.

Pages are ordered by the sort column then every shown column, so a row appears on exactly one page; the
total comes from a count query of the same filters. A download asks for all matching rows (the service's
row cap applies) and offers them as a ``data:`` link.
"""

from __future__ import annotations

import base64
import html
import io

import ipywidgets as widgets

from carnet.kernel_helpers.dash.base import Block, _log_to_process_stderr, fmt, log
from carnet.kernel_helpers.dash.query import Query, QueryBatch

DOWNLOADS = {"csv": "text/csv", "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


class Table(Block):
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
        self._fetch = None  # set by update(): paging and sorting re-read this table alone
        self._extra, self._context = [], {}
        self.previous_button = widgets.Button(description="Previous", icon="chevron-left")
        self.next_button = widgets.Button(description="Next", icon="chevron-right")
        self.position = widgets.HTML()
        self.download_links = widgets.HTML()
        self.previous_button.on_click(lambda _b: self.go(self.page_number - 1))
        self.next_button.on_click(lambda _b: self.go(self.page_number + 1))
        buttons = [widgets.Button(description=kind.upper(), icon="download") for kind in self.downloads]
        for button, kind in zip(buttons, self.downloads, strict=True):
            button.on_click(lambda _b, kind=kind: self.offer_download(kind))
        # Options are (column, direction) pairs, filled once the shown columns are known.
        self.sorter = widgets.Dropdown(description="Sort", options=[], layout=widgets.Layout(width="220px"))
        self.sorter.observe(self._sort_chosen, names="value")
        self._filling = False
        pager = widgets.HBox([self.previous_button, self.position, self.next_button, self.sorter, *buttons])
        pager.add_class("carnet-dash-pager")
        self.widget.children = [self.body, pager, self.download_links]

    def order(self, columns: list[str]) -> list:
        first = [] if self.sort is None else [tuple(self.sort)]
        return first + [c for c in columns if self.sort is None or c != self.sort[0]]

    def _fill_sorter(self, shown: list[str]) -> None:
        if self.sorter.options:
            return
        self._filling = True  # setting options changes the value: not a person's choice
        try:
            self.sorter.options = [
                (f"{column} {arrow}", (column, direction))
                for column in shown
                for direction, arrow in (("asc", "↑"), ("desc", "↓"))
            ]
            self.sorter.value = tuple(self.sort) if self.sort else None
        finally:
            self._filling = False

    def _sort_chosen(self, change) -> None:
        if not self._filling and change["new"] is not None and tuple(change["new"]) != self.sort:
            self.sort_by(*change["new"])

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
        self.sort, self.page_number = (column, direction), 0
        if self.sorter.options and self.sorter.value != self.sort:
            self._filling = True
            try:
                self.sorter.value = self.sort
            finally:
                self._filling = False
        if self._fetch is not None:
            self._again()

    def draw(self, batch, extra, context, filters):
        shown = self.columns or list(batch.get(self.base(limit=0)).columns)
        self._fill_sorter(shown)
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
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
        rows = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(fmt(v, self.formats.get(c)))}</td>" for c, v in row.items())
            + "</tr>"
            for _, row in frame.iterrows()
        )
        title = f"<b>{html.escape(self.title)}</b>" if self.title else ""
        self.body.value = (
            f'{title}<table class="carnet-dash-rows jp-RenderedHTMLCommon"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
        return True

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
