"""What a dashboard block asks the query service for, as data: ``Query`` (pure, hashable, no I/O).

A block declares one ``Query`` (source + group_by + aggregates + where + order/limit/offset, the fields of
carnet/query/spec.py); the dashboard narrows it with the conditions of the filters that apply to the block
(``Query.narrowed``) and sends it through a ``QueryBatch``, which sends identical queries of one refresh
once. Answers come from the service's result cache (its key is the spec, the variables and the viewer's
row context), so identical queries across refreshes are cheap too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import pandas as pd
import pyarrow as pa

from carnet.kernel_helpers.sources import order_list, where_list


def _freeze(value):
    """Lists -> tuples, so a condition's value (``in`` lists, ``between`` bounds) can be hashed."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def conditions(where) -> tuple[tuple, ...]:
    """``where`` as carnet.sources takes it (list of tuples or an equality dict) -> hashable triples."""
    return tuple(tuple(_freeze(part) for part in condition) for condition in where_list(where) or [])


@dataclass(frozen=True)
class Query:
    """One request to ``POST sources/<source>/query``. ``aggregates`` is {column: function}."""

    source: str
    group_by: tuple[str, ...] = ()
    aggregates: tuple[tuple[str, str], ...] = ()
    where: tuple[tuple, ...] = ()
    columns: tuple[str, ...] = ()
    order_by: tuple = ()
    limit: int | None = None
    offset: int = 0
    variables: tuple[tuple[str, object], ...] = field(default=())

    @classmethod
    def of(
        cls,
        source: str,
        group_by=None,
        aggregates: Mapping | None = None,
        where=None,
        columns=None,
        order_by=None,
        limit: int | None = None,
        offset: int = 0,
        variables: Mapping | None = None,
    ) -> Query:
        """A query written the way ``carnet.sources[...].query(...)`` is called."""
        if not isinstance(source, str) or not source:
            raise ValueError("A dashboard query needs a source name")
        return cls(
            source=source,
            group_by=tuple([group_by] if isinstance(group_by, str) else group_by or ()),
            aggregates=tuple((aggregates or {}).items()),
            where=conditions(where),
            columns=tuple(columns or ()),
            order_by=tuple(_freeze(item) for item in order_list(order_by) or ()),
            limit=limit,
            offset=offset,
            variables=tuple(sorted((variables or {}).items())),
        )

    def narrowed(self, extra: Iterable[tuple]) -> Query:
        """This query with ``extra`` conditions added (the filters'), in a stable order, duplicates once."""
        added = [c for c in conditions(list(extra)) if c not in self.where]
        return replace(self, where=self.where + tuple(dict.fromkeys(added)))

    def page(self, offset: int, limit: int) -> Query:
        return replace(self, offset=offset, limit=limit)

    def counted(self) -> Query:
        """The number of rows this query's where selects (a table's total for paging)."""
        return Query(self.source, aggregates=(("*", "count"),), where=self.where, variables=self.variables)

    def body(self) -> dict:
        """The JSON body of the query route (fields left out when empty)."""
        body: dict = {}
        if self.columns:
            body["columns"] = list(self.columns)
        if self.group_by:
            body["group_by"] = list(self.group_by)
        if self.aggregates:
            body["aggregates"] = dict(self.aggregates)
        if self.where:
            body["where"] = [[c[0], c[1], *([_thaw(c[2])] if len(c) > 2 else [])] for c in self.where]
        if self.order_by:
            body["order_by"] = [_thaw(item) for item in self.order_by]
        if self.limit is not None:
            body["limit"] = self.limit
        if self.offset:
            body["offset"] = self.offset
        body["variables"] = dict(self.variables)
        return body

    def key(self) -> str:
        """Identical requests have identical keys (what ``QueryBatch`` dedups on)."""
        return json.dumps([self.source, self.body()], sort_keys=True, default=str)


def _thaw(value):
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


# A transport runs one query and returns its rows; the default goes through carnet.sources (the REST API).
Fetch = Callable[[Query], pd.DataFrame]


def frame_of(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas, decimals as floats: sums of integers come back as DECIMAL, which pandas would hold
    as Python ``Decimal`` objects that plotly and number formats handle badly."""
    for index, column in enumerate(table.schema):
        if pa.types.is_decimal(column.type):
            table = table.set_column(index, column.name, table.column(index).cast(pa.float64()))
    return table.to_pandas()


def api_fetch(sources) -> Fetch:
    """``sources``: a ``carnet.sources`` collection; each query is one request of its API client."""

    def fetch(query: Query) -> pd.DataFrame:
        source = sources[query.source]
        return frame_of(source._client.post_arrow(f"{source._path}/query", query.body()))

    return fetch


class QueryBatch:
    """The queries of one refresh: each distinct query is sent once, its answer (or error) shared by every
    block that asked for it."""

    def __init__(self, fetch: Fetch):
        self._fetch = fetch
        self._answers: dict[str, pd.DataFrame | Exception] = {}
        self.sent: list[Query] = []

    def get(self, query: Query) -> pd.DataFrame:
        """The query's rows; an error of the query is raised again for each block that asks."""
        key = query.key()
        if key not in self._answers:
            self.sent.append(query)
            try:
                self._answers[key] = self._fetch(query)
            except Exception as error:  # noqa: BLE001 - kept, raised to every block that asked
                self._answers[key] = error
        answer = self._answers[key]
        if isinstance(answer, Exception):
            raise answer
        return answer.copy()  # a block may change its frame (formats, sorting) without touching another's
