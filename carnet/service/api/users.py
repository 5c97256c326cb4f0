"""/api/v1/users (admins): the organization's people; /api/v1/me/password: change one's own password."""

from __future__ import annotations

import asyncio

from carnet.db.models import Membership, User
from carnet.errors import Conflict, PermissionDenied, ValidationError
from carnet.first_sign_in import change_own_password, issue_invitation, send_invitation_email
from carnet.people import (
    create_person,
    delete_person,
    is_author,
    member,
    org_members,
    reset_password,
    update_person,
)
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized
from carnet.service.hub_admin import end_hub_sessions_after_update, forget_hub_user


def person_json(membership: Membership) -> dict:
    user = membership.user
    return {
        "id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "role": membership.role.value,
        "is_active": user.is_active,
        "must_change_password": user.must_change_password,
        "invitation_expires_at": user.invitation_expires_at.isoformat() if user.invitation_hash else None,
        "locked_until": user.locked_until.isoformat() if user.locked_until else None,
        "created_at": user.created_at.isoformat(),
    }


def start_invitation(handler: BaseHandler, session, membership: Membership) -> dict:
    """Issue a new link for the person (the old one dies) and audit it, in the caller's transaction.
    Mail it with ``mail_invitation`` once committed."""
    user = membership.user
    # The organization's own setting when its admin chose one, else the platform's default.
    days = (membership.org.settings or {}).get("invitation_days") or handler.settings_obj.invitation_days
    invitation = issue_invitation(user, handler.settings_obj, days=days)
    expires_at = invitation["invitation_expires_at"]
    handler.audit(session, "user.invite", f"user/{user.email}", expires_at=expires_at)
    return {**invitation, "email": user.email, "org_name": membership.org.name}


async def mail_invitation(handler: BaseHandler, invitation: dict) -> dict:
    """The invitation's public fields, with ``invitation_sent``: whether the link was mailed."""
    sent = await asyncio.to_thread(
        send_invitation_email, handler.settings_obj, invitation["email"], invitation["org_name"], invitation
    )
    return {
        "invitation_url": invitation["invitation_url"],
        "invitation_expires_at": invitation["invitation_expires_at"],
        "invitation_sent": sent,
    }


def parse_invite(value) -> bool:
    if not isinstance(value, bool):
        raise ValidationError("invite must be true or false", field="invite")
    return value


class UserListHandler(BaseHandler):
    @authorized("users:manage")
    def get(self):
        with self.db() as session:
            members = org_members(session, self.principal().org_id)
            self.write_json({"users": [person_json(m) for m in members]})

    @authorized("users:manage")
    async def post(self):
        body = self.get_json_body()
        unknown = sorted(set(body) - {"email", "role", "display_name", "invite"})
        if unknown:
            raise ValidationError(f"Unknown fields: {', '.join(unknown)}", field=unknown[0])
        invite = parse_invite(body.get("invite", False))
        invitation = None
        with self.db() as session:
            membership, password = create_person(
                session,
                self.principal().org_id,
                body.get("email"),
                body.get("role"),
                body.get("display_name"),
                invite=invite,
            )
            self.audit(session, "user.create", f"user/{membership.user.email}", role=membership.role.value)
            if invite:
                invitation = start_invitation(self, session, membership)
            result = person_json(membership)
        if invitation:
            # Mailed only once committed: the link must work when it arrives.
            result.update(await mail_invitation(self, invitation))
        else:
            # The one-time password is shown here once; the person must change it at first sign-in.
            result["initial_password"] = password
        self.write_json(result, status=201)


class UserHandler(BaseHandler):
    @authorized("users:manage")
    def get(self, user_id):
        with self.db() as session:
            self.write_json(person_json(member(session, self.principal().org_id, user_id)))

    @authorized("users:manage")
    async def patch(self, user_id):
        body = self.get_json_body()
        with self.db() as session:
            membership = member(session, self.principal().org_id, user_id)
            changed = update_person(session, membership, body)
            if changed:
                self.audit(session, "user.update", f"user/{membership.user.email}", **changed)
            email, author = membership.user.email, is_author(membership)
            result = person_json(membership)
        await end_hub_sessions_after_update(email, changed, still_author=author)
        self.write_json(result)

    @authorized("users:manage")
    async def delete(self, user_id):
        principal = self.principal()
        with self.db() as session:
            membership = member(session, principal.org_id, user_id)
            if membership.user_id == principal.user_id:
                raise Conflict("You cannot delete your own account")
            email = membership.user.email
            delete_person(session, membership)
            self.audit(session, "user.delete", f"user/{email}")
        await forget_hub_user(email)
        self.set_status(204)
        self.finish()


class UserPasswordResetHandler(BaseHandler):
    """An admin gives a person a new one-time password (their sessions end)."""

    @authorized("users:manage")
    async def post(self, user_id):
        with self.db() as session:
            membership = member(session, self.principal().org_id, user_id)
            password = reset_password(session, membership)
            self.audit(session, "user.password_reset", f"user/{membership.user.email}")
            email, result = membership.user.email, person_json(membership)
        await forget_hub_user(email)
        self.write_json({**result, "initial_password": password})


class UserInvitationHandler(BaseHandler):
    """An admin issues a new invitation link (the previous one dies at once)."""

    @authorized("users:manage")
    async def post(self, user_id):
        unknown = sorted(self.get_json_body())
        if unknown:
            raise ValidationError(f"Unknown fields: {', '.join(unknown)}", field=unknown[0])
        with self.db() as session:
            membership = member(session, self.principal().org_id, user_id)
            if not membership.user.is_active:
                raise Conflict(f"{membership.user.email} is disabled: enable them first")
            invitation = start_invitation(self, session, membership)
            result = person_json(membership)
        self.write_json({**result, **await mail_invitation(self, invitation)})


class MyPasswordHandler(BaseHandler):
    open_before_own_password = frozenset({"POST"})  # how a one-time password gets replaced over the API

    @authorized("me:update")
    def post(self):
        principal = self.principal()
        if principal.via != "hub":
            raise PermissionDenied("Change your password signed in as yourself, not with a token or key")
        body = self.get_json_body()
        with self.db() as session:
            user = session.get(User, principal.user_id)
            change_own_password(user, body.get("current_password", ""), body.get("new_password"))
            self.audit(session, "user.password_change", f"user/{user.email}")
        self.set_status(204)
        self.finish()


default_handlers = [
    (API_PREFIX + r"users", UserListHandler),
    (API_PREFIX + r"users/(?P<user_id>[^/]+)", UserHandler),
    (API_PREFIX + r"users/(?P<user_id>[^/]+)/password", UserPasswordResetHandler),
    (API_PREFIX + r"users/(?P<user_id>[^/]+)/invitation", UserInvitationHandler),
    (API_PREFIX + r"me/password", MyPasswordHandler),
]
