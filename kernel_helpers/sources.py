"""``carnet.sources``: the organization's data sources, read through the API.

Every call is one request to the Carnet service, which runs it with the source's stored credentials (the
kernel holds only its Carnet token) and answers in Arrow IPC; results are pandas DataFrames. Errors are
typed (``carnet.errors.NotFound``, ``ValidationError`` naming the field, ``RowLimitExceeded``...), each
carrying the HTTP ``status`` and the server's ``message``.

Filters are data, never SQL text: ``where`` is a list of ``(column, operator, value)`` tuples (operators
``= != < <= > >= in not_in like ilike contains between is_null not_null``) or a dict ``{column: value}``
meaning equality (a list value meaning ``in``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

import pandas as pd

from carnet.client import ApiClient
from carnet.errors import CarnetError


def where_list(where) -> list | None:
    """The API's ``[[column, op, value], ...]`` from a list of tuples or an equality dict."""
    if where is None:
        return None
    if isinstance(where, Mapping):
        return [
            [column, "in", list(value)] if isinstance(value, list | tuple) else [column, "=", value]
            for column, value in where.items()
        ]
    return [list(condition) for condition in where]


def order_list(order_by) -> list | None:
    """``"year"``, ``["year", ("pop", "desc")]`` -> the API's ``["year", ["pop", "desc"]]``."""
    if order_by is None:
        return None
    items = [order_by] if isinstance(order_by, str) else order_by
    return [item if isinstance(item, str) else list(item) for item in items]


def run_sql(client: ApiClient, sql: str, variables: dict | None = None) -> pd.DataFrame:
    body = {"sql": sql, "variables": variables or {}}
    return client.post_arrow("api/v1/query", body).to_pandas()


class Source:
    """One data source, by name: ``.columns``, ``.schema``, ``.df(...)``, ``.query(...)``, ``.sql(...)``."""

    def __init__(self, client: ApiClient, name: str):
        self._client = client
        self.name = name

    def __repr__(self):
        return f"<carnet source {self.name!r}>"

    @property
    def _path(self) -> str:
        return f"api/v1/sources/{ApiClient.segment(self.name)}"

    @cached_property
    def info(self) -> dict:
        return self._client.get_json(self._path)

    @property
    def columns(self) -> list[str]:
        return [column["name"] for column in self.info["columns"]]

    @property
    def schema(self) -> dict[str, str]:
        """{column name: type name}, in the source's order."""
        return {column["name"]: column["type"] for column in self.info["columns"]}

    def arrow(self, limit: int | None = None, **spec):
        """The rows as an Arrow table (``spec``: the fields of ``df``/``query``)."""
        variables = spec.pop("variables", None)
        body = {key: value for key, value in spec.items() if value is not None}
        if limit is not None:
            body["limit"] = limit
        if "where" in body:
            body["where"] = where_list(body["where"])
        if "order_by" in body:
            body["order_by"] = order_list(body["order_by"])
        body["variables"] = variables or {}
        return self._client.post_arrow(f"{self._path}/query", body)

    def df(self, columns=None, where=None, order_by=None, limit=None, variables=None) -> pd.DataFrame:
        """Rows of the source: the ``columns`` (default all) of the rows matching ``where``, sorted and
        limited on the server (pushed down to the database when the source can)."""
        return self.arrow(
            columns=list(columns) if columns else None,
            where=where,
            order_by=order_by,
            limit=limit,
            variables=variables,
        ).to_pandas()

    def get_data(
        self, select=None, where=None, group_by=None, order_by=None, limit=None, variables=None
    ) -> pd.DataFrame:
        """The names ``carnet.Client`` users know: ``select`` lists columns; with ``group_by``, it lists the
        group columns and aggregates as ``"sum(amount)"`` or a dict ``{"amount": "sum", "*": "count"}``."""
        if group_by is None and not isinstance(select, Mapping):
            return self.df(columns=select, where=where, order_by=order_by, limit=limit, variables=variables)
        aggregates = dict(select) if isinstance(select, Mapping) else {}
        for item in [] if isinstance(select, Mapping) else select or []:
            function, _, column = item.partition("(")
            if column.endswith(")"):
                aggregates[column[:-1].strip()] = function.strip().lower()
        return self.query(
            group_by=group_by,
            aggregates=aggregates,
            where=where,
            order_by=order_by,
            limit=limit,
            variables=variables,
        )

    # -- writing (studio role): the source's warehouse table ---------------------------------------------
    def _table(self):
        from carnet.kernel_helpers.warehouse import Table

        options = self.info.get("options") or {}
        if self.info.get("kind") != "warehouse_table" or "table" not in options:
            raise CarnetError(
                f"Source {self.name!r} is not a warehouse table you may change "
                f"(kind {self.info.get('kind')!r})"
            )
        return Table(self._client, options["table"])

    def _reloaded(self, answer: dict) -> dict:
        self.__dict__.pop("info", None)  # columns may have changed
        return answer

    def reload_from_dataframe(self, df, force_types: dict | None = None) -> dict:
        """Replace the source's table with ``df`` (atomic: readers see the old or the new table), forcing
        ``force_types`` ({"amount": "decimal(12,2)", "day": "date"}); cached answers are dropped."""
        return self._reloaded(self._table().load(df, mode="replace", types=force_types))

    def reload_from_file(self, path, force_types: dict | None = None, **options) -> dict:
        """Replace the source's table with a file (.csv, .tsv, .xlsx, .parquet, .arrow), streamed."""
        return self._reloaded(self._table().load_file(path, mode="replace", types=force_types, **options))

    def batch(self, operations: list[dict], key) -> dict:
        """Insert/upsert/delete rows of the source's table by ``key`` in one transaction."""
        return self._reloaded(self._table().batch(operations, key=key))

    def invalidate_cache(self) -> None:
        """Drop the source's cached answers (after a change Carnet cannot see)."""
        self._client.delete(f"{self._path}/cache")

    def query(
        self, group_by=None, aggregates=None, where=None, order_by=None, limit=None, variables=None
    ) -> pd.DataFrame:
        """An aggregate computed on the server: ``group_by`` columns and ``aggregates`` {column: function}
        (sum, avg, min, max, count, count_distinct; ``{"*": "count"}`` counts rows)."""
        return self.arrow(
            group_by=list(group_by) if group_by else None,
            aggregates=dict(aggregates) if aggregates else None,
            where=where,
            order_by=order_by,
            limit=limit,
            variables=variables,
        ).to_pandas()

    def sql(self, sql: str, variables: dict | None = None) -> pd.DataFrame:
        """SQL over this source written ``{self}`` (and other sources as ``{name}``)."""
        return run_sql(self._client, sql.replace("{self}", "{" + self.name + "}"), variables)


class SourceCollection:
    """``carnet.sources``: list the sources, pick one with ``carnet.sources["name"]``, or run SQL over
    several with ``carnet.sources.sql("... {orders} JOIN {customers} ...")``."""

    def __init__(self, client: ApiClient | None = None):
        self._given_client = client

    @cached_property
    def _client(self) -> ApiClient:
        # Created on first use: importing carnet must work outside a kernel too.
        return self._given_client or ApiClient()

    def list(self) -> list[str]:
        return [source["name"] for source in self._client.get_json("api/v1/sources")["sources"]]

    def __getitem__(self, name: str) -> Source:
        if not isinstance(name, str) or not name:
            raise KeyError(name)
        return Source(self._client, name)

    def __iter__(self):
        return iter(self.list())

    def sql(self, sql: str, variables: dict | None = None) -> pd.DataFrame:
        return run_sql(self._client, sql, variables)

    def __repr__(self):
        return (
            "<carnet.sources: carnet.sources.list() names them, carnet.sources['name'].df() reads one, "
            "carnet.sources.sql('... {name} ...') runs SQL over them>"
        )
