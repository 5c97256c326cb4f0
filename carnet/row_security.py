"""Row-level security: people's attributes and sources' row rules.

An admin gives a member attributes (``Membership.attributes``: ``{"region": ["EU", "US"]}``), by the API or
from a warehouse table whose first column is the login email. A source's rules (``DataSource.row_rules``:
``[{"column": "region", "attribute": "region"}]``) keep, for every query of a restricted person, only the rows
whose column is one of that person's values for the attribute; every rule applies. A person without the
attribute (or with no values) gets no rows, never all rows.

Who is restricted: viewers and analysts (directly, through API keys, and in their kernels: Viewer, Studio,
jobs run as them). Studio members and admins define sources and their rules, so rules do not narrow what
they see; an admin can ask "as" another member to check what that person sees.

The query service (carnet/query/service.py) takes a ``RowContext`` for each read: the conditions are added to
the query spec (pushed down with it), SQL across sources reads each ruled source filtered, and the result
cache keys include the context, so two people with different values never share an answer.
"""

from __future__ import annotations

import json
import re
from contextvars import ContextVar
from dataclasses import dataclass, field

from sqlalchemy import select

from carnet.db.models import DataSource, Membership, Role
from carnet.errors import NotFound, PermissionDenied, ValidationError
from carnet.query.spec import Condition
from carnet.validation import refuse_hidden_characters

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MAX_ATTRIBUTES = 50
MAX_VALUES = 500
MAX_VALUE_LENGTH = 200
MAX_RULES = 20
RESTRICTED_ROLES = frozenset({Role.viewer, Role.analyst})


@dataclass(frozen=True)
class RowContext:
    """What rules see of the person reading: restricted or not, and their attribute values."""

    restricted: bool = False
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def cache_key(self) -> str:
        """Part of every cache key: unrestricted readers share answers, restricted ones by their values."""
        if not self.restricted:
            return ""
        return json.dumps({k: sorted(v) for k, v in self.attributes.items()}, sort_keys=True)


UNRESTRICTED = RowContext()
# The context of the read in progress in this thread: sources read inside other sources (derived, SQL
# across sources) are filtered for the same person.
current_row_context: ContextVar[RowContext] = ContextVar("carnet_row_context", default=UNRESTRICTED)


def check_attributes(raw) -> dict[str, list[str]]:
    """``{"name": ["value", ...]}``; a single string value is a one-value list."""
    if not isinstance(raw, dict):
        raise ValidationError("attributes must be an object {name: [values]}", field="attributes")
    if len(raw) > MAX_ATTRIBUTES:
        raise ValidationError(f"At most {MAX_ATTRIBUTES} attributes", field="attributes")
    checked: dict[str, list[str]] = {}
    for name, values in raw.items():
        where = f"attributes.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValidationError(
                f"Invalid attribute name {name!r}: letters, digits and underscores", field="attributes"
            )
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValidationError(f"{where} must be a list of strings", field=where)
        if len(values) > MAX_VALUES:
            raise ValidationError(f"{where} has more than {MAX_VALUES} values", field=where)
        cleaned = []
        for value in values:
            if not value or len(value) > MAX_VALUE_LENGTH:
                raise ValidationError(f"{where} values must be 1-{MAX_VALUE_LENGTH} characters", field=where)
            refuse_hidden_characters(value, where)
            if value not in cleaned:
                cleaned.append(value)
        checked[name] = cleaned
    return checked


def check_rules(raw) -> list[dict]:
    """``[{"column": ..., "attribute": ...}]``; the column's existence is checked when the source is read
    (a rule naming a column the source lacks fails the read: closed, not open)."""
    if not isinstance(raw, list):
        raise ValidationError("row_rules must be a list of {column, attribute}", field="row_rules")
    if len(raw) > MAX_RULES:
        raise ValidationError(f"At most {MAX_RULES} row rules", field="row_rules")
    rules = []
    for index, rule in enumerate(raw):
        where = f"row_rules[{index}]"
        if not isinstance(rule, dict) or set(rule) != {"column", "attribute"}:
            raise ValidationError(f"{where} must be exactly {{column, attribute}}", field=where)
        column, attribute = rule["column"], rule["attribute"]
        if not isinstance(column, str) or not column or len(column) > 200:
            raise ValidationError(f"{where}.column must be a column name", field=f"{where}.column")
        if not isinstance(attribute, str) or not _NAME.fullmatch(attribute):
            raise ValidationError(f"{where}.attribute must be an attribute name", field=f"{where}.attribute")
        if {"column": column, "attribute": attribute} not in rules:
            rules.append({"column": column, "attribute": attribute})
    return rules


def row_context_for(session, principal, *, as_user_id: int | None = None) -> RowContext:
    """The context of ``principal`` (or, for an admin previewing, of the member ``as_user_id``)."""
    scope = getattr(principal, "scope", None)
    if scope is not None:
        # An anonymous visitor (carnet.app_links): restricted, with only the values it was given (none for
        # a public link, so every ruled source shows no rows).
        return RowContext(True, {k: tuple(v) for k, v in scope.attributes.items()})
    user_id, role = principal.user_id, principal.role
    if as_user_id is not None:
        member = session.scalar(
            select(Membership).where(Membership.org_id == principal.org_id, Membership.user_id == as_user_id)
        )
        if member is None:
            raise NotFound("No such person in this organization")
        user_id, role = member.user_id, member.role
    if role not in RESTRICTED_ROLES:
        return UNRESTRICTED
    attributes = session.scalar(
        select(Membership.attributes).where(
            Membership.org_id == principal.org_id, Membership.user_id == user_id
        )
    )
    return RowContext(True, {k: tuple(v) for k, v in (attributes or {}).items()})


def rule_conditions(rules: list[dict], context: RowContext) -> tuple[Condition, ...] | None:
    """The where conditions the rules add for ``context``; None means "no rows at all"."""
    if not rules or not context.restricted:
        return ()
    conditions = []
    for rule in rules:
        values = context.attributes.get(rule["attribute"])
        if not values:
            return None
        conditions.append(Condition(rule["column"], "in", tuple(values)))
    return tuple(conditions)


def ruled_tables(session, principal) -> set[str]:
    """The warehouse tables a restricted person may not see whole: a source over them has row rules (none
    for unrestricted people). Their rows, and how many there are, are only for the rules to give."""
    if principal.role not in RESTRICTED_ROLES:
        return set()
    sources = session.scalars(
        select(DataSource).where(DataSource.org_id == principal.org_id, DataSource.kind == "warehouse_table")
    )
    return {(s.options or {}).get("table") for s in sources if s.row_rules} - {None}


def refuse_ruled_table(session, principal, table: str) -> None:
    """A restricted person may not read a warehouse table directly when a source over it has row rules:
    the rules live on the source, and the table's rows would bypass them."""
    if table in ruled_tables(session, principal):
        raise PermissionDenied(
            f"The table {table!r} has row-level rules: read it through its source", field="table"
        )
