"""``carnet.sources``: the organization's data sources, read through the API."""

from __future__ import annotations

from functools import cached_property

import pandas as pd

from carnet.client import ApiClient


class Source:
    """One data source, by name."""

    def __init__(self, client: ApiClient, name: str):
        self._client = client
        self.name = name

    def __repr__(self):
        return f"<carnet source {self.name!r}>"

    @cached_property
    def info(self) -> dict:
        return self._client.get_json(f"api/v1/sources/{ApiClient.segment(self.name)}")

    @property
    def columns(self) -> list[str]:
        return [column["name"] for column in self.info["columns"]]

    def arrow(self, limit: int | None = None):
        params = {"limit": limit} if limit is not None else {}
        return self._client.get_arrow(f"api/v1/sources/{ApiClient.segment(self.name)}/data", **params)

    def df(self, limit: int | None = None) -> pd.DataFrame:
        """The source's rows as a pandas DataFrame."""
        return self.arrow(limit=limit).to_pandas()

    get_data = df  # the name ``carnet.Client`` users know


class SourceCollection:
    """``carnet.sources``: list the sources, or pick one with ``carnet.sources["name"]``."""

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

    def __repr__(self):
        return "<carnet.sources: carnet.sources.list() names them, carnet.sources['name'].df() reads one>"
