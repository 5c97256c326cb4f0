"""A small client of the Carnet REST API, shared by the kernel helpers and scripts.

Errors from the API arrive as ``CarnetApiError`` carrying the HTTP status and the server's message.
Bulk data travels as Arrow IPC.
"""

from __future__ import annotations

import os
import weakref
from urllib.parse import quote

import pyarrow as pa
import requests

from carnet import errors
from carnet.errors import CarnetError


class CarnetApiError(CarnetError):
    """An error answered by the Carnet API: ``status`` (HTTP) and the server's ``message``. Raised as a
    subclass that is also the matching ``carnet.errors`` type, so ``except carnet.errors.NotFound`` works."""

    def __init__(self, status: int, message: str, **fields):
        super().__init__(message, http_status=status, **fields)
        self.status = status


# HTTP status -> the carnet.errors type of the same meaning.
_TYPES = {
    400: errors.ValidationError,
    401: errors.AuthenticationRequired,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    409: errors.Conflict,
    410: errors.Gone,
    413: errors.RowLimitExceeded,
    502: errors.ConnectionFailed,
    504: errors.QueryTimeout,
}
_API_ERRORS = {
    status: type(f"Api{base.__name__}", (CarnetApiError, base), {"__module__": __name__})
    for status, base in _TYPES.items()
}


# Clients that took their token from the environment (a kernel's CARNET_TOKEN): when the Viewer hands a
# pre-rendered kernel to the next viewer, carnet.kernel_helpers.identity.use_token gives them the new token.
_ENV_CLIENTS: weakref.WeakSet = weakref.WeakSet()


def api_error(status: int, message: str, **fields) -> CarnetApiError:
    """The typed exception of an API answer (``CarnetApiError`` itself for other statuses)."""
    return _API_ERRORS.get(status, CarnetApiError)(status, message, **fields)


class ApiClient:
    """``url`` is the Carnet service's base URL (ending with ``/services/carnet/``); the credential, a Carnet
    token (``token=``) or an org API key (``api_key=``), is sent as ``Authorization: Bearer``."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 300,
        *,
        api_key: str | None = None,
    ):
        self.url = (url or os.environ.get("CARNET_API_URL") or "").rstrip("/") + "/"
        self.token = api_key or token or os.environ.get("CARNET_TOKEN")
        if self.url == "/" or not self.token:
            raise CarnetError(
                "No Carnet connection: CARNET_API_URL and CARNET_TOKEN are set in Studio, Viewer and job "
                "kernels; elsewhere pass url= and token= (or api_key=)."
            )
        self.timeout = timeout
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"Bearer {self.token}"
        if not (api_key or token):
            _ENV_CLIENTS.add(self)

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self._http.request(method, self.url + path, timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
                message = body.get("message", response.reason)
                fields = {k: v for k, v in body.items() if k in ("field", "max_rows", "detail")}
            except (ValueError, AttributeError):
                message, fields = response.reason, {}
            # "from None": the HTTP layer's traceback adds nothing for a notebook's reader.
            raise api_error(response.status_code, message, **fields) from None
        return response

    def get_json(self, path: str, **params) -> dict:
        return self._request("GET", path, params=params or None).json()

    def post_json(self, path: str, body: dict) -> dict:
        return self._request("POST", path, json=body).json()

    def post_body(self, path: str, body, content_type: str, params: dict | None = None) -> dict:
        """POST raw data (bytes, an open file or a generator: requests streams the last two) -> JSON."""
        headers = {"Content-Type": content_type}
        return self._request("POST", path, data=body, params=params, headers=headers).json()

    def delete(self, path: str) -> None:
        self._request("DELETE", path)

    def get_arrow(self, path: str, **params) -> pa.Table:
        return self._arrow(self._request("GET", path, params=params or None, stream=True))

    def post_arrow(self, path: str, body: dict) -> pa.Table:
        return self._arrow(self._request("POST", path, json=body, stream=True))

    @staticmethod
    def _arrow(response: requests.Response) -> pa.Table:
        # 1 MiB pieces: requests' .content gathers the body 10 KB at a time, which costs more than the
        # query itself on a large result.
        with response:
            body = b"".join(response.iter_content(chunk_size=1 << 20))
        return pa.ipc.open_stream(body).read_all()

    @staticmethod
    def segment(value: str) -> str:
        return quote(value, safe="")


SERVICE_PATH = "/services/carnet/"


def service_url(url: str) -> str:
    """The Carnet service's base URL from what people paste: the Hub's address (``https://bi.example``), the
    service's (``.../services/carnet``) or the API's (``.../services/carnet/api/v1``)."""
    url = url.strip().rstrip("/")
    for suffix in ("/api/v1", "/api"):
        url = url.removesuffix(suffix)
    if not url.endswith(SERVICE_PATH.rstrip("/")):
        url += SERVICE_PATH.rstrip("/")
    return url + "/"


class Client:
    """Carnet from any Python program, with an org API key: ``carnet.Client(url, api_key)``.

    ``client.me()``, ``client.sources()`` (names), ``client.get_source(name)`` (the same object as
    ``carnet.sources[name]`` in a notebook: ``.df(...)``, ``.query(...)``, ``.sql(...)``, ``.columns``),
    ``client.sql("... {orders} ...")`` (DataFrames). Writing (a studio-role key):
    ``source.reload_from_dataframe(df)``, ``.reload_from_file(path)``, ``.batch(...)``,
    ``.invalidate_cache()``; ``client.sync_source_to_table(source, table, mode=...)``;
    ``client.get_or_create_table(name)`` and ``client.warehouse``
    (``.write(df, "sales", mode=...)``, ``.tables()``).
    """

    def __init__(self, url: str, api_key: str, timeout: float = 300):
        if not url or not api_key:
            raise CarnetError("carnet.Client needs the Carnet URL and an API key")
        self._api = ApiClient(service_url(url), timeout=timeout, api_key=api_key)

    @property
    def url(self) -> str:
        return self._api.url

    def __repr__(self):
        return f"<carnet.Client {self.url}>"

    def me(self) -> dict:
        return self._api.get_json("api/v1/me")

    def sources(self) -> list[str]:
        return [source["name"] for source in self._api.get_json("api/v1/sources")["sources"]]

    def sql(self, sql: str, variables: dict | None = None):
        """SQL over the organization's sources, named ``{source}``: a DataFrame."""
        from carnet.kernel_helpers.sources import run_sql

        return run_sql(self._api, sql, variables)

    def get_source(self, name: str):
        """One source (its ``info`` is fetched now, so an unknown name fails here)."""
        from carnet.kernel_helpers.sources import Source

        source = Source(self._api, name)
        source.info  # noqa: B018 - fetch now: a missing source or a refusal raises here
        return source

    @property
    def warehouse(self):
        """The organization's warehouse: ``.write(df, table, mode=..., key=..., types=...)``,
        ``.tables()``."""
        from carnet.kernel_helpers.warehouse import Warehouse

        return Warehouse(self._api)

    def sync_source_to_table(
        self,
        source: str,
        table: str,
        mode: str = "replace",
        key=None,
        types: dict | None = None,
        variables: dict | None = None,
    ) -> dict:
        """Copy what ``source`` answers into the warehouse table ``table`` (server-side; studio-role key):
        the load's result {load_id, rows_in, rows_out, ...}."""
        return self.warehouse.sync(source, table, mode=mode, key=key, types=types, variables=variables)

    def get_or_create_table(self, name: str, data=None, key=None, types: dict | None = None):
        """A warehouse table (``.load``, ``.describe``, ``.preview``, ``.history``). A table exists once
        loaded: given ``data`` (a DataFrame), a missing table is created from it (mode replace)."""
        from carnet.kernel_helpers.warehouse import Table

        table = Table(self._api, name)
        try:
            table.describe()
        except errors.NotFound:
            if data is not None:
                table.load(data, mode="replace", key=key, types=types)
        return table
