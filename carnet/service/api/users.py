"""/api/v1/users (admins): the organization's people; /api/v1/me/password: change one's own password."""

from __future__ import annotations

from carnet.db.models import Membership, User
from carnet.errors import Conflict, PermissionDenied, ValidationError
from carnet.passwords import hash_password, verify_password
from carnet.people import (
    check_new_password,
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
        "locked_until": user.locked_until.isoformat() if user.locked_until else None,
        "created_at": user.created_at.isoformat(),
    }


class UserListHandler(BaseHandler):
    @authorized("users:manage")
    def get(self):
        with self.db() as session:
            members = org_members(session, self.principal().org_id)
            self.write_json({"users": [person_json(m) for m in members]})

    @authorized("users:manage")
    def post(self):
        body = self.get_json_body()
        unknown = sorted(set(body) - {"email", "role", "display_name"})
        if unknown:
            raise ValidationError(f"Unknown fields: {', '.join(unknown)}", field=unknown[0])
        with self.db() as session:
            membership, password = create_person(
                session,
                self.principal().org_id,
                body.get("email"),
                body.get("role"),
                body.get("display_name"),
            )
            self.audit(session, "user.create", f"user/{membership.user.email}", role=membership.role.value)
            # The one-time password is shown here once; the person must change it at first sign-in.
            self.write_json({**person_json(membership), "initial_password": password}, status=201)


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


class MyPasswordHandler(BaseHandler):
    @authorized("me:update")
    def post(self):
        principal = self.principal()
        if principal.via != "hub":
            raise PermissionDenied("Change your password signed in as yourself, not with a token or key")
        body = self.get_json_body()
        new_password = check_new_password(body.get("new_password"))
        with self.db() as session:
            user = session.get(User, principal.user_id)
            if not verify_password(str(body.get("current_password", "")), user.password_hash):
                raise ValidationError("The current password is wrong", field="current_password")
            if verify_password(new_password, user.password_hash):
                raise ValidationError(
                    "Choose a password different from the current one", field="new_password"
                )
            user.password_hash = hash_password(new_password)
            user.must_change_password = False
            self.audit(session, "user.password_change", f"user/{user.email}")
        self.set_status(204)
        self.finish()


default_handlers = [
    (API_PREFIX + r"users", UserListHandler),
    (API_PREFIX + r"users/(?P<user_id>[^/]+)", UserHandler),
    (API_PREFIX + r"users/(?P<user_id>[^/]+)/password", UserPasswordResetHandler),
    (API_PREFIX + r"me/password", MyPasswordHandler),
]
