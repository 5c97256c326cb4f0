"""/api/v1/keys: an organization's API keys (admins, signed in as people; never through a key).

The clear text of a key appears only in the answer that creates or rotates it; listings never show it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from carnet.api_keys import check_lifetime, key_status, mint_api_key, revoke_api_key, rotate_api_key
from carnet.db.models import ApiKey, Role, utcnow
from carnet.errors import Conflict, NotFound, ValidationError
from carnet.org_settings import org_setting
from carnet.service.api.base import API_PREFIX, BaseHandler, authorized

MAX_NAME = 200
MAX_DAYS = 3650


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def key_json(key: ApiKey) -> dict:
    """A key as listed: never its secret (nor its hash)."""
    return {
        "id": key.id,
        "name": key.name,
        "role": key.role.value,
        "created_by": key.creator.email if key.creator else None,
        "created_at": _iso(key.created_at),
        "expires_at": _iso(key.expires_at),
        "revoked_at": _iso(key.revoked_at),
        "rotated_at": _iso(key.rotated_at),
        "last_used_at": _iso(key.last_used_at),
        "status": key_status(key),
    }


def find_key(session, org_id: int, key_id) -> ApiKey:
    """The org's key ``key_id``; another org's id, or anything not an id, is the same 404."""
    try:
        key_id = int(key_id)
    except (TypeError, ValueError):
        key_id = None
    key = None
    if key_id is not None and 0 < key_id < 2**63:
        key = session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id))
    if key is None:
        raise NotFound("No such API key")
    return key


def expiry_field(body: dict) -> str:
    return "expires_in_days" if body.get("expires_in_days") is not None else "expires_at"


def parse_expiry(body: dict, *, required: bool = False) -> datetime | None:
    """``expires_at`` (ISO 8601, future; no zone means UTC) or ``expires_in_days`` (1-3650), not both."""
    at, days = body.get("expires_at"), body.get("expires_in_days")
    if at is not None and days is not None:
        raise ValidationError("Give expires_at or expires_in_days, not both", field="expires_at")
    if days is not None:
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
            raise ValidationError(
                f"expires_in_days must be an integer from 1 to {MAX_DAYS}", field="expires_in_days"
            )
        return utcnow() + timedelta(days=days)
    if at is not None:
        if not isinstance(at, str):
            raise ValidationError("expires_at must be an ISO 8601 date-time", field="expires_at")
        try:
            moment = datetime.fromisoformat(at.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError("expires_at must be an ISO 8601 date-time", field="expires_at") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if moment <= utcnow():
            raise ValidationError("expires_at must be in the future", field="expires_at")
        return moment
    if required:
        raise ValidationError("Give expires_at or expires_in_days", field="expires_at")
    return None


class KeyListHandler(BaseHandler):
    @authorized("keys:manage")
    def get(self):
        principal = self.principal()
        with self.db() as session:
            keys = session.scalars(
                select(ApiKey).where(ApiKey.org_id == principal.org_id).order_by(ApiKey.id)
            ).all()
            self.write_json({"keys": [key_json(k) for k in keys]})

    @authorized("keys:manage")
    def post(self):
        principal = self.principal()
        body = self.get_json_body()
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME:
            raise ValidationError(f"An API key needs a name (1-{MAX_NAME} characters)", field="name")
        name = name.strip()
        role = body.get("role")
        if role not in {r.value for r in Role}:
            raise ValidationError(f"role must be one of: {', '.join(r.value for r in Role)}", field="role")
        expires_at = parse_expiry(body)
        try:
            with self.db() as session:
                max_days = org_setting(session, principal.org_id, "api_key_max_days")
                check_lifetime(expires_at, max_days, expiry_field(body))
                if session.scalar(
                    select(ApiKey.id).where(ApiKey.org_id == principal.org_id, ApiKey.name == name)
                ):
                    raise Conflict(f"An API key named {name!r} already exists", field="name")
                key, text = mint_api_key(
                    session,
                    org_id=principal.org_id,
                    creator_id=principal.user_id,
                    name=name,
                    role=role,
                    expires_at=expires_at,
                )
                self.audit(session, "key.create", f"key/{key.id}", name=name, role=role)
                data = {**key_json(key), "key": text}
        except IntegrityError:
            raise Conflict(f"An API key named {name!r} already exists", field="name") from None
        self.write_json(data, status=201)


class KeyHandler(BaseHandler):
    @authorized("keys:manage")
    def delete(self, key_id):
        principal = self.principal()
        with self.db() as session:
            key = find_key(session, principal.org_id, key_id)
            if key.revoked_at is None:
                revoke_api_key(session, key)
                self.audit(session, "key.revoke", f"key/{key.id}", name=key.name)
        self.set_status(204)
        self.finish()


class KeyRotateHandler(BaseHandler):
    """A new secret for the key (the old one dies at once); optionally a new expiry (renewal)."""

    @authorized("keys:manage")
    def post(self, key_id):
        principal = self.principal()
        body = self.get_json_body()
        expires_at = parse_expiry(body)
        with self.db() as session:
            key = find_key(session, principal.org_id, key_id)
            if key.revoked_at is not None:
                raise Conflict("A revoked API key cannot be rotated: create a new one")
            # A new secret must honour the current cap, so an old key that never expires needs an expiry.
            max_days = org_setting(session, principal.org_id, "api_key_max_days")
            check_lifetime(expires_at or key.expires_at, max_days, expiry_field(body))
            text = rotate_api_key(session, key)
            if expires_at is not None:
                key.expires_at = expires_at
            session.flush()
            details = {"name": key.name}
            if expires_at is not None:
                details["expires_at"] = expires_at.isoformat()
            self.audit(session, "key.rotate", f"key/{key.id}", **details)
            data = {**key_json(key), "key": text}
        self.write_json(data)


default_handlers = [
    (API_PREFIX + r"keys", KeyListHandler),
    (API_PREFIX + r"keys/(?P<key_id>[^/]+)", KeyHandler),
    (API_PREFIX + r"keys/(?P<key_id>[^/]+)/rotate", KeyRotateHandler),
]
