"""Source kinds: what a data source is made of and how its rows are read.

A registry keyed by kind name (``DataSource.kind``), open to other packages through the
``carnet.source_kinds`` entry point group, as papermill does for its I/O handlers.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pyarrow as pa

from carnet.errors import ValidationError
from carnet.settings import CarnetSettings
from carnet.warehouse import Warehouse, check_identifier


class SourceKind:
    """Base class: validates a source's options and reads its data."""

    name = ""

    def validate_options(self, options: dict) -> dict:
        raise NotImplementedError

    def columns(self, settings: CarnetSettings, org_id: int, options: dict) -> list[dict]:
        raise NotImplementedError

    def read(self, settings: CarnetSettings, org_id: int, options: dict, limit: int | None) -> pa.Table:
        raise NotImplementedError


class WarehouseTableKind(SourceKind):
    """A table of the organization's own warehouse."""

    name = "warehouse_table"

    def validate_options(self, options: dict) -> dict:
        table = options.get("table")
        if not table:
            raise ValidationError("A warehouse_table source needs options.table", field="options.table")
        return {"table": check_identifier(table, field="options.table")}

    def columns(self, settings, org_id, options):
        return Warehouse(settings.warehouse_path(org_id)).columns(options["table"])

    def read(self, settings, org_id, options, limit):
        return Warehouse(settings.warehouse_path(org_id)).read_arrow(options["table"], limit=limit)


class SourceKindRegistry:
    def __init__(self):
        self._kinds: dict[str, SourceKind] = {}

    def register(self, kind: SourceKind) -> None:
        self._kinds[kind.name] = kind

    def load_entry_points(self) -> None:
        for entry_point in entry_points(group="carnet.source_kinds"):
            if entry_point.name not in self._kinds:
                self.register(entry_point.load()())

    def get(self, name: str) -> SourceKind:
        if not self._kinds:
            self.load_entry_points()
        if name not in self._kinds:
            known = ", ".join(sorted(self._kinds))
            raise ValidationError(f"Unknown source kind {name!r} (known: {known})", field="kind")
        return self._kinds[name]


source_kinds = SourceKindRegistry()
source_kinds.register(WarehouseTableKind())
