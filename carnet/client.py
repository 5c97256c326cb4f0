"""A small client of the Carnet REST API, shared by the kernel helpers and scripts.

Errors from the API arrive as ``CarnetApiError`` carrying the HTTP status and the server's message.
Bulk data travels as Arrow IPC.
"""

from __future__ import annotations

import os
from urllib.parse import quote

import pyarrow as pa
import requests

from carnet.errors import CarnetError


class CarnetApiError(CarnetError):
    def __init__(self, status: int, message: str):
        super().__init__(message, http_status=status)
        self.status = status


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

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self._http.request(method, self.url + path, timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.reason)
            except ValueError:
                message = response.reason
            raise CarnetApiError(response.status_code, message)
        return response

    def get_json(self, path: str, **params) -> dict:
        return self._request("GET", path, params=params or None).json()

    def post_json(self, path: str, body: dict) -> dict:
        return self._request("POST", path, json=body).json()

    def get_arrow(self, path: str, **params) -> pa.Table:
        response = self._request("GET", path, params=params or None)
        return pa.ipc.open_stream(response.content).read_all()

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

    ``client.me()``, ``client.sources()`` (names), ``client.get_source(name).get_data()`` (a DataFrame).
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

    def get_source(self, name: str):
        """One source (its ``info`` is fetched now, so an unknown name fails here)."""
        from carnet.kernel_helpers.sources import Source

        source = Source(self._api, name)
        source.info  # noqa: B018 - fetch now: a missing source or a refusal raises here
        return source
