"""``Text``: markdown with values templated in: ``Text("**{pop:,.0f}** people in {year}", pop=KPI_query)``.

Names in the template are the dashboard's filter names (their current value, ``All`` when open) and the
keyword values: a ``Query`` (the first value of its first aggregate, or of its first column) or a constant.
The markdown is rendered with raw HTML escaped, values included.
"""

from __future__ import annotations

import string

import mistune

from carnet.kernel_helpers.dash.base import Block, _scalar
from carnet.kernel_helpers.dash.query import Query

_markdown = mistune.create_markdown(escape=True)


class Text(Block):
    kind = "text"

    def __init__(self, template: str, name: str | None = None, source: str | None = None, **values):
        super().__init__(source=source, name=name)
        self.template = template
        self.values = values
        self.fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}

    @staticmethod
    def render_static(text: str) -> str:
        """Markdown without values (a plain string in a layout)."""
        return _markdown(text)

    def query_list(self, extra) -> dict[str, Query]:
        """The values' queries; the filters' conditions (on the text's source) narrow those of that source."""
        return {
            key: value.narrowed(extra) if value.source == self.source else value
            for key, value in self.values.items()
            if isinstance(value, Query)
        }

    def draw(self, batch, extra, context, filters):
        values = dict(context)
        for key, value in self.values.items():
            if not isinstance(value, Query):
                values[key] = value
        for key, query in self.query_list(extra).items():
            frame = batch.get(query)
            column = (
                query.aggregates[0][0]
                if query.aggregates
                else (frame.columns[0] if len(frame.columns) else "")
            )
            column = "count" if column == "*" else column
            values[key] = _scalar(frame, column)
            if values[key] is None:
                return False
        # Raw HTML, in the template or in a value, is escaped by the markdown renderer (escape=True).
        self.body.value = _markdown(self.template.format_map(values))
        return True
