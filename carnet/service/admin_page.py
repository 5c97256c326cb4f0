"""The admin page at /services/carnet/admin/: people, viewer groups, organization settings and the audit
log of the admin's organization, server-rendered. Forms post to this page's own handlers (with the Hub xsrf
token) and reuse ``carnet.people``, ``carnet.groups``, ``carnet.org_settings``, the audit helper and the Hub
session endings of the REST API. This module: the page and the people forms; ``admin_groups`` and
``admin_settings`` hold the other forms."""

from __future__ import annotations

from tornado import web

from carnet.audit import event_json
from carnet.db.models import Role, utcnow
from carnet.errors import CarnetError, Conflict, ValidationError
from carnet.groups import group_json, list_groups
from carnet.org_settings import SETTINGS, get_org, setting
from carnet.people import (
    create_person,
    delete_person,
    is_author,
    member,
    org_members,
    reset_password,
    update_person,
)
from carnet.service.api.audit import audit_statement
from carnet.service.api.base import authorized
from carnet.service.api.users import mail_invitation, person_json, start_invitation
from carnet.service.gallery import PageHandler, page_templates
from carnet.service.hub_admin import end_hub_sessions_after_update, forget_hub_user

AUDIT_ROWS = 100
PERSON_ACTIONS = ("role", "disable", "enable", "delete", "reset_password")


class AdminBase(PageHandler):
    def page_url(self, path: str = "") -> str:
        return self.settings["service_prefix"].rstrip("/") + "/admin/" + path

    def render_page(self, *, message: str = "", error: str = "", new_person: dict | None = None, status=200):
        principal = self.principal()
        action = (self.get_query_argument("action", "") or "").strip()[:64]
        now = utcnow()
        with self.db() as session:
            members = org_members(session, principal.org_id)
            people = [
                {**person_json(m), "locked": bool(m.user.locked_until and m.user.locked_until > now)}
                for m in members
            ]
            groups = [group_json(g) for g in list_groups(session, principal.org_id)]
            org = get_org(session, principal.org_id)
            org_settings = [
                {"key": key, "kind": spec.kind, "value": setting(org, key), "description": spec.description}
                for key, spec in SETTINGS.items()
            ]
            query = audit_statement(principal.org_id, action=action or None).limit(AUDIT_ROWS)
            events = [event_json(e) for e in session.scalars(query)]
        api = self.settings["service_prefix"].rstrip("/") + "/api/v1/"
        export = (
            api + "audit/export?format=csv" + (f"&action={web.escape.url_escape(action)}" if action else "")
        )
        page = page_templates.get_template("admin.html").render(
            org=principal.org_slug,
            email=principal.email,
            me=principal.user_id,
            people=people,
            groups=groups,
            org_settings=org_settings,
            events=events,
            action=action,
            export_url=export,
            roles=[r.value for r in Role],
            xsrf=self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes) else self.xsrf_token,
            page_url=self.page_url(),
            hub_base_url=self.settings["hub_base_url"],
            message=message,
            error=error,
            new_person=new_person,
        )
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")  # the page may show a one-time password
        self.finish(page)


class AdminPageHandler(AdminBase):
    @web.authenticated
    @authorized("users:manage")
    def get(self):
        self.render_page()


class AdminPeopleHandler(AdminBase):
    """Create a person: the page shows their one-time password once."""

    @web.authenticated
    @authorized("users:manage")
    async def post(self):
        arg = self.get_body_argument
        invitation = None
        try:
            credential = arg("credential", "password")
            if credential not in ("password", "invitation"):
                raise ValidationError(f"Unknown credential {credential!r}: password or invitation")
            with self.db() as session:
                membership, password = create_person(
                    session,
                    self.principal().org_id,
                    arg("email", ""),
                    arg("role", ""),
                    arg("display_name", ""),
                    invite=credential == "invitation",
                )
                self.audit(
                    session, "user.create", f"user/{membership.user.email}", role=membership.role.value
                )
                if credential == "invitation":
                    invitation = start_invitation(self, session, membership)
                created = {**person_json(membership), "initial_password": password}
        except CarnetError as exc:
            return self.render_page(error=exc.message, status=exc.status)
        if invitation:
            created.update(await mail_invitation(self, invitation))
        self.render_page(message=f"Created {created['email']}", new_person=created, status=201)


class AdminPersonHandler(AdminBase):
    """One form per action on a person: change role, disable, enable, delete, reset the password."""

    @web.authenticated
    @authorized("users:manage")
    async def post(self, user_id):
        action = self.get_body_argument("action", "")
        principal = self.principal()
        if action == "reset_password":
            return await self._reset_password(user_id)
        try:
            if action not in PERSON_ACTIONS:
                raise ValidationError(f"Unknown action {action!r}")
            with self.db() as session:
                membership = member(session, principal.org_id, user_id)
                email = membership.user.email
                if action == "delete":
                    if membership.user_id == principal.user_id:
                        raise Conflict("You cannot delete your own account")
                    delete_person(session, membership)
                    self.audit(session, "user.delete", f"user/{email}")
                    changed = None
                else:
                    changes = (
                        {"role": self.get_body_argument("role", "")}
                        if action == "role"
                        else {"is_active": action == "enable"}
                    )
                    changed = update_person(session, membership, changes)
                    if changed:
                        self.audit(session, "user.update", f"user/{email}", **changed)
                    author = is_author(membership)
        except CarnetError as exc:
            return self.render_page(error=exc.message, status=exc.status)
        if changed is None:
            await forget_hub_user(email)
            message = f"Deleted {email}"
        else:
            await end_hub_sessions_after_update(email, changed, still_author=author)
            message = f"Updated {email}" if changed else f"Nothing to change for {email}"
        self.render_page(message=message)

    async def _reset_password(self, user_id):
        """As POST /users/<id>/password: a new one-time password, shown once; their sessions end."""
        try:
            with self.db() as session:
                membership = member(session, self.principal().org_id, user_id)
                password = reset_password(session, membership)
                email = membership.user.email
                self.audit(session, "user.password_reset", f"user/{email}")
        except CarnetError as exc:
            return self.render_page(error=exc.message, status=exc.status)
        await forget_hub_user(email)
        self.render_page(
            message=f"New one-time password for {email}",
            new_person={"email": email, "initial_password": password},
        )


default_handlers = [
    (r"admin/?", AdminPageHandler),
    (r"admin/people", AdminPeopleHandler),
    (r"admin/people/(?P<user_id>[^/]+)", AdminPersonHandler),
]
