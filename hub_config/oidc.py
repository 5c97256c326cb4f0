"""Sign-in through an OpenID Connect identity provider (OAuthenticator's generic OAuth), instead of passwords.

Selected by ``jupyterhub_config.py`` when CARNET_OIDC_ISSUER, CARNET_OIDC_CLIENT_ID and
CARNET_OIDC_CLIENT_SECRET are set. The provider is the source of truth for who the person is, which
organization they belong to and with which role: the claims named by ``org_claim`` (an organization slug)
and ``role_claim`` (viewer | analyst | studio | admin). Never the email domain.

At each sign-in (``update_auth_model``): the person (by email) is created in Carnet's users table if missing
(no password), their membership in the claimed organization created or its role set to the claim, and the
attempt recorded in the audit log (login.success / login.failure). An unknown organization or role, an
unverified email or a disabled account is refused with 403. The Hub groups are those of
``hub_groups_for``, as with passwords, so authors get servers and viewers do not.

The OAuth ``state`` is bound to the browser session by OAuthenticator (its ``oauthenticator-state``
cookie must match the ``state`` of the callback; tests/test_oidc.py checks it).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from contextvars import ContextVar
from dataclasses import dataclass, field

from oauthenticator.generic import GenericOAuthenticator
from sqlalchemy import select
from tornado import web
from traitlets import Bool, Unicode, default

from carnet.audit import client_address, record
from carnet.db import session_scope
from carnet.db.models import ROLE_RANK, Membership, Organization, Role, User
from carnet.hub_config.authenticator import hub_groups_for
from carnet.people import end_credentials
from carnet.settings import CarnetSettings

GROUPS_KEY = "carnet_groups"
# The address of the sign-in being handled, for the audit records (set in authenticate()).
_remote_addr: ContextVar[str] = ContextVar("carnet_oidc_remote_addr", default="")


def oidc_configured() -> bool:
    """True when the environment selects OIDC sign-in (issuer, client id and client secret all set)."""
    return all(
        os.environ.get(name)
        for name in ("CARNET_OIDC_ISSUER", "CARNET_OIDC_CLIENT_ID", "CARNET_OIDC_CLIENT_SECRET")
    )


class LoginRefused(Exception):
    """A sign-in that the identity provider accepted but Carnet refuses (recorded as login.failure)."""


@dataclass
class Outcome:
    email: str
    groups: list[str] = field(default_factory=list)
    refused: str = ""


class CarnetOIDCAuthenticator(GenericOAuthenticator):
    """Generic OIDC sign-in; org and role come from the provider's claims. Each step is a method that a
    deployment can override: ``claims_of``, ``find_org``, ``role_of``, ``provision``, ``audit``."""

    issuer = Unicode(
        help="""The identity provider's issuer URL (e.g. https://login.example.com/realms/acme). Its
        /.well-known/openid-configuration gives authorize_url, token_url and userdata_url unless they are
        set explicitly. Environment: CARNET_OIDC_ISSUER.""",
    ).tag(config=True)

    @default("issuer")
    def _default_issuer(self):
        return os.environ.get("CARNET_OIDC_ISSUER", "").rstrip("/")

    org_claim = Unicode(
        help="""Name of the claim (in the provider's userinfo answer) that holds the slug of the person's
        Carnet organization. An organization that does not exist in Carnet refuses the sign-in (403,
        audited as login.failure); organizations are never created from claims, nor derived from the
        email domain. Environment: CARNET_OIDC_ORG_CLAIM. Default: org.""",
    ).tag(config=True)

    @default("org_claim")
    def _default_org_claim(self):
        return os.environ.get("CARNET_OIDC_ORG_CLAIM", "org")

    role_claim = Unicode(
        help="""Name of the claim that holds the person's Carnet role in that organization: viewer, analyst,
        studio or admin. Applied at every sign-in (a change at the provider takes effect at the next
        sign-in); any other value refuses the sign-in (403, audited). Environment: CARNET_OIDC_ROLE_CLAIM.
        Default: carnet_role.""",
    ).tag(config=True)

    @default("role_claim")
    def _default_role_claim(self):
        return os.environ.get("CARNET_OIDC_ROLE_CLAIM", "carnet_role")

    require_verified_email = Bool(
        help="""Refuse the sign-in when the provider says the email is not verified (claim
        email_verified = false). People are matched to Carnet accounts by email, so an unverified email
        could take over someone else's account. Environment: CARNET_OIDC_REQUIRE_VERIFIED_EMAIL
        (0 to turn off). Default: true.""",
    ).tag(config=True)

    @default("require_verified_email")
    def _default_require_verified_email(self):
        return os.environ.get("CARNET_OIDC_REQUIRE_VERIFIED_EMAIL", "1") not in ("0", "false", "no")

    @default("client_id")
    def _client_id_default(self):
        return os.environ.get("CARNET_OIDC_CLIENT_ID", "")

    @default("client_secret")
    def _client_secret_default(self):
        return os.environ.get("CARNET_OIDC_CLIENT_SECRET", "")

    @default("login_service")
    def _login_service_default(self):
        return os.environ.get("CARNET_OIDC_LOGIN_SERVICE", "single sign-on")

    @default("username_claim")
    def _username_claim_default(self):
        return "email"

    @default("scope")
    def _scope_default(self):
        return os.environ.get("CARNET_OIDC_SCOPES", "openid email profile").split()

    @default("token_params")
    def _token_params_default(self):
        return {}

    @default("manage_groups")
    def _default_manage_groups(self):
        return True

    @default("allow_all")
    def _default_allow_all(self):
        # Whoever the provider vouches for and whose claims Carnet accepts; update_auth_model decides.
        return True

    # -- endpoints from the issuer's discovery document -------------------------------------------------
    _discovery: dict | None = None

    def discovery(self) -> dict:
        if self._discovery is None:
            url = f"{self.issuer}/.well-known/openid-configuration"
            with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - configured https URL
                self._discovery = json.load(answer)
        return self._discovery

    @default("authorize_url")
    def _authorize_url_default(self):
        return os.environ.get("CARNET_OIDC_AUTHORIZE_URL") or self.discovery()["authorization_endpoint"]

    @default("token_url")
    def _token_url_default(self):
        return os.environ.get("CARNET_OIDC_TOKEN_URL") or self.discovery()["token_endpoint"]

    @default("userdata_url")
    def _userdata_url_default(self):
        return os.environ.get("CARNET_OIDC_USERDATA_URL") or self.discovery()["userinfo_endpoint"]

    def normalize_username(self, username):
        return username.strip().lower()

    # -- the steps --------------------------------------------------------------------------------------
    def claims_of(self, auth_model: dict) -> dict:
        return (auth_model.get("auth_state") or {}).get(self.user_auth_state_key) or {}

    def find_org(self, session, slug: str) -> Organization | None:
        return session.scalar(select(Organization).where(Organization.slug == slug)) if slug else None

    def role_of(self, value) -> Role | None:
        try:
            return Role(str(value)) if value is not None else None
        except ValueError:
            return None

    def provision(self, session, email: str, org: Organization, role: Role, claims: dict) -> User:
        """Create the person if missing (no password) and set their role in ``org`` to ``role``."""
        user = session.scalar(select(User).where(User.email == email))
        if user is None:
            user = User(email=email, display_name=str(claims.get("name") or ""), password_hash=None)
            session.add(user)
            session.flush()
        if not user.is_active:
            raise LoginRefused("inactive")
        membership = next((m for m in user.memberships if m.org_id == org.id), None)
        if membership is None:
            membership = Membership(user=user, org=org, role=role)
            session.add(membership)
        elif membership.role != role:
            if ROLE_RANK[role] < ROLE_RANK[Role(membership.role)]:
                # Lowered at the provider: the person's Carnet tokens (kernels' included) die, as when an
                # admin lowers a role through the API.
                end_credentials(session, user)
            self.log.info(
                "Role of %s in %s: %s -> %s (from the provider)", email, org.slug, membership.role, role
            )
            membership.role = role
        session.flush()
        session.refresh(user)
        return user

    def audit(self, session, action: str, email: str, user: User | None, org_id: int | None, **details):
        record(
            session,
            org_id=org_id,
            actor_id=user.id if user else None,
            actor=email,
            action=action,
            details={"method": "oidc", **details},
            remote_addr=_remote_addr.get(),
        )

    def sign_in(self, email: str, claims: dict) -> Outcome:
        """All the database work of one sign-in, in one transaction (the audit record included)."""
        settings = CarnetSettings(parent=self)
        with session_scope(settings.db_url) as session:
            known = session.scalar(select(User).where(User.email == email)) if email else None
            org = self.find_org(session, str(claims.get(self.org_claim) or ""))
            role = self.role_of(claims.get(self.role_claim))
            reason = ""
            if not email:
                reason = "no email claim"
            elif self.require_verified_email and claims.get("email_verified") is False:
                reason = "email not verified"
            elif org is None:
                reason = "unknown organization"
            elif role is None:
                reason = "unknown role"
            if not reason:
                try:
                    with session.begin_nested():
                        user = self.provision(session, email, org, role, claims)
                except LoginRefused as refused:
                    reason = str(refused)
            if reason:
                org_ids = sorted({m.org_id for m in known.memberships}) if known else []
                if org is not None and org.id not in org_ids:
                    org_ids.append(org.id)
                for org_id in org_ids or [None]:
                    self.audit(
                        session,
                        "login.failure",
                        email,
                        known,
                        org_id,
                        reason=reason,
                        org_claim=str(claims.get(self.org_claim) or "")[:64],
                        role_claim=str(claims.get(self.role_claim) or "")[:16],
                    )
                return Outcome(email=email, refused=reason)
            self.audit(session, "login.success", email, user, org.id, role=role.value)
            return Outcome(email=email, groups=hub_groups_for(user.memberships))

    async def authenticate(self, handler, data=None, **kwargs):
        _remote_addr.set(client_address(getattr(handler, "request", None)))
        return await super().authenticate(handler, data, **kwargs)

    async def update_auth_model(self, auth_model):
        claims = self.claims_of(auth_model)
        outcome = await asyncio.to_thread(self.sign_in, auth_model.get("name") or "", claims)
        if outcome.refused:
            self.log.warning("Refused OIDC sign-in of %r: %s", outcome.email, outcome.refused)
            raise web.HTTPError(403, f"Sign-in refused: {outcome.refused}")
        auth_model["auth_state"][GROUPS_KEY] = outcome.groups
        return auth_model

    async def get_user_groups(self, auth_state):
        return set(auth_state.get(GROUPS_KEY) or [])
