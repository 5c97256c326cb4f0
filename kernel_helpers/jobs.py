"""What a notebook sees of the job run executing it: ``carnet.params``, ``carnet.state`` and ``carnet.alert``.

- ``carnet.params``: the run's parameters, read-only (the job's own, a trigger's payload over them, and
  ``scheduled_time``: the run's scheduled time, ISO 8601 in UTC). papermill also injects them as variables
  after the notebook's ``parameters`` cell. Outside a job run: empty.
- ``carnet.state.get/set/delete``: small JSON values kept between the runs of one job (the job run's token
  reaches only its own job's keys: /api/v1/job-state).
- ``carnet.alert(message, **details)``: this run alerts. The scheduler mails the job's recipients (or its
  owner) when the alert becomes true, with the job's cool-down (docs/SCHEDULER.md). The alert is written
  into the run's folder (``CARNET_RUN_DIR``), which the kernel owns whatever OS account it runs as.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from urllib.parse import quote

from carnet.client import ApiClient
from carnet.errors import NotFound

ALERT_FILE = "alert.json"
MAX_ALERTS = 20  # per run: a loop calling carnet.alert does not grow the file (and the mail) without end
MAX_MESSAGE = 2000


class RunParameters(Mapping):
    """``carnet.params``: a read-only mapping of the run's parameters (``CARNET_JOB_PARAMS``)."""

    def _values(self) -> dict:
        raw = os.environ.get("CARNET_JOB_PARAMS") or "{}"
        try:
            values = json.loads(raw)
        except ValueError:
            return {}
        return values if isinstance(values, dict) else {}

    def __getitem__(self, name: str):
        return self._values()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __repr__(self) -> str:
        return f"carnet.params({self._values()!r})"


class JobStateStore:
    """``carnet.state``: ``get(key, default=None)``, ``set(key, value)``, ``delete(key)`` of the job's
    state, kept between its runs. Keys: 1-200 of ``A-Za-z0-9_.-``; values: JSON of at most 64 KB."""

    def __init__(self, client: ApiClient | None = None):
        self._given_client = client

    @cached_property
    def _client(self) -> ApiClient:
        return self._given_client or ApiClient()

    @staticmethod
    def _path(key: str) -> str:
        if not isinstance(key, str) or not key:
            raise TypeError("A state key is a non-empty string")
        return "api/v1/job-state/" + quote(key, safe="")

    def get(self, key: str, default=None):
        try:
            return self._client.get_json(self._path(key))["value"]
        except NotFound:
            return default

    def set(self, key: str, value) -> None:
        self._client._request("PUT", self._path(key), json={"value": value})

    def delete(self, key: str) -> None:
        self._client.delete(self._path(key))

    def __repr__(self):
        return "carnet.state (get, set, delete: the job's values kept between runs)"


def alert(message: str, **details) -> None:
    """Record that this run alerts (``message``, and ``details`` shown in the mail). Outside a job run it
    only says so: a notebook can be tried in Studio as it is."""
    if not isinstance(message, str) or not message.strip():
        raise ValueError("carnet.alert needs a message")
    run_dir = os.environ.get("CARNET_RUN_DIR")
    if not run_dir:
        print(f"carnet.alert (not in a job run, nothing is sent): {message}")
        return
    path = Path(run_dir) / ALERT_FILE
    alerts = []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # none yet (or not ours): start anew
        alerts = list(json.loads(path.read_text())["alerts"])
    if len(alerts) >= MAX_ALERTS:
        return
    alerts.append({"message": message[:MAX_MESSAGE], "details": json.loads(json.dumps(details, default=str))})
    # Written then renamed: the scheduler never reads half a file.
    fd, partial = tempfile.mkstemp(dir=run_dir, prefix=".alert-", suffix=".part")
    with os.fdopen(fd, "w") as handle:
        json.dump({"alerts": alerts}, handle)
    os.replace(partial, path)
