"""Source kinds: what a data source is made of and how its rows are read.

A registry keyed by kind name (``DataSource.kind``), open to other packages through the
``carnet.source_kinds`` entry point group, as papermill does for its I/O handlers.

A kind reads one source for one caller through a ``SourceContext``: the source's non-secret ``options``,
its decrypted ``secrets`` (the kind's ``secret_fields``, stored encrypted in ``DataSource.secret`` and
never returned by the API), the named ``connection`` it uses if any (settings + decrypted secrets), the
caller's ``{{variable}}`` values and the read limits. Contexts are built by ``source_context`` in the
Carnet service only: kernels never see one.

``read(ctx, spec)`` returns Arrow. A kind that ``pushes_down`` applies the ``carnet.query.spec`` itself
where the data lives (SQL servers, the warehouse); for the others the query service applies it in DuckDB
over the rows ``read(ctx, None)`` returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pyarrow as pa

from carnet.errors import ValidationError
from carnet.settings import CarnetSettings
from carnet.warehouse import check_identifier, open_warehouse


@dataclass(frozen=True)
class ReadLimits:
    timeout_seconds: float
    max_rows: int

    @classmethod
    def from_settings(cls, settings: CarnetSettings) -> ReadLimits:
        return cls(timeout_seconds=settings.source_timeout_seconds, max_rows=settings.source_max_rows)


@dataclass
class SourceContext:
    """One source, ready to be read for one caller (built by ``source_context``; never sent anywhere)."""

    settings: CarnetSettings
    org_id: int
    name: str
    kind: str
    options: dict
    secrets: dict = field(default_factory=dict, repr=False)
    # {"id", "name", "kind", "settings": {...}, "secrets": {...}} of the connection the source uses.
    connection: dict | None = field(default=None, repr=False)
    variables: dict = field(default_factory=dict)
    limits: ReadLimits | None = None
    source_id: int | None = None
    version: int = 1

    def __post_init__(self):
        if self.limits is None:
            self.limits = ReadLimits.from_settings(self.settings)

    def secret_values(self) -> list:
        """Every secret this read could echo (for carnet.crypto.redact on error messages)."""
        values = list(self.secrets.values())
        if self.connection:
            values += list((self.connection.get("secrets") or {}).values())
        return [v for v in values if v]


class SourceKind:
    """Base class: validates a source's options and reads its data."""

    name = ""
    # Option names that are credentials: split off, encrypted, write-only ("set"/"unset" in answers).
    secret_fields: frozenset[str] = frozenset()
    # True: the source must name a connection (connection_id).
    needs_connection = False
    # True: read() applies the query spec where the data lives.
    pushes_down = False

    def validate_options(self, options: dict) -> dict:
        """The non-secret options, checked and normalized (ValidationError naming ``options.<key>``)."""
        raise NotImplementedError

    def check_references(self, session, org_id: int, name: str, options: dict) -> None:
        """Save-time checks that need the org's other sources (the derived kind: they exist, no cycle)."""

    def columns(self, ctx: SourceContext) -> list[dict]:
        """[{"name", "type"}] without reading the rows when possible."""
        raise NotImplementedError

    def read(self, ctx: SourceContext, spec=None) -> pa.Table:
        raise NotImplementedError

    def test(self, ctx: SourceContext) -> dict:
        """Check that the source answers; typed errors (ConnectionFailed, QueryTimeout...) say why not."""
        return {"ok": True, "columns": self.columns(ctx)}

    def variable_names(self, options: dict) -> frozenset[str] | None:
        """The ``{{variables}}`` a source of this kind takes; None when it takes whatever it is given."""
        return None


def variables_for(kind: SourceKind, options: dict, variables: dict) -> dict:
    """The caller's variables that this source takes: SQL across sources hands each source its own only
    (a source refuses variables it does not declare)."""
    names = kind.variable_names(options)
    return dict(variables) if names is None else {k: v for k, v in variables.items() if k in names}


class WarehouseTableKind(SourceKind):
    """A table of the organization's own warehouse."""

    name = "warehouse_table"
    pushes_down = True

    def validate_options(self, options: dict) -> dict:
        table = options.get("table")
        if not table:
            raise ValidationError("A warehouse_table source needs options.table", field="options.table")
        unknown = sorted(set(options) - {"table"})
        if unknown:
            raise ValidationError(f"Unknown option {unknown[0]!r}", field=f"options.{unknown[0]}")
        return {"table": check_identifier(table, field="options.table")}

    def _warehouse(self, ctx: SourceContext):
        return open_warehouse(ctx.settings, ctx.org_id)

    def columns(self, ctx):
        return self._warehouse(ctx).columns(ctx.options["table"])

    def read(self, ctx, spec=None):
        warehouse = self._warehouse(ctx)
        if spec is None:
            return warehouse.read_arrow(ctx.options["table"])
        return warehouse.query_arrow(ctx.options["table"], spec)


class SourceKindRegistry:
    def __init__(self):
        self._kinds: dict[str, SourceKind] = {}
        self._loaded = False

    def register(self, kind: SourceKind) -> None:
        self._kinds[kind.name] = kind

    def load_entry_points(self) -> None:
        self._loaded = True
        for entry_point in entry_points(group="carnet.source_kinds"):
            if entry_point.name not in self._kinds:
                self.register(entry_point.load()())

    def get(self, name: str) -> SourceKind:
        if not self._loaded:
            self.load_entry_points()
        if name not in self._kinds:
            known = ", ".join(sorted(self._kinds))
            raise ValidationError(f"Unknown source kind {name!r} (known: {known})", field="kind")
        return self._kinds[name]

    def names(self) -> list[str]:
        if not self._loaded:
            self.load_entry_points()
        return sorted(self._kinds)


source_kinds = SourceKindRegistry()
source_kinds.register(WarehouseTableKind())


# -- building contexts (the Carnet service only) -----------------------------------------------------------
def source_secret_context(org_id: int, source_id: int) -> str:
    """The SecretBox context of a source's secrets: a ciphertext copied to another row fails to decrypt."""
    return f"org:{org_id}:source:{source_id}"


def connection_secret_context(org_id: int, connection_id: int) -> str:
    return f"org:{org_id}:connection:{connection_id}"


def source_context(session, settings: CarnetSettings, source, variables: dict | None = None) -> SourceContext:
    """Decrypt what ``source`` (a DataSource row) needs and return its context. Never log the result."""
    from carnet.crypto import SecretBox
    from carnet.db.models import Connection

    box = None
    secrets: dict = {}
    if source.secret:
        box = SecretBox(settings)
        secrets = box.decrypt_json(source.secret, source_secret_context(source.org_id, source.id))
    connection = None
    if source.connection_id is not None:
        row = session.get(Connection, source.connection_id)
        if row is None or row.org_id != source.org_id:
            raise ValidationError("The source's connection no longer exists", field="connection")
        connection_secrets = {}
        if row.secret:
            box = box or SecretBox(settings)
            connection_secrets = box.decrypt_json(row.secret, connection_secret_context(row.org_id, row.id))
        connection = {
            "id": row.id,
            "name": row.name,
            "kind": row.kind,
            "settings": dict(row.settings or {}),
            "secrets": connection_secrets,
        }
    return SourceContext(
        settings=settings,
        org_id=source.org_id,
        name=source.name,
        kind=source.kind,
        options=dict(source.options or {}),
        secrets=secrets,
        connection=connection,
        variables=dict(variables or {}),
        source_id=source.id,
        version=source.version or 1,
    )
