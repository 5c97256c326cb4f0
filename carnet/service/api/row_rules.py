"""Row-level security over REST (carnet/row_security.py): members' attributes and sources' row rules.

- ``GET/PUT /api/v1/users/{id}/attributes`` (admins): a member's attributes, replaced whole by PUT.
- ``POST /api/v1/user-attributes/reload`` (admins) ``{"table": "people_meta"}``: every member's attributes
  from a warehouse table whose first column is the login email and whose other columns are attributes; the
  table is the truth for its columns (a member it does not list loses them), rows of one email add up.
- ``GET/PUT /api/v1/sources/{name}/row-rules`` (studio, admins): ``{"rules": [{column, attribute}]}``; a
  change gives the source a new version, so no cached answer of the old rules is served.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from carnet.data_versions import bump_version
from carnet.db.models import Membership, User
from carnet.errors import ValidationError
from carnet.people import member
from carnet.row_security import check_attributes, check_rules
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.api.sources import find_source
from carnet.validation import validate_email
from carnet.warehouse import check_identifier, open_warehouse

MAX_ATTRIBUTE_ROWS = 100_000


class UserAttributesHandler(BaseHandler):
    @authorized("users:manage")
    def get(self, user_id):
        with self.db() as session:
            membership = member(session, self.principal().org_id, user_id)
            self.write_json({"user_id": membership.user_id, "attributes": membership.attributes or {}})

    @authorized("users:manage")
    def put(self, user_id):
        attributes = check_attributes(self.get_json_body().get("attributes"))
        with self.db() as session:
            membership = member(session, self.principal().org_id, user_id)
            membership.attributes = attributes
            self.audit(
                session, "user.attributes", f"user/{membership.user.email}", attributes=sorted(attributes)
            )
            session.flush()
            self.write_json({"user_id": membership.user_id, "attributes": attributes})


def attributes_from_table(table) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
    """(attribute names, email -> {attribute: values}) of an Arrow table: email first, then attributes."""
    names = table.column_names
    if len(names) < 2:
        raise ValidationError("The table needs the email column first, then one column per attribute")
    attributes = [check_identifier(n, "attribute name", field="table") for n in names[1:]]
    by_email: dict[str, dict[str, list[str]]] = {}
    for row_number, row in enumerate(table.to_pylist(), start=1):
        email = row[names[0]]
        if not isinstance(email, str):
            raise ValidationError(
                f"Row {row_number}: the first column must hold the login email", field="table"
            )
        values = by_email.setdefault(validate_email(email, field="table"), {a: [] for a in attributes})
        for attribute in attributes:
            value = row[attribute]
            if value is not None and str(value) not in values[attribute]:
                values[attribute].append(str(value))
    return attributes, by_email


class AttributesReloadHandler(BaseHandler):
    @authorized("users:manage")
    async def post(self):
        table_name = check_identifier(self.get_json_body().get("table"), "table name", field="table")
        org_id = self.principal().org_id
        warehouse = open_warehouse(self.settings_obj, org_id)
        table = await asyncio.to_thread(warehouse.read_arrow, table_name, MAX_ATTRIBUTE_ROWS + 1)
        if table.num_rows > MAX_ATTRIBUTE_ROWS:
            raise ValidationError(f"The table has more than {MAX_ATTRIBUTE_ROWS} rows", field="table")
        attributes, by_email = attributes_from_table(table)
        with self.db() as session:
            members = session.execute(
                select(Membership, User.email).join(User).where(Membership.org_id == org_id)
            ).all()
            known = set()
            for membership, email in members:
                known.add(email)
                current = dict(membership.attributes or {})
                listed = by_email.get(email, {})
                for attribute in attributes:
                    current.pop(attribute, None)
                    if listed.get(attribute):
                        current[attribute] = listed[attribute]
                membership.attributes = check_attributes(current)
            unknown = sorted(set(by_email) - known)
            self.audit(
                session,
                "user.attributes.reload",
                f"warehouse/{table_name}",
                attributes=attributes,
                members=len(members),
                unknown_emails=len(unknown),
            )
            session.flush()
        # Emails that are nobody here are reported, not turned into accounts.
        self.write_json(
            {
                "attributes": attributes,
                "members": len(members),
                "rows": table.num_rows,
                "unknown_emails": unknown[:50],
            }
        )


class SourceRowRulesHandler(BaseHandler):
    @authorized("sources:manage")
    def get(self, name):
        with self.db() as session:
            source = find_source(session, self.principal().org_id, name)
            self.write_json({"source": source.name, "rules": source.row_rules or []})

    @authorized("sources:manage")
    def put(self, name):
        rules = check_rules(self.get_json_body().get("rules"))
        with self.db() as session:
            source = find_source(session, self.principal().org_id, name)
            source.row_rules = rules
            bump_version(source)  # cached answers under the old rules are not served
            self.audit(session, "source.row_rules", f"source/{source.name}", rules=rules)
            session.flush()
            self.write_json({"source": source.name, "rules": rules})


default_handlers = [
    (API_PREFIX + r"users/(?P<user_id>[^/]+)/attributes", UserAttributesHandler),
    (API_PREFIX + r"user-attributes/reload", AttributesReloadHandler),
    (API_PREFIX + r"sources/(?P<name>[^/]+)/row-rules", SourceRowRulesHandler),
]
