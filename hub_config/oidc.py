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

Claims are authoritative for memberships: memberships in organizations the claims no longer name are
removed at that sign-in (``prune_memberships``; audited ``membership.remove``, and the person's Carnet
tokens die) unless ``keep_unclaimed_memberships`` is set. Only the membership goes, with the person's
places in that organization's viewer groups and the app shares naming them: objects they own there (jobs,
sources, apps they published) stay for the organization's admins to reassign or delete; the jobs' runs
cannot read data meanwhile, as a job token needs its owner's membership.

A person who is no longer an author at sign-in (demoted at the provider, or moved to an organization where
they are a viewer) has their running Studio server stopped by the Hub during that sign-in
(``authenticate``), and the Hub's authors group no longer lets them start one.

PKCE (``enable_pkce``, S256) is on: the code is worthless without the verifier kept in the Hub's signed
state cookie. Logging out of the Hub also ends the session at the provider (RP-initiated logout:
``logout_redirect_url`` points at the discovery document's ``end_session_endpoint`` with ``client_id`` and
``post_logout_redirect_uri``) unless CARNET_OIDC_LOGOUT=local; otherwise the next sign-in would pass
silently through the provider's still-open session.

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
from urllib.parse import urlencode

from oauthenticator.generic import GenericOAuthenticator
from sqlalchemy import delete, select
from tornado import web
from traitlets import Bool, CaselessStrEnum, Unicode, default

from carnet.audit import client_address, record
from carnet.db import session_scope
from carnet.db.models import (
    ROLE_RANK,
    App,
    AppShare,
    Membership,
    Organization,
    Role,
    User,
    ViewerGroup,
    ViewerGroupMember,
)
from carnet.hub_config.authenticator import AUTHORS_GROUP, hub_groups_for
from carnet.hub_config.logout import CarnetOIDCLogoutHandler
from carnet.people import end_credentials
from carnet.settings import CarnetSettings

GROUPS_KEY = "carnet_groups"
UNCLAIMED = "not in identity provider claims"
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

    logout_handler = CarnetOIDCLogoutHandler

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

    keep_unclaimed_memberships = Bool(
        help="""Keep the person's memberships in organizations that their claims no longer name. By default
        (false) the claims are authoritative: at each sign-in, every membership outside the claimed
        organization is removed (audited as membership.remove with reason "not in identity provider
        claims", in the organization that loses the person) and the person's Carnet tokens die. Only the
        membership goes (with the person's places in that organization's viewer groups and the app shares
        naming them); jobs, sources and apps they own there stay for that organization's admins to reassign
        or delete. Set it when memberships in other organizations are managed by hand in Carnet rather than
        at the provider. Environment: CARNET_OIDC_KEEP_UNCLAIMED_MEMBERSHIPS (1 to keep). Default: false.""",
    ).tag(config=True)

    @default("keep_unclaimed_memberships")
    def _default_keep_unclaimed_memberships(self):
        return os.environ.get("CARNET_OIDC_KEEP_UNCLAIMED_MEMBERSHIPS", "0") in ("1", "true", "yes")

    enable_pkce = Bool(
        help="""Use Proof Key for Code Exchange (RFC 7636, S256) in the authorization code flow: the Hub keeps
        a random verifier in its signed state cookie and sends only its hash to the provider, so an
        authorization code intercepted on its way back (browser history, logs, a malicious app) cannot be
        redeemed without that browser's cookie, even with the client secret. Providers that do not know PKCE
        ignore the extra parameters (RFC 6749 3.1), so it stays on unless a provider misbehaves; providers
        may (and should) require it for this client. Environment: CARNET_OIDC_PKCE (0 to turn off).
        Default: true.""",
    ).tag(config=True)

    @default("enable_pkce")
    def _default_enable_pkce(self):
        return os.environ.get("CARNET_OIDC_PKCE", "1") not in ("0", "false", "no")

    logout = CaselessStrEnum(
        ["provider", "local"],
        help="""What logging out of the Hub ends. provider (default): the Hub session, then the browser is
        sent to the provider's end_session_endpoint (OpenID Connect RP-initiated logout, from the discovery
        document) with client_id and post_logout_redirect_uri, so the provider's session ends too and the
        next sign-in asks for credentials again (on a shared computer, a local-only logout would let the next
        person in silently as the previous one). If the provider publishes no end_session_endpoint the
        logout is local, with a warning in the Hub log. local: only the Hub session ends (the provider's
        single sign-on session stays, e.g. for other applications). An explicit logout_redirect_url (or
        OAUTH_LOGOUT_REDIRECT_URL) overrides both. Environment: CARNET_OIDC_LOGOUT.""",
    ).tag(config=True)

    @default("logout")
    def _default_logout(self):
        return os.environ.get("CARNET_OIDC_LOGOUT", "provider").strip().lower() or "provider"

    post_logout_redirect_url = Unicode(
        help="""Where the provider sends the browser after an RP-initiated logout (post_logout_redirect_uri):
        it must be registered for this client at the provider, like the callback URL. Environment:
        CARNET_OIDC_POST_LOGOUT_URL. Default: the Hub's login page next to the callback URL
        (<public URL>/hub/login).""",
    ).tag(config=True)

    @default("post_logout_redirect_url")
    def _default_post_logout_redirect_url(self):
        explicit = os.environ.get("CARNET_OIDC_POST_LOGOUT_URL")
        if explicit:
            return explicit
        callback = self.oauth_callback_url
        return callback[: -len("oauth_callback")] + "login" if callback.endswith("/oauth_callback") else ""

    @default("logout_redirect_url")
    def _default_logout_redirect_url(self):
        explicit = os.environ.get("OAUTH_LOGOUT_REDIRECT_URL")
        if explicit or self.logout == "local":
            return explicit or ""
        endpoint = self.discovery().get("end_session_endpoint")
        if not endpoint:
            self.log.warning("No end_session_endpoint at the provider: logout ends the Hub session only")
            return ""
        params = {"client_id": self.client_id}
        if self.post_logout_redirect_url:
            params["post_logout_redirect_uri"] = self.post_logout_redirect_url
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"

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

    def prune_memberships(self, session, user: User, org: Organization) -> list[str]:
        """Remove ``user``'s memberships outside ``org`` (claims are authoritative); returns the slugs.

        Each removal is audited in the organization that loses the person, and their Carnet tokens die.
        Their places in that organization's viewer groups and the app shares naming them go too (a later
        membership there must not silently bring old shares back); objects they own there stay."""
        removed = [m for m in user.memberships if m.org_id != org.id]
        for membership in removed:
            other = membership.org_id
            group_ids = select(ViewerGroup.id).where(ViewerGroup.org_id == other)
            app_ids = select(App.id).where(App.org_id == other)
            session.execute(
                delete(ViewerGroupMember).where(
                    ViewerGroupMember.user_id == user.id, ViewerGroupMember.group_id.in_(group_ids)
                )
            )
            session.execute(delete(AppShare).where(AppShare.user_id == user.id, AppShare.app_id.in_(app_ids)))
            self.audit(
                session,
                "membership.remove",
                user.email,
                user,
                other,
                target=f"user/{user.id}",
                reason=UNCLAIMED,
                role=Role(membership.role).value,
            )
            self.log.info("Removed %s from %s: %s", user.email, membership.org.slug, UNCLAIMED)
            session.delete(membership)
        if removed:
            end_credentials(session, user)
            session.flush()
            session.refresh(user)
        return [m.org.slug for m in removed]

    def audit(
        self,
        session,
        action: str,
        email: str,
        user: User | None,
        org_id: int | None,
        target: str = "",
        **details,
    ):
        record(
            session,
            org_id=org_id,
            actor_id=user.id if user else None,
            actor=email,
            action=action,
            target=target,
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
                        if not self.keep_unclaimed_memberships:
                            self.prune_memberships(session, user, org)
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
        hops = CarnetSettings(parent=self).trusted_proxy_hops
        _remote_addr.set(client_address(getattr(handler, "request", None), hops))
        model = await super().authenticate(handler, data, **kwargs)
        if model and AUTHORS_GROUP not in (model.get("groups") or ()):
            await self.stop_studio_servers(handler, model["name"])
        return model

    async def stop_studio_servers(self, handler, name: str) -> None:
        """Stop the running servers of a person who is no longer an author (``handler`` is the Hub's
        callback handler). Their Carnet tokens already died with the demotion; this ends the JupyterLab
        itself, as the Carnet service does after a demotion through the API."""
        user = handler.find_user(name)
        for server_name, spawner in list(user.spawners.items()) if user else ():
            if not spawner.active:
                continue
            if spawner.pending:
                # A start or stop in flight cannot be interrupted; the start's own token is already dead.
                self.log.warning("Server of %s is %s: not stopped at sign-in", name, spawner.pending)
                continue
            self.log.info("Stopping the server of %s: no longer an author", name)
            await handler.stop_single_user(user, server_name)

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
