"""/api/v1/groups (admins): viewer groups, named sets of people of the organization."""

from __future__ import annotations

from carnet.errors import ValidationError
from carnet.groups import (
    create_group,
    delete_group,
    get_group,
    group_json,
    list_groups,
    set_members,
    update_group,
)
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized


def _only(body: dict, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationError(f"Unknown fields: {', '.join(unknown)}", field=unknown[0])


class GroupListHandler(BaseHandler):
    @authorized("groups:manage")
    def get(self):
        with self.db() as session:
            self.write_json(
                {"groups": [group_json(g) for g in list_groups(session, self.principal().org_id)]}
            )

    @authorized("groups:manage")
    def post(self):
        body = self.get_json_body()
        _only(body, {"name"})
        with self.db() as session:
            group = create_group(session, self.principal().org_id, body.get("name"))
            self.audit(session, "group.create", f"group/{group.id}", name=group.name)
            self.write_json(group_json(group), status=201)


class GroupHandler(BaseHandler):
    @authorized("groups:manage")
    def get(self, group_id):
        with self.db() as session:
            self.write_json(group_json(get_group(session, self.principal().org_id, group_id)))

    @authorized("groups:manage")
    def patch(self, group_id):
        body = self.get_json_body()
        with self.db() as session:
            group = get_group(session, self.principal().org_id, group_id)
            changed = update_group(session, group, body)
            if changed:
                self.audit(session, "group.update", f"group/{group.id}", **changed)
            self.write_json(group_json(group))

    @authorized("groups:manage")
    def delete(self, group_id):
        with self.db() as session:
            group = get_group(session, self.principal().org_id, group_id)
            name, target = group.name, f"group/{group.id}"
            delete_group(session, group)
            self.audit(session, "group.delete", target, name=name)
        self.set_status(204)
        self.finish()


class GroupMembersHandler(BaseHandler):
    @authorized("groups:manage")
    def put(self, group_id):
        body = self.get_json_body()
        _only(body, {"users"})
        if "users" not in body:
            raise ValidationError("users is required: a list of email addresses", field="users")
        with self.db() as session:
            group = get_group(session, self.principal().org_id, group_id)
            changes = set_members(session, group, body["users"])
            if changes["added"] or changes["removed"]:
                self.audit(session, "group.members", f"group/{group.id}", **changes)
            self.write_json(group_json(group))


default_handlers = [
    (API_PREFIX + r"groups", GroupListHandler),
    (API_PREFIX + r"groups/(?P<group_id>[^/]+)", GroupHandler),
    (API_PREFIX + r"groups/(?P<group_id>[^/]+)/members", GroupMembersHandler),
]
