"""The ``derived`` source kind: SQL over other sources of the organization.

Options: ``{"sql": "SELECT c.country, sum(o.amount) FROM {orders} o JOIN {customers} c ON ..."}``. The SQL is
checked when saved (``carnet.query.placeholders``: one read-only SELECT, tables only as ``{source}``
placeholders);
``check_references`` (called by the sources API with the org's sources at hand) refuses unknown sources,
reference cycles and chains deeper than ``carnet.query.service.MAX_DEPTH``. Reading runs
``carnet.query.service.sql_over_sources``: pushed down whole to one SQL server when it can, otherwise in an
in-memory DuckDB over the inputs; the query spec of a read is then applied by the query service.
"""

from __future__ import annotations

from sqlalchemy import select

from carnet.db import session_scope
from carnet.db.models import DataSource
from carnet.errors import ValidationError
from carnet.query.placeholders import parse_source_sql
from carnet.sources import SourceContext, SourceKind

FIELD = "options.sql"


class DerivedKind(SourceKind):
    name = "derived"
    pushes_down = False

    def validate_options(self, options: dict) -> dict:
        unknown = sorted(set(options) - {"sql"}, key=str)
        if unknown:
            raise ValidationError(f"Unknown option {unknown[0]!r}", field=f"options.{unknown[0]}")
        parsed = parse_source_sql(options.get("sql"), FIELD)
        if not parsed.names:
            raise ValidationError("A derived source reads other sources: name them as {source}", field=FIELD)
        return {"sql": options["sql"].strip()}

    def check_references(self, session, org_id: int, name: str, options: dict) -> None:
        """Every source named exists in the org; no chain leads back to ``name`` or goes too deep."""
        from carnet.query.service import MAX_DEPTH

        def referenced(sql: str) -> list[str]:
            return parse_source_sql(sql, FIELD).names

        def walk(names: list[str], depth: int, path: tuple[str, ...]) -> None:
            if depth > MAX_DEPTH:
                raise ValidationError(
                    f"Sources would refer to sources more than {MAX_DEPTH} levels deep", field=FIELD
                )
            for ref in names:
                if ref == name:
                    chain = " -> ".join((name, *path, ref))
                    raise ValidationError(f"A source cannot refer to itself: {chain}", field=FIELD)
                row = session.scalar(
                    select(DataSource).where(DataSource.org_id == org_id, DataSource.name == ref)
                )
                if row is None:
                    raise ValidationError(f"No source named {ref!r} (in {{{ref}}})", field=FIELD)
                if row.kind == self.name:
                    walk(referenced((row.options or {}).get("sql", "")), depth + 1, (*path, ref))

        walk(referenced(options["sql"]), 1, ())

    def _run(self, ctx: SourceContext, describe: bool):
        from carnet.query.service import describe_sql, sql_over_sources

        # A session of its own: kinds get a context, not the caller's session.
        with session_scope(ctx.settings.db_url) as session:
            if describe:
                return describe_sql(session, ctx.settings, ctx.org_id, ctx.options["sql"], ctx.variables)
            return sql_over_sources(session, ctx.settings, ctx.org_id, ctx.options["sql"], ctx.variables)

    def columns(self, ctx):
        return self._run(ctx, describe=True)

    def read(self, ctx, spec=None):
        return self._run(ctx, describe=False)
