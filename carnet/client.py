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
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 300):
        self.url = (url or os.environ.get("CARNET_API_URL") or "").rstrip("/") + "/"
        self.token = token or os.environ.get("CARNET_TOKEN")
        if self.url == "/" or not self.token:
            raise CarnetError(
                "No Carnet connection: CARNET_API_URL and CARNET_TOKEN are set in Studio, Viewer and job "
                "kernels; elsewhere pass url= and token=."
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
