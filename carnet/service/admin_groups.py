"""The admin page's viewer-group forms: create, rename, delete a group, add or remove one member. They call
the same ``carnet.groups`` functions and write the same audit records as /api/v1/groups."""

from __future__ import annotations

from tornado import web

from carnet.errors import CarnetError, ValidationError
from carnet.groups import create_group, delete_group, get_group, set_members, update_group
from carnet.service.admin_page import AdminBase
from carnet.service.api.base import authorized

GROUP_ACTIONS = ("rename", "delete", "add_member", "remove_member")


class AdminGroupsHandler(AdminBase):
    """Create a group."""

    @web.authenticated
    @authorized("groups:manage")
    def post(self):
        try:
            with self.db() as session:
                group = create_group(session, self.principal().org_id, self.get_body_argument("name", ""))
                self.audit(session, "group.create", f"group/{group.id}", name=group.name)
                name = group.name
        except CarnetError as exc:
            return self.render_page(error=exc.message, status=exc.status)
        self.render_page(message=f"Created the group {name}", status=201)


class AdminGroupHandler(AdminBase):
    """One form per action on a group."""

    @web.authenticated
    @authorized("groups:manage")
    def post(self, group_id):
        action = self.get_body_argument("action", "")
        try:
            if action not in GROUP_ACTIONS:
                raise ValidationError(f"Unknown action {action!r}")
            with self.db() as session:
                group = get_group(session, self.principal().org_id, group_id)
                name, target = group.name, f"group/{group.id}"
                if action == "delete":
                    delete_group(session, group)
                    self.audit(session, "group.delete", target, name=name)
                    message = f"Deleted the group {name}"
                elif action == "rename":
                    changed = update_group(session, group, {"name": self.get_body_argument("name", "")})
                    if changed:
                        self.audit(session, "group.update", target, **changed)
                    message = f"Renamed {name} to {group.name}" if changed else f"Nothing to change: {name}"
                else:
                    email = self.get_body_argument("email", "").strip().lower()
                    members = [m.user.email for m in group.members]
                    if action == "add_member":
                        wanted = [*members, email]
                    elif email in members:
                        wanted = [m for m in members if m != email]
                    else:
                        raise ValidationError(f"{email} is not a member of {name}", field="email")
                    changes = set_members(session, group, wanted)
                    if changes["added"] or changes["removed"]:
                        self.audit(session, "group.members", target, **changes)
                    message = f"Members of {name} updated"
        except CarnetError as exc:
            return self.render_page(error=exc.message, status=exc.status)
        self.render_page(message=message)


default_handlers = [
    (r"admin/groups", AdminGroupsHandler),
    (r"admin/groups/(?P<group_id>[^/]+)", AdminGroupHandler),
]
